"""`gradattn study run`: the cells of `gradattn grid` on one machine's GPUs, packed, then published.

Every cell is one DVC experiment, as the grid defines it (`dvc exp run --temp -n <name> -S
...`: each in its own temporary copy of the repository, so several run at once). A GPU takes
`--per-gpu` cells at a time (each worker process sees only its GPU: CUDA_VISIBLE_DEVICES),
optionally under CUDA MPS (`--mps`: one MPS daemon for the study, so the processes share the
GPU's SMs instead of time-slicing it). A line of progress follows every start and end (cells
done / running / failed, time left at the mean cell time so far); a cell that fails is run
once more at the end of the queue, and one that fails twice is reported with its log. At the
end `gradattn table --publish results/<study>` writes the study's tables, with the commands
that made them and the commit, from exactly the study's experiments.

`--dry` runs the same path on the CPU in minutes: every cell's dataset replaced by a small cut
of the bundled Fashion-MNIST (200 train / 50 val / 100 test images, named `<dataset>-dry`),
one epoch, one gradient batch; published into results/<study>-dry.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gradattn.core.durations import human_duration
from gradattn.core.errors import GradattnError
from gradattn.core.io import atomic_path

# Cells per GPU by default. Measured on an H200 (shared/measurements/h200-2026-12-04): eight
# separate processes together reached about what one reaches alone, so packing more buys
# little without MPS; two hide one cell's CPU-bound stages (6-13 s of imports per stage,
# preprocessing, figures) behind the other's training. benchmarks/packing.py measures it.
PER_GPU = 2
STAGGER_S = 2.0  # between two cells' starts: each `dvc exp run` locks the repo while it sets up
DRY_SIZES = (("train", 200), ("val", 50), ("test", 100))
DRY_SETTINGS = ["train.max_epochs=1", "train.device=cpu", "gradients.batches=1"]


@dataclass
class Job:
    name: str
    argv: list[str]
    tries: int = 0
    started: float = 0.0
    log: Path | None = None


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    failed: dict[str, Path] = field(default_factory=dict)  # name -> its last log
    retried: list[str] = field(default_factory=list)


def schedule(jobs: list[Job], slots: list[dict[str, str]], log_dir: Path, *,
             say: Callable[[str], None], poll_seconds: float = 0.5,
             stagger_seconds: float = 0.0,
             clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Run `jobs`, at most one per slot at a time (a slot's environment goes to its job); a
    failed job is queued once more at the end. Starts are `stagger_seconds` apart (DVC
    takes the repository's lock while it sets an experiment up). Returns what was done and
    what failed."""
    pending = deque(jobs)
    running: dict[int, tuple[Job, subprocess.Popen]] = {}
    outcome = Outcome()
    total = len(jobs)
    times: list[float] = []

    def progress(event: str) -> None:
        left = total - len(outcome.done) - len(outcome.failed)
        eta = ""
        if times:
            waves = (left + len(slots) - 1) // len(slots)
            eta = f", about {human_duration(waves * sum(times) / len(times))} left"
        say(f"study: {event} [{len(outcome.done)}/{total} done, {len(running)} running, "
            f"{len(outcome.failed)} failed{eta}]")

    log_dir.mkdir(parents=True, exist_ok=True)
    last_start = float("-inf")
    try:
        while pending or running:
            for slot, env in enumerate(slots):
                if slot in running or not pending or clock() - last_start < stagger_seconds:
                    continue
                last_start = clock()
                job = pending.popleft()
                job.tries += 1
                job.log = log_dir / f"{job.name}{'' if job.tries == 1 else f'.try{job.tries}'}.log"
                job.started = clock()
                with open(job.log, "w") as log:
                    proc = start(job.argv, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, **env})
                running[slot] = (job, proc)
                where = f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if env.get(
                    "CUDA_VISIBLE_DEVICES") else ""
                progress(f"started {job.name}{where}")
            time.sleep(poll_seconds)
            for slot, (job, proc) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[slot]
                seconds = clock() - job.started
                if proc.returncode == 0:
                    times.append(seconds)
                    outcome.done.append(job.name)
                    progress(f"finished {job.name} in {human_duration(seconds)}")
                elif job.tries < 2:
                    outcome.retried.append(job.name)
                    pending.append(job)
                    progress(f"{job.name} failed (exit {proc.returncode}, log {job.log}); "
                             "it runs once more at the end")
                else:
                    outcome.failed[job.name] = job.log
                    progress(f"{job.name} failed again (exit {proc.returncode}, log {job.log})")
    except KeyboardInterrupt:
        stop([proc for _, proc in running.values()])
        raise KeyboardInterrupt(
            f"interrupted; stopped {len(running)} running cell(s), which were not saved; the "
            f"{len(outcome.done)} finished are kept as experiments (`dvc exp show`): run the "
            "same command again to run the rest") from None
    return outcome


