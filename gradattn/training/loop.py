"""The paper's training protocol: Adam, plateau schedule and early stopping on validation
accuracy, best weights restored; a checkpoint every epoch so a killed run resumes exactly
(on the fast GPU path of gradattn.training.steps, at most every FAST_CHECKPOINT_INTERVAL_S).

Two settings switch to the authors' notebooks (the `notebooks` recipe): `train.weights: last`
ends with the last epoch's weights (their best-weights copy is shallow and restores nothing)
and `train.plateau: notebooks` cuts the learning rate with their own callback
(gradattn.training.optim.NotebooksPlateau) instead of torch's ReduceLROnPlateau. `fit`
expects a resolved TrainConfig (no `auto`; TrainConfig.resolve)."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from gradattn.core import torchfile
from gradattn.core.durations import human_duration
from gradattn.core.errors import GradattnError
from gradattn.core.settings import TrainConfig
from gradattn.prepared.batches import Batches
from gradattn.training.optim import Optimisation
from gradattn.training.steps import Plan, StepEngine, resolve_plan

# On the fast path a checkpoint is written at most this often (and after the last epoch).
FAST_CHECKPOINT_INTERVAL_S = 30.0


def make_deterministic(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


def epoch_seed(seed: int, epoch: int) -> int:
    """Shuffling, augmentation and dropout of an epoch depend only on (seed, epoch), so a
    resumed run replays exactly what an uninterrupted one would have."""
    return seed * 100_003 + epoch


class EarlyStopping:
    """Stops after `patience` epochs without a strictly better validation accuracy."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best = float("-inf")
        self.best_epoch = 0
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch; True when it is the best so far."""
        if value > self.best:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = (
            state["best"], state["best_epoch"], state["bad_epochs"])


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_val_accuracy: float
    resumed_from: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)


def fit(model: nn.Module, train: Batches, val: Batches, cfg: TrainConfig, *,
        checkpoint: Path | None = None, run_id: str = "",
        grad_probe: Callable[[nn.Module], dict] | None = None,
        on_epoch: Callable[[list[dict]], None] | None = None,
        on_step: Callable[[], None] | None = None, decay_norm: bool = True,
        log: Callable[[str], None] = tqdm.write, progress: bool = True) -> FitResult:
    """Train `model` in place and leave it holding the best epoch's weights (`cfg.weights`
    best) or the last epoch's (last); best_epoch is recorded either way.

    `on_epoch(history)` is called with the rows so far after every epoch (and once after a
    resume), so a caller can publish the curves while training runs.

    `on_step()` is called in every training step after the backward pass and before the
    optimiser's step: the parameters' `.grad` hold that batch's gradient, the weights are
    those it was computed at (instruments such as scripts/dead_layers.py read them there).
    It needs the eager path (`cfg.fast` off on a GPU): a fast step runs whole, as one graph.
    `decay_norm=False` keeps batch norm's γ/β and the biases out of the weight decay
    (gradattn.training.optim.make_optimizer).

    `cfg.fast` and `cfg.precision` choose how the steps run (gradattn.training.steps): eager,
    or the whole step as one CUDA graph; the protocol, the history rows and the checkpoints
    are the same either way.
    """
    if cfg.weights not in ("best", "last"):
        raise ValueError(f"train.weights must be resolved to best or last, got {cfg.weights!r}")
    plan = resolve_plan(cfg, train.device)
    if on_step is not None and plan.fast:
        raise GradattnError(f"fit: on_step needs the eager path, but this run takes the fast "
                            f"path ({plan.describe()}): set train.fast off")
    model.to(train.device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    run = _Run(model, Optimisation(model, cfg, plan, decay_norm=decay_norm),
               EarlyStopping(cfg.early_stopping_patience), copy.deepcopy(model.state_dict()))
    if checkpoint is not None:
        _resume(run, checkpoint, run_id, train.device, log)
    resumed_from = run.next_epoch - 1
    if on_epoch is not None and run.history:
        on_epoch(run.history)

    engine, extras = _start_engine(run, plan, train, val, cfg, on_step, log)
    started = time.perf_counter()
    saver = _Checkpointer(checkpoint, run_id, fast=plan.fast, last_saved=started)
    epochs = tqdm(range(run.next_epoch, cfg.max_epochs + 1), desc="epochs", unit="epoch",
                  initial=run.next_epoch - 1, total=cfg.max_epochs,
                  disable=None if progress else True)
    if run.stopper.should_stop:
        epochs = []
    for epoch in epochs:
        row = _train_epoch(engine, run, train, val, cfg, epoch, grad_probe, progress)
        run.record(row)
        if on_epoch is not None:
            on_epoch(run.history)
        log(_epoch_line(row, cfg, run.stopper, epoch_seconds=[r["seconds"] for r in run.history]))
        saver.after_epoch(run, last=run.stopper.should_stop or epoch == cfg.max_epochs)
        if run.stopper.should_stop:
            log(f"early stopping after epoch {epoch}: no better val accuracy for "
                f"{run.stopper.patience} epochs")
            break

    if cfg.weights == "best":
        model.load_state_dict(run.best_state)
    if plan.channels_last:
        model.to(memory_format=torch.contiguous_format)
    return FitResult(history=run.history, best_epoch=run.stopper.best_epoch,
                     best_val_accuracy=run.stopper.best, resumed_from=resumed_from,
                     stopped_early=run.stopper.should_stop,
                     seconds=time.perf_counter() - started, extras=extras)


@dataclass
class _Run:
    """What a run carries from epoch to epoch, and what its checkpoint holds."""

    model: nn.Module
    optimisation: Optimisation
    stopper: EarlyStopping
    best_state: dict  # the best epoch's weights so far (the initial ones before any epoch)
    history: list[dict] = field(default_factory=list)
    next_epoch: int = 1

    def record(self, row: dict) -> None:
        """An epoch's row: kept, the best weights updated, the schedule stepped."""
        self.history.append(row)
        if self.stopper.update(row["val_accuracy"], row["epoch"]):
            self.best_state = copy.deepcopy(self.model.state_dict())
        self.optimisation.schedule(row["val_accuracy"])
        self.next_epoch = row["epoch"] + 1


