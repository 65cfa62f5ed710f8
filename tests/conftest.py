"""Shared fixtures: a temporary DVC project made from this repo's pipeline files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_FILES = ("dvc.yaml", "params.yaml", "stages", "gradattn", ".dvcignore")

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
    """A fresh git + DVC project holding this repo's pipeline, with TINY_PARAMS applied."""
    repo = tmp_path / "project"
    repo.mkdir()
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
