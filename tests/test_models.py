"""Tests of gradattn.models: shapes, gradients, the missing skips, PE behaviour, RoPE maths,
the encoder against torch's, seeding, and every argument error."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from gradattn.core.errors import ConfigError
from gradattn.core.settings import MODEL_OPTIONS
from gradattn.models import MODELS, PE_CHOICES, build_model, count_parameters, default_options
from gradattn.models.gradattn import GradAttn, RopeEncoderLayer, TapsMean
from gradattn.models.resnet import TAP_CHANNELS, PlainBlock, SkipFreeBackbone
from gradattn.models.rope import RotaryEmbedding

# Small encoder for tests that do not need the paper's sizes (the backbone dominates anyway).
SMALL = {"dim": 32, "depth": 2, "heads": 4, "ff_dim": 64}


def _variants() -> list[tuple[str, dict]]:
    """Every model, GradAttn once per PE, with small attention sizes."""
    out = []
    for name in MODELS:
        if name == "gradattn":
            out += [(name, {"pe": pe, **SMALL}) for pe in PE_CHOICES]
        elif name == "taps_mean":
            out.append((name, {"dim": 32}))
        else:
            out.append((name, {}))
    return out


VARIANTS = _variants()
VARIANT_IDS = [f"{n}-{o.get('pe', '')}".rstrip("-") for n, o in VARIANTS]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _train_step(model: nn.Module, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    logits = model(x)
    loss = F.cross_entropy(logits, torch.arange(x.shape[0]) % num_classes)
    opt.zero_grad()
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    return logits


# --- every model trains ---------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["imagenet", "small"])
@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize(("channels", "size", "classes"), [(1, 28, 7), (3, 32, 10)])
def test_builds_and_trains_one_step(name, options, stem, channels, size, classes):
    model = build_model(name, classes, channels, stem=stem, **options)
    logits = _train_step(model, torch.randn(2, channels, size, size), classes)
    assert logits.shape == (2, classes)


@pytest.mark.parametrize("name", ["gradattn", "cbam_resnet18"])
def test_trains_on_64px(name):
    options = SMALL if name == "gradattn" else {}
    model = build_model(name, 5, 3, **options)
    assert _train_step(model, torch.randn(2, 3, 64, 64), 5).shape == (2, 5)


@torch.no_grad()
def test_gradattn_runs_at_224px_with_paper_defaults():
    model = build_model("gradattn", 200, 3).eval()
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 200)


@pytest.mark.parametrize(
    ("stem", "size", "sides"),
    [
        ("imagenet", 32, (8, 8, 4, 2, 1)),
        ("small", 32, (32, 32, 16, 8, 4)),
        ("imagenet", 28, (7, 7, 4, 2, 1)),
    ],
)
@torch.no_grad()
def test_taps_channels_and_sizes(stem, size, sides):
    taps = SkipFreeBackbone(in_channels=3, stem=stem).eval().taps(torch.randn(2, 3, size, size))
    assert [t.shape for t in taps] == [
        (2, c, s, s) for c, s in zip(TAP_CHANNELS, sides, strict=True)
    ]


def test_stem_options_change_only_the_stem():
    imagenet = build_model("resnet18", 10, 3)
    small = build_model("resnet18", 10, 3, stem="small")
    gray = build_model("resnet18", 10, 1)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert gray.conv1.in_channels == 1 and gray.conv1.kernel_size == (7, 7)
    assert isinstance(gray.maxpool, nn.MaxPool2d)


# --- no skips in the backbone ---------------------------------------------------------------


@torch.no_grad()
def test_plain_block_has_no_identity_term():
    plain = PlainBlock(in_channels=8, out_channels=8).eval()
    basic = BasicBlock(8, 8).eval()
    for block in (plain, basic):
        block.conv2.weight.zero_()  # residual branch now outputs bn2(0) = bias = 0
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(plain(x), torch.zeros_like(x))
    # The same surgery on torchvision's block leaves its skip: relu(x). So the check can fail.
    assert torch.allclose(basic(x), x.relu())
    assert not torch.allclose(basic(x), torch.zeros_like(x))


@pytest.mark.parametrize("name", ["noskip18", "taps_mean", "gradattn"])
def test_skip_free_models_have_no_downsample_and_torchvision_names(name):
    model = build_model(name, 10, 3)
    names = [n for n, _ in model.named_modules()]
    assert not any("downsample" in n for n in names)
    assert not any(isinstance(m, BasicBlock) for m in model.modules())
    assert {"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"} <= set(names)
    # A torchvision ResNet-18 has exactly the skip-free backbone's conv/BN parameters plus
    # the three downsample branches.
    resnet = {n for n, _ in build_model("resnet18", 10, 3).named_parameters()}
    backbone = {n for n, _ in model.named_parameters() if n.startswith(("conv1", "bn1", "layer"))}
    assert backbone == {n for n in resnet if "downsample" not in n and not n.startswith("fc")}


@pytest.mark.parametrize("name", ["se_resnet18", "cbam_resnet18"])
@torch.no_grad()
def test_gates_scale_the_residual_branch_before_the_addition(name):
    model = build_model(name, 10, 3).eval()
    blocks = [
        b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer
    ]
    assert len(blocks) == 8 and all(isinstance(b, BasicBlock) for b in blocks)
    block = model.layer1[0]  # 64 -> 64, no downsample: the skip is x itself
    first = block.gate.fc1 if name == "se_resnet18" else block.gate.channel.mlp[0]
    last = block.gate.fc2 if name == "se_resnet18" else block.gate.channel.mlp[2]
    assert (first.in_features, first.out_features) == (64, 64 // 16)  # reduction 16
    x = torch.randn(2, 64, 8, 8)
    assert not torch.allclose(block(x), x.relu())
    # Shut the channel gate (the MLPs have no bias to do it with): bn2 now outputs 10
    # everywhere, the MLP maps that to a large negative logit, sigmoid ~ 0.
    block.bn2.weight.zero_()
    block.bn2.bias.fill_(10.0)
    first.weight.fill_(1.0)
    last.weight.fill_(-1.0)
    assert torch.allclose(block(x), x.relu())  # the residual branch contributes nothing


@torch.no_grad()
def test_cbam_spatial_gate_uses_channel_mean_and_max():
    gate = build_model("cbam_resnet18", 10, 3).layer1[0].gate.spatial
    assert gate.conv.kernel_size == (7, 7) and gate.conv.in_channels == 2
    x = torch.randn(2, 8, 5, 5)
    gate.conv.weight.zero_()
    assert torch.allclose(gate(x), x * 0.5)
    gate.conv.weight[0, 1, 3, 3] = 50.0  # centre tap on the channel-max map: gate ~ 1 where max > 0
    expected = x * torch.sigmoid(50 * x.amax(dim=1, keepdim=True))
    assert torch.allclose(gate(x), expected, atol=1e-6)


# --- sizes ----------------------------------------------------------------------------------


# The totals the authors' notebooks print for their models (GitHub SoudeepGhoshal/GradAttn,
# "--- Model Parameters ---" in each model's cell output): (notebook, cell) -> count.
NO_PE_AS_RUN = {"dim": 32, "heads": 16, "ff_dim": 2}  # five "No PE" cells ran with these
NOTEBOOK_COUNTS = [
    ("CIFAR-10 cell 4", "resnet18", {}, 10, 3, 11_181_642),
    ("SVHN cell 10", "gradattn", {"pe": "none"}, 10, 3, 12_849_994),
    ("CIFAR-10 cell 8", "gradattn", {"pe": "learnable"}, 10, 3, 12_851_274),
    ("CIFAR-10 cell 10", "gradattn", {"pe": "rope"}, 10, 3, 12_847_690),
    ("SVHN cell 4", "se_resnet18", {}, 10, 3, 11_268_682),
    ("SVHN cell 6", "cbam_resnet18", {}, 10, 3, 11_269_466),
    ("FashionMNIST cell 8", "resnet18", {}, 10, 1, 11_175_370),
    ("FashionMNIST cell 4", "se_resnet18", {}, 10, 1, 11_262_410),
    ("FashionMNIST cell 6", "cbam_resnet18", {}, 10, 1, 11_263_194),
    ("FashionMNIST cell 14", "gradattn", {"pe": "rope"}, 10, 1, 12_841_418),
    ("Tiny-ImageNet cell 8", "gradattn", {"pe": "learnable"}, 200, 3, 12_900_104),
    ("BloodMNIST cell 7", "gradattn", {"pe": "none"}, 8, 3, 12_849_480),
    ("PAD-UFES-20 cell 10", "gradattn", {"pe": "rope"}, 6, 3, 12_846_662),
    ("PCam cell 4", "resnet18", {}, 2, 3, 11_177_538),
    ("CIFAR-10 cell 6", "gradattn", {"pe": "none", **NO_PE_AS_RUN}, 10, 3, 11_049_488),
]


@pytest.mark.parametrize(
    ("source", "name", "options", "classes", "channels", "expected"),
    NOTEBOOK_COUNTS,
    ids=[row[0] for row in NOTEBOOK_COUNTS],
)
def test_parameter_counts_match_the_notebooks(source, name, options, classes, channels, expected):
    assert count_parameters(build_model(name, classes, channels, **options)) == expected


def test_parameter_count_structure():
    resnet = count_parameters(build_model("resnet18", 10, 3))
    gradattn = count_parameters(build_model("gradattn", 10, 3))
    assert 1_400_000 < gradattn - resnet < 1_900_000  # the paper's "+1.6 M (+14 %)"
    # RoPE: no positional parameters, and q/k/v without bias: 3 layers x 3 x 256 fewer.
    rope = count_parameters(build_model("gradattn", 10, 3, pe="rope"))
    assert rope == gradattn - 5 * 256 - 3 * 3 * 256
    # SE: 2 c^2/16 per block (no biases); CBAM adds a 2x7x7 spatial conv per block.
    assert count_parameters(build_model("se_resnet18", 10, 3)) == resnet + 87_040
    assert count_parameters(build_model("cbam_resnet18", 10, 3)) == resnet + 87_040 + 8 * 98


def test_gate_mlps_and_rope_qkv_have_no_bias():
    for name in ("se_resnet18", "cbam_resnet18"):
        gates = [m for m in build_model(name, 10, 3).modules() if isinstance(m, nn.Linear)]
        gates = gates[:-1]  # the last Linear is the classifier, fc
        assert len(gates) == 16 and all(g.bias is None for g in gates)
    for pe in PE_CHOICES:
        model = build_model("gradattn", 10, 3, pe=pe, **SMALL)
        for layer in model.encoder.layers:
            attn = layer.self_attn
            if pe == "rope":  # the notebooks' RoPE attention: q/k/v without bias, w_o with
                assert all(w.bias is None for w in (attn.w_q, attn.w_k, attn.w_v))
                assert attn.w_o.bias is not None
            else:  # torch's layer, q/k/v biases included (CIFAR-10 cells 6, 8)
                assert isinstance(layer, nn.TransformerEncoderLayer)
                assert attn.in_proj_bias is not None and attn.out_proj.bias is not None


def _assert_default_uniform(weight: torch.Tensor) -> None:
    """PyTorch's default for Conv2d/Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(weight[0].numel())
    assert weight.abs().max() <= bound
    assert abs(weight.std().item() - bound / math.sqrt(3)) < 0.03 * bound


