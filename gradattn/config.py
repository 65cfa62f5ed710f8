"""params.yaml → typed, validated configuration.

Every bad value fails here, once, with a message naming the key, the value and what is
allowed. Stages read their settings only through `load_params`.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from gradattn.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
SPLITS = ("official", "pooled")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
FAST_MODES = ("auto", "off", "on")
MEDMNIST_SIZES = (28, 64, 128, 224)


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(
        f"{key} = {value!r} is not allowed: {allowed} (fix it in params.yaml or with -S {key}=...)"
    )


def _number(
    key: str,
    value: Any,
    *,
    integer: bool = False,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
):
    kind = "an integer" if integer else "a number"
    bounds = " and ".join(
        f"{op} {b:g}" for op, b in ((">", gt), (">=", ge), ("<=", le), ("<", lt)) if b is not None
    )
    allowed = f"must be {kind}" + (f" {bounds}" if bounds else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(key, value, allowed)
    if integer and int(value) != value:
        raise _fail(key, value, allowed)
    if (
        (gt is not None and not value > gt)
        or (ge is not None and not value >= ge)
        or (le is not None and not value <= le)
        or (lt is not None and not value < lt)
    ):
        raise _fail(key, value, allowed)
    return int(value) if integer else float(value)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if isinstance(value, bool) and {"on", "off"} <= set(choices):
        value = "on" if value else "off"  # YAML reads a bare on/off (and yes/no) as a boolean
    if value not in choices:
        raise _fail(key, value, "choose one of: " + ", ".join(choices))
    return value


def _choice_int(key: str, value: Any, choices: tuple[int, ...]) -> int:
    if isinstance(value, bool) or value not in choices:
        raise _fail(key, value, "choose one of: " + ", ".join(map(str, choices)))
    return int(value)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, value, "must be true or false")
    return value


def _section(params: dict, name: str, cls: type) -> dict:
    raw = params.get(name) or {}
    if not isinstance(raw, dict):
        raise _fail(name, raw, "must be a mapping of keys to values")
    allowed = {f.name for f in fields(cls)}
    for key in raw:
        if key not in allowed:
            raise _fail(
                f"{name}.{key}", raw[key], "unknown key; known keys: " + ", ".join(sorted(allowed))
            )
    return raw


@dataclass(frozen=True)
class DataConfig:
    datasets: tuple[str, ...] = ("fashionmnist-mini",)
    split: str = "official"
    split_seed: int = 0
    legacy_preprocessing: bool = False
    sources: dict[str, str] = field(default_factory=dict)
    custom: dict[str, dict] = field(default_factory=dict)
    medmnist_size: int = 28  # MedMNIST image size: 28, or MedMNIST+'s 64 | 128 | 224

    @classmethod
    def parse(cls, raw: dict) -> DataConfig:
        from gradattn.data.registry import known_datasets

        custom = raw.get("custom") or {}
        sources = raw.get("sources") or {}
        if not isinstance(custom, dict):
            raise _fail("data.custom", custom, "must map a dataset name to {format, path, size}")
        if not isinstance(sources, dict):
            raise _fail("data.sources", sources, "must map a dataset name to a folder path")
        datasets = raw.get("datasets", list(cls.datasets))
        if isinstance(datasets, str):
            datasets = [datasets]
        if not isinstance(datasets, list) or not datasets:
            raise _fail("data.datasets", datasets, "must be a non-empty list of dataset names")
        allowed = sorted(set(known_datasets()) | set(custom))
        for name in datasets:
            _choice("data.datasets", name, tuple(allowed))
        if len(set(datasets)) != len(datasets):
            raise _fail("data.datasets", datasets, "must not name a dataset twice")
        for name in sources:
            _choice(f"data.sources.{name}", name, tuple(known_datasets()))
        return cls(
            datasets=tuple(datasets),
            split=_choice("data.split", raw.get("split", cls.split), SPLITS),
            split_seed=_number(
                "data.split_seed", raw.get("split_seed", cls.split_seed), integer=True, ge=0
            ),
            legacy_preprocessing=_bool(
                "data.legacy_preprocessing",
                raw.get("legacy_preprocessing", cls.legacy_preprocessing),
            ),
            sources={k: str(v) for k, v in sources.items() if v is not None},
            custom=custom,
            medmnist_size=_choice_int(
                "data.medmnist_size", raw.get("medmnist_size", cls.medmnist_size), MEDMNIST_SIZES
            ),
        )

    def dataset_options(self, name: str) -> dict[str, Any]:
        """The data.* values that change `name`'s files (only those its spec declares), for
        get_spec(name, custom, options) and for the configs/ files its stages depend on."""
        from gradattn.data.registry import get_spec

        return {key: getattr(self, key) for key in get_spec(name, self.custom).options}


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    max_epochs: int = 100
    plateau_factor: float = 0.2
    plateau_patience: int = 3
    min_lr: float = 1e-7
    early_stopping_patience: int = 7
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    fast: str = "auto"

    @classmethod
    def parse(cls, raw: dict) -> TrainConfig:
        get = lambda k: raw.get(k, getattr(cls, k))  # noqa: E731
        return cls(
            lr=_number("train.lr", get("lr"), gt=0),
            weight_decay=_number("train.weight_decay", get("weight_decay"), ge=0),
            batch_size=_number("train.batch_size", get("batch_size"), integer=True, ge=1),
            max_epochs=_number("train.max_epochs", get("max_epochs"), integer=True, ge=1),
            plateau_factor=_number("train.plateau_factor", get("plateau_factor"), gt=0, lt=1),
            plateau_patience=_number(
                "train.plateau_patience", get("plateau_patience"), integer=True, ge=0
            ),
            min_lr=_number("train.min_lr", get("min_lr"), ge=0),
            early_stopping_patience=_number(
                "train.early_stopping_patience", get("early_stopping_patience"), integer=True, ge=1
            ),
            seed=_number("train.seed", get("seed"), integer=True, ge=0),
            device=_choice("train.device", get("device"), DEVICES),
            precision=_choice("train.precision", get("precision"), PRECISIONS),
            fast=_choice("train.fast", get("fast"), FAST_MODES),
        )


@dataclass(frozen=True)
class EvaluateConfig:
    ece_bins: int = 15
    batch_size: int = 512

    @classmethod
    def parse(cls, raw: dict) -> EvaluateConfig:
        return cls(
            ece_bins=_number(
                "evaluate.ece_bins", raw.get("ece_bins", cls.ece_bins), integer=True, ge=1
            ),
            batch_size=_number(
                "evaluate.batch_size", raw.get("batch_size", cls.batch_size), integer=True, ge=1
            ),
        )


@dataclass(frozen=True)
class GradientsConfig:
    batches: int = 10
    low: float = 1e-6
    high: float = 10.0
    norm: str = "output"

    @classmethod
    def parse(cls, raw: dict) -> GradientsConfig:
        low = _number("gradients.low", raw.get("low", cls.low), gt=0)
        high = _number("gradients.high", raw.get("high", cls.high), gt=low)
        return cls(
            batches=_number(
                "gradients.batches", raw.get("batches", cls.batches), integer=True, ge=1
            ),
            low=low,
            high=high,
            norm=_choice("gradients.norm", raw.get("norm", cls.norm), ("output", "parameter")),
        )


@dataclass(frozen=True)
class Params:
    data: DataConfig
    models: tuple[str, ...]
    model: dict[str, Any]
    train: TrainConfig
    evaluate: EvaluateConfig
    gradients: GradientsConfig

    def model_options(self, name: str) -> dict[str, Any]:
        """The options `name` accepts, with the values params.yaml gives them."""
        from gradattn.models import default_options

        return {key: self.model.get(key, default) for key, default in default_options(name).items()}

    def run_config(self, dataset: str, model: str) -> dict[str, Any]:
        """Everything one training run depends on, and nothing else.

        The train stage depends on this resolved config (not on params.yaml), so changing a
        GradAttn-only option leaves every other model's stage cached.
        """
        return {
            "dataset": dataset,
            "model": model,
            "model_options": self.model_options(model),
            "train": asdict(self.train),
            "legacy_preprocessing": self.data.legacy_preprocessing,
        }


def _parse_models(params: dict) -> tuple[tuple[str, ...], dict[str, Any]]:
    from gradattn.models import MODELS, build_model, default_options

    names = params.get("models", ["resnet18", "gradattn"])
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names:
        raise _fail("models", names, "must be a non-empty list of: " + ", ".join(MODELS))
    for name in names:
        _choice("models", name, MODELS)
    if len(set(names)) != len(names):
        raise _fail("models", names, "must not name a model twice")
    options = params.get("model") or {}
    if not isinstance(options, dict):
        raise _fail("model", options, "must be a mapping of model options")
    known = {key for name in MODELS for key in default_options(name)}
    for key, value in options.items():
        if key not in known:
            raise _fail(f"model.{key}", value, "unknown option; known: " + ", ".join(sorted(known)))
    for name in names:
        opts = {k: options[k] for k in default_options(name) if k in options}
        try:
            # Building on the meta device checks every option without allocating weights.
            with _meta_device():
                build_model(name, num_classes=10, in_channels=3, **opts)
        except ValueError as err:
            raise ConfigError(
                f"model (for {name}): {err} (fix it in params.yaml or with -S)"
            ) from None
    return tuple(names), dict(options)


class _meta_device:
    def __enter__(self):
        import torch

        self._ctx = torch.device("meta")
        self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the project root, where params.yaml is")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_params(params)


def _check_top_level(params: Any) -> None:
    known = [f.name for f in fields(Params)]
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
    return Params(
        data=DataConfig.parse(_section(params, "data", DataConfig)),
        models=models,
        model=model,
        train=TrainConfig.parse(_section(params, "train", TrainConfig)),
        evaluate=EvaluateConfig.parse(_section(params, "evaluate", EvaluateConfig)),
        gradients=GradientsConfig.parse(_section(params, "gradients", GradientsConfig)),
    )
