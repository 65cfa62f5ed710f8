"""Batches from a prepared split: shuffled, augmented and normalised on the target device."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from gradattn.data.augment import AUGMENTATIONS

# Splits up to this size are copied into one tensor; larger ones are read batch by batch
# from the memory map, so PCam-sized data never has to fit in RAM.
IN_MEMORY_BYTES = 2 << 30


class Batches:
    """(x, y) batches of one split: x float (B, C, H, W) normalised, y int64 (B,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, meta: dict, *, batch_size: int,
                 device: torch.device | str = "cpu", shuffle: bool = False, augment: str = "none",
                 legacy_defect: bool = False):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = AUGMENTATIONS[augment]
        self.legacy_defect = legacy_defect
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
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

    def _rows(self, idx: torch.Tensor) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            return self.images[idx]
        order = np.sort(idx.numpy())  # sorted reads are sequential on the memory map
        return torch.from_numpy(np.array(self.images[order])), torch.from_numpy(order)

    def epoch(self, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass; with shuffle, the order and augmentation depend only on `seed`."""
        gen = torch.Generator().manual_seed(seed)
        aug_gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            rows = self._rows(idx)
            if isinstance(rows, tuple):
                rows, idx = rows
            y = self.labels[idx].to(self.device, non_blocking=True)
            x = rows.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
            if self.shuffle:
                x = self.augment(x, aug_gen)
            x = (x - self.mean) / self.std
            if self.shuffle and self.legacy_defect:
                x = legacy_renormalise(x, self.mean, self.std)
            yield x.contiguous(), y


def legacy_renormalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The notebooks' defect for training images: a normalised tensor goes through ToPILImage
    (x*255 truncated to uint8, so negatives wrap around modulo 256) and is normalised again."""
    wrapped = torch.remainder(torch.trunc(x * 255.0), 256.0) / 255.0
    return (wrapped - mean) / std