def _resume(run: _Run, checkpoint: Path, run_id: str, device: torch.device,
            log: Callable[[str], None]) -> None:
    """Continue from `checkpoint` when it is this run's (same run_id); else start over."""
    state = _load_checkpoint(checkpoint, device, log)
    if state is None:
        return
    if state["run_id"] != run_id:
        log(f"ignoring {checkpoint}: it belongs to a different configuration")
        return
    run.model.load_state_dict(state["model"])
    run.optimisation.load(state["optimizer"], state["scheduler"])
    run.stopper.load_state_dict(state["early_stopping"])
    run.best_state, run.history = state["best_model"], state["history"]
    run.next_epoch = state["epoch"] + 1
    log(f"resuming from epoch {run.next_epoch}: epochs 1-{state['epoch']} restored "
        f"from {checkpoint}")


def _start_engine(run: _Run, plan: Plan, train: Batches, val: Batches, cfg: TrainConfig,
                  on_step: Callable[[], None] | None, log: Callable[[str], None]
                  ) -> tuple[StepEngine, dict]:
    """The step engine, set up (captured, on the fast path) for these batches when an epoch
    is left to train, and FitResult.extras: how the steps run, and the set-up's time."""
    engine = StepEngine(run.model, run.optimisation.optimizer, plan, before_step=on_step)
    extras: dict = {"plan": plan.describe()}
    if plan.fast and not run.stopper.should_stop and run.next_epoch <= cfg.max_epochs:
        t0 = time.perf_counter()
        engine.prepare(train, val)
        extras["plan"] = engine.describe()
        extras["setup_seconds"] = round(time.perf_counter() - t0, 3)
        log(f"{engine.describe()} (set up in {extras['setup_seconds']:.1f}s)")
    return engine, extras


