"""Your own data: `data.custom.<name>: {format: imagefolder | npz, path: ..., size: ...}`.

imagefolder  one sub-folder per class (names sorted = class order), as torchvision's
             `ImageFolder` finds them (`find_classes`, its image extensions), symlinked folders
             followed; each real folder and file is listed once (a symlink loop, or an image
             reachable twice, is refused: no image can sit in two classes or splits). 16-bit
             grey images are scaled to 8 bits (65535 -> 255), not clipped.
             With `train/` and `test/` sub-trees (and optionally `val/`) those splits are kept and,
             without `val/`, val is a stratified 10 % of train; otherwise no split is given.
npz          arrays `x` (N, H, W[, C]) uint8 and `y` (N,) — no split given — or the MedMNIST
             layout (`train_images`, `train_labels`, `val_…`, `test_…`), whose split is kept.
Data with no split gets a stratified 70/10/20 (MedMNIST's 7:1:2), from `data.split_seed`;
`data.split: pooled` gives the notebooks' random 70/15/15 instead (fractions: splits.py).

Optional keys: `size` (resize every image to size×size, bilinear, aspect ratio not kept; needed
when images differ in size), `augment` (a training augmentation, default none) and, for npz,
`classes` (names for the sorted label values). Classes otherwise come from the folder names
or the sorted unique labels.

The download stage copies the data into data/raw/<name> (an image folder packed into one
uncompressed `images.zip`, so DVC tracks one file, not thousands).
"""

from __future__ import annotations

import os
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from gradattn.core.errors import ConfigError, GradattnError
from gradattn.core.io import walk_once
from gradattn.core.paths import user_path
from gradattn.core.settings import AUGMENT_NAMES
from gradattn.prepared.format import PreparedWriter
from gradattn.sources.fetch import install, pack_zip
from gradattn.sources.spec import DatasetSpec
from gradattn.sources.splits import NO_SPLIT, percent, val_note
from gradattn.sources.streaming import LazyImages, NpyInZip, decode_image, open_npz, write_splits

FORMATS = ("imagefolder", "npz")
KEYS = ("format", "path", "size", "augment", "classes")
MIN_SIZE, MAX_SIZE = 8, 1024
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
FOLDER_ZIP, NPZ = "images.zip", "data.npz"


def _bad(name: str, key: str, value, allowed: str) -> ConfigError:
    where = f"data.custom.{name}" + (f".{key}" if key else "")
    return ConfigError(f"{where} = {value!r} is not allowed: {allowed} (fix it in params.yaml)")


def validate(name: str, entry) -> dict:
    """The entry, checked: format, path (which must exist), size, augment, classes."""
    if not isinstance(entry, dict):
        raise _bad(
            name, "", entry, "must be a mapping {format: imagefolder | npz, path: ..., size: ...}"
        )
    for key in entry:
        if key not in KEYS:
            raise _bad(name, key, entry[key], "unknown key; known keys: " + ", ".join(KEYS))
    fmt = entry.get("format")
    if fmt not in FORMATS:
        raise _bad(name, "format", fmt, "choose one of: " + ", ".join(FORMATS))
    raw_path = entry.get("path")
    if not isinstance(raw_path, str) or not raw_path:
        raise _bad(
            name, "path", raw_path, "must be the path of your data (a folder or an .npz file)"
        )
    path = user_path(raw_path)
    if fmt == "imagefolder" and not path.is_dir():
        raise _bad(
            name, "path", raw_path, "must be an existing folder with one sub-folder per class"
        )
    if fmt == "npz" and not path.is_file():
        raise _bad(name, "path", raw_path, "must be an existing .npz file")
    size = entry.get("size")
    if size is not None and (
        isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE
    ):
        raise _bad(
            name,
            "size",
            size,
            f"must be an integer from {MIN_SIZE} to {MAX_SIZE} "
            "(pixels per side), or left out to keep the images' size",
        )
    augment = entry.get("augment", "none")
    if augment not in AUGMENT_NAMES:
        raise _bad(name, "augment", augment, "choose one of: " + ", ".join(AUGMENT_NAMES))
    classes = entry.get("classes")
    if classes is not None and (
        fmt != "npz"
        or not isinstance(classes, list)
        or not all(isinstance(c, str) for c in classes)
    ):
        raise _bad(name, "classes", classes, "a list of class names, for npz data only")
    return {
        "format": fmt,
        "path": path,
        "size": size,
        "augment": augment,
        "classes": tuple(classes) if classes else None,
    }


