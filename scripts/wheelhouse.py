"""Fill a folder with wheels of every dependency of gradattn, for an offline install:

    scripts/wheelhouse.sh DIR [--python 3.12] [--platform manylinux_2_28_x86_64 ...] [--with-torch]
                          [--extra s3] [--extra ssh]
    # on the offline node:
    pip install --no-index --find-links DIR -e .          # with extras: -e '.[s3,ssh]'

Without --python/--platform the wheels are for this machine's interpreter and platform;
with them, for the target's (pip resolves for it with --only-binary). torch and torchvision
(and what only they need: CUDA libraries, triton, sympy...) are left out unless --with-torch:
GPU images ship them, and they are gigabytes. Packages published only as source (e.g.
antlr4-python3-runtime, which hydra-core pins) are built into wheels here; one that is not
pure Python cannot be built for another platform, and is named in the error.

How: (1) resolve on this machine to find the source-only packages and build them; (2)
resolve for the target with those wheels in reach (`pip install --dry-run --report`); (3)
keep the requirements' closure without torch; (4) `pip download --no-deps` exactly those.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib
try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ModuleNotFoundError:  # a bare Python: pip's own copy
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the stages' one-line wrapper: standard library only
from gradattn.core.stage import entry  # noqa: E402

TORCH = {"torch", "torchvision"}
# glibc 2.28 and later: RHEL/Rocky 8+, Ubuntu 20.04+, Debian 10+ (most GPU nodes and images).
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"


def expand(platforms: list[str]) -> list[str]:
    """Every manylinux tag a node with these accepts: pip matches the tags it is given
    exactly, but a glibc 2.28 node also runs wheels built for 2.17 (manylinux2014) to 2.27."""
    tags: list[str] = []
    for tag in platforms:
        match = re.fullmatch(r"manylinux(?:_2_(\d+)|(2014))_(\w+)", tag)
        if match is None:
            tags.append(tag)
            continue
        glibc = 17 if match.group(2) else int(match.group(1))
        arch = match.group(3)
        tags += [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 16, -1)]
        tags.append(f"manylinux2014_{arch}")
    return list(dict.fromkeys(tags))


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def requirements(with_torch: bool, extras: list[str] = ()) -> list[str]:
    """The project's dependencies, those of `extras` (pyproject's optional-dependencies:
    s3, ssh) and its build backend (pip builds `-e .` in isolation)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    optional = pyproject["project"].get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        fail(f"--extra {unknown[0]} is not an extra of gradattn: choose from "
             f"{', '.join(sorted(optional))}")
    reqs = [*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"],
            *[r for e in extras for r in optional[e]]]
    if not with_torch:
        reqs = [r for r in reqs if canonicalize_name(Requirement(r).name) not in TORCH]
    return reqs


def pip(*args: str, quiet: bool = True) -> None:
    cmd = [sys.executable, "-m", "pip", *args, *(["-q"] if quiet else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines()
                 if ln.strip() and "is ignored" not in ln]
        print("\n".join(lines[-25:]), file=sys.stderr)
        fail(f"pip {args[0]} failed (above); the command was: {' '.join(cmd)}")


def resolve(reqs: list[str], target: list[str], find_links: Path, tmp: Path) -> list[dict]:
    """pip's resolution of `reqs` for the target (every package, torch's included)."""
    report = tmp / "report.json"
    pip("install", "--dry-run", "--ignore-installed", "--report", str(report),
        "--find-links", str(find_links), *target, *reqs)
    return json.loads(report.read_text())["install"]


def closure(reqs: list[str], resolved: list[dict], env: dict[str, str],
            with_torch: bool) -> list[dict]:
    """The resolved packages `reqs` need, not following torch/torchvision unless with_torch."""
    by_name = {canonicalize_name(item["metadata"]["name"]): item for item in resolved}
    keep: dict[str, dict] = {}
    todo = [(Requirement(r), "") for r in reqs]
    while todo:
        req, extra = todo.pop()
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        if (name in TORCH and not with_torch) or name not in by_name:
            continue
        for wanted in req.extras or [""]:
            key = f"{name}[{wanted}]"
            if key in keep:
                continue
            keep[key] = by_name[name]
            todo += [(Requirement(r), wanted)
                     for r in by_name[name]["metadata"].get("requires_dist", [])]
    unique = {canonicalize_name(item["metadata"]["name"]): item for item in keep.values()}
    return sorted(unique.values(), key=lambda item: item["metadata"]["name"].lower())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="the folder to fill (created if missing)")
    p.add_argument("--python", metavar="X.Y",
                   help="the target's Python version (default: this interpreter's)")
    p.add_argument("--platform", action="append", default=[], metavar="TAG",
                   help="the target's platform tag, e.g. manylinux_2_28_x86_64 (glibc 2.28; "
                   "older manylinux tags are added); repeatable; default: this machine's, or "
                   f"{DEFAULT_PLATFORM} with --python")
    p.add_argument("--with-torch", action="store_true",
                   help="also torch and torchvision (and their CUDA libraries)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME",
                   help="also an extra's dependencies: s3 (dvc-s3), ssh (dvc-ssh); repeatable")
    args = p.parse_args()
    extras = list(dict.fromkeys(args.extra))

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    python = args.python or here
    platforms = args.platform
    if args.python and not platforms:
        platforms = [DEFAULT_PLATFORM]
    cross = bool(platforms)
    if cross:
        target = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python,
                  *[a for tag in expand(platforms) for a in ("--platform", tag)]]
    else:
        target = []
    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0")

    reqs = requirements(args.with_torch, extras)
    out = args.dir
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # 1. Source-only packages: found by resolving here (sources allowed), built to wheels.
        native = resolve(requirements(True, extras), [], out, tmp)
        sources = [item for item in native
                   if not item["download_info"]["url"].endswith(".whl")
                   and canonicalize_name(item["metadata"]["name"]) != "gradattn"]
        for item in sources:
            spec = f"{item['metadata']['name']}=={item['metadata']['version']}"
            built = tmp / "built"
            pip("wheel", "--no-deps", "-w", str(built), spec)
            for wheel in built.glob("*.whl"):
                if cross and not wheel.name.endswith("-none-any.whl"):
                    fail(f"{spec} is published only as source and is not pure Python "
                         f"({wheel.name}): build it on a {python} {platforms[0]} machine "
                         f"with `pip wheel --no-deps -w {out} {spec}`")
                shutil.move(str(wheel), out / wheel.name)
            print(f"built {spec} from source", file=sys.stderr)
        # 2-4. The target's resolution, its closure without torch, and those exact wheels.
        if cross:
            target_only = [*target, "--target", str(tmp / "target")]
        else:
            target_only = []
        resolved = resolve(requirements(True, extras), target_only, out, tmp)
        wanted = closure(reqs, resolved, env, args.with_torch)
        pins = [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in wanted]
        pip("download", "--no-deps", "--find-links", str(out), "-d", str(out), *target, *pins)
    wheels = sorted(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    what = f"Python {python}" + (f" {', '.join(platforms)}" if cross else " (this machine)")
    torch_note = "with torch" if args.with_torch else "without torch/torchvision"
    extras_note = f", extras {','.join(extras)}" if extras else ""
    target_spec = f"'.[{','.join(extras)}]'" if extras else "."
    print(f"{out}: {len(wheels)} wheels, {size / 1e6:.1f} MB, for {what}, {torch_note}"
          f"{extras_note}\noffline: scripts/install_offline.sh {out}"
          f"{' ' + ','.join(extras) if extras else ''} "
          f"(pip install --no-index --find-links {out} -e {target_spec})")


if __name__ == "__main__":
    entry(main)