@pytest.mark.parametrize("name", ["resnet18", "gradattn", "noskip18"])
def test_backbone_starts_from_pytorch_default_init(name):
    """As the notebooks build ResNet-18 and GradAttn (torchvision's Kaiming-normal fails this)."""
    model = build_model(name, 10, 3)
    for conv in (model.conv1, model.layer2[0].conv1, model.layer4[1].conv2):
        _assert_default_uniform(conv.weight.detach())
    assert torch.equal(model.bn1.weight, torch.ones(64))


@pytest.mark.parametrize("name", ["se_resnet18", "cbam_resnet18"])
def test_se_and_cbam_start_from_their_notebooks_init(name):
    """Their notebooks: Kaiming-normal (fan_out) convs, Linear N(0, 0.01) with zero bias."""
    model = build_model(name, 10, 3)
    conv = model.layer4[1].conv2.weight.detach()  # fan_out 512 * 9
    assert abs(conv.std().item() / math.sqrt(2 / (512 * 9)) - 1) < 0.03
    assert abs(model.fc.weight.std().item() / 0.01 - 1) < 0.05
    assert torch.equal(model.fc.bias, torch.zeros(10))
    gate = model.layer4[1].gate
    if name == "se_resnet18":
        assert abs(gate.fc1.weight.std().item() / 0.01 - 1) < 0.05
    else:  # their shared MLP is 1x1 convs: Kaiming, fan_out = its output width
        w = gate.channel.mlp[2].weight.detach()  # (512, 32)
        assert abs(w.std().item() / math.sqrt(2 / 512) - 1) < 0.05


