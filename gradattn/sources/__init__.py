"""Where datasets come from: one module per source (each exposes a `download` / `prepare`
pair through its DatasetSpec), the registry that maps a name to its spec, and what they
share (fetching, streaming into the prepared format, splits, the recipes' data protocols).

Importing this package registers every built-in source, as timm's `models/__init__.py`
does; the registry itself imports none of them.
"""

from gradattn.sources import (  # noqa: F401  (imported to register their datasets)
    bundled,
    cifar10,
    fashionmnist,
    medmnist_sets,
    padufes,
    pcam,
    svhn,
    tinyimagenet,
)
from gradattn.sources.custom import custom_spec
from gradattn.sources.registry import DatasetSpec, get_spec, known_datasets, register_custom

register_custom(custom_spec)

__all__ = ["DatasetSpec", "get_spec", "known_datasets"]
