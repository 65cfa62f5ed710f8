"""One training run's configuration and identity."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from gradattn.core import paths
from gradattn.core.errors import GradattnError
from gradattn.core.io import read_json
from gradattn.core.settings import TrainConfig, load_resolved, read_recipe
from gradattn.models import build_model


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on, and nothing else: the recipe, the train
    section with every `auto` resolved for this dataset, and the model's own options.
    Whether the notebooks' preprocessing defect applies is the dataset's (meta.json)."""

    recipe: str
    dataset: str
    model: str
    model_options: dict[str, Any]
    train: TrainConfig

    def as_dict(self) -> dict:
        """The plain form saved with the model and hashed into the run's identity."""
        return {"recipe": self.recipe, "dataset": self.dataset, "model": self.model,
                "model_options": dict(self.model_options), "train": asdict(self.train)}


def load_run_config(dataset: str, model: str) -> RunConfig:
    """The run of `model` on `dataset` as params.yaml and configs/models/<model>.json (which
    `configure` resolves; see dvc.yaml) define it."""
    path = paths.model_config(model)
    if not path.exists():
        raise GradattnError(f"{path} not found: run `dvc repro configure` (or `dvc repro`) first")
    return RunConfig(recipe=read_recipe(), dataset=dataset, model=model,
                     model_options=read_json(path)["options"],
                     train=load_resolved("train", dataset))


def run_id(run_config: RunConfig, meta: dict) -> str:
    """Identifies a run's configuration and data, so a checkpoint is only resumed by its own run."""
    blob = json.dumps({"config": run_config.as_dict(), "data": meta}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def new_model(run_config: RunConfig, meta: dict) -> nn.Module:
    """The run's untrained model (seed the RNG first: its weights are drawn from it)."""
    return build_model(run_config.model, num_classes=meta["num_classes"],
                       in_channels=meta["channels"], **run_config.model_options)
