"""The sections of params.yaml as typed, validated settings, and reading them.

The stages after `configure` read their own section here (`load_section`), so they depend
on this module only; gradattn.config adds what needs the dataset registry and the models
(names that exist, model options) and validates the whole file once, in `configure`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from gradattn.core.errors import ConfigError
from gradattn.core.recipes import AUTO, RECIPES, recipe_batch_size, recipe_value  # their home

DEFAULT_PARAMS = Path("params.yaml")
# Settings of this machine, not of the study: where a source's files lie here
# (data.sources.<dataset>) and which experiments `gradattn grid` runs (grid). They live in
# machine.yaml beside params.yaml, a file no stage lists, so they stay out of `dvc exp show`,
# `dvc params diff` and dvc.lock; `dvc exp run -S machine.yaml:data.sources.cifar10=<folder>`
# sets one for an experiment. What a source's files hold is what DVC sees (the manifest stage).
MACHINE_FILE = "machine.yaml"
MACHINE_KEYS = {"data": ("sources",), "grid": None}  # None: the whole section
# The same as dotted keys: what a key of machine.yaml starts with.
MACHINE_DOTTED = tuple(section if keys is None else f"{section}.{key}"
                       for section, keys in MACHINE_KEYS.items() for key in keys or (None,))
SPLITS = ("official", "pooled")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
FAST_MODES = ("auto", "off", "on")
MEDMNIST_SIZES = (28, 64, 128, 224)
# The models `build_model` knows (gradattn.models builds them), the ones params.yaml's
# `models` defaults to, and GradAttn's positional encodings: here, torch-free, so that
# validating and reporting need not import torch.
MODELS = ("resnet18", "gradattn", "se_resnet18", "cbam_resnet18", "noskip18", "taps_mean")
DEFAULT_MODELS = ("resnet18", "gradattn")
PE_CHOICES = ("none", "learnable", "rope")
STEMS = ("imagenet", "small")
# Every option of every model and its default: their one home (params.yaml's model section
# holds the same values).
_COMMON_OPTIONS = {"stem": STEMS[0]}
MODEL_OPTIONS: dict[str, dict] = {
    "resnet18": dict(_COMMON_OPTIONS),
    "gradattn": {
        **_COMMON_OPTIONS,
        "pe": "learnable",
        "dim": 256,
        "depth": 3,
        "heads": 8,
        "ff_dim": 512,
        "dropout": 0.1,
        "norm_first": False,
    },
    "se_resnet18": dict(_COMMON_OPTIONS),
    "cbam_resnet18": dict(_COMMON_OPTIONS),
    "noskip18": dict(_COMMON_OPTIONS),
    "taps_mean": {**_COMMON_OPTIONS, "dim": 256},
}


def check_model_name(name: str) -> None:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")


def default_options(name: str) -> dict[str, Any]:
    """The options model `name` accepts, with their defaults (a fresh dict)."""
    check_model_name(name)
    return dict(MODEL_OPTIONS[name])


_POSITIVE_INTS = ("dim", "depth", "heads", "ff_dim")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_attention_shape(*, dim: int, heads: int, pe: str) -> None:
    """Heads must split dim evenly, and RoPE rotates pairs, so its head size must be even."""
    if pe not in PE_CHOICES:
        raise ConfigError(f"unknown pe {pe!r}; choose one of: {', '.join(PE_CHOICES)}")
    if dim % heads:
        raise ConfigError(
            f"dim {dim} is not divisible by heads {heads}; choose dim as a multiple of heads"
        )
    if pe == "rope" and (dim // heads) % 2:
        raise ConfigError(
            f"pe 'rope' needs an even head size, but dim {dim} / heads {heads} = {dim // heads}; "
            "choose dim / heads even, or pe one of: none, learnable"
        )


def check_model_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Model `name`'s options: its defaults updated with `options`, every value checked (what
    `build_model` builds with; `configure` checks params.yaml with it, without torch)."""
    merged = {**default_options(name), **options}
    allowed = MODEL_OPTIONS[name]
    for key in merged:
        if key not in allowed:
            raise ConfigError(
                f"unknown option {key!r} for model {name!r}; choose from: {', '.join(allowed)}"
            )
    if merged["stem"] not in STEMS:
        raise ConfigError(f"unknown stem {merged['stem']!r}; choose one of: {', '.join(STEMS)}")
    for key in _POSITIVE_INTS:
        if key in merged and not (_is_int(merged[key]) and merged[key] >= 1):
            raise ConfigError(f"{key} must be an integer >= 1, got {merged[key]!r}")
    if "dropout" in merged:
        p = merged["dropout"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ConfigError(f"dropout must be a number in [0, 1), got {p!r}")
    if "norm_first" in merged and not isinstance(merged["norm_first"], bool):
        raise ConfigError(f"norm_first must be one of: true, false; got {merged['norm_first']!r}")
    if "heads" in merged:
        check_attention_shape(dim=merged["dim"], heads=merged["heads"], pe=merged["pe"])
    return merged


WEIGHTS = ("best", "last")
PLATEAUS = ("torch", "notebooks")
# adam: weight decay added to the gradient (L2), the paper's; adamw: decoupled from it.
OPTIMIZERS = ("adam", "adamw")
GAPS = ("signed", "absolute")
GRADIENT_SPLITS = ("train", "test")
SILENT_LAYERS = ("skip", "count")


def not_allowed(key: str, value: Any, allowed: str) -> ConfigError:
    mine = any(key == top or key.startswith(f"{top}.") for top in MACHINE_DOTTED)
    file = MACHINE_FILE if mine else "params.yaml"
    where = f"{MACHINE_FILE}:" if file == MACHINE_FILE else ""
    return ConfigError(f"{key} = {value!r} is not allowed: {allowed} "
                       f"(fix it in {file} or with -S {where}{key}=...)")


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
        raise not_allowed(key, value, allowed)
    if not math.isfinite(value):
        raise not_allowed(key, value, allowed.replace(f"be {kind}", "be a finite number", 1))
    if integer and int(value) != value:
        raise not_allowed(key, value, allowed)
    if (
        (gt is not None and not value > gt)
        or (ge is not None and not value >= ge)
        or (le is not None and not value <= le)
        or (lt is not None and not value < lt)
    ):
        raise not_allowed(key, value, allowed)
    return int(value) if integer else float(value)


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if isinstance(value, bool) and {"on", "off"} <= set(choices):
        value = "on" if value else "off"  # YAML reads a bare on/off (and yes/no) as a boolean
    if value not in choices:
        raise not_allowed(key, value, "choose one of: " + ", ".join(choices))
    return value


def _choice_int(key: str, value: Any, choices: tuple[int, ...]) -> int:
    if isinstance(value, bool) or value not in choices:
        raise not_allowed(key, value, "choose one of: " + ", ".join(map(str, choices)))
    return int(value)


def _auto_or(value: Any, check) -> Any:
    """`auto` (the recipe decides), or a value `check` accepts (its error names `auto` too)."""
    if value == AUTO:
        return AUTO
    try:
        return check(value)
    except ConfigError as err:
        raise ConfigError(str(err).replace(
            " is not allowed: ", " is not allowed: auto (the recipe's value), or ", 1)) from None


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise not_allowed(key, value, "must be true or false")
    return value


def _given(raw: dict, cls: type, key: str) -> Any:
    """params.yaml's value of a section's `key`, else the field's default (the dataclasses'
    defaults are params.yaml's values: tests/test_config.py holds them equal)."""
    return raw.get(key, getattr(cls, key))


def raw_section(params: dict, name: str, cls: type) -> dict:
    raw = params.get(name) or {}
    if not isinstance(raw, dict):
        raise not_allowed(name, raw, "must be a mapping of keys to values")
    allowed = {f.name for f in fields(cls)}
    for key in raw:
        if key not in allowed:
            raise not_allowed(
                f"{name}.{key}", raw[key], "unknown key; known keys: " + ", ".join(sorted(allowed))
            )
    return raw


# data.augment's values (gradattn.prepared.augment.AUGMENTATIONS checks the same list in a test).
AUGMENT_NAMES = ("none", "flip", "crop_flip", "rotate10", "flip_rotate_translate",
                 "rotate_flip_jitter", "pad_notebook")
NORMALISATIONS = ("split", "notebook")
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 512


@dataclass(frozen=True)
class DataConfig:
    """data.*; a value `auto` is resolved per dataset and recipe by gradattn.core.recipes."""

    datasets: tuple[str, ...] = ("fashionmnist-mini",)
    split: str = AUTO  # auto | official | pooled
    split_seed: int | str = AUTO  # auto | an integer
    legacy_preprocessing: bool | str = AUTO  # auto | true | false
    image_size: int | str = AUTO  # auto | pixels per side
    grey_to_rgb: bool | str = AUTO  # auto | true | false
    normalise: str = AUTO  # auto | split | notebook
    augment: str = AUTO  # auto | a name in AUGMENT_NAMES
    svhn_extra: bool | str = AUTO  # auto | true | false: SVHN's 531,131 `extra` images too
    sources: dict[str, str] = field(default_factory=dict)
    custom: dict[str, dict] = field(default_factory=dict)
    medmnist_size: int = 28  # MedMNIST image size: 28, or MedMNIST+'s 64 | 128 | 224

    @classmethod
    def parse(cls, raw: dict) -> DataConfig:
        """Shapes and values; which names exist is checked by gradattn.config (the registry)."""
        custom = raw.get("custom") or {}
        if not isinstance(custom, dict):
            raise not_allowed("data.custom", custom,
                              "must map a dataset name to {format, path, size}")
        datasets = parse_datasets(raw)

        def get(key):
            return _given(raw, cls, key)

        return cls(
            datasets=datasets,
            split=check_choice("data.split", get("split"), (AUTO, *SPLITS)),
            split_seed=_auto_or(get("split_seed"), lambda v: _number(
                "data.split_seed", v, integer=True, ge=0)),
            legacy_preprocessing=_auto_or(get("legacy_preprocessing"),
                                          lambda v: _bool("data.legacy_preprocessing", v)),
            image_size=_auto_or(get("image_size"), lambda v: _number(
                "data.image_size", v, integer=True, ge=MIN_IMAGE_SIZE, le=MAX_IMAGE_SIZE)),
            grey_to_rgb=_auto_or(get("grey_to_rgb"), lambda v: _bool("data.grey_to_rgb", v)),
            normalise=check_choice("data.normalise", get("normalise"), (AUTO, *NORMALISATIONS)),
            augment=check_choice("data.augment", get("augment"), (AUTO, *AUGMENT_NAMES)),
            svhn_extra=_auto_or(get("svhn_extra"), lambda v: _bool("data.svhn_extra", v)),
            sources=parse_sources(raw.get("sources")),
            custom=custom,
            medmnist_size=_choice_int(
                "data.medmnist_size", get("medmnist_size"), MEDMNIST_SIZES
            ),
        )


def parse_sources(sources: Any) -> dict[str, str]:
    """data.sources: dataset name -> folder, the empty entries left out."""
    sources = sources or {}
    if not isinstance(sources, dict):
        raise not_allowed("data.sources", sources, "must map a dataset name to a folder path")
    return {k: str(v) for k, v in sources.items() if v is not None}


def parse_datasets(raw_data: dict) -> tuple[str, ...]:
    """data.datasets (of the data section `raw_data`): distinct names, one name alone read as
    a list of one; which names exist is gradattn.config's check (the dataset registry)."""
    datasets = raw_data.get("datasets", list(DataConfig.datasets))
    if isinstance(datasets, str):
        datasets = [datasets]
    if not isinstance(datasets, list) or not datasets:
        raise not_allowed("data.datasets", datasets, "must be a non-empty list of dataset names")
    if len(set(datasets)) != len(datasets):
        raise not_allowed("data.datasets", datasets, "must not name a dataset twice")
    return tuple(datasets)


def parse_models(params: dict) -> tuple[str, ...]:
    """params.yaml's `models` (default DEFAULT_MODELS): distinct names of MODELS, one name
    alone read as a list of one. Their options are gradattn.config's check (it builds them)."""
    names = params.get("models", list(DEFAULT_MODELS))
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names:
        raise not_allowed("models", names, "must be a non-empty list of: " + ", ".join(MODELS))
    for name in names:
        check_choice("models", name, MODELS)
    if len(set(names)) != len(names):
        raise not_allowed("models", names, "must not name a model twice")
    return tuple(names)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    batch_size: int | str = AUTO  # auto: recipe_batch_size
    max_epochs: int = 10
    plateau_factor: float = 0.2
    plateau_patience: int = 3
    min_lr: float = 1e-7
    early_stopping_patience: int = 7
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    fast: str = "auto"
    weights: str = AUTO  # best | last: the weights training ends with (evaluated)
    plateau: str = AUTO  # torch | notebooks: the LR plateau rule

    @classmethod
    def parse(cls, raw: dict) -> TrainConfig:
        def get(key):
            return _given(raw, cls, key)

        return cls(
            lr=_number("train.lr", get("lr"), gt=0),
            weight_decay=_number("train.weight_decay", get("weight_decay"), ge=0),
            optimizer=check_choice("train.optimizer", get("optimizer"), OPTIMIZERS),
            batch_size=_auto_or(get("batch_size"), lambda v: _number(
                "train.batch_size", v, integer=True, ge=1)),
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
            device=check_choice("train.device", get("device"), DEVICES),
            precision=check_choice("train.precision", get("precision"), PRECISIONS),
            fast=check_choice("train.fast", get("fast"), FAST_MODES),
            weights=check_choice("train.weights", get("weights"), (AUTO, *WEIGHTS)),
            plateau=check_choice("train.plateau", get("plateau"), (AUTO, *PLATEAUS)),
        )

    def resolve(self, recipe: str, dataset: str) -> TrainConfig:
        """Every `auto` replaced by the recipe's value for `dataset`."""
        return replace(
            self,
            batch_size=(recipe_batch_size(recipe, dataset) if self.batch_size == AUTO
                        else self.batch_size),
            weights=recipe_value(recipe, "train.weights", self.weights),
            plateau=recipe_value(recipe, "train.plateau", self.plateau),
        )


@dataclass(frozen=True)
class EvaluateConfig:
    ece_bins: int = 10
    batch_size: int = 512
    gap: str = AUTO  # signed | absolute: Table 4's train-val gap

    @classmethod
    def parse(cls, raw: dict) -> EvaluateConfig:
        def get(key):
            return _given(raw, cls, key)

        return cls(
            ece_bins=_number("evaluate.ece_bins", get("ece_bins"), integer=True, ge=1),
            batch_size=_number("evaluate.batch_size", get("batch_size"), integer=True, ge=1),
            gap=check_choice("evaluate.gap", get("gap"), (AUTO, *GAPS)),
        )

    def resolve(self, recipe: str) -> EvaluateConfig:
        return replace(self, gap=recipe_value(recipe, "evaluate.gap", self.gap))


@dataclass(frozen=True)
class GradientsConfig:
    batches: int = 20
    low: float = 1e-6
    high: float = 10.0
    norm: str = "output"
    split: str = AUTO  # train | test: the batches GHS is measured on
    silent: str = AUTO  # skip | count: a layer whose hook never fired, in the denominator?

    @classmethod
    def parse(cls, raw: dict) -> GradientsConfig:
        def get(key):
            return _given(raw, cls, key)

        low = _number("gradients.low", get("low"), gt=0)
        high = _number("gradients.high", get("high"), gt=low)
        return cls(
            batches=_number("gradients.batches", get("batches"), integer=True, ge=1),
            low=low,
            high=high,
            norm=check_choice("gradients.norm", get("norm"), ("output", "parameter")),
            split=check_choice("gradients.split", get("split"), (AUTO, *GRADIENT_SPLITS)),
            silent=check_choice("gradients.silent", get("silent"), (AUTO, *SILENT_LAYERS)),
        )

    def resolve(self, recipe: str) -> GradientsConfig:
        return replace(self, split=recipe_value(recipe, "gradients.split", self.split),
                       silent=recipe_value(recipe, "gradients.silent", self.silent))


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading YAML 1.2's floats as DVC writes them: `dvc exp run -S
    train.min_lr=1e-6` leaves `min_lr: 1e-06` in params.yaml, which YAML 1.1 reads as a string
    (it wants a dot: `1.0e-6`), while DVC (ruamel, YAML 1.2) records a number."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str):
    """params.yaml's (or machine.yaml's) text as DVC reads it (ParamsLoader)."""
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 (a SafeLoader)


def read_mapping(path: Path, text: str | None = None) -> dict:
    """A YAML file of sections as a dict (`text`: its content, when read from git), or a
    one-line ConfigError."""
    try:
        if text is None:
            text = path.read_text(encoding="utf-8")
        params = load_yaml(text) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at "
                          f"offset {err.start}): save it as UTF-8 and rerun") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must be a mapping of sections, not {type(params).__name__}: "
                          f"fix {path.name}")
    _check_finite(params)
    return params


def _machine_keys(params: dict) -> list[str]:
    """The machine settings `params` holds, as dotted keys (data.sources, grid)."""
    found = []
    for section, keys in MACHINE_KEYS.items():
        value = params.get(section)
        if keys is None:
            found += [section] if section in params else []
        elif isinstance(value, dict):
            found += [f"{section}.{key}" for key in keys if key in value]
    return found


def with_machine(params: dict, machine: dict, where: Path = Path(MACHINE_FILE)) -> dict:
    """params.yaml's sections with machine.yaml's settings merged in: the one view every
    reader validates. Each setting has one home, so params.yaml holding one is an error."""
    misplaced = _machine_keys(params)
    if misplaced:
        key = misplaced[0]
        raise ConfigError(
            f"params.yaml holds {key}, a setting of this machine: it lives in {MACHINE_FILE} "
            f"(read by no stage, so it stays out of dvc exp show and dvc.lock); move it there, "
            f"or set it with -S {MACHINE_FILE}:{key}...")
    for key in machine:
        if key not in MACHINE_KEYS:
            raise ConfigError(
                f"{where}: {key!r} is not a setting of this machine: it holds "
                f"{', '.join(MACHINE_DOTTED)} only (the study's settings are in params.yaml)")
    data = machine.get("data") or {}
    if not isinstance(data, dict) or set(data) - set(MACHINE_KEYS["data"]):
        raise ConfigError(f"{where}: data = {data!r} is not allowed: it takes data.sources only "
                          "(the study's data settings are in params.yaml)")
    merged = dict(params)
    if "sources" in data:
        merged["data"] = {**(params.get("data") or {}), "sources": data["sources"]}
    if "grid" in machine:
        merged["grid"] = machine["grid"]
    return merged


def read_params(path: str | Path = DEFAULT_PARAMS) -> dict:
    """params.yaml as a dict, with machine.yaml beside it merged in (with_machine), or a
    one-line ConfigError."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the project root, where params.yaml is")
    machine_path = path.with_name(MACHINE_FILE)
    machine = read_mapping(machine_path) if machine_path.exists() else {}
    return with_machine(read_mapping(path), machine, machine_path)


def machine_sources(path: str | Path = DEFAULT_PARAMS) -> dict[str, str]:
    """machine.yaml's data.sources (beside params.yaml at `path`; none without the file): the
    folders this machine reads datasets' source files from instead of downloading them."""
    machine_path = Path(path).with_name(MACHINE_FILE)
    machine = read_mapping(machine_path) if machine_path.exists() else {}
    data = with_machine({}, machine, machine_path).get("data") or {}
    return parse_sources(data.get("sources"))


def _check_finite(node: Any, key: str = "") -> None:
    """Every number in params.yaml is finite: YAML's .nan/.inf (or -S train.lr=.inf) would
    otherwise pass a bound check such as `> 0` and train on NaN."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise not_allowed(key, node, "must be a finite number")


def read_recipe(params: dict | None = None, path: str | Path = DEFAULT_PARAMS) -> str:
    """The top-level `recipe` of params.yaml (default corrected), validated."""
    if params is None:
        params = read_params(path)
    value = params.get("recipe", RECIPES[0])
    if value not in RECIPES:
        raise ConfigError(
            f"recipe = {value!r} is not allowed: choose one of: {', '.join(RECIPES)} "
            "(corrected: this project's protocol; notebooks: the authors' notebooks exactly); "
            "fix it in params.yaml or with -S recipe=..."
        )
    return value


SECTIONS = {"data": DataConfig, "train": TrainConfig, "evaluate": EvaluateConfig,
            "gradients": GradientsConfig}


def load_section(name: str, path: str | Path = DEFAULT_PARAMS):
    """One validated section of params.yaml, e.g. load_section("train") -> TrainConfig."""
    cls = SECTIONS[name]
    return cls.parse(raw_section(read_params(path), name, cls))


def load_resolved(name: str, dataset: str | None = None, path: str | Path = DEFAULT_PARAMS):
    """Section `name` (train, evaluate or gradients) with every `auto` resolved through the
    recipe (train needs the dataset: its batch size is per dataset)."""
    params = read_params(path)
    recipe = read_recipe(params)
    cls = SECTIONS[name]
    section = cls.parse(raw_section(params, name, cls))
    return section.resolve(recipe, dataset) if name == "train" else section.resolve(recipe)


# In machine.yaml, read by no stage: which experiments `gradattn grid` runs, not how one runs.
GRID_SECTION = "grid"
GRID_KEYS = ("seeds", "pe")


def _grid_list(key: str, value: Any, kind: type, allowed: str) -> list:
    if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
        raise ConfigError(f"{key} = {value!r} is not allowed: {allowed} "
                          f"(fix it in {MACHINE_FILE})")
    return value


@dataclass(frozen=True)
class GridConfig:
    """The study's cells: data.datasets x models x grid.pe (GradAttn's encodings) x
    grid.seeds, under `recipe`. A missing grid key takes the study's own value (train.seed,
    model.pe)."""

    recipe: str
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    pe: tuple[str, ...]

    @classmethod
    def parse(cls, params: dict) -> GridConfig:
        recipe = read_recipe(params)
        grid = params.get(GRID_SECTION) or {}
        if not isinstance(grid, dict):
            raise ConfigError(f"grid = {grid!r} is not allowed: a mapping with seeds and pe "
                              f"(fix it in {MACHINE_FILE})")
        unknown = set(grid) - set(GRID_KEYS)
        if unknown:
            raise ConfigError(f"grid.{sorted(unknown)[0]} is not a grid key: the grid section "
                              f"takes seeds and pe (fix it in {MACHINE_FILE})")
        datasets = parse_datasets(raw_section(params, "data", DataConfig))
        models = parse_models(params)
        seed = _given(raw_section(params, "train", TrainConfig), TrainConfig, "seed")
        seeds = _grid_list("grid.seeds", grid.get("seeds", [seed]), int,
                           "a non-empty list of integer seeds, e.g. [42, 43, 44]")
        default_pe = (params.get("model") or {}).get("pe", MODEL_OPTIONS["gradattn"]["pe"])
        pes = _grid_list("grid.pe", grid.get("pe", [default_pe]), str,
                         f"a non-empty list of {', '.join(PE_CHOICES)}")
        bad = [pe for pe in pes if pe not in PE_CHOICES]
        if bad:
            raise ConfigError(f"grid.pe holds {bad[0]!r}, which is not allowed: choose from "
                              f"{', '.join(PE_CHOICES)} (fix it in {MACHINE_FILE})")
        return cls(recipe=recipe, datasets=datasets, models=models, seeds=tuple(seeds),
                   pe=tuple(pes))
