"""Bad data a user can hand the pipeline: each ends in one line naming the file, what is wrong
and what to do, and leaves nothing half-written. Every bad thing is made for real here (a cut
JPEG, a cut .gz, a text file named .npz, a folder the stage's user cannot write)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, coloured, md5, one_line_error, write_idx  # noqa: F401
from PIL import Image

from gradattn.config import DataConfig, dataset_protocol
from gradattn.core import io
from gradattn.core.errors import GradattnError
from gradattn.prepared import PreparedWriter
from gradattn.sources import cifar10, medmnist_sets
from gradattn.sources.bundled import BUNDLED
from gradattn.sources.registry import get_spec


def prepare(spec, raw: Path, root: Path, split: str = "official") -> dict:
    with PreparedWriter(spec.name, spec.classes, root=root, notes={}) as writer:
        spec.prepare(raw, writer, split, 0)
        return writer.commit()


def nothing_written(root: Path) -> bool:
    """No prepared folder and no temporary left in `root`."""
    return not root.exists() or not any(root.iterdir())


def jpeg_folder(root: Path, classes=("cat", "dog"), per_class=6) -> Path:
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.random.default_rng(10 * k + i).integers(0, 255, (24, 24, 3), np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.jpg", quality=90)
    return root


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_jpeg_in_an_image_folder_is_named(tmp_path, damage):
    folder = jpeg_folder(tmp_path / "pets")
    bad = folder / "dog" / "3.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a jpeg at all")
    spec = get_spec("pets", {"pets": {"format": "imagefolder", "path": str(folder)}})
    spec.download(tmp_path / "raw", None)
    with pytest.raises(GradattnError) as err:
        prepare(spec, tmp_path / "raw", tmp_path / "prep")
    message = one_line_error(err)
    assert str(bad) in message and "not a readable image" in message
    assert "remove or replace it" in message
    assert nothing_written(tmp_path / "prep")


# ---------------------------------------------------------------- .gz, checksums






@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_a_damaged_gz_in_data_sources_is_named_at_download(fashion_source, tmp_path, damage):
    bad = fashion_source / "train-images-idx3-ubyte.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"plain text, no gzip")
    raw = tmp_path / "raw"
    with pytest.raises(GradattnError) as err:
        get_spec("fashionmnist").download(raw, fashion_source)
    message = one_line_error(err)
    assert str(bad) in message and "does not match the published checksum" in message
    assert "replace it with the original" in message
    assert not (raw / bad.name).exists() and not list(raw.glob(".*"))


def test_a_raw_file_changed_after_download_is_refused_before_parsing(fashion_source, tmp_path):
    raw, spec = tmp_path / "raw", get_spec("fashionmnist")
    spec.download(raw, fashion_source)
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:20])  # cut after the download verified it
    with pytest.raises(GradattnError) as err:
        prepare(spec, raw, tmp_path / "prep")
    message = one_line_error(err)
    assert str(labels) in message and "changed since download" in message
    assert "dvc repro -f download@fashionmnist" in message
    assert nothing_written(tmp_path / "prep")


def test_a_changed_cifar_batch_is_refused_before_it_is_unpickled(tmp_path, monkeypatch):
    folder = tmp_path / "raw" / cifar10.CIFAR_FOLDER
    folder.mkdir(parents=True)
    for name in cifar10.CIFAR_MD5:
        (folder / name).write_bytes(b"good")
        monkeypatch.setitem(cifar10.CIFAR_MD5, name, md5(folder / name))
    # A pickle that would run code if loaded: it must be refused by its checksum first.
    (folder / "test_batch").write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    with pytest.raises(GradattnError) as err:
        prepare(get_spec("cifar10"), tmp_path / "raw", tmp_path / "prep")
    assert "test_batch" in one_line_error(err) and "changed since download" in str(err.value)
    assert not Path("pwned").exists()


# ---------------------------------------------------------------- .npz


def test_a_text_file_named_npz_is_refused_without_pickle_advice(tmp_path):
    fake = tmp_path / "data.npz"
    fake.write_text("x,y\n1,2\n")
    with pytest.raises(GradattnError) as err:
        get_spec("mine", {"mine": {"format": "npz", "path": str(fake)}})
    message = one_line_error(err)
    assert str(fake) in message and "not a valid .npz file" in message
    assert "numpy.savez" in message and "allow_pickle" not in message


def test_an_npz_of_pickled_objects_is_never_unpickled(tmp_path):
    path = tmp_path / "objects.npz"
    labels = np.array([0, {"run": "code"}], dtype=object)  # loading it would call pickle
    np.savez(path, x=np.zeros((2, 8, 8), np.uint8), y=labels)
    with pytest.raises(GradattnError) as err:
        get_spec("mine", {"mine": {"format": "npz", "path": str(path)}})
    message = one_line_error(err)
    assert str(path) in message and "pickled objects" in message
    assert "allow_pickle" not in message


def test_a_medmnist_npz_that_is_text_is_named(tmp_path):
    fake = tmp_path / "bloodmnist.npz"
    fake.write_text("<html>rate limited</html>")
    with pytest.raises(GradattnError) as err:
        medmnist_sets.read_npz(fake, fix="run `dvc repro -f download@bloodmnist`")
    message = one_line_error(err)
    assert str(fake) in message and "not a valid .npz" in message and "dvc repro" in message


def test_a_bundled_file_replaced_by_text_is_refused(tmp_path):
    raw = tmp_path / "raw"
    get_spec("fashionmnist-mini").download(raw, None)
    (raw / BUNDLED.name).write_text("not an npz")
    with pytest.raises(GradattnError) as err:
        prepare(get_spec("fashionmnist-mini"), raw, tmp_path / "prep")
    assert str(raw / BUNDLED.name) in one_line_error(err) and "checksum" in str(err.value)
    assert nothing_written(tmp_path / "prep")


# ---------------------------------------------------------------- classes


def refusal_at_preprocess(tmp_path, name: str, folder) -> str:
    """Download an image folder as data.custom.<name>, prepare it, and return the one-line
    refusal; nothing may be written."""
    spec = get_spec(name, {name: {"format": "imagefolder", "path": str(folder)}})
    spec.download(tmp_path / "raw", None)
    with pytest.raises(GradattnError) as err:
        prepare(spec, tmp_path / "raw", tmp_path / "prep")
    assert nothing_written(tmp_path / "prep")
    return one_line_error(err)


def test_a_dataset_of_one_class_is_refused_at_preprocess(tmp_path):
    folder = jpeg_folder(tmp_path / "one", classes=("cat",))
    message = refusal_at_preprocess(tmp_path, "one", folder)
    assert "'one'" in message and "1 class" in message and "at least two" in message


def test_a_class_without_training_images_is_refused_at_preprocess(tmp_path):
    jpeg_folder(tmp_path / "pets" / "train", classes=("cat", "dog"))
    jpeg_folder(tmp_path / "pets" / "test", classes=("cat", "dog"))
    for image in (tmp_path / "pets" / "train" / "dog").iterdir():
        image.unlink()  # dog: test images only
    message = refusal_at_preprocess(tmp_path, "pets", tmp_path / "pets")
    assert "'pets'" in message and "'dog'" in message and "no training images" in message


# ---------------------------------------------------------------- the disk


def test_stale_temporaries_of_the_dataset_go_and_outputs_get_the_usual_mode(tmp_path):
    root = tmp_path / "prepared"
    killed = root / ".pets.tmp-abc123"  # what a killed preprocess of `pets` leaves
    killed.mkdir(parents=True)
    (killed / "train_images.npy").write_bytes(b"half")
    other = root / ".pets-2.tmp-xyz"  # another dataset's: not ours to remove
    other.mkdir()
    with PreparedWriter("pets", ["cat", "dog"], root=root) as writer:
        for split in ("train", "val", "test"):
            writer.write_split(split, np.zeros((4, 5, 5), np.uint8), np.array([0, 1, 0, 1]))
        writer.commit()
    assert sorted(p.name for p in root.iterdir()) == [".pets-2.tmp-xyz", "pets"]
    umask = os.umask(0)
    os.umask(umask)
    assert (root / "pets").stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_full_disk_is_one_line_naming_the_folder(tmp_path):
    # /dev/full refuses every write with ENOSPC: the real error a full disk gives.
    with pytest.raises(GradattnError) as err:
        with io.disk_errors(tmp_path), open("/dev/full", "wb") as f:
            f.write(b"x")
    message = one_line_error(err)
    assert str(tmp_path) in message and "disk is full" in message


def test_a_refused_read_elsewhere_is_not_blamed_on_the_folder(tmp_path):
    with pytest.raises(PermissionError):
        with io.disk_errors(tmp_path / "out"):
            raise PermissionError(errno.EACCES, "Permission denied", "/etc/elsewhere")


def project_for(dataset: str, base: Path) -> Path:
    """A project folder with the configs the download/preprocess stages read."""
    for name in ("source", "prepare"):
        path = base / "configs" / dataset / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        config = {"dataset": dataset, "source": None, "custom": None, "options": {}}
        if name == "prepare":  # the corrected recipe's protocol, as configure resolves it
            protocol = dataset_protocol(DataConfig(), "corrected", dataset)
            config["protocol"] = protocol.as_dict()
        path.write_text(json.dumps(config))
    return base


# Runs a stage script as `python stages/<stage>.py <dataset>` would, but may first import the
# library and then drop to another user (who may not be able to read this Python's install).
RUN_AS = """
import os, pkgutil, runpy, sys
import gradattn.sources.preparation, gradattn.sources.registry, gradattn.core.stage
gradattn.sources.registry.get_spec(sys.argv[2])  # imports the dataset's source module
if sys.argv[3]:
    os.setuid(int(sys.argv[3]))
