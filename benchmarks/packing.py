"""Packing trainings onto one GPU: aggregate training images/s of K trainings at once.

    python benchmarks/packing.py                          # ResNet-18 and GradAttn, 32 px,
                                                          # K = 1, 2, 4, 8, every way
    python benchmarks/packing.py --modes processes mps --counts 1 4 8 --out packing.json
    python benchmarks/packing.py --dry                    # the plumbing only, on the CPU

Three ways to put K trainings on one GPU:

- `processes`: K separate processes (what `gradattn study run --per-gpu K` does). Their CUDA
  contexts time-slice the GPU: kernels of two processes never run at the same time.
- `mps`: the same K processes under one CUDA MPS daemon (`nvidia-cuda-mps-control -d`, in
  its own pipe folder; `gradattn study run --mps`), which lets their kernels share the SMs.
- `streams`: K models in one process, each step of each model replayed on its own CUDA
  stream, so the graphs of different models can overlap.

Each training is the project's own fast path (`StepEngine`: one CUDA graph per step, bf16,
channels_last, GPU-resident batches with the dataset's augmentation) on random 32 px RGB
images with 10 classes (speed does not depend on the pixels). All K set up (capture), wait
for each other, then train for --seconds; the aggregate is every training's images over the
window. `speedup` is the aggregate against one training alone: trainings per GPU-hour,
relative to one process. `--dry` runs every way on the CPU with tiny sizes (the eager
stand-in; streams become a plain loop): it checks the plumbing, not the speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, with or without installing
    sys.path.insert(0, str(ROOT))

from gradattn.core.stage import entry  # noqa: E402  (one-line errors, as the stages)

MODES = ("processes", "mps", "streams")
MODELS = ("resnet18", "gradattn")
COUNTS = (1, 2, 4, 8)


def _training(model_name: str, size: int, images: int, batch_size: int, device: str, seed: int):
    """A model, its StepEngine (set up: captured on a GPU) and batches of random images."""
    import numpy as np
    import torch

    from gradattn.core.settings import TrainConfig
    from gradattn.models import build_model
    from gradattn.prepared.batches import Batches
    from gradattn.training.optim import make_optimizer
    from gradattn.training.steps import StepEngine, resolve_plan

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (images, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, images)
    meta = {"mean": [0.5] * 3, "std": [0.25] * 3}
    train = Batches(x, y, meta, batch_size=batch_size, device=device, shuffle=True,
                    augment="crop_flip")
    cfg = TrainConfig(batch_size=batch_size, device=device, fast="on").resolve(
        "corrected", "packing")
    plan = resolve_plan(cfg, device)
    model = build_model(model_name, num_classes=10, in_channels=3).to(device)
    if plan.channels_last:
        model.to(memory_format=torch.channels_last)
    trainer = StepEngine(model, make_optimizer(model, cfg, plan), plan)
    trainer.prepare(train)
    model.train()
    return trainer, train


def _full_batches(train, epoch: int):
    """An epoch's full batches, endlessly (the graph's shape)."""
    while True:
        for x, y in train.epoch(epoch):
            if len(y) == train.batch_size:
                yield x, y
        epoch += 1


def _step(trainer, x, y) -> None:
    trainer.train_x.copy_(x)
    trainer.train_y.copy_(y)
    if trainer.train_graph is not None:
        trainer.train_graph.replay()
    else:  # the CPU stand-in
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer._train_body(trainer.train_x, trainer.train_y)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _worker(args: dict, ready, go, results) -> None:
    """One training in its own process: set up, wait for all, train for the window."""
    trainer, train = _training(args["model"], args["size"], args["images"], args["batch_size"],
                               args["device"], args["seed"])
    batches = _full_batches(train, 0)
    ready.put(os.getpid())
    go.wait()
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < args["seconds"]:
        for _ in range(10):
            _step(trainer, *next(batches))
        _sync(args["device"])
        steps += 10
    results.put((steps * train.batch_size, time.perf_counter() - t0))


def run_processes(k: int, args: dict, env: dict[str, str] | None = None) -> list[tuple]:
    """K trainings in K processes (environment `env` added, e.g. MPS's pipe folder)."""
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    saved = dict(os.environ)
    os.environ.update(env or {})  # spawned children inherit it before CUDA starts there
    try:
        procs = [ctx.Process(target=_worker, args=({**args, "seed": i}, ready, go, results))
                 for i in range(k)]
        for p in procs:
            p.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    for _ in procs:
        ready.get(timeout=600)
    go.set()
    out = [results.get(timeout=600 + args["seconds"] * 4) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a training process exited with {p.exitcode}")
    return out


def run_streams(k: int, args: dict) -> list[tuple]:
    """K trainings in this process, each stepping on its own CUDA stream."""
    import torch

    cuda = args["device"].startswith("cuda")
    runs = [_training(args["model"], args["size"], args["images"], args["batch_size"],
                      args["device"], i) for i in range(k)]
    streams = [torch.cuda.Stream() if cuda else None for _ in runs]
    batches = [_full_batches(train, 0) for _, train in runs]
    _sync(args["device"])
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < args["seconds"]:
        for _ in range(10):
            for (trainer, _), stream, it in zip(runs, streams, batches, strict=True):
                with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
                    _step(trainer, *next(it))
        _sync(args["device"])
        steps += 10
    wall = time.perf_counter() - t0
    return [(steps * train.batch_size, wall) for _, train in runs]


@contextlib.contextmanager
def mps_daemon():
    """An MPS control daemon in its own folders for as long as the block runs."""
    if not shutil.which("nvidia-cuda-mps-control"):
        raise RuntimeError("nvidia-cuda-mps-control is not on PATH")
    folder = Path(tempfile.mkdtemp(prefix="packing-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"),
           "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    for path in env.values():
        Path(path).mkdir()
    subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True, env={**os.environ, **env})
    try:
        yield env
    finally:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True,
                       env={**os.environ, **env})
        shutil.rmtree(folder, ignore_errors=True)


def measure(mode: str, k: int, args: dict) -> dict:
    if mode == "streams":
        out = run_streams(k, args)
    elif mode == "mps" and args["device"].startswith("cuda"):
        with mps_daemon() as env:
            out = run_processes(k, args, env)
    else:  # processes (and mps's plumbing on the CPU: no daemon there)
        out = run_processes(k, args)
    per = [images / wall for images, wall in out]
    return {"mode": mode, "model": args["model"], "k": k, "images_per_s": round(sum(per), 1),
            "per_training": [round(r, 1) for r in per]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--counts", nargs="+", type=int, default=list(COUNTS), metavar="K")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="the timed window of each measurement (default 20)")
    p.add_argument("--images", type=int, default=20_000,
                   help="random training images each training holds (default 20,000)")
    p.add_argument("--dry", action="store_true",
                   help="the plumbing on the CPU: tiny sizes, K = 1 and 2, a second each")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    a = p.parse_args()

    import torch

    if a.dry:
        device, a.counts, a.seconds, a.images, a.size, batch = "cpu", [1, 2], 1.0, 64, 32, 16
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU visible: benchmarks/packing.py measures a GPU "
                 "(`--dry` runs its plumbing on the CPU)")
    else:
        device, batch = "cuda", 128
    rows = []
    for model in a.models:
        for mode in a.modes:
            base = None
            for k in sorted(a.counts):
                args = {"model": model, "size": a.size, "images": a.images, "batch_size": batch,
                        "device": device, "seconds": a.seconds, "seed": 0}
                try:
                    row = measure(mode, k, args)
                except RuntimeError as err:
                    print(f"{model} {mode} K={k}: skipped ({err})", file=sys.stderr)
                    break
                base = base or (row["images_per_s"] if k == 1 else None)
                row["speedup"] = round(row["images_per_s"] / base, 2) if base else None
                rows.append(row)
                print(f"{model:9s} {mode:9s} K={k}: {row['images_per_s']:>9,.0f} img/s together"
                      f" ({row['speedup']}x one)", flush=True)
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor()
              or "cpu", "torch": torch.__version__, "size": a.size, "batch_size": batch,
              "seconds": a.seconds, "dry": a.dry, "results": rows}
    if a.out:
        a.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| model | way | K | images/s together | vs one |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['mode']} | {r['k']} | {r['images_per_s']:,.0f} | "
              f"{r['speedup']}x |")


if __name__ == "__main__":
    entry(main)
