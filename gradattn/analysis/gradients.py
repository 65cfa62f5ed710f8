"""Per-layer gradient norms and the paper's Gradient Health Score (GHS, §4.4, Table 5).

A *layer* is every nn.Conv2d, nn.Linear and nn.TransformerEncoderLayer, named by its module
path (`conv1`, `layer3.0.conv2`, `encoder.layers.1`, `head`, ...), in module order: the
modules the notebooks' analyser (cell 2) hooks. Encoder layers are analysed as a whole *and*
through the linear layers inside them, again as the notebooks do.

Which layers count (`silent`, docs/deviations.md row 20): some hooked layers never report a
gradient in the notebooks: torch's attention uses `self_attn.out_proj`'s weight without
calling the module, and the RoPE layer's in-place ReLU on linear1's output drops linear1's
legacy backward hook. `skip` (corrected) leaves a layer out of the GHS denominator when it
was never called, and measures every called layer through a tensor hook on its output;
`count` (the notebooks) keeps every hooked layer in the denominator and counts one whose
legacy `register_backward_hook` (theirs) never fired as silent, i.e. unhealthy.

Two norms per layer, each the mean over the analysed batches of one batch's L2 (Frobenius)
norm of the gradient of the mean cross-entropy:
  output     w.r.t. the layer's output (the notebooks' choice);
  parameter  w.r.t. the layer's parameters (all of them, for an encoder layer).
GHS = healthy / analysed layers, with the notebooks' strict tests: vanishing when
norm < low, exploding when norm > high, healthy when low < norm < high. (A norm exactly on
a bound is unhealthy but neither, as in the notebooks; a NaN norm likewise.)

Dead layers: a layer whose output and parameter gradients are exactly zero on every analysed
batch receives no learning signal at all; it is counted `vanishing` (the paper's definition,
norm < low) and reported as `dead` besides, with status "dead". In a skip-free backbone this
happens when a stage's last ReLU never fires: nothing reaches the layers before it.
`relu` reports, per backbone stage (stem, layer1..layer4), the share of ReLU output channels
that never fired (no positive value at any position of any analysed image), over all of the
stage's ReLU calls and at its output (the last call, what the next stage and GradAttn's tap
see).

`analyse_gradients` runs in train mode (batch-norm batch statistics, dropout on), as the
notebooks do, and leaves the model exactly as it found it: weights, buffers (batch-norm
running statistics), `.grad`, each module's train/eval mode, hooks and torch's global RNG.
`parameter_grad_norms` is the cheap train-time probe for `fit(grad_probe=...)`.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from gradattn.core.device import exact_fp32
from gradattn.training.probe import (  # noqa: F401  (re-exported: the analysis' public names)
    ENCODER_TYPES,
    analysed_layers,
    layer_type,
    norm_of,
    parameter_grad_norms,
    split_grad_history,
)

NORM_KINDS = ("output", "parameter")
SILENT_KINDS = ("skip", "count")


# --- Gradient Health Score ---------------------------------------------------------------

def layer_status(norm: float, low: float, high: float) -> str:
    """The notebooks' strict tests; 'unhealthy' for a norm on a bound or NaN."""
    if norm < low:
        return "vanishing"
    if norm > high:
        return "exploding"
    if low < norm < high:
        return "healthy"
    return "unhealthy"


def gradient_health(norms: dict[str, float], low: float, high: float, *,
                    silent: int = 0) -> dict:
    """GHS, counts and the statistics of Table 5 over per-layer norms; `silent` more layers
    count in the denominator (unhealthy, no norm)."""
    values = list(norms.values())
    status = [layer_status(v, low, high) for v in values]
    n = len(values)
    total = n + silent
    mean = sum(values) / n if n else math.nan
    return {
        "ghs": status.count("healthy") / total if total else math.nan,
        "vanishing": status.count("vanishing"),
        "exploding": status.count("exploding"),
        "layers": total,
        "silent": silent,
        "norm_mean": mean,
        "norm_min": min(values) if n else math.nan,
        "norm_max": max(values) if n else math.nan,
        # Population std (numpy's default), as the notebooks' np.std.
        "norm_std": math.sqrt(sum((v - mean) ** 2 for v in values) / n) if n else math.nan,
    }


# --- Measuring ----------------------------------------------------------------------------

# The backbone's ReLUs: the stem's and each block's (torchvision's names, kept by the
# skip-free backbone); not those inside attention gates or the encoder.
_BACKBONE_RELU = re.compile(r"^(relu|layer[1-4]\.\d+\.relu)$")


