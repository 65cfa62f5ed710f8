#!/usr/bin/env python
"""Why do GradAttn's layer3/layer4 convs end training with exactly zero gradient?

Trains one model of `gradattn.models` on a class-balanced CIFAR-10 subset through the
library's own training loop (`gradattn.training.loop.fit`: the paper's Adam with coupled L2,
torch's plateau cut of the learning rate, early stopping, the best epoch's weights kept),
the library's optimiser (`gradattn.training.optim.make_optimizer`) and its batches and
augmentation (`gradattn.prepared`: crop + flip, as the corrected recipe for CIFAR-10), and
records through `fit`'s hooks (`on_step`: after each backward pass, before the optimiser's
step; `on_epoch`), every epoch:

- per conv / BN / Linear: the parameter-gradient norm and (convs) the output-gradient norm,
  averaged over the epoch's last `--probe-batches` training batches, an exact-zero flag, the
  weight norm, the unit-scale gradient ‖∂L/∂W‖·‖W‖ (for a weight that a batch norm makes
  scale-invariant, the gradient it would have at norm 1) and |data gradient| / |decay
  gradient| (below 1, Adam's normalised step is mostly decay);
- per ReLU site (stem, each block's inner ReLU, each block's output): the fraction of channels
  that never fire on a fixed probe set (BN in training mode, as the gradients see it);
- per BN: γ/β mean, fraction of negative β, pre-activation mean, input variance;
- per step: which ReLU sites are completely dead (all channels), to date the death.

The JSON (rewritten after every epoch) also holds the exact command, the gradattn commit and
environment (`gradattn.core.records.run_environment`), the script's sha256, the training
configuration `fit` ran with and the protocol's switches. A run killed part-way resumes from
its checkpoint (`<out>.ckpt`, `fit`'s) when started again with the same command.

What differs from the pipeline's train stage (everything else is the same code): the data
are a class-balanced subset of the JPEG copy drawn here (train and val from its train split,
test from its test split), normalised with the training subset's per-channel statistics (the
corrected recipe's `split` normalisation); the model's options are `gradattn.models`'
defaults but for --stem/--pe; the steps run eagerly in fp32 (`train.fast off`, also on a GPU,
since the hooks read every step); the cap is --epochs. `--no-plateau` and
`--no-early-stopping` switch the protocol's two rules off (their patience set beyond
--epochs; stated in the JSON's `protocol`): the runs in results/cifar10-dead-layers/ made
before this script trained through `fit` had neither rule, and dropped each epoch's last,
partial batch (351 steps an epoch on 45,000 images; `fit` takes 352).

The ablations of the dead-layer mechanism (issue 31; scripts/dead_layers_ablations.sh runs
all of them, two at a time) are options of this script:

- Adam with no decay: `--weight-decay 0`.
- AdamW at a comparable shrink: `--optimizer adamw --weight-decay 0.75`. Under Adam + L2 a
  weight whose data gradient is small next to wd·w takes Adam's normalised step of ~lr per
  coordinate, all of it decay: a relative shrink per step of order lr/|w_i|, whatever wd
  is. AdamW multiplies every weight by 1 - lr·wd a step. Measured in
  results/cifar10-dead-layers/cpu-full/gradattn-none-adam.json, the eight layer3/layer4
  convs' weight norms fell by exp(-r) a step with r = 6.6e-4 to 1.0e-3 (median 7.7e-4)
  between epochs 1 and 10 (ln(‖w‖ at 1 / ‖w‖ at 10) / 3,159 steps); at lr 1e-3, wd = 0.75
  gives lr·wd = 7.5e-4, the same shrink, now applied to every weight (the shallow ones,
  whose data gradient outweighs the coupled decay under Adam, too). The AdamW arm of
  cpu-full/ (wd 1e-4: 1e-7 a step) was effectively no decay.
- Adam + L2 with batch norm's γ/β and the biases exempt from the decay: `--no-decay-norm`
  (param groups of the library's make_optimizer, `decay_norm=False`).
- The taps without attention: `--model taps_mean`.
- A second seed of the protocol run: `--model gradattn --pe none --seed 43` (`--split-seed`
  stays 42: the same images, another initialisation, batch order and augmentation).
- And the baseline each arm changes one thing of, through this same loop: `--model gradattn
  --pe none` (cpu-full/gradattn-none-adam.json came from the earlier loop).

`--plot A.json B.json ... --png out.png` draws JSONs side by side; `--summary A.json ...`
prints one line each; scripts/dead_layers_compare.py overlays them on shared axes.

The data: the CIFAR-10 JPEG copy (`train/<class>/*.jpg`, `test/<class>/*.jpg`), e.g.

    mkdir -p /tmp/cifar && tar xzf ../shared/datasets/cifar10-jpeg.tar.gz -C /tmp/cifar
    python scripts/dead_layers.py --cifar /tmp/cifar --epochs 2 --n-train 512 --out /tmp/dl.json

Its findings (results/cifar10-dead-layers/, docs/findings.md "Dead layers on the CPU"): on
full CIFAR-10 (--n-train 45000 --n-val 5000 --n-test 10000, 22 epochs, about an hour on one
core) GradAttn's deep stages die at epoch 17-22 under Adam + coupled L2 and not under
AdamW at wd 1e-4. `--device cuda` runs on a GPU; scripts/dead_layers_gpu.sh runs the whole
comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from gradattn.core.errors import GradattnError
from gradattn.core.io import atomic_path, read_json
from gradattn.core.records import run_environment
from gradattn.core.settings import MODELS, PE_CHOICES, STEMS, TrainConfig
from gradattn.core.stage import entry
from gradattn.models import build_model
from gradattn.prepared.batches import Batches
from gradattn.training.loop import fit, make_deterministic
from gradattn.training.trained import predict

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
SCRIPT = Path(__file__).resolve()
# The corrected recipe's CIFAR-10 augmentation (gradattn.sources.cifar10).
AUGMENT = "crop_flip"
# What identifies a run for resuming its checkpoint (not where its files go).
NOT_RUN_KEYS = {"cifar", "out", "save", "plot", "summary", "png", "device", "decode_only"}


# ---------------------------------------------------------------- data

def _class_files(cifar: Path, split: str) -> dict[str, list[Path]]:
    root = cifar / split
    if not root.is_dir():
        raise GradattnError(f"{root} not found: --cifar must name the folder holding the "
                            "JPEG copy's train/ and test/ class folders")
    return {c.name: sorted(c.glob("*.jpg")) for c in sorted(root.iterdir()) if c.is_dir()}


def _read(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])  # (N, 32, 32, 3)


def subset_cache(cifar: Path, n_train: int, n_val: int, n_test: int, seed: int) -> Path:
    return cifar / f"subset-{n_train}-{n_val}-{n_test}-{seed}.pt"


def load_subsets(cifar: Path, n_train: int, n_val: int, n_test: int,
                 seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Class-balanced uint8 subsets (N, 3, 32, 32): train and val drawn disjointly from
    CIFAR-10's train split, test from its test split. Cached, since JPEG decoding is slow."""
    cache = subset_cache(cifar, n_train, n_val, n_test, seed)
    if cache.exists():
        return torch.load(cache)
    rng = np.random.default_rng(seed)
    train_files, test_files = _class_files(cifar, "train"), _class_files(cifar, "test")
    parts: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for label, cls in enumerate(train_files):
        files = [train_files[cls][i] for i in rng.permutation(len(train_files[cls]))]
        a, b = n_train // 10, n_val // 10
        for split, chosen in (("train", files[:a]), ("val", files[a:a + b])):
            parts[split][0].extend(chosen)
            parts[split][1].extend([label] * len(chosen))
        test = [test_files[cls][i] for i in rng.permutation(len(test_files[cls]))[: n_test // 10]]
        parts["test"][0].extend(test)
        parts["test"][1].extend([label] * len(test))
    out = {s: (torch.from_numpy(_read(f)).permute(0, 3, 1, 2).contiguous(), torch.tensor(y))
           for s, (f, y) in parts.items()}
    with atomic_path(cache) as tmp:  # a killed decode must not leave a cache that loads
        torch.save(out, tmp)
    return out


def split_meta(images: Tensor) -> dict:
    """The training subset's per-channel mean and std (population, float64), as the prepared
    format's `split` normalisation computes them: what `Batches` normalises with."""
    pixels = images.permute(0, 2, 3, 1).reshape(-1, images.shape[1]).double() / 255.0
    mean = pixels.mean(0)
    std = torch.sqrt(torch.clamp((pixels**2).mean(0) - mean**2, min=1e-12))
    return {"mean": mean.tolist(), "std": std.tolist()}


def make_batches(data: dict[str, tuple[Tensor, Tensor]], meta: dict, batch_size: int,
                 device: torch.device) -> dict[str, Batches]:
    """The library's batches: training shuffled and augmented (crop + flip), the others not."""
    def nhwc(x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1).contiguous()

    out = {split: Batches(nhwc(x), y, meta, batch_size=max(batch_size, 256), device=device)
           for split, (x, y) in data.items() if split != "train"}
    x, y = data["train"]
    out["train"] = Batches(nhwc(x), y, meta, batch_size=batch_size, device=device,
                           shuffle=True, augment=AUGMENT)
    return out


# ---------------------------------------------------------------- probes

def relu_sites(model: nn.Module) -> dict[str, tuple[nn.Module, bool]]:
    """Module whose output is (or directly feeds) each ReLU, and whether that output is
    already post-ReLU. In the skip-free net the block output is relu(bn2(.)); in ResNet-18
    it is relu(bn2(.) + identity), so the block output is the common post-ReLU point."""
    sites = {"stem": (model.bn1, False)}
    for stage in STAGES[1:]:
        for i, block in enumerate(getattr(model, stage)):
            sites[f"{stage}.{i}.relu1"] = (block.bn1, False)  # relu(bn1(conv1(x)))
            sites[f"{stage}.{i}.out"] = (block, True)  # the block's final ReLU
    return sites


class Recorder:
    """Forward hooks that note, per ReLU site, which channels fired (any value > 0 over the
    batch and all positions) and, per BN, input variance and output mean."""

    def __init__(self, model: nn.Module) -> None:
        self.alive: dict[str, Tensor] = {}
        self.bn: dict[str, dict[str, float]] = {}
        self.out_grad: dict[str, list[float]] = {}
        self.grab_out_grad = False
        self.handles = []
        for name, (module, _post) in relu_sites(model).items():
            self.handles.append(module.register_forward_hook(self._alive_hook(name)))
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                self.handles.append(m.register_forward_hook(self._bn_hook(name)))
            if isinstance(m, nn.Conv2d):
                self.handles.append(m.register_forward_hook(self._conv_hook(name)))

    def _alive_hook(self, name: str):
        def hook(_m, _inp, out: Tensor) -> None:
            # Channel fires if its post-ReLU value is > 0 somewhere: max over batch and space.
            self.alive[name] = out.detach().amax(dim=(0, 2, 3)) > 0
        return hook

    def _bn_hook(self, name: str):
        def hook(_m, inp: tuple[Tensor], out: Tensor) -> None:
            x, y = inp[0].detach(), out.detach()
            self.bn[name] = {
                # Per-channel batch variance of the conv output; BN's eps is 1e-5.
                "in_var_median": x.var(dim=(0, 2, 3)).median().item(),
                "pre_act_mean": y.mean().item(),
                "pre_act_pos_frac": (y > 0).float().mean().item(),
            }
        return hook

    def _conv_hook(self, name: str):
        def hook(_m, _inp, out: Tensor) -> None:
            if self.grab_out_grad and out.requires_grad:
                out.register_hook(lambda g: self.out_grad.setdefault(name, []).append(
                    g.detach().norm().item()))
        return hook


# ---------------------------------------------------------------- measurements

def bn_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """Gamma and beta of every BN: means, fraction of negative beta."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            g, b = m.weight.detach(), m.bias.detach()
            out[name] = {"gamma_mean": g.mean().item(), "gamma_absmax": g.abs().max().item(),
                         "beta_mean": b.mean().item(),
                         "beta_neg_frac": (b < 0).float().mean().item(),
                         "beta_max": b.max().item(),
                         # Pre-activation gamma*xhat + beta < 0 unless xhat > -beta/gamma: with
                         # batch-normalised xhat rarely above ~3, such channels are nearly off.
                         "off_frac": (b < -3 * g.abs()).float().mean().item()}
    return out


def grad_snapshot(model: nn.Module, decay: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per conv / BN / Linear module: |data grad| (all its parameters), |w| (its weight), the
    unit-scale gradient |dL/dw| * |w| (weight only: for a weight that a batch norm makes
    scale-invariant the gradient grows as 1/|w|, so this is what it would be at |w| = 1) and
    |data grad| / |wd * w| with the module's own decay `decay[name]` (Adam's coupled L2 adds
    wd*w to the gradient before normalising, so where this ratio is < 1 the step is mostly
    decay of size ~lr, whatever the size of wd)."""
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) or m.weight.grad is None:
            continue
        g = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.parameters()
                                                  if p.grad is not None])).item()
        w = m.weight.detach().norm().item()
        wd = decay[name]
        out[name] = {"grad": g, "weight": w, "unit_grad": m.weight.grad.norm().item() * w,
                     "grad_to_decay": g / (wd * w) if wd and w else None}
    return out


