"""TissueMNIST and BloodMNIST: the MedMNIST npz files, at 28 px or MedMNIST+'s 64/128/224 px.

URL, md5, class names and channel count come from the `medmnist` package's INFO table. The
npz holds `{train,val,test}_images` (N, H, W[, C]) uint8 and `{…}_labels` (N, 1); the image
arrays are streamed out of the zip (`NpyInZip`), so TissueMNIST at 224 px (12 GB of pixels)
prepares in well under 4 GB of RAM. `data.medmnist_size` picks the size.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from pathlib import Path

import numpy as np

from gradattn.core.errors import GradattnError
from gradattn.prepared.format import PreparedWriter
from gradattn.sources.fetch import get_files, verify_raw
from gradattn.sources.spec import DatasetSpec
from gradattn.sources.streaming import NpyInZip, open_npz, write_splits


def _load_info() -> dict:
    """The `medmnist` package's INFO table, read from its info.py alone: importing the package
    also imports its evaluator (scikit-learn, pandas), seconds that every stage would pay."""
    package = importlib.util.find_spec("medmnist")
    if package is None or not package.submodule_search_locations:
        raise GradattnError("the medmnist package is not installed: pip install medmnist")
    path = Path(package.submodule_search_locations[0]) / "info.py"
    spec = importlib.util.spec_from_file_location("_gradattn_medmnist_info", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.INFO


INFO = _load_info()
SIZES = (28, 64, 128, 224)
DATASETS = ("tissuemnist", "bloodmnist")


def npz_name(flag: str, size: int = 28) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def url_md5(flag: str, size: int = 28) -> tuple[str, str]:
    suffix = "" if size == 28 else f"_{size}"
    return INFO[flag][f"url{suffix}"], INFO[flag][f"MD5{suffix}"]


def download(raw_dir: Path, source: Path | None, *, flag: str, size: int) -> None:
    url, md5 = url_md5(flag, size)
    get_files(flag, raw_dir, source, [(npz_name(flag, size), url, md5)])


def read_npz(path: Path, fix: str) -> dict[str, tuple[NpyInZip, np.ndarray]]:
    """The MedMNIST layout: {split: (streamed images, labels (N,))}."""
    parts = {}
    with open_npz(path, fix) as arrays:
        keys = set(arrays.files)
        for split in ("train", "val", "test"):
            if f"{split}_images" not in keys or f"{split}_labels" not in keys:
                raise GradattnError(
                    f"{path} lacks {split}_images/{split}_labels: not a MedMNIST npz"
                )
            labels = np.asarray(arrays[f"{split}_labels"]).astype(np.int64).reshape(-1)
            parts[split] = (NpyInZip(path, f"{split}_images"), labels)
    return parts


def prepare(
    raw_dir: Path, writer: PreparedWriter, split: str, split_seed: int, *, flag: str, size: int
) -> None:
    name, md5 = npz_name(flag, size), url_md5(flag, size)[1]
    verify_raw(raw_dir, {name: md5}, dataset=flag)
    parts = read_npz(raw_dir / name, fix=f"run `dvc repro -f download@{flag}`")
    try:
        write_splits(writer, parts, split, split_seed)
    finally:
        for images, _ in parts.values():
            images.close()


def medmnist_spec(flag: str, size: int = 28, augment: str = "rotate_flip_jitter") -> DatasetSpec:
    """The spec of any 2-D MedMNIST flag (e.g. pneumoniamnist) at one of SIZES."""
    if flag not in INFO or "url" not in INFO[flag]:
        raise GradattnError(f"unknown MedMNIST dataset {flag!r}")
    if size not in SIZES:
        raise GradattnError(
            f"data.medmnist_size = {size!r} is not allowed: choose one of "
            f"{', '.join(map(str, SIZES))}"
        )
    info = INFO[flag]
    n = info["n_samples"]
    return DatasetSpec(
        name=flag,
        classes=tuple(info["label"][str(i)] for i in range(len(info["label"]))),
        channels=info["n_channels"],
        size=size,
        augment=augment,
        download=partial(download, flag=flag, size=size),
        prepare=partial(prepare, flag=flag, size=size),
        splits=f"official {n['train']:,} train / {n['val']:,} val / {n['test']:,} test",
        url=url_md5(flag, size)[0],
        options=("medmnist_size",),
        variant=lambda medmnist_size=28, flag=flag: medmnist_spec(flag, medmnist_size, augment),
    )


SPECS = tuple(medmnist_spec(flag) for flag in DATASETS)
