"""The prepared-array format that every stage after preprocess reads.

data/prepared/<dataset>/
    meta.json                       classes, channels, size, counts, the per-channel mean/std
                                    training normalises with, the split's own statistics, and
                                    the resolved data protocol (gradattn.core.recipes)
    <split>_images.npy              uint8, (N, H, W, C), memory-mappable
    <split>_labels.npy              int64, (N,)

A dataset folder is written under a temporary name and renamed into place only when every
split and meta.json are complete, so an interrupted preprocess leaves nothing that looks done;
the next preprocess of that dataset removes what a killed one left.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from gradattn.core.errors import GradattnError
from gradattn.core.io import (
    disk_errors,
    json_text,
    move_into_place,
    read_json,
    reading,
    remove_stale,
    restore_hint,
    temp_dir_beside,
)

SPLITS = ("train", "val", "test")
DEFAULT_ROOT = Path("data/prepared")


def load_split(
    name: str, split: str, root: str | Path = DEFAULT_ROOT
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 N×H×W×C, labels int64 N); images are memory-mapped, not loaded."""
    if split not in SPLITS:
        raise GradattnError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    folder = Path(root) / name
    images_path, labels_path = folder / f"{split}_images.npy", folder / f"{split}_labels.npy"
    if not (folder / "meta.json").exists() or not images_path.exists() or not labels_path.exists():
        raise GradattnError(
            f"prepared split {split!r} of dataset {name!r} not found in {folder}: "
            f"run `dvc repro preprocess@{name}` first"
        )
    for path in (images_path, labels_path):
        with reading(path, restore_hint(folder, f"preprocess@{name}")):
            # allow_pickle=False: a prepared array is plain numbers, never objects.
            array = np.load(path, mmap_mode="r" if path == images_path else None,
                            allow_pickle=False)
        if path == images_path:
            images = array
        else:
            labels = array.astype(np.int64, copy=False)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
        raise GradattnError(
            f"{images_path} is not a prepared split (uint8 N×H×W×C matching labels)"
        )
    return images, labels


def load_meta(name: str, root: str | Path = DEFAULT_ROOT) -> dict:
    path = Path(root) / name / "meta.json"
    if not path.exists():
        raise GradattnError(
            f"prepared dataset {name!r} not found ({path} missing): "
            f"run `dvc repro preprocess@{name}` first"
        )
    meta = read_json(path, restore_hint(path.parent, f"preprocess@{name}"))
    if not isinstance(meta, dict):
        raise GradattnError(f"{path} is damaged or not the file it should be (not a JSON "
                            f"object): {restore_hint(path.parent, f'preprocess@{name}')}")
    return meta


