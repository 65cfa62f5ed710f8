"""Tests of gradattn.analysis.gradients: GHS on a network whose gradient norms are known by
construction, output-gradient norms against a hand computation, the train-time probe, and
that the analysis leaves the model exactly as it found it."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradattn.analysis.gradients import (
    analyse_gradients,
    analysed_layers,
    gradient_health,
    layer_status,
    measure_gradient_norms,
    parameter_grad_norms,
    split_grad_history,
)
from gradattn.models import build_model

LOW, HIGH = 1e-6, 10.0


def sum_loss(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    """loss = sum of outputs, so dL/d(output) is all ones."""
    return out.sum()


class Branches(nn.Module):
    """Three linear branches summed, scaled by 1, 1e-9 and 1e9: with loss = sum(output) the
    gradient w.r.t. each branch's output is its scale times ones, whatever the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.healthy = nn.Linear(2, 1)
        self.vanish = nn.Linear(2, 1)
        self.explode = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.healthy(x) + 1e-9 * self.vanish(x) + 1e9 * self.explode(x)


def ones_batches(n: int, batch: int = 4, features: int = 2):
    return [(torch.ones(batch, features), torch.zeros(batch, dtype=torch.long))] * n


def test_ghs_and_counts_on_forced_vanishing_and_exploding_layers():
    model = Branches()
    result = analyse_gradients(model, ones_batches(3), num_batches=3, low=LOW, high=HIGH,
                               loss_fn=sum_loss, progress=False)
    # Output gradient of a branch = scale * ones(4, 1): norm = scale * 2.
    per = {r["layer"]: r for r in result["per_layer"]}
    assert per["healthy"]["output_norm"] == pytest.approx(2.0)
    assert per["vanish"]["output_norm"] == pytest.approx(2e-9)
    assert per["explode"]["output_norm"] == pytest.approx(2e9)
    assert [per[n]["status"] for n in ("healthy", "vanish", "explode")] == [
        "healthy", "vanishing", "exploding"]
    assert result["ghs"] == pytest.approx(1 / 3)
    assert (result["vanishing"], result["exploding"], result["layers"]) == (1, 1, 3)
    assert result["ghs_norm"] == "output" and result["bounds"] == [LOW, HIGH]
    assert result["batches"] == 3
    norms = [2.0, 2e-9, 2e9]
    assert result["norm_mean"] == pytest.approx(sum(norms) / 3)
    assert result["norm_min"] == pytest.approx(2e-9)
    assert result["norm_max"] == pytest.approx(2e9)
    mean = sum(norms) / 3
    assert result["norm_std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in norms) / 3))
    # Parameter gradients: d/dW = scale * sum_b x_b = scale * [4, 4], d/db = scale * 4.
    assert per["healthy"]["parameter_norm"] == pytest.approx(4 * math.sqrt(3))
    assert per["explode"]["parameter_norm"] == pytest.approx(4e9 * math.sqrt(3))
    assert result["parameter"]["ghs"] == pytest.approx(1 / 3)
    # GHS from the parameter norm when asked: same verdicts here, other statistics.
    by_param = analyse_gradients(model, ones_batches(1), num_batches=1, low=LOW, high=HIGH,
                                 norm="parameter", loss_fn=sum_loss, progress=False)
    assert by_param["ghs_norm"] == "parameter" and "parameter" not in by_param
    assert by_param["output"]["norm_max"] == pytest.approx(2e9)
    assert by_param["norm_max"] == pytest.approx(4e9 * math.sqrt(3))


def test_bounds_are_strict_as_in_the_notebooks():
    assert layer_status(LOW, LOW, HIGH) == "unhealthy"  # on a bound: neither healthy nor ...
    assert layer_status(HIGH, LOW, HIGH) == "unhealthy"
    assert layer_status(LOW * 0.999, LOW, HIGH) == "vanishing"
    assert layer_status(HIGH * 1.001, LOW, HIGH) == "exploding"
    assert layer_status(float("nan"), LOW, HIGH) == "unhealthy"
    health = gradient_health({"a": LOW, "b": 1.0}, LOW, HIGH)
    assert health["ghs"] == 0.5 and health["vanishing"] == 0 and health["exploding"] == 0


def test_output_norm_of_a_linear_layer_matches_hand_computation():
    # loss = sum(W x + b) => dL/dy = ones(B, out); two batches of different size.
    layer = nn.Linear(3, 4)
    batches = [(torch.randn(3, 3), torch.zeros(3)), (torch.randn(5, 3), torch.zeros(5))]
    got = measure_gradient_norms(layer, batches, 2, loss_fn=sum_loss, progress=False)
    assert got["output"][""] == pytest.approx((math.sqrt(12) + math.sqrt(20)) / 2)
    # And dL/dW = ones(out, 1) @ sum_b x_b^T, dL/db = B * ones.
    expected = [torch.cat([torch.ones(4, 1) @ x.sum(0, keepdim=True),
                           torch.full((4, 1), float(len(x)))], 1).norm().item()
                for x, _ in batches]
    assert got["parameter"][""] == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_output_norm_with_cross_entropy_matches_autograd_by_hand():
    torch.manual_seed(0)
    layer = nn.Linear(6, 3)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    got = measure_gradient_norms(layer, [(x, y)], 1, progress=False)["output"][""]
    # dCE/dlogits = (softmax - onehot) / B for the mean cross-entropy.
    logits = layer(x).detach()
    expected = ((logits.softmax(1) - F.one_hot(y, 3)) / len(y)).norm().item()
    assert got == pytest.approx(expected, rel=1e-5)


def _small_gradattn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("gradattn", num_classes=3, in_channels=1, dim=16, heads=2, ff_dim=32,
                       depth=1, pe="learnable")


def _hooks(model: nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
            + len(m._backward_pre_hooks) for m in model.modules()]


def test_analysis_leaves_the_model_as_it_found_it():
    model = _small_gradattn()
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 1, 2])
    F.cross_entropy(model(x), y).backward()  # some .grad to keep
    model.eval()
    model.encoder.train()  # a mixed state must come back as it was
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # incl. BN running stats
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    modes = [m.training for m in model.modules()]
    hooks = _hooks(model)
    rng = torch.get_rng_state()

    result = analyse_gradients(model, [(x, y)] * 2, num_batches=2, low=LOW, high=HIGH,
                               progress=False)

    # Every hooked layer is measured, except the attention's out_proj, which torch's layer
    # never calls as a module (skip: left out).
    assert result["batches"] == 2
    assert result["layers"] + len(result["unused_layers"]) == len(analysed_layers(model))
    assert result["unused_layers"] == ["encoder.layers.0.self_attn.out_proj"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for n, p in model.named_parameters():
        assert (p.grad is None) == (n not in grads)
        if p.grad is not None:
            assert torch.equal(p.grad, grads[n]), n
    assert [m.training for m in model.modules()] == modes
    assert _hooks(model) == hooks
    assert torch.equal(torch.get_rng_state(), rng)


def test_analysed_layers_cover_conv_linear_and_encoder_layers():
    model = _small_gradattn()
    batch = (torch.randn(3, 1, 16, 16), torch.tensor([0, 1, 2]))
    result = analyse_gradients(model, [batch], num_batches=5, low=LOW, high=HIGH, progress=False)
    types = {r["layer"]: r["type"] for r in result["per_layer"]}
    assert types["conv1"] == "conv" and types["layer4.1.conv2"] == "conv"
    assert types["proj.0"] == "linear" and types["head"] == "linear"
    assert types["encoder.layers.0"] == "encoder"
    assert types["encoder.layers.0.linear1"] == "linear"
    assert result["batches"] == 1  # fewer batches than asked: all there are
    assert all(r["output_norm"] > 0 and r["parameter_norm"] > 0 for r in result["per_layer"])
    # Deterministic: the same seed gives the same dropout masks, hence the same norms.
    again = analyse_gradients(model, [batch], num_batches=1, low=LOW, high=HIGH, progress=False)
    assert again["per_layer"] == result["per_layer"]


def test_unused_layers_are_left_out():
    class WithSpare(Branches):
        def __init__(self):
            super().__init__()
            self.spare = nn.Linear(2, 2)

    result = analyse_gradients(WithSpare(), ones_batches(1), num_batches=1, low=LOW, high=HIGH,
                               loss_fn=sum_loss, progress=False)
    assert result["layers"] == 3 and result["unused_layers"] == ["spare"]


def test_parameter_grad_norms_reads_existing_grads():
    model = Branches()
    assert parameter_grad_norms(model) == {}
    sum_loss(model(torch.ones(4, 2)), None).backward()
    norms = parameter_grad_norms(model)
    assert set(norms) == {"healthy", "vanish", "explode"}
    assert norms["healthy"] == pytest.approx(4 * math.sqrt(3))
    assert norms["explode"] == pytest.approx(4e9 * math.sqrt(3), rel=1e-5)


def test_split_grad_history_flattens_rows():
    history = [{"epoch": 1, "val_accuracy": 0.5, "grad_norms": {"a": 1.0, "b": 2.0}},
               {"epoch": 2, "val_accuracy": 0.6, "grad_norms": {"a": 0.5, "b": 1.5}},
               {"epoch": 3, "val_accuracy": 0.7}]
    rows, grads = split_grad_history(history)
    assert rows == [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.6},
                    {"epoch": 3, "val_accuracy": 0.7}]
    assert grads[:2] == [{"epoch": 1, "layer": "a", "norm": 1.0},
                         {"epoch": 1, "layer": "b", "norm": 2.0}]
    assert len(grads) == 4
    assert "grad_norms" in history[0]  # the input is not modified


