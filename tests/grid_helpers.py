"""A tiny copy of the project as a git + DVC repository, for the grid and queue tests:
350 images of the bundled set as a custom npz dataset and a narrow one-layer GradAttn, so a
`dvc exp run` of one cell takes seconds, not minutes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from conftest import ROOT, deep_update, pipeline_env

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
    return sh(sys.executable, "-m", "gradattn.reporting.cli", *args, cwd=cwd, **kw)


def tiny_project(repo: Path, changes: dict | None = None) -> Path:
    """The pipeline, the tiny dataset and `changes` to params.yaml, committed."""
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("stages", "gradattn"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    bundled = np.load(ROOT / "gradattn/data/bundled/fashionmnist-mini.npz")
    np.savez(repo / "tiny.npz", **{f"{s}_{k}": bundled[f"{s}_{k}"][:n]
                                   for s, n in (("train", 200), ("val", 50), ("test", 100))
                                   for k in ("images", "labels")})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
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
    dvc("config", "cache.type", "reflink,hardlink,symlink,copy", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "tiny project", cwd=repo)
    return repo