sys.argv = sys.argv[1:3]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_stage_as(stage: str, dataset: str, cwd: Path, uid: int | None = None):
    script = str(ROOT / "stages" / f"{stage}.py")
    return subprocess.run(
        [sys.executable, "-c", RUN_AS, script, dataset, "" if uid is None else str(uid)],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=300,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the stage as another user")
def test_an_unwritable_prepared_folder_is_one_line_from_the_real_stage():
    # Root ignores permissions, so the stage runs as `nobody` against a folder it may read but
    # not write: the kernel's own EACCES, from the real preprocess stage.
    base = Path(tempfile.mkdtemp(prefix="gradattn-ro-"))
    try:
        project = project_for("fashionmnist-mini", base)
        download = run_stage_as("download", "fashionmnist-mini", project)
        assert download.returncode == 0, download.stderr
        (project / "data" / "prepared").mkdir(parents=True)
        for folder in (base, *[p for p in base.rglob("*") if p.is_dir()]):
            folder.chmod(0o755)  # readable by nobody; writable by root only
        for file in base.rglob("*"):
            if file.is_file():
                file.chmod(0o644)
        result = run_stage_as("preprocess", "fashionmnist-mini", project, uid=65534)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "cannot write to data/prepared" in lines[0] and "chmod" in lines[0]
        assert not any((project / "data" / "prepared").iterdir())
    finally:
        shutil.rmtree(base)


def test_the_download_stage_removes_what_a_killed_download_left(tmp_path):
    project = project_for("fashionmnist-mini", tmp_path)
    raw = project / "data" / "raw" / "fashionmnist-mini"
    raw.mkdir(parents=True)
    (raw / f".{BUNDLED.name}.tmp-k1ll3d").write_bytes(b"half a file")
    result = run_stage_as("download", "fashionmnist-mini", project)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in raw.iterdir()] == [BUNDLED.name]
