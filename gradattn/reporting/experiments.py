"""The runs a study holds, and where they are found.

A *run* is one trained (dataset, model) pair of one revision: the workspace, a commit, a DVC
experiment. Its identity is what ran, as the pipeline recorded it — never the revision's
params.yaml, which can say something else than its committed metrics:

- the *variant*: the model and its options (configs/models/<model>.json, which train@ ran on);
- the *setting*: everything else — the params train@, evaluate@ and gradients@ recorded in
  dvc.lock, the data options of configs/<dataset>/prepare.json (which preprocess@ ran on) and
  the `recipe` — seed excepted;
- the *seed* (train.seed as train@ recorded it).

The *environment* the train stage recorded (gradattn.core.records.RESULT_ENVIRONMENT: library
versions, CPU or GPU, threads, precision, fast path) is part of the setting: runs are
bit-for-bit reproducible only within one environment, so runs of different environments are
never pooled, and a run made on two machines is two runs (docs/reproduce.md).

Runs pool over seeds only when their settings are equal. Every file a run is read from must be
the one dvc.lock records (same md5), and each stage must have run on the outputs of the one
before it; otherwise the revision holds results of another run than its dvc.lock says, and
reading it is refused with one line naming both. Settings keep the values recorded, `auto`
included.

The working tree is read as files; commits and experiments (`dvc.api.exp_show` lists them)
through `dvc.fs.DVCFileSystem` at their revision: dvc.lock, configs and the headline metrics
from git, a run's full metrics files from the DVC cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from gradattn.core import paths
from gradattn.core.errors import GradattnError
from gradattn.core.io import reading, restore_hint
from gradattn.core.records import RESULT_ENVIRONMENT
from gradattn.core.settings import (
    DataConfig,
    EvaluateConfig,
    TrainConfig,
    default_options,
    load_yaml,
    parse_datasets,
    parse_models,
    raw_section,
    read_recipe,
)

# Keys that cannot change a result (train.num_workers: retired, in old revisions only).
IGNORED = {"train.num_workers", "evaluate.batch_size"}
LOCK = "dvc.lock"
# A running experiment's temporary copy; DVC cannot read it while it is being made.
EXECUTOR_DIR = ".dvc/tmp/exps/"
STARTING_RETRIES, STARTING_WAIT_S = 5, 2.0

ReadJson = Callable[[str], "dict | None"]  # a repo-relative posix path → its JSON, or None
ReadBytes = Callable[[str], "bytes | None"]  # a repo-relative posix path → its bytes, or None


@dataclass
class Run:
    """A finished run read back: one dataset and model trained and evaluated under one setting
    and seed, with its results (a row of `gradattn table`). Its configuration as training saw
    it is gradattn.training.run_config.RunConfig."""

    source: str  # where it was read: "workspace", "exp <name>", "commit <name>", "rev <name>"
    dataset: str
    model: str
    options: dict  # the model options this model takes
    setting: dict  # flat "section.key" → value: all the run depends on but model and seed
    seed: int
    metrics: dict
    gradients: dict | None = None
    # Where it came from, as dvc.lock records it (rev, params, data/model/metrics md5, the
    # environment its train stage recorded); and its per-epoch history, for figures.
    provenance: dict = field(default_factory=dict, compare=False)
    history: list | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return json.dumps([self.setting, self.dataset, self.model, self.options, self.seed],
                          sort_keys=True, default=str)

    def value(self, metric: str):
        """A metric of the evaluate stage's file or, failing that, of the gradient summary."""
        return {**(self.gradients or {}), **self.metrics}.get(metric)


# --- identity from what the pipeline recorded (dvc.lock) --------------------------------------

def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # DVC 3's hash of a file: md5 of its bytes


def _entry(stage: dict, path: str, kind: str = "outs") -> dict | None:
    return next((e for e in stage.get(kind) or [] if e.get("path") == path), None)


def _params(stage: dict) -> dict:
    return dict((stage.get("params") or {}).get("params.yaml") or {})


class Unavailable(GradattnError):
    """A revision whose results are not here (not in git, not in the local DVC cache)."""


