"""`dvc plots show` works offline and overlays the histories: the page template of
.dvc/config (.dvc/html/index.html, written by scripts/vendor_vega.py) carries vega, vega-lite
and vega-embed as npm ships them, so the page loads nothing from the network; dvc.yaml's
top-level plots overlay train against validation and ResNet-18 against GradAttn. Real `dvc`
in a temporary project holding the committed plot files (no run needed)."""

from __future__ import annotations

import hashlib
import json
import re
import runpy

from conftest import ROOT, committed, copy_committed
from dvc_render.html import PAGE_HTML
from dvc_render.vega import VegaRenderer

from gradattn.reporting.compare import axis_title, curve_axes, numeric_series, points_by_rev

TEMPLATE = ROOT / ".dvc/html/index.html"
VENDORED = re.compile(r"<!-- (?P<package>[\w-]+)@(?P<version>[\d.]+) (?P<build>\S+) "
                      r"\(BSD-3-Clause, LICENSE\.(?P=package)\) sha256 (?P<sha>[0-9a-f]{64}) -->"
                      r"\s*<script>(?P<code>.*?)</script>", re.S)
SCRIPTS = VegaRenderer.SCRIPTS  # what DVC's own page loads: vega from a CDN
OVERLAYS = {"accuracy_resnet18", "accuracy_gradattn", "val_accuracy_models", "val_loss_models"}


def vendored(page: str) -> dict[str, re.Match]:
    return {m["package"]: m for m in VENDORED.finditer(page)}


def test_the_template_inlines_the_pinned_npm_builds_unchanged():
    pins = runpy.run_path(str(ROOT / "scripts/vendor_vega.py"))["PINS"]
    template = TEMPLATE.read_text(encoding="utf-8")
    found = vendored(template)
    assert {p: (m["version"], m["build"]) for p, m in found.items()} == pins
    for package, m in found.items():
        assert hashlib.sha256(m["code"].encode()).hexdigest() == m["sha"], package
        licence = (TEMPLATE.parent / f"LICENSE.{package}").read_text()
        assert "Redistribution and use in source and binary forms" in licence
    # DVC fills its placeholders by str.replace: {scripts} would bring back the CDN tags.
    assert "{scripts}" not in template and template.count("{plot_divs}") == 1
    assert "html_template = html/index.html" in committed(".dvc/config")


def test_dvc_plots_show_draws_every_plot_with_no_network(dvc_repo, tmp_path):
    repo = dvc_repo.path
    # The committed histories, plot data and figures (not a user's last run: issue 33).
    for path in (".dvc/config", ".dvc/html", "metrics", "plotdata", "plots"):
        copy_committed(path, repo)

    shown = json.loads(dvc_repo.dvc("plots", "show", "--json").stdout)
    assert not shown.get("errors")
    plots = {name: renders[0]["type"] for name, renders in shown["data"].items()}
    assert OVERLAYS <= {name for name, kind in plots.items() if kind == "vega"}
    assert "image" in plots.values()

    out = tmp_path / "page"
    dvc_repo.dvc("plots", "show", "-o", str(out))
    page = (out / "index.html").read_text(encoding="utf-8")
    # Nothing fetched: no <script src> (DVC's default page has three, from a CDN), no <link>
    # (the markup outside the vendored code and the comments).
    markup = re.sub(r"<script>.*?</script>|<!--.*?-->", "", page, flags=re.S)
    assert not re.search(r"<script\b[^>]*\bsrc\s*=|<link\b", markup)
    assert re.search(r"<script\b[^>]*\bsrc\s*=", PAGE_HTML.replace("{scripts}", SCRIPTS))
    assert set(vendored(page)) == {"vega", "vega-lite", "vega-embed"}
    assert vendored(page)["vega"]["code"] == vendored(TEMPLATE.read_text())["vega"]["code"]
    for name, kind in plots.items():  # every plot drawn: data by vegaEmbed, figures as files
        div = name.translate({ord(c): "_" for c in r"!@#$%^&*()[]{};,<>?\/:.|`~=_+ "})
        if kind == "vega":
            assert f"vegaEmbed('#{div}', spec)" in page, name
        else:
            block = page[page.index(f'id="{div}"'):]
            src = re.search(r'<img src="([^"]+)"', block)[1]
            assert (out / src).is_file(), name

    # The overlays draw a line per file / field, and so do `gradattn plots` and `compare`.
    history = json.loads((repo / "metrics/fashionmnist-mini/resnet18.history.json").read_text())
    for name, lines in {
        "val_accuracy_models": {"workspace · resnet18.history.json",
                                "workspace · gradattn.history.json"},
        "accuracy_resnet18": {"workspace · train_accuracy", "workspace · val_accuracy"},
    }.items():
        render = shown["data"][name][0]
        series = numeric_series(points_by_rev(render), curve_axes(render["content"]))
        assert set(series) == lines, name
        assert all(len(points) == len(history) for points in series.values()), name
    accuracy = shown["data"]["accuracy_resnet18"][0]["content"]  # y_label names DVC's y field
    assert axis_title(accuracy, "dvc_inferred_y_value") == "accuracy"
    series = numeric_series(points_by_rev(shown["data"]["val_accuracy_models"][0]),
                            ("epoch", "val_accuracy"))
    assert series["workspace · resnet18.history.json"] == [
        (float(e["epoch"]), e["val_accuracy"]) for e in history]
