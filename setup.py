"""mode_jax: Mixture of Dyadic Experts and friends in JAX/Flax NNX."""

import pathlib
import re

import setuptools

here = pathlib.Path(__file__).parent


def _reqs(name):
  lines = (here / name).read_text().splitlines()
  reqs = [l.split("#")[0].strip() for l in lines]
  return [r for r in reqs if r and not r.startswith("-")]


def _pinned(names, name="requirements-test.txt"):
  """The pins of `names` in a requirements file (one place for each version)."""
  return [r for r in _reqs(name) if re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0] in names]


# Sharing and serving (python -m mode_jax.export --format=peft|hf_merged|torch,
# mode_jax.torch): never needed to train.
HF = ("torch", "transformers", "peft")


setuptools.setup(
    name="mode_jax",
    version="0.1.0",
    description="Multi-task parameter-efficient fine-tuning with MoDE (JAX/Flax NNX)",
    packages=setuptools.find_packages(include=["mode_jax", "mode_jax.*"]),
    python_requires=">=3.11",
    install_requires=_reqs("requirements.txt"),
    extras_require={"test": _reqs("requirements-test.txt"), "hf": _pinned(HF),
                    "tpu": _reqs("requirements-tpu.txt")},
)
