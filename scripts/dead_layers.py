#!/usr/bin/env python
"""Why do GradAttn's layer3/layer4 convs end training with exactly zero gradient?

Trains one model of `gradattn.models` on a class-balanced CIFAR-10 subset with the project's
protocol (Adam lr 1e-3, coupled L2 1e-4, batch 128, cross-entropy, default init) and records,
every epoch:

- per conv: parameter-gradient norm and output-gradient norm averaged over the epoch's last
  `--probe-batches` training batches, an exact-zero flag, the weight norm, and the ratio
  |data gradient| / |weight-decay gradient| (below 1, Adam's normalised step is mostly decay);
- per ReLU site (stem, each block's inner ReLU, each block's output): the fraction of channels
  that never fire on a fixed probe set (BN in training mode, as the gradients see it);
- per BN: gamma/beta mean, fraction of negative beta, pre-activation mean, input variance;
- per step: which ReLU sites are completely dead (all channels), to date the death.

`--plot A.json B.json ... --png out.png` draws those JSONs side by side.

The data: the CIFAR-10 JPEG copy (`train/<class>/*.jpg`, `test/<class>/*.jpg`), e.g.

    mkdir -p /tmp/cifar && tar xzf ../shared/datasets/cifar10-jpeg.tar.gz -C /tmp/cifar
    python scripts/dead_layers.py --cifar /tmp/cifar --epochs 2 --n-train 512 --out /tmp/dl.json

Its findings (results/cifar10-dead-layers/, docs/findings.md "Dead layers on the CPU"): on
full CIFAR-10 (--n-train 45000 --n-val 5000 --n-test 10000, 22 epochs, about an hour on one
core) GradAttn's deep stages die at epoch 17-22 under the protocol and not under --optimizer
adamw. `--device cuda` runs on a GPU; scripts/dead_layers_gpu.sh runs the whole comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from gradattn.core.errors import GradattnError
from gradattn.core.io import atomic_path, read_json
from gradattn.core.settings import MODELS, PE_CHOICES, STEMS
from gradattn.core.stage import entry
from gradattn.models import build_model

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


# ---------------------------------------------------------------- data

def _class_files(cifar: Path, split: str) -> dict[str, list[Path]]:
    root = cifar / split
    if not root.is_dir():
        raise GradattnError(f"{root} not found: --cifar must name the folder holding the "
                            "JPEG copy's train/ and test/ class folders")
    return {c.name: sorted(c.glob("*.jpg")) for c in sorted(root.iterdir()) if c.is_dir()}


def _read(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])  # (N, 32, 32, 3)


def load_subsets(cifar: Path, n_train: int, n_val: int, n_test: int,
                 seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Class-balanced uint8 subsets (N, 3, 32, 32): train and val drawn disjointly from
    CIFAR-10's train split, test from its test split. Cached, since JPEG decoding is slow."""
    cache = cifar / f"subset-{n_train}-{n_val}-{n_test}-{seed}.pt"
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


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random 32-px crop of the zero-padded (4 px) image and a random horizontal flip."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=gen)
    dx = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(n)])
    out[flip] = out[flip].flip(-1)
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

def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The 16 (skip-free) or 20 (ResNet-18) backbone convs, by torchvision name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


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


def grad_snapshot(model: nn.Module, weight_decay: float) -> dict[str, dict[str, float]]:
    """Per conv / BN / Linear module: |data grad|, |w|, and |data grad| / |wd * w| (Adam's
    coupled L2 adds wd*w to the gradient before normalising, so where this ratio is < 1 the
    step is mostly decay of size ~lr, whatever the size of wd)."""
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) or m.weight.grad is None:
            continue
        g = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.parameters()
                                                  if p.grad is not None])).item()
        w = m.weight.detach().norm().item()
        out[name] = {"grad": g, "weight": w,
                     "grad_to_decay": g / (weight_decay * w) if weight_decay and w else None}
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
def accuracy(model: nn.Module, x: Tensor, y: Tensor, bs: int = 500) -> float:
    model.eval()
    correct = sum((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum().item()
                  for i in range(0, len(x), bs))
    return correct / len(x)


# ---------------------------------------------------------------- training

def make_optimizer(name: str, params, lr: float, wd: float) -> torch.optim.Optimizer:
    if name == "adam":  # the project's: L2 added to the gradient, then Adam-normalised
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":  # decoupled: decay not normalised by Adam's second moment
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"optimizer must be adam or adamw, got {name!r}")