# ---------------------------------------------------------------- imagefolder


SPLIT_FOLDERS = ("train", "val", "test")
LAYOUTS = ("give either one sub-folder per class, or train/ and test/ (and optionally val/) "
           "each with one sub-folder per class")


def _trees(path: Path, name: str = "") -> dict[str, Path]:
    """{split: folder} of an image folder: its train/ and test/ (and val/) sub-trees, or
    {"all": path}. A mix of the two layouts is refused: a class folder beside train/ and
    test/ would be dropped, and train/ without test/ would be taken for a class."""
    folders = sorted(e.name for e in os.scandir(path) if e.is_dir()) if path.is_dir() else []
    splits = [f for f in folders if f in SPLIT_FOLDERS]
    if not splits:
        return {"all": path}
    others = [f for f in folders if f not in SPLIT_FOLDERS]
    if others or not {"train", "test"} <= set(splits):
        what = (f"both split folders ({', '.join(f'{s}/' for s in splits)}) and other "
                f"folders ({', '.join(f'{o}/' for o in others[:5])})" if others else
                f"{', '.join(f'{s}/' for s in splits)} but not both train/ and test/")
        raise GradattnError(f"data.custom.{name}: {path} has {what}: {LAYOUTS}")
    return {s: path / s for s in SPLIT_FOLDERS if s in splits}


def _image_folder():
    """torchvision's ImageFolder rules (`find_classes`, `IMG_EXTENSIONS`), imported only for a
    folder dataset: torchvision's import costs the npz and zip formats seconds a stage."""
    from torchvision.datasets import folder

    return folder


def _folder_classes(name: str, trees: dict[str, Path]) -> list[str]:
    find_classes = _image_folder().find_classes
    found = {}
    for split, tree in trees.items():
        try:
            found[split] = find_classes(tree)[0]
        except FileNotFoundError:
            raise GradattnError(f"data.custom.{name}: {tree} has no class sub-folders") from None
    classes = found.get("train", found.get("all"))
    for split, names in found.items():
        extra = sorted(set(names) - set(classes))
        if extra:
            raise GradattnError(
                f"data.custom.{name}: {trees[split]} has classes {extra} that "
                f"{trees['train']} lacks"
            )
    return classes


def _list_images(name: str, trees: dict[str, Path], classes: list[str]
                 ) -> list[tuple[Path, str]]:
    """(file, `<split>/<class>/<relative path>`) of every image, each real file once: an image
    met twice (a link, or a folder linked into two classes or splits) is refused, so none can
    land in two splits or two classes."""
    extensions = _image_folder().IMG_EXTENSIONS
    members, seen_dirs, seen_files = [], {}, {}
    for split, tree in trees.items():
        for cls in classes:
            top = tree / cls
            if not top.is_dir():
                continue
            for path in walk_once(top, seen_dirs, where=f"data.custom.{name}"):
                if not path.name.lower().endswith(extensions):
                    continue
                if not path.is_file():  # a dangling link: an image silently missing
                    raise GradattnError(
                        f"data.custom.{name}: {path} is a link to nothing "
                        f"({os.readlink(path) if path.is_symlink() else 'not a file'}): "
                        "point it at the image or remove it")
                real = os.path.realpath(path)
                if real in seen_files:
                    raise GradattnError(
                        f"data.custom.{name}: {path} and {seen_files[real]} are the same file "
                        f"({real}): an image may appear once only (one class, one split); "
                        "remove one of them")
                seen_files[real] = path
                members.append((path, f"{split}/{cls}/{path.relative_to(top).as_posix()}"))
    # A class with no image in any split would vanish without a word, shifting every later
    # class's label (a split lacking a class is preprocess's to refuse or allow).
    empty = sorted(set(classes) - {member.split("/")[1] for _, member in members})
    if empty:
        folders = [str(tree / empty[0]) for tree in trees.values() if (tree / empty[0]).is_dir()]
        raise GradattnError(
            f"data.custom.{name}: class {empty[0]!r} ({', '.join(folders)}) holds no images "
            f"({', '.join(extensions)}){f' (nor do {empty[1:]})' if empty[1:] else ''}: "
            "add its images, or remove its folder")
    return members