def test_attention_init_follows_its_source():
    """none/learnable: nn.MultiheadAttention's xavier in-projection with zero biases;
    rope: the notebooks' plain nn.Linear projections (default init, bias on out_proj)."""
    torch_like = build_model("gradattn", 10, 3, pe="none").encoder.layers[0].self_attn
    rope = build_model("gradattn", 10, 3, pe="rope").encoder.layers[0].self_attn
    assert torch_like.in_proj_weight.abs().max() > 1 / 16  # xavier bound sqrt(6/1024) > 1/16
    assert not torch_like.in_proj_bias.any() and not torch_like.out_proj.bias.any()
    for w in (rope.w_q, rope.w_k, rope.w_v, rope.w_o):
        _assert_default_uniform(w.weight.detach())
    assert rope.w_o.bias.abs().min() > 0


def test_rope_layer_has_torch_parameter_count_less_the_qkv_biases():
    ours = RopeEncoderLayer(dim=256, heads=8, ff_dim=512)
    torch_layer = nn.TransformerEncoderLayer(256, 8, 512)
    assert count_parameters(torch_layer) == 527_104
    assert count_parameters(ours) == 527_104 - 3 * 256


# --- positional encoding --------------------------------------------------------------------


@pytest.mark.parametrize("pe", PE_CHOICES)
@torch.no_grad()
def test_token_permutation(pe):
    model = build_model("gradattn", 10, 3, pe=pe, **SMALL).eval()
    tokens = model.tokens(torch.randn(3, 3, 32, 32))
    assert tokens.shape == (3, 5, SMALL["dim"])
    shifted = tokens[:, [1, 2, 3, 4, 0]]
    same = torch.allclose(model.classify_tokens(tokens), model.classify_tokens(shifted), atol=1e-5)
    assert same == (pe == "none")  # only the position-free model is order-blind


