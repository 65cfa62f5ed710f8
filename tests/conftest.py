"""The tests' shared toolkit. Test modules import helpers from here (`from conftest import ...`)
and take fixtures by name; nothing else defines these.

- `ROOT`: this checkout. The study's committed state: `committed`, `copy_committed`.
- Running what a user runs, in a subprocess: `python` (this interpreter, importing ROOT's
  gradattn, GRADATTN_DEBUG unset), `run_stage` (`python stages/<script>`), `sh`, `dvc`,
  `gradattn`; `stage_here` and `gradattn_here` give the same answer from this process (no
  start-up: for set-up steps and refusals); `one_line` checks a refusal is one `error: `
  line, `one_line_error` the same of a raised error's message.
- `with_importtime`: a script or `-c` code run under `python -X importtime`, and the
  top-level packages it imported (which stages start without torch).
- `processes_in(folder)`: the processes at work inside a project (DVC's queue worker, an
  experiment's temporary copy, a stage): a wait that costs no DVC start-up.
- `one_thread`: a fixture for modules of tiny torch models
  (`pytestmark = pytest.mark.usefixtures("one_thread")`).
- Projects, for the slow end-to-end tests (real `dvc` in a temporary git repo). One builder,
  `make_project`, and a session-wide template per kind, so git/DVC start-up is paid once:
  - `tiny_project(path, changes)` (a fixture returning the builder): the pipeline on 350
    bundled images as a custom npz dataset (`dvc exp run` of one cell takes seconds).
  - `dvc_repo`: the pipeline on the registered `fashionmnist-mini` source, TINY_PARAMS.
  - `reproduced_repo`: `dvc_repo` after one `dvc repro` and a commit, its DVC cache and run
    cache included (`reproduced_repo.baseline` holds that repro's output). The repro runs
    once per session; each test gets its own copy. Use it when a test's story starts from
    a reproduced baseline, rather than repeating the repro.
  A new end-to-end test (a DVC remote, a scheduler) takes one of these fixtures rather than
  building a project of its own; mark it `slow` (`pytest -m "not slow"` leaves it out).
- `fashion_source`: a Fashion-MNIST source in its own IDX format."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import yaml

from gradattn.core.stage import DEBUG_ENV

ROOT = Path(__file__).resolve().parents[1]

# A test run started with `cmd &` from a script (or `nohup`) inherits SIGINT ignored, and so
# would every process the tests start; with a handler here they start with it at its default,
# so the Ctrl-C tests send what a terminal would, to processes that can receive it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Under pytest-xdist the workers share the cores: each process the tests start (a stage, DVC)
# gets its share of intra-op threads, or two workers' torch threads spin against each other.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(
        max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# Under pytest-xdist (`pytest -n auto`) each test file runs on one worker (`--dist loadfile`,
# pyproject.toml), so a module-scoped fixture is built once; the session's reproduced project
# (`reproduced_repo`) is used by one file, tests/test_dvc_native.py, for the same reason.
# (`--dist loadgroup` would group by mark, but with pytest 9.2 it silently stops grouping:
# pytest-dev/pytest-xdist#1386.) The end-to-end tests go first: minutes each, they start
# at once, and the quick ones fill the gaps at the end.
def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):  # an xdist worker; a plain run keeps the file order
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# The study's state: what `dvc exp run`, `dvc exp apply` and `dvc repro` rewrite in a user's
# workspace. Tests read it as committed (git HEAD, via `committed` / `copy_committed`), so the
# suite gives the same result in a workspace with an experiment applied. Code (gradattn/,
# stages/, dvc.yaml, tests/) is read from the working tree: a developer's edits are what is
# tested. tests/test_used_workspace.py holds both to this.
STUDY_STATE = ("params.yaml", "machine.yaml", "dvc.lock", "metrics", "plots", "plotdata", "configs",
               "data/manifests", ".dvc/config")
# The pipeline's code, copied from the working tree into a test project (params.yaml: HEAD's).
PIPELINE_FILES = ("dvc.yaml", "stages", "gradattn", ".dvcignore")


def _in_git() -> bool:
    # Outside a git checkout (an unpacked archive) no experiment can have been applied, so the
    # working files are the committed ones.
    return (ROOT / ".git").exists()


def committed(path: str) -> str:
    """The text of `path` (relative to the project root) as committed at git HEAD."""
    if not _in_git():
        return (ROOT / path).read_text()
    return subprocess.run(["git", "show", f"HEAD:./{path}"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def copy_committed(path: str, dest: Path) -> None:
    """Write `path` (a file or folder) as committed at git HEAD to `dest / path`."""
    if not _in_git():
        src = ROOT / path
        if src.is_dir():
            shutil.copytree(src, dest / path, dirs_exist_ok=True)
        else:
            (dest / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / path)
        return
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD", "--", path], cwd=ROOT,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                target = dest / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())


# ---------------------------------------------------------------- what a user runs


def python(*args, cwd: Path, env: dict | None = None, code: Path = ROOT,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """`python *args` in `cwd`, as a user runs it: this interpreter, importing `code`'s
    gradattn (the checkout under test), GRADATTN_DEBUG unset unless `env` sets it."""
    full = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    full["PYTHONPATH"] = str(code)
    full.update(env or {})  # a project's env (env_for) names its own code
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


def run_stage(script: str, *args, cwd: Path, env: dict | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """`python stages/<script> *args` in `cwd`, the stage and library from ROOT."""
    return python(ROOT / "stages" / script, *args, cwd=cwd, env=env, timeout=timeout)


def stage_here(script: str, *args, cwd: Path, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    """`run_stage`'s answer without a new process: the same script, run as `__main__` in this
    interpreter (torch and gradattn already imported: milliseconds, not a start-up), in `cwd`
    with GRADATTN_DEBUG unset and `env` set, its stdout and stderr captured, its exit status
    what it raised SystemExit with. For set-up steps and for a stage's refusals (what it
    checks is the script's own code); that the process itself exits with the status and
    prints only the line is tests/test_entry_points.py's to check, with `run_stage`."""
    argv = [str(ROOT / "stages" / script), *map(str, args)]
    return _here(argv, lambda: runpy.run_path(argv[0], run_name="__main__"), cwd, env)