class _Revision:
    """One revision's dvc.lock and files, with the checks that they belong together."""

    def __init__(self, source: str, read: ReadBytes, rev: str | None = None):
        self.source, self.read, self.rev = source, read, rev
        raw = read(LOCK)
        lock = self.parse(LOCK, raw, yaml.safe_load) if raw else {}
        stages = lock.get("stages") or {} if isinstance(lock, dict) else None
        if not isinstance(stages, dict) or not all(isinstance(v, dict) for v in stages.values()):
            raise GradattnError(f"{source}: {LOCK} is damaged or not the file it should be (no "
                                f"mapping of stages): {self.fix(LOCK)}")
        self.stages = stages

    def fix(self, path: str) -> str:
        # The working tree's rev is None, or its commit marked " (workspace)" (see _commit).
        if self.rev is None or self.rev.endswith(" (workspace)"):
            if path == LOCK:  # DVC cannot read it either: neither checkout nor repro runs
                return (f"restore the committed one (`git checkout -- {LOCK}`), or remove it "
                        "and rerun `dvc repro`")
            return restore_hint(path)
        return "fix it in that revision, or leave the revision out"

    def parse(self, path: str, data: bytes, parse=json.loads):
        """`parse(data)` of a file of this revision; damage is one line naming both."""
        with reading(f"{self.source}: {path}", self.fix(path)):
            return parse(data)

    def stage(self, name: str, needed_for: str) -> dict:
        stage = self.stages.get(name)
        if stage is None:
            raise GradattnError(
                f"{self.source}: {needed_for} is there but its dvc.lock has no stage {name}, "
                "so what produced it is unknown: run `dvc repro` and commit dvc.lock with the "
                "results (or leave this revision out)")
        return stage

    def checked(self, path: str, stage_name: str, kind: str = "outs") -> bytes:
        """The bytes of path, after checking them against the md5 stage_name recorded."""
        stage = self.stage(stage_name, path)
        entry = _entry(stage, path, kind)
        data = self.read(path)
        if entry is None or data is None:
            why = "no such file" if data is None else "not recorded by the stage"
            raise GradattnError(f"{self.source}: {path} and {stage_name} in dvc.lock do not "
                                f"belong together ({why}): run `dvc repro` and commit both")
        if _md5(data) != entry.get("md5"):
            raise GradattnError(
                f"{self.source}: {path} is not the file {stage_name} in dvc.lock produced "
                f"(md5 {_md5(data)[:8]} vs {str(entry.get('md5'))[:8]}): the results come "
                "from another run than dvc.lock records; run `dvc repro` and commit dvc.lock "
                "with them (or leave this revision out)")
        return data

    def same_input(self, consumer: str, producer: str, path: str) -> None:
        """consumer ran on the out of producer that dvc.lock records (not an older one)."""
        used = _entry(self.stage(consumer, path), path, "deps")
        made = _entry(self.stage(producer, path), path, "outs")
        if not used or not made or used.get("md5") != made.get("md5"):
            raise GradattnError(
                f"{self.source}: {consumer} ran on another {path} than {producer} in dvc.lock "
                f"produced (a partial `dvc repro`): run `dvc repro` and commit dvc.lock")

    def current(self, dataset: str, model: str) -> bool:
        """Whether the pipeline of this dvc.lock still has (dataset, model): `dvc repro` keeps
        the entries of stages dropped from dvc.yaml (after data.datasets or models changed),
        and their outputs stay in the workspace, though configs/ no longer holds their
        settings. configure records the lists the pipeline was last made from."""
        made_from = _params(self.stages.get("configure") or {})
        datasets, models = made_from.get("data.datasets"), made_from.get("models")
        if not isinstance(datasets, list) or not isinstance(models, list):
            return True  # an older dvc.lock: every run it records counts
        return dataset in datasets and model in models

    def runs(self) -> list[Run]:
        out, unreadable = [], []
        for name in sorted(self.stages):
            if not name.startswith("evaluate@"):
                continue
            for entry in self.stages[name].get("outs") or []:
                m = re.fullmatch(r"metrics/(.+)/([^/.]+)\.json", entry.get("path", ""))
                if not m or not self.current(m.group(1), m.group(2)):
                    continue
                if self.read(entry["path"]) is None:
                    # dvc.lock keeps the entries of stages no longer in dvc.yaml (a dataset
                    # dropped from data.datasets), whose outputs a revision does not hold.
                    unreadable.append(entry["path"])
                    continue
                out.append(self.run(m.group(1), m.group(2), name))
        if unreadable and not out:
            raise Unavailable(
                f"{self.source}: its dvc.lock records {', '.join(unreadable)} but the file is "
                "neither in git nor in the DVC cache: fetch it (`dvc pull`, or `dvc exp pull "
                "<remote> <exp>` for an experiment) from a DVC remote that holds it, or leave "
                "this revision out")
        return out

    def run(self, dataset: str, model: str, evaluate: str) -> Run:
        item = f"{dataset}-{model}"
        train, prepare = f"train@{item}", f"preprocess@{dataset}"
        metrics_path = paths.metrics_file(dataset, model).as_posix()
        metrics = self.parse(metrics_path, self.checked(metrics_path, evaluate))
        self.same_input(evaluate, train, paths.model_file(dataset, model).as_posix())
        self.same_input(train, prepare, (paths.PREPARED / dataset).as_posix())
        options_path = paths.model_config(model).as_posix()
        options = self.parse(options_path, self.checked(options_path, train, "deps"))
        data_path = paths.prepare_config(dataset).as_posix()
        data = self.parse(data_path, self.checked(data_path, prepare, "deps"))
        recorded = _params(self.stage(train, train)) | _params(self.stages[evaluate])
        gradients = None
        grad_path = paths.gradients_file(dataset, model).as_posix()
        if self.read(grad_path) is not None:
            grad_stage = f"gradients@{item}"
            gradients = self.parse(grad_path, self.checked(grad_path, grad_stage))
            gradients.pop("per_layer", None)
            self.same_input(grad_stage, train, paths.model_file(dataset, model).as_posix())
            recorded |= _params(self.stages[grad_stage])
        if "recipe" not in recorded:  # stages that do not list it ran under configure's
            recorded["recipe"] = _params(self.stages.get("configure") or {}).get("recipe",
                                                                                  "corrected")
        if "train.seed" not in recorded:
            raise GradattnError(f"{self.source}: {train} in dvc.lock records no train.seed, so "
                                "its runs cannot be told apart: run `dvc repro` with this "
                                "dvc.yaml and commit dvc.lock")
        seed = recorded.pop("train.seed")
        setting = {f"data.{k}": v for k, v in data.items() if k != "dataset"} | recorded
        setting = {k: v for k, v in setting.items() if k not in IGNORED}
        provenance = self.provenance(dataset, model, evaluate,
                                     {**setting, "train.seed": seed})
        setting["environment"] = result_environment(provenance["environment"])
        return Run(self.source, dataset, model, options.get("options") or {}, setting,
                   int(seed), metrics, gradients, provenance=provenance,
                   history=self.json_or_none(paths.history_file(dataset, model).as_posix()))

    def json_or_none(self, path: str):
        data = self.read(path)
        try:
            return json.loads(data) if data is not None else None
        except ValueError:
            return None

    def provenance(self, dataset: str, model: str, evaluate: str, params: dict) -> dict:
        """What dvc.lock records of a run: its revision, params, and the md5 of the prepared
        data train@ ran on, the model file it made and evaluate@'s metrics file; with the
        environment the train stage's run record holds (when the file is at hand)."""
        train = self.stages[f"train@{dataset}-{model}"]
        used = _entry(train, (paths.PREPARED / dataset).as_posix(), "deps") or {}
        made = _entry(train, paths.model_file(dataset, model).as_posix()) or {}
        scored = _entry(self.stages[evaluate], paths.metrics_file(dataset, model).as_posix())
        record = self.json_or_none(paths.run_record_file(dataset, model, "train").as_posix())
        ran = (record or {}).get("train") or {}
        environment = {k: v for k, v in ran.items() if k in ("device", "precision", "fast")}
        if record and record.get("environment"):
            environment.update(record["environment"])
        return {"source": self.source, "rev": self.rev, "params": params,
                "data_md5": used.get("md5"), "model_md5": made.get("md5"),
                "metrics_md5": (scored or {}).get("md5"), "environment": environment,
                "train_resolved": ran}


