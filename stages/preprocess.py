"""Turn data/raw/<dataset>/ into data/prepared/<dataset>/ (uint8 arrays + meta.json), with the
protocol configure resolved for the recipe (configs/<dataset>/prepare.json)."""

import time

from gradattn.core import paths
from gradattn.core.io import read_json
from gradattn.core.stage import stage_args, stage_entry


def main() -> None:
    (dataset,) = stage_args("dataset")
    # Imported once the arguments are checked: a wrong call answers at once, without torch.
    from gradattn.sources.preparation import prepare_dataset

    t0 = time.perf_counter()
    meta = prepare_dataset(dataset, read_json(paths.prepare_config(dataset)), paths.RAW / dataset,
                           paths.PREPARED)
    counts = ", ".join(f"{k} {v:,}" for k, v in meta["counts"].items())
    print(
        f"preprocess {dataset}: {counts} images of {meta['height']}×{meta['width']}×"
        f"{meta['channels']}, {meta['num_classes']} classes ({meta['split']} split, "
        f"{meta['recipe']} recipe, {time.perf_counter() - t0:.1f}s)"
    )


if __name__ == "__main__":
    stage_entry(main)
