"""The study as a list of cells, each one DVC experiment: `gradattn grid`.

A cell is one (dataset, model, encoding, seed) under the project's recipe, run as
`dvc exp run -n <name> -S ...` with a stable name, so any scheduler that can hand out an
index (a SLURM array, a Kubernetes Indexed Job, a SkyPilot job, a loop) runs the study, and
git plus a DVC remote gather it (`dvc exp push` / `dvc exp pull`; docs/scale.md).
ResNet-18 and the other non-GradAttn models are one cell per (dataset, seed): no cell waits
on or repeats another's training.

What to run comes from params.yaml (data.datasets, models, `recipe`) and machine.yaml's `grid`
section (seeds, and GradAttn's encodings). `grid` is no stage's param: it names which
experiments to run, not how one runs.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gradattn.core.errors import GradattnError
from gradattn.core.settings import MACHINE_FILE, GridConfig, read_mapping, read_params, with_machine

TRUE = {"1", "true", "yes", "y", "on"}


@dataclass(frozen=True)
class Cell:
    dataset: str
    model: str
    pe: str | None  # GradAttn's encoding; None for models without one
    seed: int
    recipe: str

    @property
    def name(self) -> str:
        """The experiment's name: stable, readable, and a valid git ref."""
        parts = [self.dataset, self.model, *([self.pe] if self.pe else []), f"s{self.seed}"]
        if self.recipe != "corrected":
            parts.append(self.recipe)
        return "-".join(parts)

    @property
    def overrides(self) -> list[str]:
        """`-S` values: everything a cell differs in, spelled out, whatever the workspace holds."""
        sets = [f"recipe={self.recipe}", f"data.datasets=[{self.dataset}]",
                f"models=[{self.model}]", f"train.seed={self.seed}"]
        if self.pe:
            sets.append(f"model.pe={self.pe}")
        return sets


def cells(params: dict) -> list[Cell]:
    """Every cell of the study, in a fixed order: dataset, model, encoding, seed."""
    grid = GridConfig.parse(params)
    return [Cell(dataset, model, pe, seed, grid.recipe)
            for dataset in grid.datasets
            for model in grid.models
            for pe in (grid.pe if model == "gradattn" else [None])
            for seed in grid.seeds]


def load_cells(params_file: Path = Path("params.yaml")) -> list[Cell]:
    """The cells of the committed study (HEAD's params.yaml and machine.yaml). Not the working
    tree's: each `dvc exp run -S` leaves its overrides there, and every worker and array task
    must agree on what index I means. Outside git (nothing committed yet), the working tree's."""
    machine_file = params_file.with_name(MACHINE_FILE)
    params_text, machine_text = _at_head(params_file), _at_head(machine_file)
    if params_text is None:
        return cells(read_params(params_file))
    params = read_mapping(Path(f"{params_file.name} at HEAD"), params_text)
    machine_at_head = Path(f"{MACHINE_FILE} at HEAD")
    machine = read_mapping(machine_at_head, machine_text or "")
    return cells(with_machine(params, machine, machine_at_head))


def _at_head(path: Path) -> str | None:
    proc = subprocess.run(["git", "show", f"HEAD:./{path.as_posix()}"],
                          capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def pick(all_cells: list[Cell], index: int) -> Cell:
    if not 0 <= index < len(all_cells):
        raise GradattnError(
            f"--index {index} is out of range: this grid has {len(all_cells)} cells, "
            f"0-{len(all_cells) - 1} (see `gradattn grid --list`; size an array job with "
            "`gradattn grid --count`)")
    return all_cells[index]


def listing(all_cells: list[Cell]) -> str:
    """Index, name and -S words of each cell, tab-separated, the words quoted for a shell:
    `cut -f2-` of it is a jobs file for scripts/cpu_lanes.sh (docs/running.md)."""
    return "".join(f"{i}\t{c.name}\t{' '.join('-S ' + shlex.quote(s) for s in c.overrides)}\n"
                   for i, c in enumerate(all_cells))


# --- running a cell ---------------------------------------------------------------------------
def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """This interpreter's DVC, so a job runs the DVC installed beside gradattn."""
    return subprocess.run([sys.executable, "-m", "dvc", *args], check=check)


def _output(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def auto_push() -> bool:
    """Whether DVC itself pushes each finished experiment (DVC_EXP_AUTO_PUSH or exp.auto_push)."""
    env = os.environ.get("DVC_EXP_AUTO_PUSH")
    if env is not None:
        return env.strip().lower() in TRUE
    return _output(sys.executable, "-m", "dvc", "config", "exp.auto_push").lower() in TRUE


def git_remote() -> str:
    """Where experiments go: DVC_EXP_GIT_REMOTE, else exp.git_remote, else origin (as DVC)."""
    return (os.environ.get("DVC_EXP_GIT_REMOTE")
            or _output(sys.executable, "-m", "dvc", "config", "exp.git_remote") or "origin")


def check_remotes() -> str:
    """The git remote experiments are pushed to; a one-line error naming the set-up that is
    missing. Checked before training, so a misconfigured job fails in seconds, not hours."""
    remote = git_remote()
    if not _output("git", "remote", "get-url", remote):
        raise GradattnError(
            f"no git remote {remote!r} to push experiments to: add one with `git remote add "
            f"{remote} <url>` (or set DVC_EXP_GIT_REMOTE), or run without --push / "
            "DVC_EXP_AUTO_PUSH")
    if not _output(sys.executable, "-m", "dvc", "remote", "default"):
        raise GradattnError(
            "no default DVC remote to push the experiment's data to: add one with "
            "`dvc remote add -d storage <url>` (a folder, s3://, gs://, ssh://...), "
            "or run without --push / DVC_EXP_AUTO_PUSH")
    return remote


@functools.cache
def _experiment_names() -> frozenset[str]:
    # Once per command: queueing the whole grid asks DVC once, not once per cell.
    names = _output(sys.executable, "-m", "dvc", "exp", "list", "--all-commits", "--name-only")
    return frozenset(names.split())


def done_here(name: str) -> bool:
    """Whether this repository already holds an experiment called `name` (on any commit)."""
    return name in _experiment_names()


def run_cell(cell: Cell, targets: list[str] = (), *, queue: bool = False, push: bool = False,
             pull: bool = False, force: bool = False) -> int:
    """Run (or queue) one cell as a DVC experiment; DVC's exit status."""
    if push and queue:
        raise GradattnError("--push cannot push a queued experiment (it has not run yet): "
                            "set `dvc config exp.auto_push true` and DVC pushes each one as it "
                            "finishes")
    remote = check_remotes() if push or auto_push() else None
    if not force and done_here(cell.name):
        print(f"grid: {cell.name} is already an experiment here: skipped (--force runs it "
              "again)", file=sys.stderr)
        status = 0  # pushed again below: an earlier try may have trained but failed to push
    else:
        args = ["exp", "run", *targets, "-n", cell.name,
                *[a for s in cell.overrides for a in ("-S", s)]]
        args += ["--queue"] * queue + ["--pull"] * pull + ["--force"] * force
        print(f"grid: dvc {' '.join(args)}", file=sys.stderr, flush=True)
        status = _dvc(*args, check=False).returncode
    if status == 0 and push:
        status = _dvc("exp", "push", remote, cell.name, check=False).returncode
    return status