def average(snaps: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean of each field over snapshots; exact_zero if the gradient was 0.0 in all of them."""
    out = {}
    for name in snaps[0]:
        rows = [s[name] for s in snaps]
        out[name] = {k: (None if rows[0][k] is None else float(np.mean([r[k] for r in rows])))
                     for k in rows[0]}
        out[name]["exact_zero"] = all(r["grad"] == 0.0 for r in rows)
    return out


def dead_fractions(alive: dict[str, Tensor]) -> dict[str, float]:
    return {name: 1.0 - a.float().mean().item() for name, a in alive.items()}


@torch.no_grad()
def probe(model: nn.Module, rec: Recorder, x: Tensor) -> dict[str, float]:
    """Dead-channel fractions on a fixed probe batch, BN in training mode (batch statistics,
    as during training) but with momentum 0 so the running statistics stay untouched."""
    moms = {m: m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    for m in moms:
        m.momentum = 0.0
    model.train()
    model(x)
    for m, mom in moms.items():
        m.momentum = mom
    return dead_fractions(rec.alive)


@torch.no_grad()
def accuracy(model: nn.Module, batches: Batches) -> float:
    logits, labels = predict(model, batches)
    return (logits.argmax(1) == labels).float().mean().item()


# ---------------------------------------------------------------- training

def module_decay(model: nn.Module, args: argparse.Namespace) -> dict[str, float]:
    """Each module's weight decay as the optimiser applies it (--no-decay-norm: none on BN)."""
    exempt = (nn.BatchNorm2d,) if not args.decay_norm else ()
    return {name: 0.0 if isinstance(m, exempt) else args.weight_decay
            for name, m in model.named_modules()}


class Probes:
    """`fit`'s hooks. `on_step` (after the backward pass, before the optimiser's step) dates
    the death of every ReLU site and, in the epoch's last `--probe-batches` steps, takes the
    gradient snapshot; `on_epoch` adds the epoch's row to the JSON and rewrites it."""

    def __init__(self, model: nn.Module, args: argparse.Namespace, steps_per_epoch: int,
                 x_probe: Tensor, result: dict, out: Path):
        self.model, self.args, self.x_probe, self.result, self.out = (
            model, args, x_probe, result, out)
        self.steps_per_epoch = steps_per_epoch
        self.decay = module_decay(model, args)
        self.rec = Recorder(model)
        # What an earlier, killed run of the same settings wrote: kept if fit resumes it.
        self.previous = list(result["epochs"]), dict(result["first_step_all_dead"])
        result["epochs"].clear()
        self.dead = result["first_step_all_dead"]
        self.dead.update({site: None for site in self.dead})
        self.step, self.seconds, self.started = 0, 0.0, time.time()
        self.snaps: list[dict] = []
        self.bn_fwd: dict = {}
        self._arm()

    def _arm(self) -> None:
        """Grab output gradients in the next step when it is one of its epoch's last."""
        in_epoch = self.step % self.steps_per_epoch
        self.rec.grab_out_grad = in_epoch >= self.steps_per_epoch - self.args.probe_batches

    def on_step(self) -> None:
        self.step += 1
        for site, alive in self.rec.alive.items():  # the training batch's forward
            if self.dead[site] is None and not alive.any():
                self.dead[site] = self.step
        if self.rec.grab_out_grad:
            self.snaps.append(grad_snapshot(self.model, self.decay))
        if self.step % self.steps_per_epoch == 0:  # the epoch's last training batch
            self.bn_fwd = dict(self.rec.bn)
        self._arm()

    def on_epoch(self, history: list[dict]) -> None:
        if self.step == 0:  # fit resumed from its checkpoint: keep what it kept
            self.resumed(history)
            return
        h = history[-1]
        layers = average(self.snaps)
        for name, norms in self.rec.out_grad.items():
            layers[name]["out_grad"] = float(np.mean(norms))
        self.snaps, self.rec.out_grad = [], {}
        row = {
            "epoch": h["epoch"], "step": self.step,
            "seconds": round(self.seconds + time.time() - self.started, 1),
            "lr": h["lr"], "train_loss": h["train_loss"], "train_acc": h["train_accuracy"],
            "val_loss": h["val_loss"], "val_acc": h["val_accuracy"],
            "layers": layers,
            "dead_frac": probe(self.model, self.rec, self.x_probe),
            "bn": {k: {**v, **self.bn_fwd.get(k, {})} for k, v in bn_stats(self.model).items()},
        }
        self.result["epochs"].append(row)
        save(self.out, self.result)
        print(summary_line(row), flush=True)

    def resumed(self, history: list[dict]) -> None:
        """The earlier run's rows up to the checkpoint's last epoch (it may have been killed
        after writing one more row and before its checkpoint), and its step."""
        rows, dead = self.previous
        if [r["epoch"] for r in rows[: len(history)]] != [h["epoch"] for h in history]:
            raise SystemExit(f"error: {self.out} does not hold the epochs of its checkpoint: "
                             "delete both and run again")
        self.result["epochs"][:] = rows[: len(history)]
        self.step, self.seconds = rows[len(history) - 1]["step"], rows[len(history) - 1]["seconds"]
        self.dead.update({site: step for site, step in dead.items()
                          if step is not None and step <= self.step})
        self._arm()


def train_config(args: argparse.Namespace) -> TrainConfig:
    """What `fit` runs: the protocol (TrainConfig's defaults: plateau cut x0.2 after 3 epochs
    without a better val accuracy, early stopping after 7, the best epoch's weights kept)
    in fp32 on the eager path; a rule switched off gets a patience beyond --epochs."""
    defaults = TrainConfig()
    return TrainConfig(
        lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer,
        batch_size=args.batch_size, max_epochs=args.epochs, seed=args.seed,
        device=torch.device(args.device).type, precision="fp32", fast="off",
        weights=args.weights, plateau="torch",
        plateau_patience=args.epochs + 1 if args.no_plateau else defaults.plateau_patience,
        early_stopping_patience=(args.epochs + 1 if args.no_early_stopping
                                 else defaults.early_stopping_patience))


def run_settings(args: argparse.Namespace) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def run_identity(args: argparse.Namespace) -> str:
    """What a checkpoint must match to be resumed: the settings that change the run."""
    keys = {k: v for k, v in run_settings(args).items() if k not in NOT_RUN_KEYS}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def script_state() -> dict:
    """This file's sha256 and whether git sees it changed since the recorded commit."""
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--", SCRIPT.name],
                                cwd=SCRIPT.parent, capture_output=True, text=True, timeout=10)
        modified = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        modified = None
    return {"path": "scripts/dead_layers.py", "modified": modified,
            "sha256": hashlib.sha256(SCRIPT.read_bytes()).hexdigest()}


