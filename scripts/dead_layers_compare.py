"""Overlay dead-layer runs (JSONs of scripts/dead_layers.py) on shared axes, one line a run, to
compare ablations where `dead_layers.py --plot` draws each run in a column of its own:

    python scripts/dead_layers_compare.py A.json B.json ... --png out.png [--stage layer4]

    python scripts/dead_layers_compare.py BASELINE-seed42.json BASELINE-seed43.json \
        ARM-seed42.json ARM-seed43.json ... --png out.png --paired-at 10

Per epoch, for the stage's last block (`<stage>.1.bn2`, `<stage>.1.out`): batch norm's mean γ
and its median input variance (log scales; batch norm's ε dotted, an exact 0 drawn as x on the
floor: the stage then outputs a constant), the fraction of the stage's output channels silent on
the probe set, and the validation accuracy. Each run is labelled by its file name. It prints, per
run, the first epoch at which the input variance fell below ε and reached exactly 0.

`--paired-at EPOCH` also compares, at that epoch, each arm with the baseline seed for seed:
runs with the same settings but the seed form an arm, the first JSON's arm is the baseline, and
for every other arm it prints the mean of the per-seed differences in γ and in log10 of the
input variance, with their 95 % t-intervals (gradattn.reporting.stats, as `gradattn table`
pairs its runs), over the seeds both ran.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from gradattn.core.errors import GradattnError
from gradattn.core.io import read_json, write_with
from gradattn.core.stage import entry
from gradattn.reporting.stats import paired_difference

BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, which every model here uses
STAGES = ("layer1", "layer2", "layer3", "layer4")
FLOOR = 1e-16  # where an exact 0 is drawn on the log axes


def series(run: dict, stage: str) -> dict[str, list[float]]:
    """Per epoch: γ mean and median input variance of `<stage>.1.bn2`, silent fraction of
    `<stage>.1.out`, validation accuracy."""
    bn, out = f"{stage}.1.bn2", f"{stage}.1.out"
    rows = run["epochs"]
    return {"epoch": [r["epoch"] for r in rows],
            "gamma": [r["bn"][bn]["gamma_mean"] for r in rows],
            "var": [r["bn"][bn]["in_var_median"] for r in rows],
            "silent": [r["dead_frac"][out] for r in rows],
            "val": [r["val_acc"] for r in rows]}


def first_epoch(epochs: list[int], values: list[float], test) -> int | None:
    return next((e for e, v in zip(epochs, values, strict=True) if test(v)), None)


def read_runs(paths: list[Path]) -> list[tuple[Path, dict]]:
    return [(path, read_json(path, "name a JSON that scripts/dead_layers.py wrote (--out)"))
            for path in paths]


def load(files: list[tuple[Path, dict]], stage: str) -> dict[str, dict[str, list[float]]]:
    runs = {}
    for path, run in files:
        # Labelled by file name, or folder and name where two files share a name.
        label = path.stem if path.stem not in runs else f"{path.parent.name}/{path.stem}"
        try:
            runs[label] = series(run, stage)
        except (KeyError, TypeError) as err:
            raise GradattnError(f"{path}: no per-epoch record of {stage} ({err}): name a JSON "
                                "that scripts/dead_layers.py wrote (--out)") from None
        if not runs[label]["epoch"]:
            raise GradattnError(f"{path}: no finished epoch yet: wait for its first epoch")
    return runs


# What makes two runs the same arm: every setting but the seed and where it read and wrote.
NOT_ARM_KEYS = {"seed", "out", "cifar", "device", "save", "plot", "summary", "png", "decode_only"}


def arms(files: list[tuple[Path, dict]]) -> list[tuple[str, dict[int, dict]]]:
    """The runs grouped into arms (same settings but the seed), in the order first named:
    (the settings that differ from the first arm's, {seed: run})."""
    groups: list[tuple[dict, dict[int, dict]]] = []
    for path, run in files:
        if "args" not in run or "seed" not in run["args"]:
            raise GradattnError(f"{path}: no settings recorded (args): --paired-at needs JSONs "
                                "that scripts/dead_layers.py wrote through fit")
        settings = {k: v for k, v in run["args"].items() if k not in NOT_ARM_KEYS}
        group = next((g for g in groups if g[0] == settings), None)
        if group is None:
            group = (settings, {})
            groups.append(group)
        if run["args"]["seed"] in group[1]:
            raise GradattnError(f"{path}: a second run of the same arm and seed: name one")
        group[1][run["args"]["seed"]] = run
    base = groups[0][0]

    def label(settings: dict) -> str:
        changed = [f"{k}={settings.get(k)}" for k in sorted(settings.keys() | base.keys())
                   if settings.get(k) != base.get(k)]
        return ", ".join(changed) or "baseline"
    return [(label(settings), runs) for settings, runs in groups]


def at_epoch(run: dict, epoch: int, stage: str) -> dict[str, float] | None:
    row = next((r for r in run["epochs"] if r["epoch"] == epoch), None)
    if row is None:
        return None
    bn = row["bn"][f"{stage}.1.bn2"]
    var = bn["in_var_median"]
    return {"gamma": bn["gamma_mean"], "log10 var": math.log10(var) if var > 0 else -math.inf}


def paired_lines(groups: list[tuple[str, dict[int, dict]]], epoch: int, stage: str) -> list[str]:
    """Each arm of `arms()` against the first, seed for seed, at `epoch`."""
    def values(runs: dict[int, dict]) -> dict[int, dict[str, float]]:
        measured = {seed: at_epoch(run, epoch, stage) for seed, run in runs.items()}
        return {seed: v for seed, v in measured.items() if v is not None}

    baseline, lines = values(groups[0][1]), []
    for label, runs in groups[1:]:
        arm_values = values(runs)
        seeds = sorted(arm_values.keys() & baseline.keys())
        parts = []
        for key in ("gamma", "log10 var"):
            arm = {s: arm_values[s][key] for s in seeds}
            base = {s: baseline[s][key] for s in seeds}
            if any(math.isinf(v) for v in [*arm.values(), *base.values()]):
                parts.append(f"{key}: a variance exactly 0, not paired")
                continue
            d = paired_difference(arm, base)
            interval = (f"[{d.low:+.3g}, {d.high:+.3g}]" if d.n >= 2
                        else "(no interval below two seeds)")
            parts.append(f"{key} {d.mean:+.3g} {interval}")
        lines.append(f"{label} − baseline, epoch {epoch}, {stage}.1.bn2, n = {len(seeds)} "
                     f"(seeds {', '.join(map(str, seeds)) or 'none in common'}): "
                     + "; ".join(parts))
    return lines


def draw(runs: dict[str, dict[str, list[float]]], stage: str, png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    (ax_gamma, ax_var), (ax_silent, ax_val) = axes
    for i, (name, s) in enumerate(runs.items()):
        color = plt.get_cmap("tab10")(i % 10)
        ep = np.array(s["epoch"])
        for ax, key in ((ax_gamma, "gamma"), (ax_var, "var")):
            v = np.array(s[key], dtype=float)
            ax.plot(ep, np.where(v > 0, v, np.nan), color=color, lw=1.4,
                    label=name if key == "gamma" else None)
            shift = 0.12 * (i - (len(runs) - 1) / 2)  # side by side where several are 0
            ax.scatter(ep[v == 0] + shift, np.full((v == 0).sum(), FLOOR), marker="x",
                       color=color, s=18)
        ax_silent.plot(ep, s["silent"], color=color, lw=1.4)
        ax_val.plot(ep, s["val"], color=color, lw=1.4)
    ax_gamma.set(yscale="log", ylim=(FLOOR / 3, 3), title=f"{stage}.1.bn2: mean γ (x = exactly 0)")
    ax_var.set(yscale="log", ylim=(FLOOR / 3, 1e2),
               title=f"{stage}.1.bn2: median input variance (x = exactly 0)")
    ax_var.axhline(BN_EPS, color="red", lw=0.8, ls=":", label="batch norm's ε")
    ax_silent.set(ylim=(-0.03, 1.03), xlabel="epoch",
                  title=f"{stage}.1.out: fraction of channels silent on the probe set")
    ax_val.set(xlabel="epoch", title="validation accuracy")
    ax_var.legend(fontsize=7, loc="upper right")
    ax_gamma.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    write_with(png, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), suffix=".png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="JSONs of scripts/dead_layers.py")
    parser.add_argument("--png", type=Path, required=True, help="the figure to write")
    parser.add_argument("--stage", default="layer4", choices=STAGES)
    parser.add_argument("--paired-at", type=int, metavar="EPOCH",
                        help="also compare each arm with the first, seed for seed, at EPOCH")
    args = parser.parse_args(argv)
    if args.png.suffix != ".png":
        raise GradattnError(f"--png {args.png}: the figure is a PNG: give a path ending .png")
    files = read_runs(args.runs)
    runs = load(files, args.stage)
    # Grouped before anything is drawn, so that a run it cannot pair leaves no figure behind.
    groups = arms(files) if args.paired_at is not None else None
    draw(runs, args.stage, args.png)
    for name, s in runs.items():
        below = first_epoch(s["epoch"], s["var"], lambda v: v < BN_EPS)
        zero = first_epoch(s["epoch"], s["var"], lambda v: v == 0)
        print(f"{name}: {args.stage}.1.bn2 input variance below ε from epoch "
              f"{below or '-'}, exactly 0 from epoch {zero or '-'} "
              f"(of {s['epoch'][-1]}; γ {s['gamma'][-1]:.3g} at the last)")
    if groups is not None:
        for line in paired_lines(groups, args.paired_at, args.stage):
            print(line)
    print("wrote", args.png)
    return 0


if __name__ == "__main__":
    entry(main)