def gradattn_here(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`gradattn *args` (the `gradattn` function's answer) in this interpreter: the command's
    own `main`, in `cwd`, as `stage_here` runs a stage."""
    from gradattn.cli import main

    argv = ["gradattn", *map(str, args)]
    return _here(argv, lambda: main(argv[1:]), cwd, env)


def _here(argv: list[str], run, cwd: Path, env: dict | None) -> subprocess.CompletedProcess:
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8") for _ in range(2))
    saved = (os.getcwd(), sys.argv, dict(os.environ))
    os.environ.pop(DEBUG_ENV, None)
    os.environ.update(env or {})
    os.chdir(cwd)
    sys.argv = argv
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            returned = run()  # a command's exit status; a script's namespace
            code = returned if isinstance(returned, int) else 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        os.chdir(saved[0])
        sys.argv = saved[1]
        os.environ.clear()
        os.environ.update(saved[2])
    text = [(f.flush(), f.buffer.getvalue().decode())[1] for f in (out, err)]
    return subprocess.CompletedProcess(argv, code, *text)


def one_line(proc: subprocess.CompletedProcess, code: int = 2, *,
             progress: bool = False) -> str:
    """The refusal a finished command printed: exit `code` and one `error: ` line, alone on
    stderr (with `progress`, progress bars may come first: the message is still the last
    line), no traceback, not reported as a bug."""
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error") or "Traceback" in line]
    assert proc.returncode == code and len(errors) == 1, proc.stderr
    assert lines[-1] == errors[0] and (progress or len(lines) == 1), proc.stderr
    assert errors[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert "likely a bug" not in errors[0], errors[0]
    return errors[0]


def imported(stderr: str) -> set[str]:
    """Top-level packages `-X importtime` reports ('import time: self | cumulative | name')."""
    return {line.rsplit("|", 1)[1].strip().split(".")[0]
            for line in stderr.splitlines() if line.startswith("import time:") and "|" in line}


def with_importtime(*args, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -X importtime *args` in `cwd`, importing this checkout's gradattn: the finished
    process and the top-level packages it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    return proc, imported(proc.stderr)


def processes_in(folder: Path) -> list[int]:
    """Pids of processes whose working directory is inside `folder` (DVC's temporary copies
    of the repository live in .dvc/tmp/exps)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if Path(cwd).is_relative_to(folder):
            found.append(int(proc.name))
    return found


def running_stages(output: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` printed as running."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def one_line_error(excinfo) -> str:
    """The message of a raised error (pytest.raises): one line, no traceback in it."""
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread is fastest, and far faster on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

# A configuration small enough for a test: one epoch, a narrow encoder.
TINY_PARAMS = {
    "train": {"max_epochs": 1, "batch_size": 128},
    "model": {"dim": 16, "heads": 2, "ff_dim": 32, "depth": 1},
    "gradients": {"batches": 2},
}


def load_script(name: str):
    """scripts/NAME.py imported as a module (scripts/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_settings(repo: Path, settings: dict) -> None:
    """params.yaml and machine.yaml of `repo` from one dict holding both: the keys
    MACHINE_KEYS names (data.sources, grid) go to machine.yaml (HEAD's, updated), as a user
    keeps them; the rest is params.yaml."""
    from gradattn.core.settings import MACHINE_FILE, MACHINE_KEYS

    study = {k: dict(v) if isinstance(v, dict) else v for k, v in settings.items()}
    machine = yaml.safe_load(committed(MACHINE_FILE)) or {}
    for section, keys in MACHINE_KEYS.items():
        if keys is None and section in study:
            machine[section] = study.pop(section)
        for key in keys or ():
            if key in (study.get(section) or {}):
                machine.setdefault(section, {})[key] = study[section].pop(key)
    (repo / "params.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    (repo / MACHINE_FILE).write_text(yaml.safe_dump(machine, sort_keys=False))


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def pipeline_env(repo: Path) -> dict:
    """Stages run `python stages/...`: make that this interpreter, importing the repo's copy."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo)
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("CI", None)  # keep DVC's output the same as on a user's machine
    return env


class DvcRepo:
    def __init__(self, path: Path):
        self.path = path
        self.env = pipeline_env(path)

    def run(
        self, *args: str, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            args, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    def dvc(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, **kw)

    def set_params(self, changes: dict) -> None:
        """`changes` to params.yaml, or to machine.yaml for its keys (write_settings)."""
        from gradattn.core.settings import read_params

        write_settings(self.path, deep_update(read_params(self.path / "params.yaml"), changes))

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)


GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def env_for(repo: Path) -> dict:
    return {**pipeline_env(repo), **GIT_IDENTITY}


def sh(*args, cwd: Path, check: bool = True, env: dict | None = None,
       timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env or env_for(cwd),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def dvc(*args, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd, **kw)


def gradattn(*args, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "gradattn.cli", *args, cwd=cwd, **kw)



# ---------------------------------------------------------------- projects: one builder


def _fashion_params() -> dict:
    """The registered fashionmnist-mini source (HEAD's params.yaml) with TINY_PARAMS."""
    return deep_update(yaml.safe_load(committed("params.yaml")), TINY_PARAMS)


def tiny_params() -> dict:
    """350 bundled images as a custom npz dataset, a narrow one-layer GradAttn, one epoch, one
    gradient batch."""
    return deep_update(yaml.safe_load(committed("params.yaml")), {
        "data": {"datasets": ["tiny"], "custom": {"tiny": {"format": "npz", "path": "tiny.npz"}}},
        "model": {"dim": 16, "heads": 2, "ff_dim": 32, "depth": 1},
        "train": {"max_epochs": 1},
        "gradients": {"batches": 1},
    })


def tiny_npz(repo: Path) -> None:
    bundled = np.load(ROOT / "gradattn/sources/bundled/fashionmnist-mini.npz")
    np.savez(repo / "tiny.npz", **{f"{s}_{k}": bundled[f"{s}_{k}"][:n]
                                   for s, n in (("train", 200), ("val", 50), ("test", 100))
                                   for k in ("images", "labels")})


# kind: (params, .gitignore, DVC config, extra files). "tiny": the link cache type a user's
# clone has (.dvc/config) and this repo's .gitignore.
KINDS = {
    "tiny": (tiny_params, None, ("cache.type", "reflink,copy"), tiny_npz),
    "fashion": (_fashion_params, "/checkpoints/\n__pycache__/\n", ("core.analytics", "false"),
                None),
}


def _template(kind: str, path: Path) -> Path:
    """The pipeline's code from the working tree, `git init` and `dvc init` done, nothing
    committed: made once per session, copied by `make_project`."""
    _, gitignore, config, extra = KINDS[kind]
    path.mkdir(parents=True)
    for name in PIPELINE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, path / name)
    if gitignore is None:
        shutil.copy(ROOT / ".gitignore", path / ".gitignore")
    else:
        (path / ".gitignore").write_text(gitignore)
    if extra:
        extra(path)
    sh("git", "init", "-q", cwd=path)
    sh("git", "config", "user.email", "test@example.com", cwd=path)
    sh("git", "config", "user.name", "test", cwd=path)
    dvc("init", "-q", cwd=path)
    dvc("config", *config, cwd=path)
    return path


@pytest.fixture(scope="session")
def make_project(tmp_path_factory):
    """The one project builder: `make_project(path, kind, changes)` copies the session's
    template of `kind` ("tiny" or "fashion", see KINDS) to `path`, writes its params.yaml
    with `changes` and commits. The template is built on first use."""
    templates: dict[str, Path] = {}

    def build(repo: Path, kind: str = "tiny", changes: dict | None = None) -> Path:
        if kind not in templates:
            templates[kind] = _template(kind, tmp_path_factory.mktemp("template") / kind)
        shutil.copytree(templates[kind], repo, symlinks=True)
        write_settings(repo, deep_update(KINDS[kind][0](), changes or {}))
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-qm", "pipeline", cwd=repo)
        return repo

    return build


@pytest.fixture(scope="session")
def tiny_project(make_project):
    """`tiny_project(path, changes)`: the pipeline on 350 bundled images (a custom npz
    dataset: a `dvc exp run` of one cell takes seconds), a narrow one-layer GradAttn, one
    epoch, one gradient batch, and `changes` to the committed params.yaml; committed."""
    return lambda repo, changes=None: make_project(repo, "tiny", changes)


@pytest.fixture
def dvc_repo(make_project, tmp_path: Path) -> DvcRepo:
    """A fresh git + DVC project holding this repo's pipeline (code from the working tree,
    params.yaml as committed) on fashionmnist-mini, with TINY_PARAMS applied; committed."""
    return DvcRepo(make_project(tmp_path / "project", "fashion"))


@pytest.fixture(scope="session")
def _reproduced_template(make_project, tmp_path_factory) -> tuple[Path, str]:
    repo = DvcRepo(make_project(tmp_path_factory.mktemp("reproduced") / "project", "fashion"))
    baseline = repo.dvc("repro").stdout
    repo.commit("baseline")
    return repo.path, baseline


@pytest.fixture
def reproduced_repo(_reproduced_template, tmp_path: Path) -> DvcRepo:
    """`dvc_repo` after `dvc repro` and a commit ("baseline"), with its DVC cache and run
    cache: the repro runs once per session, each test gets its own copy. `.baseline` is that
    repro's stdout (what it ran)."""
    template, baseline = _reproduced_template
    shutil.copytree(template, tmp_path / "project", symlinks=True)
    repo = DvcRepo(tmp_path / "project")
    repo.baseline = baseline
    return repo


# ---------------------------------------------------------------- Fashion-MNIST's own format


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, gzipped, as Fashion-MNIST ships its images and labels."""
    header = (b"\x00\x00\x08" + bytes([array.ndim])
              + b"".join(int(d).to_bytes(4, "big") for d in array.shape))
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def coloured(label: int, shape) -> np.ndarray:
    """An image whose every pixel encodes its label (survives JPEG and resizing)."""
    return np.full(shape, 20 + 40 * label, dtype=np.uint8)


@pytest.fixture
def fashion_source(tmp_path, monkeypatch):
    """A folder of Fashion-MNIST's four .gz files (100 train, 20 test images), accepted by
    the loader's checksums."""
    from gradattn.sources import fashionmnist

    src = tmp_path / "fashion-src"
    src.mkdir()
    for prefix, n in (("train", 100), ("t10k", 20)):
        labels = np.arange(n) % 10
        images = np.stack([coloured(lab % 6, (28, 28)) for lab in labels])
        images[:, 0, 1] = 7  # marks orientation: row 0, column 1
        write_idx(src / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", labels)
    for name in fashionmnist.FASHION_MD5:
        monkeypatch.setitem(fashionmnist.FASHION_MD5, name, md5(src / name))
    return src
