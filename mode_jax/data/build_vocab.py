"""Rebuild the shipped tiny vocabularies: `python -m mode_jax.data.build_vocab`.

Writes `sni_sample_{512,1024}.model` (`vocab.build`: the same bytes every
time) to --out_dir (default `data/vocab/`). An entry point, apart from
`data.vocab` so that the library modules that read vocabularies never
import a `__main__` module.
"""

from __future__ import annotations

import argparse
import os

from mode_jax.data import vocab


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out_dir", default=os.path.join(vocab.REPO_DATA, "vocab"))
  parser.add_argument("--sni_dir", default=vocab.SAMPLE_DIR)
  args = parser.parse_args()
  os.makedirs(args.out_dir, exist_ok=True)
  for size in vocab.SIZES:
    out = os.path.join(args.out_dir, f"sni_sample_{size}.model")
    with open(out, "wb") as f:
      f.write(vocab.build(size, args.sni_dir))
    print(out)


if __name__ == "__main__":
  main()
