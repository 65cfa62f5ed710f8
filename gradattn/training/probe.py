"""The layers gradient analysis looks at, and the cheap per-epoch probe training uses.

Kept apart from gradattn.analysis.gradients so that the train stage, which records the probe every
epoch, does not depend on (and re-run for) changes to the full analysis.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# The notebooks' analyser (cell 2) hooks every nn.Conv2d, nn.Linear and
# nn.TransformerEncoderLayer; so do we. Their RoPE layer, like ours, is none of these.
ENCODER_TYPES = (nn.TransformerEncoderLayer,)


def layer_type(module: nn.Module) -> str | None:
    """'conv', 'linear' or 'encoder' for an analysed layer, None for anything else."""
    if isinstance(module, ENCODER_TYPES):
        return "encoder"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def analysed_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every conv, linear and torch encoder layer, in module order: the
    modules the notebooks' analyser hooks (cell 2)."""
    return [(name, m) for name, m in model.named_modules() if layer_type(m) is not None]


def norm_of(tensors: list[Tensor]) -> Tensor:
    """L2 norm of several tensors taken together, as one float32 scalar."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float())
                                                 for t in tensors]))


def parameter_grad_norms(model: nn.Module) -> dict[str, float]:
    """Per-layer L2 norm of the `.grad` already present (the last backward's); layers with
    no gradient are left out. One device sync in all, so it is cheap enough for every epoch."""
    names, norms = [], []
    for name, module in analysed_layers(model):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if grads:
            names.append(name)
            norms.append(norm_of(grads))
    values = torch.stack(norms).tolist() if norms else []
    return dict(zip(names, values, strict=True))


def split_grad_history(history: list[dict]) -> tuple[list[dict], list[dict]]:
    """History rows without their "grad_norms", and those norms as flat rows
    {epoch, layer, norm} (DVC plots and pandas want flat rows)."""
    rows, grads = [], []
    for row in history:
        row = dict(row)
        for layer, norm in (row.pop("grad_norms", None) or {}).items():
            grads.append({"epoch": row["epoch"], "layer": layer, "norm": norm})
        rows.append(row)
    return rows, grads