def test_bad_norm_kind_is_refused():
    with pytest.raises(ValueError, match="norm must be one of"):
        analyse_gradients(Branches(), ones_batches(1), num_batches=1, low=LOW, high=HIGH,
                          norm="weights", progress=False)


def test_silent_layers_count_only_under_count():
    class WithSpare(Branches):
        def __init__(self):
            super().__init__()
            self.spare = nn.Linear(2, 2)

    result = analyse_gradients(WithSpare(), ones_batches(1), num_batches=1, low=LOW, high=HIGH,
                               loss_fn=sum_loss, silent="count", progress=False)
    # 1 healthy of 4 hooked: the spare layer's hook never fired, and it counts.
    assert result["layers"] == 4 and result["silent"] == 1 and result["silent_layers"] == ["spare"]
    assert result["ghs"] == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="silent must be one of"):
        analyse_gradients(Branches(), ones_batches(1), num_batches=1, low=LOW, high=HIGH,
                          silent="drop", progress=False)


def _cell2_hook_counts(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    """(hooks registered, hooks that fired) by the notebooks' GradientFlowAnalyzer (cell 2
    of every notebook): a legacy register_backward_hook on every nn.Conv2d, nn.Linear and
    nn.TransformerEncoderLayer, one backward pass in train mode."""
    fired: set[str] = set()
    handles, names = [], []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.TransformerEncoderLayer)):
            names.append(name)
            handles.append(module.register_backward_hook(
                lambda _m, _gi, go, name=name: fired.add(name) if go[0] is not None else None))
    model.train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    for handle in handles:
        handle.remove()
    return len(names), len(fired)


