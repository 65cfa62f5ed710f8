"""The two recipes on the training / evaluation side: what `auto` resolves to, and each
notebooks behaviour against an independent statement of it written here (the expected values
are worked out by hand from the notebooks' code, cited per test, not by our implementation).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from training_helpers import (
    Scripted,
    Snapshots,
    quiet,
    same_weights,
    scripted_data,
)

from gradattn.analysis.metrics import expected_calibration_error, train_val_gap
from gradattn.core.errors import ConfigError
from gradattn.core.recipes import RECIPE_VALUES
from gradattn.core.settings import (
    AUTO,
    EvaluateConfig,
    GradientsConfig,
    TrainConfig,
    load_resolved,
)
from gradattn.training.loop import fit
from gradattn.training.optim import NotebooksPlateau
from gradattn.training.run_config import load_run_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest)

CFG = TrainConfig(max_epochs=3, batch_size=8, device="cpu", fast="off", precision="fp32").resolve(
    "corrected", "test")


# --- what auto means ------------------------------------------------------------------------
def test_auto_resolves_through_the_recipe_and_a_value_overrides_it():
    raw = TrainConfig.parse({})  # a key params.yaml leaves out is auto too
    assert (raw.batch_size, raw.weights, raw.plateau) == (AUTO, AUTO, AUTO)
    corrected = raw.resolve("corrected", "padufes20")
    assert (corrected.batch_size, corrected.weights, corrected.plateau) == (128, "best", "torch")
    notebooks = raw.resolve("notebooks", "cifar10")
    assert (notebooks.batch_size, notebooks.weights, notebooks.plateau) == (
        128, "last", "notebooks")
    assert raw.resolve("notebooks", "padufes20").batch_size == 64  # PAD-UFES-20 cell 4
    pinned = TrainConfig.parse({"batch_size": 32, "weights": "best", "plateau": "torch"})
    assert pinned.resolve("notebooks", "padufes20") == dataclasses.replace(
        raw.resolve("notebooks", "padufes20"), batch_size=32, weights="best", plateau="torch")
    ev = EvaluateConfig.parse({})
    assert (ev.ece_bins, ev.resolve("corrected").gap, ev.resolve("notebooks").gap) == (
        10, "signed", "absolute")
    gr = GradientsConfig.parse({})
    assert gr.batches == 20
    assert (gr.resolve("corrected").split, gr.resolve("corrected").silent) == ("train", "skip")
    assert (gr.resolve("notebooks").split, gr.resolve("notebooks").silent) == ("test", "count")
    assert set(RECIPE_VALUES) == {"train.weights", "train.plateau", "evaluate.gap",
                                  "gradients.split", "gradients.silent"}


def test_a_run_config_records_the_recipe_and_only_resolved_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"recipe": "notebooks", "train": {"batch_size": "auto", "weights": "auto"}}))
    (tmp_path / "configs/models").mkdir(parents=True)
    (tmp_path / "configs/models/gradattn.json").write_text(
        json.dumps({"options": {"pe": "rope"}}))
    cfg = load_run_config("padufes20", "gradattn")
    assert cfg.recipe == "notebooks" and cfg.model_options == {"pe": "rope"}
    assert (cfg.train.batch_size, cfg.train.weights, cfg.train.plateau) == (
        64, "last", "notebooks")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.recipe = "corrected"
    # (train.device, precision and fast stay `auto` here: the machine resolves them, and the
    # train stage's run record holds what they became.)
    assert AUTO not in (getattr(cfg.train, k) for k in ("batch_size", "weights", "plateau"))
    for name in ("evaluate", "gradients"):
        assert AUTO not in dataclasses.asdict(load_resolved(name)).values()


def test_a_bad_recipe_value_is_one_line_naming_the_allowed_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("recipe: paper\n")
    with pytest.raises(ConfigError, match=r"recipe = 'paper' .*corrected, notebooks") as err:
        load_resolved("train", "cifar10")
    assert "\n" not in str(err.value)


# --- the plateau rule ------------------------------------------------------------------------
# Validation accuracies 0.1, 0.2 x5, 0.3 x7; factor 0.5, patience 2, min_lr 1e-4.
SCRIPT = [0.1] + [0.2] * 5 + [0.3] * 7
PLATEAU = dict(max_epochs=len(SCRIPT), plateau_factor=0.5, plateau_patience=2, min_lr=1e-4,
               early_stopping_patience=100)
# The notebooks' callback (CIFAR-10 cell 4): a bad epoch adds 1 to wait; at wait >= 2 the lr
# halves and wait = 0 (unless the floor leaves it unchanged). Bad epochs 3, 4 -> cut after
# epoch 4; 5, 6 -> after 6; 0.3 at 7 resets; 8, 9 -> after 9; 10, 11 -> after 11 (to the
# floor 1e-4); 12, 13 -> at the floor, no change. The lr a row records is the one it ran with.
NOTEBOOKS_LRS = [1e-3] * 4 + [5e-4] * 2 + [2.5e-4] * 3 + [1.25e-4] * 2 + [1e-4] * 2
# torch's ReduceLROnPlateau: a cut when bad epochs > 2, i.e. at the third: epochs 3-5 ->
# after 5; 0.3 at 7 resets; 8-10 -> after 10; 11-13 -> after 13 (not seen in the rows).
TORCH_LRS = [1e-3] * 5 + [5e-4] * 5 + [2.5e-4] * 3


@pytest.mark.parametrize("plateau, expected", [("notebooks", NOTEBOOKS_LRS),
                                               ("torch", TORCH_LRS)])
@pytest.mark.parametrize("fast", ["off", "on"])  # on: the fast path's CPU stand-in
def test_lr_sequence_for_a_scripted_run(plateau, expected, fast):
    train, val = scripted_data()
    cfg = dataclasses.replace(CFG, plateau=plateau, fast=fast, **PLATEAU)
    result = fit(Scripted(SCRIPT), train, val, cfg, grad_probe=Snapshots(), log=quiet,
                 progress=False)
    assert [r["val_accuracy"] for r in result.history] == pytest.approx(SCRIPT)
    assert [r["lr"] for r in result.history] == pytest.approx(expected)


def test_the_notebooks_rule_has_no_threshold_and_torch_has():
    """Gains of 1e-5 (relative 2e-5): each resets the notebooks' wait; torch's default
    threshold (relative 1e-4) counts them as bad epochs and cuts at the third."""
    values = [0.5, 0.50001, 0.50002, 0.50003]
    lrs = {}
    for name in ("notebooks", "torch"):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = (NotebooksPlateau(opt, factor=0.5, patience=2, min_lr=0.0) if name == "notebooks"
                 else torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5,
                                                                 patience=2))
        for v in values:
            sched.step(v)
        lrs[name] = opt.param_groups[0]["lr"]
    assert lrs == {"notebooks": 1.0, "torch": 0.5}


def test_the_notebooks_plateau_state_survives_a_resume(tmp_path):
    """Bad epochs 2, 3 -> cut after 3; 4, 5 -> after 5. Killed after epoch 2 (wait = 1
    saved), the resumed run must still cut after epoch 3, not after 4."""
    script = [0.5, 0.4, 0.4, 0.4, 0.4, 0.4]
    cfg = dataclasses.replace(CFG, plateau="notebooks", max_epochs=6, plateau_factor=0.5,
                              plateau_patience=2, early_stopping_patience=100)
    train, val = scripted_data()

    class Killed(Exception):
        pass

    class KillAt3(Snapshots):
        def __call__(self, model):
            if len(self.weights) == 2:
                raise Killed
            return super().__call__(model)

    ckpt = tmp_path / "run.pt"
    with pytest.raises(Killed):
        fit(Scripted(script), train, val, cfg, checkpoint=ckpt, run_id="r",
            grad_probe=KillAt3(), log=quiet, progress=False)
    probe = Snapshots()
    probe.weights = [{}, {}]  # the resumed run's epochs start at 3
    result = fit(Scripted(script), train, val, cfg, checkpoint=ckpt, run_id="r",
                 grad_probe=probe, log=quiet, progress=False)
    assert result.resumed_from == 2
    assert [r["lr"] for r in result.history] == pytest.approx([1e-3] * 3 + [5e-4] * 2 + [2.5e-4])


# --- the weights evaluated ---------------------------------------------------------------------
@pytest.mark.parametrize("weights", ["best", "last"])
def test_training_ends_with_the_weights_asked_for_and_records_the_best_epoch(weights, tmp_path):
    """The notebooks' EarlyStopping keeps `model.state_dict().copy()`, whose tensors are the
    live ones, so their `load_state_dict` reloads the last epoch (CIFAR-10 cell 4)."""
    train, val = scripted_data()
    probe = Snapshots()  # each epoch's weights, copied after its training
    cfg = dataclasses.replace(CFG, weights=weights, max_epochs=10, early_stopping_patience=3)
    model = Scripted([0.2, 0.5, 0.4, 0.5, 0.3, 0.9])
    result = fit(model, train, val, cfg, checkpoint=tmp_path / "run.pt", run_id="r",
                 grad_probe=probe, log=quiet, progress=False)
    assert len(result.history) == 5 and result.best_epoch == 2  # stopped after epoch 5
    assert result.best_val_accuracy == pytest.approx(0.5)
    kept = probe.weights[-1] if weights == "last" else probe.weights[1]
    assert same_weights(model.state_dict(), kept)
    assert not same_weights(probe.weights[-1], probe.weights[1])
    # The checkpoint still holds the best epoch's weights either way.
    saved = torch.load(tmp_path / "run.pt", weights_only=True)
    assert same_weights(saved["best_model"], probe.weights[1])


# --- metrics -----------------------------------------------------------------------------------
def test_ece_bins_are_lower_exclusive_upper_inclusive_as_the_notebooks():
    """calculate_ece (CIFAR-10 cell 4): in_bin = conf > lower and conf <= upper. A right
    answer at confidence exactly 0.5 falls in (0.4, 0.5], a wrong one at 0.58 in (0.5, 0.6]:
    ECE = 1/2 |1 - 0.5| + 1/2 |0 - 0.58| = 0.54. ([lower, upper) bins would put both in
    [0.5, 0.6) and give |0.5 - 0.54| = 0.04.)"""
    logits = torch.tensor([[0.0, 0.0], [torch.log(torch.tensor(0.58)),
                                        torch.log(torch.tensor(0.42))]])
    labels = torch.tensor([0, 1])
    assert expected_calibration_error(logits, labels, bins=10) == pytest.approx(0.54, abs=1e-6)


def test_gap_is_signed_or_absolute_at_the_evaluated_epoch():
    history = [{"epoch": 1, "train_accuracy": 0.6, "val_accuracy": 0.7},
               {"epoch": 2, "train_accuracy": 0.9, "val_accuracy": 0.8}]
    assert train_val_gap(history, 1) == pytest.approx(-0.1)
    assert train_val_gap(history, 1, kind="absolute") == pytest.approx(0.1)
    assert train_val_gap(history, 2, kind="absolute") == pytest.approx(0.1)
    assert train_val_gap(history, 2) == pytest.approx(0.1)
