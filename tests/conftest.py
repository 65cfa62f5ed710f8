"""Shared fixtures and helpers: the study's committed state (`committed`, `copy_committed`), a
temporary DVC project made from this repo's pipeline files (`dvc_repo`), a tiny one on 350
bundled images (`tiny_project`), and a Fashion-MNIST source in its own IDX format
(`fashion_source`)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# The study's state: what `dvc exp run`, `dvc exp apply` and `dvc repro` rewrite in a user's
# workspace. Tests read it as committed (git HEAD, via `committed` / `copy_committed`), so the
# suite gives the same result in a workspace with an experiment applied. Code (gradattn/,
# stages/, dvc.yaml, tests/) is read from the working tree: a developer's edits are what is
# tested. tests/test_used_workspace.py holds both to this.
STUDY_STATE = ("params.yaml", "dvc.lock", "metrics", "plots", "plotdata", "configs",
               "data/sources", ".dvc/config")
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

# A configuration small enough for a test: one epoch, a narrow encoder.
TINY_PARAMS = {
    "train": {"max_epochs": 1, "batch_size": 128},
    "model": {"dim": 16, "heads": 2, "ff_dim": 32, "depth": 1},
}


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
        path = self.path / "params.yaml"
        params = deep_update(yaml.safe_load(path.read_text()), changes)
        path.write_text(yaml.safe_dump(params, sort_keys=False))

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-qm", message)


@pytest.fixture
def dvc_repo(tmp_path: Path) -> DvcRepo:
    """A fresh git + DVC project holding this repo's pipeline (code from the working tree,
    params.yaml as committed), with TINY_PARAMS applied."""
    repo = tmp_path / "project"
    repo.mkdir()
    copy_committed("params.yaml", repo)
    for name in PIPELINE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, repo / name)
    r = DvcRepo(repo)
    r.run("git", "init", "-q")
    r.run("git", "config", "user.email", "test@example.com")
    r.run("git", "config", "user.name", "test")
    r.dvc("init", "-q")
    r.dvc("config", "core.analytics", "false")
    r.set_params(TINY_PARAMS)
    (repo / ".gitignore").write_text("/checkpoints/\n__pycache__/\n")
    r.commit("pipeline")
    return r


# ---------------------------------------------------------------- a tiny project

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


def tiny_project(repo: Path, changes: dict | None = None) -> Path:
    """The pipeline on 350 images of the bundled set (a custom npz dataset: a `dvc exp run`
    of one cell takes seconds), a narrow one-layer GradAttn, one epoch, one gradient batch,
    and `changes` to the committed params.yaml; committed."""
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("stages", "gradattn"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    bundled = np.load(ROOT / "gradattn/sources/bundled/fashionmnist-mini.npz")
    np.savez(repo / "tiny.npz", **{f"{s}_{k}": bundled[f"{s}_{k}"][:n]
                                   for s, n in (("train", 200), ("val", 50), ("test", 100))
                                   for k in ("images", "labels")})
    params = yaml.safe_load(committed("params.yaml"))
    deep_update(params, {
        "data": {"datasets": ["tiny"], "custom": {"tiny": {"format": "npz", "path": "tiny.npz"}}},
        "model": {"dim": 16, "heads": 2, "ff_dim": 32, "depth": 1},
        "train": {"max_epochs": 1},
        "gradients": {"batches": 1},
    })
    deep_update(params, changes or {})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=repo)
    dvc("init", "-q", cwd=repo)
    # The project's link cache type (.dvc/config), as a user's clone has it.
    dvc("config", "cache.type", "reflink,copy", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "tiny project", cwd=repo)
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
