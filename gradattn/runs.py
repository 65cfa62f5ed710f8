"""One training run's artefacts: building its model and data, saving and loading the result."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from gradattn import paths, torchfile
from gradattn.data import load_meta, load_split
from gradattn.data.batches import Batches
from gradattn.errors import GradattnError, first_line
from gradattn.io import read_json, write_json
from gradattn.models import build_model
from gradattn.settings import TrainConfig, load_resolved, read_recipe

RUN_STAGES = ("train", "evaluate", "gradients")


def load_run_config(dataset: str, model: str) -> dict:
    """Everything one training run depends on, and nothing else: the recipe and the train
    section with every `auto` resolved for this dataset, and the model's own options (from
    configs/models/<model>.json, which `configure` resolves; see dvc.yaml). Whether the
    notebooks' preprocessing defect applies is the dataset's (meta.json)."""
    path = paths.model_config(model)
    if not path.exists():
        raise GradattnError(f"{path} not found: run `dvc repro configure` (or `dvc repro`) first")
    return {
        "recipe": read_recipe(),
        "dataset": dataset,
        "model": model,
        "model_options": read_json(path)["options"],
        "train": asdict(load_resolved("train", dataset)),
    }


def run_record_file(dataset: str, model: str, stage: str) -> Path:
    """metrics/<dataset>/<model>.<stage>.run.json: what `stage` (train, evaluate, gradients)
    ran with, every setting resolved (never `auto`), beside the recipe."""
    if stage not in RUN_STAGES:
        raise ValueError(f"stage must be one of {', '.join(RUN_STAGES)}, got {stage!r}")
    return paths.METRICS / dataset / f"{model}.{stage}.run.json"


def write_run_record(dataset: str, model: str, stage: str, recipe: str, settings: dict,
                     **extra) -> dict:
    """Write (and return) a stage's run record: {recipe, dataset, model, <stage>: settings,
    **extra}."""
    record = {"recipe": recipe, "dataset": dataset, "model": model, stage: settings, **extra}
    write_json(run_record_file(dataset, model, stage), record)
    return record


def run_id(run_config: dict, meta: dict) -> str:
    """Identifies a run's configuration and data, so a checkpoint is only resumed by its own run."""
    blob = json.dumps({"config": run_config, "data": meta}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def make_batches(
    dataset: str,
    split: str,
    meta: dict,
    *,
    batch_size: int,
    device,
    train: bool = False,
    legacy: bool = False,
    root: Path = paths.PREPARED,
) -> Batches:
    images, labels = load_split(dataset, split, root)
    augment = meta.get("augment", "none") if train else "none"
    return Batches(
        images,
        labels,
        meta,
        batch_size=batch_size,
        device=device,
        shuffle=train,
        augment=augment,
        legacy_defect=train and legacy,
    )


def uses_legacy_defect(meta: dict) -> bool:
    """The notebooks' double normalisation on this dataset's training batches, as configure
    resolved data.legacy_preprocessing for the recipe and dataset (meta.json)."""
    return bool(meta.get("notebook_defect"))


def new_model(run_config: dict, meta: dict) -> nn.Module:
    torch.manual_seed(TrainConfig(**run_config["train"]).seed)
    return build_model(
        run_config["model"],
        num_classes=meta["num_classes"],
        in_channels=meta["channels"],
        **run_config["model_options"],
    )


def save_trained(path: Path, model: nn.Module, run_config: dict, meta: dict, **extra) -> None:
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
    remedy = f"re-create it with `dvc repro train@{dataset}-{model}`"
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


def dataset_meta(dataset: str) -> dict:
    return load_meta(dataset, paths.PREPARED)
