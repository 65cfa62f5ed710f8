"""`fashionmnist-mini`: a stratified subset of the real Fashion-MNIST shipped with the package.

3,000 train + 600 val images from Fashion-MNIST's training set and 600 test images from its
test set, 10 classes equally often (scripts/make_fashionmnist_mini.py cut it; MIT licence).
"""

from __future__ import annotations

from pathlib import Path

from gradattn.core.errors import GradattnError
from gradattn.prepared.format import SPLITS, PreparedWriter
from gradattn.sources.fetch import install, verify_raw
from gradattn.sources.spec import DatasetSpec
from gradattn.sources.streaming import open_npz, write_splits

BUNDLED = Path(__file__).parent / "bundled" / "fashionmnist-mini.npz"
MD5 = "6e0b586b57006a7a08f060b68493305f"
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


def download(raw_dir: Path, source: Path | None) -> None:
    src = Path(source) / BUNDLED.name if source else BUNDLED
    if not src.exists():
        raise GradattnError(
            f"fashionmnist-mini: {src} not found; the bundled file ships with the "
            "package (reinstall it) or set data.sources.fashionmnist-mini to its folder"
        )
    install(src, raw_dir / BUNDLED.name, dataset="fashionmnist-mini", md5=MD5)


def prepare(raw_dir: Path, writer: PreparedWriter, split: str, split_seed: int) -> None:
    verify_raw(raw_dir, {BUNDLED.name: MD5}, dataset="fashionmnist-mini")
    path = raw_dir / BUNDLED.name
    with open_npz(path, fix="run `dvc repro -f download@fashionmnist-mini`") as arrays:
        parts = {s: (arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in SPLITS}
    write_splits(writer, parts, split, split_seed)


SPECS = (
    DatasetSpec(
        name="fashionmnist-mini",
        classes=FASHION_CLASSES,
        channels=1,
        size=28,
        augment="flip_rotate_translate",  # FMNIST cell 8
        download=download,
        prepare=prepare,
        notebook_defect=True,
        splits="bundled: 3,000 train / 600 val (from Fashion-MNIST train), "
        "600 test (from its test set)",
    ),
)
