"""Every entry point — the stages, `gradattn …`, `gradattn study run`, scripts/ and benchmarks/ —
answers a failure in one line through the stages' wrapper (gradattn.core.stage), and a Ctrl-C
(or SIGTERM) in one line, exit 130, with nothing half-made left: real processes, real signals.
Also the failures that used to surface as "unexpected … (likely a bug)": torch's writer on a
full disk, and a split left without images."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, dvc, env_for, one_line, processes_in, python, sh
from PIL import Image
from training_helpers import data, quiet, tiny

from gradattn.config import TrainConfig
from gradattn.core.errors import GradattnError
from gradattn.core.stage import DEBUG_ENV, stage_entry
from gradattn.prepared import PreparedWriter
from gradattn.sources.bundled import BUNDLED
from gradattn.sources.registry import get_spec
from gradattn.training.loop import fit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)

# What torch 2.x's archive writer raises when fwrite fails (a full disk): a RuntimeError.
TORCH_FULL = "[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing " \
             "file data/0: file write failed"


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp" in p.name]


# --- torch's writer on a full disk ----------------------------------------------------------
def test_torch_failing_to_write_a_checkpoint_is_one_line_naming_the_folder(
        tmp_path, monkeypatch, capsys):
    def full_disk(*_args, **_kwargs):
        raise RuntimeError(TORCH_FULL)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch, "save", full_disk)
    folder = tmp_path / "checkpoints"
    cfg = TrainConfig(max_epochs=1, batch_size=8, device="cpu", fast="off").resolve(
        "corrected", "test")
    train, val = data()
    with pytest.raises(SystemExit) as exit_:
        stage_entry(lambda: fit(tiny(), train, val, cfg, checkpoint=folder / "run.pt", run_id="r",
                        log=quiet, progress=False))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert f"cannot write to {folder}:" in err and "space" in err and "free space" in err
    assert "likely a bug" not in err
    assert list(folder.iterdir()) == []  # the half-written temporary went too


def test_another_runtime_error_of_torch_save_is_not_called_a_full_disk(tmp_path, monkeypatch):
    from gradattn.core import torchfile

    def broken(*_args, **_kwargs):
        raise RuntimeError("Can't pickle local object")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="pickle"):
        torchfile.save(tmp_path / "x.pt", {})
    assert list(tmp_path.iterdir()) == []


# --- a split without images -----------------------------------------------------------------
def prepare(spec, raw: Path, root: Path) -> dict:
    with PreparedWriter(spec.name, spec.classes, root=root, notes={}) as writer:
        spec.prepare(raw, writer, "official", 0)
        return writer.commit()


def refused(tmp_path: Path, name: str, entry: dict) -> str:
    spec = get_spec(name, {name: entry})
    spec.download(tmp_path / "raw", None)
    with pytest.raises(GradattnError) as err:
        prepare(spec, tmp_path / "raw", tmp_path / "prep")
    assert not (tmp_path / "prep").exists() or not any((tmp_path / "prep").iterdir())
    assert "\n" not in str(err.value)
    return str(err.value)


def test_an_npz_with_an_empty_val_split_is_refused_at_preprocess(tmp_path):
    bundled = np.load(BUNDLED)
    arrays = {f"{s}_{k}": bundled[f"{s}_{k}"][:40] for s in ("train", "test")
              for k in ("images", "labels")}
    arrays["val_images"] = bundled["val_images"][:0]
    arrays["val_labels"] = bundled["val_labels"][:0]
    np.savez(tmp_path / "novals.npz", **arrays)
    message = refused(tmp_path, "novals", {"format": "npz", "path": str(tmp_path / "novals.npz")})
    assert "dataset 'novals'" in message and "val split would hold no images" in message
    assert "give the source val images" in message


def test_too_few_images_per_class_for_a_carved_split_is_refused_at_preprocess(tmp_path):
    # Two images per class and no split of its own: the stratified 70/10/20 cut gives val none.
    for k, cls in enumerate(("cat", "dog")):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(2):
            pixels = np.full((16, 16, 3), 40 * k + i, np.uint8)
            Image.fromarray(pixels).save(tmp_path / "pets" / cls / f"{i}.png")
    message = refused(tmp_path, "pets", {"format": "imagefolder", "path": str(tmp_path / "pets")})
    assert "dataset 'pets'" in message and "val split would hold no images" in message
    assert "10 or more images per class" in message


@pytest.mark.slow
def test_the_preprocess_stage_refuses_an_empty_split_in_one_line(tiny_project, tmp_path):
    repo = tiny_project(tmp_path / "p")
    arrays = dict(np.load(repo / "tiny.npz"))
    arrays["val_images"], arrays["val_labels"] = arrays["val_images"][:0], arrays["val_labels"][:0]
    np.savez(repo / "tiny.npz", **arrays)
    done = dvc("repro", "preprocess@tiny", cwd=repo, check=False)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors and "dataset 'tiny': its val split would hold no images" in errors[0]
    assert "Traceback" not in done.stderr and "likely a bug" not in done.stderr
    assert not (repo / "data/prepared/tiny").exists() and not temporaries(repo / "data")


# --- the `gradattn` command -----------------------------------------------------------------
def test_an_os_error_in_a_gradattn_command_is_one_line(tmp_path):
    # -o naming a folder: the write fails with IsADirectoryError (a traceback before).
    (tmp_path / "out").mkdir()
    line = one_line(python("-m", "gradattn.cli", "grid", "--count", "-o",
                           tmp_path / "out", cwd=ROOT))
    assert str(tmp_path / "out") in line


def test_debug_env_keeps_the_traceback_of_a_gradattn_command(tmp_path):
    (tmp_path / "out").mkdir()
    proc = python("-m", "gradattn.cli", "grid", "--count", "-o", tmp_path / "out",
                  cwd=ROOT, env={DEBUG_ENV: "1"})
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_an_unexpected_error_in_a_gradattn_command_is_one_line(monkeypatch, capsys):
    from gradattn import cli
    from gradattn.studies import grid

    monkeypatch.setattr(grid, "load_cells", lambda: {}["missing"])
    assert cli.main(["grid", "--count"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unexpected KeyError")
    assert f"{DEBUG_ENV}=1" in err


def test_ctrl_c_in_a_gradattn_command_is_one_line_and_exit_130(monkeypatch, capsys):
    from gradattn import cli
    from gradattn.studies import grid

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(grid, "load_cells", interrupted)
    assert cli.main(["grid", "--count"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: interrupted")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_a_script_in_one_line_with_exit_130(tmp_path, sig):
    # A real signal to a real process, through the wrapper every entry point uses.
    script = tmp_path / "slow.py"
    script.write_text("import time\nfrom gradattn.core.stage import entry\n"
                      "def main():\n    print('ready', flush=True)\n    time.sleep(60)\n"
                      "entry(main)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(DEBUG_ENV, None)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: interrupted; nothing half-made was left")


# --- scripts/ and benchmarks/ ---------------------------------------------------------------
def dead_layers():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dead_layers", ROOT / "scripts/dead_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args, expected", [
    (["--summary", "missing.json"], "missing.json: no such file"),
    (["--plot", "missing.json"], "missing.json: no such file"),
    (["--batch-size", "0"], "--batch-size 0: must be 1 or more"),
    (["--epochs", "0"], "--epochs 0: must be 1 or more"),
    (["--n-train", "5"], "--n-train 5: the subsets take n // 10 images of each of the 10"),
    (["--n-val", "0"], "--n-val 0: the subsets take"),
    (["--n-train", "20", "--batch-size", "128"], "less than one batch"),
])
def test_dead_layers_script_refuses_bad_arguments(tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    dl = dead_layers()
    with pytest.raises(GradattnError, match=re.escape(expected)) as err:
        dl.check_args(dl.build_parser().parse_args(args))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("args, expected", [
    (["--n-train", "5"], "--n-train 5: the subsets take"),
    (["--summary", "cut.json"], "cut.json is damaged"),
    (["--cifar", "nowhere", "--n-train", "10", "--batch-size", "8"], "nowhere/train not found"),
])
def test_dead_layers_script_answers_in_one_line(tmp_path, args, expected):
    (tmp_path / "cut.json").write_text('{"args": {')
    line = one_line(python(ROOT / "scripts/dead_layers.py", *args, "--out", "x.json",
                           cwd=tmp_path))
    assert expected in line
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("script, args", [
    ("scripts/grad_history_figure.py", ["missing.json", "out.png"]),
    ("benchmarks/throughput.py", ["--dataset", "nothing-here", "--root", "nowhere"]),
])
def test_other_scripts_answer_in_one_line(tmp_path, script, args):
    assert one_line(python(ROOT / script, *args, cwd=tmp_path))


def test_every_script_and_benchmark_uses_the_stages_wrapper():
    """A new script must not fall back to tracebacks: its entry is gradattn.core.stage's."""
    scripts = [*ROOT.glob("scripts/*.py"), *ROOT.glob("benchmarks/*.py"),
               ROOT / "gradattn/models/__main__.py"]
    assert len(scripts) >= 7
    for path in scripts:
        text = path.read_text()
        assert "entry(main)" in text and "from gradattn.core.stage import entry" in text, path


