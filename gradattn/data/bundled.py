"""`fashionmnist-mini`: a stratified subset of the real Fashion-MNIST shipped with the package.

3,000 train + 600 val images from Fashion-MNIST's training set and 600 test images from its
test set, 10 classes equally often (scripts/make_fashionmnist_mini.py cut it; MIT licence).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from gradattn.data.prepared import PreparedWriter, pooled_split
from gradattn.data.registry import DatasetSpec, register
from gradattn.errors import GradattnError

BUNDLED = Path(__file__).parent / "bundled" / "fashionmnist-mini.npz"
SHA256 = "94bdcaf19588df5ec050c5e692aaa3e2d6be77d89f373e8c20000d3eb89eafc5"
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(raw_dir: Path, source: Path | None) -> None:
    src = Path(source) / BUNDLED.name if source else BUNDLED
    if not src.exists():
        raise GradattnError(
            f"fashionmnist-mini: {src} not found; the bundled file ships with the "
            "package (reinstall it) or set data.sources.fashionmnist-mini to its folder"
        )
    if sha256(src) != SHA256:
        raise GradattnError(
            f"fashionmnist-mini: checksum of {src} does not match the bundled file's"
        )
    raw_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, raw_dir / BUNDLED.name)


def prepare(raw_dir: Path, writer: PreparedWriter, split: str, split_seed: int) -> None:
    with np.load(raw_dir / BUNDLED.name) as arrays:
        parts = {
            s: (arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in ("train", "val", "test")
        }
    if split == "pooled":
        images = np.concatenate([parts[s][0] for s in parts])
        labels = np.concatenate([parts[s][1] for s in parts])
        parts = {s: (images[i], labels[i]) for s, i in pooled_split(labels, split_seed).items()}
    for name, (images, labels) in parts.items():
        writer.write_split(name, images, labels)


SPEC = register(
    DatasetSpec(
        name="fashionmnist-mini",
        classes=FASHION_CLASSES,
        channels=1,
        size=28,
        augment="rotate10",
        download=download,
        prepare=prepare,
        notebook_defect=True,
        splits="bundled: 3,000 train / 600 val (from Fashion-MNIST train), "
        "600 test (from its test set)",
    )
)
