"""`gradattn table`: the paper's Tables 1-5 over many runs, pooled over seeds.

A *run* is one trained (dataset, model) pair of one revision: the workspace, a commit, a DVC
experiment. What a run depends on is read from its revision's params.yaml and split three ways:

- the *variant*: the model and the options that model takes (GradAttn's `pe` among them);
- the *setting*: everything else (data split, training protocol, evaluation), seed excepted;
- the *seed*.

Runs that differ only in their seed are pooled: mean ± sample std (ddof=1) and n. The same run
often shows up in several revisions (an experiment that changed only `model.pe` gets
ResNet-18's metrics back from DVC's run cache, byte for byte), so each (setting, dataset,
variant, seed) counts once. With ≥ 3 seeds in common, a cell also shows its difference from
ResNet-18 with a 95 % t-interval of the per-seed differences (paired by seed).

Markdown reuses gradattn.report's cells and tables (Tables 2, 3, 5 are its own functions);
CSV is one tidy row per (setting, dataset, variant, metric) with raw fractions.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from scipy import stats

from gradattn import paths, report
from gradattn.config import DataConfig, EvaluateConfig, TrainConfig
from gradattn.errors import GradattnError

BASELINE = "resnet18"
LEVEL = 0.95
MIN_PAIRED = 3  # seeds in common before a cell shows its difference from ResNet-18
# The paper's Table 1 columns: shown even when nothing ran for them.
PAPER_VARIANTS = (("resnet18", {}), ("gradattn", {"pe": "none"}),
                  ("gradattn", {"pe": "learnable"}), ("gradattn", {"pe": "rope"}))
MODEL_ORDER = ("resnet18", "gradattn", "se_resnet18", "cbam_resnet18", "noskip18", "taps_mean")
PE_ORDER = ("none", "learnable", "rope")
# The paper's dataset order; other datasets follow, alphabetically.
DATASET_ORDER = ("tinyimagenet", "svhn", "cifar10", "fashionmnist", "tissuemnist", "bloodmnist",
                 "pcam", "padufes")
# Settings that cannot change a run's numbers, so they do not split runs apart.
IGNORED = {"train.num_workers", "evaluate.batch_size"}


@dataclass(frozen=True)
class Table:
    title: str
    metrics: tuple[str, ...]
    wide: bool  # datasets × variants of one metric (with the paired difference), else long


TABLES = {
    1: Table("Table 1 — Top-1 accuracy (%)", ("top1",), wide=True),
    2: Table("Table 2 — Extended metrics", ("top3", "top5", "f1_macro", "ece"), wide=False),
    3: Table("Table 3 — Precision, recall and F1",
             ("precision_macro", "precision_weighted", "recall_macro", "recall_weighted",
              "f1_macro", "f1_weighted"), wide=False),
    4: Table("Table 4 — Train–validation gap (percentage points)", ("train_val_gap",), wide=True),
    5: Table("Table 5 — Gradient flow (Gradient Health Score)",
             ("ghs", "vanishing", "exploding", "norm_mean", "norm_min", "norm_max", "norm_std"),
             wide=False),
}


# --- runs -----------------------------------------------------------------------------------

@dataclass
class Run:
    source: str  # where it was read: "workspace", "exp <name>", "commit <name>", "rev <name>"
    dataset: str
    model: str
    options: dict  # the model options this model takes
    setting: dict  # flat "section.key" → value: all the run depends on but model and seed
    seed: int
    metrics: dict
    gradients: dict | None = None

    @property
    def key(self) -> str:
        return json.dumps([self.setting, self.dataset, self.model, self.options, self.seed],
                          sort_keys=True, default=str)


def identify(params: dict, dataset: str, model: str) -> tuple[dict, dict, int]:
    """(model options, setting, seed) of one run, from its revision's params.yaml (as a dict).

    Missing keys take the config's defaults, so an old params.yaml that lacks a key matches a
    new one that spells out the default."""
    from gradattn.models import default_options

    try:
        defaults = default_options(model)
    except ValueError:  # a model this code no longer knows: told apart by its name only
        defaults = {}
    given = params.get("model") or {}
    options = {k: given.get(k, v) for k, v in defaults.items()}
    data = params.get("data") or {}
    train = {**asdict(TrainConfig()), **(params.get("train") or {})}
    seed = train.pop("seed")
    evaluate = {**asdict(EvaluateConfig()), **(params.get("evaluate") or {})}
    setting = {
        "data.split": data.get("split", DataConfig.split),
        "data.split_seed": data.get("split_seed", DataConfig.split_seed),
        "data.legacy_preprocessing": data.get("legacy_preprocessing",
                                              DataConfig.legacy_preprocessing),
        "data.custom": (data.get("custom") or {}).get(dataset),
        **{f"train.{k}": v for k, v in train.items()},
        **{f"evaluate.{k}": v for k, v in evaluate.items()},
    }
    return options, {k: v for k, v in setting.items() if k not in IGNORED}, int(seed)


def runs_of(source: str, params: dict, read_json) -> list[Run]:
    """The runs one revision holds: each (dataset, model) its params name whose metrics file
    exists there. read_json(path) returns the parsed file or None."""
    data = params.get("data") or {}
    datasets = data.get("datasets", list(DataConfig.datasets))
    models = params.get("models", ["resnet18", "gradattn"])
    runs = []
    for dataset in [datasets] if isinstance(datasets, str) else datasets:
        for model in [models] if isinstance(models, str) else models:
            metrics = read_json(paths.metrics_file(dataset, model).as_posix())
            if not metrics:
                continue
            options, setting, seed = identify(params, dataset, model)
            runs.append(Run(source, dataset, model, options, setting, seed, metrics,
                            read_json(paths.gradients_file(dataset, model).as_posix())))
    return runs


def distinct(runs: Iterable[Run]) -> tuple[list[Run], list[str]]:
    """Each (setting, dataset, variant, seed) once, first come first kept; warnings for
    duplicates whose metrics differ (same settings and seed, different numbers: another code
    version, or a stale workspace)."""
    kept: dict[str, Run] = {}
    warnings = []
    for run in runs:
        first = kept.setdefault(run.key, run)
        if first is run:
            continue
        if first.metrics != run.metrics:
            warnings.append(f"{run.source} and {first.source} both hold {run.dataset}/"
                            f"{run.model} {run.options or ''} seed {run.seed} with the same "
                            f"settings but different metrics; using {first.source}'s")
        elif first.gradients is None and run.gradients is not None:
            first.gradients = run.gradients
    return list(kept.values()), warnings


# --- where runs come from: the workspace, experiments, named revisions ------------------------

def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=check)


def run_dvc(root: Path, *args: str) -> str:
    """stdout of `dvc *args` run in root (this interpreter's dvc); GradattnError on failure."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True,
                          text=True)
    if done.returncode:
        raise GradattnError(f"`dvc {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def read_revision(root: Path, rev: str | None):
    """read_json(path) for one revision: rev=None reads the working tree."""
    def read_json(path: str):
        if rev is None:
            file = root / path
            text = file.read_text() if file.is_file() else None
        else:
            done = _git(root, "show", f"{rev}:{path}", check=False)
            text = done.stdout if done.returncode == 0 else None
        return json.loads(text) if text else None
    return read_json


def read_params(root: Path, rev: str | None) -> dict | None:
    if rev is None:
        file = root / "params.yaml"
        return yaml.safe_load(file.read_text()) if file.is_file() else None
    done = _git(root, "show", f"{rev}:params.yaml", check=False)
    return (yaml.safe_load(done.stdout) or {}) if done.returncode == 0 else None


def experiment_revisions(root: Path, all_commits: bool = False) -> list[tuple[str, str]]:
    """(label, sha) of the baseline commits and finished experiments `dvc exp show` lists."""
    shown = json.loads(run_dvc(root, "exp", "show", "--json", *(["-A"] if all_commits else [])))
    out = []
    for base in shown:
        if base["rev"] == "workspace" or base.get("error"):
            continue
        out.append((f"commit {base.get('name') or base['rev'][:7]}", base["rev"]))
        for exp in base.get("experiments") or []:
            # Queued, running and failed experiments have no results yet.
            if (exp.get("executor") or {}).get("state", "success") != "success":
                continue
            for rev in exp.get("revs") or []:
                if not rev.get("error"):
                    out.append((f"exp {rev.get('name') or rev['rev'][:7]}", rev["rev"]))
    return out


def resolve_revision(root: Path, name: str) -> str:
    """The commit sha of a git revision or of a DVC experiment's name."""
    done = _git(root, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", check=False)
    if done.returncode == 0:
        return done.stdout.strip()
    refs = _git(root, "for-each-ref", "--format=%(objectname) %(refname)", "refs/exps").stdout
    for line in refs.splitlines():
        sha, ref = line.split(" ", 1)
        if ref.rsplit("/", 1)[-1] == name:
            return sha
    raise GradattnError(f"--rev {name}: neither a git revision nor a DVC experiment here")


def collect_runs(root: str | Path = ".", *, revs: Iterable[str] = (), experiments: bool = True,
                 all_commits: bool = False, workspace: bool = True) -> list[Run]:
    """Every run of the named revisions, then of `dvc exp show`'s commits and experiments,
    then of the working tree (last: its files may be stale against its params.yaml)."""
    root = Path(root)
    sources: list[tuple[str, str | None]] = [(f"rev {r}", resolve_revision(root, r))
                                             for r in revs]
    if experiments:
        sources += experiment_revisions(root, all_commits)
    if workspace:
        sources.append(("workspace", None))
    runs, seen = [], set()
    for label, rev in sources:
        if rev is not None and rev in seen:
            continue
        seen.add(rev)
        params = read_params(root, rev)
        if params is not None:
            runs += runs_of(label, params, read_revision(root, rev))
    return runs


# --- pooling ---------------------------------------------------------------------------------

def mean_std(values: Iterable[float]) -> tuple[int, float, float]:
    """(n, mean, sample std); std is NaN below two values, mean NaN for none."""
    nums = [float(v) for v in values if v is not None and not _isnan(v)]
    n = len(nums)
    if n == 0:
        return 0, math.nan, math.nan
    mean = sum(nums) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in nums) / (n - 1)) if n > 1 else math.nan
    return n, mean, std


