"""Tests of gradattn.training.loop.fit's protocol (eager path, CPU): Adam and the plateau
schedule as the paper sets them, early stopping, best-weight restore, checkpoints and determinism.

Tiny models on a few 8x8 images keep every test well under a second of compute."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from training_helpers import (
    Scripted,
    Snapshots,
    data,
    quiet,
    rows,
    scripted_data,
    tiny,
)

from gradattn.config import TrainConfig
from gradattn.core.errors import GradattnError
from gradattn.core.settings import OPTIMIZERS
from gradattn.training.loop import EarlyStopping, epoch_seed, fit
from gradattn.training.optim import make_optimizer
from gradattn.training.steps import resolve_plan

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)

CFG = TrainConfig(max_epochs=3, batch_size=8, device="cpu", fast="off", precision="auto").resolve(
    "corrected", "test")


# --- EarlyStopping --------------------------------------------------------------------------
def test_early_stopping_counts_bad_epochs_and_needs_strict_improvement():
    s = EarlyStopping(patience=2)
    assert s.update(0.5, 1) and s.best == 0.5 and s.best_epoch == 1
    assert not s.update(0.5, 2)  # equal is not better
    assert s.bad_epochs == 1 and not s.should_stop
    assert s.update(0.6, 3) and s.bad_epochs == 0 and s.best_epoch == 3
    assert not s.update(0.1, 4) and not s.update(0.2, 5)
    assert s.should_stop and s.best == 0.6 and s.best_epoch == 3


def test_early_stopping_state_round_trips():
    s = EarlyStopping(patience=3)
    s.update(0.4, 1)
    s.update(0.3, 2)
    t = EarlyStopping(patience=3)
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == {"best": 0.4, "best_epoch": 1, "bad_epochs": 1}


def test_epoch_seed_depends_on_seed_and_epoch():
    seeds = {epoch_seed(s, e) for s in (0, 1, 42) for e in range(1, 50)}
    assert len(seeds) == 3 * 49


# --- the protocol ---------------------------------------------------------------------------
def test_adam_and_plateau_schedule_use_the_papers_settings(tmp_path):
    cfg = dataclasses.replace(CFG, max_epochs=1, lr=2e-3, weight_decay=3e-4,
                              plateau_factor=0.3, plateau_patience=2, min_lr=1e-6)
    train, val = data()
    ckpt = tmp_path / "run.pt"
    fit(tiny(), train, val, cfg, checkpoint=ckpt, run_id="r", log=quiet, progress=False)
    state = torch.load(ckpt, weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert group["lr"] == 2e-3 and group["weight_decay"] == 3e-4
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    assert not group["amsgrad"] and not group.get("decoupled_weight_decay", False)
    sched = state["scheduler"]
    assert sched["mode"] == "max" and sched["factor"] == 0.3 and sched["patience"] == 2
    assert sched["min_lrs"] == [1e-6]
    assert set(state) >= {"run_id", "epoch", "model", "optimizer", "scheduler",
                          "early_stopping", "best_model", "history"}


@pytest.mark.parametrize("fast", ["off", "on"])
def test_adamw_decouples_the_weight_decay_from_the_normalised_step(fast):
    # A weight with no data gradient and a large decay: Adam adds wd*w to the gradient and
    # normalises it, so the weight moves by ~lr in one step (how GradAttn's deep stages
    # shrink on CIFAR-10); AdamW moves it by lr*wd*w only. On both paths.
    cfg = dataclasses.replace(CFG, lr=1e-2, weight_decay=0.5, fast=fast)
    plan = resolve_plan(cfg, "cpu")
    moved = {}
    for name in OPTIMIZERS:
        weight = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            weight.weight.fill_(1.0)
        optimizer = make_optimizer(weight, dataclasses.replace(cfg, optimizer=name), plan)
        weight.weight.grad = torch.zeros_like(weight.weight)
        optimizer.step()
        moved[name] = 1.0 - weight.weight.item()
    assert moved["adam"] == pytest.approx(1e-2, rel=1e-3)
    assert moved["adamw"] == pytest.approx(1e-2 * 0.5, rel=1e-3)


@pytest.mark.parametrize("fast", ["off", "on"])
def test_decay_norm_false_keeps_batch_norm_and_biases_out_of_the_decay(fast):
    # One Adam step with no data gradient at all: a decayed parameter moves by ~lr (the
    # coupled decay, normalised), an exempt one (BN's gamma and beta, every bias) not at all.
    cfg = dataclasses.replace(CFG, lr=1e-2, weight_decay=0.5, fast=fast)
    plan = resolve_plan(cfg, "cpu")
    moved = {}
    for decay_norm in (True, False):
        model = tiny()
        with torch.no_grad():  # every parameter 1 (BN's beta starts at 0: nothing to decay)
            for p in model.parameters():
                p.fill_(1.0)
                p.grad = torch.zeros_like(p)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = make_optimizer(model, cfg, plan, decay_norm=decay_norm)
        optimizer.step()
        moved[decay_norm] = {n: (before[n] - p.detach()).abs().max().item()
                             for n, p in model.named_parameters()}
    # tiny(): 0 conv (weight, bias), 1 batch norm (gamma, beta), 5 linear (weight, bias)
    assert all(v == pytest.approx(1e-2, rel=1e-3) for v in moved[True].values())
    assert moved[False] == {"0.weight": pytest.approx(1e-2, rel=1e-3), "0.bias": 0.0,
                            "1.weight": 0.0, "1.bias": 0.0,
                            "5.weight": pytest.approx(1e-2, rel=1e-3), "5.bias": 0.0}


def test_a_plateau_cut_cuts_each_param_group_once_on_the_fast_path():
    # decay_norm=False makes two param groups; each has its own lr tensor, so a cut made in
    # place (the notebooks' rule) lowers both by the factor once, not the shared one twice.
    from gradattn.training.optim import NotebooksPlateau

    cfg = dataclasses.replace(CFG, fast="on")
    optimizer = make_optimizer(tiny(), cfg, resolve_plan(cfg, "cpu"), decay_norm=False)
    plateau = NotebooksPlateau(optimizer, factor=0.2, patience=1, min_lr=0.0)
    plateau.step(0.5)
    plateau.step(0.4)
    assert [float(g["lr"]) for g in optimizer.param_groups] == [pytest.approx(2e-4)] * 2


def test_on_step_sees_each_batch_gradient_before_the_step_and_changes_nothing():
    train, val = data()  # 20 images, batch 8: 3 steps an epoch
    cfg = dataclasses.replace(CFG, max_epochs=2)
    plain = fit(tiny(), train, val, cfg, log=quiet, progress=False)
    model = tiny()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen = []

    def on_step():
        seen.append({n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()})

    hooked = fit(model, train, val, cfg, on_step=on_step, log=quiet, progress=False)
    assert rows(hooked.history) == rows(plain.history)
    assert len(seen) == 2 * len(train)
    # The first call sees the initial weights (no step taken yet) and a gradient; every
    # later one the weights after exactly one more step.
    assert all(torch.equal(w, start[n]) for n, (w, _g) in seen[0].items())
    assert all(g.abs().sum() > 0 for _w, g in seen[0].values())
    assert all(not torch.equal(seen[1][n][0], seen[0][n][0]) for n in start)


def test_on_step_on_the_fast_path_is_a_one_line_error():
    train, val = data()
    cfg = dataclasses.replace(CFG, fast="on")
    with pytest.raises(GradattnError) as err:
        fit(tiny(), train, val, cfg, on_step=lambda: None, log=quiet, progress=False)
    assert str(err.value) == (
        "fit: on_step needs the eager path, but this run takes the fast path (fast path on "
        "cpu: eager stand-in for the CUDA graph, fp32): set train.fast off")


def test_history_rows_have_the_documented_keys():
    train, val = data()
    result = fit(tiny(), train, val, dataclasses.replace(CFG, max_epochs=2), log=quiet,
                 progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2]
    for r in result.history:
        assert set(r) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                          "lr", "seconds"}
        assert all(isinstance(r[k], float) for k in ("train_loss", "val_loss", "lr"))
        assert 0 <= r["train_accuracy"] <= 1 and 0 <= r["val_accuracy"] <= 1


def test_plateau_schedule_follows_val_accuracy_in_max_mode():
    # Accuracy rises, then stalls: no reduction while it rises, then one after
    # plateau_patience + 1 epochs without a better value.
    model = Scripted([0.1, 0.2, 0.3, 0.3, 0.3, 0.3])
    train, val = scripted_data()
    cfg = dataclasses.replace(CFG, max_epochs=6, plateau_patience=1, plateau_factor=0.5,
                              early_stopping_patience=10)
    result = fit(model, train, val, cfg, grad_probe=Snapshots(), log=quiet, progress=False)
    assert [r["lr"] for r in result.history] == pytest.approx(
        [1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 5e-4])


def test_early_stopping_restores_the_best_weights():
    model = Scripted([0.2, 0.5, 0.4, 0.5, 0.3, 0.9])
    train, val = scripted_data()
    probe = Snapshots()
    cfg = dataclasses.replace(CFG, max_epochs=10, early_stopping_patience=3)
    result = fit(model, train, val, cfg, grad_probe=probe, log=quiet, progress=False)
    assert len(result.history) == 5 and result.stopped_early  # epochs 3-5 not better
    assert result.best_epoch == 2 and result.best_val_accuracy == pytest.approx(0.5)
    best = probe.weights[1]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    assert not torch.equal(probe.weights[-1]["net.5.weight"], best["net.5.weight"])


def test_a_checkpoint_of_another_run_is_ignored(tmp_path):
    train, val = data()
    ckpt = tmp_path / "run.pt"
    fit(tiny(), train, val, dataclasses.replace(CFG, max_epochs=2), checkpoint=ckpt,
        run_id="old", log=quiet, progress=False)
    lines: list[str] = []
    result = fit(tiny(), train, val, dataclasses.replace(CFG, max_epochs=2), checkpoint=ckpt,
                 run_id="new", log=lines.append, progress=False)
    assert any(line.startswith("ignoring") for line in lines)
    assert result.resumed_from == 0 and [r["epoch"] for r in result.history] == [1, 2]
    assert torch.load(ckpt, weights_only=True)["run_id"] == "new"


def test_same_seed_same_history_and_weights():
    results = []
    for _ in range(2):
        train, val = data()
        model = tiny()
        r = fit(model, train, val, CFG, log=quiet, progress=False)
        results.append((rows(r.history), model.state_dict()))
    (h1, w1), (h2, w2) = results
    assert h1 == h2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_another_seed_another_run():
    train, val = data()
    a = fit(tiny(), train, val, CFG, log=quiet, progress=False)
    b = fit(tiny(), train, val, dataclasses.replace(CFG, seed=7), log=quiet, progress=False)
    assert rows(a.history) != rows(b.history)


def test_a_run_killed_mid_epoch_resumes_to_the_same_result(tmp_path):
    cfg = dataclasses.replace(CFG, max_epochs=4)
    train, val = data()
    whole = tiny()
    ref = fit(whole, train, val, cfg, log=quiet, progress=False)

    class Killed(Exception):
        pass

    def kill_at_3(model):
        if kill_at_3.calls == 2:
            raise Killed
        kill_at_3.calls += 1

    kill_at_3.calls = 0
    ckpt = tmp_path / "run.pt"
    with pytest.raises(Killed):
        fit(tiny(), train, val, cfg, checkpoint=ckpt, run_id="r", grad_probe=kill_at_3,
            log=quiet, progress=False)
    lines: list[str] = []
    model = tiny()
    result = fit(model, train, val, cfg, checkpoint=ckpt, run_id="r", log=lines.append,
                 progress=False)
    assert result.resumed_from == 2 and lines[0].startswith("resuming from epoch 3")
    assert rows(result.history) == rows(ref.history)
    ref_state = whole.state_dict()
    assert all(torch.equal(v, ref_state[k]) for k, v in model.state_dict().items())


def test_a_finished_run_resumes_to_nothing(tmp_path):
    model = Scripted([0.5, 0.1, 0.1])
    train, val = scripted_data()
    cfg = dataclasses.replace(CFG, max_epochs=10, early_stopping_patience=2)
    ckpt = tmp_path / "run.pt"
    first = fit(model, train, val, cfg, checkpoint=ckpt, run_id="r", grad_probe=Snapshots(),
                log=quiet, progress=False)
    again = fit(Scripted([0.5, 0.1, 0.1]), train, val, cfg, checkpoint=ckpt, run_id="r",
                log=quiet, progress=False)
    assert first.stopped_early and again.stopped_early
    assert rows(again.history) == rows(first.history) and again.best_epoch == 1
