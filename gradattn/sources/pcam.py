"""PatchCamelyon (PCam): 327,680 96 px RGB patches of lymph-node sections, 2 classes.

Six HDF5 files, `camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5`: x uint8
(N, 96, 96, 3) under key "x", y uint8 (N, 1, 1, 1) under key "y". They are published gzipped
(`.h5.gz`, md5 of each in torchvision's `PCAM`); we fetch them from the authors' Zenodo record
(plain HTTP, unlike torchvision's Google Drive copies, which need gdown), verify, and keep
the decompressed `.h5` in raw/. Preparation streams rows out of the HDF5 files, so the 9 GB of
pixels never sit in memory.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import h5py
import numpy as np
from torchvision.datasets import PCAM
from tqdm import tqdm

from gradattn.core.errors import GradattnError
from gradattn.core.io import atomic_path, one_line
from gradattn.prepared.format import PreparedWriter
from gradattn.sources.fetch import (
    check_source,
    fetch,
    find_file,
    install,
    manual_hint,
    md5sum,
    missing_in_source,
    verify,
)
from gradattn.sources.spec import DatasetSpec
from gradattn.sources.streaming import write_splits

RECORD = "https://zenodo.org/records/2546921"
ZENODO = RECORD + "/files/{}?download=1"
PARTS = {"train": "train", "val": "valid", "test": "test"}  # our part name → the files' name
FILES = [f"camelyonpatch_level_2_split_{PARTS[p]}_{k}.h5" for p in PARTS for k in ("x", "y")]
# md5 of each .h5.gz, from torchvision (its "val" files are the "valid" ones).
GZ_MD5 = {f"{entry[0]}.gz": entry[2] for part in PCAM._FILES.values() for entry in part.values()}
CLASSES = ("no tumour", "metastatic tumour")


def _gunzip(archive: Path, dest: Path) -> None:
    try:
        with (
            atomic_path(dest) as tmp,
            gzip.open(archive, "rb") as fin,
            open(tmp, "wb") as fout,
            tqdm(
                unit="B", unit_scale=True, unit_divisor=1024, desc=f"unzip {dest.name}", leave=False
            ) as bar,
        ):
            while block := fin.read(1 << 22):
                fout.write(block)
                bar.update(len(block))
    except (OSError, EOFError, zlib.error) as err:
        raise GradattnError(f"pcam: cannot decompress {archive}: {one_line(err)}") from None


def _open_h5(path: Path, key: str) -> h5py.File:
    """The PCam HDF5 file holding dataset `key`; anything else is refused in one line."""
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise GradattnError(
            f"pcam: {path} is not a readable HDF5 file ({one_line(err)}): replace it with the "
            "original and run the download again"
        ) from None
    if key not in f:
        f.close()
        raise GradattnError(f"pcam: {path} has no dataset {key!r}: not a PCam file")
    return f


def _check_h5(path: Path) -> None:
    _open_h5(path, "x" if path.stem.endswith("_x") else "y").close()


def _from_source(raw_dir: Path, source: Path) -> None:
    source = check_source("pcam", source)
    missing = []
    for name in FILES:
        h5, gz = find_file(source, name), find_file(source, f"{name}.gz")
        if h5 is not None:  # decompressed: no published checksum, so check its structure
            _check_h5(h5)
            install(h5, raw_dir / name, dataset="pcam")
        elif gz is not None:
            verify(gz, GZ_MD5[gz.name], dataset="pcam", fix="replace it with the original")
            _gunzip(gz, raw_dir / name)
        else:
            missing.append(name)
    if missing:
        raise missing_in_source(
            "pcam", source, missing, "the six " + ", ".join(FILES) + " (each .h5 or .h5.gz)"
        )


def download(raw_dir: Path, source: Path | None) -> None:
    if source is not None:
        _from_source(raw_dir, source)
        return
    by_md5 = {md5: gz[: -len(".gz")] for gz, md5 in GZ_MD5.items()}
    hint = manual_hint("pcam", "the six " + ", ".join(f"{n}.gz" for n in FILES))
    pending = [n for n in FILES if not (raw_dir / n).exists()]
    for name in FILES:
        # A mirror may carry a valid/test file under the other's name, so each file is named by
        # its md5 after download; a URL is skipped once neither name it could hold is missing.
        partner = (
            name.replace("_valid_", "_test_")
            if "_valid_" in name
            else name.replace("_test_", "_valid_")
        )
        if name not in pending and partner not in pending:
            continue
        archive = fetch(
            ZENODO.format(f"{name}.gz"), raw_dir / f"{name}.gz", dataset="pcam", hint=hint
        )
        actual = by_md5.get(md5sum(archive))
        if actual is None:
            archive.unlink()
            raise GradattnError(
                f"pcam: {ZENODO.format(name + '.gz')} matches no published md5: "
                "a damaged download; run it again"
            )
        if actual in pending:
            _gunzip(archive, raw_dir / actual)
            pending.remove(actual)
        archive.unlink()
    if pending:
        raise GradattnError(f"pcam: the mirror did not provide {', '.join(pending)}; {hint}")


def prepare(raw_dir: Path, writer: PreparedWriter, split: str, split_seed: int) -> None:
    handles = []
    try:
        parts = {}
        for part, tag in PARTS.items():
            for key in "xy":
                path = raw_dir / f"camelyonpatch_level_2_split_{tag}_{key}.h5"
                handles.append(_open_h5(path, key))
            x, y = handles[-2:]
            parts[part] = (x["x"], np.asarray(y["y"]).reshape(-1))  # x stays on disk
        write_splits(writer, parts, split, split_seed)
    finally:
        for handle in handles:
            handle.close()


SPECS = (
    DatasetSpec(
        name="pcam",
        classes=CLASSES,
        channels=3,
        size=96,
        augment="none",  # PCam cell 4
        download=download,
        prepare=prepare,
        splits="official 262,144 train / 32,768 valid / 32,768 test",
        url=RECORD,
    ),
)