NOT_RECORDED = "not recorded"


def result_environment(environment: dict) -> dict | str:
    """The parts of a run's environment that can change its numbers; 'not recorded' for runs
    whose train stage predates environment records (they pool only with each other)."""
    if not environment.get("torch"):
        return NOT_RECORDED
    return {k: environment.get(k) for k in RESULT_ENVIRONMENT}


def runs_of_revision(source: str, read: ReadBytes, rev: str | None = None) -> list[Run]:
    """The runs a revision's dvc.lock records, each checked against the files it holds."""
    return _Revision(source, read, rev).runs()


# --- identity from params.yaml: only inside `dvc repro`, where params.yaml is what ran ----------

def identify(params: dict, dataset: str, model: str) -> tuple[dict, dict, int]:
    """(model options, setting, seed) of one run from params.yaml (as a dict) — for the report
    stage, which DVC runs only once every stage before it is up to date with params.yaml.

    Missing keys take the config's defaults, so an old params.yaml that lacks a key matches a
    new one that spells out the default."""
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
        "recipe": read_recipe(params),
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
    """The runs of a workspace being reproduced: each (dataset, model) its params name whose
    metrics file exists, identified by params.yaml (see identify)."""
    datasets = parse_datasets(raw_section(params, "data", DataConfig))
    runs = []
    for dataset in datasets:
        for model in parse_models(params):
            metrics = read_json(paths.metrics_file(dataset, model).as_posix())
            if not metrics:
                continue
            options, setting, seed = identify(params, dataset, model)
            runs.append(Run(source, dataset, model, options, setting, seed, metrics,
                            read_json(paths.gradients_file(dataset, model).as_posix())))
    return runs