@torch.no_grad()
def test_taps_mean_is_order_blind_and_has_no_attention():
    model = build_model("taps_mean", 10, 3, dim=32).eval()
    assert isinstance(model, TapsMean)
    attention = nn.MultiheadAttention | nn.TransformerEncoderLayer | RopeEncoderLayer
    assert not any(isinstance(m, attention) for m in model.modules())
    tokens = model.tokens(torch.randn(2, 3, 32, 32))
    assert torch.allclose(model.classify_tokens(tokens), model.classify_tokens(tokens.flip(1)))
    assert torch.allclose(
        model(torch.zeros(2, 3, 32, 32)),
        model.head(model.tokens(torch.zeros(2, 3, 32, 32)).mean(1)),
    )


def test_learnable_pe_is_standard_normal_parameter():
    model = build_model("gradattn", 10, 3, pe="learnable")
    assert isinstance(model.pos, nn.Parameter) and model.pos.shape == (1, 5, 256)
    assert abs(model.pos.std().item() - 1) < 0.1 and abs(model.pos.mean().item()) < 0.1
    assert build_model("gradattn", 10, 3, pe="none", **SMALL).pos is None


def _score(rope: RotaryEmbedding, q, k, m: int, n: int) -> torch.Tensor:
    qm = rope(q[None], positions=torch.tensor([m]))[0]
    kn = rope(k[None], positions=torch.tensor([n]))[0]
    return qm @ kn


