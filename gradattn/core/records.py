"""A stage's run record: metrics/<dataset>/<model>.<stage>.run.json, what train, evaluate or
gradients ran with, every setting resolved (never `auto`), beside the recipe, and the
environment that ran it.

Runs are bit-for-bit reproducible only on the same machine with the same library versions
(the CPU's or GPU's kernels, the thread count and the precision change the last bits, and ten
epochs of training turn those into different numbers), so each record says where it ran;
`gradattn table` keeps runs of different environments apart (docs/reproduce.md).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from gradattn.core.io import write_json
from gradattn.core.paths import run_record_file

# The parts of an environment that can change a run's numbers: runs that differ in any of
# them are not pooled (gradattn.reporting.experiments). The commit, Python and the OS are
# recorded, not compared (code changes show in dvc.lock's dependencies).
RESULT_ENVIRONMENT = ("torch", "torchvision", "numpy", "cpu", "gpu", "threads", "device",
                      "precision", "fast")
UNKNOWN = "unknown"


def write_run_record(dataset: str, model: str, stage: str, recipe: str, settings: dict,
                     *, environment: dict | None = None, **extra) -> dict:
    """Write (and return) a stage's run record: {recipe, dataset, model, <stage>: settings,
    **extra, environment} (environment: run_environment() unless given)."""
    record = {"recipe": recipe, "dataset": dataset, "model": model, stage: settings, **extra,
              "environment": environment if environment is not None else run_environment()}
    write_json(run_record_file(dataset, model, stage), record)
    return record


def run_environment(*, device: str | None = None, precision: str = "fp32",
                    fast: str = "off") -> dict:
    """What ran this process: code, libraries, hardware, threads, precision and fast path.
    device: "cpu" or "cuda" (default: cuda if this process used it)."""
    torch = sys.modules.get("torch")  # the stages that record have imported it already
    cuda = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    device = device or ("cuda" if cuda else "cpu")
    gpu = None
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.cuda.current_device())
    return {
        "gradattn_commit": code_commit(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "os": platform.platform(terse=True),
        "cpu": cpu_model(),
        "gpu": gpu,
        "threads": torch.get_num_threads() if torch is not None else os.cpu_count(),
        "device": device.split(":")[0],
        "precision": precision,
        "fast": fast,
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")) and ":" in line:
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN


# The code a stage runs: the package and the stage scripts beside it (relative to the package).
CODE = (".", "../stages")


def code_commit() -> str:
    """The last git commit that changed the code that runs — the package and stages/ — with
    '+modified' when their files differ from it; 'unknown' outside a git checkout (e.g. an
    installed wheel). Not HEAD: a commit of docs or results must not change a run's record, or
    every later commit would make DVC see new outputs where the same code ran."""
    package = Path(__file__).resolve().parents[1]
    try:
        def git(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["git", *args], cwd=package, capture_output=True, text=True,
                                  timeout=10)

        code = [p for p in CODE if (package / p).is_dir()]
        last = git("log", "-1", "--format=%H", "--", *code)
        if last.returncode != 0 or not last.stdout.strip():
            return UNKNOWN
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *code).stdout.strip()
        return last.stdout.strip() + ("+modified" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
