"""Dataset name → what it is and how to fetch and prepare it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gradattn.data.prepared import PreparedWriter
from gradattn.errors import GradattnError

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
    augment: str  # a key of gradattn.data.augment.AUGMENTATIONS, applied to training batches
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


def register(spec: DatasetSpec) -> DatasetSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    # Importing the source modules registers their datasets.
    from gradattn.data import (  # noqa: F401
        bundled,
        medmnist_sets,
        padufes,
        pcam,
        tinyimagenet,
        torchvision_sets,
    )


def known_datasets() -> tuple[str, ...]:
    _load_builtin()
    return tuple(sorted(_REGISTRY))


def get_spec(name: str, custom: dict | None = None, options: dict | None = None) -> DatasetSpec:
    """The spec of `name`; `options` gives values for the keys in its `options` (others are
    ignored), as gradattn.config.dataset_options(data, name, protocol) returns them."""
    _load_builtin()
    if custom and name in custom:
        from gradattn.data.custom import custom_spec

        return custom_spec(name, custom[name])
    if name not in _REGISTRY:
        allowed = sorted(set(_REGISTRY) | set(custom or {}))
        raise GradattnError(f"unknown dataset {name!r}: choose one of {', '.join(allowed)}, "
                            "or describe your own under data.custom")
    spec = _REGISTRY[name]
    values = {k: v for k, v in (options or {}).items() if k in spec.options}
    return spec.variant(**values) if values and spec.variant else spec