@pytest.mark.filterwarnings("ignore:Using a non-full backward hook")
@pytest.mark.parametrize("pe, hooked", [("none", 35), ("learnable", 35), ("rope", 41)])
def test_gradattn_ghs_denominator_is_the_notebooks_35_and_41_with_3_silent(pe, hooked):
    """The paper's GHS values decompose over these denominators (docs/deviations.md row 20):
    torch's attention never calls out_proj (none, learnable); the RoPE layer's in-place ReLU
    silences linear1's legacy hook."""
    torch.manual_seed(0)
    model = build_model("gradattn", num_classes=10, in_channels=3, pe=pe)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    assert _cell2_hook_counts(model, x, y) == (hooked, hooked - 3)

    count = analyse_gradients(model, [(x, y)], num_batches=1, low=LOW, high=HIGH,
                              silent="count", progress=False)
    assert count["layers"] == hooked and count["silent"] == 3
    assert len(count["per_layer"]) == hooked - 3
    silent = "self_attn.out_proj" if pe != "rope" else "linear1"
    assert count["silent_layers"] == [f"encoder.layers.{i}.{silent}" for i in range(3)]
    # corrected: every layer in the denominator was measured (RoPE's linear1 through a
    # tensor hook on its output; torch's out_proj never runs, so it is not in it).
    skip = analyse_gradients(model, [(x, y)], num_batches=1, low=LOW, high=HIGH,
                             silent="skip", progress=False)
    assert skip["silent"] == 0 and skip["silent_layers"] == []
    assert skip["layers"] == len(skip["per_layer"]) == (41 if pe == "rope" else 32)
    assert all(r["output_norm"] > 0 for r in skip["per_layer"])


