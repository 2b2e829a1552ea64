"""A second data set on the `folders` path, built from a package-shipped source: scikit-learn's digits (1,797
8x8 handwritten digits, UCI's optdigits test set, in the scikit-learn wheel), written as PNG folder trees.

    pip install scikit-learn   # the `bench` extra: pip install -e '.[bench]'
    python scripts/digits_folders.py --out data/digits
    python -m experiments.compare_methods $(the --set flags it prints) --out runs/methods-digits.json

Per class, drawn with --seed: --labeled images to labeled/<class>/, --val to val/<class>/, --test to test/<class>/,
--holdout to holdout/<class>/ (the pool the -A set is filtered from), the rest to unlabeled/ (no class in its path).
Each image is scaled from the set's 0..16 to 0..255 and resized to --size with bicubic interpolation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/digits")
    ap.add_argument("--size", type=int, default=24, help="side of the written images (default: %(default)s)")
    ap.add_argument("--labeled", type=int, default=10, help="labeled images per class (default: %(default)s)")
    ap.add_argument("--val", type=int, default=10)
    ap.add_argument("--test", type=int, default=40)
    ap.add_argument("--holdout", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("scikit-learn is not installed: pip install scikit-learn (or the project's `bench` extra)")
    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    counts: dict[str, int] = {}
    for c in range(10):
        rows = rng.permutation(np.flatnonzero(digits.target == c))
        cuts = np.cumsum([args.labeled, args.val, args.test, args.holdout])
        for split, part in zip(("labeled", "val", "test", "holdout", "unlabeled"), np.split(rows, cuts)):
            folder = out / split if split == "unlabeled" else out / split / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                Image.fromarray(images[i]).resize((args.size, args.size), Image.BICUBIC).save(folder / f"{i:04d}.png")
            counts[split] = counts.get(split, 0) + len(part)
    print(f"{out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    sets = {"data.source": "folders", "data.image_size": args.size, "data.channels": 1}
    sets |= {f"data.folders.{split}": f"{out}/{split}" for split in ("labeled", "val", "test", "holdout", "unlabeled")}
    print(
        "for experiments/compare_methods.py (or selftrain's --set):",
        " ".join(f"--set {k}={v}" for k, v in sets.items()),
    )


if __name__ == "__main__":
    main()
