"""The published dead-layer ablations (results/cifar10-dead-layers/ablations/) say what ran:
each JSON is a run the jobs file names, with that line's options in its command; its script
and package commit are ones git history holds, so anyone can check out what produced it; and
the folder's README calls a run interim exactly when its JSON has no test result yet."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache

import pytest
from conftest import ROOT

FOLDER = ROOT / "results" / "cifar10-dead-layers" / "ablations"
JOBS = ROOT / "scripts" / "studies" / "dead-layers-ablations.jobs"
PUBLISHED = sorted(FOLDER.glob("*.json"))


def jobs() -> dict[str, list[str]]:
    lines = [ln.split() for ln in JOBS.read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    return {ln[0]: ln[1:] for ln in lines}


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


@cache
def script_versions() -> dict[str, str]:
    """sha256 of every committed version of scripts/dead_layers.py -> its commit."""
    versions = {}
    for commit in git("log", "--format=%H", "--", "scripts/dead_layers.py").stdout.split():
        blob = subprocess.run(["git", "show", f"{commit}:scripts/dead_layers.py"], cwd=ROOT,
                              capture_output=True, check=True).stdout
        versions.setdefault(hashlib.sha256(blob).hexdigest(), commit)
    return versions


def test_there_are_published_ablations():
    assert len(PUBLISHED) >= 3, "issue 31 publishes at least three ablation runs"


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.stem)
def test_each_run_is_a_jobs_line_and_its_command_holds_that_lines_options(path):
    run, lines = json.loads(path.read_text()), jobs()
    assert path.stem in lines, f"{path.name} is not a run of {JOBS.name}"
    command = shlex.split(run["command"])
    expected = lines["common"] + lines[path.stem]
    for i, token in enumerate(expected):
        if not token.startswith("--"):
            continue
        assert token in command, f"{path.name}: {token} missing from its command"
        value = expected[i + 1] if i + 1 < len(expected) else None
        if value is not None and not value.startswith("--"):  # an option's value, not a flag
            assert command[len(command) - 1 - command[::-1].index(token) + 1] == value, \
                (path.name, token)
    assert command[command.index("--out") + 1].endswith(path.name)


def has_history() -> bool:
    """A clone with its history: not an unpacked archive, not a shallow clone."""
    return (ROOT / ".git").exists() and git("rev-parse", "--is-shallow-repository").stdout.strip() \
        == "false"


@pytest.mark.skipif(not has_history(), reason="needs the git history (a full clone)")
@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.stem)
def test_each_part_of_each_run_names_code_that_git_history_holds(path):
    run, row = json.loads(path.read_text()), readme_rows()[path.name]
    parts = [*run.get("earlier_parts", []), run]
    for part in parts:
        script, commit = part["script"], part["environment"]["gradattn_commit"]
        assert script["modified"] is False, f"{path.name} ran an uncommitted script"
        assert script["sha256"] in script_versions(), \
            f"{path.name}: its script's sha256 is no committed version of scripts/dead_layers.py"
        base, modified = re.fullmatch(r"([0-9a-f]{40})(\+modified)?", commit).groups()
        assert git("cat-file", "-e", f"{base}^{{commit}}").returncode == 0, commit
        # A part that ran with uncommitted package changes is published only if it says so.
        assert not modified or f"{base[:7]}+modified" in row, \
            f"{path.name} ran on {base[:7]}+modified: its README row must say so and what changed"
        assert part["environment"]["threads"] == 1 and part["environment"]["device"] == "cpu"


def readme_rows() -> dict[str, str]:
    """The README table's row of each JSON it lists."""
    return {m[1]: m[0] for m in re.findall(r"^(\| `([^`]+\.json)` \|.*)$",
                                           (FOLDER / "README.md").read_text(), re.M)}


def test_the_readme_calls_a_run_interim_exactly_when_it_has_no_test_result():
    rows = readme_rows()
    assert set(rows) == {p.name for p in PUBLISHED}, "one README row per published JSON"
    for path in PUBLISHED:
        finished = "test_acc" in json.loads(path.read_text())
        assert ("interim" in rows[path.name].lower()) != finished, path.name


def test_the_readmes_overlay_commands_run_as_printed_and_draw_every_finished_run(tmp_path):
    readme = (FOLDER / "README.md").read_text()
    commands = re.findall(r"^python scripts/dead_layers_compare\.py .*$", readme, re.M)
    assert commands, "the README prints the command that drew ablations-overlay.png"
    drawn = set()
    for i, command in enumerate(commands):
        argv = shlex.split(command)
        png = argv[argv.index("--png") + 1]
        if png.startswith("results/"):
            assert (ROOT / png).is_file(), f"{png}: the README's figure is not published"
        argv[argv.index("--png") + 1] = str(tmp_path / f"{i}.png")  # leave what is there alone
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        drawn |= {ln.split(":")[0] for ln in proc.stdout.splitlines() if "input variance" in ln}
    finished = {p.stem for p in PUBLISHED if "test_acc" in json.loads(p.read_text())}
    assert finished <= drawn, f"finished runs missing from the overlay: {finished - drawn}"
