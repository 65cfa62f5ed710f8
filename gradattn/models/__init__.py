"""The models of the study, built by name: `build_model(name, num_classes, in_channels, **options)`.

- `resnet18`: torchvision's ResNet-18, the baseline.
- `gradattn`: the paper's model (skip-free backbone, five taps, transformer encoder), with
  positional encoding `pe` one of PE_CHOICES.
- `se_resnet18`, `cbam_resnet18`: attention-augmented ResNet-18 baselines.
- `noskip18`: control, the skip-free backbone with a plain pooled head (no taps, no attention).
- `taps_mean`: control, skip-free backbone + the five projected taps averaged (no attention).

`default_options(name)` lists exactly the options a model depends on, so the pipeline can
tell which params a model's stages must re-run for. Every bad argument raises
`gradattn.core.errors.ConfigError` (a ValueError) with a one-line message naming the bad value
and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from gradattn.core.errors import ConfigError
from gradattn.core.settings import (
    MODELS,
    PE_CHOICES,
    STEMS,
    check_model_name,
    check_model_options,
    default_options,
)
from gradattn.models.attention import cbam_resnet18, se_resnet18
from gradattn.models.gradattn import GradAttn, TapsMean
from gradattn.models.resnet import NoSkipResNet18, resnet18

__all__ = [
    "IN_CHANNELS",
    "MODELS",
    "PE_CHOICES",
    "STEMS",
    "build_model",
    "count_parameters",
    "default_options",
]

IN_CHANNELS = (1, 3)

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "gradattn": GradAttn,
    "se_resnet18": se_resnet18,
    "cbam_resnet18": cbam_resnet18,
    "noskip18": NoSkipResNet18,
    "taps_mean": TapsMean,
}


def build_model(name: str, num_classes: int, in_channels: int, **options: Any) -> nn.Module:
    """A freshly initialised model (uses torch's global RNG: seed first for reproducibility).

    Works for square or rectangular inputs of 28-224 px with `in_channels` channels; use
    stem="small" for 28-32 px images to keep resolution (the paper keeps "imagenet").
    """
    check_model_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if in_channels not in IN_CHANNELS or isinstance(in_channels, bool):
        raise ConfigError(
            f"in_channels {in_channels!r} not supported; choose one of: "
            f"{', '.join(map(str, IN_CHANNELS))}"
        )
    merged = check_model_options(name, options)
    return _BUILDERS[name](num_classes=num_classes, in_channels=in_channels, **merged)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