def test_rope_depends_only_on_relative_offset():
    rope = RotaryEmbedding(head_dim=8)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    rope = rope.double()
    for m, n in [(0, 3), (4, 1), (2, 2)]:
        for s in (1, 5, 17):
            assert torch.allclose(_score(rope, q, k, m, n), _score(rope, q, k, m + s, n + s))
    # ...and it does depend on the offset (a no-op "rope" would pass the line above).
    assert not torch.allclose(_score(rope, q, k, 0, 1), _score(rope, q, k, 0, 2))
    assert not torch.allclose(_score(rope, q, k, 0, 1), _score(rope, q, k, 1, 0))


def test_rope_position_zero_is_identity_and_rotation_is_rotate_half_with_base_10000():
    rope = RotaryEmbedding(head_dim=4)
    x = torch.randn(2, 3, 5, 4)  # (B, H, T, hd)
    out = rope(x)
    assert torch.allclose(out[..., 0, :], x[..., 0, :])
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths
    # Position 3, pair i = (x[i], x[i + hd/2]) turned by 3 * 10000^(-2i/hd).
    for i, theta in enumerate([3.0, 3.0 / 100.0]):
        a, b = x[..., 3, i], x[..., 3, i + 2]
        c, s = math.cos(theta), math.sin(theta)
        assert torch.allclose(out[..., 3, i], a * c - b * s, atol=1e-6)
        assert torch.allclose(out[..., 3, i + 2], b * c + a * s, atol=1e-6)


def test_rope_is_applied_in_every_layer_and_adds_no_parameters():
    model = build_model("gradattn", 10, 3, pe="rope", **SMALL)
    layers = model.encoder.layers
    assert len(layers) == SMALL["depth"]
    assert all(isinstance(layer.self_attn.rope, RotaryEmbedding) for layer in layers)
    assert not any("rope" in n for n, _ in model.named_parameters())
    assert not any("rope" in n for n in model.state_dict())


# --- attention weights and the encoder ------------------------------------------------------


@pytest.mark.parametrize("pe", PE_CHOICES)
@torch.no_grad()
def test_return_attention(pe):
    model = build_model("gradattn", 10, 3, pe=pe, **SMALL).eval()
    x = torch.randn(3, 3, 32, 32)
    logits = model(x)
    assert isinstance(logits, torch.Tensor)
    logits2, attn = model(x, return_attention=True)
    assert torch.allclose(logits, logits2, atol=1e-5)
    assert attn.shape == (SMALL["depth"], 3, 5, 5)
    assert torch.allclose(attn.sum(-1), torch.ones(SMALL["depth"], 3, 5))
    assert (attn >= 0).all()


