"""Peak memory of preparing PCam-format data, extrapolated to PCam's full 327,680 patches.

    python benchmarks/prepare_memory.py [--patches 20000] [--small 5000]

Writes the six `camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5` files (random uint8
patches, 80/10/10) to a temporary folder, prepares them with the real `pcam` preparer in a
fresh process, and reports for that process:
  peak RSS        the kernel's high-water mark (VmHWM): includes pages of the output .npy
                  memory maps, i.e. page cache of the file being written, which the kernel can
                  reclaim once written back
  peak anon RSS   the most private (heap) memory seen, sampled every 20 ms: what really has to fit
  tracemalloc     the peak of Python and numpy allocations
It runs twice (--small and --patches) and fits memory = a + b·patches to extrapolate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, with or without installing
    sys.path.insert(0, str(ROOT))

from gradattn.core.stage import entry  # noqa: E402  (one-line errors, as the stages)

FULL = 327_680


def write_pcam(folder: Path, patches: int, seed: int = 0) -> None:
    import h5py
    import numpy as np

    rng = np.random.default_rng(seed)
    counts = {"train": patches * 8 // 10, "valid": patches // 10}
    counts["test"] = patches - counts["train"] - counts["valid"]
    folder.mkdir(parents=True, exist_ok=True)
    for tag, n in counts.items():
        with h5py.File(folder / f"camelyonpatch_level_2_split_{tag}_x.h5", "w") as f:
            x = f.create_dataset("x", shape=(n, 96, 96, 3), dtype="uint8", chunks=(32, 96, 96, 3))
            for start in range(0, n, 1000):
                stop = min(start + 1000, n)
                x[start:stop] = rng.integers(0, 256, (stop - start, 96, 96, 3), dtype=np.uint8)
        with h5py.File(folder / f"camelyonpatch_level_2_split_{tag}_y.h5", "w") as f:
            f.create_dataset("y", data=rng.integers(0, 2, (n, 1, 1, 1), dtype=np.uint8))


def _anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def _hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def child(raw: Path, out: Path) -> None:
    """Prepare `raw` (run in a fresh process, so its peaks are the preparation's alone)."""
    import tracemalloc

    from gradattn.prepared import PreparedWriter
    from gradattn.sources.registry import get_spec

    spec = get_spec("pcam")
    baseline = _anon_kib()
    peak = {"anon": baseline}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak["anon"] = max(peak["anon"], _anon_kib())

    threading.Thread(target=sample, daemon=True).start()
    tracemalloc.start()
    start = time.perf_counter()
    with PreparedWriter("pcam", spec.classes, root=out, notes={}) as writer:
        spec.prepare(raw, writer, "official", 0)
        meta = writer.commit()
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    done.set()
    peak["anon"] = max(peak["anon"], _anon_kib())
    print(
        json.dumps(
            {
                "patches": sum(meta["counts"].values()),
                "seconds": seconds,
                "peak_rss_mib": _hwm_kib() / 1024,
                "peak_anon_mib": peak["anon"] / 1024,
                "baseline_anon_mib": baseline / 1024,
                "tracemalloc_mib": traced / 2**20,
            }
        )
    )


def measure(patches: int, tmp: Path) -> dict:
    raw, out = tmp / f"raw-{patches}", tmp / f"prepared-{patches}"
    t0 = time.perf_counter()
    write_pcam(raw, patches)
    print(f"wrote {patches:,} PCam-format patches in {time.perf_counter() - t0:.1f} s", flush=True)
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(raw), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=5_000)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="pcam-memory-") as tmp:
        runs = [measure(n, Path(tmp)) for n in (args.small, args.patches)]
    keys = ("peak_rss_mib", "peak_anon_mib", "tracemalloc_mib", "seconds")
    print(f"\n{'patches':>9} " + " ".join(f"{k:>16}" for k in keys))
    for run in runs:
        print(f"{run['patches']:>9,} " + " ".join(f"{run[k]:>16.1f}" for k in keys))
    small, large = runs
    line = f"{FULL:>9,} "
    for k in keys:  # linear fit through the two runs
        slope = (large[k] - small[k]) / (large["patches"] - small["patches"])
        line += f"{large[k] + slope * (FULL - large['patches']):>16.1f} "
    print(line + " (extrapolated)")
    print(f"baseline (imports, before preparing): {large['baseline_anon_mib']:.0f} MiB anon")


if __name__ == "__main__":
    entry(main)