def protocol(cfg: TrainConfig, args: argparse.Namespace) -> dict:
    return {
        "loop": "gradattn.training.loop.fit (eager, fp32)",
        "optimizer": f"gradattn.training.optim.make_optimizer: {cfg.optimizer}, weight decay "
                     f"{cfg.weight_decay:g}" + ("" if args.decay_norm else
                                                ", none on batch/layer norm γ/β and biases"),
        "augment": f"gradattn.prepared.augment {AUGMENT}",
        "plateau": "off" if args.no_plateau else (
            f"torch ReduceLROnPlateau on val accuracy: x{cfg.plateau_factor:g} after "
            f"{cfg.plateau_patience} epochs without a better one, min lr {cfg.min_lr:g}"),
        "early_stopping": "off" if args.no_early_stopping else (
            f"after {cfg.early_stopping_patience} epochs without a better val accuracy"),
        "weights": f"{cfg.weights} (test_acc is measured on them)",
    }


def train(args: argparse.Namespace, out: Path, command: str | None = None) -> dict:
    """Train through `fit` and measure; the JSON is rewritten after every epoch so a cut run
    still counts, and a run started again with the same settings resumes (`<out>.ckpt`)."""
    torch.set_num_threads(1)  # several runs side by side, one core each
    device = torch.device(args.device)
    make_deterministic(args.seed, device)
    data = load_subsets(args.cifar, args.n_train, args.n_val, args.n_test, args.split_seed)
    meta = split_meta(data["train"][0])
    batches = make_batches(data, meta, args.batch_size, device)
    xtr, ytr = data["train"]
    x_probe = next(Batches(xtr[: args.probe_size].permute(0, 2, 3, 1), ytr[: args.probe_size],
                           meta, batch_size=args.probe_size, device=device).epoch())[0]

    options = {"stem": args.stem}
    if args.model == "gradattn":
        options["pe"] = args.pe
    model = build_model(args.model, num_classes=10, in_channels=3, **options)
    cfg = train_config(args)
    checkpoint, identity = out.with_name(out.name + ".ckpt"), run_identity(args)
    result = None
    if checkpoint.exists() and out.exists():
        result = json.loads(out.read_text())
        if result.get("run_id") != identity:
            result = None
        else:  # what ran the epochs before this resume (one entry per resume, same code or not)
            result.setdefault("earlier_parts", []).append(
                {k: result.get(k) for k in ("command", "environment", "script")})
    if result is None:
        checkpoint.unlink(missing_ok=True)  # no JSON of this run to go on from: start over
        result = {"args": run_settings(args), "run_id": identity, "epochs": [],
                  "first_step_all_dead": {s: None for s in relu_sites(model)}}
    result.update({
        "command": command, "environment": run_environment(
            device=device.type, precision=cfg.precision, fast=cfg.fast),
        "script": script_state(), "protocol": protocol(cfg, args),
        "train_config": asdict(cfg), "split_meta": meta,
        "images": {split: b.num_images for split, b in batches.items()}})
    probes = Probes(model, args, len(batches["train"]), x_probe, result, out)
    fitted = fit(model, batches["train"], batches["val"], cfg, checkpoint=checkpoint,
                 run_id=identity, on_step=probes.on_step, on_epoch=probes.on_epoch,
                 decay_norm=args.decay_norm, log=lambda line: print(line, flush=True),
                 progress=False)
    result.update({
        "best_epoch": fitted.best_epoch, "stopped_early": fitted.stopped_early,
        "weights_epoch": (fitted.best_epoch if cfg.weights == "best"
                          else fitted.history[-1]["epoch"]),
        "test_acc": accuracy(model, batches["test"]),
        "seconds": result["epochs"][-1]["seconds"] if result["epochs"] else 0.0})
    if args.save:
        torch.save(model.state_dict(), out.with_suffix(".pt"))
    save(out, result)
    checkpoint.unlink(missing_ok=True)
    return result


