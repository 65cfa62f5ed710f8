"""The step engine: an epoch's training steps and validation, eager or on the fast path.

On an H100 a ResNet-18 step at batch 128 is launch-bound in eager PyTorch (about 13 ms at
any image size, fp32 or bf16, and `torch.compile`'s default mode did no better); captured
whole (forward, backward and Adam) in one CUDA graph, with bf16 autocast and channels_last,
it runs about five times faster (issue 6). This module holds that path and its eager
stand-in, and `gradattn.training.loop.fit` drives both through `StepEngine`; the optimiser
and every piece of learning-rate bookkeeping of both paths are gradattn.training.optim's.

- `Plan` (from `train.precision` and `train.fast`): precision auto is bf16 on CUDA and fp32
  on the CPU; fast auto is on for CUDA and off for the CPU. Fast on a CPU is the *stand-in*:
  the same logic with the graph replaced by an eager call, so tests check it without a GPU.
- On the fast path the learning rate is a 0-dim tensor the graph reads on every replay
  (gradattn.training.optim.TensorLR), and Adam is `capturable=True` (its step count and
  bias corrections live on the GPU).
- Before capture, a few warm-up steps run on a side stream (as torch.cuda.graphs asks); they
  train on random data, so the model's weights, buffers and Adam state are saved before and
  restored after: the run takes exactly the optimiser steps that eager training takes.
- Dropout inside the graph draws from the default CUDA generator, which torch registers
  with the graph at capture; every replay advances its offset, so each step gets fresh
  masks, and `torch.manual_seed` at an epoch's start reseeds what the replays read.
- BatchNorm's running statistics are updated in place by the graph, as eager does.
- Batches of another size (an epoch's last, short batch) run eagerly with the same model
  and optimiser, so every image of an epoch is trained on.
- Loss and correct counts are summed on the device; one host sync per epoch.
- Validation is graphed too (forward only, eval mode, bf16), remainder batch eager.
- Should a capture fail (an op that graphs do not support), the steps run eagerly on the
  GPU instead and `StepEngine.describe()` (logged by fit, kept in FitResult.extras) says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradattn.core.settings import TrainConfig
from gradattn.prepared.batches import Batches
from gradattn.training.trained import predict

# Warm-up steps before a capture (torch's docs use 3; DDP needs 11, we do not use DDP).
WARMUP_STEPS = 3


@dataclass(frozen=True)
class Plan:
    """How `fit` runs its steps on one device."""

    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    fast: bool  # static buffers, lr tensor, device accumulators, warm-up (graph or stand-in)
    graphs: bool  # the fast path with real CUDA graphs
    channels_last: bool

    @property
    def precision(self) -> str:
        return "fp32" if self.dtype is None else "bf16"

    def describe(self) -> str:
        if not self.fast:
            return f"eager {self.precision} on {self.device}"
        how = "one CUDA graph per step" if self.graphs else "eager stand-in for the CUDA graph"
        layout = ", channels_last" if self.channels_last else ""
        return f"fast path on {self.device}: {how}, {self.precision}{layout}"


def resolve_plan(cfg: TrainConfig, device: torch.device | str) -> Plan:
    """train.precision and train.fast resolved for `device`."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    fast = cuda if cfg.fast == "auto" else cfg.fast == "on"
    return Plan(device=device, dtype=torch.bfloat16 if precision == "bf16" else None,
                fast=fast, graphs=fast and cuda, channels_last=fast and cuda)


def autocast(plan: Plan):
    """bf16 autocast when the plan asks for it (no weight cache: it breaks graph capture)."""
    return torch.autocast(device_type=plan.device.type, dtype=plan.dtype or torch.bfloat16,
                          enabled=plan.dtype is not None, cache_enabled=False)


