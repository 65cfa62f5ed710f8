"""Gradient flow of one trained (dataset, model) pair: per-layer gradient norms and the
Gradient Health Score (paper §4.4, Table 5) -> metrics/<dataset>/<model>.gradients.json,
and the settings it ran with -> metrics/<dataset>/<model>.gradients.run.json."""

from dataclasses import asdict

from gradattn.core import paths
from gradattn.core.io import write_json
from gradattn.core.records import run_environment, write_run_record
from gradattn.core.settings import TrainConfig, load_resolved, read_recipe
from gradattn.core.stage import stage_args, stage_entry


def main() -> None:
    dataset, model_name = stage_args("dataset", "model")
    # Imported once the arguments are checked: a wrong call answers at once, without torch.
    from gradattn.analysis.gradients import analyse_gradients
    from gradattn.core.device import resolve_device
    from gradattn.prepared import load_meta, load_split
    from gradattn.prepared.batches import Batches
    from gradattn.training.trained import load_trained

    cfg = load_resolved("gradients")
    # The training settings of the run that made the model (its own record).
    model, record = load_trained(dataset, model_name)
    train_cfg = TrainConfig(**record["run_config"]["train"])
    device = resolve_device(train_cfg.device)
    model.to(device)
    meta = load_meta(dataset)
    images, labels = load_split(dataset, cfg.split, paths.PREPARED)
    # At the training batch size, without augmentation (so the numbers depend only on the
    # model, the data and the seed): training images in a seeded random order (corrected),
    # or the test split in order, as the notebooks' test loader (split test).
    shuffle = cfg.split == "train"
    batches = Batches(images, labels, meta, batch_size=train_cfg.batch_size, device=device,
                      shuffle=shuffle, augment="none")
    result = analyse_gradients(model, batches.epoch(train_cfg.seed), num_batches=cfg.batches,
                               low=cfg.low, high=cfg.high, norm=cfg.norm, silent=cfg.silent,
                               seed=train_cfg.seed)
    # Where the numbers come from, before the long per-layer list.
    per_layer = {k: result.pop(k) for k in ("per_layer", "silent_layers", "unused_layers")}
    order = f"in a random order (seed {train_cfg.seed})" if shuffle else "in order"
    result["split"] = cfg.split  # Table 5's caption says which split (gradattn.reporting.table)
    result["data"] = (f"{cfg.split} split, first {result['batches']} batches of "
                      f"{train_cfg.batch_size} {order}, no augmentation")
    result["mode"] = "train mode (batch-norm batch statistics, dropout on), as the notebooks"
    result.update(per_layer)
    write_run_record(dataset, model_name, "gradients", read_recipe(), asdict(cfg),
                     weights_epoch=record.get("weights_epoch", record.get("best_epoch")),
                     environment=run_environment(device=device.type))  # fp32, eager
    write_json(paths.gradients_file(dataset, model_name), result)
    silent = f", {result['silent']} silent (counted)" if result["silent"] else ""
    dead = (f" ({result['dead']} dead: {', '.join(result['dead_layers'])})"
            if result["dead"] else "")
    print(f"gradients {dataset}/{model_name}: GHS {result['ghs']:.3f} ({cfg.norm} norm), "
          f"{result['vanishing']} vanishing{dead} / {result['exploding']} exploding{silent} of "
          f"{result['layers']} layers, norms {result['norm_min']:.2e}-{result['norm_max']:.2e} "
          f"(mean {result['norm_mean']:.2e}) over {result['batches']} batches of the "
          f"{cfg.split} split")


if __name__ == "__main__":
    stage_entry(main)
