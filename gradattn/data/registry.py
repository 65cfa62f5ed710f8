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


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtin() -> None:
    # Importing the source modules registers their datasets.
    from gradattn.data import bundled  # noqa: F401


def known_datasets() -> tuple[str, ...]:
    _load_builtin()
    return tuple(sorted(_REGISTRY))


def get_spec(name: str, custom: dict | None = None) -> DatasetSpec:
    _load_builtin()
    if custom and name in custom:
        from gradattn.data.custom import custom_spec

        return custom_spec(name, custom[name])
    if name not in _REGISTRY:
        allowed = sorted(set(_REGISTRY) | set(custom or {}))
        raise GradattnError(f"unknown dataset {name!r}: choose one of {', '.join(allowed)}, "
                            "or describe your own under data.custom")
    return _REGISTRY[name]
