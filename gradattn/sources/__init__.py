"""Where datasets come from: one module per source (each exposes a `download` / `prepare`
pair through the DatasetSpecs it lists in SPECS), the registry that maps a name to its spec
(gradattn.sources.spec defines the type, so no source imports the registry), and what they
share (fetching, streaming into the prepared format, splits).

The registry imports a source's module the first time its dataset is asked for
(registry.BUILTIN names them), so a stage pays only for the source it uses.

"Source" means where a dataset's files come from: this package's code, and the key
`data.sources.<dataset>` of machine.yaml (a local folder a source reads instead of
downloading). The `manifest` stage (stages/manifest.py) lists that folder's files (size,
md5) so DVC sees them change.
"""

from gradattn.sources.registry import DatasetSpec, get_spec, known_datasets

__all__ = ["DatasetSpec", "get_spec", "known_datasets"]
