"""params.yaml survives `dvc exp run -S`: it is written the way DVC writes it, so an override
changes only its own lines; and a queued experiment starts from the workspace (uncommitted
params included), as docs/reproduce.md says.

The fast tests call the function `dvc exp run -S` applies overrides with
(dvc.repo.experiments.queue.base._update_params → dvc.utils.hydra.apply_overrides); the slow
one queues real experiments and reads what DVC stashed."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
import yaml
from conftest import committed
from dvc.utils.hydra import apply_overrides
from test_dvc_yaml import documented_overrides

from gradattn.core.settings import load_yaml, read_params


def line_keys(text: str) -> list[str]:
    """The dotted key each line of a block-style YAML file belongs to (a list item: its key)."""
    stack: list[str] = []
    out = []
    for line in text.splitlines():
        body = line.lstrip(" ")
        if body.startswith("#") or not body:
            out.append("#")
            continue
        if not body.startswith("- "):
            stack = stack[:(len(line) - len(body)) // 2] + [body.split(":", 1)[0]]
        out.append(".".join(stack))
    return out


def changed_keys(before: str, after: str) -> set[str]:
    """The keys of the lines a rewrite removed or added."""
    keys_before, keys_after = line_keys(before), line_keys(after)
    changed = set()
    matcher = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines(), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            changed |= set(keys_before[i1:i2]) | set(keys_after[j1:j2])
    return changed


def overridden(tmp_path: Path, *overrides: str, file: str = "params.yaml") -> str:
    """`file` as committed, after DVC applied the overrides meant for it: `-S FILE:key=value`
    goes to FILE (machine.yaml), a plain `-S key=value` to params.yaml."""
    copy = tmp_path / file
    copy.write_text(committed(file))
    prefix = "" if file == "params.yaml" else f"{file}:"
    mine = [o.removeprefix(prefix) for o in overrides
            if (o.startswith(prefix) if prefix else ":" not in o.split("=", 1)[0])]
    if mine:
        apply_overrides(copy, mine)
    return copy.read_text()


def diff_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.unified_diff(before.splitlines(), after.splitlines(),
                                                  lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_dvc_rewrites_params_yaml_byte_for_byte(tmp_path):
    assert overridden(tmp_path) == committed("params.yaml")


@pytest.mark.parametrize("overrides, diff", [
    (["model.pe=rope"], ["-  pe: learnable", "+  pe: rope"]),
    (["train.max_epochs=1", "gradients.batches=2"],
     ["-  max_epochs: 10", "+  max_epochs: 1", "-  batches: 20", "+  batches: 2"]),
    (["data.datasets=[cifar10,svhn]"], ["-  - fashionmnist-mini", "+  - cifar10", "+  - svhn"]),
    (["train.min_lr=1e-6"], ["-  min_lr: 1.0e-7", "+  min_lr: 1e-06"]),
])
def test_an_override_changes_only_its_own_lines(tmp_path, overrides, diff):
    assert diff_lines(committed("params.yaml"), overridden(tmp_path, *overrides)) == diff


def test_a_machine_setting_changes_only_its_line_in_machine_yaml(tmp_path):
    sets = ["machine.yaml:data.sources.fashionmnist=/usr/share/datasets/fashion-mnist",
            "machine.yaml:grid.seeds=[1,2]"]
    assert overridden(tmp_path, *sets) == committed("params.yaml")
    after = overridden(tmp_path, *sets, file="machine.yaml")
    assert diff_lines(committed("machine.yaml"), after) == [
        "-    fashionmnist:", "+    fashionmnist: /usr/share/datasets/fashion-mnist",
        "-  - 42", "-  - 43", "-  - 44", "+  - 1", "+  - 2"]
    (tmp_path / "params.yaml").write_text(committed("params.yaml"))
    merged = read_params(tmp_path / "params.yaml")  # machine.yaml beside it is read too
    assert merged["data"]["sources"]["fashionmnist"] == "/usr/share/datasets/fashion-mnist"
    assert merged["grid"]["seeds"] == [1, 2]


def test_every_documented_override_changes_only_its_keys(tmp_path):
    checked = 0
    for doc, sets in documented_overrides():
        if any("," in s.split("=", 1)[1] and "[" not in s for s in sets):
            continue  # a sweep: DVC applies each of its values the same way
        for file in ("params.yaml", "machine.yaml"):
            after = overridden(tmp_path, *sets, file=file)
            keys = {s.split("=", 1)[0].lstrip("+").removeprefix(f"{file}:") for s in sets}
            stray = {k for k in changed_keys(committed(file), after)
                     if not any(k == o or k.startswith(o + ".") for o in keys)}
            assert not stray, f"{doc}: -S {' -S '.join(sets)} also rewrote {file}'s {stray}"
        checked += 1
    assert checked >= 5


def test_the_line_keys_can_tell_a_stray_change():
    before = "a:\n  b: 1\n  c:\n  - x\nd: 2\n"
    assert changed_keys(before, before.replace("- x", "- y")) == {"a.c"}
    assert changed_keys(before, "a:\n  b: 1\n  c: [x]\nd: 2\n") == {"a.c"}
    assert changed_keys(before, before.replace("d: 2", "d: 3")) == {"d"}


def test_numbers_dvc_writes_are_numbers(tmp_path):
    after = overridden(tmp_path, "train.min_lr=1e-6", "gradients.low=1.0e-5")
    (tmp_path / "params.yaml").write_text(after)
    params = read_params(tmp_path / "params.yaml")
    assert params["train"]["min_lr"] == 1e-6 and params["gradients"]["low"] == 1e-5
    assert load_yaml("a: '1e-06'\nb: x1e5\nc: 7") == {"a": "1e-06", "b": "x1e5", "c": 7}
    # Everything the committed file says reads the same with both readers.
    assert load_yaml(committed("params.yaml")) == yaml.safe_load(committed("params.yaml"))


@pytest.mark.slow
def test_a_queued_experiment_starts_from_the_workspace(dvc_repo):
    """What docs/reproduce.md says: `dvc exp run --queue` snapshots the workspace (uncommitted
    params.yaml edits included) plus its -S, and leaves the workspace as it was; stashing the
    edits first queues from the commit."""
    repo = dvc_repo.path
    shipped = committed("params.yaml")
    (repo / "params.yaml").write_text(shipped)
    dvc_repo.commit("params.yaml as DVC writes it")

    def queued_params() -> str:
        return dvc_repo.run("git", "show", "refs/exps/celery/stash:params.yaml").stdout

    dvc_repo.dvc("exp", "run", "--queue", "-S", "model.pe=rope")
    assert (repo / "params.yaml").read_text() == shipped  # the workspace is untouched
    assert queued_params() == shipped.replace("pe: learnable", "pe: rope")

    edited = shipped.replace("seed: 42", "seed: 7")  # an uncommitted edit ...
    (repo / "params.yaml").write_text(edited)
    dvc_repo.dvc("exp", "run", "--queue", "-S", "model.pe=none")
    assert queued_params() == edited.replace("pe: learnable", "pe: none")  # ... is queued too
    assert (repo / "params.yaml").read_text() == edited

    dvc_repo.run("git", "stash")  # queue from the commit: set the edits aside first
    dvc_repo.dvc("exp", "run", "--queue", "-S", "model.pe=none")
    dvc_repo.run("git", "stash", "pop")
    assert queued_params() == shipped.replace("pe: learnable", "pe: none")
    assert (repo / "params.yaml").read_text() == edited