def _folder_download(raw_dir: Path, source, *, name: str, cfg: dict) -> None:
    trees = _trees(cfg["path"], name)
    classes = _folder_classes(name, trees)
    members = _list_images(name, trees, classes)
    if not members:
        raise GradattnError(
            f"data.custom.{name}: no images "
            f"({', '.join(_image_folder().IMG_EXTENSIONS)}) under {cfg['path']}")
    (raw_dir / NPZ).unlink(missing_ok=True)
    pack_zip(members, raw_dir / FOLDER_ZIP, total=len(members), desc=f"{name}: pack")


def _folder_prepare(
    raw_dir: Path, writer: PreparedWriter, split: str, split_seed: int, *, name: str, cfg: dict
) -> None:
    with zipfile.ZipFile(raw_dir / FOLDER_ZIP) as archive:
        members = sorted(n for n in archive.namelist() if not n.endswith("/"))
        by_split: dict[str, list[tuple[str, str]]] = {}
        for member in members:
            part, cls, _ = member.split("/", 2)
            by_split.setdefault(part, []).append((member, cls))
        classes = sorted({cls for entries in by_split.values() for _, cls in entries})
        index = {c: i for i, c in enumerate(classes)}

        def open_image(member: str, mode: str | None = None) -> Image.Image:
            # the user's own file: the zip member `all/<class>/<file>` or `<split>/<class>/...`
            part, rest = member.split("/", 1)
            origin = cfg["path"] / (rest if part == "all" else member)
            return decode_image(
                archive, member, mode, where=f"data.custom.{name}: {origin}",
                fix=f"remove or replace it, then run `dvc repro download@{name}` again",
            )

        first = open_image(members[0])
        mode = "L" if first.mode in GREY_MODES else "RGB"
        width, height = (cfg["size"],) * 2 if cfg["size"] else first.size
        channels = 1 if mode == "L" else 3

        def load(entries: list[tuple[str, str]], i: int) -> np.ndarray:
            member = entries[i][0]
            im = open_image(member, mode)
            if cfg["size"]:
                im = im.resize((width, height), Image.Resampling.BILINEAR)
            elif im.size != (width, height):
                raise GradattnError(
                    f"data.custom.{name}: images differ in size ({member} is "
                    f"{im.size[0]}x{im.size[1]}, the first {width}x{height}): set "
                    f"data.custom.{name}.size to resize them all"
                )
            return np.asarray(im).reshape(height, width, channels)

        parts = {}
        for part, entries in by_split.items():
            labels = np.array([index[cls] for _, cls in entries], dtype=np.int64)
            parts[part] = (
                LazyImages(len(entries), (height, width, channels), partial(load, entries)),
                labels,
            )
        write_splits(writer, parts, split, split_seed, classes=classes)


# ---------------------------------------------------------------- npz


class _Resized:
    """Row blocks of an image array, each image resized to size×size (bilinear)."""

    def __init__(self, images, size: int):
        self.images, self.size = images, size
        self.channels = images.shape[3] if len(images.shape) == 4 else 1

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.images), self.size, self.size, self.channels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: slice) -> np.ndarray:
        block = np.asarray(self.images[item])
        out = np.empty((len(block), self.size, self.size, self.channels), dtype=np.uint8)
        for j, img in enumerate(block):
            im = Image.fromarray(
                img.reshape(img.shape[0], img.shape[1], -1).squeeze(-1)
                if self.channels == 1
                else img
            )
            out[j] = np.asarray(
                im.resize((self.size, self.size), Image.Resampling.BILINEAR)
            ).reshape(self.size, self.size, self.channels)
        return out


def _npz_layout(name: str, path: Path) -> tuple[dict[str, tuple[str, str]], np.ndarray]:
    """{part: (images key, labels key)} and all labels, from the npz's own keys."""
    with open_npz(path, fix=f"give data.custom.{name}.path an .npz saved by numpy.savez") as arrays:
        keys = set(arrays.files)
        if {"x", "y"} <= keys:
            layout = {"all": ("x", "y")}
        elif all(
            f"{s}_{k}" in keys for s in ("train", "val", "test") for k in ("images", "labels")
        ):
            layout = {s: (f"{s}_images", f"{s}_labels") for s in ("train", "val", "test")}
        else:
            raise GradattnError(
                f"data.custom.{name}: {path} must hold arrays x and y (or "
                f"MedMNIST's train_images/train_labels/val_…/test_…); it has "
                f"{', '.join(sorted(keys))}"
            )
        labels = np.concatenate(
            [np.asarray(arrays[lab]).reshape(-1) for _, lab in layout.values()]
        )
    if labels.dtype.kind not in "iu":
        raise GradattnError(
            f"data.custom.{name}: labels in {path} must be integers, not {labels.dtype}"
        )
    return layout, labels


