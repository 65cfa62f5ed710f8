"""The pull-request report, made of like with like: the base and the PR both reproduced on the
same machine, with the same pinned torch (constraints.txt). .github/workflows/pr-compare.yml
runs these steps in order, and so does tests/test_pr_report.py on a docs-only PR.

Usage (from the root of the PR's checkout):
  python scripts/pr_report.py base BASE_REV   # reproduce the base in a worktree beside this
                                              # checkout, sharing its DVC cache; commit the
                                              # results there on the local branch pr-report-base
  python scripts/pr_report.py repro           # reproduce this checkout, the PR (the run cache
                                              # restores every stage whose code, data and params
                                              # the base already ran)
  python scripts/pr_report.py report OUT      # OUT/report.md (the comment), OUT/pages/*.html
                                              # (every figure embedded), OUT/pr-number

Why: the committed metrics came from another machine; another CPU or torch version turns
the same seed into other numbers, so comparing a runner's fresh run with them reports change
that only the machine made. A push to main saves its DVC cache keyed by its commit
(.github/workflows/pr-base-cache.yml); a PR restores it, and `base` then trains nothing.

The report opens with one verdict per dataset × model: "no change" (every headline metric of
metrics/summary.json equal), "within seed noise" (each change at most NOISE_SIGMAS × the std
over seeds that results/bloodcells-seeds measured for that metric and model, read from its
tables.csv), or "changed"; then `gradattn compare`'s report against the reproduced base.
The base's worktree: $PR_BASE_DIR, else $RUNNER_TEMP/pr-base, else <tmp>/gradattn-pr-base.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gradattn.core.errors import GradattnError
from gradattn.core.stage import entry

BASE_BRANCH = "pr-report-base"  # the base as reproduced here (a local branch, never pushed)
MARKER = "<!-- gradattn-pr-report -->"  # the comment that scripts/pr_comment.sh updates
SUMMARY = "metrics/summary.json"
NOISE = "results/bloodcells-seeds/tables.csv"
NOISE_SIGMAS = 2.0
# Headline metrics: name in summary.json → (label, scale for display, digits).
METRICS = {"top1": ("Top-1 %", 100.0, 2), "ece": ("ECE", 1.0, 4),
           "f1_macro": ("F1 (macro)", 1.0, 4)}
IDENTITY = ["-c", "user.name=gradattn-pr-report", "-c", "user.email=pr-report@localhost"]


def sh(*args: str, cwd: Path, env: dict | None = None, capture: bool = False) -> str:
    """Run a command (its output to the log unless captured); GradattnError on failure."""
    done = subprocess.run(list(args), cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)
    if done.returncode:
        detail = (done.stderr or "").strip().splitlines()[-1:] if capture else []
        raise GradattnError(f"`{' '.join(args)}` failed in {cwd} (exit {done.returncode})"
                            + (f": {detail[0]}" if detail else ""))
    return done.stdout or ""


def dvc(*args: str, cwd: Path, capture: bool = False) -> str:
    """This interpreter's dvc; the stages import the gradattn of `cwd`, not an installed one."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "DVC_NO_ANALYTICS": "1"}
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd, env=env, capture=capture)


def base_dir() -> Path:
    if os.environ.get("PR_BASE_DIR"):
        return Path(os.environ["PR_BASE_DIR"])
    if os.environ.get("RUNNER_TEMP"):
        return Path(os.environ["RUNNER_TEMP"]) / "pr-base"
    return Path(tempfile.gettempdir()) / "gradattn-pr-base"


def reproduce_base(root: Path, rev: str) -> None:
    sha = sh("git", "rev-parse", "--verify", f"{rev}^{{commit}}", cwd=root, capture=True).strip()
    where = base_dir()
    if where.exists():
        sh("git", "worktree", "remove", "--force", str(where), cwd=root)
    sh("git", "worktree", "prune", cwd=root)
    sh("git", "worktree", "add", "--force", "-B", BASE_BRANCH, str(where), sha, cwd=root)
    # One cache for both sides: what the base trained, the PR's `dvc repro` restores from the
    # run cache when its code, data and params are the base's.
    cache = dvc("cache", "dir", cwd=root, capture=True).strip()
    dvc("cache", "dir", "--local", cache, cwd=where)
    print(f"pr_report: reproducing the base {sha[:10]} in {where}", flush=True)
    dvc("repro", cwd=where)
    sh("git", "add", "-A", cwd=where)
    sh("git", *IDENTITY, "commit", "-q", "--allow-empty", "--no-verify", "-m",
       f"The base {sha[:10]} as reproduced on this machine", cwd=where)