def save(out: Path, result: dict) -> None:
    """Rewrite the run's JSON whole or not at all: a run killed mid-write keeps the last one."""
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=1))


def summary_line(row: dict) -> str:
    """One line per epoch: loss, acc, per-stage last-ReLU dead fraction, layer3/4 grads."""
    L, D = row["layers"], row["dead_frac"]
    dead = " ".join(f"{s}:{D.get(s + '.1.out', D.get(s, 0)):.2f}" for s in STAGES)
    g = " ".join(f"{n.replace('layer', 'L').replace('.conv', 'c')}={L[n]['grad']:.1e}"
                 for n in ("layer2.1.conv2", "layer3.0.conv1", "layer3.1.conv2",
                           "layer4.0.conv1", "layer4.1.conv2") if n in L)
    return (f"ep {row['epoch']:3d} step {row['step']:5d} {row['seconds']:6.0f}s "
            f"loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} val {row['val_acc']:.3f} | "
            f"dead {dead} | {g}")


def summary(path: str, run: dict) -> str:
    """One line per run: what it was, how far it got, when each stage's output ReLU went
    completely silent (first step), and how many convs ended with exactly zero gradient."""
    a, eps = run["args"], run["epochs"]
    if not eps:
        return f"{path}: no epoch finished"
    last = eps[-1]
    died = run["first_step_all_dead"]
    when = " ".join(f"{s}:{died.get(s + '.1.out', died.get(s)) or '-'}" for s in STAGES)
    convs = [n for n in last["layers"] if "conv" in n]
    zero = [n for n in convs if last["layers"][n]["exact_zero"]]
    pe = f" pe={a['pe']}" if a["model"] == "gradattn" else ""
    test = f" test {run['test_acc']:.3f}" if "test_acc" in run else " (cut)"
    how = "" if a.get("decay_norm", True) else " no-norm-decay"
    if "protocol" not in run:  # made before the script trained through fit
        how += " (no plateau cut, no early stopping)"
    else:
        how += "".join(f" no-{rule.replace('_', '-')}" for rule in ("plateau", "early_stopping")
                       if run["protocol"][rule] == "off")
    return (f"{Path(path).name}: {a['model']}{pe} stem={a['stem']} {a['optimizer']} "
            f"wd={a['weight_decay']:g}{how} seed={a['seed']} | epoch {last['epoch']} step "
            f"{last['step']} val "
            f"{last['val_acc']:.3f}{test} | all-dead from step {when} | "
            f"{len(zero)}/{len(convs)} convs exactly 0 at the end")


