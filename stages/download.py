"""Fetch one dataset's source files into data/raw/<dataset>/ (or copy them from the folder that
machine.yaml's data.sources.<dataset> names: its files are what data/manifests/<dataset>.json,
a dependency of this stage, lists)."""

import time

from gradattn.core import paths
from gradattn.core.io import read_json, remove_stale
from gradattn.core.settings import machine_sources
from gradattn.core.stage import stage_args, stage_entry


def main() -> None:
    (dataset,) = stage_args("dataset")
    # Imported once the arguments are checked: a wrong call answers at once, without torch.
    from gradattn.sources.registry import get_spec

    cfg = read_json(paths.source_config(dataset))
    spec = get_spec(
        dataset, {dataset: cfg["custom"]} if cfg["custom"] else None, cfg.get("options")
    )
    raw = paths.RAW / dataset
    source = machine_sources().get(dataset)
    source = paths.user_path(source) if source else None
    t0 = time.perf_counter()
    remove_stale(raw, recursive=True)  # temporaries a killed download left
    # Files land under their final names only once verified, so a failed run keeps the
    # good ones (raw/ persists across runs) and the next run fetches only what is missing.
    spec.download(raw, source)
    size = sum(f.stat().st_size for f in raw.rglob("*") if f.is_file())
    print(
        f"download {dataset}: {size / 1e6:.1f} MB in {raw} "
        f"({'from ' + str(source) if source else 'from ' + (spec.url or 'the package')}, "
        f"{time.perf_counter() - t0:.1f}s)"
    )


if __name__ == "__main__":
    stage_entry(main)