def reproduce_here(root: Path) -> None:
    print(f"pr_report: reproducing {root}", flush=True)
    dvc("repro", cwd=root)


# ---------------------------------------------------------------- the verdict


def read_noise(path: Path) -> dict:
    """{"dataset": ..., "seeds": ..., "std": {(model, metric): std}} from a published study's
    tables.csv (the largest std when a model has several variants); {} when absent."""
    if not path.is_file():
        return {}
    std, datasets, seeds = {}, set(), set()
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("metric") not in METRICS or not row.get("std") or int(row["n"]) < 2:
                continue
            key = (row["model"], row["metric"])
            std[key] = max(std.get(key, 0.0), float(row["std"]))
            datasets.add(row["dataset"])
            seeds.add(row["seeds"])
    return {"datasets": sorted(datasets), "seeds": sorted(seeds), "std": std} if std else {}


def read_summary(text: str | None) -> dict:
    return json.loads(text) if text else {}


def verdict(old: dict | None, new: dict | None, model: str, noise: dict) -> str:
    if old is None or new is None:
        return "added" if old is None else "removed"
    keys = sorted(set(old) | set(new))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    if not changed:
        return "no change"
    stds = noise.get("std", {})
    within = all(
        k in METRICS and (model, k) in stds and isinstance(old.get(k), int | float)
        and isinstance(new.get(k), int | float)
        and abs(new[k] - old[k]) <= NOISE_SIGMAS * stds[(model, k)]
        for k in changed)
    return "within seed noise" if within else "changed"


def _fmt(value, scale: float, digits: int) -> str:
    return f"{value * scale:.{digits}f}" if isinstance(value, int | float) else "–"


def _delta(old, new, scale: float, digits: int) -> str:
    if not all(isinstance(v, int | float) for v in (old, new)):
        return "–"
    return f"{(new - old) * scale:+.{digits}f}"


def verdict_table(base: dict, head: dict, noise: dict) -> list[str]:
    lines = ["| Dataset | Model | Verdict | Top-1 % base → PR | Δ pp | ECE base → PR | Δ |",
             "| :--- | :--- | :--- | ---: | ---: | ---: | ---: |"]
    for run in dict.fromkeys([*base, *head]):
        dataset, _, model = run.rpartition("/")
        old, new = base.get(run), head.get(run)
        cells = []
        for metric in ("top1", "ece"):
            _, scale, digits = METRICS[metric]
            a, b = (old or {}).get(metric), (new or {}).get(metric)
            cells += [f"{_fmt(a, scale, digits)} → {_fmt(b, scale, digits)}",
                      _delta(a, b, scale, digits)]
        lines.append(f"| {dataset} | {model} | **{verdict(old, new, model, noise)}** | "
                     + " | ".join(cells) + " |")
    return lines


def noise_note(noise: dict, datasets: set[str]) -> str:
    if not noise:
        return (f"No seed noise measured ({NOISE} is missing): any difference counts as a "
                "change.")
    stds = noise["std"]
    parts = ", ".join(f"{model} {label} {stds[(model, m)] * scale:.{digits}f}"
                      for model, m in sorted(stds) if m in ("top1", "ece")
                      for label, scale, digits in [METRICS[m]])
    measured = ", ".join(f"`{d}`" for d in noise["datasets"])
    text = (f"\"Within seed noise\": every metric that changed moved by at most "
            f"{NOISE_SIGMAS:g} × its std over seeds ({', '.join(noise['seeds'])}), as measured "
            f"in `{NOISE}` on {measured}: {parts}.")
    other = sorted(datasets - set(noise["datasets"]))
    if other:
        text += (f" That noise was measured on another dataset ({measured}, its own epochs), "
                 f"not on {', '.join(f'`{d}`' for d in other)}: take the label as a rough guide.")
    return text


