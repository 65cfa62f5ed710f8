"""Data that changes or breaks never gives a wrong result in silence: each case below is made
for real (a NaN setting, a cut .npy, a damaged meta.json or .npz, a non-UTF-8 params.yaml,
a full disk) and ends in one line naming the file or key and what to do, a non-zero exit, and
nothing written that looks finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, committed, one_line, run_stage, running_stages, stage_here
from training_helpers import data, quiet, tiny

from gradattn.config import TrainConfig
from gradattn.core import io, paths
from gradattn.core.errors import GradattnError
from gradattn.core.stage import DEBUG_ENV
from gradattn.training.loop import fit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)

DATASET, MODEL = "fashionmnist-mini", "resnet18"


def project(tmp_path: Path, changes: str = "") -> Path:
    (tmp_path / "params.yaml").write_text(committed("params.yaml") + changes)
    return tmp_path


# ---------------------------------------------------------------- finite numbers


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_a_non_finite_setting_stops_configure_with_one_line(tmp_path, value):
    params = yaml.safe_load(committed("params.yaml"))
    params["train"]["lr"] = float(value.replace(".", ""))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    line = one_line(stage_here("configure.py", cwd=tmp_path))
    shown = float(value.replace(".", ""))
    assert f"train.lr = {shown} is not allowed: must be a finite number" in line
    assert not (tmp_path / "configs").exists()


def test_a_non_finite_model_option_is_named_by_key(tmp_path):
    # model.dropout = NaN passes torch's own 0 <= p <= 1 check (NaN compares false).
    params = yaml.safe_load(committed("params.yaml"))
    params["model"]["dropout"] = float("nan")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    line = one_line(stage_here("configure.py", cwd=tmp_path))
    assert "model.dropout = nan is not allowed: must be a finite number" in line


def test_json_files_never_hold_nan_or_infinity(tmp_path):
    target = tmp_path / "metrics.json"
    with pytest.raises(GradattnError) as err:
        io.write_json(target, {"top1": 0.1, "per_layer": [{"norm": 1.0}, {"norm": float("inf")}]})
    message = str(err.value)
    assert "\n" not in message and str(target) in message and "per_layer[1].norm" in message
    assert list(tmp_path.iterdir()) == []  # no file, no temporary


def test_a_diverging_training_stops_before_writing_nan(tmp_path):
    train, val = data()
    cfg = TrainConfig(max_epochs=3, batch_size=8, device="cpu", fast="off", lr=1e30
                      ).resolve("corrected", "test")
    rows: list = []
    with pytest.raises(GradattnError, match="training diverged at epoch 1") as err:
        fit(tiny(), train, val, cfg, checkpoint=tmp_path / "run.resume.pt", run_id="r",
            log=quiet, progress=False, on_epoch=lambda h: rows.extend(h))
    assert "\n" not in str(err.value) and "lower train.lr" in str(err.value)
    assert rows == [] and not (tmp_path / "run.resume.pt").exists()


# ---------------------------------------------------------------- damaged files


def non_utf8(tmp_path: Path) -> Path:
    cwd = project(tmp_path)
    text = (cwd / "params.yaml").read_bytes()
    (cwd / "params.yaml").write_bytes(text.replace(b"# The study", b"# The \xe9tude", 1))
    return cwd


def test_a_non_utf8_params_yaml_is_one_line(tmp_path):
    line = one_line(stage_here("evaluate.py", DATASET, MODEL, cwd=non_utf8(tmp_path)))
    assert "params.yaml is not UTF-8 text (byte 0xe9" in line and "save it as UTF-8" in line


def test_debug_still_prints_the_traceback_of_a_damaged_file(tmp_path):
    proc = run_stage("evaluate.py", DATASET, MODEL, cwd=non_utf8(tmp_path),
                     env={DEBUG_ENV: "1"})
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert "UnicodeDecodeError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: params.yaml is not UTF-8")


@pytest.fixture(scope="module")
def prepared_project(tmp_path_factory) -> Path:
    """configure, download and preprocess of the bundled set, run for real (once; in this
    process: the set-up, not what is tested)."""
    cwd = project(tmp_path_factory.mktemp("prepared"))
    for script, *args in (("configure.py",), ("download.py", DATASET),
                          ("preprocess.py", DATASET)):
        proc = stage_here(script, *args, cwd=cwd)
        assert proc.returncode == 0, proc.stderr
    return cwd


def copy_of(project_dir: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(project_dir, tmp_path / "p")
    return tmp_path / "p"


@pytest.mark.parametrize("damage", ["truncated images", "truncated labels", "meta.json"])
def test_a_damaged_prepared_dataset_is_one_line_naming_the_file(prepared_project, tmp_path,
                                                                damage):
    cwd = copy_of(prepared_project, tmp_path)
    folder = cwd / paths.PREPARED / DATASET
    name = {"truncated images": "train_images.npy", "truncated labels": "train_labels.npy",
            "meta.json": "meta.json"}[damage]
    whole = (folder / name).read_bytes()
    (folder / name).write_bytes(whole[: len(whole) // 2])
    line = one_line(stage_here("train.py", DATASET, MODEL, cwd=cwd))
    shown = "data/prepared/fashionmnist-mini" + ("/meta.json" if name == "meta.json" else "")
    assert f"{shown}" in line and "is damaged or not the file it should be" in line, line
    assert f"`dvc repro -f preprocess@{DATASET}`" in line and "dvc checkout" in line
    if name != "meta.json":
        assert name in line
    assert not (cwd / "models").exists() and not (cwd / "metrics").exists()


@pytest.mark.parametrize("damage", ["truncated", "pickled"])
def test_a_damaged_predictions_file_is_one_line_without_pickle_advice(prepared_project, tmp_path,
                                                                      damage):
    cwd = copy_of(prepared_project, tmp_path)
    io.write_json(cwd / paths.metrics_file(DATASET, MODEL), {"top1": 0.5})
    io.write_json(cwd / paths.gradients_file(DATASET, MODEL), {"ghs": 1.0})
    npz = cwd / paths.predictions_file(DATASET, MODEL)
    npz.parent.mkdir(parents=True)
    if damage == "truncated":
        np.savez_compressed(npz, logits=np.zeros((50, 10), np.float32))
        npz.write_bytes(npz.read_bytes()[:-100])
    else:  # what `np.load(..., allow_pickle=True)` would unpickle: it could run code
        np.savez(npz, logits=np.array([{"a": 1}], dtype=object))
    params = yaml.safe_load((cwd / "params.yaml").read_text())
    params["models"] = [MODEL]
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    line = one_line(stage_here("plot.py", DATASET, cwd=cwd), progress=True)
    assert str(paths.predictions_file(DATASET, MODEL)) in line
    assert f"`dvc repro -f evaluate@{DATASET}-{MODEL}`" in line
    assert "allow_pickle" not in line
    if damage == "pickled":
        assert "it holds pickled Python objects" in line
    assert not (cwd / "plots").exists() and not (cwd / "plotdata").exists()


def test_a_full_disk_in_preprocess_is_one_line_not_a_bus_error(prepared_project, tmp_path):
    """data/prepared on a real 1 MB file system (a tmpfs in a private mount namespace): the
    3.6 MB of arrays do not fit. Writing into a sparse memory map there used to kill the
    stage with SIGBUS and no message."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user/mount namespaces here (unshare -rm) to mount a small tmpfs")
    cwd = copy_of(prepared_project, tmp_path)
    import shutil

    shutil.rmtree(cwd / paths.PREPARED)
    (cwd / paths.PREPARED).mkdir()
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV} | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs data/prepared && "
         f"{sys.executable} {ROOT}/stages/preprocess.py {DATASET} && ls -A data/prepared; "
         "s=$?; ls -A data/prepared; exit $s"],
        cwd=cwd, env=env, capture_output=True, text=True)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert errors == ["error: cannot write to data/prepared: No space left on device; the disk "
                      "is full: free space (e.g. `dvc gc -w`) and run again"], proc.stderr
    assert proc.stdout.strip() == ""  # nothing left in the full folder, no temporary