@dataclass(frozen=True)
class Difference:
    n: int  # seeds both sides ran
    mean: float
    low: float
    high: float


def paired_difference(values: dict[int, float], baseline: dict[int, float],
                      level: float = LEVEL) -> Difference:
    """Mean of the per-seed differences values[s] − baseline[s] over common seeds, and its
    t-interval (mean ± t_{(1+level)/2, n−1} · sd / √n); NaN bounds below two seeds."""
    seeds = sorted(s for s in values.keys() & baseline.keys()
                   if not _isnan(values[s]) and not _isnan(baseline[s]))
    n, mean, sd = mean_std(values[s] - baseline[s] for s in seeds)
    if n < 2:
        return Difference(n, mean, math.nan, math.nan)
    half = stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return Difference(n, mean, mean - half, mean + half)


def _isnan(v) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _describe(items: list[dict]) -> list[str]:
    """For each dict, 'k=v, ...' over the keys whose values differ among the dicts."""
    flats = [_flat(d) for d in items]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
    return [", ".join(f"{k}={f.get(k)}" for k in varying) for f in flats]


def _dataset_rank(name: str) -> tuple:
    norm = re.sub(r"[^a-z0-9]", "", name.lower())
    for i, prefix in enumerate(DATASET_ORDER):
        if norm.startswith(prefix):
            return (i, name)
    return (len(DATASET_ORDER), name)


