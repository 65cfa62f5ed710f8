"""SVHN: the MATLAB files torchvision's `SVHN` downloads, read straight into uint8 arrays
(URLs and md5 sums from torchvision's class)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from torchvision.datasets import SVHN

from gradattn.prepared.format import PreparedWriter
from gradattn.sources.fetch import (
    get_files,
    verify_raw,
)
from gradattn.sources.spec import DatasetSpec
from gradattn.sources.splits import val_note
from gradattn.sources.streaming import write_splits

# The cropped-digits format. `extra` (531,131 easier images) is used only with data.svhn_extra
# (the notebooks recipe: SVHN cell 8 pools train + test + extra).
SVHN_PARTS = ("train", "test", "extra")
SVHN_FILES = {p: (SVHN.split_list[p][1], SVHN.split_list[p][0], SVHN.split_list[p][2])
              for p in SVHN_PARTS}
SVHN_CLASSES = tuple(str(d) for d in range(10))


def _svhn_files(extra: bool) -> list[tuple[str, str, str]]:
    return [SVHN_FILES[p] for p in SVHN_PARTS if extra or p != "extra"]


def svhn_download(raw_dir: Path, source: Path | None, *, extra: bool = False) -> None:
    get_files("svhn", raw_dir, source, _svhn_files(extra))


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    mat = loadmat(path, variable_names=["X", "y"])
    images = np.transpose(mat["X"], (3, 0, 1, 2))  # (32, 32, 3, N) → (N, 32, 32, 3)
    labels = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN labels the digit 0 as 10
    return images, labels


def svhn_prepare(raw_dir: Path, writer: PreparedWriter, split: str, split_seed: int, *,
                 extra: bool = False) -> None:
    files = _svhn_files(extra)
    verify_raw(raw_dir, {name: md5 for name, _, md5 in files}, dataset="svhn")
    # in the notebook's concatenation order: train, test, extra
    parts = {p: read_svhn(raw_dir / SVHN_FILES[p][0]) for p in SVHN_PARTS if extra or p != "extra"}
    if extra and split == "official":  # extra joins the training images (the usual practice)
        (train_x, train_y), (extra_x, extra_y) = parts["train"], parts.pop("extra")
        parts["train"] = (np.concatenate([train_x, extra_x]), np.concatenate([train_y, extra_y]))
    write_splits(writer, parts, split, split_seed)


def svhn_spec(svhn_extra: bool = False) -> DatasetSpec:
    counts = "73,257 train (+ 531,131 extra)" if svhn_extra else "73,257 train (no extra)"
    return DatasetSpec(
        name="svhn",
        classes=SVHN_CLASSES,
        channels=3,
        size=32,
        augment="none",  # the SVHN notebook trains without augmentation (and digits must not flip)
        download=partial(svhn_download, extra=svhn_extra),
        prepare=partial(svhn_prepare, extra=svhn_extra),
        splits=f"official {counts} / 26,032 test; " + val_note(),
        url=SVHN.split_list["train"][0],
        options=("svhn_extra",),
        variant=lambda svhn_extra=False: svhn_spec(svhn_extra),
    )


SPECS = (svhn_spec(),)
