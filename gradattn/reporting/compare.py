"""`gradattn compare --rev BASE`: what the workspace changed against a git revision, as one
markdown report (CI posts it on the pull request with CML).

- Headline: top-1 and ECE of every dataset × model, base → workspace and Δ, from the DVC
  metrics (metrics/summary.json).
- A warning when metrics changed but no param did (code, data or non-determinism changed
  them), or params changed but no metric did (stages not reproduced?).
- Params (`dvc params diff`) and the other metrics that changed, each metric once.
- Plots from `dvc plots diff --json`: a data plot counts as changed when the fields it draws
  differ between the revisions (a history's wall-clock `seconds` does not count), an image plot
  when its bytes differ. With `images=DIR` each changed data plot is drawn as one PNG (both
  revisions on shared axes: no browser or CDN needed) and both versions of each changed image
  are copied, shown side by side.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gradattn.core.errors import GradattnError
from gradattn.core.io import reading


@dataclass(frozen=True)
class PlotChange:
    plot: str
    status: str  # "changed", "added" (workspace only) or "removed" (base only)
    kind: str  # "vega" (drawn from data) or "image"
    images: tuple[str, str] | None = None  # (base, workspace) PNG paths, when copied
    drawn: str | None = None  # a data plot drawn as one PNG (both revisions), when asked


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


def points_by_rev(render: dict) -> dict[str, list]:
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


def axes_of(spec) -> tuple[str, str] | None:
    """(x field, y field) of the first vega-lite encoding that has both."""
    if isinstance(spec, dict):
        enc = spec.get("encoding") or {}
        x, y = (enc.get(k) or {} for k in ("x", "y"))
        if isinstance(x, dict) and isinstance(y, dict) and x.get("field") and y.get("field"):
            return x["field"], y["field"]
        for key, value in spec.items():
            found = axes_of(value) if key != "data" else None
            if found:
                return found
    elif isinstance(spec, list):
        for item in spec:
            found = axes_of(item)
            if found:
                return found
    return None


CURVE_MARKS = {"line", "point", "circle", "area", "trail"}


def marks_of(spec) -> set[str]:
    """The mark types a vega-lite spec draws (a curve: line/point; a confusion matrix: rect)."""
    found = set()
    if isinstance(spec, dict):
        mark = spec.get("mark")
        if mark:
            found.add(mark.get("type") if isinstance(mark, dict) else str(mark))
        for key, value in spec.items():
            if key != "data":
                found |= marks_of(value)
    elif isinstance(spec, list):
        for item in spec:
            found |= marks_of(item)
    return found


def axis_title(spec, field: str) -> str:
    """The title the spec gives the axis of `field`, else the field: a top-level plot of
    several fields draws DVC's `dvc_inferred_y_value`, titled by the plot's y_label."""
    if isinstance(spec, dict):
        if spec.get("field") == field and isinstance(spec.get("title"), str):
            return spec["title"]
        items = [v for k, v in spec.items() if k != "data"]
    else:
        items = spec if isinstance(spec, list) else []
    return next((t for t in (axis_title(v, field) for v in items) if t != field), field)


def curve_axes(spec: dict) -> tuple[str, str] | None:
    """(x, y) of a plot drawn as curves (DVC's linear/scatter templates); None for the
    others (confusion, bars): the plot stage draws those data as figures already."""
    return axes_of(spec) if marks_of(spec) & CURVE_MARKS else None


# The columns by which DVC draws several lines per revision: a top-level plot of several
# files (`filename`) or several fields of one file (`field`, y in `dvc_inferred_y_value`).
LINE_KEYS = ("filename", "field")


def numeric_series(points: dict[str, list], axes: tuple[str, str],
                   labels: dict[str, str] | None = None) -> dict[str, list] | None:
    """label → (x, y) points of each line: one per revision, or per revision and file/field
    ("label · file · field") where the plot overlays several; None when the fields are not
    numbers (a confusion matrix or a bar chart: drawn by the plot stage as figures already)."""
    x, y = axes
    labels = labels or {rev: rev for rev in points}
    series: dict[str, list] = {}
    for rev, label in labels.items():  # in the labels' order: base first
        lines: dict[str, list] = {}
        for p in points.get(rev) or []:
            if is_number(p.get(x)) and is_number(p.get(y)):
                line = " · ".join([label, *(str(p[k]) for k in LINE_KEYS if k in p)])
                lines.setdefault(line, []).append((float(p[x]), float(p[y])))
        series.update(lines or {label: []})
    return series if any(series.values()) else None


def _draw(plot: str, points: dict[str, list], axes: tuple[str, str], base: str,
          path: Path, y_title: str) -> str | None:
    from gradattn.reporting.plots import plot_revisions

    series = numeric_series(points, axes, {base: f"{base} (base)", "workspace": "workspace"})
    if series is None:
        return None
    plot_revisions(series, path, x=axes[0], y=y_title, title=plot)
    return path.as_posix()


def is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def safe_name(plot: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", plot)


def changed_plots(root: str | Path, base: str, images: Path | None = None) -> list[PlotChange]:
    root = Path(root)
    changes = []
    if images is not None:
        images.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shown = json.loads(run_dvc(root, "plots", "diff", base, "--json", "-o", tmp))
        for plot, renders in (shown.get("data") or {}).items():
            vega = [r for r in renders if r.get("type") == "vega"]
            if vega:
                points = points_by_rev(vega[0])
                b, w = points.get(base), points.get("workspace")
                status = _status(b is not None, w is not None, b == w)
                if not status:
                    continue
                axes = curve_axes(vega[0].get("content") or {})
                drawn = None
                if images is not None and axes:
                    drawn = _draw(plot, points, axes, base, images / f"{safe_name(plot)}.png",
                                  axis_title(vega[0]["content"], axes[1]))
                changes.append(PlotChange(plot, status, "vega", drawn=drawn))
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
                copied = tuple(_copy(src, images / f"{tag}.{safe_name(plot)}")
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


def _workspace(root: Path) -> str:
    """What `root`'s workspace is: HEAD, and whether its tracked files differ from it."""
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root,
                           capture_output=True).returncode != 0
    return f"HEAD {_short(root, 'HEAD')}{' plus uncommitted changes' if dirty else ''}"


