"""How a source's images become train/val/test: every split fraction lives here.

official  the source's own split; a source with train/test only gets val carved from train
          (a stratified VAL_FROM_TRAIN), a source with no split a stratified NO_SPLIT.
pooled    the notebooks' split: every part pooled in order, cut POOLED by torch's random_split
          (the same images as the notebooks' for the same seed; PAD-UFES-20: `shuffled_split`).
"""

from __future__ import annotations

import numpy as np

from gradattn.core.errors import GradattnError
from gradattn.prepared.format import SPLITS

POOLED = (0.70, 0.15, 0.15)  # the notebooks' random_split (CIFAR-10, Fashion-MNIST, SVHN)
VAL_FROM_TRAIN = 0.10  # sources with train/test only: a stratified 10 % of train becomes val
NO_SPLIT = (0.70, 0.10, 0.20)  # sources with no split at all (custom data): MedMNIST's 7:1:2


def percent(fractions) -> str:
    """(0.7, 0.15, 0.15) → "70/15/15", for the split descriptions in meta.json and the docs."""
    return "/".join(f"{f * 100:.0f}" for f in fractions)


def val_note(fraction: float = VAL_FROM_TRAIN) -> str:
    return f"val = a stratified {fraction:.0%} of train"


def _sizes(n: int, fractions) -> list[int]:
    """The notebooks' split sizes: int(0.7 n), int(0.15 n), and the rest (CIFAR cell 4)."""
    train, val = int(fractions[0] * n), int(fractions[1] * n)
    return [train, val, n - train - val]


def pooled_split(n: int, seed: int, fractions=POOLED) -> dict[str, np.ndarray]:
    """Rows 0..n-1 (the parts concatenated in order, as the notebooks' ConcatDataset) split as
    `random_split(dataset, sizes, generator=torch.Generator().manual_seed(seed))` splits them."""
    import torch  # only the pooled split needs it
    from torch.utils.data import random_split

    subsets = random_split(range(n), _sizes(n, fractions),
                           generator=torch.Generator().manual_seed(seed))
    return {s: np.sort(np.asarray(sub.indices, dtype=np.int64))
            for s, sub in zip(SPLITS, subsets, strict=True)}


def shuffled_split(n: int, seed: int, fractions=POOLED) -> dict[str, np.ndarray]:
    """PAD-UFES-20's notebook split (PAD cell 4): np.random.seed(seed), np.random.shuffle of
    list(range(n)), cut int(0.7 n), int(0.15 n), rest. A private RandomState draws the same."""
    order = list(range(n))
    np.random.RandomState(seed).shuffle(order)
    sizes = _sizes(n, fractions)
    cuts = np.cumsum(sizes)[:2]
    return {s: np.sort(np.asarray(rows, dtype=np.int64))
            for s, rows in zip(SPLITS, np.split(np.asarray(order), cuts), strict=True)}


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
    pooled:   the notebooks' split — every part pooled in order, random_split 70/15/15.
    """
    names = tuple(labels)
    if split == "pooled":
        pooled = np.concatenate([labels[n] for n in names])
        starts = np.cumsum([0] + [len(labels[n]) for n in names])
        plan: Plan = {}
        for out, rows in pooled_split(len(pooled), seed).items():
            plan[out] = [
                (n, rows[(rows >= a) & (rows < b)] - a)
                for n, a, b in zip(names, starts[:-1], starts[1:], strict=True)
            ]
        return (
            plan,
            f"pooled {'+'.join(names)} ({len(pooled):,} images), torch random_split "
            f"{percent(POOLED)}, seed {seed}",
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
