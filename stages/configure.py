"""Validate params.yaml once and resolve the settings DVC cannot select natively.

Writes configs/<dataset>/{source,prepare}.json (per-dataset optional keys; prepare.json holds
the dataset's data protocol, resolved for the recipe: gradattn.core.recipes) and
configs/models/<model>.json (the model.* options each model takes), so that -S model.pe=rope
re-runs GradAttn's stages only. Every other setting is a native `params:` of its stage (see
the top of dvc.yaml).
"""

from gradattn.config import dataset_options, dataset_protocol, load_params
from gradattn.core import paths
from gradattn.core.io import write_json
from gradattn.core.stage import stage_args, stage_entry


def main() -> None:
    stage_args()
    # Imported once the arguments are checked: a wrong call answers at once, without torch.
    from gradattn.sources.registry import get_spec

    params = load_params()
    data = params.data
    for dataset in data.datasets:
        protocol = dataset_protocol(data, params.recipe, dataset)
        options = dataset_options(data, dataset, protocol)
        get_spec(dataset, data.custom, options)  # the options name a spec that exists
        write_json(
            paths.source_config(dataset),
            {
                "dataset": dataset,
                "custom": data.custom.get(dataset),
                "options": dataset_options(data, dataset, protocol, download=True),
            },
        )
        write_json(
            paths.prepare_config(dataset),
            {
                "dataset": dataset,
                "custom": data.custom.get(dataset),
                "options": options,
                "protocol": protocol.as_dict(),
            },
        )
    for model in params.models:
        write_json(paths.model_config(model), {"model": model,
                                               "options": params.model_options(model)})
    print(
        f"configure: {len(data.datasets)} dataset(s) × {len(params.models)} model(s) "
        f"({', '.join(data.datasets)} × {', '.join(params.models)})"
    )


if __name__ == "__main__":
    stage_entry(main)
