"""Tiny ImageNet (200 classes, 64 px RGB) from Stanford CS231n's zip.

Inside `tiny-imagenet-200/`: `wnids.txt` (the 200 WordNet ids: our class order),
`words.txt` (wnid → names; the first name becomes the class name), `train/<wnid>/images/*.JPEG`
(500 per class) and `val/images/*.JPEG` with their labels in `val/val_annotations.txt`
(50 per class). `test/` has no labels and is not used. The source's val set is our test set.

raw/ keeps the one zip (no 110,000 small files for DVC to hash); a folder source in the
extracted layout is packed into the same zip layout first.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from gradattn.core.errors import GradattnError
from gradattn.prepared.format import PreparedWriter
from gradattn.sources.fetch import (
    check_source,
    fetch,
    find_file,
    install,
    manual_hint,
    pack_zip,
)
from gradattn.sources.spec import DatasetSpec
from gradattn.sources.splits import val_note
from gradattn.sources.streaming import LazyImages, decode_image, write_splits

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE = "tiny-imagenet-200.zip"
MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # the archive's md5, as widely published
TOP = "tiny-imagenet-200"
SIZE = 64


def _pack_folder(root: Path, dest: Path) -> None:
    """Pack an extracted tree (the folder holding wnids.txt) into the archive's layout."""
    members = [
        (root / "wnids.txt", f"{TOP}/wnids.txt"),
        (root / "words.txt", f"{TOP}/words.txt"),
        (root / "val" / "val_annotations.txt", f"{TOP}/val/val_annotations.txt"),
    ]
    for path, _ in members:
        if not path.is_file():
            raise GradattnError(f"tinyimagenet: {path} missing: not the extracted {TOP} layout")
    images = sorted((root / "train").glob("*/images/*")) + sorted(
        (root / "val" / "images").glob("*")
    )
    members += [(p, f"{TOP}/{p.relative_to(root).as_posix()}") for p in images if p.is_file()]
    pack_zip(members, dest, total=len(members), desc="tinyimagenet: pack")


def download(raw_dir: Path, source: Path | None) -> None:
    dest = raw_dir / ARCHIVE
    if source is None:
        fetch(
            URL,
            dest,
            dataset="tinyimagenet",
            md5=MD5,
            hint=manual_hint("tinyimagenet", f"{ARCHIVE} (or its extracted {TOP}/ folder)"),
        )
        return
    source = check_source("tinyimagenet", source)
    archive = find_file(source, ARCHIVE)
    if archive is not None:
        install(archive, dest, dataset="tinyimagenet", md5=MD5)
        return
    wnids = find_file(source, "wnids.txt")
    if wnids is None:
        raise GradattnError(
            f"data.sources.tinyimagenet = {str(source)!r} holds neither {ARCHIVE} "
            f"nor the extracted {TOP}/ folder (wnids.txt, words.txt, train/, val/)"
        )
    _pack_folder(wnids.parent, dest)


def _class_names(wnids: list[str], words_txt: str) -> list[str]:
    words = dict(line.split("\t", 1) for line in words_txt.splitlines() if "\t" in line)
    first = [words.get(w, w).split(",")[0].strip() or w for w in wnids]
    # a few first names repeat across wnids: keep those unique by adding the wnid
    return [n if first.count(n) == 1 else f"{n} ({w})" for n, w in zip(first, wnids, strict=True)]


def prepare(raw_dir: Path, writer: PreparedWriter, split: str, split_seed: int) -> None:
    path = raw_dir / ARCHIVE
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        tops = [n[: -len("wnids.txt")] for n in names if n.endswith("wnids.txt")]
        if len(tops) != 1:
            raise GradattnError(f"tinyimagenet: {path} has no single wnids.txt")
        top = tops[0]
        wnids = archive.read(f"{top}wnids.txt").decode().split()
        index = {w: i for i, w in enumerate(wnids)}
        classes = _class_names(wnids, archive.read(f"{top}words.txt").decode())
        writer.notes["wnids"] = wnids

        train = sorted(
            n for n in names if n.startswith(f"{top}train/") and n.lower().endswith(".jpeg")
        )
        train_labels = [index[n[len(top) :].split("/")[1]] for n in train]
        val = []
        for line in archive.read(f"{top}val/val_annotations.txt").decode().splitlines():
            fields = line.split("\t")
            if len(fields) >= 2:
                val.append((fields[1], f"{top}val/images/{fields[0]}"))
        # In ImageFolder's order, by class folder then file name, as the notebook reads val
        # (Tiny cell 4 moves val/images/* into val/<wnid>/): a pooled split then takes the
        # notebook's images. `train` above is in that order already.
        val = [(member, index[wnid]) for wnid, member in sorted(val)]

        def images(members: list[str]) -> LazyImages:
            def load(i: int) -> np.ndarray:
                rgb = decode_image(  # some Tiny ImageNet images are greyscale
                    archive, members[i], "RGB", where=f"tinyimagenet: {members[i]} in {path}",
                    fix="run `dvc repro -f download@tinyimagenet` to fetch it again",
                )
                if rgb.size != (SIZE, SIZE):
                    rgb = rgb.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
                return np.asarray(rgb)

            return LazyImages(len(members), (SIZE, SIZE, 3), load)

        parts = {
            "train": (images(train), np.array(train_labels)),
            "test": (images([m for m, _ in val]), np.array([label for _, label in val])),
        }
        write_splits(writer, parts, split, split_seed, classes=classes)


SPECS = (
    DatasetSpec(
        name="tinyimagenet",
        classes=(),  # the 200 names are read from the archive's wnids.txt/words.txt when preparing
        channels=3,
        size=SIZE,
        augment="none",  # Tiny cell 4
        download=download,
        prepare=prepare,
        splits=f"official 100,000 train / 10,000 val (our test); {val_note()}",
        url=URL,
    ),
)