def train(args: argparse.Namespace, out: Path) -> dict:
    """Train and measure; the JSON is rewritten after every epoch so a cut run still counts."""
    torch.set_num_threads(1)  # several runs side by side, one core each
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    data = load_subsets(args.cifar, args.n_train, args.n_val, args.n_test, args.seed)
    xtr, ytr = data["train"]
    mean = xtr.float().div(255).mean(dim=(0, 2, 3), keepdim=True)
    std = xtr.float().div(255).std(dim=(0, 2, 3), keepdim=True)

    def norm(x: Tensor) -> Tensor:
        return (x.float().div(255) - mean) / std

    # Batches are drawn and augmented on the CPU (same random stream on every device).
    x_probe = norm(xtr[: args.probe_size]).to(device)  # fixed, unaugmented
    xval, yval = norm(data["val"][0]).to(device), data["val"][1].to(device)
    xte, yte = norm(data["test"][0]).to(device), data["test"][1].to(device)

    options = {"stem": args.stem}
    if args.model == "gradattn":
        options["pe"] = args.pe
    model = build_model(args.model, num_classes=10, in_channels=3, **options).to(device)
    opt = make_optimizer(args.optimizer, model.parameters(), args.lr, args.weight_decay)
    rec = Recorder(model)
    gen = torch.Generator().manual_seed(args.seed)
    sites = list(relu_sites(model))
    first_all_dead: dict[str, int | None] = {s: None for s in sites}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    result = {"args": settings, "epochs": [], "first_step_all_dead": first_all_dead}
    steps_per_epoch = len(xtr) // args.batch_size  # drop the last partial batch
    step, t0 = 0, time.time()

    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(xtr), generator=gen)
        snaps, losses, correct = [], [], 0
        rec.out_grad.clear()
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size:(b + 1) * args.batch_size]
            x, y = norm(augment(xtr[idx], gen)).to(device), ytr[idx].to(device)
            last_batches = b >= steps_per_epoch - args.probe_batches
            rec.grab_out_grad = last_batches
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            step += 1
            for s, a in rec.alive.items():  # date the death of each ReLU site
                if first_all_dead[s] is None and not a.any():
                    first_all_dead[s] = step
            if last_batches:
                snaps.append(grad_snapshot(model, args.weight_decay))
            opt.step()
            losses.append(loss.item())
            correct += (logits.argmax(1) == y).sum().item()
        rec.grab_out_grad = False
        layers = average(snaps)
        for name, norms in rec.out_grad.items():
            layers[name]["out_grad"] = float(np.mean(norms))
        bn_fwd = dict(rec.bn)  # from the last training batch
        row = {
            "epoch": epoch, "step": step, "seconds": round(time.time() - t0, 1),
            "train_loss": float(np.mean(losses)),
            "train_acc": correct / (steps_per_epoch * args.batch_size),
            "val_acc": accuracy(model, xval, yval),
            "layers": layers,
            "dead_frac": probe(model, rec, x_probe),
            "bn": {k: {**v, **bn_fwd.get(k, {})} for k, v in bn_stats(model).items()},
        }
        result["epochs"].append(row)
        save(out, result)
        print(summary_line(row), flush=True)
    result["test_acc"] = accuracy(model, xte, yte)
    if args.save:
        torch.save(model.state_dict(), out.with_suffix(".pt"))
    result["seconds"] = round(time.time() - t0, 1)
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
    return (f"{Path(path).name}: {a['model']}{pe} stem={a['stem']} {a['optimizer']} "
            f"wd={a['weight_decay']:g} | epoch {last['epoch']} step {last['step']} val "
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
        ax.set_title(f"{a['model']} stem={a['stem']}{pe}"
                     + f"\n{a['optimizer']} wd={a['weight_decay']} n={a['n_train']}", fontsize=9)
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
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--probe-size", type=int, default=500)
    p.add_argument("--probe-batches", type=int, default=3, help="last batches of an epoch averaged")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda[:N]; fp32 either way (cuDNN may use TF32 for convs)")
    p.add_argument("--out", default=None, help="JSON path (default runs/<model>-<stem>-....json)")
    p.add_argument("--save", action="store_true", help="also save the final weights (.pt)")
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


def main() -> None:
    args = build_parser().parse_args()
    check_args(args)
    if args.plot:
        plot(args.plot, args.png)
        return
    if args.summary:
        for path in args.summary:
            print(summary(path, read_json(path, "name a JSON this script wrote (--out)")))
        return
    out = Path(args.out or f"runs/{args.model}-{args.stem}-{args.pe}-{args.optimizer}"
               f"-wd{args.weight_decay:g}-n{args.n_train}-e{args.epochs}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = train(args, out)
    save(out, result)
    print(f"test_acc {result['test_acc']:.3f}  {result['seconds']}s  -> {out}")


if __name__ == "__main__":
    entry(main)
