"""Dataset name → what it is and how to fetch and prepare it."""

from __future__ import annotations

import importlib

from gradattn.core.errors import GradattnError
from gradattn.sources.spec import DatasetSpec

_REGISTRY: dict[str, DatasetSpec] = {}


# The built-in datasets and the module (in gradattn.sources) whose SPECS describe each,
# imported and registered the first time the name is asked for: importing them all would
# cost every stage seconds of torch and torchvision imports for the one dataset it handles.
# tests/test_data_sources.py holds this table equal to the modules' SPECS.
BUILTIN = {
    "fashionmnist-mini": "bundled",
    "cifar10": "cifar10",
    "fashionmnist": "fashionmnist",
    "tissuemnist": "medmnist_sets",
    "bloodmnist": "medmnist_sets",
    "padufes20": "padufes",
    "pcam": "pcam",
    "svhn": "svhn",
    "tinyimagenet": "tinyimagenet",
}


def register(spec: DatasetSpec) -> DatasetSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _custom_factory(name: str, cfg: dict) -> DatasetSpec:
    """A data.custom entry's spec (gradattn.sources.custom, imported when first needed)."""
    return importlib.import_module("gradattn.sources.custom").custom_spec(name, cfg)


def known_datasets() -> tuple[str, ...]:
    return tuple(sorted(set(_REGISTRY) | set(BUILTIN)))


def get_spec(name: str, custom: dict | None = None, options: dict | None = None) -> DatasetSpec:
    """The spec of `name`; `options` gives values for the keys in its `options` (others are
    ignored), as gradattn.config.dataset_options(data, name, protocol) returns them."""
    if custom and name in custom:
        return _custom_factory(name, custom[name])
    if name not in _REGISTRY and name in BUILTIN:
        # The source modules import only gradattn.sources.spec, never this module: no circle.
        for spec in importlib.import_module(f"gradattn.sources.{BUILTIN[name]}").SPECS:
            register(spec)
    if name not in _REGISTRY:
        allowed = sorted(set(known_datasets()) | set(custom or {}))
        raise GradattnError(f"unknown dataset {name!r}: choose one of {', '.join(allowed)}, "
                            "or describe your own under data.custom")
    spec = _REGISTRY[name]
    values = {k: v for k, v in (options or {}).items() if k in spec.options}
    return spec.variant(**values) if values and spec.variant else spec
