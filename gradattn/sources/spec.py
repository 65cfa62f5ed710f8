"""What a dataset is and how to fetch and prepare it: `DatasetSpec`, the one type every source
module (and a data.custom entry) describes its dataset with. It imports no source and no
registry, so each of them can import it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
