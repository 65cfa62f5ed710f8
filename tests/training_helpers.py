"""Helpers shared by the training tests: tiny models and data that run in milliseconds."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from gradattn.prepared.batches import Batches

META = {"mean": [0.5], "std": [0.25]}


def data(n_train: int = 20, n_val: int = 10, *, batch_size: int = 8, val_batch: int = 16,
         device="cpu", size: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_train + n_val, size, size, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, n_train + n_val)
    train = Batches(images[:n_train], labels[:n_train], META, batch_size=batch_size,
                    device=device, shuffle=True, augment="rotate10")
    val = Batches(images[n_train:], labels[n_train:], META, batch_size=val_batch,
                  device=device)
    return train, val


def tiny(seed: int = 0, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(dropout),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


class Scripted(nn.Module):
    """Trains like `tiny`; validates to script[epoch - 1] accuracy (labels all 0)."""

    def __init__(self, script: list[float]):
        super().__init__()
        self.net = tiny()
        self.script = script
        self.epoch = 1

    def forward(self, x):
        logits = self.net(x)
        if self.training:
            return logits
        right = round(self.script[min(self.epoch, len(self.script)) - 1] * len(x))
        pred = (torch.arange(len(x), device=x.device) >= right).long()
        return nn.functional.one_hot(pred, 3).float() * 5.0


def scripted_data():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 8, 8, 1), dtype=np.uint8)
    train = Batches(images[:20], rng.integers(0, 3, 20), META, batch_size=8, shuffle=True)
    val = Batches(images[20:], np.zeros(10, dtype=np.int64), META, batch_size=10)
    return train, val


class Snapshots:
    """grad_probe: sets a Scripted model's epoch, keeps each epoch's trained parameters."""

    def __init__(self):
        self.weights: list[dict] = []

    def __call__(self, model):
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if isinstance(model, Scripted):
            model.epoch = len(self.weights)
        return None


def rows(history, *, drop=("seconds",)):
    return [{k: v for k, v in r.items() if k not in drop} for r in history]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def quiet(_line: str) -> None:
    pass
