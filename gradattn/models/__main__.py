"""`python -m gradattn.models`: parameter counts and CPU/GPU step times of every model."""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from gradattn.core.stage import entry
from gradattn.models import MODELS, PE_CHOICES, STEMS, build_model, count_parameters


def _variants() -> list[tuple[str, str, dict]]:
    """(label, model name, options): GradAttn once per positional encoding."""
    rows = []
    for name in MODELS:
        if name == "gradattn":
            rows += [(f"gradattn[pe={pe}]", name, {"pe": pe}) for pe in PE_CHOICES]
        else:
            rows.append((name, name, {}))
    return rows


def _step_ms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Mean forward+backward time in ms, after one warm-up step."""
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    step()  # warm-up: allocations, kernel selection
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gradattn.models", description=__doc__)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="image side in px")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--stem", default=STEMS[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device(args.device)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    if device.type == "cpu":
        where = f"cpu, {torch.get_num_threads()} threads"
    else:
        where = torch.cuda.get_device_name(device)
    print(
        f"batch {args.batch} x {args.channels}x{args.size}x{args.size}, {args.classes} classes, "
        f"stem={args.stem}; forward+backward mean of {args.steps} steps after 1 warm-up "
        f"({where}, torch {torch.__version__})"
    )

    rows = []
    base = None
    for label, name, options in _variants():
        model = build_model(name, args.classes, args.channels, stem=args.stem, **options)
        params = count_parameters(model.to(device))
        base = params if name == "resnet18" else base
        pct = 100 * (params - base) / base
        rows.append((label, params, params - base, pct, _step_ms(model, x, y, args.steps)))

    header = ("model", "params", "vs resnet18", "%", "fwd+bwd ms")
    width = max(len(r[0]) for r in rows) + 2
    print(f"{header[0]:<{width}}{header[1]:>12}{header[2]:>13}{header[3]:>9}{header[4]:>12}")
    print("-" * (width + 46))
    for label, params, diff, pct, ms in rows:
        print(f"{label:<{width}}{params:>12,}{diff:>+13,}{pct:>+8.1f}%{ms:>12.1f}")


if __name__ == "__main__":
    entry(main)
