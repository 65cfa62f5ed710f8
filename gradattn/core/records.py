"""A stage's run record: metrics/<dataset>/<model>.<stage>.run.json, what train, evaluate or
gradients ran with, every setting resolved (never `auto`), beside the recipe."""

from __future__ import annotations

from gradattn.core.io import write_json
from gradattn.core.paths import run_record_file


def write_run_record(dataset: str, model: str, stage: str, recipe: str, settings: dict,
                     **extra) -> dict:
    """Write (and return) a stage's run record: {recipe, dataset, model, <stage>: settings,
    **extra}."""
    record = {"recipe": recipe, "dataset": dataset, "model": model, stage: settings, **extra}
    write_json(run_record_file(dataset, model, stage), record)
    return record
