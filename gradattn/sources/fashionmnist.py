"""Fashion-MNIST: the IDX files torchvision's `FashionMNIST` downloads, read straight into
uint8 arrays (URLs and md5 sums from torchvision's class)."""

from __future__ import annotations

import gzip
import zlib
from functools import partial
from pathlib import Path

import numpy as np
from torchvision.datasets import FashionMNIST

from gradattn.core.errors import GradattnError
from gradattn.core.io import file_digest, one_line
from gradattn.prepared.format import PreparedWriter
from gradattn.sources.fetch import (
    get_files,
    verify_raw,
)
from gradattn.sources.spec import DatasetSpec
from gradattn.sources.splits import val_note
from gradattn.sources.streaming import write_splits

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


SPECS = (
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
    ),
)

