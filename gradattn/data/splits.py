"""How a source's images become train/val/test: every split fraction lives here.

official  the source's own split; a source with train/test only gets val carved from train
          (a stratified VAL_FROM_TRAIN), a source with no split a stratified NO_SPLIT.
pooled    the notebooks' split: every image pooled, shuffled with the seed, cut POOLED.
"""

from __future__ import annotations

import numpy as np

from gradattn.data.prepared import SPLITS
from gradattn.errors import GradattnError

POOLED = (0.70, 0.15, 0.15)  # the notebooks' random_split (CIFAR-10, Fashion-MNIST, SVHN)
VAL_FROM_TRAIN = 0.10  # sources with train/test only: a stratified 10 % of train becomes val
NO_SPLIT = (0.70, 0.10, 0.20)  # sources with no split at all (custom data): MedMNIST's 7:1:2


def percent(fractions) -> str:
    """(0.7, 0.15, 0.15) → "70/15/15", for the split descriptions in meta.json and the docs."""
    return "/".join(f"{f * 100:.0f}" for f in fractions)


def val_note(fraction: float = VAL_FROM_TRAIN) -> str:
    return f"val = a stratified {fraction:.0%} of train"


def pooled_split(labels: np.ndarray, seed: int, fractions=POOLED) -> dict[str, np.ndarray]:
    """The notebooks' split: all images pooled, shuffled with `seed`, cut 70/15/15."""
    order = np.random.default_rng(seed).permutation(len(labels))
    n_train = int(round(fractions[0] * len(labels)))
    n_val = int(round(fractions[1] * len(labels)))
    return {
        "train": np.sort(order[:n_train]),
        "val": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }


def stratified_split(labels: np.ndarray, seed: int, fractions=POOLED) -> dict[str, np.ndarray]:
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


def carve_val(
    labels: np.ndarray, seed: int, fraction: float = VAL_FROM_TRAIN
) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, val rows): a stratified `fraction` of each class becomes validation."""
    parts = stratified_split(labels, seed, (1.0 - fraction, fraction, 0.0))
    # Rounding may leave a row or two in the "test" share: they stay in train.
    return np.sort(np.concatenate([parts["train"], parts["test"]])), parts["val"]


Plan = dict[str, list[tuple[str, np.ndarray]]]


def plan_splits(
    labels: dict[str, np.ndarray],
    split: str,
    seed: int,
    *,
    val_fraction: float = VAL_FROM_TRAIN,
    fractions=NO_SPLIT,
) -> tuple[Plan, str]:
    """Which rows of which part form each output split, and a sentence saying how.

    official: parts train/val/test are kept; train/test → val carved from train (stratified);
              a single part `all` → stratified `fractions`.
    pooled:   the notebooks' split — every part pooled, shuffled with `seed`, cut 70/15/15.
    """
    names = tuple(labels)
    if split == "pooled":
        pooled = np.concatenate([labels[n] for n in names])
        starts = np.cumsum([0] + [len(labels[n]) for n in names])
        plan: Plan = {}
        for out, rows in pooled_split(pooled, seed).items():
            plan[out] = [
                (n, rows[(rows >= a) & (rows < b)] - a)
                for n, a, b in zip(names, starts[:-1], starts[1:], strict=True)
            ]
        return (
            plan,
            f"pooled {'+'.join(names)} ({len(pooled):,} images), random {percent(POOLED)}, "
            f"seed {seed}",
        )
    if split != "official":
        raise GradattnError(f"unknown split mode {split!r}: choose official or pooled")
    if set(names) == {"train", "val", "test"}:
        return (
            {s: [(s, np.arange(len(labels[s])))] for s in SPLITS},
            "the source's own train/val/test",
        )
    if set(names) == {"train", "test"}:
        train, val = carve_val(labels["train"], seed, val_fraction)
        return (
            {
                "train": [("train", train)],
                "val": [("train", val)],
                "test": [("test", np.arange(len(labels["test"])))],
            },
            f"the source's train/test; {val_note(val_fraction)} (seed {seed})",
        )
    if names == ("all",):
        rows = stratified_split(labels["all"], seed, fractions)
        return (
            {s: [("all", rows[s])] for s in SPLITS},
            f"no official split: stratified {percent(fractions)} (seed {seed})",
        )
    raise ValueError(f"parts {names} are not train/val/test, train/test or all")
