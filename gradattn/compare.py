"""`gradattn compare --rev BASE`: what the workspace changed against a git revision, as one
markdown report (CI posts it on the pull request with CML).

Params and metrics come from `dvc params diff` / `dvc metrics diff` (their markdown, with the
deltas). Plots come from `dvc plots diff --json`: a data plot counts as changed when the fields
it draws differ between the revisions (a history's wall-clock `seconds` does not count), an
image plot when its bytes differ; with `images=DIR` both versions of each changed image are
copied into DIR and shown side by side.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gradattn.errors import GradattnError


@dataclass(frozen=True)
class PlotChange:
    plot: str
    status: str  # "changed", "added" (workspace only) or "removed" (base only)
    kind: str  # "vega" (drawn from data) or "image"
    images: tuple[str, str] | None = None  # (base, workspace) PNG paths, when copied


def run_dvc(root: Path, *args: str) -> str:
    """stdout of `dvc *args` run in root (this interpreter's dvc); GradattnError on failure.
    (dvc.api has no params/metrics/plots diff.)"""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True,
                          text=True)
    if done.returncode:
        raise GradattnError(f"`dvc {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def _fields(spec) -> set[str]:
    """The data fields a vega-lite spec draws (every encoding's `field`), less DVC's `rev`."""
    found = set()
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key == "field" and isinstance(value, str):
                found.add(value)
            elif key != "data":
                found |= _fields(value)
    elif isinstance(spec, list):
        for item in spec:
            found |= _fields(item)
    return found - {"rev"}


def _by_rev(render: dict) -> dict[str, list]:
    """rev → the plotted datapoints (only the drawn fields), from one vega render."""
    content = render.get("content") or {}
    fields = _fields({k: v for k, v in content.items() if k != "data"})
    out: dict[str, list] = {rev: [] for rev in render.get("revisions") or []}
    for point in (content.get("data") or {}).get("values") or []:
        keep = {k: v for k, v in point.items() if (k in fields if fields else k != "rev")}
        out.setdefault(point.get("rev"), []).append(keep)
    return {rev: points for rev, points in out.items() if points}


def _status(base: bool, work: bool, same: bool) -> str | None:
    if base and work:
        return None if same else "changed"
    return "added" if work else "removed" if base else None


def changed_plots(root: str | Path, base: str, images: Path | None = None) -> list[PlotChange]:
    root = Path(root)
    changes = []
    with tempfile.TemporaryDirectory() as tmp:
        shown = json.loads(run_dvc(root, "plots", "diff", base, "--json", "-o", tmp))
        for plot, renders in (shown.get("data") or {}).items():
            vega = [r for r in renders if r.get("type") == "vega"]
            if vega:
                points = _by_rev(vega[0])
                b, w = points.get(base), points.get("workspace")
                status = _status(b is not None, w is not None, b == w)
                if status:
                    changes.append(PlotChange(plot, status, "vega"))
                continue
            urls = {r["revisions"][0]: Path(r["url"]) for r in renders
                    if r.get("type") == "image" and r.get("revisions") and r.get("url")}
            b, w = urls.get(base), urls.get("workspace")
            same = bool(b and w) and b.read_bytes() == w.read_bytes()
            status = _status(b is not None, w is not None, same)
            if not status:
                continue
            copied = None
            if images is not None:
                images.mkdir(parents=True, exist_ok=True)
                stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", plot)
                copied = tuple(_copy(src, images / f"{tag}.{stem}")
                               for tag, src in (("base", b), ("workspace", w)))
            changes.append(PlotChange(plot, status, "image", copied))
    return changes


def _copy(src: Path | None, dst: Path) -> str:
    if src is None:
        return ""
    shutil.copyfile(src, dst)
    return dst.as_posix()


def _short(root: Path, rev: str) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", rev], cwd=root, capture_output=True,
                          text=True)
    return done.stdout.strip() if done.returncode == 0 else "?"


def _table_or_empty(md: str) -> str:
    """dvc's markdown table, or '' when it has no rows (dvc prints the bare header then)."""
    rows = [line for line in md.strip().splitlines() if line.startswith("|")]
    return md.strip() if len(rows) > 2 else ""


def compare_markdown(base: str, root: str | Path = ".", images: Path | None = None) -> str:
    root = Path(root)
    params = _table_or_empty(run_dvc(root, "params", "diff", base, "--md"))
    metrics = _table_or_empty(run_dvc(root, "metrics", "diff", base, "--md"))
    plots = changed_plots(root, base, images)
    parts = [
        f"# Changes against `{base}` ({_short(root, base)})", "",
        f"The workspace (HEAD {_short(root, 'HEAD')} plus uncommitted changes) against "
        f"`{base}`.", "",
        "## Params", "", params or "No params changed.", "",
        "## Metrics", "",
        (metrics + "\n\nChange = workspace − base; only metrics that changed are listed.")
        if metrics else "No metric changed.", "",
        "## Plots", "",
    ]
    if not plots:
        parts.append("No plot changed.")
    for change in plots:
        parts.append(f"- `{change.plot}`: {change.status}")
    for change in plots:
        if change.images:
            b, w = (f"![{tag}]({path})" if path else "–"
                    for tag, path in zip(("base", "workspace"), change.images, strict=True))
            parts += ["", f"### `{change.plot}`", "", f"| `{base}` | workspace |",
                      "| --- | --- |", f"| {b} | {w} |"]
    return "\n".join(parts) + "\n"