# ---------------------------------------------------------------- plot

def plot(paths: list[str], png: str) -> None:
    """Per run (column): conv gradient norms per epoch (log; exact zeros drawn as x at the
    floor), the dead-channel fraction of each stage's last ReLU, and BN gamma/beta means."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_json(p, "name a JSON this script wrote (--out)") for p in paths]
    fig, axes = plt.subplots(4, len(runs), figsize=(5.2 * len(runs), 14), squeeze=False,
                             sharey="row")
    floor = 1e-24
    cmap = plt.get_cmap("viridis")
    for col, run in enumerate(runs):
        a, eps = run["args"], run["epochs"]
        ep = [r["epoch"] for r in eps]
        convs = [n for n in eps[0]["layers"] if "conv" in n and "downsample" not in n]
        ax = axes[0][col]
        for i, n in enumerate(convs):
            g = np.array([r["layers"][n]["grad"] for r in eps])
            c = cmap(i / max(1, len(convs) - 1))
            ax.plot(ep, np.where(g > 0, g, np.nan), color=c, lw=1.2,
                    label=n if n.endswith(".0.conv1") or n == "conv1" else None)
            zero = g == 0
            ax.scatter(np.array(ep)[zero], np.full(zero.sum(), floor), marker="x", color=c, s=25)
        ax.set_yscale("log")
        ax.set_ylim(floor / 3, 1e2)
        ax.axhline(floor, color="red", lw=0.5, ls=":")
        pe = f" pe={a['pe']}" if a["model"] == "gradattn" else ""
        norm = "" if a.get("decay_norm", True) else ", not on BN γ/β"
        ax.set_title(f"{a['model']} stem={a['stem']}{pe} seed={a['seed']}"
                     + f"\n{a['optimizer']} wd={a['weight_decay']:g}{norm} n={a['n_train']}",
                     fontsize=9)
        ax.set_ylabel("conv param-grad norm (x = exactly 0)")
        ax.legend(fontsize=7, loc="lower left")
        ax = axes[1][col]
        for s in STAGES:
            key = s if s == "stem" else f"{s}.1.out"
            ax.plot(ep, [r["dead_frac"][key] for r in eps], label=f"{key}")
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("dead-channel fraction (probe set)")
        ax.legend(fontsize=7)
        ax = axes[2][col]
        for s in STAGES[1:]:
            for bn in (f"{s}.1.bn2",):
                ax.plot(ep, [r["bn"][bn]["gamma_mean"] for r in eps], label=f"{bn} gamma")
                ax.plot(ep, [r["bn"][bn]["beta_mean"] for r in eps], ls="--", label=f"{bn} beta")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel("BN mean gamma (solid), beta (dashed)")
        ax.legend(fontsize=6, ncol=2)
        ax = axes[3][col]
        for s in STAGES[1:]:
            ax.plot(ep, [r["bn"][f"{s}.1.bn2"]["beta_neg_frac"] for r in eps], label=f"{s}.1.bn2")
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("fraction of channels with beta < 0")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print("wrote", png)


# ---------------------------------------------------------------- cli

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", type=Path, default=Path("cifar"),
                   help="folder of the CIFAR-10 JPEG copy (train/ and test/ class folders)")
    p.add_argument("--model", default="gradattn", choices=MODELS)
    p.add_argument("--stem", default=STEMS[0], choices=STEMS)
    p.add_argument("--pe", default="none", choices=PE_CHOICES)
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw"])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--decay-norm", action=argparse.BooleanOptionalAction, default=True,
                   help="--no-decay-norm: no weight decay on batch norm's γ/β and the biases")
    p.add_argument("--no-plateau", action="store_true",
                   help="no plateau cut of the learning rate (the protocol has one)")
    p.add_argument("--no-early-stopping", action="store_true",
                   help="train all --epochs (the protocol stops early)")
    p.add_argument("--weights", default="best", choices=["best", "last"],
                   help="the weights training ends with and test_acc measures (protocol: best)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10, help="at most this many (train.max_epochs)")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--probe-size", type=int, default=500)
    p.add_argument("--probe-batches", type=int, default=3, help="last batches of an epoch averaged")
    p.add_argument("--seed", type=int, default=42,
                   help="the training's seed: initial weights, batch order, augmentation")
    p.add_argument("--split-seed", type=int, default=42,
                   help="the draw of the class-balanced train/val/test subsets (until the "
                   "script trained through fit, --seed drew them: 42 either way)")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda[:N]; fp32 either way (cuDNN may use TF32 for convs)")
    p.add_argument("--out", default=None, help="JSON path (default runs/<model>-<stem>-....json)")
    p.add_argument("--save", action="store_true", help="also save the final weights (.pt)")
    p.add_argument("--decode-only", action="store_true",
                   help="only decode the JPEGs into the subset cache (before parallel runs)")
    p.add_argument("--plot", nargs="+", help="plot these JSONs instead of training")
    p.add_argument("--summary", nargs="+", help="print one line per JSON instead of training")
    p.add_argument("--png", default="dead_layers.png")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse, in one line, values that would fail deep in training (or measure nothing)."""
    for path in [*(args.summary or []), *(args.plot or [])]:
        if not Path(path).is_file():
            raise GradattnError(f"{path}: no such file: --summary and --plot take JSONs this "
                                "script wrote (--out)")
    if args.summary or args.plot:
        return
    positive = {"--batch-size": args.batch_size, "--epochs": args.epochs,
                "--probe-size": args.probe_size, "--probe-batches": args.probe_batches}
    for flag, value in positive.items():
        if value < 1:
            raise GradattnError(f"{flag} {value}: must be 1 or more")
    # Subsets are class-balanced: n // 10 images of each of the 10 classes.
    for flag, value in (("--n-train", args.n_train), ("--n-val", args.n_val),
                        ("--n-test", args.n_test)):
        if value < 10:
            raise GradattnError(f"{flag} {value}: the subsets take n // 10 images of each of "
                                f"the 10 classes, so it must be 10 or more")
    if args.n_train // 10 * 10 < args.batch_size:
        raise GradattnError(f"--n-train {args.n_train} gives {args.n_train // 10 * 10} training "
                            f"images, less than one batch (--batch-size {args.batch_size}): "
                            "raise --n-train or lower --batch-size")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise GradattnError(f"--device {args.device} asked for, but torch sees no CUDA GPU "
                            "here; use --device cpu or run on a machine with one")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.plot:
        plot(args.plot, args.png)
        return
    if args.summary:
        for path in args.summary:
            print(summary(path, read_json(path, "name a JSON this script wrote (--out)")))
        return
    if args.decode_only:
        if not subset_cache(args.cifar, args.n_train, args.n_val, args.n_test,
                            args.split_seed).exists():
            load_subsets(args.cifar, args.n_train, args.n_val, args.n_test, args.split_seed)
        return
    out = Path(args.out or f"runs/{args.model}-{args.stem}-{args.pe}-{args.optimizer}"
               f"-wd{args.weight_decay:g}-n{args.n_train}-e{args.epochs}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    script = SCRIPT.relative_to(SCRIPT.parents[1]).as_posix()
    result = train(args, out, command=shlex.join(["python", script, *argv]))
    print(f"test_acc {result['test_acc']:.3f}  {result['seconds']}s  -> {out}")


if __name__ == "__main__":
    entry(main)
