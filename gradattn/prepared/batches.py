"""Batches from a prepared split: shuffled, augmented and normalised on the target device.

Three ways to hold a split, chosen once when a `Batches` is made:

  resident   on a CUDA device, when the uint8 images fit (half of the free GPU memory, see
             RESIDENT_FRACTION; every dataset of the paper fits on an 80 GB card): the images
             are copied to the GPU once, and each epoch is shuffled there (torch.randperm with
             a device generator), gathered, augmented and normalised there in whole batches,
             with no host work per batch but a few kernel launches.
  streaming  on a CUDA device, when they do not fit: rows are gathered on the host (from RAM,
             or from the memory map for splits over IN_MEMORY_BYTES) in an order drawn on the
             host, and copied through pinned memory with non-blocking copies.
  host       on the CPU (the default there): exactly as before. Splits up to IN_MEMORY_BYTES
             are copied into one tensor; larger ones are read batch by batch from the memory
             map, so PCam-sized data never has to fit in RAM.

With the same seed, the host and streaming paths give the same order (a CPU generator); the
resident path on a GPU draws its order on the GPU, so it is reproducible run to run but not
the same order as on the CPU. `resident=True` forces the resident path (also on the CPU,
where it reproduces the host path's batches exactly: tests use that).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from gradattn.core import paths
from gradattn.prepared.augment import AUGMENTATIONS
from gradattn.prepared.format import load_split

# Splits up to this size are copied into one tensor; larger ones are read batch by batch
# from the memory map, so PCam-sized data never has to fit in RAM.
IN_MEMORY_BYTES = 2 << 30
# A split lives on the GPU when its images take at most this share of the free GPU memory
# (the rest is left for the model, its activations, CUDA graphs and the other splits).
RESIDENT_FRACTION = 0.5
# Host-to-GPU copies of a resident split go in chunks of this size, so a memory-mapped split
# is never read into RAM whole.
UPLOAD_CHUNK_BYTES = 256 << 20


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` of images should live on `device` (a CUDA device)."""
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_FRACTION * free


def _upload(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """The images as one uint8 tensor on `device`, copied in chunks (pinned, non-blocking)."""
    if isinstance(images, torch.Tensor):
        return images.to(device)
    if device.type != "cuda":
        return torch.from_numpy(np.array(images))  # a copy, as the host path makes
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    row_bytes = max(1, int(np.prod(images.shape[1:])))
    step = max(1, UPLOAD_CHUNK_BYTES // row_bytes)
    for start in range(0, len(images), step):
        chunk = torch.from_numpy(np.array(images[start : start + step]))
        out[start : start + step].copy_(chunk.pin_memory(), non_blocking=True)
    torch.cuda.synchronize(device)
    return out


class Batches:
    """(x, y) batches of one split: x float (B, C, H, W) normalised, y int64 (B,).

    `images` is uint8 (N, H, W, C): a numpy array or memory map, or a torch tensor (on the
    CPU, or already on `device`). `resident`: None decides by the device and free memory;
    True or False forces the choice.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                 meta: dict, *, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = False, augment: str = "none", legacy_defect: bool = False,
                 resident: bool | None = None):
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = AUGMENTATIONS[augment]
        self.legacy_defect = legacy_defect
        if isinstance(labels, torch.Tensor):
            self.labels = labels.detach().to("cpu", torch.int64)
        else:
            self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        nbytes = images.numel() if isinstance(images, torch.Tensor) else images.nbytes
        if resident is None:
            already_there = isinstance(images, torch.Tensor) and images.device == self.device
            resident = self.device.type == "cuda" and (
                already_there or fits_on_device(nbytes, self.device))
        self.resident = resident
        if resident:
            self.images = _upload(images, self.device)
            self._device_labels = self.labels.to(self.device)
        elif isinstance(images, torch.Tensor):
            self.images = images.detach().cpu()
        else:
            self.images = images
            if images.nbytes <= IN_MEMORY_BYTES:
                self.images = torch.from_numpy(np.array(images))  # (N, H, W, C) uint8, a copy
        self.mean = torch.tensor(meta["mean"], device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(meta["std"], device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    @property
    def num_images(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image as a batch carries it."""
        _, h, w, c = self.images.shape
        return int(c), int(h), int(w)

    def _rows(self, idx: torch.Tensor) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            return self.images[idx]
        order = np.sort(idx.numpy())  # sorted reads are sequential on the memory map
        return torch.from_numpy(np.array(self.images[order])), torch.from_numpy(order)

    def _finish(self, rows: torch.Tensor, aug_gen: torch.Generator) -> torch.Tensor:
        """uint8 (B, H, W, C) on the device -> augmented, normalised float (B, C, H, W)."""
        x = rows.permute(0, 3, 1, 2).float() / 255.0
        if self.shuffle and self.legacy_defect:  # the notebooks' order: wrap, augment, normalise
            x = legacy_wrap((x - self.mean) / self.std)
        if self.shuffle:
            x = self.augment(x, aug_gen)
        return ((x - self.mean) / self.std).contiguous()

    def epoch(self, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass; with shuffle, the order and augmentation depend only on `seed`."""
        if self.resident:
            yield from self._resident_epoch(seed)
            return
        gen = torch.Generator().manual_seed(seed)
        aug_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        to_gpu = self.device.type == "cuda"
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            rows = self._rows(idx)
            if isinstance(rows, tuple):
                rows, idx = rows
            y = self.labels[idx]
            if to_gpu:  # through pinned memory, so the copies overlap the GPU's work
                rows, y = rows.pin_memory(), y.pin_memory()
            y = y.to(self.device, non_blocking=True)
            rows = rows.to(self.device, non_blocking=True)
            yield self._finish(rows, aug_gen), y

    def _resident_epoch(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=self.device).manual_seed(seed)
        aug_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=gen, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            rows = self.images.index_select(0, idx)  # (B, H, W, C) uint8
            yield self._finish(rows, aug_gen), self._device_labels.index_select(0, idx)


def legacy_wrap(x: torch.Tensor) -> torch.Tensor:
    """The notebooks' defect (CIFAR cell 4, FMNIST cell 8): their training images arrive
    already normalised, and `ToPILImage` turns that float tensor into bytes with
    `x.mul(255).byte()` (truncated, modulo 256 below 0 and from 256/255 up); their
    augmentation then runs on that image and `ToTensor` + `Normalize` follow. This is the
    image `ToTensor` gives back, in [0, 1]."""
    return torch.remainder(torch.trunc(x * 255.0), 256.0) / 255.0


def uses_legacy_defect(meta: dict) -> bool:
    """The notebooks' double normalisation on this dataset's training batches, as configure
    resolved data.legacy_preprocessing for the recipe and dataset (meta.json)."""
    return bool(meta.get("notebook_defect"))


def make_batches(
    dataset: str,
    split: str,
    meta: dict,
    *,
    batch_size: int,
    device,
    train: bool = False,
    legacy: bool = False,
    root: Path = paths.PREPARED,
) -> Batches:
    images, labels = load_split(dataset, split, root)
    augment = meta.get("augment", "none") if train else "none"
    return Batches(
        images,
        labels,
        meta,
        batch_size=batch_size,
        device=device,
        shuffle=train,
        augment=augment,
        legacy_defect=train and legacy,
    )
