"""Fashion-MNIST, CIFAR-10 and SVHN: the files torchvision's dataset classes download.

URLs, file names and md5 sums are read from torchvision's classes (so they stay those
torchvision checks); the files are read here in their own formats (IDX, pickled batches,
MATLAB .mat), straight into uint8 arrays.
"""

from __future__ import annotations

import gzip
import pickle
import shutil
import tarfile
import zlib
from functools import partial
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, SVHN, FashionMNIST

from gradattn.data.fetch import (
    check_source,
    fetch,
    find_file,
    get_files,
    install,
    manual_hint,
    md5sum,
    verify,
    verify_raw,
)
from gradattn.data.prepared import PreparedWriter
from gradattn.data.registry import DatasetSpec, register
from gradattn.data.splits import val_note
from gradattn.data.streaming import write_splits
from gradattn.errors import GradattnError
from gradattn.io import atomic_dir, file_digest, one_line

# ---------------------------------------------------------------- Fashion-MNIST (IDX .gz files)

FASHION_URL = FashionMNIST.mirrors[0]
FASHION_MD5 = dict(FashionMNIST.resources)  # md5 of each .gz, as published upstream
# md5 of each file's decompressed bytes: accepted when a copy was re-compressed (Debian's
# dataset-fashion-mnist package ships the same IDX data in re-compressed .gz files).
FASHION_CONTENT_MD5 = {
    "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
}
FASHION_CLASSES = tuple(FashionMNIST.classes)


def _same_content(path: Path, md5: str) -> bool:
    """Whether the .gz decompresses to the bytes with `md5` (False for a damaged .gz)."""
    try:
        return file_digest(path, "md5", opener=gzip.open) == md5
    except (OSError, EOFError, zlib.error):
        return False


FASHION_ACCEPT = {name: partial(_same_content, md5=m) for name, m in FASHION_CONTENT_MD5.items()}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (.gz) of unsigned bytes: images (N, H, W) or labels (N,)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise GradattnError(
            f"{path} is not a readable .gz file ({one_line(err)}): "
            "run `dvc repro -f download@fashionmnist` to fetch it again"
        ) from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise GradattnError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise GradattnError(f"{path}: header says {dims}, file holds {arr.size} bytes")
    return arr.reshape(dims)


def fashion_download(raw_dir: Path, source: Path | None) -> None:
    files = [(name, FASHION_URL + name, md5) for name, md5 in FASHION_MD5.items()]
    get_files("fashionmnist", raw_dir, source, files, accept=FASHION_ACCEPT)


def fashion_prepare(raw_dir: Path, writer: PreparedWriter, split: str, split_seed: int) -> None:
    verify_raw(raw_dir, FASHION_MD5, dataset="fashionmnist", accept=FASHION_ACCEPT)
    parts = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte.gz")
        parts[part] = (images, labels)
    write_splits(writer, parts, split, split_seed)


register(
    DatasetSpec(
        name="fashionmnist",
        classes=FASHION_CLASSES,
        channels=1,
        size=28,
        augment="flip_rotate_translate",  # FMNIST cell 8
        download=fashion_download,
        prepare=fashion_prepare,
        splits="official 60,000 train / 10,000 test; " + val_note(),
        url=FASHION_URL,
        notebook_defect=True,
    )
)

# ---------------------------------------------------------------- CIFAR-10 (pickled batches)

