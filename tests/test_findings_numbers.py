"""Every run-derived number of docs/findings.md and results/*/README.md is read from its
published file, so that none can drift from it (issue 30).

How a number is tied to its file. Right after the number the markdown carries an HTML comment
(invisible once rendered) with an expression that recomputes it from the published files:

    ResNet-18 **83.53**<!--= pct({H/ws-learnable/metrics/cifar10-jpeg/resnet18.json:top1}) --> %

- `{FILE:KEY}` is the value at KEY of the JSON (or the tables.csv row, see `run`) FILE. FILE is
  relative to the repository root, or starts with an alias that the same markdown file defines
  in a comment `<!-- sources: H = results/h200-2026-12-04; C = results/... -->`. KEY is a
  `/`-separated path: a dict key, a list index, or `field=value` (the first element of a list
  of dicts whose `field` is `value`). Dots are part of keys (`layers/layer4.0.conv1/grad`).
- The expression is Python over the helpers of `HELPERS` below (pct, first_zero, ...).
- `<!--= ... -->`: the number as written must be the value rounded to the digits written
  (76.2 matches 0.7617..0.7625 after pct); `<!--~ ... -->` is for numbers written as
  approximations ("about 85,000×", "1e-9"): half a unit of the last non-zero digit written.

A number with no comment fails, unless it lies inside one of the phrases of `NOT_RUN` for
that file: the paper's own numbers, settings (lr 1e-3, 40 epochs as a cap), and the like.
Those phrases are literal text of the file, so rewording one makes the test fail until the
list is looked at again. Numbers inside code (`...`, fenced blocks), link targets, dates and
identifiers (layer4, ResNet-18, bf16, commit hashes) are not numbers.

READMEs written by `gradattn table --publish` (their folder holds provenance.json and
tables.csv) are checked table by table: each cell of Tables 1-5 against tables.csv, each row
of the provenance table against provenance.json.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re

import pytest
from conftest import ROOT, committed

ANNOTATED = ["docs/findings.md", "results/README.md", "results/cifar10-dead-layers/README.md",
             "results/cifar10-dead-layers/ablations/README.md",
             "results/h200-2026-12-04/README.md"]
PUBLISHED = sorted(p.parent.relative_to(ROOT).as_posix()
                   for p in (ROOT / "results").glob("*/provenance.json"))


# ---------------------------------------------------------------- reading the published files

# What a run in the user's workspace rewrites (dvc repro, dvc exp run): read as committed, so
# the docs are checked against the published files, not against the user's last run.
RECORDED = ("metrics/", "plots/", "plotdata/", "configs/")


@functools.cache
def _load(path: str):
    file = ROOT / path
    assert file.is_file(), f"{path}: no such published file"
    text = committed(path) if path.startswith(RECORDED) else file.read_text()
    if file.suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    return json.loads(text)


def get(data, key: str):
    """The value at a /-separated KEY (see the module's docstring)."""
    parts = [p for p in key.split("/") if p]
    while parts:
        part = parts.pop(0)
        while isinstance(data, dict) and part not in data and parts:  # a key holding '/'
            part += "/" + parts.pop(0)
        if isinstance(data, list):
            if re.fullmatch(r"-?\d+", part):
                data = data[int(part)]
                continue
            field, _, value = part.partition("=")
            data = next(d for d in data if str(d.get(field)) == value)
        else:
            data = data[part]
    return data


def pct(x: float) -> float:
    return 100 * x


def first_zero(history: str, layer: str) -> int | None:
    """Grad history (the train stage's, a list of {epoch, layer, norm}): the first epoch from
    which LAYER's norm is exactly 0 at every later epoch (None: alive at its last epoch)."""
    rows = sorted((r["epoch"], r["norm"]) for r in _load(history) if r["layer"] == layer)
    alive = [e for e, n in rows if n != 0.0]
    last = alive[-1] if alive else 0
    return next((e for e, _ in rows if e > last), None)


def norm_at(history: str, layer: str, epoch: int) -> float:
    """Grad history: LAYER's norm at EPOCH."""
    return next(r["norm"] for r in _load(history) if r["layer"] == layer and r["epoch"] == epoch)


def dead_convs(history: str, prefixes=("layer3", "layer4")) -> int:
    """Grad history: the convs under PREFIXES whose norm is exactly 0 at the last epoch."""
    rows = _load(history)
    last = max(r["epoch"] for r in rows)
    return sum(1 for r in rows if r["epoch"] == last and r["layer"].startswith(prefixes)
               and ".conv" in r["layer"] and r["norm"] == 0.0)


def epochs_in(history: str) -> int:
    return len({r["epoch"] for r in _load(history)})


def zero_both(gradients: str, prefixes=("layer3", "layer4")) -> int:
    """Gradients stage: the convs under PREFIXES with output- and parameter-gradient exactly 0."""
    return sum(1 for r in _load(gradients)["per_layer"]
               if r["layer"].startswith(prefixes) and r["type"] == "conv"
               and r["output_norm"] == 0.0 and r["parameter_norm"] == 0.0)


def zero_param(gradients: str, prefixes=("layer3", "layer4")) -> int:
    """Gradients stage: the convs under PREFIXES with parameter-gradient exactly 0."""
    return sum(1 for r in _load(gradients)["per_layer"]
               if r["layer"].startswith(prefixes) and r["type"] == "conv"
               and r["parameter_norm"] == 0.0)


def best_val(history: str) -> tuple[int, float]:
    """Train stage history: (epoch, val accuracy) of the best validation epoch."""
    row = max(_load(history), key=lambda r: (r["val_accuracy"], -r["epoch"]))
    return row["epoch"], row["val_accuracy"]


def at_epoch(history: str, epoch: int, key: str) -> float:
    """Train stage history: KEY at EPOCH."""
    return next(r[key] for r in _load(history) if r["epoch"] == epoch)


def ep(run: str, epoch: int, key: str):
    """scripts/dead_layers.py JSON: KEY (a / path) of its EPOCH (1-based)."""
    return get(_load(run)["epochs"][epoch - 1], key)


def unit_grad(run: str, epoch: int, layer: str) -> float:
    """scripts/dead_layers.py JSON: ‖g‖·‖w‖ of LAYER at EPOCH (the gradient of a weight that
    batch norm makes scale-invariant, at unit weight scale)."""
    d = ep(run, epoch, f"layers/{layer}")
    return d["grad"] * d["weight"]


def first_exact_zero(run: str, layer: str) -> int | None:
    """scripts/dead_layers.py JSON: the first epoch whose gradient of LAYER is exactly 0."""
    return next((e["epoch"] for e in _load(run)["epochs"] if e["layers"][layer]["exact_zero"]),
                None)


def run(folder: str, source: str, metric: str) -> float:
    """A published study (gradattn table --publish): METRIC of the run named SOURCE (e.g.
    fm-corrected-resnet18), read from tables.csv through provenance.json's setting and variant."""
    prov = _load(f"{folder}/provenance.json")
    entry = next(p for p in prov if p["source"].split()[-1] == source)
    rows = _load(f"{folder}/tables.csv")
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    setting = settings[entry["setting"] - 1]
    row = next(r for r in rows if r["setting"] == setting and r["variant"] == entry["variant"]
               and r["metric"] == metric and r["dataset"] == entry["dataset"])
    assert int(row["n"]) >= 1, (folder, source, metric)
    return float(row["mean"])


def cell(folder: str, variant: str, metric: str, field: str = "mean") -> float:
    """A published study's tables.csv: FIELD (mean, std, n, diff_mean, diff_low, diff_high, ...)
    of VARIANT's METRIC (e.g. 'GradAttn (no PE)', 'ece'); the study must hold one setting and
    one dataset, so the row is unambiguous."""
    rows = [r for r in _load(f"{folder}/tables.csv")
            if r["variant"] == variant and r["metric"] == metric]
    assert len(rows) == 1, (folder, variant, metric, len(rows))
    return float(rows[0][field])


def paired(folder: str, variant: str, baseline: str, metric: str, field: str = "mean") -> float:
    """A published study's provenance.json: FIELD (n, mean, low, high) of VARIANT − BASELINE
    in METRIC, paired by seed with a 95 % t-interval (gradattn.reporting.stats, as
    `gradattn table` pairs against ResNet-18), for two variants neither of which is
    ResNet-18."""
    from gradattn.reporting.stats import paired_difference

    rows = _load(f"{folder}/provenance.json")
    values = {name: {r["seed"]: r[metric] for r in rows if r["variant"] == name}
              for name in (variant, baseline)}
    assert values[variant] and values[baseline], (folder, variant, baseline)
    return getattr(paired_difference(values[variant], values[baseline]), field)


def paired_runs(arm: list[str], baseline: list[str], epoch: int, key: str,
                field: str = "mean") -> float:
    """FIELD (n, mean, low, high) of ARM − BASELINE in KEY (a path into an epoch's record) at
    EPOCH, paired by seed with a 95 % t-interval: dead-layer JSONs of one arm and of the
    baseline (as scripts/dead_layers_compare.py --paired-at pairs them)."""
    from gradattn.reporting.stats import paired_difference

    def by_seed(runs):
        return {_load(r)["args"]["seed"]: ep(r, epoch, key) for r in runs}
    return getattr(paired_difference(by_seed(arm), by_seed(baseline)), field)


def params(model: str, **options) -> int:
    """Parameters of a model of gradattn.models, built for 10 classes, 3 channels."""
    from gradattn.models import build_model, count_parameters
    return count_parameters(build_model(model, 10, 3, **options))


HELPERS = {f.__name__: f for f in (pct, first_zero, norm_at, dead_convs, epochs_in, zero_both,
                                    zero_param, best_val, at_epoch, ep, unit_grad,
                                    first_exact_zero, run, cell, paired, paired_runs, params, get)}
HELPERS.update(J=_load, abs=abs, min=min, max=max, round=round, len=len, sum=sum, next=next,
               any=any, all=all, int=int, float=float, exp=math.exp, log=math.log)


# ---------------------------------------------------------------------- numbers in the text

NUMBER = re.compile(
    r"(?<![\w.\-/#])(?P<sign>[−-](?=\d))?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:e[−-]?\d+)?)(?:st|nd|rd|th)?(?![\w]|\.\d)")
ANNOTATION = re.compile(r"<!--(?P<kind>[=~])(?P<expr>.*?)-->", re.S)
SOURCES = re.compile(r"<!--\s*sources:(?P<body>.*?)-->", re.S)
COMMENT = re.compile(r"<!--.*?-->", re.S)
REF = re.compile(r"\{(?P<file>[^{}:]+):(?P<key>[^{}]*)\}")
SUFFIX = re.compile(r"(?:\*\*|\s|%|×|pp)*$")


def _blank(text: str, pattern: re.Pattern | str, flags=0) -> str:
    """TEXT with every match of PATTERN replaced by spaces (newlines kept): positions hold."""
    return re.sub(pattern, lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=flags)


def _value(token: str, sign: str | None) -> tuple[float, float, float]:
    """(value, tolerance when exact, tolerance when approximate) of a number as written."""
    t = token.replace(",", "").replace("−", "-")
    mant, _, exp = t.partition("e")
    scale = 10.0 ** int(exp) if exp else 1.0
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    value = float(mant) * scale * (-1 if sign else 1)
    exact = 0.5 * 10.0 ** -decimals * scale
    digits = mant.replace(".", "").rstrip("0")
    trailing_zeros = len(mant.replace(".", "")) - len(digits)
    approx = 0.5 * 10.0 ** (trailing_zeros - decimals) * scale if digits else exact
    return value, exact, approx


def _aliases(text: str, doc: str) -> dict[str, str]:
    out = {}
    for m in SOURCES.finditer(text):
        for item in m.group("body").split(";"):
            if item.strip():
                name, _, path = item.partition("=")
                out[name.strip()] = path.strip()
    return out


def _resolve(file: str, aliases: dict[str, str]) -> str:
    head, _, rest = file.strip().partition("/")
    return f"{aliases[head]}/{rest}" if head in aliases else file.strip()


def evaluate(expr: str, aliases: dict[str, str]):
    """An annotation's expression: {FILE:KEY} read, aliases resolved, helpers available."""
    def ref(m):
        return f"get(J({_resolve(m.group('file'), aliases)!r}), {m.group('key')!r})"

    def alias_strings(m):  # 'H/ws-none/...' as a helper's argument: the alias resolved
        return repr(_resolve(m.group(1), aliases))

    code = REF.sub(ref, expr)
    code = re.sub(r"'([A-Za-z]\w*/[^']*)'", alias_strings, code)
    return eval(code, {"__builtins__": {}, **HELPERS})  # noqa: S307 (our own docs)


def _prose(text: str) -> str:
    """The text with what holds no claim blanked: code, link targets, dates, sources lines."""
    text = _blank(text, r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
    text = _blank(text, r"`[^`\n]*`")
    text = _blank(text, r"\]\([^)\s]*\)")
    text = _blank(text, r"\b\d{4}-\d{2}-\d{2}\b")
    text = _blank(text, SOURCES)
    return text


def annotated_numbers(doc: str):
    """(line, token, kind, expr) of every annotation; and the unannotated numbers."""
    raw = (ROOT / doc).read_text()
    text = _prose(raw)
    claims, free = [], []
    covered: set[int] = set()
    for m in ANNOTATION.finditer(text):
        before = text[:m.start()]
        tail = SUFFIX.search(before)
        stem = before[:tail.start()]
        num = None
        for n in NUMBER.finditer(stem[-40:]):
            num = n
        line = text.count("\n", 0, m.start()) + 1
        offset = len(stem) - len(stem[-40:])
        if num is None or offset + num.end() != len(stem):
            claims.append((line, None, m.group("kind"), m.group("expr")))
            continue
        covered.add(offset + num.start("num"))
        claims.append((line, (num.group("num"), num.group("sign")), m.group("kind"),
                       m.group("expr")))
    bare = _blank(text, COMMENT)
    for n in NUMBER.finditer(bare):
        if n.start("num") not in covered:
            free.append((bare.count("\n", 0, n.start()) + 1, n.group(0), n.start()))
    return raw, bare, claims, free


# What is not a run's number: literal phrases of each file (tests/findings_not_run.py), and
# these forms in any file: structure (section and list numbers, tables and rows cited), the
# study's design (n, seeds, epoch caps, image sizes, machines) and the protocol's settings.
NOT_RUN_PATTERNS = [
    r"^#+ \d+\.", r"^\s*\d+\. ", r"\b[Ss]ections? \d+", r"\bTables? \d", r"§\d+(\.\d+)*",
    r"\brows? \d+(–\d+)?", r"\bn = \d+", r"\bseeds? \d+", r"\bseed=[\d,]+", r"≥ \d+ seeds",
    r"\b\d+ px\b", r"\b\d+-core\b", r"\b\d+-epoch\b", r"\b\d+×\d+\b", r"\btop-\d\b",
    r"(up to |cap of |, |\()?\b\d+\s+epochs\b", r"\b(lr|learning rate|wd|decay|L2|ε \()\s*1e-\d\b",
    r"\b1e-6\b", r"\bexactly 0(\.0)?\b", r"\bthe 20 analysed batches", r"\b95 %", r"\b\d+ layers\b",
    r"\bone CPU core", r"\bthree (encodings|seeds)", r"\b70/10/20\b", r"\b70/15/15\b",
    # the paper's own numbers: a paragraph that starts "Paper", and headings (the claims)
    r"^Paper\b[^\n]*(\n(?!\n)[^\n]*)*", r"^#+ [^\n]*",
    # where in time a value was read: "at epoch 12", "(epoch 1) →", "(10)"; zero as a word
    r"\bepochs? \d+", r"\((\d+)(?=[),])", r"(?<![\d.])\b0\b(?![.,]\d)",
    # citations
    r"arXiv \d+\.\d+", r"CVPR \d{4}", r"1/‖w‖",
]
from findings_not_run import NOT_RUN  # noqa: E402  (the list is long: its own module)


@pytest.mark.parametrize("doc", ANNOTATED)
def test_every_annotated_number_matches_its_published_file(doc):
    raw, _, claims, _ = annotated_numbers(doc)
    aliases = _aliases(raw, doc)
    for _, path in aliases.items():
        assert (ROOT / path).exists(), f"{doc}: sources alias names {path}, not in the repository"
    bad = []
    for line, token, kind, expr in claims:
        if token is None:
            bad.append(f"{doc}:{line}: an annotation that follows no number: {expr.strip()}")
            continue
        try:
            got = evaluate(expr, aliases)
        except Exception as e:  # noqa: BLE001 (reported with its line)
            bad.append(f"{doc}:{line}: {token[0]}: {expr.strip()} fails: {e!r}")
            continue
        value, exact, approx = _value(*token)
        tol = approx if kind == "~" else exact
        if got is None or not math.isclose(value, got, abs_tol=tol * (1 + 1e-9) + 1e-300):
            bad.append(f"{doc}:{line}: the text says {token[1] or ''}{token[0]}, "
                       f"{expr.strip()} gives {got!r}")
    assert not bad, "numbers that do not match their published files:\n" + "\n".join(bad)


@pytest.mark.parametrize("doc", ANNOTATED)
def test_every_number_has_a_published_source_or_is_not_a_run_number(doc):
    raw, bare, _, free = annotated_numbers(doc)
    phrases = NOT_RUN.get(doc, [])
    spans = []
    for phrase in phrases:
        starts = [m.start() for m in re.finditer(re.escape(phrase), bare)]
        assert starts, f"{doc}: the NOT_RUN phrase {phrase!r} is no longer in the text"
        spans += [(s, s + len(phrase)) for s in starts]
    for pattern in NOT_RUN_PATTERNS:
        spans += [m.span() for m in re.finditer(pattern, bare, flags=re.M)]
    orphans = [f"{doc}:{line}: {token!r} in "
               f"{bare.splitlines()[line - 1].strip()[:140]!r}"
               for line, token, pos in free
               if not any(a <= pos < b for a, b in spans)]
    assert not orphans, ("numbers with no published source (annotate them: "
                         "tests/test_findings_numbers.py):\n" + "\n".join(orphans))


def test_no_readme_in_results_points_outside_the_repository():
    for readme in (ROOT / "results").rglob("README.md"):
        text = readme.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (readme.parent / target.split("#")[0]).resolve()
            assert resolved.is_relative_to(ROOT), f"{readme}: links outside: {target}"
            assert resolved.exists(), f"{readme}: links to a missing file: {target}"
        assert "shared/measurements" not in text, f"{readme}: cites a folder outside the repository"


def test_every_results_readme_says_how_many_images_each_split_held():
    for readme in sorted((ROOT / "results").glob("*/README.md")):
        text = COMMENT.sub("", readme.read_text())
        assert re.search(r"[\d,]+ train\b.*?[\d,]+ val\w*\b.*?[\d,]+ test\b", text, re.S), \
            f"{readme.relative_to(ROOT)}: no 'N train / N val / N test' line"


# ------------------------------------------------------- READMEs of gradattn table --publish

TABLE_COLUMNS = {  # table -> (column header -> (metric, scale, decimals))
    2: {"Top-3 (%)": ("top3", 100, 2), "Top-5 (%)": ("top5", 100, 2),
        "F1 (macro)": ("f1_macro", 1, 3), "ECE": ("ece", 1, 3)},
    3: {"Precision (M)": ("precision_macro", 1, 3), "Precision (W)": ("precision_weighted", 1, 3),
        "Recall (M)": ("recall_macro", 1, 3), "Recall (W)": ("recall_weighted", 1, 3),
        "F1 (M)": ("f1_macro", 1, 3), "F1 (W)": ("f1_weighted", 1, 3)},
    4: {"Val acc. (%)": ("val_top1", 100, 2), "Gap (pp)": ("train_val_gap", 100, 2),
        "Best epoch": ("best_epoch", 1, 0), "Epochs run": ("epochs", 1, 0)},
    5: {"GHS": ("ghs", 1, 3), "Avg norm": ("norm_mean", 1, None), "Std": ("norm_std", 1, None)},
}


def _tables(readme: str):
    """(setting index, table number, header, rows) of every table of a published README."""
    setting, number, out = 1, None, []
    lines = readme.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^#+ Setting (\d+)", line):
            setting = int(m.group(1))
        elif m := re.match(r"^#### Table (\d)", line):
            number = int(m.group(1))
        elif line.startswith("| ") and number is not None:
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            out.append((setting, number, header, rows))
            number = None
            continue
        i += 1
    return out


def _close(cell: str, value: float, decimals: int | None) -> bool:
    if decimals is None:  # 1.73e-02: two significant digits after the point
        return cell == f"{value:.2e}"
    return cell == f"{value:.{decimals}f}" or cell == f"{value:+.{decimals}f}"


POOLED = re.compile(r"(?P<mean>[^±;]+?)(?: ± (?P<std>\S+) \(n=(?P<n>\d+)\))?"
                    r"(?:; Δ (?P<d>\S+) pp \[(?P<lo>\S+), (?P<hi>\S+)\])?")


def _pooled_ok(cell: str, row: dict, scale: float, decimals: int | None) -> bool:
    """A cell 'mean', or 'mean ± std (n=k)' with Table 1's '; Δ d pp [lo, hi]', against its
    tables.csv row (mean, std, n, and the paired difference in pp)."""
    m = POOLED.fullmatch(cell.replace("**", ""))
    if m is None or not _close(m["mean"], scale * float(row["mean"]), decimals):
        return False
    if m["std"] is None:
        ok = row["n"] == "1"
    else:
        ok = m["n"] == row["n"] and _close(m["std"], scale * float(row["std"]), decimals)
    if m["d"] is not None:
        ok = ok and all(_close(m[k], 100 * float(row[f"diff_{f}"]), 2)
                        for k, f in (("d", "mean"), ("lo", "low"), ("hi", "high")))
    return ok


# Table 6: column -> (metric, scale, decimals) of "mean [low, high]" of the paired difference.
PAIRED_COLUMNS = {"Δ top-1 (pp)": ("top1", 100, 2), "Δ F1 (macro)": ("f1_macro", 1, 3),
                  "Δ ECE": ("ece", 1, 3), "Δ gap (pp)": ("train_val_gap", 100, 2),
                  "Δ best epoch": ("best_epoch", 1, 1), "Δ GHS": ("ghs", 1, 3)}


def _paired_ok(cell: str, row: dict, scale: float, decimals: int) -> bool:
    m = re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell)
    if m is None:
        return cell == "–" and int(row["diff_n"]) < 3
    return all(_close(text, scale * float(row[f"diff_{f}"]), decimals)
               for text, f in zip(m.groups(), ("mean", "low", "high"), strict=True))


@pytest.mark.parametrize("folder", PUBLISHED)
def test_published_tables_match_tables_csv(folder):
    readme = (ROOT / folder / "README.md").read_text()
    rows = _load(f"{folder}/tables.csv")
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    value = {(r["setting"], r["dataset"], r["variant"], r["metric"]): r for r in rows}
    bad, checked = [], 0
    for setting, number, header, table in _tables(readme):
        s = settings[setting - 1]
        for cells in table:
            dataset = cells[0]
            if number == 1:
                for variant, cell in zip(header[1:], cells[1:], strict=True):
                    r = value[(s, dataset, variant, "top1")]
                    ok = cell == "–" if r["n"] == "0" else _pooled_ok(cell, r, 100, 2)
                    bad += [] if ok else [f"{folder} setting {setting} T1 {variant}: {cell}"]
                    checked += 1
                continue
            variant = cells[1]
            n = value[(s, dataset, variant, "top1")]["n"]
            for col, cell in zip(header[2:], cells[2:], strict=True):
                if number == 6:
                    if col == "Seeds":
                        ok = cell == str(max(int(value[(s, dataset, variant, m)]["diff_n"])
                                             for m, _, _ in PAIRED_COLUMNS.values()))
                    else:
                        metric, scale, decimals = PAIRED_COLUMNS[col]
                        ok = _paired_ok(cell, value[(s, dataset, variant, metric)], scale,
                                        decimals)
                elif n == "0":
                    ok = cell == "–"
                elif number == 4 and col == "Train acc. (%)":
                    # per seed val + gap: the mean is the sum of the means (its std is not)
                    v = value[(s, dataset, variant, "val_top1")]["mean"]
                    g = value[(s, dataset, variant, "train_val_gap")]["mean"]
                    ok = _close(POOLED.fullmatch(cell)["mean"], 100 * (float(v) + float(g)), 2)
                elif number == 5 and col == "Range (min – max)":
                    lo = float(value[(s, dataset, variant, "norm_min")]["mean"])
                    hi = float(value[(s, dataset, variant, "norm_max")]["mean"])
                    if n == "1":
                        ok = cell == f"{lo:.2e} – {hi:.2e}"
                    else:  # the range over seeds: it holds the means of the runs' ends
                        a, b = (float(x) for x in cell.split(" – "))
                        ok = a <= lo * (1 + 1e-2) and b >= hi * (1 - 1e-2)
                elif number == 5 and col == "Vanishing / exploding":
                    van = float(value[(s, dataset, variant, "vanishing")]["mean"])
                    exp = float(value[(s, dataset, variant, "exploding")]["mean"])
                    ok = (cell == "none") == (van == exp == 0)
                elif number == 5 and col == "Layers":
                    ghs = float(value[(s, dataset, variant, "ghs")]["mean"])
                    van = float(value[(s, dataset, variant, "vanishing")]["mean"])
                    exp = float(value[(s, dataset, variant, "exploding")]["mean"])
                    # the layer count is published only through GHS = healthy / layers (the
                    # notebooks' silent hooks are neither vanishing nor exploding)
                    layers = int(float(POOLED.fullmatch(cell)["mean"]))
                    ok = (n != "1" or abs(ghs * layers - round(ghs * layers)) < 1e-6) and \
                        layers - ghs * layers >= van + exp - 1e-6
                else:
                    metric, scale, decimals = TABLE_COLUMNS[number][col]
                    ok = _pooled_ok(cell, value[(s, dataset, variant, metric)], scale, decimals)
                bad += [] if ok else [f"{folder} setting {setting} T{number} {variant} {col}: "
                                      f"{cell}"]
                checked += 1
    assert checked > 20, f"{folder}: found only {checked} table cells"
    assert not bad, "table cells that do not match tables.csv:\n" + "\n".join(bad)


@pytest.mark.parametrize("folder", PUBLISHED)
def test_published_provenance_rows_and_header_match_provenance_json(folder):
    readme = (ROOT / folder / "README.md").read_text()
    prov = _load(f"{folder}/provenance.json")
    seeds = sorted({p["seed"] for p in prov})
    assert f"{len(prov)} runs, " in readme
    assert f"seeds {', '.join(map(str, seeds))}" in readme
    rows = [r for r in readme.split("## Runs and their provenance")[1].splitlines()
            if re.match(r"^\| \d", r)]
    assert len(rows) == len(prov)
    for row, p in zip(rows, prov, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == str(p["setting"]) and cells[3] == str(p["seed"]), row
        assert cells[4] == f"{100 * p['top1']:.2f}", row
        assert cells[6] == p["rev"][:10], row
        assert p["data_md5"].startswith(cells[-4]) and p["model_md5"].startswith(cells[-3]), row
        assert p["metrics_md5"].startswith(cells[-2]), row


def test_table_4_says_which_epoch_its_rows_hold():
    """Under the notebooks' recipe the weights (and so the gap) are the last epoch's."""
    for folder in PUBLISHED:
        readme = (ROOT / folder / "README.md").read_text()
        prov = _load(f"{folder}/provenance.json")
        for setting, part in enumerate(re.split(r"^#+ Setting \d+.*$", readme, flags=re.M)[1:],
                                       start=1):
            weights = {p["train_resolved"]["weights"] for p in prov if p["setting"] == setting}
            note = part.split("#### Table 4")[1].split("|")[0]
            if weights == {"last"}:
                assert "at the last epoch" in note, (folder, setting)
            elif weights == {"best"}:
                assert "at the epoch with the best validation accuracy" in note, (folder, setting)


def test_parameter_counts_quoted_are_the_models():
    """The H200 runs' recorded parameter counts are what gradattn.models builds (10 classes)."""
    h = "results/h200-2026-12-04"
    assert get(_load(f"{h}/ws-learnable/metrics/cifar10-jpeg/resnet18.json"), "params") == \
        params("resnet18")
    for pe in ("none", "learnable", "rope"):
        assert get(_load(f"{h}/ws-{pe}/metrics/cifar10-jpeg/gradattn.json"), "params") == \
            params("gradattn", pe=pe)


def test_fashion_mnist_split_sizes_stated_are_the_split_rules():
    from gradattn.sources.splits import POOLED, VAL_FROM_TRAIN, _sizes
    train, val, test = _sizes(70_000, POOLED)
    official_val = round(60_000 * VAL_FROM_TRAIN)
    stated = (f"{60_000 - official_val:,} train /\n#   {official_val:,} val (a stratified 10 % of "
              f"the official 60,000 train) / 10,000 test; notebooks' recipe\n#   (the 70/15/15 "
              f"pooled split): {train:,} train / {val:,} val / {test:,} test")
    for folder in ("results/fashionmnist-recipes", "results/fashionmnist-gradattn-recipes"):
        assert stated in (ROOT / folder / "README.md").read_text(), folder


def test_the_paired_helper_gives_the_published_paired_columns():
    """`paired` (findings pairs two variants, neither ResNet-18) is the published tables' own
    pairing: against ResNet-18 it gives the seed study's every diff_mean, diff_low and
    diff_high."""
    folder = "results/bloodcells-seeds"
    metrics = set(_load(f"{folder}/provenance.json")[0])
    rows = [r for r in _load(f"{folder}/tables.csv")
            if r["variant"] != "ResNet-18" and r["metric"] in metrics]
    assert {r["variant"] for r in rows} >= {"GradAttn (no PE)", "Taps mean"}
    for row in rows:
        for field, column in (("mean", "diff_mean"), ("low", "diff_low"), ("high", "diff_high")):
            want = float(row[column])
            got = paired(folder, row["variant"], "ResNet-18", row["metric"], field)
            both_nan = math.isnan(got) and math.isnan(want)
            assert both_nan or got == pytest.approx(want, abs=1e-12), (row, field)
