"""Real bad things a user can meet — damaged and malicious .pt files, missing arguments, a full
disk — end in one line naming the file and what to do, a non-zero exit, and nothing
half-written; a training run retrained with the same settings writes the same bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from pathlib import Path

import pytest
import torch
import yaml
from conftest import copy_committed, one_line, run_stage, stage_here
from training_helpers import data, quiet, tiny

from gradattn.config import TrainConfig
from gradattn.core import paths
from gradattn.core.errors import GradattnError
from gradattn.core.stage import DEBUG_ENV, stage_entry
from gradattn.training.loop import fit
from gradattn.training.trained import load_trained, save_trained

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)

CFG = TrainConfig(max_epochs=2, batch_size=8, device="cpu", fast="off").resolve("corrected", "test")
DATASET, MODEL = "fashionmnist-mini", "resnet18"


class Evil:
    """Unpickling this calls Path.touch(marker): a .pt file that runs code when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def write_evil(path: Path, marker: Path, **contents) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**contents, "payload": Evil(marker)}, path, pickle_protocol=4)


def truncate(path: Path) -> bytes:
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return whole[: len(whole) // 2]


def hidden_temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp" in p.name]


def project(tmp_path: Path) -> Path:
    copy_committed("params.yaml", tmp_path)
    return tmp_path


# --- resume checkpoints -----------------------------------------------------------------------
def test_a_truncated_checkpoint_is_set_aside_and_training_starts_over(tmp_path):
    train, val = data()
    ckpt = tmp_path / "run.resume.pt"
    fit(tiny(), train, val, dataclasses.replace(CFG, max_epochs=1), checkpoint=ckpt,
        run_id="r", log=quiet, progress=False)
    damaged = truncate(ckpt)
    lines: list[str] = []
    result = fit(tiny(), train, val, CFG, checkpoint=ckpt, run_id="r", log=lines.append,
                 progress=False)
    assert result.resumed_from == 0 and [r["epoch"] for r in result.history] == [1, 2]
    aside = tmp_path / "run.resume.pt.damaged"
    assert aside.read_bytes() == damaged  # kept for the user, not deleted
    warning = next(line for line in lines if "cannot be used" in line)
    assert "\n" not in warning and str(ckpt) in warning and "truncated or damaged" in warning
    assert "training starts from scratch" in warning and str(aside) in warning
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2  # a good one replaces it


def test_a_malicious_checkpoint_does_not_run_and_is_set_aside(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run.resume.pt"
    write_evil(ckpt, marker, run_id="r", epoch=1)
    lines: list[str] = []
    train, val = data()
    result = fit(tiny(), train, val, CFG, checkpoint=ckpt, run_id="r", log=lines.append,
                 progress=False)
    assert not marker.exists()
    assert result.resumed_from == 0 and len(result.history) == 2
    assert any("not loaded: loading it could run code" in line for line in lines), lines
    assert (tmp_path / "run.resume.pt.damaged").exists()
    # The file really is malicious: the loading this project used to do runs its code.
    torch.load(tmp_path / "run.resume.pt.damaged", weights_only=False)
    assert marker.exists()


# --- trained model files --------------------------------------------------------------------
def saved_tiny(path: Path, seed: int = 0) -> None:
    train, val = data()
    model = tiny()
    fit(model, train, val, dataclasses.replace(CFG, seed=seed), log=quiet, progress=False)
    run_config = {"dataset": DATASET, "model": "tiny", "model_options": {},
                  "train": dataclasses.asdict(CFG)}
    save_trained(path, model, run_config, {"num_classes": 3, "channels": 1}, best_epoch=1,
                 epochs=2)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_retraining_with_the_same_settings_writes_the_same_bytes(tmp_path):
    first, again, elsewhere = (tmp_path / "a/tiny.pt", tmp_path / "a/tiny.pt",
                               tmp_path / "b/other-name.pt")
    saved_tiny(first)
    digest = sha256(first)
    saved_tiny(again)
    saved_tiny(elsewhere)
    assert sha256(again) == digest and sha256(elsewhere) == digest
    saved_tiny(tmp_path / "c.pt", seed=1)
    assert sha256(tmp_path / "c.pt") != digest  # the digest does see the weights
    assert hidden_temporaries(tmp_path) == []


@pytest.mark.parametrize("damage", ["truncated", "malicious"])
def test_a_bad_model_file_stops_evaluate_with_one_line(tmp_path, damage):
    cwd = project(tmp_path)
    model_file = cwd / paths.model_file(DATASET, MODEL)
    marker = tmp_path / "pwned"
    if damage == "truncated":
        saved_tiny(model_file)
        truncate(model_file)
    else:
        write_evil(model_file, marker, model=MODEL)
    line = one_line(stage_here("evaluate.py", DATASET, MODEL, cwd=cwd))
    assert str(paths.model_file(DATASET, MODEL)) in line
    assert (f"restore it with `dvc checkout --force {paths.model_file(DATASET, MODEL)}` or "
            f"re-create it with `dvc repro -f train@{DATASET}-{MODEL}`") in line
    assert ("truncated or damaged" if damage == "truncated" else "could run code") in line
    assert not marker.exists()
    assert not (cwd / "metrics").exists() and not (cwd / "predictions").exists()


def test_load_trained_refuses_a_malicious_model_in_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    write_evil(paths.model_file(DATASET, MODEL), marker, model=MODEL)
    with pytest.raises(GradattnError, match="could run code") as err:
        load_trained(DATASET, MODEL)
    assert "\n" not in str(err.value) and not marker.exists()


# --- stage scripts ----------------------------------------------------------------------------
@pytest.mark.parametrize("script, usage", [
    ("train.py", "<dataset> <model>"), ("evaluate.py", "<dataset> <model>"),
    ("gradients.py", "<dataset> <model>"), ("plot.py", "<dataset>"),
    ("preprocess.py", "<dataset>"), ("download.py", "<dataset>")])
def test_a_stage_without_arguments_prints_its_usage(tmp_path, script, usage):
    line = one_line(stage_here(script, cwd=project(tmp_path)))
    stage = script.removesuffix(".py") + "@" + usage.replace("> <", ">-<")
    assert f"usage: python stages/{script} {usage}" in line and f"dvc repro {stage}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_debug_env_adds_the_traceback(tmp_path):
    proc = run_stage("train.py", cwd=project(tmp_path), env={DEBUG_ENV: "1"})
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: usage:")


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path):
    cwd = project(tmp_path)
    (cwd / "configs").write_text("not a folder")
    line = one_line(stage_here("configure.py", cwd=cwd))
    assert "configs/fashionmnist-mini" in line and "Not a directory" in line
    assert "rerun" in line


def test_a_full_disk_is_one_line(capsys):
    def write_to_full_disk():
        with open("/dev/full", "w") as fh:  # the kernel's always-full device: real ENOSPC
            fh.write("x")

    with pytest.raises(SystemExit) as exit_:
        stage_entry(write_to_full_disk)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "No space left on device" in err and "free some disk space" in err


def test_an_unexpected_error_is_one_line_pointing_at_the_debug_switch(capsys):
    with pytest.raises(SystemExit) as exit_:
        stage_entry(lambda: {}["missing"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1
    assert err.startswith("error: unexpected KeyError") and f"{DEBUG_ENV}=1" in err


def test_bad_yaml_types_at_top_level_are_one_line(tmp_path):
    cwd = project(tmp_path)
    (cwd / "params.yaml").write_text(yaml.safe_dump([1, 2]))
    line = one_line(stage_here("configure.py", cwd=cwd))
    assert "params.yaml must be a mapping of sections" in line
    assert not (cwd / "configs").exists()
