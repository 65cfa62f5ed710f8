"""Turn data/raw/<dataset>/ into data/prepared/<dataset>/ (uint8 arrays + meta.json)."""

import time

from gradattn import paths
from gradattn.data import PreparedWriter
from gradattn.data.registry import get_spec
from gradattn.io import read_json
from gradattn.stage import run, stage_args


def main() -> None:
    (dataset,) = stage_args("dataset")
    cfg = read_json(paths.prepare_config(dataset))
    spec = get_spec(
        dataset, {dataset: cfg["custom"]} if cfg["custom"] else None, cfg.get("options")
    )
    t0 = time.perf_counter()
    notes = {
        "split": cfg["split"],
        "split_seed": cfg["split_seed"],
        "augment": spec.augment,
        "split_note": spec.splits,
        # Whether data.legacy_preprocessing applies here (the notebooks' defect hit only
        # some datasets); training reads it from meta.json, not from the registry.
        "notebook_defect": spec.notebook_defect,
    }
    with PreparedWriter(dataset, spec.classes, root=paths.PREPARED, notes=notes) as writer:
        spec.prepare(paths.RAW / dataset, writer, cfg["split"], cfg["split_seed"])
        meta = writer.commit()
    counts = ", ".join(f"{k} {v:,}" for k, v in meta["counts"].items())
    print(
        f"preprocess {dataset}: {counts} images of {meta['height']}×{meta['width']}×"
        f"{meta['channels']}, {meta['num_classes']} classes ({cfg['split']} split, "
        f"{time.perf_counter() - t0:.1f}s)"
    )


if __name__ == "__main__":
    run(main)
