"""Publishing a study: `gradattn table --publish results/<name>` writes a folder a reader can
check every number of without running anything.

- README.md: what ran (commit, the commands, when), Tables 1-6 under each setting (recipe),
  the key figures, and every run's provenance as its dvc.lock recorded it;
- tables.csv: the tables as tidy raw fractions (`gradattn table --format csv`);
- provenance.json: per run, its source revision, every recorded param, and the md5 of its
  prepared data, model file and metrics file (the dvc.lock entries), and the environment its
  train stage recorded;
- histories.json: per run, its per-epoch history (loss, accuracy, lr) as the train stage wrote it;
- curves-<setting>-<dataset>.png: loss and accuracy per epoch of every run, one colour per model.

The folder is written whole or not at all, and an existing one is replaced only with force,
and only if it is an earlier publication (`check_target`): never the project, a folder above
it, results/ itself, a file, or a folder holding anything publish does not write.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
from pathlib import Path

from gradattn.core.errors import GradattnError
from gradattn.core.io import atomic_dir, sweep_dead_of
from gradattn.reporting import table
from gradattn.reporting.experiments import Run

# README's provenance table shows these (provenance.json holds every recorded param): the
# value the stage ran with (the run record's, `auto` resolved) where it has one.
SHOWN = ("recipe", "train.max_epochs", "train.batch_size", "train.weights", "train.plateau",
         "data.split", "data.legacy_preprocessing")


# What a publication holds: publish writes these files and nothing else, so a folder holding
# README.md and provenance.json and nothing but these is one --force may replace.
PUBLISHED = ("README.md", "tables.csv", "provenance.json", "histories.json")
FIGURE = re.compile(r"curves-\d+-[a-z0-9-]+\.png")
# A study's or publication's folder name: one plain path component, never `.`/`..`/empty,
# never hidden (temporaries are `.<name>.tmp-…`).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
NAME_RULE = "a folder name of letters, digits and . _ + -, starting with a letter or digit"


def check_name(option: str, name: str, where: str | None = None) -> None:
    """Refuse a study or publication name that is not one plain folder name (`where`: how the
    user gave it, when the name is the last part of a path)."""
    if not NAME.fullmatch(name):
        given = f"{where}: the folder name {name!r}" if where else f"{option} {name!r}"
        raise GradattnError(f"{given} is not allowed: give {NAME_RULE} "
                            "(nothing was run or written)")


def check_target(folder: Path, repo: Path, *, force: bool, option: str = "--publish") -> None:
    """Refuse to publish into `folder` when that could delete what the user did not name: the
    project or a folder above it, results/ itself, a file or link, or (even with force) an
    existing folder that is not an earlier publication."""
    folder = Path(folder)
    where = f"{option} {str(folder)!r}" if option else str(folder)
    target, root = Path(os.path.realpath(folder)), Path(os.path.realpath(repo))
    if root.is_relative_to(target):
        what = "the project" if target == root else "a folder above the project"
        raise GradattnError(f"{where} is {what} ({target}), not a study folder: publish into "
                            "results/<name> (nothing was written)")
    if target == root / "results":
        raise GradattnError(f"{where} is results/ itself, which holds every published study: "
                            "publish into results/<name> (nothing was written)")
    check_name(option, folder.name, where)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        kind = "a link" if folder.is_symlink() else "a file"
        raise GradattnError(f"{where} is {kind}, not a folder: publish into a new folder such "
                            "as results/<name> (nothing was written)")
    entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not entries:
        return
    if not force:
        raise GradattnError(f"{folder} exists: pass --force to replace it (nothing was written)")
    foreign = [n for n in entries if n not in PUBLISHED and not FIGURE.fullmatch(n)]
    lacks = [n for n in ("README.md", "provenance.json") if n not in entries]
    if foreign or lacks:
        what = (f"holds {', '.join(foreign[:5])}{' …' if len(foreign) > 5 else ''}"
                if foreign else f"lacks {' and '.join(lacks)}")
        raise GradattnError(
            f"{where} is not an earlier publication (it {what}), so --force does not replace "
            "it: publish into a new folder, or move what you keep out of it (nothing was "
            "written)")


def _shown(row: dict, key: str):
    params = row.get("params") or {}
    section, _, name = key.partition(".")
    if section == "train" and name in (row.get("train_resolved") or {}):
        return row["train_resolved"][name]
    protocol = params.get("data.protocol") or {}
    if key == "data.split" and "split" in protocol:
        return protocol["split"]
    if key == "data.legacy_preprocessing" and "legacy_defect" in protocol:
        return protocol["legacy_defect"]
    return params.get(key, "–")


def git_commit(repo: Path, *, workspace: bool = True) -> str:
    """HEAD's full hash, with '+ uncommitted changes' when the tracked tree differs and the
    working tree's runs are part of the study."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "HEAD") or "unknown (not a git repository)"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{head} + uncommitted changes" if dirty and workspace else head


