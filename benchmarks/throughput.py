"""Training throughput (images/s) of one epoch of real prepared data: eager fp32 against the
fast path (gradattn.training.steps: the whole step as one CUDA graph, bf16, channels_last).

    python benchmarks/throughput.py                      # fashionmnist-mini, 28/32/64/96 px
    python benchmarks/throughput.py --quick              # a short CPU run: 28/32 px, 2 batches
    python benchmarks/throughput.py --root /tmp/prepared --dataset fashionmnist --sizes 32 \\
        --out $OUT/throughput.json

The prepared training split (data/prepared/<dataset>, made by `dvc repro
preprocess@<dataset>`) is resized once per size, on the device, and trained on with the
dataset's own augmentation through `Batches` and `StepEngine`, the code `fit` runs. Each
measurement builds a fresh model (the paper's sizes), sets it up (the fast path's capture is
timed apart, as `setup_s`), warms up on a few batches, then times whole epochs (at least
--min-seconds) or, with --batches, that many batches. `data` is the input pipeline alone.
On a CPU the fast path is its eager stand-in, so the ratio there is about 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, with or without installing
    sys.path.insert(0, str(ROOT))

from gradattn.core.device import resolve_device  # noqa: E402
from gradattn.core.errors import GradattnError  # noqa: E402
from gradattn.core.settings import TrainConfig  # noqa: E402
from gradattn.core.stage import entry  # noqa: E402
from gradattn.models import build_model, count_parameters  # noqa: E402
from gradattn.prepared.batches import Batches  # noqa: E402
from gradattn.prepared.format import load_meta, load_split  # noqa: E402
from gradattn.training.optim import make_optimizer  # noqa: E402
from gradattn.training.steps import Plan, StepEngine, resolve_plan  # noqa: E402

SIZES = (28, 32, 64, 96)
QUICK_SIZES = (28, 32)
MODELS = ("resnet18", "gradattn")
WARMUP_BATCHES = 5


def resize_uint8(images: np.ndarray, size: int, device: torch.device,
                 chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 (N, size, size, C) on `device`, resized there (bilinear,
    antialiased when shrinking)."""
    n, h, w, c = images.shape
    out = torch.empty((n, size, size, c), dtype=torch.uint8, device=device)
    for start in range(0, n, chunk):
        x = torch.from_numpy(np.array(images[start : start + chunk])).to(device)
        x = x.permute(0, 3, 1, 2).float()  # (B, C, H, W)
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < min(h, w))
        out[start : start + chunk] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_rate(batches: Batches, max_batches: int | None, min_seconds: float) -> float:
    """Images/s of the input pipeline alone (shuffle, gather, augment, normalise)."""
    seen, elapsed, epoch = 0, 0.0, 0
    while True:
        _sync(batches.device)
        t0 = time.perf_counter()
        for _x, y in islice(batches.epoch(epoch), max_batches):
            seen += len(y)
        _sync(batches.device)
        elapsed += time.perf_counter() - t0
        epoch += 1
        if max_batches is not None or elapsed >= min_seconds:
            return seen / elapsed


