"""gradattn compare --rev: params, metric deltas and changed plots against a git revision, in
a temporary git+DVC repo whose files are written by hand (compare only reads revisions)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gradattn.cli import main

DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    params:
      - train.lr
    metrics:
      - metrics.json:
          cache: false
      - metrics/summary.json:
          cache: false
    plots:
      - history.json:
          cache: false
          x: epoch
          y: val_accuracy
      - timing.json:
          cache: false
          x: epoch
          y: val_accuracy
plots:
  - figure.png
"""


def _write(repo: Path, lr: float, top1: float, val: float, seconds: float, png: bytes) -> None:
    (repo / "params.yaml").write_text(f"train:\n  lr: {lr}\n  seed: 42\n")
    (repo / "metrics.json").write_text(json.dumps({"top1": top1, "loss": 1.25}))
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/summary.json").write_text(json.dumps(
        {"d-1/resnet18": {"top1": top1, "ece": 0.125, "epochs": 3}}))
    (repo / "history.json").write_text(json.dumps([{"epoch": 1, "val_accuracy": val}]))
    # Only its wall-clock column changes: not a changed plot.
    (repo / "timing.json").write_text(
        json.dumps([{"epoch": 1, "val_accuracy": 0.3, "seconds": seconds}]))
    (repo / "figure.png").write_bytes(png)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                   check=True, capture_output=True)


@pytest.fixture(scope="module")
def _template(tmp_path_factory) -> Path:
    """The repository below, made once a module: `dvc init` is seconds of start-up."""
    repo = tmp_path_factory.mktemp("compare") / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    _write(repo, lr=0.001, top1=0.5, val=0.4, seconds=10.0, png=b"\x89PNG base")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    _git(repo, "branch", "base")
    # The change under review: a param, one metric, one plot's data and one image.
    _write(repo, lr=0.01, top1=0.55, val=0.45, seconds=12.5, png=b"\x89PNG new")
    return repo


@pytest.fixture
def repo(_template: Path, tmp_path: Path) -> Path:
    """A git + DVC repository: branch `base`, then a change under review left uncommitted."""
    return Path(shutil.copytree(_template, tmp_path / "repo", symlinks=True))


def test_a_committed_change_is_not_called_uncommitted(repo, tmp_path):
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "the change")
    out = tmp_path / "report.md"
    assert main(["compare", "--rev", "base", "--repo", str(repo), "--out", str(out)]) == 0
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, text=True,
                          capture_output=True).stdout.strip()
    assert f"The workspace (HEAD {head}) against `base`." in out.read_text()


def test_compare_reports_params_metric_deltas_and_changed_plots(repo, tmp_path, capsys):
    images = tmp_path / "images"
    out = tmp_path / "report.md"
    assert main(["compare", "--rev", "base", "--repo", str(repo), "--images", str(images),
                 "--out", str(out)]) == 0
    report = out.read_text()

    assert report.startswith("# Changes against `base`")
    assert "plus uncommitted changes) against `base`" in report  # the change is not committed
    assert "Warning" not in report  # a param and the metrics changed together
    lines = [line.replace(" ", "") for line in report.splitlines()]
    # The headline: top-1 (%) and ECE per dataset × model, base → workspace, Δ.
    assert "|d-1|resnet18|50.00→55.00|+5.00|0.125→0.125|+0.0000|" in lines
    assert "|params.yaml|train.lr|0.001|0.01|" in "".join(lines)
    assert "|metrics.json|top1|0.5|0.55|+0.0500|" in lines  # base, workspace, delta
    # Each metric once: summary's top-1 is in the headline only; unchanged ones not at all.
    assert sum("|top1|" in line for line in lines) == 1
    assert not any("|loss|" in line or "|d-1/resnet18.epochs|" in line for line in lines)
    assert "- `history.json`: changed" in report
    assert "- `figure.png`: changed" in report
    assert "timing.json" not in report
    shown = sorted(p.name for p in images.iterdir())
    assert shown == ["base.figure.png", "history.json.png", "workspace.figure.png"]
    assert (images / "workspace.figure.png").read_bytes() == b"\x89PNG new"
    assert "![workspace](images/workspace.figure.png)" in report  # relative to the report
    # The changed data plot is drawn (both revisions), not copied.
    drawn = images / "history.json.png"
    assert drawn.read_bytes()[:4] == b"\x89PNG" and "](images/history.json.png)" in report
    assert capsys.readouterr().out == ""  # with --out, nothing on stdout