# ---------------------------------------------------------------- reports over revisions


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                   check=True, capture_output=True)


def record(repo: Path, seed: int, top1: float) -> None:
    """One run's files and dvc.lock, as tests/test_table.py's record_run writes them."""
    from test_table import record_run

    record_run(repo, "gradattn", seed, top1)


@pytest.fixture
def two_revisions(tmp_path) -> Path:
    """seed1: a run whose metrics are in git; HEAD: a run whose metrics file is a DVC output
    that is not in the local cache (a fresh clone with no DVC remote)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    record(repo, 1, 0.25)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "seed 1")
    git(repo, "tag", "seed1")
    record(repo, 2, 0.75)
    git(repo, "rm", "-q", "--cached", "metrics/d1/gradattn.json")
    (repo / "metrics/d1/.gitignore").write_text("/gradattn.json\n")  # as `dvc repro` does
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "seed 2, metrics in DVC's cache only")
    return repo


def test_table_leaves_out_a_revision_whose_results_are_not_here(two_revisions, capsys):
    from gradattn.cli import main

    args = ["table", "--repo", str(two_revisions), "--no-exps", "--no-workspace",
            "--rev", "seed1", "--rev", "HEAD", "--table", "1"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "| d1 | – | – | – | 25.00 |" in out  # seed 1 alone
    assert err.count("\n") == 1 and err.startswith("note: left out rev HEAD: their results are "
                                                   "neither in git nor in the local DVC cache")
    assert "--strict" in err
    assert main([*args, "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: rev HEAD: its dvc.lock records "
                                                   "metrics/d1/gradattn.json")


@pytest.mark.parametrize("damage", ["yaml", "not a mapping", "metrics json"])
def test_table_with_a_damaged_dvc_lock_or_metrics_is_one_line(tmp_path, capsys, damage):
    from gradattn.cli import main

    record(tmp_path, 1, 0.25)
    if damage == "yaml":
        (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  train@d1: [\n")
    elif damage == "not a mapping":
        (tmp_path / "dvc.lock").write_text("- just\n- a list\n")
    else:  # cut in half, and dvc.lock updated to match: only parsing can tell
        from test_table import _md5, _set_lock

        metrics = tmp_path / "metrics/d1/gradattn.json"
        metrics.write_text(metrics.read_text()[:5])
        _set_lock(tmp_path, ["stages", "evaluate@d1-gradattn", "outs", 0, "md5"], _md5(metrics))
    assert main(["table", "--repo", str(tmp_path), "--no-exps"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    shown = "metrics/d1/gradattn.json" if damage == "metrics json" else "dvc.lock"
    assert err.startswith(f"error: workspace: {shown} is damaged or not the file it should be")


def test_a_damaged_workspace_lock_advises_restoring_it_in_a_git_project(tmp_path, capsys):
    """With git (and experiments listed) the workspace is still told to restore its file,
    not to 'fix it in that revision'."""
    from gradattn.cli import main

    record(tmp_path, 1, 0.25)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "run"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  train@d1: [\n")
    assert main(["table", "--repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: workspace: dvc.lock is damaged")
    assert "restore the committed one (`git checkout -- dvc.lock`)" in err
    # The advice works: the command it names brings the table back.
    subprocess.run(["git", "checkout", "--", "dvc.lock"], cwd=tmp_path, check=True)
    assert main(["table", "--repo", str(tmp_path)]) == 0


@pytest.mark.parametrize("path", ["dvc.lock", "metrics/summary.json"])
@pytest.mark.parametrize("side", ["workspace", "base"])
def test_compare_with_a_damaged_lock_or_headline_is_one_line(tmp_path, capsys, path, side):
    from gradattn.cli import main

    record(tmp_path, 1, 0.25)
    git(tmp_path, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "metrics/summary.json").write_text(json.dumps({"d1/gradattn": {"top1": 0.25}}))
    good = (tmp_path / path).read_bytes()
    # Cut short: bad JSON; for dvc.lock, "stages:\n  configu" (YAML, but no stages in it).
    if side == "base":
        (tmp_path / path).write_bytes(good[:17])
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "base")
    (tmp_path / path).write_bytes(good[:17] if side == "workspace" else good)
    assert main(["compare", "--rev", "HEAD", "--repo", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    where = "the workspace" if side == "workspace" else "--rev HEAD"
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {path} of {where} is damaged or not the file it should be")


# ---------------------------------------------------------------- image folders


def image_folder_project(tmp_path: Path, folder: Path) -> Path:
    cwd = tmp_path / "project"
    cwd.mkdir()
    params = yaml.safe_load(committed("params.yaml"))
    params["data"]["datasets"] = ["mine"]
    params["data"]["custom"] = {"mine": {"format": "imagefolder", "path": str(folder)}}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    proc = stage_here("configure.py", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd


def grey_folder(root: Path, bits: int = 8, per_class: int = 10) -> Path:
    """Two classes of distinct flat grey images: pixel value = level(class, i)."""
    from PIL import Image

    for k, cls in enumerate(("a", "b")):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            level = (k * per_class + i) * 3000 + 123 if bits == 16 else k * per_class + i
            dtype = np.uint16 if bits == 16 else np.uint8
            Image.fromarray(np.full((8, 8), level, dtype)).save(root / cls / f"{i}.png")
    return root


def test_16_bit_png_keeps_its_grey_levels_scaled_not_clipped(tmp_path):
    folder = grey_folder(tmp_path / "src", bits=16)
    cwd = image_folder_project(tmp_path, folder)
    for script in ("download.py", "preprocess.py"):
        proc = stage_here(script, "mine", cwd=cwd)
        assert proc.returncode == 0, proc.stderr
    prepared = cwd / paths.PREPARED / "mine"
    levels = np.concatenate([np.load(prepared / f"{s}_images.npy").reshape(-1, 64)[:, 0]
                             for s in ("train", "val", "test")])
    expected = {round((j * 3000 + 123) * 255 / 65535) for j in range(20)}
    assert set(levels.tolist()) == expected  # 20 distinct levels from 1 to 235, none clipped
    assert len(expected) == 20 and max(expected) < 255


@pytest.mark.parametrize("link", ["loop to the root", "loop to itself", "class into class",
                                  "file twice", "train into test", "dangling"])
def test_an_image_reachable_twice_is_refused_at_download(tmp_path, link):
    folder = tmp_path / "src"
    if link == "train into test":
        grey_folder(folder / "train")
        grey_folder(folder / "test", per_class=2)
        (folder / "test/b/same").symlink_to(folder / "train/b")
    else:
        grey_folder(folder)
        target, at = {"loop to the root": (folder, "a/up"),
                      "loop to itself": (folder / "a", "a/me"),
                      "class into class": (folder / "b", "a/more"),
                      "file twice": (folder / "a/3.png", "b/copy.png"),
                      "dangling": (folder / "a/gone.png", "a/link.png")}[link]
        (folder / at).symlink_to(target)
    cwd = image_folder_project(tmp_path, folder)
    line = one_line(stage_here("download.py", "mine", cwd=cwd))
    assert line.startswith("error: data.custom.mine: ") and "remove" in line
    if link == "file twice":
        assert "b/copy.png" in line and "a/3.png" in line and "are the same file" in line
    elif link == "dangling":
        assert "a/link.png is a link to nothing" in line
    else:
        assert "already listed as" in line and "symlink loop" in line
    assert not (cwd / paths.RAW / "mine" / "images.zip").exists()
    assert [p.name for p in (cwd / paths.RAW).rglob("*")] == []  # nothing, no temporary


def test_no_image_lands_in_two_splits(tmp_path):
    folder = grey_folder(tmp_path / "src", per_class=30)
    (folder / "a/sub").mkdir()
    (folder / "a/sub/deeper").symlink_to(folder / "b", target_is_directory=True)
    cwd = image_folder_project(tmp_path, folder)
    assert "already listed" in one_line(stage_here("download.py", "mine", cwd=cwd))
    (folder / "a/sub/deeper").unlink()  # without the link: 60 distinct images, each once
    for script in ("download.py", "preprocess.py"):
        proc = stage_here(script, "mine", cwd=cwd)
        assert proc.returncode == 0, proc.stderr
    prepared = cwd / paths.PREPARED / "mine"
    seen = [np.load(prepared / f"{s}_images.npy")[:, 0, 0, 0].tolist()
            for s in ("train", "val", "test")]
    assert sorted(sum(seen, [])) == list(range(60))


# ---------------------------------------------------------------- source data DVC sees


@pytest.mark.slow
def test_source_data_edited_after_a_run_is_prepared_again_by_the_next_repro(tiny_project, tmp_path):
    from conftest import dvc

    project = tiny_project(tmp_path / "p")
    dvc("repro", "preprocess@tiny", cwd=project)
    meta = lambda: json.loads((project / "data/prepared/tiny/meta.json").read_text())  # noqa: E731
    assert meta()["counts"]["train"] == 200
    source = project / "tiny.npz"
    with np.load(source) as npz:
        arrays = dict(npz)

    # Touched, same bytes: the list of files is the same, nothing downstream runs.
    os.utime(source, (1e9, 1e9))
    assert running_stages(dvc("repro", "preprocess@tiny", cwd=project).stdout) == {"manifest@tiny"}

    # Edited: 50 training images fewer. DVC sees it, and the next repro prepares it again.
    np.savez(source, **{k: v[:150] if k.startswith("train") else v for k, v in arrays.items()})
    assert "manifest@tiny" in dvc("status", cwd=project).stdout
    ran = running_stages(dvc("repro", "preprocess@tiny", cwd=project).stdout)
    assert ran == {"manifest@tiny", "download@tiny", "preprocess@tiny"}, ran
    assert meta()["counts"]["train"] == 150
    listed = json.loads((project / "data/manifests/tiny.json").read_text())["files"]
    assert list(listed) == ["tiny.npz"] and listed["tiny.npz"]["size"] == source.stat().st_size
    assert running_stages(dvc("repro", "preprocess@tiny", cwd=project).stdout) == {"manifest@tiny"}

    # An output edited in place (root ignores the read-only bit) leaves the cache intact
    # under the project's cache type: `dvc checkout` brings back what preprocess wrote.
    dvc("config", "cache.type", project_cache_type(), cwd=project)
    dvc("checkout", "--relink", "data/prepared/tiny", cwd=project)
    meta_file = project / "data/prepared/tiny/meta.json"
    original = meta_file.read_bytes()
    os.chmod(meta_file, 0o644)
    with open(meta_file, "r+b") as fh:
        fh.write(b"{damaged")
    assert "preprocess@tiny" in dvc("status", cwd=project).stdout
    dvc("checkout", "--force", "data/prepared/tiny", cwd=project)
    assert meta_file.read_bytes() == original


@pytest.mark.slow
def test_a_source_folder_is_a_machine_setting_and_its_files_are_what_dvc_sees(make_project,
                                                                                tmp_path):
    """machine.yaml's data.sources: the same files in another folder re-run nothing but the
    listing and show in neither `dvc params diff` nor `dvc exp show`; a file more re-runs the
    download (which copies the same bytes, so preprocess stays)."""
    import shutil

    from conftest import dvc, sh

    from gradattn.sources.bundled import BUNDLED

    folders = tmp_path / "a", tmp_path / "b"
    for folder in folders:
        folder.mkdir()
        shutil.copy(BUNDLED, folder / BUNDLED.name)
    dataset = "fashionmnist-mini"
    project = make_project(tmp_path / "p", "fashion",
                           {"data": {"sources": {dataset: str(folders[0])}}})
    ran = running_stages(dvc("repro", f"preprocess@{dataset}", cwd=project).stdout)
    assert ran == {f"{s}@{dataset}" for s in ("manifest", "download", "preprocess")} | {
        "configure"}, ran
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "prepared", cwd=project)
    machine = project / "machine.yaml"
    machine.write_text(machine.read_text().replace(str(folders[0]), str(folders[1])))
    assert dvc("params", "diff", cwd=project).stdout.strip() == ""
    assert "data.sources" not in dvc("exp", "show", "--md", cwd=project).stdout
    ran = running_stages(dvc("repro", f"preprocess@{dataset}", cwd=project).stdout)
    assert ran == {f"manifest@{dataset}"}, ran
    (folders[1] / "README").write_text("a file more")
    ran = running_stages(dvc("repro", f"preprocess@{dataset}", cwd=project).stdout)
    assert ran == {f"manifest@{dataset}", f"download@{dataset}"}, ran


@pytest.mark.slow
def test_a_source_outside_the_project_is_listed_again_in_a_temp_experiment(tiny_project, tmp_path):
    # `../data/x.npz` pointed into DVC's tmp folder inside a --temp experiment's copy: the
    # experiment noted the file "is not on this machine" and ran on the old data, exit 0.
    from conftest import dvc, md5, sh

    project = tiny_project(tmp_path / "p", {"data": {"custom": {
        "tiny": {"format": "npz", "path": "../data/tiny.npz"}}}})
    source = tmp_path / "data" / "tiny.npz"
    source.parent.mkdir()
    source.write_bytes((project / "tiny.npz").read_bytes())
    dvc("repro", "preprocess@tiny", cwd=project)
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "prepared", cwd=project)
    with np.load(source) as npz:  # cut: 50 training images fewer
        np.savez(source, **{k: v[:150] if k.startswith("train") else v for k, v in npz.items()})

    done = dvc("exp", "run", "--temp", "-n", "cut", "preprocess@tiny", cwd=project)
    assert "not on this machine" not in done.stdout + done.stderr
    ref = sh("git", "for-each-ref", "--format=%(refname)", "refs/exps", cwd=project).stdout
    listed = json.loads(sh("git", "show", f"{ref.split()[0]}:data/manifests/tiny.json",
                           cwd=project).stdout)
    assert listed["files"]["tiny.npz"]["md5"] == md5(source)
    import dvc.api  # the experiment's prepared data, from the DVC cache

    meta = json.loads(dvc.api.read("data/prepared/tiny/meta.json", repo=str(project),
                                   rev=ref.split()[0]))
    assert meta["counts"]["train"] == 150


def project_cache_type() -> str:
    import configparser

    config = configparser.ConfigParser()
    config.read_string(committed(".dvc/config"))
    return config["cache"]["type"]


def test_the_dvc_cache_is_never_linked_into_the_workspace():
    assert set(project_cache_type().split(",")) <= {"reflink", "copy"}


# ---------------------------------------------------------------- temporaries of killed stages


def test_any_stage_removes_what_dead_processes_left_and_keeps_live_ones(tmp_path):
    """A stage killed and later served from DVC's run cache never cleans up itself: whatever
    stage runs next does, keeping the temporaries of processes still running (a concurrent
    experiment's checkpoint)."""
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    host = "".join(c for c in socket.gethostname() if c.isalnum())[:32]
    live = f"{os.getpid()}@{host}"
    cwd = project(tmp_path)
    left = {  # path -> removed?
        f"checkpoints/{DATASET}/.resnet18.abc.resume.pt.tmp-{dead}@{host}-x1.pt": True,
        f"data/prepared/.{DATASET}.tmp-{dead}@{host}-x2/train_images.npy": True,
        f"data/raw/{DATASET}/.{DATASET}.npz.tmp-k1ll3d": True,  # no owner recorded: old
        f"metrics/{DATASET}/.resnet18.json.tmp-{dead}@{host}-x3": True,
        f"checkpoints/{DATASET}/.gradattn.abc.resume.pt.tmp-{live}-x4.pt": False,  # running
        f"checkpoints/{DATASET}/.gradattn.abc.resume.pt.tmp-{dead}@otherhost-x5.pt": False,
    }
    for rel in left:
        (cwd / rel).parent.mkdir(parents=True, exist_ok=True)
        (cwd / rel).write_bytes(b"half a file")
    io.write_json(cwd / paths.source_config(DATASET), {"dataset": DATASET, "source": None,
                                                       "custom": None})
    proc = run_stage("manifest.py", DATASET, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "removed 4 temporary file(s) that killed runs left" in proc.stdout
    for rel, removed in left.items():
        top = cwd / rel if ".tmp-" in Path(rel).name else (cwd / rel).parent
        assert top.exists() != removed, rel