def backbone_relus(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.ReLU) and _BACKBONE_RELU.match(name)]


def _stage_of(relu_name: str) -> str:
    return "stem" if relu_name == "relu" else relu_name.split(".")[0]


def relu_summary(fired: dict[tuple[str, int], Tensor]) -> dict[str, dict]:
    """Per stage: channels over all ReLU calls, how many never fired and their share, and the
    share at the stage's output (its last call)."""
    stages: dict[str, list[tuple[str, int, Tensor]]] = {}
    for (name, call), mask in fired.items():
        stages.setdefault(_stage_of(name), []).append((name, call, mask))
    out = {}
    for stage, calls in stages.items():
        total = sum(m.numel() for _, _, m in calls)
        never = sum(int((~m).sum()) for _, _, m in calls)
        last = max(calls, key=lambda c: (c[0], c[1]))[2]  # module order = name order here
        out[stage] = {"channels": total, "never_fired": never,
                      "fraction": never / total if total else math.nan,
                      "output_fraction": float((~last).float().mean()) if last.numel() else
                      math.nan}
    return out


def _first_tensor(output) -> Tensor | None:
    """The tensor a layer hands on: itself, or the first tensor of a tuple (our encoder
    layers return (x, attention weights))."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, Tensor)), None)
    return None


@contextmanager
def _preserved(model: nn.Module):
    """Restore buffers, per-module train/eval mode and torch's RNG on exit. Parameters and
    .grad need no saving: the analysis never steps and uses autograd.grad, not backward."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    devices = [d for d in {b.device for b in model.parameters()} if d.type == "cuda"]
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for buf, saved in buffers:
                    buf.copy_(saved)
            for module, training in modes:
                module.training = training