def measure(model_name: str, plan: Plan, batches: Batches, meta: dict, *,
            max_batches: int | None, min_seconds: float,
            warmup_batches: int = WARMUP_BATCHES) -> dict:
    """One model, one plan: setup time and training images/s."""
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=meta["num_classes"],
                        in_channels=meta["channels"]).to(plan.device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    cfg = TrainConfig()
    optimizer = make_optimizer(model, cfg, plan)
    trainer = StepEngine(model, optimizer, plan)
    model.train()
    _sync(plan.device)
    t0 = time.perf_counter()
    trainer.prepare(batches)
    _sync(plan.device)
    setup = time.perf_counter() - t0
    trainer.train_epoch(islice(batches.epoch(0), warmup_batches))  # ends with a device sync
    seen, elapsed, epoch = 0, 0.0, 1
    while True:
        t0 = time.perf_counter()
        _loss, _correct, n = trainer.train_epoch(islice(batches.epoch(epoch), max_batches))
        elapsed += time.perf_counter() - t0
        seen += n
        epoch += 1
        if max_batches is not None or elapsed >= min_seconds:
            break
    result = {
        "model": model_name, "params": count_parameters(model), "plan": trainer.describe(),
        "images_per_s": seen / elapsed, "images": seen, "seconds": round(elapsed, 3),
        "setup_s": round(setup, 3),
    }
    del trainer, optimizer, model
    if plan.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashionmnist-mini")
    parser.add_argument("--root", default=str(ROOT / "data" / "prepared"),
                        help="folder of prepared datasets (default: data/prepared)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=None,
                        help=f"image sizes in px (default {SIZES}; --quick: {QUICK_SIZES})")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batches", type=int, default=None,
                        help="time this many batches instead of whole epochs")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="time whole epochs until at least this long (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="short CPU check: 28/32 px, 1 warm-up and 2 timed batches")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    sizes = args.sizes or list(QUICK_SIZES if args.quick else SIZES)
    max_batches = args.batches if args.batches is not None else (2 if args.quick else None)

    device = resolve_device(args.device)
    try:
        meta = load_meta(args.dataset, args.root)
        images, labels = load_split(args.dataset, "train", args.root)
    except GradattnError as err:
        raise GradattnError(f"{err} (the bundled set: `dvc repro preprocess@fashionmnist-mini`, "
                            "or `python stages/configure.py && python stages/download.py "
                            "fashionmnist-mini && python stages/preprocess.py "
                            "fashionmnist-mini`)") from None
    plans = {
        "eager_fp32": resolve_plan(TrainConfig(fast="off", precision="fp32"), device),
        "fast": resolve_plan(TrainConfig(fast="on"), device),
    }
    print(f"throughput: {args.dataset} train split, {len(labels):,} images, batch "
          f"{args.batch_size}, on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; fast = {plans['fast'].describe()}", flush=True)

    rows, data = [], {}
    for size in sizes:
        resized = resize_uint8(images, size, device)
        batches = Batches(resized, labels, meta, batch_size=args.batch_size, device=device,
                          shuffle=True, augment=meta.get("augment", "none"))
        data[size] = data_rate(batches, max_batches, args.min_seconds)
        for name in args.models:
            row = {"size": size}
            for mode, plan in plans.items():
                r = measure(name, plan, batches, meta, max_batches=max_batches,
                            min_seconds=args.min_seconds,
                            warmup_batches=1 if args.quick else WARMUP_BATCHES)
                row[mode] = r
                print(f"  {name:9s} {size:3d}px {mode:10s} {r['images_per_s']:10,.0f} img/s "
                      f"({r['images']:,} images in {r['seconds']:.2f}s, set-up "
                      f"{r['setup_s']:.2f}s)", flush=True)
            row["model"] = name
            row["ratio"] = row["fast"]["images_per_s"] / row["eager_fp32"]["images_per_s"]
            rows.append(row)
        del batches, resized

    header = (f"{'model':9s} {'size':>4s} {'eager fp32 img/s':>17s} {'fast img/s':>11s} "
              f"{'ratio':>6s} {'data img/s':>11s}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['model']:9s} {r['size']:4d} {r['eager_fp32']['images_per_s']:17,.0f} "
              f"{r['fast']['images_per_s']:11,.0f} {r['ratio']:6.2f} {data[r['size']]:11,.0f}")
    if args.out:
        report = {
            "dataset": args.dataset, "images": len(labels), "batch_size": args.batch_size,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
            platform.processor() or platform.machine(),
            "torch": torch.__version__, "quick": args.quick, "timed_batches": max_batches,
            "plans": {k: p.describe() for k, p in plans.items()},
            "data_images_per_s": {str(k): v for k, v in data.items()},
            "results": rows,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    entry(main)