def test_rope_linear1_is_measured_through_its_in_place_relu():
    """corrected measures linear1 under the in-place ReLU exactly as without it."""
    from gradattn.models.gradattn import RopeEncoderLayer

    torch.manual_seed(0)
    layer = RopeEncoderLayer(dim=16, heads=2, ff_dim=8, dropout=0.0)
    out_of_place = copy.deepcopy(layer)
    out_of_place.activation = nn.ReLU()
    x = torch.randn(3, 5, 16)
    norms = [analyse_gradients(m, [(x, None)], num_batches=1, low=LOW, high=HIGH,
                               loss_fn=sum_loss, progress=False)["per_layer"]
             for m in (layer, out_of_place)]
    assert norms[0] == norms[1]
    assert {r["layer"] for r in norms[0]} >= {"linear1", "linear2", "self_attn.w_q"}


BACKBONE_CONVS = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3, 4) for b in (0, 1)
                              for c in (1, 2)]


@pytest.mark.parametrize("name, alive", [("gradattn", BACKBONE_CONVS[:9]), ("noskip18", [])])
def test_a_layer_killed_on_purpose_is_reported_dead_and_healthy_ones_are_not(name, alive):
    # layer3's last batch norm turned into a constant -1: its ReLU never fires, so nothing
    # reaches layer3's convs (no skip carries a gradient around them). layer4 then sees an
    # all-zero input: its batch norms map that constant to their bias, 0, where the ReLU's
    # gradient is 0 too, so layer4 is dead as well (the pattern seen on CIFAR-10, 8 of 16
    # convs). In GradAttn the stem and layers 1-2 still learn through their taps; in noskip18,
    # whose head sees layer4 only, nothing of the backbone does.
    torch.manual_seed(0)
    model = build_model(name, num_classes=4, in_channels=3, stem="small")
    with torch.no_grad():
        model.layer3[1].bn2.weight.zero_()
        model.layer3[1].bn2.bias.fill_(-1.0)
    batches = [(torch.randn(8, 3, 16, 16), torch.arange(8) % 4)] * 2
    result = analyse_gradients(model, batches, num_batches=2, low=LOW, high=HIGH,
                               progress=False)
    dead = [n for n in BACKBONE_CONVS if n not in alive]
    assert result["dead_layers"] == dead and result["dead"] == len(dead)
    per = {r["layer"]: r for r in result["per_layer"]}
    assert {per[n]["status"] for n in dead} == {"dead"}
    assert all(per[n]["output_norm"] == 0.0 == per[n]["parameter_norm"] for n in dead)
    assert {per[n]["status"] for n in alive} <= {"healthy"}
    assert result["vanishing"] >= len(dead)  # dead layers are vanishing too (the paper's)
    # The stage whose output ReLU never fired, and the healthy ones.
    assert result["relu"]["layer3"]["output_fraction"] == 1.0
    assert result["relu"]["layer4"]["fraction"] == 1.0
    assert result["relu"]["layer2"]["output_fraction"] < 1.0
    assert set(result["relu"]) == {"stem", "layer1", "layer2", "layer3", "layer4"}


def test_an_untouched_model_has_no_dead_layer():
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, in_channels=3, stem="small")
    batches = [(torch.randn(8, 3, 16, 16), torch.arange(8) % 4)]
    result = analyse_gradients(model, batches, num_batches=1, low=LOW, high=HIGH,
                               progress=False)
    assert result["dead"] == 0 and result["dead_layers"] == []
    # ResNet-18's blocks call their ReLU twice: after bn1 and after the sum.
    assert result["relu"]["layer1"]["channels"] == 2 * 2 * 64
    assert 0.0 <= result["relu"]["layer4"]["fraction"] < 1.0