HEADLINE_FILE = "metrics/summary.json"  # gradattn.reporting.report: {"<dataset>/<model>": {...}}
HEADLINE = ("top1", "ece")


def _diff_json(root: Path, what: str, base: str) -> dict[str, dict[str, dict]]:
    """file → key → {old, new[, diff]} of `dvc params|metrics diff BASE --all --json`."""
    return json.loads(run_dvc(root, what, "diff", base, "--all", "--json") or "{}") or {}


def _changed(entry: dict) -> bool:
    return entry.get("old") != entry.get("new")


def _fmt(value, scale: float = 1.0, digits: int = 4) -> str:
    if not is_number(value):
        return "–" if value is None else str(value)
    return f"{float(value) * scale:.{digits}g}" if scale == 1.0 else f"{float(value) * scale:.2f}"


def _delta(entry: dict, scale: float = 1.0) -> str:
    old, new = entry.get("old"), entry.get("new")
    if not (is_number(old) and is_number(new)):
        return "–"
    if scale == 1.0 and all(isinstance(v, int) and not isinstance(v, bool) for v in (old, new)):
        return f"{new - old:+d}"  # seeds, epochs: whole numbers
    d = (float(new) - float(old)) * scale
    return f"{d:+.2f}" if scale != 1.0 else f"{d:+.4f}"


def headline(metrics: dict[str, dict[str, dict]], base: str) -> str:
    """Top-1 (%) and ECE of every dataset × model, base → workspace, Δ."""
    rows = []
    summary = metrics.get(HEADLINE_FILE) or {}
    runs = dict.fromkeys(k.rsplit(".", 1)[0] for k in summary if k.rsplit(".", 1)[-1]
                         in HEADLINE)
    for run in runs:
        dataset, _, model = run.rpartition("/")
        top1, ece = (summary.get(f"{run}.{m}") or {} for m in HEADLINE)
        rows.append(f"| {dataset} | {model} | {_fmt(top1.get('old'), 100)} → "
                    f"{_fmt(top1.get('new'), 100)} | {_delta(top1, 100)} | "
                    f"{_fmt(ece.get('old'), digits=3)} → {_fmt(ece.get('new'), digits=3)} | "
                    f"{_delta(ece)} |")
    if not rows:
        return f"No headline: {HEADLINE_FILE} is in neither revision."
    return "\n".join([f"| Dataset | Model | Top-1 % (`{base}` → workspace) | Δ pp | "
                      f"ECE (`{base}` → workspace) | Δ |", "| :--- | :--- | ---: | ---: | ---: "
                      "| ---: |", *rows])