def _variant_rank(model: str, options: dict) -> tuple:
    m = MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER)
    pe = options.get("pe")
    p = PE_ORDER.index(pe) if pe in PE_ORDER else len(PE_ORDER)
    return (m, model, p, json.dumps(options, sort_keys=True, default=str))


@dataclass
class Study:
    """Distinct runs, labelled, with the settings they fall in (each gets its own tables)."""
    runs: list[Run]
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.runs, dup = distinct(self.runs)
        self.warnings += dup
        settings = []
        for run in self.runs:
            if run.setting not in settings:
                settings.append(run.setting)
        self.settings = settings
        self.setting_labels = _describe(settings) if len(settings) > 1 else [""]
        variants: list[tuple[str, dict]] = []
        for run in self.runs:
            if (run.model, run.options) not in variants:
                variants.append((run.model, run.options))
        variants.sort(key=lambda v: _variant_rank(*v))
        self.variants = variants
        # A variant's label is report.model_label, plus the options that tell apart
        # variants which would otherwise share it (e.g. two GradAttn widths).
        base = [report.model_label(m, o) for m, o in variants]
        self.labels = {}
        for label in dict.fromkeys(base):
            same = [v for v, b in zip(variants, base, strict=True) if b == label]
            extra = _describe([o for _, o in same]) if len(same) > 1 else [""] * len(same)
            for (m, o), e in zip(same, extra, strict=True):
                self.labels[self._vkey(m, o)] = f"{label} [{e}]" if e else label

    @staticmethod
    def _vkey(model: str, options: dict) -> str:
        return json.dumps([model, options], sort_keys=True, default=str)

    def label(self, model: str, options: dict) -> str:
        return self.labels.get(self._vkey(model, options)) or report.model_label(model, options)

    def columns(self, setting: dict) -> list[tuple[str, dict]]:
        """The variants shown for a setting: those that ran in it, plus the paper's four
        (a paper variant stands for itself when nothing of its kind ran)."""
        ran = [v for v in self.variants
               if any(r.setting == setting and (r.model, r.options) == v for r in self.runs)]
        cols = list(ran)
        for model, opts in PAPER_VARIANTS:
            if not any(m == model and all(o.get(k) == v for k, v in opts.items())
                       for m, o in ran):
                cols.append((model, opts))
        cols.sort(key=lambda v: _variant_rank(*v))
        return cols

    def datasets(self, setting: dict) -> list[str]:
        return sorted({r.dataset for r in self.runs if r.setting == setting}, key=_dataset_rank)

    def values(self, setting: dict, dataset: str, variant: tuple[str, dict],
               metric: str) -> dict[int, float]:
        """seed → value of one cell."""
        out = {}
        for r in self.runs:
            if (r.setting == setting and r.dataset == dataset
                    and (r.model, r.options) == variant):
                value = {**(r.gradients or {}), **r.metrics}.get(metric)
                if value is not None and not _isnan(value):
                    out[r.seed] = float(value)
        return out

    def baseline(self, setting: dict, dataset: str, variant: tuple[str, dict]):
        """The ResNet-18 run a variant is compared with: same setting and dataset, and the same
        values of the options both take (the stem). None if none or ambiguous."""
        model, options = variant
        if model == BASELINE:
            return None
        found = [v for v in self.variants if v[0] == BASELINE
                 and all(options.get(k, x) == x for k, x in v[1].items())
                 and self.values(setting, dataset, v, "top1")]
        return found[0] if len(found) == 1 else None

    def tidy(self, metrics: Iterable[str]) -> pd.DataFrame:
        """One row per (setting, dataset, variant, metric): n, mean, std, seeds, and the paired
        difference from ResNet-18 (diff_*), all raw numbers; missing cells have n = 0."""
        rows = []
        for s, setting in enumerate(self.settings):
            for dataset in self.datasets(setting):
                for variant in self.columns(setting):
                    base = self.baseline(setting, dataset, variant)
                    for metric in metrics:
                        vals = self.values(setting, dataset, variant, metric)
                        n, mean, std = mean_std(vals.values())
                        diff = (paired_difference(vals, self.values(setting, dataset, base,
                                                                    metric))
                                if base else Difference(0, math.nan, math.nan, math.nan))
                        rows.append({
                            "setting": self.setting_labels[s], "dataset": dataset,
                            "variant": self.label(*variant), "model": variant[0],
                            "pe": variant[1].get("pe", ""), "metric": metric, "n": n,
                            "mean": mean, "std": std,
                            "seeds": " ".join(map(str, sorted(vals))),
                            "diff_n": diff.n, "diff_mean": diff.mean,
                            "diff_low": diff.low, "diff_high": diff.high,
                        })
        return pd.DataFrame(rows)


