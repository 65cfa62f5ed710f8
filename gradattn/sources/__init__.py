"""Where datasets come from: one module per source (each exposes a `download` / `prepare`
pair through the DatasetSpecs it lists in SPECS), the registry that maps a name to its spec
(gradattn.sources.spec defines the type, so no source imports the registry), and what they
share (fetching, streaming into the prepared format, splits).

The registry imports a source's module the first time its dataset is asked for
(registry.BUILTIN names them), so a stage pays only for the source it uses.
"""

from gradattn.sources.registry import DatasetSpec, get_spec, known_datasets

__all__ = ["DatasetSpec", "get_spec", "known_datasets"]
