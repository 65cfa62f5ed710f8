"""Draw a train stage's per-epoch gradient history (metrics/<dataset>/<model>.grad_history.json)
as a layer × epoch heat map, exact zeros (dead layers) in red, and print, per layer, the first
epoch from which its gradient stayed exactly zero.

    python scripts/grad_history_figure.py HISTORY.json OUT.png --title "GradAttn, CIFAR-10"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gradattn.core.stage import entry
from gradattn.reporting.plots import plot_gradient_heatmap


def first_dead_epochs(rows: list[dict]) -> dict[str, int]:
    """Layer -> the first epoch from which its norm is exactly 0 at every later epoch."""
    by_layer: dict[str, dict[int, float]] = {}
    for row in rows:
        by_layer.setdefault(row["layer"], {})[row["epoch"]] = row["norm"]
    dead = {}
    for layer, norms in by_layer.items():
        epochs = sorted(norms)
        alive = [e for e in epochs if norms[e] != 0.0]
        last_alive = alive[-1] if alive else 0
        if last_alive < epochs[-1]:
            dead[layer] = next(e for e in epochs if e > last_alive)
    return dead


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history", type=Path, help="a *.grad_history.json of the train stage")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--title", default="", help="figure title (default: the file name)")
    args = parser.parse_args(argv)
    try:
        rows = json.loads(args.history.read_text())
    except (OSError, ValueError) as err:
        print(f"error: {args.history}: cannot read it as JSON ({err}): name a "
              "metrics/<dataset>/<model>.grad_history.json", file=sys.stderr)
        return 2
    plot_gradient_heatmap(rows, args.out, title=args.title or args.history.name)
    dead = first_dead_epochs(rows)
    print(f"wrote {args.out}; " + (", ".join(f"{k} dead from epoch {v}" for k, v in dead.items())
                                   if dead else "no layer dead at the end"))
    return 0


if __name__ == "__main__":
    entry(main)
