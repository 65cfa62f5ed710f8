"""Turn data/raw/<dataset>/ into data/prepared/<dataset>/ (uint8 arrays + meta.json)."""

import time

from gradattn import paths
from gradattn.data import PreparedWriter
from gradattn.data.prepared import Conversion
from gradattn.data.registry import get_spec
from gradattn.io import read_json
from gradattn.stage import run, stage_args


def main() -> None:
    (dataset,) = stage_args("dataset")
    cfg = read_json(paths.prepare_config(dataset))
    spec = get_spec(
        dataset, {dataset: cfg["custom"]} if cfg["custom"] else None, cfg.get("options")
    )
    protocol = cfg["protocol"]
    t0 = time.perf_counter()
    # meta.json carries the resolved protocol: train, evaluate and gradients read it there.
    notes = {
        "recipe": protocol["recipe"],
        "split": protocol["split"],
        "split_seed": protocol["split_seed"],
        # the source's official split (a pooled split's is in split_detail)
        "split_note": spec.splits if protocol["split"] == "official" else None,
        "augment": protocol["augment"],
        "normalise": protocol["normalise"],
        # Whether training batches get the notebooks' double normalisation (data.
        # legacy_preprocessing resolved for this dataset: only CIFAR-10 and Fashion-MNIST).
        "notebook_defect": protocol["legacy_defect"],
        "source_size": spec.size,
        "grey_to_rgb": protocol["grey_to_rgb"] and spec.channels == 1,
    }
    if protocol["mean"] is not None:  # the notebook's constants, not the split's statistics
        notes["mean"], notes["std"] = protocol["mean"], protocol["std"]
    size = protocol["image_size"] if protocol["image_size"] != spec.size else None
    conversion = Conversion(size=size, grey_to_rgb=protocol["grey_to_rgb"])
    with PreparedWriter(dataset, spec.classes, root=paths.PREPARED, notes=notes,
                        conversion=conversion) as writer:
        spec.prepare(paths.RAW / dataset, writer, protocol["split"], protocol["split_seed"])
        meta = writer.commit()
    counts = ", ".join(f"{k} {v:,}" for k, v in meta["counts"].items())
    print(
        f"preprocess {dataset}: {counts} images of {meta['height']}×{meta['width']}×"
        f"{meta['channels']}, {meta['num_classes']} classes ({protocol['split']} split, "
        f"{protocol['recipe']} recipe, "
        f"{time.perf_counter() - t0:.1f}s)"
    )


if __name__ == "__main__":
    run(main)
