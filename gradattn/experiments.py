"""The runs a study holds, and where they are found.

A *run* is one trained (dataset, model) pair of one revision: the workspace, a commit, a DVC
experiment. What a run depends on is read from its revision's params.yaml and split three ways:

- the *variant*: the model and the options that model takes (GradAttn's `pe` among them);
- the *setting*: everything else (data split, training protocol, evaluation), seed excepted;
- the *seed*.

The working tree is read as files; commits and experiments through `dvc.api` (`exp_show` lists
them, `params_show` and `read(rev=)` read their params and metrics files).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from gradattn import paths
from gradattn.errors import GradattnError
from gradattn.settings import DataConfig, EvaluateConfig, TrainConfig

# Settings that cannot change a run's numbers, so they do not split runs apart.
# Keys that cannot change a result (train.num_workers: retired, in old revisions only).
IGNORED = {"train.num_workers", "evaluate.batch_size"}

ReadJson = Callable[[str], "dict | None"]  # a repo-relative posix path → its JSON, or None


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

    def value(self, metric: str):
        """A metric of the evaluate stage's file or, failing that, of the gradient summary."""
        return {**(self.gradients or {}), **self.metrics}.get(metric)


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


def runs_of(source: str, params: dict, read_json: ReadJson) -> list[Run]:
    """The runs one revision holds: each (dataset, model) its params name whose metrics file
    exists there."""
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


# --- where runs are found ---------------------------------------------------------------------

def read_workspace(root: Path) -> tuple[dict | None, ReadJson]:
    """params.yaml (None if absent) and read_json of the working tree."""
    def read_json(path: str):
        file = root / path
        return json.loads(file.read_text()) if file.is_file() else None

    file = root / "params.yaml"
    return (yaml.safe_load(file.read_text()) or {}) if file.is_file() else None, read_json


def read_revision(root: Path, rev: str) -> tuple[dict | None, ReadJson]:
    """params.yaml (None if the revision has none) and read_json of a git revision or DVC
    experiment; GradattnError if rev names neither."""
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc.scm import RevError

    def read_json(path: str):
        try:
            return json.loads(dvc.api.read(path, repo=str(root), rev=rev))
        except (DvcException, FileNotFoundError):
            return None

    try:
        params = dvc.api.params_show("params.yaml", repo=str(root), rev=rev)
    except RevError:
        raise GradattnError(f"--rev {rev}: neither a git revision nor a DVC experiment here "
                            "(see `git log` and `dvc exp list`)") from None
    except (DvcException, FileNotFoundError):  # no or unreadable params.yaml: no runs there
        params = None
    return params, read_json


def experiment_revisions(root: Path, all_commits: bool = False) -> list[tuple[str, str]]:
    """(label, rev) of the baseline commits and finished experiments `dvc exp show` lists:
    HEAD's, or with all_commits those of every commit."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        baselines = dvc.api.all_commits(repo=str(root)) if all_commits else None
        rows = dvc.api.exp_show(repo=str(root), revs=baselines)
    except DvcException as err:
        raise GradattnError(f"cannot list the DVC experiments of {root} ({err}): run in a git "
                            "repository with DVC initialised, or name one with --repo") from None
    out = []
    for row in rows:
        if row["rev"] == "workspace":
            continue
        if row["typ"] == "baseline":
            out.append((f"commit {row['rev']}", row["rev"]))
        # Queued, running and failed experiments have a State and no results yet.
        elif row.get("State") in (None, "Success"):
            out.append((f"exp {row.get('Experiment') or row['rev']}", row["rev"]))
    return out


def collect_runs(root: str | Path = ".", *, revs: Iterable[str] = (), experiments: bool = True,
                 all_commits: bool = False, workspace: bool = True) -> list[Run]:
    """Every run of the named revisions, then of `dvc exp show`'s commits and experiments,
    then of the working tree (last: its files may be stale against its params.yaml)."""
    root = Path(root)
    sources: list[tuple[str, str | None]] = [(f"rev {r}", r) for r in revs]
    if experiments:
        sources += experiment_revisions(root, all_commits)
    if workspace:
        sources.append(("workspace", None))
    runs, seen = [], set()
    for label, rev in sources:
        if rev is not None and rev in seen:
            continue
        seen.add(rev)
        params, read_json = read_workspace(root) if rev is None else read_revision(root, rev)
        if params is not None:
            runs += runs_of(label, params, read_json)
    return runs