def _notebooks_rope_layer(layer: RopeEncoderLayer, src: torch.Tensor) -> torch.Tensor:
    """TransformerEncoderLayerWithRoPE.forward and MultiHeadAttentionWithRoPE.forward of the
    notebooks (CIFAR-10 cell 10), written out, in eval mode, reading `layer`'s weights."""
    a = layer.self_attn
    B, T, D = src.shape
    H = a.heads
    dk = D // H
    Q = a.w_q(src).view(B, T, H, dk)
    K = a.w_k(src).view(B, T, H, dk)
    V = a.w_v(src).view(B, T, H, dk)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dk, 2).float() / dk))
    freqs = torch.einsum("i,j->ij", torch.arange(T).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=x1.ndim - 1)

    Q, K = Q * cos + rotate_half(Q) * sin, K * cos + rotate_half(K) * sin
    Q, K, V = Q.transpose(1, 2), K.transpose(1, 2), V.transpose(1, 2)
    weights = torch.softmax(Q @ K.transpose(-2, -1) / math.sqrt(dk), dim=-1)
    attn = a.w_o((weights @ V).transpose(1, 2).contiguous().view(B, T, D))
    src = layer.norm1(src + attn)
    return layer.norm2(src + layer.linear2(torch.relu(layer.linear1(src))))


@torch.no_grad()
def test_rope_layer_computes_the_notebooks_layer():
    torch.manual_seed(0)
    layer = RopeEncoderLayer(dim=32, heads=4, ff_dim=48, dropout=0.1).eval()
    for norm in (layer.norm1, layer.norm2):  # LayerNorm starts at 1/0: make it matter
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, 5, 32)
    assert torch.allclose(layer(x), _notebooks_rope_layer(layer, x), atol=1e-5)
    assert isinstance(layer.activation, nn.ReLU) and layer.activation.inplace
    assert not isinstance(layer, nn.TransformerEncoderLayer)  # as theirs: not hooked whole


@pytest.mark.parametrize("pe", ["none", "rope"])
@torch.no_grad()
def test_returned_attention_is_each_layers_softmax(pe):
    model = build_model("gradattn", 10, 3, pe=pe, **SMALL).eval()
    tokens = model.tokens(torch.randn(2, 3, 32, 32))
    _, attn = model.classify_tokens(tokens, return_attention=True)
    layer = model.encoder.layers[0]
    if pe == "rope":
        a = layer.self_attn
        q = a.rope(a.w_q(tokens).view(2, 5, 4, 8).transpose(1, 2))
        k = a.rope(a.w_k(tokens).view(2, 5, 4, 8).transpose(1, 2))
        expected = (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1).mean(1)
    else:
        expected = layer.self_attn(tokens, tokens, tokens, need_weights=True)[1]
    assert torch.allclose(attn[0], expected, atol=1e-6)


def test_encoder_dropout_is_active_in_training_only():
    model = build_model("gradattn", 10, 3, pe="none", dropout=0.5, **SMALL)
    tokens = torch.randn(2, 5, SMALL["dim"])
    model.train()
    assert not torch.allclose(model.classify_tokens(tokens), model.classify_tokens(tokens))
    model.eval()
    assert torch.equal(model.classify_tokens(tokens), model.classify_tokens(tokens))


# --- seeding and options --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "options"), VARIANTS, ids=VARIANT_IDS)
def test_seed_determines_weights(name, options):
    def build(seed):
        torch.manual_seed(seed)
        return build_model(name, 10, 3, **options).state_dict()

    a, b, c = build(1), build(1), build(2)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_default_options():
    # Their one home is gradattn.core.settings.MODEL_OPTIONS (params.yaml holds the same
    # values: tests/test_config.py); the paper's sizes are pinned by the parameter counts above.
    assert all(default_options(n)["stem"] == "imagenet" for n in MODELS)
    for name in MODELS:
        assert default_options(name) == MODEL_OPTIONS[name]
    for name in ("resnet18", "se_resnet18", "cbam_resnet18", "noskip18"):
        assert default_options(name) == {"stem": "imagenet"}
    default_options("gradattn")["dim"] = 1  # a fresh dict each call
    assert default_options("gradattn") == MODEL_OPTIONS["gradattn"]


CHANGED = {
    "stem": "small",
    "pe": "rope",
    "dim": 64,
    "depth": 1,
    "heads": 2,
    "ff_dim": 96,
    "dropout": 0.3,
    "norm_first": True,
}


