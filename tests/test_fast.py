"""Tests of the fast path (gradattn.training.steps, .optim) and the device-resident data path.

Without CUDA the fast path is its eager stand-in (`train.fast=on` on the CPU): the same
static buffers, learning-rate tensor, warm-up and restore, eager remainder batch and device
accumulators, with the graph replay replaced by an eager call. These tests check that logic
on the CPU; the tests marked `cuda` check the real graphs (benchmarks/gpu_check.sh runs them
on a GPU machine)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from training_helpers import (
    META,
    Scripted,
    Snapshots,
    data,
    quiet,
    rows,
    same_weights,
    scripted_data,
    tiny,
)

from gradattn.config import TrainConfig
from gradattn.models import build_model
from gradattn.models.gradattn import Encoder
from gradattn.prepared.batches import Batches
from gradattn.training.loop import fit
from gradattn.training.optim import TensorLR, make_optimizer, settle_loaded_optimizer
from gradattn.training.steps import Plan, StepEngine, _Snapshot, resolve_plan

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
EAGER = TrainConfig(max_epochs=3, batch_size=8, device="cpu", fast="off", precision="fp32").resolve(
    "corrected", "test")
FAST = dataclasses.replace(EAGER, fast="on")
PATHS = pytest.mark.parametrize("cfg", [EAGER, FAST], ids=["eager", "fast"])


# --- the plan -------------------------------------------------------------------------------
def test_auto_is_eager_fp32_on_the_cpu():
    plan = resolve_plan(TrainConfig(), "cpu")
    assert (plan.fast, plan.graphs, plan.channels_last, plan.dtype) == (False, False, False, None)
    assert plan.describe() == "eager fp32 on cpu"


def test_fast_on_without_cuda_is_the_stand_in():
    plan = resolve_plan(TrainConfig(fast="on", precision="bf16"), "cpu")
    assert plan.fast and not plan.graphs and not plan.channels_last
    assert plan.dtype == torch.bfloat16 and "stand-in" in plan.describe()


def test_auto_on_cuda_is_graphs_and_channels_last():
    plan = resolve_plan(TrainConfig(precision="fp32"), torch.device("cuda"))
    assert plan.fast and plan.graphs and plan.channels_last and plan.dtype is None
    off = resolve_plan(TrainConfig(fast="off", precision="fp32"), torch.device("cuda"))
    assert not off.fast and not off.graphs


# --- the learning rate as a tensor ----------------------------------------------------------
def test_plateau_schedule_writes_into_the_tensor_the_step_reads():
    plan = resolve_plan(FAST, "cpu")
    model = tiny()
    opt = make_optimizer(model, FAST, plan)
    lr = TensorLR(opt)
    tensor = lr.tensors[0]
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.1,
                                                       patience=0, min_lr=1e-5)
    for _ in range(4):
        sched.step(0.5)
        lr.sync()
    assert opt.param_groups[0]["lr"] is tensor
    assert float(tensor) == pytest.approx(1e-5)  # 1e-3 -> 1e-4 -> 1e-5 (min)


def test_loading_a_state_keeps_the_same_lr_tensor():
    plan = resolve_plan(FAST, "cpu")
    model = tiny()
    opt = make_optimizer(model, FAST, plan)
    lr = TensorLR(opt)
    tensor = lr.tensors[0]
    eager = torch.optim.Adam(model.parameters(), lr=4e-4)  # a checkpoint with a float lr
    opt.load_state_dict(eager.state_dict())
    settle_loaded_optimizer(opt, plan, lr)
    assert opt.param_groups[0]["lr"] is tensor and float(tensor) == pytest.approx(4e-4)
    # ... and an eager optimiser loading a fast one's state gets a float again
    eager.load_state_dict(opt.state_dict())
    settle_loaded_optimizer(eager, resolve_plan(EAGER, "cpu"), None)
    assert isinstance(eager.param_groups[0]["lr"], float)
    assert eager.param_groups[0]["capturable"] is False


@pytest.mark.parametrize("cfg", [EAGER, FAST], ids=["eager", "fast"])
def test_lr_drops_by_factor_to_min_lr_and_the_steps_follow(cfg):
    model = Scripted([0.3])  # validation accuracy never improves after epoch 1
    train, val = scripted_data()
    cfg = dataclasses.replace(cfg, max_epochs=9, lr=1e-3, plateau_factor=0.1,
                              plateau_patience=1, min_lr=1e-6, early_stopping_patience=20)
    probe = Snapshots()
    result = fit(model, train, val, cfg, grad_probe=probe, log=quiet, progress=False)
    # Best at epoch 1; ReduceLROnPlateau cuts after patience + 1 = 2 epochs without a better
    # value, down to min_lr, where it stays.
    expected = [1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6]
    assert [r["lr"] for r in result.history] == pytest.approx(expected)
    # The steps see it: how far the weights move in an epoch scales with the lr.
    start = tiny().state_dict()["5.weight"]
    w = [start] + [s["net.5.weight"] for s in probe.weights]
    moved = [(b - a).abs().mean().item() for a, b in zip(w[:-1], w[1:], strict=True)]
    assert all(m > 0 for m in moved)
    assert 1e-4 < moved[-1] / moved[0] < 1e-2  # lr 1e-6 against 1e-3


def test_history_records_the_scheduled_lr_not_its_float32_tensor(monkeypatch):
    # On CUDA the lr tensor is float32 (1e-3 reads back as 0.0010000000474974513); the
    # history, the schedule's cuts and the checkpoint take the float the schedule set, as
    # the eager path's. The stand-in's tensor made float32 here, as on a GPU.
    import gradattn.training.optim as optim

    def float32_lr(model, cfg, plan, **_):
        return torch.optim.Adam(model.parameters(), lr=torch.tensor(cfg.lr, dtype=torch.float32),
                                weight_decay=cfg.weight_decay)

    monkeypatch.setattr(optim, "make_optimizer", float32_lr)
    train, val = scripted_data()
    cfg = dataclasses.replace(FAST, max_epochs=6, lr=1e-3, plateau_factor=0.2,
                              plateau_patience=1, early_stopping_patience=20)
    result = fit(Scripted([0.3]), train, val, cfg, log=quiet, progress=False)
    lrs = [r["lr"] for r in result.history]
    assert lrs == [0.001, 0.001, 0.001, 0.001 * 0.2, 0.001 * 0.2, 0.001 * 0.2 * 0.2]
    assert all(type(v) is float for v in lrs)
    monkeypatch.undo()
    eager = fit(Scripted([0.3]), *scripted_data(), dataclasses.replace(cfg, fast="off"),
                log=quiet, progress=False)
    assert [r["lr"] for r in eager.history] == lrs  # the same on both paths, exactly


# --- early stopping and best weights --------------------------------------------------------
@PATHS
def test_early_stopping_after_patience_bad_epochs_restores_best(cfg):
    model = Scripted([0.2, 0.5, 0.4, 0.5, 0.3, 0.9])
    train, val = scripted_data()
    probe = Snapshots()
    cfg = dataclasses.replace(cfg, max_epochs=10, early_stopping_patience=3)
    result = fit(model, train, val, cfg, grad_probe=probe, log=quiet, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5] and result.stopped_early
    assert result.best_epoch == 2
    assert same_weights(model.state_dict(), probe.weights[1])


# --- every image, every epoch ---------------------------------------------------------------
class Counting(nn.Module):
    """Records the batch size of every training forward that builds a graph for backward."""

    def __init__(self):
        super().__init__()
        self.net = tiny()
        self.sizes: list[int] = []

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.sizes.append(len(x))
        return self.net(x)


@PATHS
def test_the_last_short_batch_is_trained_on(cfg):
    model = Counting()
    train, val = data(n_train=20, batch_size=8)
    fit(model, train, val, dataclasses.replace(cfg, max_epochs=2), log=quiet, progress=False)
    per_epoch = [8, 8, 4]  # 20 images: two full batches and the remainder
    assert model.sizes[-6:] == per_epoch * 2 and sum(per_epoch) == train.num_images
    warmup = model.sizes[:-6]  # the fast path's warm-up steps (restored afterwards)
    assert warmup == ([] if cfg.fast == "off" else [8] * len(warmup))


def test_train_epoch_counts_every_image_and_sums_on_device():
    plan = resolve_plan(FAST, "cpu")
    model = tiny()
    trainer = StepEngine(model, make_optimizer(model, FAST, plan), plan)
    train, val = data(n_train=21, batch_size=8)
    trainer.prepare(train, val)
    loss_sum, correct, seen = trainer.train_epoch(train.epoch(1))
    assert seen == 21 and 0 <= correct <= 21 and loss_sum > 0
    assert trainer.loss_sum.device.type == "cpu" and trainer.correct.dtype == torch.long


def test_prepare_leaves_model_and_optimizer_as_they_were():
    plan = resolve_plan(FAST, "cpu")
    model = tiny()
    opt = make_optimizer(model, FAST, plan)
    train, val = data()
    x, y = next(train.epoch(0))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # Adam state exists, as after a resume
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    StepEngine(model, opt, plan).prepare(train, val)
    assert same_weights(model.state_dict(), before)
    for p, s in opt.state.items():
        assert all(torch.equal(v, opt_before[id(p)][k]) for k, v in s.items())


def test_prepare_on_a_fresh_optimizer_leaves_fresh_adam_state():
    plan = resolve_plan(FAST, "cpu")
    model = tiny()
    opt = make_optimizer(model, FAST, plan)
    train, val = data()
    StepEngine(model, opt, plan).prepare(train, val)
    assert all(float(v.abs().sum()) == 0 for s in opt.state.values() for v in s.values())


def test_a_failed_capture_falls_back_to_eager_steps():
    class NoGraphs(StepEngine):
        def _capture(self, body, x, y, *, training):
            if self.graphs:
                raise RuntimeError("operation not permitted when stream is capturing\nmore")
            return super()._capture(body, x, y, training=training)

    stand_in = resolve_plan(FAST, "cpu")
    plan = dataclasses.replace(stand_in, graphs=True)  # as on a GPU, but capture fails
    model = tiny()
    opt = make_optimizer(model, FAST, stand_in)  # capturable Adam needs a GPU
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = NoGraphs(model, opt, plan)
    train, val = data()
    trainer.prepare(train, val)
    assert trainer.train_graph is None and not trainer.graphs
    assert "FAILED (operation not permitted when stream is capturing)" in trainer.describe()
    assert same_weights(model.state_dict(), before)
    assert trainer.train_epoch(train.epoch(1))[2] == train.num_images
    assert 0 <= trainer.validate(val)[1] <= 1


# --- the stand-in computes what eager computes ----------------------------------------------
def test_stand_in_equals_eager_bit_for_bit():
    results = {}
    for name, cfg in (("eager", EAGER), ("fast", FAST)):
        train, val = data()
        model = tiny()
        cfg = dataclasses.replace(cfg, max_epochs=4, plateau_patience=0)
        r = fit(model, train, val, cfg, log=quiet, progress=False)
        results[name] = (r, model.state_dict())
    (eager, w_eager), (fast, w_fast) = results["eager"], results["fast"]
    assert same_weights(w_eager, w_fast)
    assert rows(eager.history, drop=("seconds", "val_loss")) == rows(
        fast.history, drop=("seconds", "val_loss"))
    for a, b in zip(eager.history, fast.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert fast.extras["plan"].startswith("fast path on cpu")


class MiniAttn(nn.Module):
    """GradAttn's head on a toy backbone: five tokens, RoPE, attention and encoder dropout
    (GradAttn's own backbone is an 11 M-parameter ResNet, too slow for a CPU test)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.encoder = Encoder(dim=16, depth=1, heads=2, ff_dim=32, dropout=0.3,
                               norm_first=False, rope=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        feats = self.conv(x).flatten(2)  # (B, 16, 64)
        tokens = torch.stack([c.mean(-1) for c in feats.chunk(5, dim=-1)], 1)  # (B, 5, 16)
        out, _ = self.encoder(tokens)
        return self.head(out.mean(1))


def test_stand_in_trains_attention_with_dropout_like_eager():
    results = []
    for cfg in (EAGER, FAST):
        train, val = data()
        model = MiniAttn()
        r = fit(model, train, val, dataclasses.replace(cfg, max_epochs=2), log=quiet,
                progress=False)
        results.append((rows(r.history, drop=("seconds", "val_loss")), model.state_dict()))
    (h0, w0), (h1, w1) = results
    assert same_weights(w0, w1) and h0 == h1


# --- resume ---------------------------------------------------------------------------------
@PATHS
def test_resume_after_epoch_k_equals_an_uninterrupted_run(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, max_epochs=4, plateau_patience=0)
    train, val = data()
    whole = tiny()
    ref = fit(whole, train, val, cfg, checkpoint=tmp_path / "a.pt", run_id="r", log=quiet,
              progress=False)

    ckpt = tmp_path / "b.pt"
    fit(tiny(), train, val, dataclasses.replace(cfg, max_epochs=2), checkpoint=ckpt,
        run_id="r", log=quiet, progress=False)
    lines: list[str] = []
    model = tiny()
    result = fit(model, train, val, cfg, checkpoint=ckpt, run_id="r", log=lines.append,
                 progress=False)
    assert result.resumed_from == 2
    assert any(line.startswith("resuming from epoch 3") for line in lines)
    assert rows(result.history) == rows(ref.history)
    assert same_weights(model.state_dict(), whole.state_dict())


def test_fast_path_checkpoints_at_most_every_interval(tmp_path, monkeypatch):
    import gradattn.training.loop as train_module

    saved: list[int] = []
    real_save = train_module._save_checkpoint

    def spy(path, state):
        saved.append(state["epoch"])
        real_save(path, state)

    monkeypatch.setattr(train_module, "_save_checkpoint", spy)
    train, val = data()
    fit(tiny(), train, val, dataclasses.replace(FAST, max_epochs=3), checkpoint=tmp_path / "f.pt",
        run_id="r", log=quiet, progress=False)
    assert saved == [3]  # only the last: epochs here take far less than the interval
    saved.clear()
    monkeypatch.setattr(train_module, "FAST_CHECKPOINT_INTERVAL_S", 0.0)
    fit(tiny(), train, val, dataclasses.replace(FAST, max_epochs=3), checkpoint=tmp_path / "g.pt",
        run_id="r", log=quiet, progress=False)
    assert saved == [1, 2, 3]
    saved.clear()
    fit(tiny(), train, val, dataclasses.replace(EAGER, max_epochs=3),
        checkpoint=tmp_path / "e.pt", run_id="r", log=quiet, progress=False)
    assert saved == [1, 2, 3]  # eager: every epoch, as always


# --- the data path --------------------------------------------------------------------------
def _labelled_images(n: int = 37, size: int = 4):
    """Image i is filled with i (so a batch shows which images it holds); label i % 5."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                             (n, size, size, 1)).copy()
    return images, np.arange(n) % 5


@pytest.mark.parametrize("augment", ["none", "rotate10", "crop_flip"])
def test_resident_path_on_the_cpu_gives_the_host_paths_batches(augment):
    images, labels = _labelled_images()
    kw = dict(batch_size=8, shuffle=True, augment=augment, legacy_defect=True)
    host = Batches(images, labels, META, **kw)
    resident = Batches(images, labels, META, resident=True, **kw)
    assert not host.resident and resident.resident
    for (xa, ya), (xb, yb) in zip(host.epoch(5), resident.epoch(5), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resident_epoch_holds_every_image_once_with_its_label():
    images, labels = _labelled_images()
    batches = Batches(images, labels, META, batch_size=8, shuffle=True, resident=True)
    seen = []
    for x, y in batches.epoch(3):
        ids = torch.round((x[:, 0, 0, 0] * 0.25 + 0.5) * 255).long()  # undo normalisation
        assert torch.equal(y, ids % 5)
        seen += ids.tolist()
    assert sorted(seen) == list(range(37)) and seen != list(range(37))
    assert [len(y) for _, y in batches.epoch(0)] == [8, 8, 8, 8, 5]


def test_batches_accept_tensors_and_report_their_shape():
    images, labels = _labelled_images()
    a = Batches(torch.from_numpy(images), torch.from_numpy(labels), META, batch_size=8)
    b = Batches(images, labels, META, batch_size=8)
    assert a.image_shape == b.image_shape == (1, 4, 4)
    for (xa, ya), (xb, yb) in zip(a.epoch(), b.epoch(), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_cpu_batches_stay_on_the_host_path():
    images, labels = _labelled_images()
    assert not Batches(images, labels, META, batch_size=8).resident


# --- the real thing, on a GPU ---------------------------------------------------------------
def _cuda_plan(precision: str = "fp32") -> Plan:
    return resolve_plan(TrainConfig(fast="on", precision=precision), torch.device("cuda"))


def _one_step_updates(trainer: StepEngine, lr: TensorLR, value: float, x, y) -> list:
    """How far each parameter moves in one training step at learning rate `value`; the
    model and the optimiser are put back as they were (in place: a graph holds them)."""
    snapshot = _Snapshot(trainer.model, trainer.optimizer)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    lr.tensors[0].fill_(value)
    trainer.train_epoch([(x, y)])
    moved = [p.detach() - b for p, b in zip(trainer.model.parameters(), before, strict=True)]
    snapshot.restore()
    return moved


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_the_step_reads_the_lr_tensor_one_update_scales_with_it(device):
    # Adam's first step moves each weight by lr * m/(sqrt(v) + eps): twice the lr, twice the
    # update, on every parameter (zero-valued ones such as BatchNorm's biases included). A
    # graph that had baked the learning rate in at capture (1e-3) would move both by the
    # same amount. On the CPU this is the stand-in's eager step on the same tensor.
    plan = _cuda_plan() if device == "cuda" else resolve_plan(FAST, "cpu")
    model = tiny(dropout=0.0).to(device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, FAST, plan)
    lr = TensorLR(opt)
    train, val = data(device=device)
    trainer = StepEngine(model, opt, plan)
    trainer.prepare(train, val)
    assert (trainer.train_graph is not None) == (device == "cuda")
    x, y = next(train.epoch(0))
    a = 1e-4
    at_a = _one_step_updates(trainer, lr, a, x, y)
    at_2a = _one_step_updates(trainer, lr, 2 * a, x, y)
    for (name, _), d1, d2 in zip(model.named_parameters(), at_a, at_2a, strict=True):
        assert d1.norm() > 0.1 * a, name  # it moved: about a per element
        assert (d2 - 2 * d1).norm() <= 1e-3 * (2 * d1).norm(), name


@cuda
def test_cuda_graph_dropout_draws_fresh_masks_and_follows_the_seed():
    plan = _cuda_plan()
    model = tiny(dropout=0.5).cuda()
    opt = make_optimizer(model, FAST, plan)
    TensorLR(opt).tensors[0].fill_(1e-30)  # weights stay put: only the masks change
    train, val = data(device="cuda")
    trainer = StepEngine(model, opt, plan)
    trainer.prepare(train, val)
    x, y = next(train.epoch(0))

    def losses(seed):
        torch.manual_seed(seed)
        return [trainer.train_epoch([(x, y)])[0] for _ in range(3)]

    a, b = losses(1), losses(1)
    assert a == b and len(set(a)) == 3


@cuda
def test_cuda_fast_fit_matches_eager_fp32(monkeypatch):
    # Full fp32 on both paths (no TF32), so only rounding separates them.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    results = []
    for fast in ("off", "on"):
        train, val = data(device="cuda", n_train=64, n_val=32)
        model = tiny(dropout=0.0)
        cfg = TrainConfig(max_epochs=3, batch_size=8, device="cuda", fast=fast,
                          precision="fp32").resolve("corrected", "test")
        r = fit(model, train, val, cfg, log=quiet, progress=False)
        results.append((r, {k: v.cpu() for k, v in model.state_dict().items()}))
    (eager, we), (fast, wf) = results
    for a, b in zip(eager.history, fast.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=2e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=2e-3)
        assert a["lr"] == b["lr"] and type(b["lr"]) is float  # the schedule's, not float32's
    assert fast.history[0]["lr"] == 0.001
    for k in we:
        if we[k].is_floating_point():
            assert (we[k] - wf[k]).abs().mean() < 1e-4, k
    assert fast.extras["plan"].startswith("fast path on cuda")
    assert "FAILED" not in fast.extras["plan"]


@cuda
def test_cuda_resident_and_streaming_paths_agree():
    images, labels = _labelled_images(300, 8)
    kw = dict(batch_size=64, device="cuda")
    resident = Batches(images, labels, META, **kw)
    streaming = Batches(images, labels, META, resident=False, **kw)
    assert resident.resident and not streaming.resident
    assert resident.images.is_cuda
    for (xa, ya), (xb, yb) in zip(resident.epoch(), streaming.epoch(), strict=True):
        assert xa.is_cuda and xb.is_cuda and torch.equal(xa, xb) and torch.equal(ya, yb)


@cuda
def test_cuda_bf16_gradattn_fit_runs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 300)
    meta = {"mean": [0.5] * 3, "std": [0.25] * 3}
    train = Batches(images[:200], labels[:200], meta, batch_size=64, device="cuda",
                    shuffle=True, augment="crop_flip")
    val = Batches(images[200:], labels[200:], meta, batch_size=64, device="cuda")
    torch.manual_seed(0)
    model = build_model("gradattn", num_classes=4, in_channels=3, pe="rope")
    cfg = TrainConfig(max_epochs=2, batch_size=64, device="cuda").resolve("corrected", "test")
    r = fit(model, train, val, cfg,
            log=quiet, progress=False)
    assert "one CUDA graph per step" in r.extras["plan"] and "bf16" in r.extras["plan"]
    assert "FAILED" not in r.extras["plan"]
    assert all(np.isfinite(h["train_loss"]) for h in r.history)
    assert next(model.parameters()).is_contiguous()