# --- gradattn study run: Ctrl-C --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_in_a_study_stops_its_cells_in_one_line_and_leaves_no_temporary(
        tiny_project, tmp_path, sig):
    repo = tiny_project(tmp_path / "p", {"models": ["resnet18", "gradattn"],
                                         "grid": {"seeds": [42], "pe": ["learnable"]}})
    # Each cell pauses after configure, so the interrupt finds both mid-stage on any machine
    # (left to run, one cell can finish before a busy machine has started the other).
    dvc_yaml = repo / "dvc.yaml"
    configure = "cmd: python stages/configure.py"
    dvc_yaml.write_text(dvc_yaml.read_text().replace(configure, f"{configure} && sleep 300", 1))
    sh("git", "commit", "-qam", "a pause in every cell", cwd=repo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradattn.cli", "study", "run", "--dry"], cwd=repo,
        env={k: v for k, v in env_for(repo).items() if k != DEBUG_ENV},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    logs = repo / ".dvc/tmp/study/study-dry/logs"
    deadline = time.monotonic() + 240
    # Interrupt once both cells run inside DVC's temporary copies, in configure's pause.
    while time.monotonic() < deadline and proc.poll() is None:
        texts = [p.read_text() for p in logs.glob("*.log")] if logs.is_dir() else []
        # (a cell that lost the race for DVC's repository lock is retried in a .try2 log)
        if sum("configure: " in t for t in texts) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    exps = repo / ".dvc/tmp/exps"
    assert list(exps.glob("standalone/tmp*")) and processes_in(repo)  # DVC's copies, at work
    # Ctrl-C at a terminal signals the foreground process group; `kill` the process.
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted; stopped 2 running cell(s)")
    assert "run the same command again" in last
    assert not processes_in(repo)  # every cell's dvc and stage process has ended
    assert not list(exps.glob("standalone/tmp*"))  # no temporary copy of the repository left
    assert not temporaries(repo) and not (repo / "results").exists()
    assert dvc("exp", "list", "--name-only", cwd=repo).stdout.split() == []


def test_an_interrupted_schedule_stops_its_children_as_ctrl_c_would(tmp_path):
    """Each cell gets one SIGINT to its own process group (what a terminal's Ctrl-C sends), so
    it cleans up as DVC does; the study waits for it and says what was stopped."""
    from gradattn.studies.study import Job, schedule

    def job(name: str) -> Job:
        # Cleans up on SIGINT (as `dvc exp run` removes its temporary copy), then exits.
        return Job(name, ["sh", "-c", f"trap 'touch {tmp_path}/{name}.cleaned; exit 130' INT; "
                          f"echo $$ > {tmp_path}/{name}.pid; sleep 30 & wait"])

    def say(line: str) -> None:
        if "started b" in line:
            deadline = time.monotonic() + 10
            while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            raise KeyboardInterrupt  # Ctrl-C while both run

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt, match=r"^interrupted; stopped 2 running cell\(s\)"):
        schedule([job("a"), job("b"), job("c")], [{}, {}], tmp_path / "logs", say=say,
                 poll_seconds=0.05)
    assert time.monotonic() - started < 20  # not the 30 s the cells would sleep
    assert {p.name for p in tmp_path.glob("*.cleaned")} == {"a.cleaned", "b.cleaned"}
    for pid in (int((tmp_path / f"{n}.pid").read_text()) for n in "ab"):
        assert not Path(f"/proc/{pid}").exists()
    assert not (tmp_path / "c.pid").exists()  # never started
