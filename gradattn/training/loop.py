"""The paper's training protocol: Adam, plateau schedule and early stopping on validation
accuracy, best weights restored; a checkpoint every epoch so a killed run resumes exactly
(on the fast GPU path of gradattn.training.fast, at most every FAST_CHECKPOINT_INTERVAL_S).

Two settings switch to the authors' notebooks (the `notebooks` recipe): `train.weights: last`
ends with the last epoch's weights (their best-weights copy is shallow and restores nothing)
and `train.plateau: notebooks` cuts the learning rate with their own callback
(`NotebooksPlateau`) instead of torch's ReduceLROnPlateau. `fit` expects a resolved
TrainConfig (no `auto`; TrainConfig.resolve)."""

from __future__ import annotations

import contextlib
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
from gradattn.training.fast import (
    TensorLR,
    Trainer,
    current_lr,
    make_optimizer,
    resolve_plan,
    settle_loaded_optimizer,
)

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


class NotebooksPlateau:
    """The notebooks' ReduceLROnPlateau callback (CIFAR-10 cell 4, the same in every model
    cell), on a maximised metric: a strictly better value resets the wait (no threshold);
    otherwise wait += 1 and, once wait >= patience, lr = max(lr * factor, min_lr) and wait = 0
    (only when that changed the lr). torch's cuts after *more than* patience bad epochs and
    ignores relative gains below 1e-4.

    Sets the lr in place when it is a tensor (the fast path's graph reads that tensor)."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, factor: float, patience: int,
                 min_lr: float):
        self.optimizer = optimizer
        self.factor, self.patience, self.min_lr = factor, patience, min_lr
        self.best: float | None = None
        self.wait = 0

    def step(self, value: float) -> None:
        if self.best is None or value > self.best:
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        for group in self.optimizer.param_groups:
            old = float(group["lr"])
            new = max(old * self.factor, self.min_lr)
            if new != old:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(new)
                else:
                    group["lr"] = new
                self.wait = 0

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = state["best"], state["wait"]


def make_plateau(optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """train.plateau's scheduler: torch's ReduceLROnPlateau or the notebooks' rule."""
    if cfg.plateau == "notebooks":
        return NotebooksPlateau(optimizer, factor=cfg.plateau_factor,
                                patience=cfg.plateau_patience, min_lr=cfg.min_lr)
    if cfg.plateau == "torch":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience,
            min_lr=cfg.min_lr)
    raise ValueError(f"train.plateau must be resolved to torch or notebooks, got {cfg.plateau!r}")


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
    (gradattn.training.fast.make_optimizer).

    `cfg.fast` and `cfg.precision` choose how the steps run (gradattn.training.fast): eager, or the
    whole step as one CUDA graph; the protocol, the history rows and the checkpoints are
    the same either way.
    """
    device = train.device
    plan = resolve_plan(cfg, device)
    if on_step is not None and plan.fast:
        raise GradattnError(f"fit: on_step needs the eager path, but this run takes the fast "
                            f"path ({plan.describe()}): set train.fast off")
    model.to(device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg, plan, decay_norm=decay_norm)
    lr_tensor = TensorLR(optimizer, [cfg.lr] * len(optimizer.param_groups)) if plan.fast else None
    if cfg.weights not in ("best", "last"):
        raise ValueError(f"train.weights must be resolved to best or last, got {cfg.weights!r}")
    scheduler = make_plateau(optimizer, cfg)
    stopper = EarlyStopping(cfg.early_stopping_patience)
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict] = []
    start_epoch = 1

    state = _load_checkpoint(checkpoint, device, log) if checkpoint is not None else None
    if state is not None:
        if state["run_id"] == run_id:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            settle_loaded_optimizer(optimizer, plan, lr_tensor)
            scheduler.load_state_dict(state["scheduler"])
            stopper.load_state_dict(state["early_stopping"])
            best_state, history = state["best_model"], state["history"]
            start_epoch = state["epoch"] + 1
            log(f"resuming from epoch {start_epoch}: epochs 1-{state['epoch']} restored "
                f"from {checkpoint}")
        else:
            log(f"ignoring {checkpoint}: it belongs to a different configuration")
    resumed_from = start_epoch - 1
    if on_epoch is not None and history:
        on_epoch(history)

    trainer = Trainer(model, optimizer, plan, before_step=on_step)
    extras: dict = {"plan": plan.describe()}
    if plan.fast and not stopper.should_stop and start_epoch <= cfg.max_epochs:
        t0 = time.perf_counter()
        trainer.prepare(train, val)
        extras["plan"] = trainer.describe()
        extras["setup_seconds"] = round(time.perf_counter() - t0, 3)
        log(f"{trainer.describe()} (set up in {extras['setup_seconds']:.1f}s)")

    started = time.perf_counter()
    last_saved = started
    epochs = tqdm(range(start_epoch, cfg.max_epochs + 1), desc="epochs", unit="epoch",
                  initial=start_epoch - 1, total=cfg.max_epochs, disable=None if progress else True)
    if stopper.should_stop:
        epochs = []
    for epoch in epochs:
        t0 = time.perf_counter()
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        model.train()
        loss_sum, correct, _seen = trainer.train_epoch(
            tqdm(train.epoch(epoch_seed(cfg.seed, epoch)), total=len(train),
                 desc=f"epoch {epoch}", unit="batch", leave=False,
                 disable=None if progress else True))
        grad_norms = grad_probe(model) if grad_probe else None

        val_loss, val_acc = trainer.validate(val)
        lr = current_lr(optimizer, lr_tensor)
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
        history.append(row)
        if stopper.update(val_acc, epoch):
            best_state = copy.deepcopy(model.state_dict())
        with _floats(lr_tensor):  # the schedule computes on the float, as eager does
            scheduler.step(val_acc)
        if on_epoch is not None:
            on_epoch(history)
        log(_epoch_line(row, cfg, stopper, epoch_seconds=[r["seconds"] for r in history]))
        last = stopper.should_stop or epoch == cfg.max_epochs
        # Eager: every epoch. Fast: epochs take a second or two and a checkpoint a good part
        # of that, so at most every FAST_CHECKPOINT_INTERVAL_S (and after the last epoch); a
        # killed run redoes at most that much, exactly as before (epochs are seeded).
        due = (not plan.fast or last
               or time.perf_counter() - last_saved >= FAST_CHECKPOINT_INTERVAL_S)
        if checkpoint is not None and due:
            with _floats(lr_tensor):  # the float lr, so a resumed run continues exactly
                optimizer_state = optimizer.state_dict()
            _save_checkpoint(checkpoint, {
                "run_id": run_id, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                "early_stopping": stopper.state_dict(), "best_model": best_state,
                "history": history,
            })
            last_saved = time.perf_counter()
        if stopper.should_stop:
            log(f"early stopping after epoch {epoch}: no better val accuracy for "
                f"{stopper.patience} epochs")
            break

    if cfg.weights == "best":
        model.load_state_dict(best_state)
    if plan.channels_last:
        model.to(memory_format=torch.contiguous_format)
    return FitResult(history=history, best_epoch=stopper.best_epoch,
                     best_val_accuracy=stopper.best, resumed_from=resumed_from,
                     stopped_early=stopper.should_stop,
                     seconds=time.perf_counter() - started, extras=extras)


def _floats(lr: TensorLR | None):
    """The param groups holding the schedule's float learning rates (fast path), or as they are."""
    return lr.as_floats() if lr is not None else contextlib.nullcontext()


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