def distinct(runs: Iterable[Run]) -> list[Run]:
    """Each (setting, dataset, variant, seed) once (an experiment that changed only `model.pe`
    holds ResNet-18's run restored from the run cache, byte for byte). Two sources holding the
    same run with different numbers is an error naming both: which one is right is unknown."""
    kept: dict[str, Run] = {}
    for run in runs:
        first = kept.setdefault(run.key, run)
        if first is run:
            continue
        if first.metrics != run.metrics:
            raise GradattnError(
                f"{first.source} and {run.source} both hold {run.dataset}/{run.model} "
                f"{run.options or ''} seed {run.seed} with the same recorded settings but "
                f"different metrics (other code, or a non-deterministic run): compare them with "
                f"`dvc exp diff`, and leave one out (--no-exps/--no-workspace, --rev)")
        if first.gradients is None and run.gradients is not None:
            first.gradients = run.gradients
    return list(kept.values())


# --- where runs are found ---------------------------------------------------------------------

def read_workspace(root: Path) -> tuple[dict | None, ReadJson]:
    """params.yaml (None if absent) and read_json of the working tree."""
    def read_json(path: str):
        file = root / path
        return json.loads(file.read_text()) if file.is_file() else None

    file = root / "params.yaml"
    return (load_yaml(file.read_text()) or {}) if file.is_file() else None, read_json


def workspace_reader(root: Path) -> ReadBytes:
    def read(path: str):
        file = root / path
        return file.read_bytes() if file.is_file() else None
    return read


def revision_reader(root: Path, scm, rev: str) -> ReadBytes:
    """read of a git revision or DVC experiment name: git-tracked files from git, DVC-tracked
    ones (a run's metrics) from the DVC cache; GradattnError if rev names neither."""
    from dvc.exceptions import DvcException
    from dvc.fs import DVCFileSystem
    from dvc.scm import RevError, resolve_rev

    try:
        fs = DVCFileSystem(repo=str(root), rev=resolve_rev(scm, rev))
    except RevError:
        raise GradattnError(f"--rev {rev}: neither a git revision nor a DVC experiment here "
                            "(see `git log` and `dvc exp list`)") from None

    def read(path: str):
        try:
            return fs.read_bytes(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, DvcException):
            return None  # absent there, or DVC-tracked and not in the cache (`dvc pull`)
    return read


def experiment_revisions(root: Path, all_commits: bool = False) -> list[tuple[str, str]]:
    """(label, rev) of the baseline commits and finished experiments `dvc exp show` lists:
    HEAD's, or with all_commits those of every commit."""
    import dvc.api
    from dvc.exceptions import DvcException

    for attempt in range(STARTING_RETRIES + 1):
        try:
            baselines = dvc.api.all_commits(repo=str(root)) if all_commits else None
            rows = dvc.api.exp_show(repo=str(root), revs=baselines)
            break
        except DvcException as err:
            # DVC reads each running experiment's temporary copy, and fails on one whose copy
            # is still being made (the first seconds after `dvc queue start`): wait it out.
            starting = EXECUTOR_DIR in str(err).replace(os.sep, "/")
            if starting and attempt < STARTING_RETRIES:
                time.sleep(STARTING_WAIT_S)
                continue
            if starting:
                raise GradattnError(
                    f"cannot list the DVC experiments of {root}: an experiment is still starting "
                    f"({err}); rerun when `dvc queue status` shows it running") from None
            raise GradattnError(f"cannot list the DVC experiments of {root} ({err}): run in a "
                                "git repository with DVC initialised, or name one with --repo"
                                ) from None
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