def _npz_image_shape(name: str, path: Path, key: str) -> tuple[int, ...]:
    images = NpyInZip(path, key)
    try:
        shape, dtype = images.shape, images.dtype
    finally:
        images.close()
    if (
        dtype != np.uint8
        or len(shape) not in (3, 4)
        or (len(shape) == 4 and shape[3] not in (1, 3))
    ):
        raise GradattnError(
            f"data.custom.{name}: {path}:{key} must be uint8 (N, H, W) or "
            f"(N, H, W, 1|3), not {dtype} {shape}"
        )
    return shape


def _npz_download(raw_dir: Path, source, *, name: str, cfg: dict) -> None:
    (raw_dir / FOLDER_ZIP).unlink(missing_ok=True)
    install(cfg["path"], raw_dir / NPZ, dataset=name)


def _npz_prepare(
    raw_dir: Path,
    writer: PreparedWriter,
    split: str,
    split_seed: int,
    *,
    name: str,
    cfg: dict,
    values: np.ndarray,
) -> None:
    path = raw_dir / NPZ
    layout, _ = _npz_layout(name, path)
    parts, readers = {}, []
    try:
        with open_npz(path, fix=f"run `dvc repro download@{name}` again") as arrays:
            for part, (img_key, lab_key) in layout.items():
                _npz_image_shape(name, path, img_key)
                labels = np.asarray(arrays[lab_key]).reshape(-1)
                unknown = np.setdiff1d(labels, values)
                if unknown.size:
                    raise GradattnError(
                        f"data.custom.{name}: {path} has labels {unknown[:5]} "
                        "not seen when the dataset was configured: run configure again"
                    )
                images = NpyInZip(path, img_key)
                readers.append(images)
                parts[part] = (
                    _Resized(images, cfg["size"]) if cfg["size"] else images,
                    np.searchsorted(values, labels),
                )
        write_splits(writer, parts, split, split_seed)
    finally:
        for images in readers:
            images.close()


# ---------------------------------------------------------------- the spec


def custom_spec(name: str, entry) -> DatasetSpec:
    cfg = validate(name, entry)
    if cfg["format"] == "imagefolder":
        trees = _trees(cfg["path"], name)
        classes = _folder_classes(name, trees)
        splits = (
            "own train/test" + ("/val" if "val" in trees else f"; {val_note()}")
            if "train" in trees
            else f"no split given: stratified {percent(NO_SPLIT)}"
        )
        return DatasetSpec(
            name=name,
            classes=tuple(classes),
            channels=0,
            size=cfg["size"] or 0,
            augment=cfg["augment"],
            splits=splits,
            url=str(cfg["path"]),
            download=partial(_folder_download, name=name, cfg=cfg),
            prepare=partial(_folder_prepare, name=name, cfg=cfg),
        )
    layout, labels = _npz_layout(name, cfg["path"])
    shape = _npz_image_shape(name, cfg["path"], next(iter(layout.values()))[0])
    values = np.unique(labels)
    names = cfg["classes"] or tuple(str(v) for v in values)
    if len(names) != len(values):
        raise _bad(
            name,
            "classes",
            list(names),
            f"must name all {len(values)} label values ({', '.join(map(str, values))})",
        )
    splits = (
        "own train/val/test (MedMNIST layout)"
        if "train" in layout
        else f"no split given: stratified {percent(NO_SPLIT)}"
    )
    return DatasetSpec(
        name=name,
        classes=tuple(names),
        channels=shape[3] if len(shape) == 4 else 1,
        size=cfg["size"] or shape[1],
        augment=cfg["augment"],
        splits=splits,
        url=str(cfg["path"]),
        download=partial(_npz_download, name=name, cfg=cfg),
        prepare=partial(_npz_prepare, name=name, cfg=cfg, values=values),
    )
