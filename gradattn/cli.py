"""The `gradattn` command: `gradattn table` (the paper's tables over runs and seeds) and
`gradattn compare` (what changed against a git revision, as markdown)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradattn.errors import GradattnError
from gradattn.io import write_with


def _table(args: argparse.Namespace) -> str:
    from gradattn import table
    from gradattn.experiments import collect_runs

    runs = collect_runs(args.repo, revs=args.rev, experiments=not args.no_exps,
                              all_commits=args.all_commits, workspace=not args.no_workspace)
    study = table.Study(runs)
    tables = args.table or list(table.TABLES)
    return table.csv(study, tables) if args.format == "csv" else table.markdown(study, tables)


def _compare(args: argparse.Namespace) -> str:
    from gradattn.compare import compare_markdown

    return compare_markdown(args.rev, args.repo, images=args.images)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradattn", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "table", help="the paper's Tables 1-5 over the workspace, experiments and revisions",
        description="Gather runs from the workspace, `dvc exp show` (commits and finished "
        "experiments) and --rev revisions; pool runs that differ only in train.seed "
        "(mean ± std, n) and print Tables 1-5.")
    t.add_argument("--rev", action="append", default=[], metavar="REV",
                   help="also read this git revision or DVC experiment name (repeatable)")
    t.add_argument("-A", "--all-commits", action="store_true",
                   help="experiments of all commits, not only HEAD's")
    t.add_argument("--no-exps", action="store_true", help="skip `dvc exp show`")
    t.add_argument("--no-workspace", action="store_true", help="skip the working tree")
    t.add_argument("--table", type=int, action="append", choices=range(1, 6), metavar="N",
                   help="print only table N (1-5; repeatable); default all")
    t.add_argument("--format", choices=("markdown", "csv"), default="markdown",
                   help="markdown (percentages, default) or csv (tidy, raw fractions)")
    t.set_defaults(run=_table)

    c = sub.add_parser(
        "compare", help="markdown report of params, metrics and plots changed against a rev",
        description="`dvc params diff`, `dvc metrics diff` (with deltas) and the changed plots "
        "of the workspace against REV, as one markdown report (CI posts it on the PR).")
    c.add_argument("--rev", required=True, metavar="REV", help="the git revision to compare with")
    c.add_argument("--images", type=Path, metavar="DIR",
                   help="draw each changed data plot (REV vs workspace) as a PNG in DIR and "
                   "embed it in the report")
    c.set_defaults(run=_compare)

    for s in (t, c):
        s.add_argument("--repo", type=Path, default=Path("."), help="project root (default .)")
        s.add_argument("-o", "--out", type=Path, help="write to this file instead of stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        text = args.run(args)
    except GradattnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.out:
        write_with(args.out, lambda tmp: tmp.write_text(text))
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
