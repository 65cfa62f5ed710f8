"""Display names of models, the same in every table and figure."""

from __future__ import annotations

MODEL_NAMES = {
    "resnet18": "ResNet-18",
    "gradattn": "GradAttn",
    "se_resnet18": "SE-ResNet-18",
    "cbam_resnet18": "CBAM-ResNet-18",
    "noskip18": "No-skip ResNet-18",
    "taps_mean": "Taps mean",
}
PE_NAMES = {"none": "no PE", "learnable": "learnable PE", "rope": "RoPE"}


def model_label(model: str, options: dict | None = None) -> str:
    """'ResNet-18', 'GradAttn (learnable PE)', ..."""
    name = MODEL_NAMES.get(model, model)
    if model == "gradattn" and options and options.get("pe"):
        name += f" ({PE_NAMES.get(options['pe'], options['pe'])})"
    return name
