"""Train one (dataset, model) pair with the paper's protocol; resume from a checkpoint if killed.

The history (DVC plot data) and the per-epoch gradient norms are rewritten after every
epoch, so `dvc plots show` during a run shows the epochs so far."""

from dataclasses import asdict

from gradattn.core import paths
from gradattn.core.io import write_json
from gradattn.core.records import run_environment, write_run_record
from gradattn.core.stage import stage_args, stage_entry


def publish_history(dataset: str, model_name: str, rows: list[dict]) -> None:
    from gradattn.training.probe import split_grad_history

    # Per-epoch gradient norms go to their own file: DVC plots of the history need flat rows.
    history, grad_history = split_grad_history(rows)
    write_json(paths.grad_history_file(dataset, model_name), grad_history)
    write_json(paths.history_file(dataset, model_name), history)


def main() -> None:
    dataset, model_name = stage_args("dataset", "model")
    # Imported once the arguments are checked: a wrong call answers at once, without torch.
    from gradattn.core.device import resolve_device
    from gradattn.models import count_parameters
    from gradattn.prepared import load_meta
    from gradattn.prepared.batches import make_batches, uses_legacy_defect
    from gradattn.training.loop import fit, make_deterministic
    from gradattn.training.probe import parameter_grad_norms
    from gradattn.training.run_config import load_run_config, new_model, run_id
    from gradattn.training.steps import resolve_plan
    from gradattn.training.trained import save_trained

    cfg = load_run_config(dataset, model_name)
    train_cfg = cfg.train
    meta = load_meta(dataset)
    device = resolve_device(train_cfg.device)
    make_deterministic(train_cfg.seed, device)
    model = new_model(cfg, meta)
    train = make_batches(dataset, "train", meta, batch_size=train_cfg.batch_size, device=device,
                         train=True, legacy=uses_legacy_defect(meta))
    val = make_batches(dataset, "val", meta, batch_size=max(train_cfg.batch_size, 256),
                       device=device)
    print(f"train {dataset}/{model_name}: {train.num_images:,} train / {val.num_images:,} val "
          f"images on {device}, {count_parameters(model):,} parameters")
    identity = run_id(cfg, meta)
    resume = paths.resume_file(dataset, model_name, identity)
    result = fit(model, train, val, train_cfg, checkpoint=resume, run_id=identity,
                 grad_probe=parameter_grad_norms,
                 on_epoch=lambda rows: publish_history(dataset, model_name, rows))
    # The weights saved are the best epoch's (train.weights best) or the last one's (last).
    weights_epoch = (result.best_epoch if train_cfg.weights == "best"
                     else result.history[-1]["epoch"])
    save_trained(paths.model_file(dataset, model_name), model, cfg.as_dict(), meta,
                 best_epoch=result.best_epoch, epochs=len(result.history),
                 weights_epoch=weights_epoch)
    # What train.device/precision/fast `auto` became on this machine, too.
    plan = resolve_plan(train_cfg, device)
    ran = {**asdict(train_cfg), "device": device.type, "precision": plan.precision,
           "fast": "on" if plan.fast else "off"}
    write_run_record(dataset, model_name, "train", cfg.recipe, ran,
                     model_options=cfg.model_options,
                     legacy_preprocessing=uses_legacy_defect(meta),
                     best_epoch=result.best_epoch, weights_epoch=weights_epoch,
                     epochs=len(result.history),
                     environment=run_environment(device=device.type, precision=ran["precision"],
                                                 fast=ran["fast"]))
    resume.unlink(missing_ok=True)
    resumed = f", resumed after epoch {result.resumed_from}" if result.resumed_from else ""
    trained = result.history[result.resumed_from:]
    train_seconds = sum(r["seconds"] for r in trained)
    speed = (f", {len(trained) * train.num_images / train_seconds:,.0f} images/s"
             if train_seconds > 0 else "")
    print(f"train {dataset}/{model_name} ({cfg.recipe} recipe): best val accuracy "
          f"{result.best_val_accuracy:.4f} at epoch {result.best_epoch} of "
          f"{len(result.history)}, kept the weights of epoch {weights_epoch} "
          f"({result.seconds:.0f}s{resumed}{speed})")


if __name__ == "__main__":
    stage_entry(main)
