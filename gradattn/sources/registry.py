"""Dataset name → what it is and how to fetch and prepare it."""

from __future__ import annotations

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


def register(spec: DatasetSpec) -> DatasetSpec:
    _REGISTRY[spec.name] = spec
    return spec


# data.custom entries: set by gradattn.sources (the custom source imports this module).
_custom_factory: Callable[[str, dict], DatasetSpec] | None = None


def register_custom(factory: Callable[[str, dict], DatasetSpec]) -> None:
    global _custom_factory
    _custom_factory = factory


def known_datasets() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get_spec(name: str, custom: dict | None = None, options: dict | None = None) -> DatasetSpec:
    """The spec of `name`; `options` gives values for the keys in its `options` (others are
    ignored), as gradattn.config.dataset_options(data, name, protocol) returns them."""
    if custom and name in custom:
        return _custom_factory(name, custom[name])
    if name not in _REGISTRY:
        allowed = sorted(set(_REGISTRY) | set(custom or {}))
        raise GradattnError(f"unknown dataset {name!r}: choose one of {', '.join(allowed)}, "
                            "or describe your own under data.custom")
    spec = _REGISTRY[name]
    values = {k: v for k, v in (options or {}).items() if k in spec.options}
    return spec.variant(**values) if values and spec.variant else spec
