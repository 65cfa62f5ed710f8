"""A trained model's file: what the train stage saves, what evaluate and gradients load back
(built from the options it was trained with), and running it over a split."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gradattn.core import paths, torchfile
from gradattn.core.errors import GradattnError, first_line
from gradattn.core.io import restore_hint
from gradattn.models import build_model


@torch.no_grad()
def predict(model: nn.Module, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and labels (N,) of a whole split (a gradattn.prepared Batches), in eval
    mode, on the CPU."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in batches.epoch():
        logits.append(model(x).float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def save_trained(path: Path, model: nn.Module, run_config: dict, meta: dict, **extra) -> None:
    """`run_config`: the run's configuration as a plain dict (RunConfig.as_dict())."""
    state = {
        "model": run_config["model"],
        "options": run_config["model_options"],
        "num_classes": meta["num_classes"],
        "in_channels": meta["channels"],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "run_config": run_config,
        "dataset_meta": meta,
        **extra,
    }
    torchfile.save(path, state)


def load_trained(dataset: str, model: str, device="cpu") -> tuple[nn.Module, dict]:
    """The trained model (eval mode) and its saved record."""
    path = paths.model_file(dataset, model)
    if not path.exists():
        raise GradattnError(f"{path} not found: run `dvc repro train@{dataset}-{model}` first")
    remedy = restore_hint(path, f"train@{dataset}-{model}")
    record = torchfile.require_keys(
        path, torchfile.load(path, remedy=remedy),
        {"model", "options", "num_classes", "in_channels", "state_dict", "run_config"}, remedy)
    try:
        net = build_model(
            record["model"],
            num_classes=record["num_classes"],
            in_channels=record["in_channels"],
            **record["options"],
        )
        net.load_state_dict(record["state_dict"])
    except (ValueError, TypeError, RuntimeError) as err:  # made by another version of the code
        raise torchfile.UnreadableFileError(
            path, f"its weights do not fit model {record['model']!r} ({first_line(err)})",
            remedy) from None
    return net.to(device).eval(), record