@pytest.mark.parametrize("name", ["gradattn", "taps_mean"])
def test_every_listed_option_changes_the_model(name):
    """default_options must list only what build_model uses: each option changes the model."""
    base = {
        **default_options(name),
        **({"dim": 32, "heads": 4, "ff_dim": 48} if name == "gradattn" else {"dim": 32}),
    }
    def describe(model):  # torch's attention layers leave heads and norm_first out of repr
        return repr(model) + repr([(getattr(m, "num_heads", None), getattr(m, "norm_first", None))
                                   for m in model.modules()])

    reference = describe(build_model(name, 10, 3, **base))
    for key in default_options(name):
        assert describe(build_model(name, 10, 3, **{**base, key: CHANGED[key]})) != reference, key


def test_model_classes():
    assert isinstance(build_model("gradattn", 10, 3, **SMALL), GradAttn)
    assert type(build_model("resnet18", 10, 3)).__name__ == "ResNet"


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "options", "match"),
    [
        (
            ("resnet19", 10, 3),
            {},
            r"unknown model 'resnet19'; choose one of: resnet18, gradattn, "
            r"se_resnet18, cbam_resnet18, noskip18, taps_mean",
        ),
        (
            ("resnet18", 10, 3),
            {"pe": "rope"},
            r"unknown option 'pe' for model 'resnet18'; "
            r"choose from: stem$",
        ),
        (
            ("gradattn", 10, 3),
            {"heads_": 8},
            r"unknown option 'heads_'.*choose from: stem, pe, dim",
        ),
        (
            ("gradattn", 10, 3),
            {"pe": "sinusoidal"},
            r"unknown pe 'sinusoidal'; choose one of: none, "
            r"learnable, rope",
        ),
        (
            ("noskip18", 10, 3),
            {"stem": "tiny"},
            r"unknown stem 'tiny'; choose one of: imagenet, small",
        ),
        (("gradattn", 10, 3), {"stem": "cifar"}, r"unknown stem 'cifar'; choose one of: imagenet"),
        (("gradattn", 10, 3), {"dim": 250}, r"dim 250 is not divisible by heads 8"),
        (
            ("gradattn", 10, 3),
            {"dim": 24, "heads": 8, "pe": "rope"},
            r"even head size.*24 / heads 8 = 3.*pe one of: none, learnable",
        ),
        (("gradattn", 10, 3), {"depth": 0}, r"depth must be an integer >= 1, got 0"),
        (("taps_mean", 10, 3), {"dim": 2.5}, r"dim must be an integer >= 1, got 2.5"),
        (("gradattn", 10, 3), {"dropout": 1.0}, r"dropout must be a number in \[0, 1\), got 1.0"),
        (("gradattn", 10, 3), {"norm_first": "yes"}, r"norm_first must be one of: true, false"),
        (("resnet18", 1, 3), {}, r"num_classes must be an integer >= 2, got 1"),
        (("gradattn", 10, 2), {}, r"in_channels 2 not supported; choose one of: 1, 3"),
        (("cbam_resnet18", 10, 4), {}, r"in_channels 4 not supported; choose one of: 1, 3"),
    ],
)
def test_bad_arguments_raise_value_error(args, options, match):
    with pytest.raises(ValueError, match=match) as info:
        build_model(*args, **options)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ConfigError)


def test_default_options_unknown_model():
    with pytest.raises(ValueError, match=r"unknown model 'vit'; choose one of: resnet18, "):
        default_options("vit")


def test_odd_rope_head_size_fails_in_the_module_too():
    with pytest.raises(ValueError, match="even head size"):
        GradAttn(**{**default_options("gradattn"), "dim": 24, "heads": 8, "pe": "rope"},
                 num_classes=10, in_channels=3)
    with pytest.raises(ValueError, match="even head size"):
        RotaryEmbedding(head_dim=3)