def _commit(root: Path, scm, rev: str | None) -> str | None:
    """The commit hash of `rev` (a DVC experiment's too); for the working tree (None) the
    commit it is on, marked so. The name itself where neither git nor DVC can tell."""
    from dvc.scm import RevError, SCMError, resolve_rev

    try:
        if rev is not None:
            return resolve_rev(scm, rev)
        return f"{scm.get_rev()} (workspace)"
    except (RevError, SCMError):  # no commit yet
        return rev


# Commands that run experiments in copies under .dvc/tmp/exps/, not in the working tree; they
# hold the repository's lock only while they set a copy up or collect its results.
ELSEWHERE = ("--temp", "--queue", "queue", "exec-run")


def workspace_run(root: Path) -> str | None:
    """'pid N: <command>' of a DVC command reproducing `root`'s working tree now, else None:
    reading the tree then would read a half-finished run. DVC lists each running stage's
    outputs with its pid and command in .dvc/tmp/rwlock, and holds .dvc/tmp/lock (its pid
    inside) between stages."""
    import psutil  # DVC's own dependency

    tmp, real = root / ".dvc" / "tmp", Path(os.path.realpath(root))
    try:
        writes = json.loads((tmp / "rwlock").read_text()).get("write") or {}
    except (OSError, ValueError, AttributeError):
        writes = {}
    for path, info in writes.items():
        out, pid = Path(os.path.realpath(path)), (info or {}).get("pid")
        if (isinstance(pid, int) and pid > 0 and out.is_relative_to(real)
                and not out.is_relative_to(real / ".dvc") and psutil.pid_exists(pid)):
            return f"pid {pid}: {info.get('cmd')}"
    try:
        import fcntl
    except ImportError:  # not POSIX: the stages' entries above are all there is to see
        return None
    try:
        with open(tmp / "lock", "rb") as lock:
            try:  # a shared lock, released at once: DVC's exclusive one would refuse it
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return None
            except BlockingIOError:
                pid = int(lock.read().split()[0])
        cmd = psutil.Process(pid).cmdline()
    except (OSError, ValueError, IndexError, psutil.Error):
        return None  # no lock file, or its holder just ended
    return None if any(a in ELSEWHERE for a in cmd) else f"pid {pid}: {' '.join(cmd)}"


def collect_runs(root: str | Path = ".", *, revs: Iterable[str] = (), experiments: bool = True,
                 all_commits: bool = False, workspace: bool = True,
                 strict: bool = False) -> list[Run]:
    """Every run of the named revisions, of `dvc exp show`'s commits and experiments, and of
    the working tree, each as its dvc.lock records it. A revision whose results are not
    available here (e.g. HEAD's in a fresh clone with no DVC remote) is left out with one line
    on stderr naming it; `strict` refuses instead."""
    from dvc.scm import SCM, SCMError

    root = Path(root)
    if workspace and (running := workspace_run(root)):
        raise GradattnError(
            f"a DVC command is running in the working tree of {root} ({running}): its runs "
            "are half-finished; wait for it to end, or leave the working tree out with "
            "--no-workspace (nothing was read or written)")
    sources: list[tuple[str, str | None]] = [(f"rev {r}", r) for r in revs]
    if experiments:
        sources += experiment_revisions(root, all_commits)
    if workspace:
        sources.append(("workspace", None))
    runs, seen, left_out = [], set(), []
    scm = None
    try:
        for label, rev in sources:
            if rev is not None and rev in seen:
                continue
            seen.add(rev)
            if rev is None:
                read = workspace_reader(root)
            else:
                if scm is None:
                    try:
                        scm = SCM(str(root))
                    except SCMError as err:
                        raise GradattnError(f"cannot open {root} as a git repository ({err}): "
                                            "name one with --repo") from None
                read = revision_reader(root, scm, rev)
            try:
                runs += runs_of_revision(label, read, _commit(root, scm, rev) if scm else None)
            except Unavailable:
                if strict:
                    raise
                left_out.append(label)
    finally:
        if scm is not None:
            scm.close()
    if left_out:
        print(f"note: left out {', '.join(left_out)}: their results are neither in git nor in "
              "the local DVC cache (fetch them from a DVC remote with `dvc pull` / `dvc exp "
              "pull <remote> <exp>`; --strict refuses instead)", file=sys.stderr)
    return runs
