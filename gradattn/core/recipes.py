"""The recipes, in one place: what a value `auto` means under each.

A recipe selects a whole protocol: `corrected` (this project's) or `notebooks` (the authors'
notebooks exactly, per dataset; docs/deviations.md lists every difference). A key whose value
is `auto` takes the recipe's value; any other value overrides the recipe.

- The training / evaluation side: RECIPE_VALUES (one row per key) and recipe_batch_size,
  which gradattn.core.settings' sections apply in their `resolve`.
- The data side: `resolve(data, recipe, name)` turns data.* into one dataset's protocol
  (split, size, channels, normalisation, augmentation); `configure` writes it to
  configs/<dataset>/prepare.json, `preprocess` applies it and records it in meta.json
  (gradattn.sources.preparation), and training reads it from meta.json only.

`notebooks` on the data side is each notebook's protocol, as NOTEBOOKS below states it (cells
are 0-based indices into the notebook's `cells`; docs/deviations.md rows 7, 11-15). A dataset
no notebook covers (custom data) gets the corrected protocol under both.

This module imports no settings (gradattn.core.settings imports it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gradattn.core.errors import ConfigError

RECIPES = ("corrected", "notebooks")  # the first is the default
AUTO = "auto"
# What `auto` means under each recipe: the one table of the training/evaluation side
# (docs/deviations.md names each row). train.batch_size is the one per-dataset value
# (recipe_batch_size).
RECIPE_VALUES: dict[str, dict[str, str]] = {
    # Row 8: the notebooks' "best weights" copy is shallow, so they evaluate the last epoch.
    "train.weights": {"corrected": "best", "notebooks": "last"},
    # Row 9: their own plateau callback (CIFAR-10 cell 4) vs torch's ReduceLROnPlateau.
    "train.plateau": {"corrected": "torch", "notebooks": "notebooks"},
    # Row 17: Table 4's gap, signed at the evaluated epoch vs its absolute value.
    "evaluate.gap": {"corrected": "signed", "notebooks": "absolute"},
    # Row 18: GHS on training batches (no augmentation) vs on test batches.
    "gradients.split": {"corrected": "train", "notebooks": "test"},
    # Row 20: a layer whose hook never fired is left out vs counted (as unhealthy).
    "gradients.silent": {"corrected": "skip", "notebooks": "count"},
}


def recipe_value(recipe: str, key: str, value: Any) -> Any:
    """`value` unless it is `auto`, else what the recipe sets for `key`."""
    return RECIPE_VALUES[key][recipe] if value == AUTO else value


def recipe_batch_size(recipe: str, dataset: str) -> int:
    """train.batch_size `auto`: 128 (§3.3), but 64 for PAD-UFES-20 in the notebooks (PAD cell 4)."""
    return 64 if recipe == "notebooks" and dataset == "padufes20" else 128


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLIT_SEED = {"corrected": 0, "notebooks": 42}


@dataclass(frozen=True)
class Notebook:
    """What one notebook does with its data (None: the source's own size)."""

    cell: str
    split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    image_size: int | None = None
    grey_to_rgb: bool = False
    defect: bool = False  # the double normalisation (ToPILImage on a normalised tensor)


_FASHION = Notebook("FMNIST 8", "pooled", FASHION_MEAN, FASHION_STD, "flip_rotate_translate",
                    defect=True)
_MEDMNIST = dict(split="official", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 augment="rotate_flip_jitter", image_size=64, grey_to_rgb=True)
NOTEBOOKS = {
    "cifar10": Notebook("CIFAR 4", "pooled", CIFAR_MEAN, CIFAR_STD, "crop_flip", defect=True),
    "fashionmnist": _FASHION,
    # The bundled subset follows Fashion-MNIST's notebook (its three parts pooled in order).
    "fashionmnist-mini": _FASHION,
    "svhn": Notebook("SVHN 8", "pooled", SVHN_MEAN, SVHN_STD, "none"),
    "tinyimagenet": Notebook("Tiny 4", "pooled", IMAGENET_MEAN, IMAGENET_STD, "none"),
    "pcam": Notebook("PCam 4", "official", IMAGENET_MEAN, IMAGENET_STD, "none"),
    # per image: np.random.seed(42); np.random.shuffle (PAD cell 4), our `pooled` for PAD
    "padufes20": Notebook("PAD 4", "pooled", IMAGENET_MEAN, IMAGENET_STD, "pad_notebook",
                          image_size=224),
    # Resize((64, 64)), then x.repeat(3, 1, 1) for grey images (Blood is RGB already)
    "bloodmnist": Notebook("Blood 5", **_MEDMNIST),
    "tissuemnist": Notebook("Tissue 5", **_MEDMNIST),
}


@dataclass(frozen=True)
class Protocol:
    """One dataset's resolved data protocol (no `auto` left)."""

    recipe: str
    split: str  # official | pooled
    split_seed: int
    image_size: int | None  # resize every image to this (None: the source's size)
    grey_to_rgb: bool  # repeat a grey channel to three
    normalise: str  # split (the training split's statistics) | notebook (its constants)
    mean: tuple[float, ...] | None  # the notebook's constants (None: the split's statistics)
    std: tuple[float, ...] | None
    augment: str  # a key of gradattn.prepared.augment.AUGMENTATIONS
    legacy_defect: bool  # the notebooks' double normalisation on training batches
    svhn_extra: bool  # SVHN: its `extra` images too (SVHN cell 8 pools them)

    def as_dict(self) -> dict:
        return asdict(self)


def resolve(data, recipe: str, name: str, *, augment: str, channels: int,
            notebook_defect: bool) -> Protocol:
    """`name`'s protocol: each value of `data` (a gradattn.core.settings.DataConfig), or
    where it is `auto` the recipe's.
    `augment`, `channels` and `notebook_defect` are the dataset spec's (the corrected
    augmentation, the source's channels, whether the notebooks' defect hit this dataset)."""
    notebook = NOTEBOOKS.get(name) if recipe == "notebooks" else None

    def pick(value, corrected, notebooks):
        if value != AUTO:
            return value
        return notebooks if notebook is not None else corrected

    normalise = pick(data.normalise, "split", "notebook")
    constants = NOTEBOOKS.get(name) if normalise == "notebook" else None
    grey_to_rgb = bool(pick(data.grey_to_rgb, False, notebook and notebook.grey_to_rgb))
    out_channels = 3 if grey_to_rgb else channels
    if constants and len(constants.mean) not in (1, out_channels):
        raise ConfigError(
            f"{name}: its notebook's normalisation has {len(constants.mean)} channels, the "
            f"images {out_channels}: set data.grey_to_rgb=true or data.normalise=split "
            "(or leave both auto)"
        )
    return Protocol(
        recipe=recipe,
        split=pick(data.split, "official", notebook and notebook.split),
        split_seed=SPLIT_SEED[recipe] if data.split_seed == AUTO else data.split_seed,
        image_size=pick(data.image_size, None, notebook and notebook.image_size),
        grey_to_rgb=grey_to_rgb,
        # No constants for this dataset (custom data): the split's statistics.
        normalise="notebook" if constants else "split",
        mean=constants.mean if constants else None,
        std=constants.std if constants else None,
        augment=pick(data.augment, augment, notebook and notebook.augment),
        legacy_defect=bool(notebook_defect and pick(data.legacy_preprocessing, False, True)),
        svhn_extra=name == "svhn" and bool(pick(data.svhn_extra, False, True)),
    )

