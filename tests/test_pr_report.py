"""The pull-request report compares like with like: .github/workflows/pr-compare.yml's `run:`
steps, run in order on a clone whose PR commit changes only a .md file, report "no change"
for both models (the base reproduced on the same machine, not the committed metrics). And
scripts/pr_comment.sh updates its one comment in place, checks what the artifact says, and
falls back to the job summary when the token cannot comment (a fake `gh`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, deep_update, load_script

WORKFLOWS = ROOT / ".github/workflows"
# What the clone takes from the working tree (a developer's edits are what is tested); the
# study's state (params.yaml, dvc.lock, metrics, ...) stays as committed.
CODE = ("dvc.yaml", ".dvcignore", "stages", "gradattn", "scripts", ".github", "constraints.txt",
        "results/bloodcells-seeds")
# The smallest run of the bundled study (fashionmnist-mini) that still trains both models.
SMALL = {"train": {"max_epochs": 1}, "gradients": {"batches": 1},
         "model": {"dim": 16, "heads": 2, "ff_dim": 32, "depth": 1}}
MARKER = "<!-- gradattn-pr-report -->"
IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def _run(args, cwd: Path, env: dict | None = None, timeout: float = 3600,
         input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, input=input)
    if done.returncode:
        raise AssertionError(f"{args} failed ({done.returncode}):\n{done.stdout[-4000:]}\n"
                             f"{done.stderr[-4000:]}")
    return done


@pytest.fixture
def docs_only_pr(tmp_path):
    """A git clone of the project: a base commit (the committed study, cut to SMALL) and a
    pull-request commit on top that edits README.md only. (clone, base sha)."""
    clone = tmp_path / "clone"
    env = {**os.environ, **IDENTITY}
    _run(["git", "clone", "-q", str(ROOT), str(clone)], cwd=tmp_path, env=env)
    for name in CODE:
        src, dst = ROOT / name, clone / name
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dst)
    params = clone / "params.yaml"
    params.write_text(yaml.safe_dump(deep_update(yaml.safe_load(params.read_text()), SMALL),
                                     sort_keys=False))
    _run(["git", "add", "-A"], cwd=clone, env=env)
    _run(["git", "commit", "-qm", "base", "--allow-empty"], cwd=clone, env=env)
    base = _run(["git", "rev-parse", "HEAD"], cwd=clone).stdout.strip()
    with (clone / "README.md").open("a") as f:
        f.write("\nA sentence of documentation.\n")
    _run(["git", "commit", "-qam", "docs: one sentence"], cwd=clone, env=env)
    return clone, base


def _expand(text: str, context: dict) -> str:
    def one(match):
        assert match[1] in context, f"the test does not know ${{{{ {match[1]} }}}}"
        return context[match[1]]
    return re.sub(r"\$\{\{\s*(.+?)\s*\}\}", one, str(text))


@pytest.mark.slow
def test_a_docs_only_pull_request_reports_no_change_for_both_models(docs_only_pr, tmp_path):
    clone, base = docs_only_pr
    context = {"github.event.pull_request.base.sha": base,
               "github.event.pull_request.number": "7"}
    summary = tmp_path / "step-summary.md"
    runner = {**os.environ,
              "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
              "PYTHONPATH": str(clone), "RUNNER_TEMP": str(tmp_path / "runner"),
              "GITHUB_STEP_SUMMARY": str(summary)}
    for key in ("PR_BASE_DIR", "CI", "GITHUB_RUN_ID"):
        runner.pop(key, None)
    (tmp_path / "runner").mkdir()
    job = yaml.safe_load((WORKFLOWS / "pr-compare.yml").read_text())["jobs"]["compare"]
    ran, uploaded = [], None
    for step in job["steps"]:
        if "uses" in step:
            # checkout: the clone; setup-python: this interpreter; cache restore: a cold cache
            # (the base is trained here); upload: its path is checked below.
            if step["uses"].startswith("actions/upload-artifact"):
                uploaded = clone / step["with"]["path"]
            continue
        if step["name"].startswith("Install"):
            continue  # no network here; test_constraints_are_the_installed_versions instead
        env = {**runner, **{k: _expand(v, context) for k, v in
                            {**job.get("env", {}), **step.get("env", {})}.items()}}
        _run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
             cwd=clone, env=env)
        ran.append(step["name"])
    assert len(ran) == 3, ran  # the base, the pull request, the report

    report = (uploaded / "report.md").read_text()
    assert report.startswith(MARKER)
    verdicts = next(block for block in report.split("\n\n") if "| Verdict |" in block)
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:3])
            for line in verdicts.splitlines() if line.startswith("| fashionmnist-mini |")}
    assert rows == {("fashionmnist-mini", "resnet18", "**no change**"),
                    ("fashionmnist-mini", "gradattn", "**no change**")}, report
    # The base was reproduced here (1 epoch), not read from the committed 10-epoch metrics.
    reproduced = json.loads(_run(["git", "show", "pr-report-base:metrics/summary.json"],
                                 cwd=clone).stdout)
    assert {run["epochs"] for run in reproduced.values()} == {1}
    # The noise it would label is the project's measured seed std, from another dataset.
    assert "results/bloodcells-seeds/tables.csv" in report
    assert "measured on another dataset" in report and "`fashionmnist-mini`" in report
    assert (uploaded / "pr-number").read_text().strip() == "7"
    for page in ("report.html", "plots.html"):
        assert (uploaded / "pages" / page).stat().st_size > 1000
    assert "**no change**" in summary.read_text()
    assert not list(uploaded.rglob("*.png"))  # nothing the comment would have to upload


def test_constraints_are_the_installed_versions():
    """The runner installs with constraints.txt: its pins are the versions of this
    environment (the one the committed results came from), and torch is among them."""
    from importlib.metadata import version

    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split("\n")
                if line and not line.startswith("#"))
    assert {"torch", "torchvision", "dvc"} <= set(pins)
    assert {name: version(name) for name in pins} == pins
    installs = {path.name: step["run"] for path in WORKFLOWS.glob("*.yml")
                for job in yaml.safe_load(path.read_text())["jobs"].values()
                for step in job["steps"] if " -e ." in step.get("run", "")}
    assert {"pr-compare.yml", "pr-base-cache.yml"} <= set(installs)
    assert all("pip install -c constraints.txt -e ." in run for run in installs.values())


# ---------------------------------------------------------------- scripts/pr_comment.sh

FAKE_GH = r"""#!/usr/bin/env bash
# A fake gh: logs each call; answers from $GH_STATE.
echo "$*" >> "$GH_STATE/calls"
case "$*" in
  "api repos/o/r/pulls/7 --jq .head.sha") echo "${GH_HEAD:-abc}" ;;
  "api --paginate repos/o/r/issues/7/comments"*) cat "$GH_STATE/comments" ;;
  "api --method PATCH"*|"api --method POST"*)
    [[ -z ${GH_READ_ONLY:-} ]] || { echo "HTTP 403: Resource not accessible" >&2; exit 1; } ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"""


def _post(tmp_path, comments: str = "", **env) -> tuple[str, list[str], str]:
    state, bin_ = tmp_path / "gh-state", tmp_path / "bin"
    state.mkdir(exist_ok=True)
    bin_.mkdir(exist_ok=True)
    (bin_ / "gh").write_text(FAKE_GH)
    (bin_ / "gh").chmod(0o755)
    (state / "comments").write_text(comments)
    (state / "calls").unlink(missing_ok=True)
    report = tmp_path / "pr-report"
    report.mkdir(exist_ok=True)
    if not (report / "report.md").exists():
        (report / "report.md").write_text(f"{MARKER}\n# the report\n")
        (report / "pr-number").write_text("7\n")
    summary = tmp_path / "summary.md"
    summary.write_text("")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/pr_comment.sh"), str(report)], cwd=tmp_path,
        capture_output=True, text=True,
        env={**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}",
             "GH_STATE": str(state), "REPO": "o/r", "HEAD_SHA": "abc",
             "GITHUB_STEP_SUMMARY": str(summary), **env})
    calls = (state / "calls").read_text().splitlines() if (state / "calls").exists() else []
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, calls, summary.read_text()


def test_the_comment_is_posted_once_then_updated_in_place(tmp_path):
    _, calls, summary = _post(tmp_path)
    assert calls[-1].startswith("api --method POST repos/o/r/issues/7/comments -F body=@")
    assert not summary
    _, calls, _ = _post(tmp_path, comments="123\n")  # the marker's comment, found
    assert calls[-1].startswith("api --method PATCH repos/o/r/issues/comments/123 -F body=@")
    assert not any("POST" in c for c in calls)


def test_a_token_that_cannot_comment_writes_the_job_summary(tmp_path):
    out, calls, summary = _post(tmp_path, GH_READ_ONLY="1")
    assert summary.startswith(MARKER) and "::warning::" in out


def test_a_report_for_another_head_or_a_bad_number_is_not_posted(tmp_path):
    _, calls, _ = _post(tmp_path, GH_HEAD="def")  # the PR moved on: its newer run posts
    assert not any("comments" in c for c in calls)
    (tmp_path / "pr-report" / "pr-number").write_text("7; rm -rf /\n")
    done = subprocess.run(["bash", str(ROOT / "scripts/pr_comment.sh"),
                           str(tmp_path / "pr-report")], capture_output=True, text=True,
                          env={**os.environ, "REPO": "o/r", "HEAD_SHA": "abc"})
    assert done.returncode == 1 and "not a pull-request number" in done.stdout


# ---------------------------------------------------------------- the verdict


def _pr_report():
    return load_script("pr_report")


def test_differences_within_the_measured_seed_noise_are_labelled_as_such():
    pr = _pr_report()
    noise = pr.read_noise(ROOT / pr.NOISE)  # the blood-cell seed study's own numbers
    assert noise["datasets"] == ["pbc"]
    std = noise["std"]
    assert 0 < std[("resnet18", "top1")] < 0.01 and 0 < std[("gradattn", "top1")] < 0.01
    run = {"top1": 0.75, "ece": 0.05, "f1_macro": 0.74, "ghs": 1.0, "epochs": 10}
    base = {"d/resnet18": run, "d/gradattn": run, "d/gone": run}
    head = {"d/resnet18": {**run, "top1": 0.75 + 1.5 * std[("resnet18", "top1")]},
            "d/gradattn": {**run, "top1": 0.75 - 3 * std[("gradattn", "top1")]},
            "d/new": run}
    verdicts = {line.split(" | ")[1]: line.split(" | ")[2]
                for line in pr.verdict_table(base, head, noise)[2:]}
    assert verdicts == {"resnet18": "**within seed noise**", "gradattn": "**changed**",
                        "gone": "**removed**", "new": "**added**"}
    # A metric without a measured noise (epochs) that moved is a change.
    assert pr.verdict(run, {**run, "epochs": 9}, "resnet18", noise) == "changed"
    assert pr.verdict(run, dict(run), "resnet18", noise) == "no change"
    note = pr.noise_note(noise, {"d"})
    assert "`pbc`" in note and "measured on another dataset" in note and "`d`" in note
    assert "another dataset" not in pr.noise_note(noise, {"pbc"})
    assert "any difference counts as a change" in pr.noise_note({}, {"d"})
