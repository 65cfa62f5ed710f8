"""CIFAR-10: the pickled batches torchvision's `CIFAR10` downloads, read straight into uint8
arrays (URL and md5 sums from torchvision's class)."""

from __future__ import annotations

import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10

from gradattn.core.errors import GradattnError
from gradattn.core.io import atomic_dir
from gradattn.prepared.format import PreparedWriter
from gradattn.sources.fetch import (
    check_source,
    fetch,
    find_file,
    install,
    manual_hint,
    md5sum,
    verify,
    verify_raw,
)
from gradattn.sources.spec import DatasetSpec
from gradattn.sources.splits import val_note
from gradattn.sources.streaming import write_splits

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


SPECS = (
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
    ),
)

