"""PAD-UFES-20: 2,298 smartphone photos of skin lesions from 1,373 patients, 6 diagnoses.

The Mendeley Data archive (`zr7vgbcyr2-1.zip`, CC BY 4.0) holds `metadata.csv` (one row per
image: `patient_id`, `lesion_id`, `diagnostic`, `img_id`, …) and `images/imgs_part_{1,2,3}.zip`
of PNGs of varying size. raw/ keeps `metadata.csv` and one `images.zip` of the PNGs by
`img_id`. Images are resized to SIZE×SIZE (64 px, or data.image_size: the notebook's 224;
aspect ratio not kept, as the notebooks' `Resize((s, s))`). The source has no split: ours
(`official`) keeps every patient's images in one split, so no patient is seen in training and
tested on; `pooled` is the notebook's split per image (patients leak across splits).
"""

from __future__ import annotations

import csv
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from gradattn.core.errors import GradattnError
from gradattn.core.io import atomic_path, scratch_dir
from gradattn.prepared.format import SPLITS, PreparedWriter
from gradattn.sources.fetch import check_source, fetch, find_file, install, manual_hint
from gradattn.sources.spec import DatasetSpec
from gradattn.sources.splits import POOLED, percent, shuffled_split
from gradattn.sources.streaming import LazyImages, decode_image, write_plan

PAGE = "https://data.mendeley.com/datasets/zr7vgbcyr2/1"
URL = "https://prod-dcd-datasets-cache-zipfiles.s3.eu-west-1.amazonaws.com/zr7vgbcyr2-1.zip"
ARCHIVE = "zr7vgbcyr2-1.zip"
CLASSES = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
CLASS_NAMES = {
    "ACK": "actinic keratosis",
    "BCC": "basal cell carcinoma",
    "MEL": "melanoma",
    "NEV": "nevus",
    "SCC": "squamous cell carcinoma",
    "SEK": "seborrheic keratosis",
}
SIZE = 64
COLUMNS = ("patient_id", "diagnostic", "img_id")