CIFAR_URL, CIFAR_ARCHIVE, CIFAR_ARCHIVE_MD5 = CIFAR10.url, CIFAR10.filename, CIFAR10.tgz_md5
CIFAR_FOLDER = CIFAR10.base_folder  # cifar-10-batches-py
CIFAR_MD5 = {name: md5 for name, md5 in CIFAR10.train_list + CIFAR10.test_list}
CIFAR_MD5[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _cifar_complete(folder: Path) -> bool:
    return all((folder / n).is_file() and md5sum(folder / n) == m for n, m in CIFAR_MD5.items())


def _extract_cifar(archive: Path, raw_dir: Path) -> None:
    """Unpack the batches from the archive into raw_dir/cifar-10-batches-py, atomically."""
    try:
        with atomic_dir(raw_dir / CIFAR_FOLDER) as tmp, tarfile.open(archive, "r:gz") as tar:
            for name, md5 in CIFAR_MD5.items():
                member = tar.getmember(f"{CIFAR_FOLDER}/{name}")
                with tar.extractfile(member) as fin, open(tmp / name, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                verify(tmp / name, md5, dataset="cifar10", fix=f"{archive} is damaged")
    except KeyError as err:
        raise GradattnError(
            f"cifar10: {archive} lacks {err}: not the CIFAR-10 python archive"
        ) from None


def cifar_download(raw_dir: Path, source: Path | None) -> None:
    folder = raw_dir / CIFAR_FOLDER
    expected = f"{CIFAR_ARCHIVE} (or its extracted {CIFAR_FOLDER}/ folder)"
    if source is not None:
        source = check_source("cifar10", source)
        found = {name: find_file(source, name) for name in CIFAR_MD5}
        if all(found.values()):  # the extracted batches
            for name, path in found.items():
                install(path, folder / name, dataset="cifar10", md5=CIFAR_MD5[name])
            return
        archive = find_file(source, CIFAR_ARCHIVE)
        if archive is None:
            raise GradattnError(
                f"data.sources.cifar10 = {str(source)!r} holds neither "
                f"{CIFAR_ARCHIVE} nor the batches {', '.join(CIFAR_MD5)}"
            )
        verify(archive, CIFAR_ARCHIVE_MD5, dataset="cifar10", fix="replace it with the original")
        _extract_cifar(archive, raw_dir)
        return
    if _cifar_complete(folder):
        print("cifar10: batches already downloaded and verified")
        return
    archive = fetch(
        CIFAR_URL,
        raw_dir / CIFAR_ARCHIVE,
        dataset="cifar10",
        md5=CIFAR_ARCHIVE_MD5,
        hint=manual_hint("cifar10", expected),
    )
    _extract_cifar(archive, raw_dir)
    archive.unlink()  # the verified batches are kept; the archive would only double the space


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def cifar_prepare(raw_dir: Path, writer: PreparedWriter, split: str, split_seed: int) -> None:
    folder = raw_dir / CIFAR_FOLDER
    verify_raw(folder, CIFAR_MD5, dataset="cifar10")  # before unpickling: pickle runs code
    names = _unpickle(folder / CIFAR10.meta["filename"])[CIFAR10.meta["key"]]
    if tuple(names) != CIFAR_CLASSES:
        raise GradattnError(
            f"cifar10: {folder}/batches.meta names classes {names}, expected {list(CIFAR_CLASSES)}"
        )
    parts = {}
    for part, batches in (("train", CIFAR10.train_list), ("test", CIFAR10.test_list)):
        entries = [_unpickle(folder / name) for name, _ in batches]
        data = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries])
        labels = np.concatenate([np.asarray(e["labels"], dtype=np.int64) for e in entries])
        parts[part] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)  # (N, H, W, C)
    write_splits(writer, parts, split, split_seed)


register(
    DatasetSpec(
        name="cifar10",
        classes=CIFAR_CLASSES,
        channels=3,
        size=32,
        augment="crop_flip",  # CIFAR cell 4
        download=cifar_download,
        prepare=cifar_prepare,
        splits="official 50,000 train / 10,000 test; " + val_note(),
        url=CIFAR_URL,
        notebook_defect=True,
    )
)

# ---------------------------------------------------------------- SVHN (MATLAB .mat files)

# The cropped-digits format. `extra` (531,131 easier images) is used only with data.svhn_extra
# (the notebooks recipe: SVHN cell 8 pools train + test + extra).
SVHN_PARTS = ("train", "test", "extra")
SVHN_FILES = {p: (SVHN.split_list[p][1], SVHN.split_list[p][0], SVHN.split_list[p][2])
              for p in SVHN_PARTS}
SVHN_CLASSES = tuple(str(d) for d in range(10))


def _svhn_files(extra: bool) -> list[tuple[str, str, str]]:
    return [SVHN_FILES[p] for p in SVHN_PARTS if extra or p != "extra"]


def svhn_download(raw_dir: Path, source: Path | None, *, extra: bool = False) -> None:
    get_files("svhn", raw_dir, source, _svhn_files(extra))


def read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    mat = loadmat(path, variable_names=["X", "y"])
    images = np.transpose(mat["X"], (3, 0, 1, 2))  # (32, 32, 3, N) → (N, 32, 32, 3)
    labels = mat["y"].astype(np.int64).reshape(-1) % 10  # SVHN labels the digit 0 as 10
    return images, labels


def svhn_prepare(raw_dir: Path, writer: PreparedWriter, split: str, split_seed: int, *,
                 extra: bool = False) -> None:
    files = _svhn_files(extra)
    verify_raw(raw_dir, {name: md5 for name, _, md5 in files}, dataset="svhn")
    # in the notebook's concatenation order: train, test, extra
    parts = {p: read_svhn(raw_dir / SVHN_FILES[p][0]) for p in SVHN_PARTS if extra or p != "extra"}
    if extra and split == "official":  # extra joins the training images (the usual practice)
        (train_x, train_y), (extra_x, extra_y) = parts["train"], parts.pop("extra")
        parts["train"] = (np.concatenate([train_x, extra_x]), np.concatenate([train_y, extra_y]))
    write_splits(writer, parts, split, split_seed)


def svhn_spec(svhn_extra: bool = False) -> DatasetSpec:
    counts = "73,257 train (+ 531,131 extra)" if svhn_extra else "73,257 train (no extra)"
    return DatasetSpec(
        name="svhn",
        classes=SVHN_CLASSES,
        channels=3,
        size=32,
        augment="none",  # the SVHN notebook trains without augmentation (and digits must not flip)
        download=partial(svhn_download, extra=svhn_extra),
        prepare=partial(svhn_prepare, extra=svhn_extra),
        splits=f"official {counts} / 26,032 test; " + val_note(),
        url=SVHN.split_list["train"][0],
        options=("svhn_extra",),
        variant=lambda svhn_extra=False: svhn_spec(svhn_extra),
    )


register(svhn_spec())