def _short(md5: str | None) -> str:
    return (md5 or "–")[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "study"


def _ordered(study: table.Study) -> list[tuple[int, Run]]:
    """(setting number, run) of every run: by setting, dataset, variant, seed."""
    return [(s + 1, run) for s, setting in enumerate(study.settings)
            for run in sorted((r for r in study.runs if r.setting == setting),
                              key=lambda r: (table._dataset_rank(r.dataset),
                                             table._variant_rank(r.model, r.options), r.seed))]


def provenance_rows(study: table.Study) -> list[dict]:
    return [{"setting": s, "dataset": run.dataset,
             "variant": study.label(run.model, run.options), "seed": run.seed,
             "top1": run.metrics.get("top1"), **run.provenance} for s, run in _ordered(study)]


def histories(study: table.Study) -> list[dict]:
    """Each run's per-epoch history, in provenance.json's order, named as its row there."""
    return [{"setting": s, "dataset": run.dataset,
             "variant": study.label(run.model, run.options), "seed": run.seed,
             "source": run.provenance.get("source"), "history": run.history}
            for s, run in _ordered(study)]


def _provenance_markdown(rows: list[dict]) -> str:
    header = ["Setting", "Dataset", "Model", "Seed", "Top-1 %", "Source", "Revision",
              *SHOWN, "Data md5", "Model md5", "Metrics md5", "Machine"]
    body = []
    for r in rows:
        env = r.get("environment") or {}
        machine = ", ".join(str(env[k]) for k in ("device", "precision", "fast") if k in env)
        top1 = r.get("top1")
        body.append([str(r["setting"]), r["dataset"], r["variant"], str(r["seed"]),
                     "–" if top1 is None else f"{100 * top1:.2f}", r.get("source", "–"),
                     (r.get("rev") or "–")[:10],
                     *[str(_shown(r, k)) for k in SHOWN],
                     _short(r.get("data_md5")), _short(r.get("model_md5")),
                     _short(r.get("metrics_md5")), machine or "–"])
    return table.markdown_table(header, body)


def _curves(study: table.Study, folder: Path) -> list[tuple[str, str]]:
    """(caption, file name) of one validation-curve figure per setting and dataset."""
    from gradattn.reporting.plots import plot_curves

    figures = []
    for s, setting in enumerate(study.settings):
        for dataset in study.datasets(setting):
            histories, groups = {}, {}
            for run in study.runs:
                if run.setting == setting and run.dataset == dataset and run.history:
                    variant = study.label(run.model, run.options)
                    label = f"{variant}, seed {run.seed}"
                    histories[label], groups[label] = run.history, variant
            if not histories:
                continue
            name = f"curves-{s + 1}-{_slug(dataset)}.png"
            recipe = setting.get("recipe", "")
            plot_curves(histories, folder / name, groups=groups,
                        title=f"{dataset} — setting {s + 1} ({recipe} recipe)")
            figures.append((f"{dataset}, setting {s + 1} ({recipe} recipe): loss and accuracy "
                            "per epoch, train dashed, validation solid, one colour per model "
                            "and one line per seed; the dot marks the best validation epoch",
                            name))
    return figures


def readme(name: str, study: table.Study, *, commit: str, command: str, commands: str | None,
           figures: list[tuple[str, str]], rows: list[dict], when: str) -> str:
    seeds = sorted({r.seed for r in study.runs})
    parts = [
        f"# {name}", "",
        f"Published {when} by `{command}` from commit `{commit}`. Every number below is read "
        "from the runs' own records (each revision's dvc.lock and the files it names, checked "
        "by md5), never from params.yaml; provenance.json holds each run's recorded params and "
        "hashes, tables.csv the tables as raw fractions, histories.json each run's per-epoch "
        "history.", "",
        f"{len(study.runs)} runs, {len(study.settings)} setting(s), seeds "
        f"{', '.join(map(str, seeds)) or '–'}. "
        + ("One seed per cell: a difference of a point or two may be noise."
           if all(len({r.seed for r in study.runs_in(st, d, v)}) <= 1
                  for st in study.settings for d in study.datasets(st)
                  for v in study.columns(st, False)) else
           "Cells with several seeds show mean ± std (n)."), "",
        "## How it was made", "",
    ]
    if commands:
        parts += ["```bash", commands.rstrip(), "```", ""]
    else:
        parts += ["(The commands that made the runs were not given: see each run's source and "
                  "recorded params below.)", ""]
    parts += ["## Tables", "", table.markdown(study).replace("\n# Setting", "\n### Setting")
              .replace("\n## Table", "\n#### Table"), ""]
    if figures:
        parts += ["## Figures", ""]
        for caption, file in figures:
            parts += [f"![{caption}]({file})", "", f"*{caption}.*", ""]
    settings = [f"{s + 1}. {label or 'the only setting'}"
                for s, label in enumerate(study.setting_labels)]
    parts += ["## Runs and their provenance", "",
              "Settings (what tells them apart):", "", *settings, "",
              "Data md5: the prepared data `train@` ran on; model md5: the model file it made; "
              "metrics md5: `evaluate@`'s metrics file (all three as dvc.lock records them). "
              "Machine: what the train stage recorded (device, precision, fast path).", "",
              _provenance_markdown(rows), ""]
    return "\n".join(parts)


def publish(runs: list[Run], folder: Path, *, repo: Path, command: str,
            commands: str | None = None, force: bool = False, workspace: bool = True) -> Path:
    """Write the study of `runs` into `folder` (see the module docstring); returns README.md."""
    folder = Path(folder)
    check_target(folder, repo, force=force)
    study = table.Study(runs)
    if not study.runs:
        raise GradattnError("no runs to publish: no metrics/<dataset>/<model>.json in the "
                            "workspace or the experiments (run `dvc repro` or `dvc exp run`)")
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = provenance_rows(study)
    # What an earlier publish of this folder left when it was killed (its process is gone).
    sweep_dead_of(folder.parent, folder.name)
    with atomic_dir(folder) as tmp:
        figures = _curves(study, tmp)
        (tmp / "tables.csv").write_text(table.csv(study))
        (tmp / "provenance.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
        (tmp / "histories.json").write_text(json.dumps(histories(study), indent=1) + "\n")
        (tmp / "README.md").write_text(readme(
            folder.name, study, commit=git_commit(repo, workspace=workspace), command=command,
            commands=commands,
            figures=figures, rows=rows, when=when))
    return folder / "README.md"