def read_metadata(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise GradattnError(f"padufes20: {path} lacks the column(s) {', '.join(missing)}")
        rows = list(reader)
    unknown = sorted({r["diagnostic"] for r in rows} - set(CLASSES))
    if unknown:
        raise GradattnError(f"padufes20: {path} has diagnoses {unknown} outside {list(CLASSES)}")
    return rows


def _pack(root: Path, raw_dir: Path) -> None:
    """metadata.csv and every listed image (loose PNGs or inside imgs_part_*.zip) → raw/."""
    metadata = find_file(root, "metadata.csv")
    if metadata is None:
        raise GradattnError(f"padufes20: no metadata.csv in {root}")
    rows = read_metadata(metadata)
    where: dict[str, object] = {p.name: p for p in root.rglob("*.png")}
    inner = [z for z in sorted(root.rglob("*.zip")) if z.name != ARCHIVE]
    archives = [zipfile.ZipFile(z) for z in inner]
    try:
        for archive in archives:
            for member in archive.namelist():
                if member.lower().endswith(".png"):
                    where.setdefault(Path(member).name, (archive, member))
        missing = [r["img_id"] for r in rows if r["img_id"] not in where]
        if missing:
            raise GradattnError(
                f"padufes20: {len(missing)} image(s) listed in metadata.csv not "
                f"found under {root} (e.g. {', '.join(missing[:3])})"
            )
        with (
            atomic_path(raw_dir / "images.zip") as tmp,
            zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as out,
        ):
            for row in tqdm(rows, desc="padufes20: pack", unit="img", leave=False):
                src = where[row["img_id"]]
                if isinstance(src, Path):
                    out.write(src, row["img_id"])
                else:
                    out.writestr(row["img_id"], src[0].read(src[1]))
    finally:
        for archive in archives:
            archive.close()
    install(metadata, raw_dir / "metadata.csv", dataset="padufes20")


def _unpack_archive(archive: Path, raw_dir: Path) -> None:
    try:
        with scratch_dir(raw_dir, "extract") as tmp:
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():
                    if member.endswith(("metadata.csv", ".zip", ".png")):
                        z.extract(member, tmp)
            _pack(tmp, raw_dir)
    except zipfile.BadZipFile as err:
        raise GradattnError(f"padufes20: {archive} is not a readable zip ({err})") from None


def download(raw_dir: Path, source: Path | None) -> None:
    if source is not None:
        source = check_source("padufes20", source)
        archive = find_file(source, ARCHIVE)
        if archive is not None:
            _unpack_archive(archive, raw_dir)
        else:
            _pack(source, raw_dir)
        return
    if (raw_dir / "metadata.csv").exists() and (raw_dir / "images.zip").exists():
        print("padufes20: already downloaded")
        return
    # Mendeley publishes no checksum: the archive is checked by reading it instead.
    archive = fetch(
        URL,
        raw_dir / ARCHIVE,
        dataset="padufes20",
        hint=manual_hint("padufes20", f"{ARCHIVE} from {PAGE} (or its metadata.csv and images)"),
    )
    _unpack_archive(archive, raw_dir)
    archive.unlink()


def patient_split(
    labels: np.ndarray, patients: np.ndarray, seed: int, fractions=POOLED, stratify: bool = True
) -> dict[str, np.ndarray]:
    """Rows per split, every patient's rows in one split.

    Patients are grouped by their most frequent diagnosis (when `stratify`), shuffled with
    `seed`, and cut where their running image count crosses 70 % and 85 % of the group's.
    """
    rng = np.random.default_rng(seed)
    ids, patient_of = np.unique(patients, return_inverse=True)
    images = np.bincount(patient_of, minlength=len(ids))
    group = np.zeros(len(ids), dtype=np.int64)
    if stratify:
        for p in range(len(ids)):
            group[p] = np.bincount(labels[patient_of == p]).argmax()
    split_of = np.empty(len(ids), dtype=np.int64)
    bounds = np.cumsum(fractions)[:-1]
    for g in np.unique(group):
        members = rng.permutation(np.flatnonzero(group == g))
        counts = images[members]
        middle = (np.cumsum(counts) - counts / 2) / counts.sum()  # each patient's midpoint
        split_of[members] = np.searchsorted(bounds, middle, side="right")
    row_split = split_of[patient_of]
    return {s: np.flatnonzero(row_split == k) for k, s in enumerate(SPLITS)}


def prepare(
    raw_dir: Path, writer: PreparedWriter, split: str, split_seed: int, *, size: int = SIZE
) -> None:
    rows = read_metadata(raw_dir / "metadata.csv")
    labels = np.array([CLASSES.index(r["diagnostic"]) for r in rows], dtype=np.int64)
    patients = np.array([r["patient_id"] for r in rows])
    if split == "official":
        by_split = patient_split(labels, patients, split_seed, stratify=True)
        writer.notes["split_detail"] = (
            f"by patient ({len(set(patients)):,} patients, none in two splits), stratified by "
            f"diagnosis, about {percent(POOLED)} of the images, seed {split_seed}"
        )
    elif split == "pooled":  # the notebook's, in metadata.csv's row order (PAD cell 4)
        by_split = shuffled_split(len(rows), split_seed)
        writer.notes["split_detail"] = (
            f"per image ({len(rows):,} images in metadata.csv order, np.random.shuffle with "
            f"seed {split_seed}), {percent(POOLED)}: patients leak across splits"
        )
    else:
        raise GradattnError(f"unknown split mode {split!r}: choose official or pooled")
    writer.notes["class_names"] = CLASS_NAMES
    writer.notes["image_resize"] = f"{size}x{size}, bilinear, aspect ratio not kept"
    with zipfile.ZipFile(raw_dir / "images.zip") as archive:

        def load(i: int) -> np.ndarray:
            name = rows[i]["img_id"]
            im = decode_image(
                archive, name, "RGB", where=f"padufes20: {name} in {raw_dir / 'images.zip'}",
                fix="replace it in the source and run `dvc repro -f download@padufes20`",
            )
            return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))

        images = LazyImages(len(rows), (size, size, 3), load)
        write_plan(
            writer, {"all": (images, labels)}, {s: [("all", r)] for s, r in by_split.items()}
        )


def padufes_spec(image_size: int = SIZE) -> DatasetSpec:
    return DatasetSpec(
        name="padufes20",
        classes=CLASSES,
        channels=3,
        size=image_size,
        augment="pad_notebook",  # PAD cell 4 (RandomResizedCrop to the image size)
        download=download,
        prepare=partial(prepare, size=image_size),
        splits="no official split: by patient, stratified by diagnosis, "
        f"about {percent(POOLED)} of images",
        url=PAGE,
        # PAD-UFES-20's photos are larger than any size asked for: read at that size
        options=("image_size",),
        variant=lambda image_size=SIZE: padufes_spec(image_size),
    )


SPECS = (padufes_spec(),)
