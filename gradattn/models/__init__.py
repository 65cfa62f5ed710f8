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
    MODEL_OPTIONS,
    MODELS,
    PE_CHOICES,
    STEMS,
    check_model_name,
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
_POSITIVE_INTS = ("dim", "depth", "heads", "ff_dim")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_options(name: str, options: dict[str, Any]) -> None:
    allowed = MODEL_OPTIONS[name]
    for key in options:
        if key not in allowed:
            raise ConfigError(
                f"unknown option {key!r} for model {name!r}; choose from: {', '.join(allowed)}"
            )
    if options["stem"] not in STEMS:
        raise ConfigError(f"unknown stem {options['stem']!r}; choose one of: {', '.join(STEMS)}")
    for key in _POSITIVE_INTS:
        if key in options and not (_is_int(options[key]) and options[key] >= 1):
            raise ConfigError(f"{key} must be an integer >= 1, got {options[key]!r}")
    if "dropout" in options:
        p = options["dropout"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ConfigError(f"dropout must be a number in [0, 1), got {p!r}")
    if "norm_first" in options and not isinstance(options["norm_first"], bool):
        raise ConfigError(f"norm_first must be one of: true, false; got {options['norm_first']!r}")
    # dim / heads / pe together: GradAttn checks them itself, first thing in its constructor
    # (check_attention_shape), so a build checks them once.


def build_model(name: str, num_classes: int, in_channels: int, **options: Any) -> nn.Module:
    """A freshly initialised model (uses torch's global RNG: seed first for reproducibility).

    Works for square or rectangular inputs of 28-224 px with `in_channels` channels; use
    stem="small" for 28-32 px images to keep resolution (the paper keeps "imagenet").
    """
    check_model_name(name)
    if not _is_int(num_classes) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if in_channels not in IN_CHANNELS or isinstance(in_channels, bool):
        raise ConfigError(
            f"in_channels {in_channels!r} not supported; choose one of: "
            f"{', '.join(map(str, IN_CHANNELS))}"
        )
    merged = {**MODEL_OPTIONS[name], **options}
    _check_options(name, merged)
    return _BUILDERS[name](num_classes=num_classes, in_channels=in_channels, **merged)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
