"""Validate params.yaml once and resolve what each later stage depends on.

Writes configs/<dataset>/{source,prepare}.json and configs/<dataset>/<model>.json. Later
stages depend on these files rather than on params.yaml, so DVC re-runs exactly the stages
whose settings changed (e.g. -S model.pe=rope re-runs GradAttn only).
"""

from gradattn import paths
from gradattn.config import load_params
from gradattn.data import get_spec
from gradattn.io import write_json
from gradattn.stage import run


def main() -> None:
    params = load_params()
    data = params.data
    for dataset in data.datasets:
        options = data.dataset_options(dataset)
        spec = get_spec(dataset, data.custom, options)
        write_json(
            paths.source_config(dataset),
            {
                "dataset": dataset,
                "source": data.sources.get(dataset),
                "custom": data.custom.get(dataset),
                "options": options,
            },
        )
        write_json(
            paths.prepare_config(dataset),
            {
                "dataset": dataset,
                "split": data.split,
                "split_seed": data.split_seed,
                "custom": data.custom.get(dataset),
                "options": options,
                "augment": spec.augment,
            },
        )
        for model in params.models:
            write_json(paths.run_config(dataset, model), params.run_config(dataset, model))
    print(
        f"configure: {len(data.datasets)} dataset(s) × {len(params.models)} model(s) "
        f"({', '.join(data.datasets)} × {', '.join(params.models)})"
    )


if __name__ == "__main__":
    run(main)
