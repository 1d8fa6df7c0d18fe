"""mode_jax: Mixture of Dyadic Experts and friends in JAX/Flax NNX."""

import pathlib

import setuptools

here = pathlib.Path(__file__).parent


def _reqs(name):
  lines = (here / name).read_text().splitlines()
  reqs = [l.split("#")[0].strip() for l in lines]
  return [r for r in reqs if r and not r.startswith("-")]


setuptools.setup(
    name="mode_jax",
    version="0.1.0",
    description="Multi-task parameter-efficient fine-tuning with MoDE (JAX/Flax NNX)",
    packages=setuptools.find_packages(include=["mode_jax", "mode_jax.*"]),
    python_requires=">=3.11",
    install_requires=_reqs("requirements.txt"),
    extras_require={"test": _reqs("requirements-test.txt"),
                    "tpu": _reqs("requirements-tpu.txt")},
)