def _rows(diff: dict[str, dict[str, dict]], skip=lambda file, key: False) -> list[str]:
    return [f"| {file} | {key} | {_fmt(e.get('old'))} | {_fmt(e.get('new'))} | "
            f"{_delta(e) if 'diff' in e or is_number(e.get('old')) else ''} |"
            for file, entries in diff.items() for key, e in entries.items()
            if _changed(e) and not skip(file, key)]


def warning(params_changed: bool, metrics_changed: bool) -> str | None:
    if metrics_changed and not params_changed:
        return ("**Warning: metrics changed but no param did** — code, data or a "
                "non-deterministic run changed them; check that both sides ran the same code "
                "(`dvc status`, `git diff`).")
    if params_changed and not metrics_changed:
        return ("**Warning: params changed but no metric did** — were the stages reproduced "
                "after the change? (`dvc status`; then `dvc repro`).")
    return None


def _git_show(root: Path, rev: str, path: str) -> bytes | None:
    done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True)
    return done.stdout if done.returncode == 0 else None


def check_inputs(root: Path, base: str) -> None:
    """dvc.lock and the headline metrics of both sides must parse: DVC reads a damaged one as
    absent, and the report would then say, confidently, that every param was removed."""
    import yaml

    for path, parse in (("dvc.lock", yaml.safe_load), (HEADLINE_FILE, json.loads)):
        sides = (("the workspace", (root / path).read_bytes() if (root / path).is_file()
                  else None, f"restore it (`git checkout -- {path}`) or rerun `dvc repro`"),
                 (f"--rev {base}", _git_show(root, base, path),
                  "compare with another revision"))
        for side, data, fix in sides:
            if data is None:
                continue
            with reading(f"{path} of {side}", fix):
                value = parse(data)
            stages = value.get("stages") if isinstance(value, dict) else None
            if not isinstance(value, dict) or (path == "dvc.lock" and not (
                    isinstance(stages, dict) and all(isinstance(v, dict)
                                                     for v in stages.values()))):
                raise GradattnError(f"{path} of {side} is damaged or not the file it should be "
                                    f"(not a mapping{' of stages' * (path == 'dvc.lock')}): "
                                    f"{fix}")


def compare_markdown(base: str, root: str | Path = ".", images: Path | None = None,
                     links: Path | None = None) -> str:
    """The report; with `images` its figures are written there, linked relative to the folder
    `links` (the report's own, so the links work wherever the report and its images go)."""
    root = Path(root)
    check_inputs(root, base)
    params = _diff_json(root, "params", base)
    metrics = _diff_json(root, "metrics", base)
    param_rows = _rows(params)
    # Each metric once: the headline's are not listed again below it.
    other_rows = _rows(metrics, lambda f, k: f == HEADLINE_FILE and k.rsplit(".", 1)[-1]
                       in HEADLINE)
    any_metric = any(_changed(e) for entries in metrics.values() for e in entries.values())
    plots = changed_plots(root, base, images)

    def link(path: str) -> str:
        return Path(os.path.relpath(path, links)).as_posix() if links is not None else path

    note = warning(bool(param_rows), any_metric)
    parts = [
        f"# Changes against `{base}` ({_short(root, base)})", "",
        f"The workspace ({_workspace(root)}) against `{base}`.", "",
        *([note, ""] if note else []),
        "## Headline", "", headline(metrics, base), "",
        "## Params", "",
        "\n".join(["| File | Param | Base | Workspace | Change |",
                   "| :--- | :--- | ---: | ---: | ---: |", *param_rows])
        if param_rows else "No params changed.", "",
        "## Other metrics", "",
        "\n".join(["| File | Metric | Base | Workspace | Change |",
                   "| :--- | :--- | ---: | ---: | ---: |", *other_rows])
        + "\n\nChange = workspace − base; only metrics that changed are listed."
        if other_rows else ("No metric changed." if not any_metric
                            else "No other metric changed."), "",
        "## Plots", "",
    ]
    if not plots:
        parts.append("No plot changed.")
    for change in plots:
        parts.append(f"- `{change.plot}`: {change.status}")
    for change in plots:
        if change.drawn:
            parts += ["", f"### `{change.plot}`", "",
                      f"![{change.plot}: {base} and workspace]({link(change.drawn)})"]
        if change.images:
            b, w = (f"![{tag}]({link(path)})" if path else "–"
                    for tag, path in zip(("base", "workspace"), change.images, strict=True))
            parts += ["", f"### `{change.plot}`", "", f"| `{base}` | workspace |",
                      "| --- | --- |", f"| {b} | {w} |"]
    return "\n".join(parts) + "\n"
