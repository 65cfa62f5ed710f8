"""Prepare one dataset with the protocol configure resolved (gradattn.core.recipes).

Kept apart from the resolution so that `preprocess` depends on the data code only, not on
params.yaml's parsing (gradattn.core.settings).
"""

from __future__ import annotations

from pathlib import Path

from gradattn.prepared.format import Conversion, PreparedWriter
from gradattn.sources.registry import get_spec


def prepare_dataset(dataset: str, config: dict, raw_dir: Path, root: Path) -> dict:
    """Prepare `dataset` from raw_dir into root/<dataset>/ as configs/<dataset>/prepare.json
    (`config`) says, and return its meta.json: the resolved protocol is recorded there, so
    train, evaluate and gradients read it from meta.json only."""
    custom = config.get("custom")
    spec = get_spec(dataset, {dataset: custom} if custom else None, config.get("options"))
    protocol = config["protocol"]
    notes = {
        "recipe": protocol["recipe"],
        "split": protocol["split"],
        "split_seed": protocol["split_seed"],
        # the source's official split (a pooled split's is in split_detail)
        "split_note": spec.splits if protocol["split"] == "official" else None,
        "augment": protocol["augment"],
        "normalise": protocol["normalise"],
        # Whether training batches get the notebooks' double normalisation: data.
        # legacy_preprocessing resolved for this dataset (it hit CIFAR-10 and Fashion-MNIST).
        "notebook_defect": protocol["legacy_defect"],
        "source_size": spec.size,
        "grey_to_rgb": protocol["grey_to_rgb"] and spec.channels == 1,
    }
    if protocol["mean"] is not None:  # the notebook's constants, not the split's statistics
        notes["mean"], notes["std"] = list(protocol["mean"]), list(protocol["std"])
    size = protocol["image_size"] if protocol["image_size"] != spec.size else None
    conversion = Conversion(size=size, grey_to_rgb=protocol["grey_to_rgb"])
    with PreparedWriter(dataset, spec.classes, root=root, notes=notes,
                        conversion=conversion) as writer:
        spec.prepare(Path(raw_dir), writer, protocol["split"], protocol["split_seed"])
        return writer.commit()
