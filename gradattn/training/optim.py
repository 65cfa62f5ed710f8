"""The optimiser and its learning rate, for both paths (eager and fast): one place.

- `make_optimizer`: the paper's Adam (or AdamW), optionally with the normalisation layers
  and biases out of the weight decay (`decay_groups`).
- `make_plateau`: train.plateau's schedule, torch's ReduceLROnPlateau or the notebooks'
  own rule (`NotebooksPlateau`).
- `TensorLR`: on the fast path the learning rate is a 0-dim tensor in each param group,
  which the CUDA graph reads on every replay; TensorLR keeps the value the schedule set as a
  Python float beside it (float32 on CUDA would read 1e-3 back as 0.0010000000474974513):
  the scheduler steps and checkpoints see the float (`TensorLR.as_floats`), the history
  records it, and `sync` fills whatever value was set (or loaded) into the same tensor.
- `Optimisation`: the three together, as `fit` uses them: the lr of an epoch, a schedule
  step, and the state a checkpoint saves and a resume loads.
"""

from __future__ import annotations

import contextlib
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from gradattn.core.settings import TrainConfig
from gradattn.training.steps import Plan

# Layers whose scale and shift parameters (γ, β) `decay_norm=False` keeps out of the decay.
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm,
               nn.GroupNorm)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """`model`'s parameters as two optimiser param groups: the rest, with `weight_decay`, and
    the normalisation layers' γ/β and every bias, with none (in this project's models these
    are exactly the one-dimensional parameters)."""
    decayed, exempt, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            norm_or_bias = isinstance(module, NORM_LAYERS) or name.endswith("bias")
            (exempt if norm_or_bias else decayed).append(p)
    return [{"params": decayed, "weight_decay": weight_decay},
            {"params": exempt, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig, plan: Plan, *,
                   decay_norm: bool = True) -> torch.optim.Optimizer:
    """The paper's Adam (or AdamW, `train.optimizer`); on the fast path with the learning rate
    held in a 0-dim tensor. `decay_norm=False` exempts the normalisation layers' γ/β and the
    biases from the weight decay (`decay_groups`); the default decays every parameter (one
    param group), as the paper does."""
    # Adam adds the decay to the gradient before normalising it: it shrinks weights that a
    # batch norm makes scale-free by ~lr a step, which kills GradAttn's deep stages on
    # CIFAR-10 (docs/findings.md). AdamW shrinks them by lr * weight_decay.
    optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    params = model.parameters() if decay_norm else decay_groups(model, cfg.weight_decay)
    if not plan.fast:
        return optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # float64 on the CPU, so the stand-in's steps equal eager ones bit for bit.
    dtype = torch.float32 if plan.device.type == "cuda" else torch.float64

    def lr() -> Tensor:
        return torch.tensor(cfg.lr, dtype=dtype, device=plan.device)

    if not decay_norm:  # a tensor of its own per group, so a schedule cuts each group once
        params = [{**group, "lr": lr()} for group in params]
    return optimizer(params, lr=lr(), weight_decay=cfg.weight_decay, capturable=plan.graphs)


class TensorLR:
    """Keeps each param group's learning rate in the one tensor the step (and graph) reads,
    and the value the schedule set as a Python float beside it.

    The tensor holds that value rounded to its dtype (float32 on CUDA: 1e-3 reads back as
    0.0010000000474974513), so the history, the schedule's next cut and the checkpoint take
    the float (`values`), exactly what the eager path's float learning rate would be."""

    def __init__(self, optimizer: torch.optim.Optimizer, values: list[float] | None = None):
        self.optimizer = optimizer
        self.tensors = [group["lr"] for group in optimizer.param_groups]
        if not all(isinstance(t, Tensor) for t in self.tensors):
            raise TypeError("TensorLR needs an optimiser made with a tensor learning rate")
        self.values = [float(t) for t in self.tensors] if values is None else list(values)

    @property
    def value(self) -> float:
        """The first group's learning rate as the schedule set it."""
        return self.values[0]

    @contextmanager
    def as_floats(self):
        """Inside, the param groups hold the schedule's floats (for a scheduler's step, which
        then computes in float64 as on the eager path, or for a checkpoint's state); after,
        the tensors again, filled with whatever was set inside."""
        for group, value in zip(self.optimizer.param_groups, self.values, strict=True):
            group["lr"] = value
        try:
            yield
        finally:
            self.sync()

    def sync(self) -> None:
        """Copy a value that replaced a group's tensor back into that tensor (and keep it as
        the float); a tensor filled in place (by an older scheduler) gives its value."""
        for i, (group, tensor) in enumerate(zip(self.optimizer.param_groups, self.tensors,
                                                strict=True)):
            value = group["lr"]
            if value is not tensor:
                self.values[i] = float(value)
                with torch.no_grad():
                    tensor.fill_(self.values[i])
                group["lr"] = tensor
            elif float(tensor) != float(torch.tensor(self.values[i], dtype=tensor.dtype)):
                self.values[i] = float(tensor)


def settle_loaded_optimizer(optimizer: torch.optim.Optimizer, plan: Plan,
                            lr: TensorLR | None) -> None:
    """After `optimizer.load_state_dict`: a checkpoint written by the other path (eager or
    fast, CPU or GPU) must not change how this one steps."""
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = plan.graphs
    if lr is not None:
        lr.sync()
    else:
        for group in optimizer.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"] = float(group["lr"])


def current_lr(optimizer: torch.optim.Optimizer, lr: TensorLR | None = None) -> float:
    """The learning rate the schedule set (on the fast path the float, not its tensor)."""
    return lr.value if lr is not None else float(optimizer.param_groups[0]["lr"])


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


class Optimisation:
    """`fit`'s optimiser, its plateau schedule and (fast path) its TensorLR, made in that
    order; on the fast path every learning rate `fit` reads, records or saves is the float
    the schedule set, exactly what the eager path's float learning rate would be."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, plan: Plan, *, decay_norm: bool):
        self.plan = plan
        self.optimizer = make_optimizer(model, cfg, plan, decay_norm=decay_norm)
        self.lr_tensor = (TensorLR(self.optimizer, [cfg.lr] * len(self.optimizer.param_groups))
                          if plan.fast else None)
        self.scheduler = make_plateau(self.optimizer, cfg)

    @property
    def lr(self) -> float:
        """The first group's learning rate, as the schedule set it."""
        return current_lr(self.optimizer, self.lr_tensor)

    def _floats(self):
        """The param groups holding the schedule's float learning rates (fast path), or as
        they are (eager)."""
        if self.lr_tensor is None:
            return contextlib.nullcontext()
        return self.lr_tensor.as_floats()

    def schedule(self, val_accuracy: float) -> None:
        """The plateau schedule's step after an epoch (on the float, as eager computes it)."""
        with self._floats():
            self.scheduler.step(val_accuracy)

    def optimizer_state(self) -> dict:
        """The optimiser's state with the float learning rate, so a resumed run (on either
        path) continues exactly."""
        with self._floats():
            return self.optimizer.state_dict()

    def load(self, optimizer_state: dict, scheduler_state: dict) -> None:
        """A checkpoint's optimiser and schedule state (written by either path)."""
        self.optimizer.load_state_dict(optimizer_state)
        settle_loaded_optimizer(self.optimizer, self.plan, self.lr_tensor)
        self.scheduler.load_state_dict(scheduler_state)