# --- markdown --------------------------------------------------------------------------------

def _wide(study: Study, setting: dict, metric: str) -> str:
    """Datasets × variants of one metric (a fraction, shown in %)."""
    cols = study.columns(setting)
    rows = []
    for dataset in study.datasets(setting):
        row = [dataset]
        for variant in cols:
            vals = study.values(setting, dataset, variant, metric)
            text = report.cell(list(vals.values()), report.pct)
            base = study.baseline(setting, dataset, variant)
            if base is not None and len(vals) >= MIN_PAIRED:
                d = paired_difference(vals, study.values(setting, dataset, base, metric))
                if d.n >= MIN_PAIRED:
                    text += (f"; Δ {report.signed_pp(d.mean)} pp "
                             f"[{report.signed_pp(d.low)}, {report.signed_pp(d.high)}]")
            row.append(text)
        rows.append(row)
    return report.markdown_table(["Dataset", *(study.label(*v) for v in cols)], rows)


def _long_frame(study: Study, setting: dict) -> pd.DataFrame:
    """report.runs_frame of the setting's distinct runs, one placeholder row per missing
    (dataset, variant) so it shows as '–', in paper order."""
    records = []
    for dataset in study.datasets(setting):
        for variant in study.columns(setting):
            label = study.label(*variant)
            runs = [r for r in study.runs if r.setting == setting and r.dataset == dataset
                    and (r.model, r.options) == variant]
            for r in runs or [None]:
                records.append({"dataset": dataset, "model": variant[0], "label": label,
                                "metrics": r.metrics if r else {},
                                "gradients": r.gradients if r else None})
    return report.runs_frame(records)


