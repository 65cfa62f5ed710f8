"""Cut the bundled `fashionmnist-mini` set from the real Fashion-MNIST.

Usage: python scripts/make_fashionmnist_mini.py [/usr/share/datasets/fashion-mnist]

Reads the original IDX files with torchvision's FashionMNIST class and draws, with a fixed
seed, a class-stratified subset: 300 train + 60 val images per class from the official
training set (disjoint) and 60 test images per class from the official test set.
"""

import gzip
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from torchvision.datasets import FashionMNIST

from gradattn.core.stage import entry

SEED = 20261127
PER_CLASS = {"train": 300, "val": 60, "test": 60}
OUT = Path(__file__).resolve().parents[1] / "gradattn/sources/bundled/fashionmnist-mini.npz"


def read_official(source: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for gz in source.glob("*-ubyte.gz"):
            with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        ds = FashionMNIST(tmp, train=train, download=False)
        return ds.data.numpy(), ds.targets.numpy()


def stratified(labels: np.ndarray, counts: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint index sets, each holding counts[i] images of every class."""
    picks = [[] for _ in counts]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for i, n in enumerate(counts):
            picks[i].append(idx[start : start + n])
            start += n
    return [np.sort(np.concatenate(p)) for p in picks]


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
    rng = np.random.default_rng(SEED)
    x_tr, y_tr = read_official(source, train=True)
    x_te, y_te = read_official(source, train=False)
    train_idx, val_idx = stratified(y_tr, [PER_CLASS["train"], PER_CLASS["val"]], rng)
    (test_idx,) = stratified(y_te, [PER_CLASS["test"]], rng)
    arrays = {
        "train_images": x_tr[train_idx], "train_labels": y_tr[train_idx],
        "val_images": x_tr[val_idx], "val_labels": y_tr[val_idx],
        "test_images": x_te[test_idx], "test_labels": y_te[test_idx],
    }
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB):",
          {k: v.shape for k, v in arrays.items() if k.endswith("images")})


if __name__ == "__main__":
    entry(main)
