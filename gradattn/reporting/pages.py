"""Offline HTML pages: a markdown report (gradattn compare) or the plots of several revisions
side by side (gradattn plots), as one self-contained file.

`dvc plots diff` writes a page whose figures are files beside it, laid in one scrolling row
per plot (and whose interactive plots load vega from a CDN, blank offline, unless the
project's page template carries it, as .dvc/html/index.html does). Here every
figure is a PNG embedded in the page as a data URI, data plots are drawn with matplotlib (all
revisions on shared axes), and the revisions of an image plot share one row of equal columns
that fit the window. Nothing is fetched when the page is opened.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gradattn.reporting.compare import (
    axis_title,
    curve_axes,
    numeric_series,
    points_by_rev,
    run_dvc,
    safe_name,
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1400px;
       padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; }
th { background: #f3f3f3; }
img { max-width: min(100%, 760px); height: auto; }
td img, .row img { max-width: 100%; }
.row { display: grid; gap: .75rem; grid-template-columns: repeat(var(--n), minmax(0, 1fr)); }
.row figure { margin: 0; border: 1px solid #ddd; padding: .4rem; }
figcaption { font-size: .85rem; color: #555; text-align: center; }
h2 code, h3 code { font-size: 1rem; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def embed_images(body: str, base: Path) -> str:
    """Every <img src="file"> of body with the file's bytes as a data URI (offline)."""
    def swap(m: re.Match) -> str:
        file = Path(html.unescape(m.group(2)))
        file = file if file.is_absolute() else base / file
        return f'{m.group(1)}"{_data_uri(file)}"' if file.is_file() else m.group(0)
    return re.sub(r'(<img[^>]*?src=)"([^"]+)"', swap, body)


def page(title: str, body: str) -> str:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def markdown_page(text: str, base: Path) -> str:
    """A markdown report (GitHub tables and images) as an offline HTML page."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(text)
    title = next((line.lstrip("# ") for line in text.splitlines() if line.startswith("# ")),
                 "report")
    return page(title, embed_images(body, base))


@dataclass(frozen=True)
class PlotRow:
    plot: str
    figures: list[tuple[str, Path]]  # (caption, PNG): one per revision, or one for all


def plot_rows(root: str | Path, revs: list[str], out: Path) -> tuple[list[PlotRow], list[str]]:
    """Every plot of the revisions, from `dvc plots diff REVS --json`: a data plot drawn as
    one PNG with a line per revision, an image plot as each revision's PNG; and the data plots
    of categories (confusion, per-layer bars), not drawn: the plot stage's figures show them."""
    from gradattn.reporting.plots import plot_revisions

    rows, skipped = [], []
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shown = json.loads(run_dvc(Path(root), "plots", "diff", *revs, "--json", "-o", tmp))
        for plot, renders in (shown.get("data") or {}).items():
            vega = [r for r in renders if r.get("type") == "vega"]
            if vega:
                axes = curve_axes(vega[0].get("content") or {})
                series = numeric_series(points_by_rev(vega[0]), axes) if axes else None
                if series is None:
                    skipped.append(plot)
                    continue
                png = plot_revisions(series, out / f"{safe_name(plot)}.png", x=axes[0],
                                     y=axis_title(vega[0]["content"], axes[1]), title=plot)
                rows.append(PlotRow(plot, [(", ".join(series), png)]))
                continue
            figures = []
            for r in renders:
                if r.get("type") == "image" and r.get("revisions") and r.get("url"):
                    rev = r["revisions"][0]
                    dst = out / f"{safe_name(rev)}.{safe_name(plot)}"
                    shutil.copyfile(r["url"], dst)
                    figures.append((rev, dst))
            if figures:
                rows.append(PlotRow(plot, figures))
    return rows, skipped


def plots_page(rows: list[PlotRow], revs: list[str], skipped: list[str] = ()) -> str:
    """The rows as a page: one section per plot, its revisions side by side."""
    parts = [f"<h1>Plots of {', '.join(f'<code>{html.escape(r)}</code>' for r in revs)}</h1>",
             f"<p>{len(rows)} plots. Data plots: one line per revision on shared axes; images: "
             "one column per revision.</p>"]
    if skipped:
        parts.append("<p>Data of categories, shown by the figures below rather than drawn "
                     "again: " + ", ".join(f"<code>{html.escape(p)}</code>" for p in skipped)
                     + ".</p>")
    for row in rows:
        cols = max(len(row.figures), 1)
        figs = "".join(f'<figure><img src="{html.escape(str(png))}" alt="{html.escape(cap)}">'
                       f"<figcaption>{html.escape(cap)}</figcaption></figure>"
                       for cap, png in row.figures)
        parts.append(f"<h3><code>{html.escape(row.plot)}</code></h3>"
                     f'<div class="row" style="--n: {cols}; max-width: {cols * 700}px">'
                     f"{figs}</div>")
    return page("plots: " + " vs ".join(revs), embed_images("\n".join(parts), Path(".")))
