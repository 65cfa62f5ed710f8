"""Where a run ran: every run record holds its environment, `gradattn table` keeps runs of
different environments apart (never pooled, never a "conflict"), and a setting's header names
only what tells it apart, readably. Also Table 5's caption names the split the gradients used."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import ROOT
from test_table import params, record_run, runs

from gradattn.core import paths
from gradattn.core.records import RESULT_ENVIRONMENT, run_environment, write_run_record
from gradattn.reporting import table
from gradattn.reporting.experiments import Run, runs_of_revision, workspace_reader


def env(**changes) -> dict:
    base = {"gradattn_commit": "abc", "python": "3.12.0", "torch": "2.9.0",
            "torchvision": "0.24.0", "numpy": "2.3.0", "os": "Linux", "cpu": "Intel Xeon",
            "gpu": None, "threads": 2, "device": "cpu", "precision": "fp32", "fast": "off"}
    return base | changes


def test_a_run_record_holds_its_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import torch  # the recording stages have it imported

    write_run_record("d1", "resnet18", "train", "corrected", {"seed": 42},
                     environment=run_environment(device="cpu", precision="fp32", fast="off"))
    got = json.loads(paths.run_record_file("d1", "resnet18", "train").read_text())["environment"]
    code = subprocess.run(["git", "log", "-1", "--format=%H", "--", "gradattn", "stages"],
                          cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert got["gradattn_commit"].split("+")[0] == code
    assert got["torch"] == torch.__version__.split("+")[0] or got["torch"] == torch.__version__
    assert got["threads"] == torch.get_num_threads() and got["cpu"] and got["gpu"] is None
    assert got["python"] == ".".join(map(str, sys.version_info[:3]))
    assert (got["device"], got["precision"], got["fast"]) == ("cpu", "fp32", "off")
    assert set(RESULT_ENVIRONMENT) <= set(got) and got["numpy"] and got["torchvision"]


def test_the_commit_is_unknown_outside_a_git_checkout(tmp_path):
    (tmp_path / "gradattn" / "core").mkdir(parents=True)
    for name in ("__init__.py", "core/__init__.py", "core/records.py", "core/io.py",
                 "core/paths.py", "core/errors.py"):
        (tmp_path / "gradattn" / name).write_text((ROOT / "gradattn" / name).read_text())
    out = subprocess.run([sys.executable, "-c", "from gradattn.core.records import code_commit;"
                          "print(code_commit())"], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin",
                              "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)})
    assert out.stdout.strip() == "unknown", out.stderr


def test_the_commit_is_the_last_that_changed_the_code(tmp_path):
    """A commit of docs only leaves the recorded commit as it was (so a fresh clone's run
    records, and dvc.lock, do not change with it); one that changes stages/ moves it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True,
                              check=True).stdout.strip()

    shutil.copytree(ROOT / "gradattn", tmp_path / "gradattn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "train.py").write_text("# a stage\n")
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "code")
    code = git("rev-parse", "HEAD")

    def recorded() -> str:
        return subprocess.run([sys.executable, "-c", "from gradattn.core.records import "
                               "code_commit; print(code_commit())"], cwd=tmp_path,
                              capture_output=True, text=True,
                              env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
                              ).stdout.strip()

    (tmp_path / "README.md").write_text("docs\n")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", "-A")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "docs")
    assert recorded() == code
    (tmp_path / "stages" / "train.py").write_text("# changed\n")
    assert recorded() == code + "+modified"
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "stage")
    assert recorded() == git("rev-parse", "HEAD") != code


def test_runs_of_two_environments_are_kept_apart(tmp_path):
    """The same settings and seed on two machines: two runs, in two settings, not a conflict
    and not a mean; runs of one environment still pool over seeds."""
    rs = []
    for name, seed, top1, where in (("exp a", 42, 0.75, env()), ("exp b", 43, 0.77, env()),
                                    ("commit abc", 42, 0.7533,
                                     env(cpu="AMD EPYC", threads=16))):
        record_run(tmp_path / name, "resnet18", seed, top1, environment=where)
        rs += runs_of_revision(name, workspace_reader(tmp_path / name))
    study = table.Study(rs)
    assert len(study.settings) == 2 and len(study.runs) == 3
    md = table.markdown(study, [1])
    assert "# Setting 1: environment.cpu=Intel Xeon, environment.threads=2" in md
    assert "# Setting 2: environment.cpu=AMD EPYC, environment.threads=16" in md
    assert "| d1 | 76.00 ± 1.41 (n=2) |" in md and "| d1 | 75.33 |" in md
    # A run whose record predates environments is told apart too, and says so.
    old = tmp_path / "old"
    record_run(old, "resnet18", 42, 0.70)
    md = table.markdown(table.Study(rs + runs_of_revision("commit old", workspace_reader(old))),
                        [1])
    assert "environment=not recorded" in md


def test_a_long_setting_label_is_a_list_without_unset_keys():
    def run(source, setting):
        return Run(source, "d1", "resnet18", {"stem": "imagenet"}, setting, 42, {"top1": 0.5})

    notebooks = {"recipe": "notebooks", "data.protocol": {
        "mean": [0.2860], "std": [0.3530], "split": "pooled", "augment": "pad_notebook",
        "normalise": "notebook", "legacy_defect": True}, "train.max_epochs": 100}
    corrected = {"recipe": "corrected", "data.protocol": {
        "mean": None, "std": None, "split": "official", "augment": "flip",
        "normalise": "split", "legacy_defect": False}, "train.max_epochs": 100}
    md = table.markdown(table.Study([run("a", notebooks), run("b", corrected)]), [1])
    headings = [line for line in md.splitlines() if line.startswith("# Setting")]
    assert headings == ["# Setting 1", "# Setting 2"]
    assert all(len(line) <= table.HEADING_WIDTH for line in md.splitlines()
               if not line.startswith(("|", "Cells:", "Recipe:", "Share")))
    second = md.split("# Setting 2")[1]
    assert "- data.protocol.split=official" in second and "- recipe=corrected" in second
    assert "None" not in second and "train.max_epochs" not in md  # unset, and equal in both
    # A short one stays on its heading.
    short = table.markdown(table.Study([run("a", {"train.max_epochs": 1}),
                                        run("b", {"train.max_epochs": 5})]), [1])
    assert "# Setting 2: train.max_epochs=5" in short


def test_table5_caption_names_the_split_the_gradients_used():
    grads = {"ghs": 1.0, "vanishing": 0, "exploding": 0, "layers": 21, "norm_mean": 0.1,
             "norm_min": 0.01, "norm_max": 1.0, "norm_std": 0.2, "ghs_norm": "output",
             "bounds": [1e-6, 10], "batches": 20}
    metrics = {"d1/resnet18": {"top1": 0.5}}
    test = {"d1/resnet18": grads | {"split": "test"}}
    old_style = {"d1/resnet18": grads | {"data": "test split, first 20 batches of 128 in order"}}
    train = {"d1/resnet18": grads | {"split": "train"}}
    for g, words in ((test, "20 test-split batches"), (old_style, "20 test-split batches"),
                     (train, "20 training batches")):
        md = table.markdown(table.Study(runs("w", params(), metrics, g)), [5])
        assert words in md, md