def image_links(report: Path) -> list[Path]:
    """Every image a markdown report links, resolved as a viewer does: from its folder."""
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())
    return [report.parent / link for link in links]


@pytest.mark.parametrize("html", [False, True])
def test_a_report_keeps_its_images_beside_it(repo, tmp_path, monkeypatch, html):
    """--out without --images: the figures go to <report>_images/ next to the report and the
    links, relative to it, resolve once the command has ended (and after moving both)."""
    monkeypatch.chdir(repo)  # the report elsewhere than the working directory
    out = tmp_path / "reports" / "r.md"
    out.parent.mkdir()
    extra = ["--html", str(tmp_path / "r.html")] if html else []
    assert main(["compare", "--rev", "base", "--out", str(out), *extra]) == 0
    links = image_links(out)
    assert len(links) == 3 and not any(Path(p).is_absolute() for p in re.findall(
        r"!\[[^\]]*\]\(([^)]+)\)", out.read_text()))
    assert {p.parent.name for p in links} == {"r_images"}
    assert all(p.is_file() and p.read_bytes()[:4] == b"\x89PNG" for p in links)
    moved = tmp_path / "moved"
    out.parent.rename(moved)
    assert all(p.is_file() for p in image_links(moved / "r.md"))
    if html:
        assert (tmp_path / "r.html").read_text().count('src="data:image/png;base64,') == 3


def test_compare_warns_when_metrics_change_without_params(repo, capsys):
    (repo / "params.yaml").write_text("train:\n  lr: 0.001\n  seed: 42\n")  # as in base
    assert main(["compare", "--rev", "base", "--repo", str(repo)]) == 0
    report = capsys.readouterr().out
    assert "**Warning: metrics changed but no param did**" in report
    assert "No params changed." in report
    _git(repo, "checkout", "-q", "base", "--", "metrics.json", "metrics", "params.yaml")
    (repo / "params.yaml").write_text("train:\n  lr: 0.5\n  seed: 42\n")
    assert main(["compare", "--rev", "base", "--repo", str(repo)]) == 0
    assert "**Warning: params changed but no metric did**" in capsys.readouterr().out


def test_compare_with_nothing_changed(repo, capsys):
    """(Without --out the report goes to stdout.)"""
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "change")
    assert main(["compare", "--rev", "HEAD", "--repo", str(repo)]) == 0
    report = capsys.readouterr().out
    assert "No params changed." in report
    assert "No metric changed." in report
    assert "No plot changed." in report


def test_compare_unknown_revision_is_one_line_error(repo, capsys):
    assert main(["compare", "--rev", "no-such-branch", "--repo", str(repo)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: `dvc params diff no-such-branch --all --json` failed")


def test_offline_pages_of_the_report_and_of_the_plots(repo, tmp_path):
    """Both pages embed every figure (data URIs) and reference nothing outside the file."""
    report = tmp_path / "report.html"
    assert main(["compare", "--rev", "base", "--repo", str(repo), "--html", str(report),
                 "--out", str(tmp_path / "report.md")]) == 0
    text = report.read_text()
    assert "<table>" in text and "<h2>Headline</h2>" in text
    # The drawn history plot and both figure.png versions, embedded.
    assert text.count('src="data:image/png;base64,') == 3
    assert not re.search(r"(src|href)=\"(https?:)?//", text)

    page = tmp_path / "plots.html"
    assert main(["plots", "base", "--repo", str(repo), "-o", str(page)]) == 0
    text = page.read_text()
    # history.json, timing.json (one drawn figure each) and figure.png (base | workspace).
    assert text.count("<h3>") == 3 and text.count('src="data:image/png;base64,') == 4
    assert '<div class="row" style="--n: 2; max-width: 1400px">' in text
    assert "<figcaption>base</figcaption>" in text and "<figcaption>workspace</figcaption>" in text
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
