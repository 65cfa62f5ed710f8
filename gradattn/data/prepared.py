"""The prepared-array format that every stage after preprocess reads.

data/prepared/<dataset>/
    meta.json                       classes, channels, size, counts, per-channel mean/std
    <split>_images.npy              uint8, (N, H, W, C), memory-mappable
    <split>_labels.npy              int64, (N,)

A dataset folder is written under a temporary name and renamed into place only when every
split and meta.json are complete, so an interrupted preprocess leaves nothing that looks done.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gradattn.errors import GradattnError

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
    images = np.load(images_path, mmap_mode="r")
    labels = np.load(labels_path).astype(np.int64, copy=False)
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
    return json.loads(path.read_text())


class PreparedWriter:
    """Streams splits into a temporary folder; `commit()` moves it into place.

    Use as a context manager: leaving the block by an exception removes the temporary folder.
    """

    def __init__(
        self,
        name: str,
        classes: Iterable[str],
        root: str | Path = DEFAULT_ROOT,
        notes: dict | None = None,
    ):
        self.name = name
        self.classes = list(classes)
        self.final = Path(root) / name
        self.final.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.final.parent.glob(f".{name}.tmp-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{name}.tmp-"))
        self.counts: dict[str, int] = {}
        self.shape: tuple[int, int, int] | None = None
        self.notes = notes or {}
        self._sums: np.ndarray | None = None
        self._squares: np.ndarray | None = None

    def __enter__(self) -> PreparedWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

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
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            shape = (*shape, 1)
        if self.shape is not None and shape != self.shape:
            raise GradattnError(
                f"{self.name}: split {split} has images of shape {shape}, other splits {self.shape}"
            )
        self.shape = shape
        out_images = np.lib.format.open_memmap(
            self.tmp / f"{split}_images.npy", mode="w+", dtype=np.uint8, shape=(count, *shape)
        )
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
        out_images.flush()
        del out_images
        np.save(self.tmp / f"{split}_labels.npy", out_labels)
        self.counts[split] = count

    def commit(self) -> dict:
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
            **self.notes,
        }
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if self.final.exists():
            shutil.rmtree(self.final)
        self.tmp.rename(self.final)
        return meta


def pooled_split(
    labels: np.ndarray, seed: int, fractions=(0.70, 0.15, 0.15)
) -> dict[str, np.ndarray]:
    """The notebooks' split: all images pooled, shuffled with `seed`, cut 70/15/15."""
    order = np.random.default_rng(seed).permutation(len(labels))
    n_train = int(round(fractions[0] * len(labels)))
    n_val = int(round(fractions[1] * len(labels)))
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }


def stratified_split(
    labels: np.ndarray, seed: int, fractions=(0.70, 0.15, 0.15)
) -> dict[str, np.ndarray]:
    """A per-class split with the given fractions, for sources without an official one."""
    rng = np.random.default_rng(seed)
    parts = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}