_WIDE_NOTES = {
    "top1": "Share of test images whose highest-scoring class is right.",
    "train_val_gap": "Training minus validation accuracy at the best epoch (the weights kept).",
}
POOL_NOTE = ("Cells: mean ± sample std over seeds (n = seeds) when several ran; '–': not run. "
             f"Δ: difference from ResNet-18 on the same dataset and seeds with its "
             f"{LEVEL:.0%} confidence interval (t-interval of the per-seed differences), shown "
             f"when ≥ {MIN_PAIRED} seeds ran for both; an interval that spans 0 is noise.")


def markdown(study: Study, tables: Iterable[int] = TABLES) -> str:
    parts = []
    for s, setting in enumerate(study.settings):
        if study.setting_labels[s]:
            parts += [f"# Setting {s + 1}: {study.setting_labels[s]}", ""]
        frame = _long_frame(study, setting)
        for number in tables:
            table = TABLES[number]
            parts += [f"## {table.title}", ""]
            if table.wide:
                parts += [_WIDE_NOTES[table.metrics[0]], "", _wide(study, setting,
                                                                   table.metrics[0])]
            elif number == 2:
                parts += [f"ECE with {report.ece_bins_note(frame)}.", "",
                          report.table_extended(frame)]
            elif number == 3:
                parts += ["Macro (M) and class-frequency weighted (W) averages.", "",
                          report.table_prf(frame)]
            elif frame["ghs"].notna().any():
                parts += [report.gradients_note(frame), "", report.table_gradients(frame)]
            else:
                parts += ["No gradient files (metrics/<dataset>/<model>.gradients.json) in "
                          "these runs: run the `gradients` stage."]
            parts.append("")
    if not study.runs:
        parts += ["No runs found: no metrics/<dataset>/<model>.json in the workspace, the "
                  "experiments or the revisions asked for.", ""]
    parts.append(POOL_NOTE)
    return "\n".join(parts) + "\n"


def csv(study: Study, tables: Iterable[int] = TABLES) -> str:
    metrics = list(dict.fromkeys(m for t in tables for m in TABLES[t].metrics))
    return study.tidy(metrics).to_csv(index=False)