class _Snapshot:
    """Copies of a model's parameters and buffers and of an optimiser's state, restored in
    place (a captured graph holds their addresses). State that did not exist when the
    snapshot was taken is zeroed, which is Adam's fresh state."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model_tensors = [*model.parameters(), *model.buffers()]
        self.model_copies = [t.detach().clone() for t in self.model_tensors]
        self.optimizer = optimizer
        self.state = {p: {k: v.clone() for k, v in s.items() if isinstance(v, Tensor)}
                      for p, s in optimizer.state.items()}

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, copy in zip(self.model_tensors, self.model_copies, strict=True):
            tensor.copy_(copy)
        for p, state in self.optimizer.state.items():
            saved = self.state.get(p)
            for key, value in state.items():
                if not isinstance(value, Tensor):
                    continue
                if saved is None:
                    value.zero_()
                else:
                    value.copy_(saved[key])


class StepEngine:
    """Runs `fit`'s training steps and validation for one model and optimiser: eager, or on
    the fast path.

    Eager (`plan.fast` False) is the plain loop, op for op what `fit` always did. The fast
    path runs full batches through static buffers: a CUDA graph replay on a GPU, an eager
    call on them in the stand-in; other batch sizes run eagerly.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, plan: Plan, *,
                 before_step: Callable[[], None] | None = None):
        self.model, self.optimizer, self.plan = model, optimizer, plan
        self.before_step = before_step  # eager only: called between backward and step
        device = plan.device
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.val_loss_sum = torch.zeros((), device=device)
        self.val_correct = torch.zeros((), device=device, dtype=torch.long)
        self.train_x: Tensor | None = None  # static buffers of full training batches
        self.train_y: Tensor | None = None
        self.val_x: Tensor | None = None
        self.val_y: Tensor | None = None
        self.train_graph = None
        self.val_graph = None
        self.static_grads: list[Tensor | None] = []
        self.graphs = plan.graphs  # False after a failed capture
        self.graph_error: str | None = None

    # --- the step bodies: what the graphs capture, and what runs eagerly -------------------
    def _train_body(self, x: Tensor, y: Tensor) -> None:
        with autocast(self.plan):
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        if self.before_step is not None:
            self.before_step()
        self.optimizer.step()
        self.loss_sum += loss.detach().float() * len(y)
        self.correct += (logits.argmax(1) == y).sum()

    def _val_body(self, x: Tensor, y: Tensor) -> None:
        with autocast(self.plan):
            logits = self.model(x)
        self.val_loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        self.val_correct += (logits.argmax(1) == y).sum()

    def _static(self, batch_size: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        x = torch.randn((batch_size, *shape), device=self.plan.device)
        if self.plan.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, torch.zeros(batch_size, dtype=torch.long, device=self.plan.device)

    def _capture(self, body, x: Tensor, y: Tensor, *, training: bool):
        """Warm up on a side stream, then capture one call of `body` (CUDA), or only warm up
        (the stand-in); returns the graph or None."""
        if not self.graphs:
            for _ in range(WARMUP_STEPS):
                if training:
                    self.optimizer.zero_grad(set_to_none=True)
                body(x, y)
            return None
        side = torch.cuda.Stream(self.plan.device)
        side.wait_stream(torch.cuda.current_stream(self.plan.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                if training:
                    self.optimizer.zero_grad(set_to_none=True)
                body(x, y)
        torch.cuda.current_stream(self.plan.device).wait_stream(side)
        if training:
            # No gradients may exist at capture: the graph's backward then allocates them
            # from its own pool and writes (not adds) them on every replay.
            self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body(x, y)
        return graph

    # --- set-up ------------------------------------------------------------------------------
    def prepare(self, train: Batches, val: Batches | None = None) -> None:
        """Capture the training step (and validation) for these batches' full-batch shape.

        Leaves the model's weights, buffers and the optimiser's state as they were. Should a
        capture fail (an op the model uses that CUDA graphs do not support), the error is
        kept in `graph_error` and the steps run eagerly on the GPU instead."""
        if not self.plan.fast:
            return
        benchmark = torch.backends.cudnn.benchmark
        if self.graphs:
            torch.backends.cudnn.benchmark = True  # the warm-up picks the conv algorithms
        was_training = self.model.training
        try:
            if train.num_images >= train.batch_size:
                self.train_x, self.train_y = self._static(train.batch_size, train.image_shape)
                snapshot = _Snapshot(self.model, self.optimizer)
                self.model.train()
                try:
                    self.train_graph = self._capture(self._train_body, self.train_x,
                                                     self.train_y, training=True)
                except RuntimeError as err:
                    self._give_up_graphs(err)
                self.static_grads = [p.grad for p in self.model.parameters()]
                snapshot.restore()
                if self.train_graph is None:
                    self.optimizer.zero_grad(set_to_none=True)
            if val is not None and val.num_images >= val.batch_size:
                self.val_x, self.val_y = self._static(val.batch_size, val.image_shape)
                self.model.eval()
                try:
                    with torch.no_grad():
                        self.val_graph = self._capture(self._val_body, self.val_x, self.val_y,
                                                       training=False)
                except RuntimeError as err:
                    self._give_up_graphs(err)
        finally:
            torch.backends.cudnn.benchmark = benchmark
            self.model.train(was_training)
        for t in (self.loss_sum, self.correct, self.val_loss_sum, self.val_correct):
            t.zero_()

    def _give_up_graphs(self, err: RuntimeError) -> None:
        if self.plan.device.type == "cuda":
            torch.cuda.synchronize(self.plan.device)
        self.graphs = False
        self.train_graph = self.val_graph = None
        self.graph_error = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)

    def describe(self) -> str:
        if self.graph_error is None:
            return self.plan.describe()
        return (f"{self.plan.describe()}; graph capture FAILED ({self.graph_error}), "
                "so the steps ran eagerly")

    # --- an epoch ---------------------------------------------------------------------------
    def train_epoch(self, batches: Iterable[tuple[Tensor, Tensor]]) -> tuple[float, int, int]:
        """Train on every batch; (summed loss, correct predictions, images seen)."""
        self.loss_sum.zero_()
        self.correct.zero_()
        if self.train_graph is not None:
            # A probe may have replaced .grad; the graph's own gradients are what it writes.
            for p, g in zip(self.model.parameters(), self.static_grads, strict=True):
                p.grad = g
        seen = 0
        full = None if self.train_x is None else self.train_x.shape[0]
        for x, y in batches:
            if len(y) == full:
                self.train_x.copy_(x)
                self.train_y.copy_(y)
                if self.train_graph is not None:
                    self.train_graph.replay()
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    self._train_body(self.train_x, self.train_y)
            else:
                self.optimizer.zero_grad(set_to_none=True)
                self._train_body(x, y)
            seen += len(y)
        loss_sum, correct = torch.stack([self.loss_sum.float(), self.correct.float()]).tolist()
        return loss_sum, int(correct), seen

    @torch.no_grad()
    def validate(self, batches: Batches) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) over a split, in eval mode."""
        if not self.plan.fast:
            with autocast(self.plan):
                logits, labels = predict(self.model, batches)
            accuracy = (logits.argmax(1) == labels).float().mean().item()
            return F.cross_entropy(logits, labels).item(), accuracy
        was_training = self.model.training
        self.model.eval()
        self.val_loss_sum.zero_()
        self.val_correct.zero_()
        full = None if self.val_x is None else self.val_x.shape[0]
        for x, y in batches.epoch():
            if len(y) == full:
                self.val_x.copy_(x)
                self.val_y.copy_(y)
                if self.val_graph is not None:
                    self.val_graph.replay()
                else:
                    self._val_body(self.val_x, self.val_y)
            else:
                self._val_body(x, y)
        self.model.train(was_training)
        n = batches.num_images
        # Accuracy in float32, as eager validation computes it, so the two paths' histories
        # (and early-stopping decisions) agree exactly.
        loss_sum, accuracy = torch.stack([self.val_loss_sum, self.val_correct.float() / n]).tolist()
        return loss_sum / n, accuracy
