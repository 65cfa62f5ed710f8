"""Every dataset source, on small files written here in the source's exact format, and on the
real files in shared/datasets/ (and Debian's Fashion-MNIST). No test touches the network: the
download tests talk to a server on 127.0.0.1 or to a closed port there."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT, coloured, md5, one_line_error, write_idx  # noqa: F401
from PIL import Image

from gradattn.config import DataConfig, dataset_options
from gradattn.core.errors import ConfigError, GradattnError
from gradattn.prepared import PreparedWriter, load_meta, load_split
from gradattn.prepared.augment import AUGMENTATIONS, rotate_flip_jitter
from gradattn.sources import (
    cifar10,
    fashionmnist,
    medmnist_sets,
    padufes,
    pcam,
    registry,
    svhn,
    tinyimagenet,
)
from gradattn.sources import custom as custom_mod
from gradattn.sources import fetch as fetch_mod
from gradattn.sources.registry import DatasetSpec, get_spec, known_datasets

SHARED = Path(os.environ.get("GRADATTN_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATASETS = SHARED / "datasets"
FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")




def prepare(
    spec: DatasetSpec, raw: Path, root: Path, split: str = "official", seed: int = 0
) -> dict:
    with PreparedWriter(spec.name, spec.classes, root=root, notes={}) as writer:
        spec.prepare(raw, writer, split, seed)
        return writer.commit()


def all_labels(name: str, root: Path) -> np.ndarray:
    return np.concatenate([load_split(name, s, root)[1] for s in ("train", "val", "test")])


# ---------------------------------------------------------------- writers of source formats








def write_cifar_batches(folder: Path, per_batch: int = 20) -> None:
    folder.mkdir(parents=True)
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        labels = [(i + b) % 10 for i in range(per_batch)]
        data = np.stack([coloured(lab % 6, (3, 32, 32)) for lab in labels])
        data[:, 0, 0, 1] = 255  # red channel, row 0, column 1
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    "batch_label": name,
                    "labels": labels,
                    "data": data.reshape(per_batch, 3072),
                    "filenames": [""] * per_batch,
                },
                f,
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(cifar10.CIFAR_CLASSES), "num_vis": 3072}, f)


@pytest.fixture
def cifar_source(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-src" / "cifar-10-batches-py"
    write_cifar_batches(folder)
    for name in cifar10.CIFAR_MD5:
        monkeypatch.setitem(cifar10.CIFAR_MD5, name, md5(folder / name))
    return folder.parent


def write_svhn(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import savemat

    digits = np.arange(n) % 10
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)  # SVHN: digit 0 is 10
    images = np.stack([coloured(d % 6, (32, 32, 3)) for d in digits])
    images[:, 0, 1, 0] = 255
    savemat(path, {"X": np.transpose(images, (1, 2, 3, 0)), "y": y})  # X is (32, 32, 3, N)
    return images, digits


def write_medmnist(path: Path, counts=(16, 8, 8), size: int = 28, channels: int = 3) -> None:
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        labels = np.arange(n) % 8
        shape = (size, size, channels) if channels == 3 else (size, size)
        arrays[f"{split}_images"] = np.stack([coloured(lab % 6, shape) for lab in labels])
        arrays[f"{split}_labels"] = labels.reshape(n, 1).astype(np.uint8)
    np.savez_compressed(path, **arrays)


def write_tinyimagenet(
    root: Path, wnids=("n01443537", "n01629819", "n01641577"), per_class=10, val_per_class=3
) -> Path:
    top = root / "tiny-imagenet-200"
    (top / "val" / "images").mkdir(parents=True)
    (top / "wnids.txt").write_text("\n".join(wnids) + "\n")
    words = {
        "n01443537": "goldfish, Carassius auratus",
        "n01629819": "European fire salamander",
        "n01641577": "bullfrog, Rana catesbeiana",
        "n99999999": "unused",
    }
    (top / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in words.items()))
    for k, wnid in enumerate(wnids):
        folder = top / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (top / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(per_class):
            mode = "L" if i == 0 else "RGB"  # Tiny ImageNet has some greyscale JPEGs
            Image.fromarray(coloured(k, (64, 64, 3))).convert(mode).save(
                folder / f"{wnid}_{i}.JPEG"
            )
    lines = []
    for i in range(val_per_class * len(wnids)):
        k = (i * 2) % len(wnids)  # val order is not class order
        Image.fromarray(coloured(k, (64, 64, 3))).save(top / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[k]}\t0\t0\t63\t63")
    (top / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return top


def write_pcam(folder: Path, counts=None, gz: bool = False) -> dict[str, np.ndarray]:
    counts = counts or {"train": 24, "valid": 8, "test": 8}
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for offset, (tag, n) in enumerate(counts.items()):
        y = (np.arange(n) + offset) % 2
        x = np.stack([coloured(lab + 2 * offset, (96, 96, 3)) for lab in y])
        for kind, data in (("x", x), ("y", y.astype(np.uint8).reshape(n, 1, 1, 1))):
            path = folder / f"camelyonpatch_level_2_split_{tag}_{kind}.h5"
            with h5py.File(path, "w") as f:
                f.create_dataset(kind, data=data)
            if gz:
                with open(path, "rb") as fin, gzip.open(f"{path}.gz", "wb") as fout:
                    fout.write(fin.read())
                path.unlink()
        labels[tag] = y
    return labels


def write_padufes(folder: Path, nested: bool = True) -> list[dict]:
    """metadata.csv + PNGs of varying size; half inside images/imgs_part_1.zip."""
    rng = np.random.default_rng(1)
    rows, n_patients = [], 40  # enough patients per class that every split gets some
    for p in range(n_patients):
        for j in range(1 + p % 3):
            rows.append(
                {
                    "patient_id": f"PAT_{p}",
                    "lesion_id": str(100 + p),
                    "diagnostic": padufes.CLASSES[(p + j // 2) % 6],
                    "img_id": f"PAT_{p}_{100 + p}_{j}.png",
                    "patient": p,
                }
            )
    images = folder / "images"
    (images / "imgs_part_2").mkdir(parents=True)
    header = "patient_id,lesion_id,smoke,diagnostic,img_id,biopsed\n"
    (folder / "metadata.csv").write_text(
        header
        + "".join(
            f"{r['patient_id']},{r['lesion_id']},False,{r['diagnostic']},{r['img_id']},True\n"
            for r in rows
        )
    )
    part1 = zipfile.ZipFile(images / "imgs_part_1.zip", "w") if nested else None
    for i, row in enumerate(rows):
        h, w = rng.integers(70, 130, 2)
        png = io.BytesIO()
        Image.fromarray(np.full((h, w, 3), 5 * row["patient"], dtype=np.uint8)).save(png, "PNG")
        if part1 is not None and i % 2 == 0:
            part1.writestr(f"imgs_part_1/{row['img_id']}", png.getvalue())
        else:
            (images / "imgs_part_2" / row["img_id"]).write_bytes(png.getvalue())
    if part1 is not None:
        part1.close()
    return rows


class _Server:
    """A static file server on 127.0.0.1 that records the paths asked for."""

    def __init__(self, folder: Path):
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "served"
    folder.mkdir()
    srv = _Server(folder)
    srv.folder = folder
    yield srv
    srv.close()


# ---------------------------------------------------------------- registry


def test_every_dataset_is_registered_with_a_known_augmentation():
    names = {
        "tinyimagenet",
        "cifar10",
        "svhn",
        "fashionmnist",
        "tissuemnist",
        "bloodmnist",
        "pcam",
        "padufes20",
    }
    assert names <= set(known_datasets())
    for name in names:
        spec = get_spec(name)
        assert spec.augment in AUGMENTATIONS and spec.splits and spec.url
    assert get_spec("svhn").augment not in ("flip", "crop_flip")  # digits must not be mirrored
    assert {n for n in names if get_spec(n).notebook_defect} == {"cifar10", "fashionmnist"}


def test_the_lazy_registry_names_what_each_module_registers():
    """registry.BUILTIN (dataset -> module, imported on first use) against the SPECS every
    source module declares, in a fresh interpreter."""
    code = ("import importlib, pkgutil, gradattn.sources as s, gradattn.sources.registry as r\n"
            "print(sorted(r._REGISTRY))\n"
            "found = {}\n"
            "for m in pkgutil.iter_modules(s.__path__):\n"
            "    module = importlib.import_module('gradattn.sources.' + m.name)\n"
            "    found |= {spec.name: m.name for spec in getattr(module, 'SPECS', ())}\n"
            "print(sorted(r._REGISTRY))\n"
            "print(sorted(found.items()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.splitlines()
    assert out[0] == "[]"  # importing the package registers nothing: nothing is paid for
    assert out[1] == "[]"  # nor does importing a source module: get_spec registers its SPECS
    registered = dict(eval(out[2]))  # noqa: S307 (our own subprocess's repr)
    assert registered.keys() == registry.BUILTIN.keys()
    for name, module in registry.BUILTIN.items():
        assert get_spec(name).name == name
        assert registered[name] == module


def test_medmnist_size_option_picks_the_larger_files():
    cfg = DataConfig.parse({"datasets": ["bloodmnist", "cifar10"], "medmnist_size": 64})
    assert dataset_options(cfg, "bloodmnist") == {"medmnist_size": 64}
    assert dataset_options(cfg, "cifar10") == {}  # other datasets' stages are not touched
    spec = get_spec("bloodmnist", None, dataset_options(cfg, "bloodmnist"))
    assert spec.size == 64 and "bloodmnist_64.npz" in spec.url
    with pytest.raises(ConfigError, match="data.medmnist_size = 32"):
        DataConfig.parse({"medmnist_size": 32})


# ---------------------------------------------------------------- torchvision sets


def test_fashionmnist_from_idx_files(fashion_source, tmp_path):
    spec, raw = get_spec("fashionmnist"), tmp_path / "raw"
    spec.download(raw, fashion_source)
    assert sorted(p.name for p in raw.iterdir()) == sorted(fashionmnist.FASHION_MD5)
    meta = prepare(spec, raw, tmp_path / "prep")
    assert meta["counts"] == {"train": 90, "val": 10, "test": 20} and meta["channels"] == 1
    x, y = load_split("fashionmnist", "test", tmp_path / "prep")
    assert x.shape == (20, 28, 28, 1) and list(y) == list(range(10)) * 2
    assert x[0, 0, 1, 0] == 7 and x[0, 1, 0, 0] == 20  # not transposed
    assert list(np.bincount(all_labels("fashionmnist", tmp_path / "prep"))) == [12] * 10


def test_fashionmnist_pooled_split_is_the_notebooks_70_15_15(fashion_source, tmp_path):
    spec, raw = get_spec("fashionmnist"), tmp_path / "raw"
    spec.download(raw, fashion_source)
    meta = prepare(spec, raw, tmp_path / "a", "pooled", 3)
    assert meta["counts"] == {"train": 84, "val": 18, "test": 18}
    again = prepare(spec, raw, tmp_path / "b", "pooled", 3)
    for s in ("train", "val", "test"):  # deterministic from the seed
        assert np.array_equal(
            load_split("fashionmnist", s, tmp_path / "a")[1],
            load_split("fashionmnist", s, tmp_path / "b")[1],
        )
    assert again["counts"] == meta["counts"]


def test_source_with_a_wrong_checksum_is_refused(fashion_source, tmp_path, monkeypatch):
    name = "train-images-idx3-ubyte.gz"
    monkeypatch.setitem(fashionmnist.FASHION_MD5, name, "0" * 32)
    monkeypatch.setitem(fashionmnist.FASHION_CONTENT_MD5, name, "0" * 32)
    with pytest.raises(GradattnError, match="does not match the published checksum") as err:
        get_spec("fashionmnist").download(tmp_path / "raw", fashion_source)
    one_line_error(err)


def test_source_missing_files_names_the_key_and_the_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GradattnError) as err:
        get_spec("svhn").download(tmp_path / "raw", tmp_path / "empty")
    message = one_line_error(err)
    assert "data.sources.svhn" in message and "train_32x32.mat" in message


def test_cifar10_from_python_batches(cifar_source, tmp_path):
    spec, raw = get_spec("cifar10"), tmp_path / "raw"
    spec.download(raw, cifar_source)
    meta = prepare(spec, raw, tmp_path / "prep")
    assert meta["counts"] == {"train": 90, "val": 10, "test": 20}
    assert meta["classes"] == list(cifar10.CIFAR_CLASSES)
    x, y = load_split("cifar10", "test", tmp_path / "prep")
    assert x.shape == (20, 32, 32, 3)
    assert list(x[0, 0, 1]) == [
        255,
        20 + 40 * (y[0] % 6),
        20 + 40 * (y[0] % 6),
    ]  # HWC, red at (0, 1)


def test_cifar10_from_the_tar_archive(cifar_source, tmp_path, monkeypatch):
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    archive = archive_dir / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(cifar10, "CIFAR_ARCHIVE_MD5", md5(archive))
    raw = tmp_path / "raw"
    get_spec("cifar10").download(raw, archive_dir)
    assert sorted(p.name for p in (raw / "cifar-10-batches-py").iterdir()) == sorted(
        cifar10.CIFAR_MD5
    )
    assert not list(raw.glob(".*"))  # no temporary left behind


def test_svhn_from_mat_files(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    write_svhn(src / "train_32x32.mat", 100)
    write_svhn(src / "test_32x32.mat", 10)
    for part in ("train", "test"):
        name, url, _ = svhn.SVHN_FILES[part]
        monkeypatch.setitem(svhn.SVHN_FILES, part, (name, url, md5(src / name)))
    spec, raw = get_spec("svhn"), tmp_path / "raw"
    spec.download(raw, src)
    meta = prepare(spec, raw, tmp_path / "prep")
    assert meta["counts"] == {"train": 90, "val": 10, "test": 10}
    x, y = load_split("svhn", "test", tmp_path / "prep")
    assert list(y) == list(range(10))  # label 10 became digit 0
    assert x[0, 0, 1, 0] == 255 and x[0, 1, 0, 0] == 20


# ---------------------------------------------------------------- MedMNIST


def test_bloodmnist_npz_keeps_the_official_split(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    write_medmnist(src / "bloodmnist.npz")
    monkeypatch.setitem(medmnist_sets.INFO["bloodmnist"], "MD5", md5(src / "bloodmnist.npz"))
    spec, raw = get_spec("bloodmnist"), tmp_path / "raw"
    spec.download(raw, src)
    meta = prepare(spec, raw, tmp_path / "prep")
    assert meta["counts"] == {"train": 16, "val": 8, "test": 8}
    assert meta["classes"][0] == "basophil" and meta["channels"] == 3
    x, y = load_split("bloodmnist", "val", tmp_path / "prep")
    assert np.array_equal(x[:, 5, 5, 0], 20 + 40 * (y % 6))


def test_tissuemnist_224_grey_streams_from_the_zip(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    write_medmnist(src / "tissuemnist_224.npz", counts=(12, 4, 4), size=224, channels=1)
    monkeypatch.setitem(
        medmnist_sets.INFO["tissuemnist"], "MD5_224", md5(src / "tissuemnist_224.npz")
    )
    monkeypatch.setattr("gradattn.sources.streaming.BLOCK_BYTES", 3 * 224 * 224)  # several blocks
    spec, raw = get_spec("tissuemnist", None, {"medmnist_size": 224}), tmp_path / "raw"
    spec.download(raw, src)
    meta = prepare(spec, raw, tmp_path / "prep", "pooled", 0)
    assert (meta["height"], meta["channels"]) == (224, 1)
    assert sum(meta["counts"].values()) == 20
    for s in ("train", "val", "test"):
        x, y = load_split("tissuemnist", s, tmp_path / "prep")
        assert np.array_equal(x[:, 100, 100, 0], 20 + 40 * (y % 6))


@pytest.mark.skipif(
    not (DATASETS / "pneumoniamnist-balanced.npz").exists(),
    reason="shared/datasets/pneumoniamnist-balanced.npz not found",
)
def test_real_pneumoniamnist_through_the_medmnist_path(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "pneumoniamnist.npz").symlink_to(DATASETS / "pneumoniamnist-balanced.npz")
    # a balanced copy, not the published file: preprocess re-verifies raw files against this
    info = medmnist_sets.INFO["pneumoniamnist"]
    monkeypatch.setitem(info, "MD5", md5(raw / "pneumoniamnist.npz"))
    meta = prepare(medmnist_sets.medmnist_spec("pneumoniamnist"), raw, tmp_path / "prep")
    assert meta["counts"] == {"train": 2428, "val": 270, "test": 468}
    assert meta["classes"] == ["normal", "pneumonia"] and meta["channels"] == 1
    for s in ("train", "val", "test"):
        counts = np.bincount(load_split("pneumoniamnist", s, tmp_path / "prep")[1])
        assert counts[0] == counts[1]  # the balanced copy


# ---------------------------------------------------------------- Tiny ImageNet


def test_tinyimagenet_folder_relabels_val_from_annotations(tmp_path):
    write_tinyimagenet(tmp_path / "src")
    spec, raw = get_spec("tinyimagenet"), tmp_path / "raw"
    spec.download(raw, tmp_path / "src")
    assert [p.name for p in raw.iterdir()] == ["tiny-imagenet-200.zip"]  # one file for DVC
    meta = prepare(spec, raw, tmp_path / "prep")
    assert meta["counts"] == {"train": 27, "val": 3, "test": 9}
    assert meta["classes"] == ["goldfish", "European fire salamander", "bullfrog"]
    assert meta["wnids"] == ["n01443537", "n01629819", "n01641577"]
    for s in ("train", "val", "test"):
        x, y = load_split("tinyimagenet", s, tmp_path / "prep")
        assert x.shape[1:] == (64, 64, 3)
        assert np.all(np.abs(x[:, 32, 32].astype(int) - (20 + 40 * y)[:, None]) <= 3)


def test_tinyimagenet_from_the_stanford_zip(tmp_path, monkeypatch):
    top = write_tinyimagenet(tmp_path / "tree")
    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "tiny-imagenet-200.zip", "w") as z:
        for path in sorted(top.rglob("*")):
            z.write(path, path.relative_to(top.parent).as_posix())
    monkeypatch.setattr(tinyimagenet, "MD5", md5(src / "tiny-imagenet-200.zip"))
    spec, raw = get_spec("tinyimagenet"), tmp_path / "raw"
    spec.download(raw, src)
    assert md5(raw / "tiny-imagenet-200.zip") == tinyimagenet.MD5
    assert prepare(spec, raw, tmp_path / "prep")["counts"]["test"] == 9


# ---------------------------------------------------------------- PCam


def test_pcam_from_hdf5_files(tmp_path):
    labels = write_pcam(tmp_path / "src")
    spec, raw = get_spec("pcam"), tmp_path / "raw"
    spec.download(raw, tmp_path / "src")
    meta = prepare(spec, raw, tmp_path / "prep")
    assert meta["counts"] == {"train": 24, "val": 8, "test": 8} and meta["height"] == 96
    for s, tag, offset in (("train", "train", 0), ("val", "valid", 1), ("test", "test", 2)):
        x, y = load_split("pcam", s, tmp_path / "prep")
        assert np.array_equal(y, labels[tag])
        assert np.array_equal(x[:, 50, 50, 1], 20 + 40 * (y + 2 * offset))


def test_pcam_download_verifies_renames_swapped_files_and_is_not_repeated(
    tmp_path, server, monkeypatch
):
    write_pcam(tmp_path / "gz", gz=True)
    sums = {p.name: md5(p) for p in (tmp_path / "gz").iterdir()}
    for name, value in sums.items():
        monkeypatch.setitem(pcam.GZ_MD5, name, value)
    for path in (tmp_path / "gz").iterdir():  # the mirror swaps valid and test
        served = path.name.replace("valid", "TMP").replace("test", "valid").replace("TMP", "test")
        (server.folder / served).write_bytes(path.read_bytes())
    monkeypatch.setattr(pcam, "ZENODO", server.url + "{}")
    raw = tmp_path / "raw"
    get_spec("pcam").download(raw, None)
    assert sorted(p.name for p in raw.iterdir()) == sorted(pcam.FILES)
    meta = prepare(get_spec("pcam"), raw, tmp_path / "prep")
    assert meta["counts"] == {"train": 24, "val": 8, "test": 8}
    x, _ = load_split("pcam", "val", tmp_path / "prep")
    assert x[0, 0, 0, 0] in (100, 140)  # the real valid images (offset 1), not test's
    asked = len(server.requests)
    get_spec("pcam").download(raw, None)
    assert len(server.requests) == asked  # present and verified: nothing fetched again


# ---------------------------------------------------------------- PAD-UFES-20


def _patients_by_split(root: Path) -> dict[str, set[int]]:
    out = {}
    for s in ("train", "val", "test"):
        x, _ = load_split("padufes20", s, root)
        out[s] = {int(v) // 5 for v in x[:, 32, 32, 0]}
    return out


def test_padufes_splits_by_patient(tmp_path):
    rows = write_padufes(tmp_path / "src")
    spec, raw = get_spec("padufes20"), tmp_path / "raw"
    spec.download(raw, tmp_path / "src")
    assert sorted(p.name for p in raw.iterdir()) == ["images.zip", "metadata.csv"]
    for split in ("official",):  # `pooled` is the notebook's per-image split: test_recipe_data
        root = tmp_path / split
        meta = prepare(spec, raw, root, split, 0)
        assert sum(meta["counts"].values()) == len(rows)
        assert meta["height"] == meta["width"] == 64 and meta["channels"] == 3
        by_split = _patients_by_split(root)
        assert not (by_split["train"] & by_split["val"]) and not (
            by_split["train"] & by_split["test"]
        )
        assert not (by_split["val"] & by_split["test"])
        assert set().union(*by_split.values()) == {r["patient"] for r in rows}


def test_padufes_patient_split_is_about_70_15_15_and_stratified():
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(1373), rng.integers(1, 3, 1373))
    labels = rng.integers(0, 6, 1373)[patients]
    parts = padufes.patient_split(labels, patients.astype(str), seed=0)
    sizes = np.array([len(parts[s]) for s in ("train", "val", "test")]) / len(labels)
    assert np.allclose(sizes, (0.70, 0.15, 0.15), atol=0.02)
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(patients[parts[a]]) & set(patients[parts[b]])


def test_padufes_from_the_mendeley_archive(tmp_path):
    rows = write_padufes(tmp_path / "tree")
    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "zr7vgbcyr2-1.zip", "w") as z:
        z.write(tmp_path / "tree" / "metadata.csv", "metadata.csv")
        for path in (tmp_path / "tree" / "images").rglob("*"):
            if path.is_file():
                z.write(path, path.relative_to(tmp_path / "tree").as_posix())
    spec, raw = get_spec("padufes20"), tmp_path / "raw"
    spec.download(raw, src)
    assert sum(prepare(spec, raw, tmp_path / "prep")["counts"].values()) == len(rows)
    assert not list(raw.glob(".*"))


# ---------------------------------------------------------------- downloads without network


def test_no_network_fails_fast_with_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # the discard port: nothing listens
    monkeypatch.setattr(cifar10, "CIFAR_URL", url)
    raw = tmp_path / "data" / "raw" / "cifar10"
    start = time.perf_counter()
    with pytest.raises(GradattnError) as err:
        get_spec("cifar10").download(raw, None)
    assert time.perf_counter() - start < 60
    message = one_line_error(err)
    assert (
        url in message and "data.sources.cifar10" in message and "cifar-10-python.tar.gz" in message
    )
    assert not raw.exists() and not (tmp_path / "data" / "prepared").exists()


def test_an_interrupted_download_never_counts_as_done(tmp_path, monkeypatch):
    class Truncating(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)  # then the connection closes

        def log_message(self, *args):
            pass

    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Truncating)
    threading.Thread(target=httpd.handle_request, daemon=True).start()
    dest = tmp_path / "raw" / "file.bin"
    try:
        with pytest.raises(GradattnError, match="cannot download") as err:
            fetch_mod.fetch(
                f"http://127.0.0.1:{httpd.server_address[1]}/f",
                dest,
                dataset="x",
                hint=fetch_mod.manual_hint("x", "file.bin"),
            )
    finally:
        httpd.server_close()
    one_line_error(err)
    assert not dest.parent.exists()


def test_a_corrupted_download_is_refused(tmp_path, server):
    (server.folder / "f.bin").write_bytes(b"data")
    dest = tmp_path / "raw" / "f.bin"
    with pytest.raises(GradattnError, match="arrived corrupted"):
        fetch_mod.fetch(server.url + "f.bin", dest, dataset="x", md5="0" * 32)
    assert not dest.exists() and not list(dest.parent.glob(".*"))
    fetch_mod.fetch(server.url + "f.bin", dest, dataset="x", md5=hashlib.md5(b"data").hexdigest())
    assert dest.read_bytes() == b"data"


# ---------------------------------------------------------------- custom data


def _folder(root: Path, classes=("cat", "dog"), per_class=10, size=(20, 20), mode="RGB") -> Path:
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(coloured(k, (*size, 3))).convert(mode).save(root / cls / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_custom_imagefolder_without_split_is_stratified_70_10_20(tmp_path):
    folder = _folder(tmp_path / "pets")
    spec = get_spec("pets", {"pets": {"format": "imagefolder", "path": str(folder)}})
    assert spec.classes == ("cat", "dog")
    spec.download(tmp_path / "raw", None)
    meta = prepare(spec, tmp_path / "raw", tmp_path / "prep")
    assert meta["counts"] == {"train": 14, "val": 2, "test": 4} and meta["height"] == 20


def test_custom_imagefolder_train_test_and_resize(tmp_path):
    _folder(tmp_path / "d" / "train", per_class=10, size=(30, 24), mode="L")
    _folder(tmp_path / "d" / "test", per_class=3, size=(16, 16), mode="L")
    entry = {"format": "imagefolder", "path": str(tmp_path / "d"), "size": 12, "augment": "flip"}
    spec = get_spec("g", {"g": entry})
    assert spec.augment == "flip"
    spec.download(tmp_path / "raw", None)
    meta = prepare(spec, tmp_path / "raw", tmp_path / "prep")
    assert meta["counts"] == {"train": 18, "val": 2, "test": 6}
    assert (meta["height"], meta["width"], meta["channels"]) == (12, 12, 1)


def test_custom_imagefolder_of_mixed_sizes_asks_for_size(tmp_path):
    _folder(tmp_path / "d" / "train", size=(30, 24))
    _folder(tmp_path / "d" / "test", per_class=2, size=(16, 16))
    spec = get_spec("m", {"m": {"format": "imagefolder", "path": str(tmp_path / "d")}})
    spec.download(tmp_path / "raw", None)
    with pytest.raises(GradattnError, match="data.custom.m.size") as err:
        prepare(spec, tmp_path / "raw", tmp_path / "prep")
    one_line_error(err)


@pytest.mark.parametrize("folders, said", [
    (("train", "test", "bird"), "has both split folders (test/, train/) and other folders (bird/)"),
    (("train", "val", "test", "bird"), "(test/, train/, val/) and other folders (bird/)"),
    (("train", "val"), "has train/, val/ but not both train/ and test/"),
    (("test",), "has test/ but not both train/ and test/"),
])
def test_an_image_folder_mixing_the_two_layouts_is_refused(tmp_path, folders, said):
    # A class folder beside train/ + test/ was silently dropped; train/ without test/ was
    # taken for a class named "train".
    for folder in folders:
        _folder(tmp_path / "d" / folder, per_class=2)
    with pytest.raises(GradattnError, match=re.escape(said)) as err:
        get_spec("mix", {"mix": {"format": "imagefolder", "path": str(tmp_path / "d")}})
    one_line_error(err)
    assert "data.custom.mix:" in str(err.value) and "one sub-folder per class" in str(err.value)


@pytest.mark.parametrize("layout", ["classes", "splits"])
def test_an_empty_class_folder_is_refused(tmp_path, layout):
    # Dropped without a word, an empty class shifted every later class's label.
    root = tmp_path / "d"
    trees = [root] if layout == "classes" else [root / "train", root / "test"]
    for tree in trees:
        _folder(tree, per_class=2)
        (tree / "bird").mkdir()
        (tree / "bird" / "readme.txt").write_text("no images here")
    spec = get_spec("e", {"e": {"format": "imagefolder", "path": str(root)}})
    assert spec.classes == ("bird", "cat", "dog")
    with pytest.raises(GradattnError, match=re.escape(
            f"class 'bird' ({', '.join(str(t / 'bird') for t in trees)}) holds no images")
            ) as err:
        spec.download(tmp_path / "raw", None)
    one_line_error(err)
    assert not (tmp_path / "raw" / "images.zip").exists()


def test_custom_npz_with_class_names_and_resize(tmp_path):
    y = np.repeat([3, 7, 9], 10)
    x = np.stack([coloured(k % 6, (10, 10, 3)) for k in y])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    entry = {
        "format": "npz",
        "path": str(tmp_path / "d.npz"),
        "size": 16,
        "classes": ["three", "seven", "nine"],
    }
    spec = get_spec("n", {"n": entry})
    assert spec.classes == ("three", "seven", "nine") and spec.channels == 3
    spec.download(tmp_path / "raw", None)
    meta = prepare(spec, tmp_path / "raw", tmp_path / "prep")
    assert meta["counts"] == {"train": 21, "val": 3, "test": 6} and meta["height"] == 16
    x_test, y_test = load_split("n", "test", tmp_path / "prep")
    assert np.array_equal(x_test[:, 8, 8, 0], 20 + 40 * (np.array([3, 7, 9])[y_test] % 6))


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ("a string", "must be a mapping"),
        ({"format": "tfrecord", "path": "."}, "data.custom.bad.format = 'tfrecord'"),
        ({"format": "imagefolder"}, "data.custom.bad.path = None"),
        ({"format": "imagefolder", "path": "/no/such/folder"}, "must be an existing folder"),
        ({"format": "npz", "path": "/no/such.npz"}, "must be an existing .npz file"),
        ({"format": "imagefolder", "path": ".", "size": 0}, "data.custom.bad.size = 0"),
        ({"format": "imagefolder", "path": ".", "size": "big"}, "data.custom.bad.size = 'big'"),
        ({"format": "imagefolder", "path": ".", "size": True}, "data.custom.bad.size = True"),
        ({"format": "imagefolder", "path": ".", "colour": 1}, "unknown key"),
        ({"format": "imagefolder", "path": ".", "augment": "mixup"}, "data.custom.bad.augment"),
    ],
)
def test_bad_custom_entries_give_one_line_errors(entry, fragment):
    with pytest.raises(ConfigError) as err:
        custom_mod.custom_spec("bad", entry)
    assert fragment in one_line_error(err)


def test_custom_npz_without_x_and_y_is_refused(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(GradattnError, match="must hold arrays x and y") as err:
        get_spec("d", {"d": {"format": "npz", "path": str(tmp_path / "d.npz")}})
    one_line_error(err)


# ---------------------------------------------------------------- the notebooks' defect


def test_legacy_preprocessing_changes_training_batches_only(cifar_source, tmp_path, monkeypatch):
    from gradattn.prepared import batches as runs

    spec, raw, root = get_spec("cifar10"), tmp_path / "raw", tmp_path / "prep"
    spec.download(raw, cifar_source)
    meta = prepare(spec, raw, root)
    meta["augment"] = spec.augment
    meta["notebook_defect"] = spec.notebook_defect  # as stages/preprocess.py records it
    assert spec.notebook_defect and not get_spec("svhn").notebook_defect
    assert runs.uses_legacy_defect(meta)
    assert not runs.uses_legacy_defect({**meta, "notebook_defect": False})

    def first(split, train, legacy):
        batches = runs.make_batches(
            "cifar10",
            split,
            meta,
            batch_size=16,
            device="cpu",
            train=train,
            legacy=legacy,
            root=root,
        )
        return next(iter(batches.epoch(seed=0)))

    x_ok, y_ok = first("train", True, False)
    x_bad, y_bad = first("train", True, True)
    assert torch.equal(y_ok, y_bad) and not torch.allclose(x_ok, x_bad)
    for split in ("val", "test"):
        assert torch.equal(first(split, False, False)[0], first(split, False, True)[0])


# ---------------------------------------------------------------- augmentation


def test_rotate_flip_jitter_is_per_image_and_in_range():
    x = torch.rand(64, 3, 16, 16)
    x[:, :, :, :8] = 0.0
    out = rotate_flip_jitter(x.clone(), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    left = out[:, :, 4:12, :8].mean(dim=(1, 2, 3))
    assert (left > 0.2).any() and (left < 0.2).any()  # some images flipped, some not


# ---------------------------------------------------------------- the real files


@pytest.mark.skipif(
    not FASHION_DEBIAN.exists(),
    reason="Fashion-MNIST not installed: apt-get install -y dataset-fashion-mnist",
)
def test_real_fashionmnist_from_debian_files(tmp_path):
    spec, raw = get_spec("fashionmnist"), tmp_path / "raw"
    spec.download(raw, FASHION_DEBIAN)  # re-compressed .gz: accepted by content checksum
    meta = prepare(spec, raw, tmp_path / "prep")
    assert meta["counts"] == {"train": 54000, "val": 6000, "test": 10000}
    assert list(np.bincount(all_labels("fashionmnist", tmp_path / "prep"))) == [7000] * 10


@pytest.fixture(scope="module")
def cifar_jpeg(tmp_path_factory):
    archive = DATASETS / "cifar10-jpeg.tar.gz"
    if not archive.exists():
        pytest.skip(f"{archive} not found (set GRADATTN_SHARED to the shared folder)")
    folder = tmp_path_factory.mktemp("cifar10-jpeg")
    if shutil.which("tar"):  # several times faster than tarfile on 60,000 small files
        subprocess.run(["tar", "xzf", str(archive), "-C", str(folder)], check=True)
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
    return folder


@pytest.mark.slow  # 60,000 real JPEGs: half a minute
def test_real_cifar10_jpeg_through_custom_imagefolder(cifar_jpeg, tmp_path):
    spec = get_spec(
        "cifar10-jpeg", {"cifar10-jpeg": {"format": "imagefolder", "path": str(cifar_jpeg)}}
    )
    spec.download(tmp_path / "raw", None)
    meta = prepare(spec, tmp_path / "raw", tmp_path / "prep")
    assert meta["counts"] == {"train": 45000, "val": 5000, "test": 10000}
    assert (meta["height"], meta["channels"]) == (32, 3)
    assert list(np.bincount(all_labels("cifar10-jpeg", tmp_path / "prep"))) == [6000] * 10
    assert load_meta("cifar10-jpeg", tmp_path / "prep")["classes"][0] == "airplane"


@pytest.mark.skipif(
    not (DATASETS / "pbc-blood-28.npz").exists(),
    reason="shared/datasets/pbc-blood-28.npz not found",
)
def test_real_pbc_blood_npz_gets_a_stratified_70_10_20(tmp_path):
    names = [medmnist_sets.INFO["bloodmnist"]["label"][str(i)] for i in range(8)]
    entry = {"format": "npz", "path": str(DATASETS / "pbc-blood-28.npz"), "classes": names}
    spec = get_spec("pbc", {"pbc": entry})
    spec.download(tmp_path / "raw", None)
    meta = prepare(spec, tmp_path / "raw", tmp_path / "prep", "official", 0)
    assert sum(meta["counts"].values()) == 17092 and meta["classes"] == names
    totals = np.bincount(all_labels("pbc", tmp_path / "prep"))
    assert list(totals) == [1218, 3117, 1551, 2895, 1214, 1420, 3329, 2348]
    for s, share in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
        counts = np.bincount(load_split("pbc", s, tmp_path / "prep")[1], minlength=8)
        assert np.all(np.abs(counts - share * totals) <= 1)  # every class split 70/10/20
