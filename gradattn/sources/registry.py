"""Dataset name → what it is and how to fetch and prepare it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gradattn.core.errors import GradattnError
from gradattn.prepared.format import PreparedWriter

# download(raw_dir, source): put the source's files under raw_dir, from `source` (a local
# folder in the source's own layout) when given, else from the internet.
Downloader = Callable[[Path, "Path | None"], None]
# prepare(raw_dir, writer, split, split_seed): read raw files, write train/val/test.
Preparer = Callable[[Path, PreparedWriter, str, int], None]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    channels: int
    size: int
    augment: str  # a key of gradattn.prepared.augment.AUGMENTATIONS, applied to training batches
    download: Downloader
    prepare: Preparer
    splits: str  # how the official split is made, for the README and meta.json
    url: str = ""
    # The notebooks' double-normalisation defect hit this dataset's training images
    # (data.legacy_preprocessing reproduces it).
    notebook_defect: bool = False
    # data.* keys that change this dataset's files (e.g. "medmnist_size"), and the function
    # that returns the spec for given values of them: variant(medmnist_size=64).
    options: tuple[str, ...] = ()
    variant: Callable[..., DatasetSpec] | None = None


_REGISTRY: dict[str, DatasetSpec] = {}


# The built-in datasets and the module (in gradattn.sources) that registers each, imported
# the first time the name is asked for: importing them all would cost every stage seconds of
# torch and torchvision imports for the one dataset it handles. tests/test_data_sources.py
# holds this table equal to what the modules register.
BUILTIN = {
    "fashionmnist-mini": "bundled",
    "cifar10": "cifar10",
    "fashionmnist": "fashionmnist",
    "tissuemnist": "medmnist_sets",
    "bloodmnist": "medmnist_sets",
    "padufes20": "padufes",
    "pcam": "pcam",
    "svhn": "svhn",
    "tinyimagenet": "tinyimagenet",
}


def register(spec: DatasetSpec) -> DatasetSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _custom_factory(name: str, cfg: dict) -> DatasetSpec:
    """A data.custom entry's spec (gradattn.sources.custom, imported when first needed)."""
    return importlib.import_module("gradattn.sources.custom").custom_spec(name, cfg)


def known_datasets() -> tuple[str, ...]:
    return tuple(sorted(set(_REGISTRY) | set(BUILTIN)))


def get_spec(name: str, custom: dict | None = None, options: dict | None = None) -> DatasetSpec:
    """The spec of `name`; `options` gives values for the keys in its `options` (others are
    ignored), as gradattn.config.dataset_options(data, name, protocol) returns them."""
    if custom and name in custom:
        return _custom_factory(name, custom[name])
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(f"gradattn.sources.{BUILTIN[name]}")
    if name not in _REGISTRY:
        allowed = sorted(set(known_datasets()) | set(custom or {}))
        raise GradattnError(f"unknown dataset {name!r}: choose one of {', '.join(allowed)}, "
                            "or describe your own under data.custom")
    spec = _REGISTRY[name]
    values = {k: v for k, v in (options or {}).items() if k in spec.options}
    return spec.variant(**values) if values and spec.variant else spec
