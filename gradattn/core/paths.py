"""Where each stage reads and writes, relative to the project root (as in dvc.yaml)."""

from __future__ import annotations

import os
from pathlib import Path

CONFIGS = Path("configs")
RAW = Path("data/raw")
MANIFESTS = Path("data/manifests")
PREPARED = Path("data/prepared")
MODELS_DIR = Path("models")
METRICS = Path("metrics")
PREDICTIONS = Path("predictions")
RESUME = Path("checkpoints")
PLOTS = Path("plots")
# The stages that write a run record (gradattn.core.records).
RUN_STAGES = ("train", "evaluate", "gradients")


def source_config(dataset: str) -> Path:
    return CONFIGS / dataset / "source.json"


def source_manifest(dataset: str) -> Path:
    """The list of a local source's files (size, md5): what `download@<dataset>` depends on,
    so DVC sees a change in files outside the project (stages/manifest.py)."""
    return MANIFESTS / f"{dataset}.json"


def prepare_config(dataset: str) -> Path:
    return CONFIGS / dataset / "prepare.json"


def model_config(model: str) -> Path:
    """The options `model` takes, resolved from params.yaml's model section (see dvc.yaml)."""
    return CONFIGS / "models" / f"{model}.json"


def model_file(dataset: str, model: str) -> Path:
    return MODELS_DIR / dataset / f"{model}.pt"


def parent_root() -> Path:
    """The repository the user works in. A queued or `--temp` experiment runs in a temporary
    copy that DVC deletes afterwards; DVC points DVC_ROOT at the parent repository there (and
    at the project itself under `dvc repro`), so files kept here outlive the copy."""
    return Path(os.environ.get("DVC_ROOT") or ".")


def user_path(given: str | os.PathLike) -> Path:
    """A path the user gave (machine.yaml's data.sources.<name>, data.custom.<name>.path), as
    a stage opens it. Relative paths are relative to the project the user works in. A queued
    or `--temp` experiment runs in a copy under .dvc/tmp/exps/, where a path that leaves the
    project (`../data/x.npz`) would point into DVC's tmp folder, and a git-ignored file inside
    the project is missing: both are found in the parent repository (DVC_ROOT) instead, so
    the experiment reads the same files as `dvc repro` would, as they are now."""
    path = Path(given).expanduser()
    if path.is_absolute():
        return path
    leaves = os.path.normpath(path).split(os.sep)[0] == ".."
    if leaves or (not path.exists() and (parent_root() / path).exists()):
        return parent_root() / path
    return path


def resume_file(dataset: str, model: str, run_id: str) -> Path:
    """A run's checkpoint, keyed by its identity (`gradattn.training.run_config.run_id`) and
    kept in the parent repository: a killed queued or array-task run finds it when started
    again, and concurrent runs of other cells never share one."""
    return parent_root() / RESUME / dataset / f"{model}.{run_id}.resume.pt"


def lock_dir() -> Path:
    """Where processes of one repository coordinate (the GPU locks): DVC's own tmp folder."""
    return parent_root() / ".dvc" / "tmp" / "gradattn-locks"


def history_file(dataset: str, model: str) -> Path:
    return METRICS / dataset / f"{model}.history.json"


def metrics_file(dataset: str, model: str) -> Path:
    return METRICS / dataset / f"{model}.json"


def grad_history_file(dataset: str, model: str) -> Path:
    """Per-epoch parameter-gradient norms written by the train stage (rows epoch/layer/norm)."""
    return METRICS / dataset / f"{model}.grad_history.json"


def gradients_file(dataset: str, model: str) -> Path:
    return METRICS / dataset / f"{model}.gradients.json"


def predictions_file(dataset: str, model: str) -> Path:
    return PREDICTIONS / dataset / f"{model}.npz"


def run_record_file(dataset: str, model: str, stage: str) -> Path:
    """metrics/<dataset>/<model>.<stage>.run.json: what `stage` (train, evaluate, gradients)
    ran with."""
    if stage not in RUN_STAGES:
        raise ValueError(f"stage must be one of {', '.join(RUN_STAGES)}, got {stage!r}")
    return METRICS / dataset / f"{model}.{stage}.run.json"