# Seconds a stopped cell gets to exit on its own (DVC removes its temporary copy of the
# repository) before it is killed.
STOP_GRACE_S = 60.0


def start(argv: list[str], **kwargs) -> subprocess.Popen:
    """A child in its own process group: a Ctrl-C at the terminal reaches the study only, which
    stops its children itself (`stop`), whichever signal it got (SIGINT or SIGTERM).

    The child starts with SIGINT at its default even when the study inherited it ignored (a
    study launched with `cmd &` or `nohup` from a script): `stop` relies on that SIGINT."""
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=_default_sigint, **kwargs)


def _default_sigint() -> None:
    # Runs in the child between fork and exec; the study starts no threads, so this is safe.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(procs: list[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """Stop children as a Ctrl-C would: one SIGINT to each one's process group (`dvc exp run`
    and the stage it runs), so each removes its temporaries; what still runs after `grace`
    seconds is killed. Further Ctrl-Cs (and SIGTERMs) are ignored meanwhile: they would cut
    that cleanup short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    # `dvc exp run --temp` works in its copy of the repository (.dvc/tmp/exps/standalone/
    # tmp…), which it does not always remove when interrupted: note each, removed below.
    copies = [_exp_copy(proc.pid) for proc in procs if proc.poll() is None]
    try:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for copy in filter(None, copies):
            shutil.rmtree(copy, ignore_errors=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exp_copy(pid: int) -> Path | None:
    """The temporary copy of the repository that `dvc exp run --temp` (process `pid`) works
    in: its working directory, when that is inside a .dvc/tmp/exps folder (Linux /proc)."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    return cwd if ".dvc/tmp/exps/" in cwd.as_posix() else None


def run_child(argv: list[str]) -> int:
    """`subprocess.run(argv).returncode`, with the child stopped (not killed) on Ctrl-C."""
    proc = start(argv)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop([proc])
        raise


# --- the study's cells as jobs ----------------------------------------------------------------
def _dry_data(folder: Path) -> Path:
    """A small cut of the bundled Fashion-MNIST, as a custom npz dataset."""
    import numpy as np

    from gradattn.sources.bundled import BUNDLED

    path = folder / "dry.npz"
    if not path.exists():
        bundled = np.load(BUNDLED)
        # Whole or not at all: a study stopped here must not leave a cut file that a rerun uses.
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **{f"{s}_{k}": bundled[f"{s}_{k}"][:n]
                             for s, n in DRY_SIZES for k in ("images", "labels")})
    return path


def cell_jobs(cells, *, dry: bool, data_dir: Path) -> list[Job]:
    """`dvc exp run --temp -n <name> -S ...` for every cell (under --dry, on a small cut of
    the bundled set, one epoch)."""
    jobs = []
    for cell in cells:
        sets, name = list(cell.overrides), cell.name
        if dry:
            dataset = f"{cell.dataset}-dry"
            npz = _dry_data(data_dir).resolve()  # the cell runs in a copy elsewhere
            sets = [s for s in sets if not s.startswith("data.datasets=")]
            sets += [f"data.datasets=[{dataset}]",
                     f"++data.custom.{dataset}={{format: npz, path: {npz}}}", *DRY_SETTINGS]
            name = f"{cell.name}-dry"
        argv = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", name,
                *[a for s in sets for a in ("-S", s)]]
        jobs.append(Job(name, argv))
    return jobs


def gpu_count() -> int:
    """GPUs this machine shows (nvidia-smi, without importing torch); 0 without one."""
    if not shutil.which("nvidia-smi"):
        return 0
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in proc.stdout.splitlines())


def machine_gpus(asked: int | None, *, mps: bool) -> int:
    """The GPUs the cells get: --gpus checked against those this machine shows (a cell on
    GPU index 3 of a machine with one would fail, or silently train on the CPU)."""
    there = gpu_count()
    if asked is not None and asked > there:
        use = "--gpus 0 (the CPU)" if there == 0 else f"--gpus 1..{there}"
        raise GradattnError(f"--gpus {asked}: this machine shows {there} GPU(s) "
                            f"(`nvidia-smi -L`): pass {use} or leave --gpus out")
    gpus = there if asked is None else asked
    if mps and not gpus:
        raise GradattnError("--mps shares a CUDA GPU among the cells, and this study runs on "
                            "the CPU (no GPU here, or --gpus 0, or --dry): leave --mps out")
    return gpus


class Mps:
    """One CUDA MPS control daemon for the study, in its own pipe and log folders."""

    def __init__(self, folder: Path):
        if not shutil.which("nvidia-cuda-mps-control"):
            raise GradattnError("--mps: nvidia-cuda-mps-control is not on PATH: install the "
                                "CUDA toolkit's MPS tools or run without --mps")
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"),
                    "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
        for path in self.env.values():
            Path(path).mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> dict[str, str]:
        subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True,
                       env={**os.environ, **self.env})
        return self.env

    def __exit__(self, *exc) -> None:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True,
                       env={**os.environ, **self.env})


def run_study(args: argparse.Namespace) -> str:
    from gradattn.reporting.publish import check_name, check_target
    from gradattn.studies import grid

    check_name("--name", args.name)  # one folder under results/, never results/ itself
    name = f"{args.name}-dry" if args.dry else args.name
    results = Path("results") / name
    # Refused now, not after hours of training: a folder --force may not replace.
    check_target(results, Path("."), force=True, option="")
    if results.exists() and any(results.iterdir()) and not args.force:
        raise GradattnError(f"{results} exists: pass --force to replace it once the study "
                            "has run (nothing was run)")
    if args.per_gpu < 1 or (args.gpus is not None and args.gpus < 0):
        raise GradattnError("--gpus must be >= 0 and --per-gpu >= 1")
    gpus = machine_gpus(0 if args.dry else args.gpus, mps=args.mps)  # --dry: on the CPU
    if not Path(".dvc").is_dir():
        raise GradattnError("gradattn study run works in a DVC project's root (no .dvc/ here): "
                            "cd to the project, or `dvc init` one")
    if subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"],
                      capture_output=True).returncode != 0:
        raise GradattnError("no commit to run the study from: each cell is an experiment on "
                            "HEAD, so commit params.yaml and the pipeline first")
    cells = grid.load_cells()
    work = Path(".dvc/tmp/study") / name  # DVC's tmp folder: out of git
    jobs = cell_jobs(cells, dry=args.dry, data_dir=work)
    skipped = [j for j in jobs if not args.force and grid.done_here(j.name)]
    if skipped:
        print(f"study: {len(skipped)} cells are already experiments here, not run again "
              "(--force runs them)", file=sys.stderr)
    todo = [j for j in jobs if j not in skipped]
    if args.force:
        for job in todo:
            job.argv.append("--force")

    if gpus:
        slots = [{"CUDA_VISIBLE_DEVICES": str(g)} for g in range(gpus)
                 for _ in range(args.per_gpu)]
    else:  # the CPU (or --dry): no GPU visible to any cell
        slots = [{"CUDA_VISIBLE_DEVICES": ""} for _ in range(args.per_gpu)]
    where = (f"{gpus} GPU(s) x {args.per_gpu}" + (" under MPS" if args.mps else "")
             if gpus else f"the CPU, {args.per_gpu} at a time")
    print(f"study {name}: {len(todo)} cells on {where}; logs in {work}", file=sys.stderr)
    started = time.monotonic()
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.mps and gpus:
        with Mps(work / "mps") as mps_env:
            outcome = schedule(todo, [{**s, **mps_env} for s in slots], work / "logs",
                               say=say, stagger_seconds=STAGGER_S)
    else:
        outcome = schedule(todo, slots, work / "logs", say=say, stagger_seconds=STAGGER_S)
    print(f"study {name}: {len(outcome.done)} done, {len(outcome.failed)} failed, "
          f"{len(skipped)} already here, in {human_duration(time.monotonic() - started)}"
          + (f"; retried once: {', '.join(outcome.retried)}" if outcome.retried else ""),
          file=sys.stderr)

    finished = [j.name for j in jobs if j.name not in outcome.failed]
    if finished:
        commands = "\n".join([
            shlex.join(["gradattn", *sys.argv[1:]]),
            "# which ran, per cell:",
            *[shlex.join(["dvc", *j.argv[3:]]) for j in jobs if j.name in finished]]) + "\n"
        commands_file = work / "commands.txt"
        commands_file.write_text(commands)
        table = [sys.executable, "-m", "gradattn.cli", "table", "--publish",
                 str(results), "--commands", str(commands_file), "--no-workspace", "--no-exps",
                 *[a for n in finished for a in ("--rev", n)], "--force"]
        if run_child(table) != 0:
            raise GradattnError(f"publishing {results} failed (above); the experiments are "
                                "kept: `dvc exp show`")
    if outcome.failed:
        logs = ", ".join(f"{n} ({log})" for n, log in outcome.failed.items())
        rest = f"; the others are published in {results}" if finished else ""
        raise GradattnError(f"{len(outcome.failed)} of {len(jobs)} cells failed twice: "
                            f"{logs}{rest}")
    return ""


def add_parser(sub) -> None:
    """`gradattn study run`, added to the `gradattn` command's subcommands."""
    s = sub.add_parser(
        "study", help="run the grid's cells on this machine's GPUs, packed, then publish",
        description=__doc__.split("\n\n")[1])
    what = s.add_subparsers(dest="study_command", required=True)
    r = what.add_parser("run", help="run every cell of `gradattn grid`, then publish the tables",
                        description=__doc__)
    r.add_argument("--gpus", type=int, metavar="N",
                   help="GPUs to use, 0..N-1 (default: every GPU nvidia-smi lists)")
    r.add_argument("--per-gpu", type=int, default=PER_GPU, metavar="K",
                   help=f"cells trained at once on each GPU (default {PER_GPU}; on the CPU: "
                   "cells at once)")
    r.add_argument("--mps", action="store_true",
                   help="run the cells under one CUDA MPS daemon (nvidia-cuda-mps-control)")
    r.add_argument("--dry", action="store_true",
                   help="the same path on the CPU: small cuts of the bundled set, one epoch; "
                   "publishes results/<name>-dry")
    r.add_argument("--name", default="study",
                   help="the study's name: results/<name> (default: study); letters, digits "
                   "and . _ + -, starting with a letter or digit")
    r.add_argument("--force", action="store_true",
                   help="run cells that are already experiments here again and replace "
                   "results/<name>")
    r.add_argument("-o", "--out", type=Path, help=argparse.SUPPRESS)
    r.set_defaults(run=run_study)