def build_report(root: Path, out: Path) -> str:
    base = read_summary(sh("git", "show", f"{BASE_BRANCH}:{SUMMARY}", cwd=root, capture=True))
    path = root / SUMMARY
    head = read_summary(path.read_text() if path.is_file() else None)
    noise = read_noise(root / NOISE)
    base_sha = sh("git", "rev-parse", "--short", f"{BASE_BRANCH}~1", cwd=root,
                  capture=True).strip()
    head_sha = sh("git", "rev-parse", "--short", "HEAD", cwd=root, capture=True).strip()
    (out / "pages").mkdir(parents=True, exist_ok=True)
    # Without --out, no image files: a comment could not show them (no upload to any host);
    # the HTML pages embed every figure.
    details = sh("gradattn", "compare", "--rev", BASE_BRANCH, "--html",
                 str(out / "pages" / "report.html"), cwd=root, capture=True)
    sh("gradattn", "plots", BASE_BRANCH, "-o", str(out / "pages" / "plots.html"), cwd=root,
       capture=True)
    datasets = {run.rpartition("/")[0] for run in [*base, *head]}
    run_url = ""
    if os.environ.get("GITHUB_RUN_ID"):
        run_url = (f"{os.environ.get('GITHUB_SERVER_URL', 'https://github.com')}/"
                   f"{os.environ.get('GITHUB_REPOSITORY', '')}/actions/runs/"
                   f"{os.environ['GITHUB_RUN_ID']}")
    lines = [
        MARKER,
        f"# Pull request {head_sha} against its base {base_sha}, both reproduced here", "",
        "Both sides ran `dvc repro` on the same runner with the same pinned torch "
        "(constraints.txt), so what differs below is what the pull request changed (or "
        "seed noise), not the machine. The committed metrics of the base are not used.", "",
        *verdict_table(base, head, noise), "",
        noise_note(noise, datasets), "",
        "Every plot of both sides, side by side, and this report with its figures: the "
        "offline HTML pages of the artifact `pr-report`"
        + (f" of [this run]({run_url})." if run_url else "."), "",
        "<details><summary>Params, metrics and plots that changed (<code>gradattn compare"
        "</code> against the reproduced base)</summary>", "",
        details.replace(f"`{BASE_BRANCH}`", "base"), "</details>", "",
    ]
    return "\n".join(lines)


def report(root: Path, out: Path) -> None:
    text = build_report(root, out)
    (out / "report.md").write_text(text)
    number = os.environ.get("PR_NUMBER", "")
    if number:
        if not number.isdigit():
            raise GradattnError(f"PR_NUMBER={number!r}: not a pull-request number")
        (out / "pr-number").write_text(number + "\n")
    if os.environ.get("GITHUB_STEP_SUMMARY"):  # the report is readable whatever token posts it
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as f:
            f.write(text)
    print(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="step", required=True)
    b = sub.add_parser("base", help="reproduce BASE_REV in a worktree and commit its results")
    b.add_argument("rev", metavar="BASE_REV")
    sub.add_parser("repro", help="reproduce this checkout (the pull request, or main)")
    r = sub.add_parser("report", help="write OUT/report.md and OUT/pages/")
    r.add_argument("out", type=Path, metavar="OUT")
    args = p.parse_args()
    root = Path.cwd()
    if not (root / "dvc.yaml").is_file():
        raise GradattnError(f"{root}: no dvc.yaml (run from the project's root)")
    if shutil.which("gradattn") is None and args.step == "report":
        raise GradattnError("the `gradattn` command is not installed (pip install -e .)")
    if args.step == "base":
        reproduce_base(root, args.rev)
    elif args.step == "repro":
        reproduce_here(root)
    else:
        report(root, args.out)
    return 0


if __name__ == "__main__":
    entry(main)