@dataclass(frozen=True)
class Conversion:
    """What preprocess does to every image of a source: resize to size×size (PIL bilinear, as
    the notebooks' `Resize((s, s))` on a PIL image) and repeat a grey channel to three (their
    `x.repeat(3, 1, 1)`)."""

    size: int | None = None
    grey_to_rgb: bool = False

    def shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        h, w, c = shape
        if self.size:
            h = w = self.size
        return h, w, (3 if self.grey_to_rgb and c == 1 else c)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> uint8 (N, *shape)."""
        if self.size and images.shape[1:3] != (self.size, self.size):
            images = np.stack([_resize(im, self.size) for im in images]) if len(images) else (
                np.empty((0, self.size, self.size, images.shape[3]), np.uint8))
        if self.grey_to_rgb and images.shape[3] == 1:
            images = np.repeat(images, 3, axis=3)
        return images


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    grey = image.shape[2] == 1
    pil = Image.fromarray(image[..., 0] if grey else image)
    out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
    return out[..., None] if grey else out


class PreparedWriter:
    """Streams splits into a temporary folder; `commit()` moves it into place.

    Use as a context manager: leaving the block by an exception removes the temporary folder.
    `classes` are the spec's; a source that reads its class list from its files (Tiny
    ImageNet, an image folder) hands it over with `use_classes` before writing any split.
    """

    def __init__(
        self,
        name: str,
        classes: Iterable[str],
        root: str | Path = DEFAULT_ROOT,
        notes: dict | None = None,
        conversion: Conversion | None = None,
    ):
        self.name = name
        self.classes = list(classes)
        self.final = Path(root) / name
        remove_stale(self.final.parent, name)  # left by a killed preprocess of this dataset
        self.tmp = temp_dir_beside(self.final)
        self.counts: dict[str, int] = {}
        self._train_per_class: np.ndarray | None = None
        self.shape: tuple[int, int, int] | None = None
        self.notes = notes or {}
        self.conversion = conversion
        self._sums: np.ndarray | None = None
        self._squares: np.ndarray | None = None

    def __enter__(self) -> PreparedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def use_classes(self, classes: Iterable[str]) -> None:
        if self.counts:
            raise ValueError("use_classes() comes before the first split is written")
        self.classes = list(classes)

    def write_split(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Write a split held as arrays (or memory maps); images N×H×W or N×H×W×C uint8."""
        if images.ndim == 3:
            images = images[..., None]

        def chunks(step: int = 4096):
            for start in range(0, len(images), step):
                yield images[start : start + step], labels[start : start + step]

        self.stream_split(split, len(images), images.shape[1:], chunks())

    def stream_split(
        self,
        split: str,
        count: int,
        shape: tuple[int, ...],
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    ) -> None:
        """Write `count` images of `shape` (H, W, C) arriving in (images, labels) chunks."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        if count == 0:
            # Training would fail later in torch.cat (or report on nothing): refuse it here.
            raise GradattnError(
                f"dataset {self.name!r}: its {split} split would hold no images (the "
                f"source's {split} part is empty, or it has too few images per class for a "
                f"split cut from them): give the source {split} images, or 10 or more images "
                "per class, and run again")
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        if self.conversion is not None:
            convert = self.conversion
            shape = convert.shape(shape)
            chunks = ((convert(_nhwc(images)), labels) for images, labels in chunks)
        if self.shape is not None and shape != self.shape:
            raise GradattnError(
                f"{self.name}: split {split} has images of shape {shape}, other splits {self.shape}"
            )
        self.shape = shape
        with disk_errors(self.final.parent):
            self._stream(split, count, shape, chunks)
        self.counts[split] = count
        if split == "train":
            self._check_classes()

    def _stream(self, split, count, shape, chunks) -> None:
        path = self.tmp / f"{split}_images.npy"
        out_images = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.uint8, shape=(count, *shape)
        )
        _reserve(path)
        out_labels = np.empty(count, dtype=np.int64)
        pos = 0
        with tqdm(total=count, desc=f"{self.name}/{split}", unit="img", leave=False) as bar:
            for images, labels in chunks:
                images = np.asarray(images, dtype=np.uint8)
                if images.ndim == 3:
                    images = images[..., None]
                n = len(images)
                if pos + n > count:
                    raise GradattnError(
                        f"{self.name}/{split}: more images than the {count} announced"
                    )
                out_images[pos : pos + n] = images
                out_labels[pos : pos + n] = np.asarray(labels, dtype=np.int64).reshape(-1)
                if split == "train":
                    pixels = images.reshape(-1, shape[-1]).astype(np.float64) / 255.0
                    sums, squares = pixels.sum(0), (pixels**2).sum(0)
                    self._sums = sums if self._sums is None else self._sums + sums
                    self._squares = squares if self._squares is None else self._squares + squares
                pos += n
                bar.update(n)
        if pos != count:
            raise GradattnError(f"{self.name}/{split}: got {pos} images, expected {count}")
        bad = (out_labels < 0) | (out_labels >= len(self.classes))
        if bad.any():
            raise GradattnError(
                f"{self.name}/{split}: label {out_labels[bad][0]} outside "
                f"0..{len(self.classes) - 1}"
            )
        if split == "train":
            self._train_per_class = np.bincount(out_labels, minlength=len(self.classes))
        out_images.flush()
        del out_images
        np.save(self.tmp / f"{split}_labels.npy", out_labels)

    def _check_classes(self) -> None:
        """A classifier needs two classes or more, each with training images."""
        if len(self.classes) < 2:
            raise GradattnError(
                f"dataset {self.name!r} has {len(self.classes)} class(es) "
                f"({', '.join(self.classes) or 'none'}): a classifier needs at least two; "
                "give it images of two classes or more"
            )
        empty = [c for c, n in zip(self.classes, self._train_per_class, strict=True) if n == 0]
        if empty:
            raise GradattnError(
                f"dataset {self.name!r}: class(es) {', '.join(map(repr, empty[:5]))} have no "
                "training images; add images of them (or drop those classes) and run again"
            )

    def commit(self) -> dict:
        """Write meta.json and move the folder into place. `mean`/`std` are what training
        normalises with: the notes' (a notebook's constants) or else the split's statistics,
        which `split_mean`/`split_std` always hold."""
        missing = [s for s in SPLITS if s not in self.counts]
        if missing:
            raise GradattnError(f"{self.name}: splits {missing} were never written")
        pixels = self.counts["train"] * self.shape[0] * self.shape[1]
        mean = self._sums / pixels
        std = np.sqrt(np.maximum(self._squares / pixels - mean**2, 1e-12))
        meta = {
            "name": self.name,
            "classes": self.classes,
            "num_classes": len(self.classes),
            "channels": self.shape[2],
            "height": self.shape[0],
            "width": self.shape[1],
            "counts": self.counts,
            "mean": [round(float(m), 6) for m in mean],
            "std": [round(float(s), 6) for s in std],
            "split_mean": [round(float(m), 6) for m in mean],
            "split_std": [round(float(s), 6) for s in std],
            **self.notes,
        }
        with disk_errors(self.final.parent):
            (self.tmp / "meta.json").write_text(json_text(meta, self.final / "meta.json"))
        move_into_place(self.tmp, self.final)
        return meta


def _reserve(path: Path) -> None:
    """Allocate the disk blocks of a sparse memory-mapped file now: on a full disk this fails
    as an OSError (ENOSPC, one line), where writing into the map would kill the process with
    SIGBUS and no message."""
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as fh:
            try:
                os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # no fallocate there
                    raise


def _nhwc(images) -> np.ndarray:
    images = np.asarray(images, dtype=np.uint8)
    return images[..., None] if images.ndim == 3 else images