def _train_epoch(engine: StepEngine, run: _Run, train: Batches, val: Batches, cfg: TrainConfig,
                 epoch: int, grad_probe: Callable[[nn.Module], dict] | None,
                 progress: bool) -> dict:
    """One epoch's training and validation, as its history row (seeded by (seed, epoch))."""
    t0 = time.perf_counter()
    torch.manual_seed(epoch_seed(cfg.seed, epoch))
    run.model.train()
    loss_sum, correct, _seen = engine.train_epoch(
        tqdm(train.epoch(epoch_seed(cfg.seed, epoch)), total=len(train),
             desc=f"epoch {epoch}", unit="batch", leave=False,
             disable=None if progress else True))
    grad_norms = grad_probe(run.model) if grad_probe else None

    val_loss, val_acc = engine.validate(val)
    lr = run.optimisation.lr
    train_loss = loss_sum / train.num_images
    if not math.isfinite(train_loss) or not math.isfinite(val_loss):
        # Diverged: every later number (and the weights kept) would be NaN; stop before
        # writing any of it.
        raise GradattnError(
            f"training diverged at epoch {epoch}: train loss {train_loss}, val loss "
            f"{val_loss} (lr {lr:g}); nothing of this epoch was kept: "
            "lower train.lr (or set train.precision: fp32) and rerun")
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_accuracy": correct / train.num_images,
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": lr,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if grad_norms is not None:
        row["grad_norms"] = grad_norms
    return row


class _Checkpointer:
    """Writes the run's checkpoint after an epoch when one is due. Eager: every epoch. Fast:
    epochs take a second or two and a checkpoint a good part of that, so at most every
    FAST_CHECKPOINT_INTERVAL_S (and after the last epoch); a killed run redoes at most that
    much, exactly as before (epochs are seeded)."""

    def __init__(self, path: Path | None, run_id: str, *, fast: bool, last_saved: float):
        self.path, self.run_id, self.fast, self.last_saved = path, run_id, fast, last_saved

    def after_epoch(self, run: _Run, *, last: bool) -> None:
        due = (not self.fast or last
               or time.perf_counter() - self.last_saved >= FAST_CHECKPOINT_INTERVAL_S)
        if self.path is None or not due:
            return
        _save_checkpoint(self.path, {
            "run_id": self.run_id, "epoch": run.history[-1]["epoch"],
            "model": run.model.state_dict(),
            "optimizer": run.optimisation.optimizer_state(),
            "scheduler": run.optimisation.scheduler.state_dict(),
            "early_stopping": run.stopper.state_dict(), "best_model": run.best_state,
            "history": run.history,
        })
        self.last_saved = time.perf_counter()


def _epoch_line(row: dict, cfg: TrainConfig, stopper: EarlyStopping, *,
                epoch_seconds: list[float]) -> str:
    """One line per epoch: the epoch's numbers, the best so far, the early-stopping patience
    used and an upper bound on the time left (the epochs left at the mean epoch time)."""
    left = 0 if stopper.should_stop else cfg.max_epochs - row["epoch"]
    eta = left * sum(epoch_seconds) / len(epoch_seconds)
    return (f"epoch {row['epoch']}/{cfg.max_epochs}: train loss {row['train_loss']:.4f} "
            f"acc {row['train_accuracy']:.4f} | val loss {row['val_loss']:.4f} "
            f"acc {row['val_accuracy']:.4f} | lr {row['lr']:.2e} | {row['seconds']:.1f}s | "
            f"best {stopper.best:.4f} (epoch {stopper.best_epoch}) | "
            f"patience {stopper.bad_epochs}/{stopper.patience} | "
            f"at most {human_duration(eta)} left")


CHECKPOINT_KEYS = {"run_id", "epoch", "model", "optimizer", "scheduler", "early_stopping",
                   "best_model", "history"}


def _load_checkpoint(path: Path, device: torch.device, log: Callable[[str], None]) -> dict | None:
    """The checkpoint's contents; None when there is none. A damaged (or unsafe) one is moved
    aside, not deleted, so the run starts over instead of failing on every rerun."""
    if not path.exists():
        return None
    remedy = "training starts from scratch"
    try:
        return torchfile.require_keys(
            path, torchfile.load(path, remedy=remedy, map_location=device), CHECKPOINT_KEYS,
            remedy)
    except torchfile.UnreadableFileError as err:
        aside = path.with_name(path.name + ".damaged")
        path.replace(aside)
        log(f"warning: {err.path} cannot be used: {err.problem}; moved it to {aside} and "
            f"{remedy}")
        return None


def _save_checkpoint(path: Path, state: dict) -> None:
    torchfile.save(path, state)