def measure_gradient_norms(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_batches: int,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Mean per-batch output- and parameter-gradient norms of every analysed layer.

    Returns {"layers": [(name, type)] of the layers called, "output": {name: norm},
    "parameter": {name: norm}, "batches": number analysed, "unused": names never called,
    "legacy_silent": names whose legacy backward hook (the notebooks') never fired}.
    Output gradients come from tensor hooks that forward hooks
    put on each layer's output (registered before any later in-place op, so they see the
    layer's own output); parameter gradients from torch.autograd.grad, which leaves .grad
    alone. A layer called more than once per batch contributes every call, as the notebooks'.
    """
    layers = analysed_layers(model)
    out_sums = {name: 0.0 for name, _ in layers}
    out_counts = {name: 0 for name, _ in layers}
    param_sums = {name: 0.0 for name, _ in layers}
    seen: set[str] = set()
    calls: dict[str, int] = {}  # this batch's calls per layer
    batch_norms: dict[str, list[Tensor]] = {}

    def forward_hook(name: str):
        def hook(_module, _inputs, output):
            seen.add(name)
            calls[name] = calls.get(name, 0) + 1
            t = _first_tensor(output)
            if t is not None and t.requires_grad:
                # nn.Linear on a 3-D input returns a view of its 2-D result; an in-place op
                # on the view (the RoPE layer's ReLU on linear1) drops a hook on the view
                # but not one on the base, which holds the same elements.
                if t._base is not None and t._base.numel() == t.numel():
                    t = t._base
                t.register_hook(lambda g: batch_norms.setdefault(name, []).append(
                    torch.linalg.vector_norm(g.detach().float())))
        return hook

    params = [p for p in model.parameters() if p.requires_grad]
    index = {id(p): i for i, p in enumerate(params)}
    layer_params = {name: [index[id(p)] for p in m.parameters() if id(p) in index]
                    for name, m in layers}
    legacy_fired: set[str] = set()
    zero_batches = {name: 0 for name, _ in layers}  # batches with no gradient at all
    relu_fired: dict[tuple[str, int], Tensor] = {}  # (relu, call) -> channels that fired
    relu_calls: dict[str, int] = {}

    def relu_hook(name: str):
        def hook(_module, _inputs, output):
            call = relu_calls.get(name, 0)
            relu_calls[name] = call + 1
            fired = (output.detach() > 0).transpose(0, 1).reshape(output.shape[1], -1).any(1)
            key = (name, call)
            relu_fired[key] = fired if key not in relu_fired else relu_fired[key] | fired
        return hook

    def legacy_hook(name: str):
        def hook(_module, _grad_input, _grad_output):
            legacy_fired.add(name)
        return hook

    handles = [m.register_forward_hook(forward_hook(name)) for name, m in layers]
    handles += [m.register_forward_hook(relu_hook(name)) for name, m in backbone_relus(model)]
    # Deprecated (torch warns on every call), but it is what the notebooks observed with.
    handles += [m.register_backward_hook(legacy_hook(name)) for name, m in layers]
    done = 0
    try:
        with _preserved(model), torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Using a non-full backward hook")
            torch.manual_seed(seed)  # dropout masks: the same every time
            model.train()
            bar = tqdm(total=num_batches, desc="gradient norms", unit="batch", leave=False,
                       disable=None if progress else True)
            for x, y in batches:
                if done >= num_batches:
                    break
                batch_norms.clear()
                calls.clear()
                relu_calls.clear()
                loss = loss_fn(model(x), y)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                per_layer = {}
                for name, idx in layer_params.items():
                    present = [grads[i] for i in idx if grads[i] is not None]
                    per_layer[name] = norm_of(present) if present else torch.zeros(())
                # One transfer per batch for all the norms.
                names = list(per_layer)
                values = torch.stack([per_layer[n].to(loss.device) for n in names]).tolist()
                out_batch = {name: sum(torch.stack(norms).tolist())
                             for name, norms in batch_norms.items()}
                for name, value in zip(names, values, strict=True):
                    param_sums[name] += value
                    if value == 0.0 and out_batch.get(name, 0.0) == 0.0:
                        zero_batches[name] += 1
                for name, total in out_batch.items():
                    out_sums[name] += total
                # A call whose output no gradient reached counts as norm 0.
                for name, n in calls.items():
                    out_counts[name] += n
                done += 1
                bar.update()
            bar.close()
    finally:
        for handle in handles:
            handle.remove()
    if done == 0:
        raise ValueError("no batches to analyse gradients on")
    # A layer the forward pass never called has no gradient to speak of: left out.
    used = [(name, layer_type(m)) for name, m in layers if name in seen]
    return {
        "layers": used,
        "output": {name: out_sums[name] / max(out_counts[name], 1) for name, _ in used},
        "parameter": {name: param_sums[name] / done for name, _ in used},
        "batches": done,
        "unused": [name for name, _ in layers if name not in seen],
        "legacy_silent": [name for name, _ in layers if name not in legacy_fired],
        "dead": [name for name, _ in used if zero_batches[name] == done],
        "relu": relu_summary({k: v.cpu() for k, v in relu_fired.items()}),
    }


def analyse_gradients(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    num_batches: int,
    low: float,
    high: float,
    norm: str = "output",
    silent: str = "skip",
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """The gradients JSON: GHS and Table 5's statistics from the `norm` kind of norm, the
    same for the other kind under its name, and every measured layer's two norms and status.
    `silent`: skip or count (module docstring); the layers counted silent are listed."""
    if norm not in NORM_KINDS:
        raise ValueError(f"norm must be one of {', '.join(NORM_KINDS)}, got {norm!r}")
    if silent not in SILENT_KINDS:
        raise ValueError(f"silent must be one of {', '.join(SILENT_KINDS)}, got {silent!r}")
    with exact_fp32():  # on a GPU: the CPU's norms up to rounding (docs/gpu.md)
        measured = measure_gradient_norms(model, batches, num_batches, loss_fn=loss_fn,
                                          seed=seed, progress=progress)
    silent_layers = measured["legacy_silent"] if silent == "count" else []
    layers = [(name, kind) for name, kind in measured["layers"] if name not in silent_layers]
    health = {kind: gradient_health({name: measured[kind][name] for name, _ in layers},
                                    low, high, silent=len(silent_layers))
              for kind in NORM_KINDS}
    chosen = measured[norm]
    dead = [name for name in measured["dead"] if name not in silent_layers]
    return {
        **health[norm],
        "dead": len(dead),
        "ghs_norm": norm,
        "bounds": [low, high],
        "batches": measured["batches"],
        # The other kind's summary under its name (DVC shows e.g. parameter.ghs); the chosen
        # kind's is the top level.
        **{kind: health[kind] for kind in NORM_KINDS if kind != norm},
        "per_layer": [
            {
                "layer": name,
                "type": kind,
                "output_norm": measured["output"][name],
                "parameter_norm": measured["parameter"][name],
                "status": "dead" if name in dead else layer_status(chosen[name], low, high),
            }
            for name, kind in layers
        ],
        "dead_layers": dead,
        "relu": measured["relu"],
        "silent_layers": silent_layers,
        "unused_layers": measured["unused"],
    }
