"""params.yaml → typed, validated configuration, checked whole.

Every bad value fails here, once (the `configure` stage), with a message naming the key, the
value and what is allowed. The section types and validators live in gradattn.core.settings, which
the later stages read their own sections through; this module adds what needs the dataset
registry and the models' options (checked without building them: no torch).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gradattn.core.errors import ConfigError
from gradattn.core.settings import (
    AUTO,
    DEFAULT_PARAMS,
    GRID_SECTION,
    MODELS,
    DataConfig,
    EvaluateConfig,
    GradientsConfig,
    TrainConfig,
    check_choice,
    check_model_options,
    default_options,
    not_allowed,
    parse_models,
    raw_section,
    read_params,
    read_recipe,
)

__all__ = ["DataConfig", "EvaluateConfig", "GradientsConfig", "Params", "TrainConfig",
           "dataset_options", "dataset_protocol", "load_params", "parse_params"]


def dataset_protocol(data: DataConfig, recipe: str, name: str):
    """`name`'s data protocol under `recipe` (gradattn.core.recipes.Protocol): split, size,
    channels, normalisation, augmentation, the notebooks' defect; no `auto` left."""
    from gradattn.core.recipes import resolve
    from gradattn.sources.registry import get_spec

    spec = get_spec(name, data.custom)
    return resolve(data, recipe, name, augment=spec.augment, channels=spec.channels,
                   notebook_defect=spec.notebook_defect)


# Options that change how a source is prepared, not which files it downloads.
PREPARE_ONLY = ("image_size",)


def dataset_options(data: DataConfig, name: str, protocol=None, *, download: bool = False
                    ) -> dict[str, Any]:
    """The values of the options `name`'s spec declares (data.medmnist_size; PAD-UFES-20's
    image_size and SVHN's svhn_extra, as `protocol` resolved them), for get_spec(name, custom,
    options) and the configs/ files its stages depend on (`download`: only those that change
    the downloaded files). A value left to the source (None) is not an option."""
    from gradattn.sources.registry import get_spec

    options = {}
    for key in get_spec(name, data.custom).options:
        if download and key in PREPARE_ONLY:
            continue
        value = getattr(protocol if hasattr(protocol, key) else data, key)
        if value is not None and value != AUTO:
            options[key] = value
    return options


def _check_dataset_names(data: DataConfig) -> None:
    from gradattn.sources.registry import known_datasets

    allowed = tuple(sorted(set(known_datasets()) | set(data.custom)))
    for name in data.datasets:
        check_choice("data.datasets", name, allowed)
    for name in data.sources:
        check_choice(f"data.sources.{name}", name, tuple(known_datasets()))


@dataclass(frozen=True)
class Params:
    recipe: str
    data: DataConfig
    models: tuple[str, ...]
    model: dict[str, Any]
    train: TrainConfig
    evaluate: EvaluateConfig
    gradients: GradientsConfig

    def model_options(self, name: str) -> dict[str, Any]:
        """The options `name` accepts, with the values params.yaml gives them."""
        return {key: self.model.get(key, default) for key, default in default_options(name).items()}


def _parse_models(params: dict) -> tuple[tuple[str, ...], dict[str, Any]]:
    names = parse_models(params)
    options = params.get("model") or {}
    if not isinstance(options, dict):
        raise not_allowed("model", options, "must be a mapping of model options")
    known = {key for name in MODELS for key in default_options(name)}
    for key, value in options.items():
        if key not in known:
            raise not_allowed(f"model.{key}", value,
                              "unknown option; known: " + ", ".join(sorted(known)))
    for name in names:
        opts = {k: options[k] for k in default_options(name) if k in options}
        try:
            check_model_options(name, opts)  # what build_model checks, without torch
        except ValueError as err:
            raise ConfigError(
                f"model (for {name}): {err} (fix it in params.yaml or with -S)"
            ) from None
    return names, dict(options)


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    return parse_params(read_params(path))


def _check_top_level(params: Any) -> None:
    known = [f.name for f in fields(Params)] + [GRID_SECTION]
    if not isinstance(params, dict):
        raise ConfigError(f"params.yaml must be a mapping of sections ({', '.join(known)}), "
                          f"not {type(params).__name__}: fix params.yaml")
    for key in params:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{key!r} is not a known top-level key of params.yaml: {hint}"
                              f"known keys: {', '.join(known)} (fix it in params.yaml)")


def parse_params(params: dict) -> Params:
    _check_top_level(params)
    models, model = _parse_models(params)
    data = DataConfig.parse(raw_section(params, "data", DataConfig))
    _check_dataset_names(data)
    return Params(
        recipe=read_recipe(params),
        data=data,
        models=models,
        model=model,
        train=TrainConfig.parse(raw_section(params, "train", TrainConfig)),
        evaluate=EvaluateConfig.parse(raw_section(params, "evaluate", EvaluateConfig)),
        gradients=GradientsConfig.parse(raw_section(params, "gradients", GradientsConfig)),
    )
