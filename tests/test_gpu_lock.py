"""One GPU per process, tested without a GPU: the device count is faked, the locks are real
flocks held by real concurrent processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from conftest import ROOT

from gradattn.core import device as gpu
from gradattn.core.device import resolve_device

# Claims one of COUNT devices, prints its index, then holds it until stdin closes.
HOLDER = """
import sys
from pathlib import Path
from gradattn.core.device import claim_device
print(claim_device(int(sys.argv[1]), Path(sys.argv[2]), poll_seconds=0.05), flush=True)
sys.stdin.read()
"""


def start_holder(count: int, lock_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(count), str(lock_dir)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def claimed(proc: subprocess.Popen) -> int:
    line = proc.stdout.readline()
    assert line.strip(), f"holder exited without claiming (rc {proc.poll()})"
    return int(line)


def release(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.stdin.close()
        p.wait(timeout=30)


def test_concurrent_runs_take_distinct_devices_and_a_killed_holder_frees_its_own(tmp_path):
    count = 3
    holders = [start_holder(count, tmp_path) for _ in range(count)]
    try:
        devices = [claimed(p) for p in holders]
        assert sorted(devices) == [0, 1, 2]

        waiter = start_holder(count, tmp_path)  # a fourth run: every device is taken
        holders.append(waiter)
        victim = holders[devices.index(1)]
        os.kill(victim.pid, signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
        victim.wait(timeout=30)
        assert claimed(waiter) == 1
    finally:
        release(holders)


def test_resolve_device_takes_the_first_free_gpu_and_says_which(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(gpu, "_held", {})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # A queued experiment runs in a temporary copy; DVC_ROOT names the parent repository.
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    other = start_holder(4, tmp_path / ".dvc" / "tmp" / "gradattn-locks")
    try:
        assert claimed(other) == 0
        assert resolve_device("auto") == torch.device("cuda", 1)
        assert "using GPU 1 of 4" in capsys.readouterr().out
        assert resolve_device("cuda") == torch.device("cuda", 1)  # a process keeps its GPU
    finally:
        release([other])


def test_a_chosen_gpu_is_respected(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(gpu, "_held", {})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert resolve_device("auto") == torch.device("cuda")
    assert not (tmp_path / ".dvc").exists()  # no lock taken
