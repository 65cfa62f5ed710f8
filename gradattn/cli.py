"""The `gradattn` command: `gradattn table` (the paper's tables over runs and seeds),
`gradattn compare` (what changed against a git revision, as markdown or an offline page),
`gradattn plots` (the plots of revisions side by side, as an offline page) and `gradattn grid`
(the study's cells, each one DVC experiment)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradattn import __version__
from gradattn.core.errors import GradattnError
from gradattn.core.io import write_with
from gradattn.core.stage import guarded


def _table(args: argparse.Namespace) -> str:
    from gradattn.reporting import table
    from gradattn.reporting.experiments import collect_runs

    if args.publish:  # a target that must not be replaced is refused before any work
        from gradattn.reporting.publish import check_target

        check_target(args.publish, args.repo, force=args.force)
    runs = collect_runs(args.repo, revs=args.rev, experiments=not args.no_exps,
                              all_commits=args.all_commits, workspace=not args.no_workspace,
                              strict=args.strict)
    if args.publish:
        from gradattn.reporting.publish import publish

        commands = None
        if args.commands:
            try:
                commands = args.commands.read_text()
            except OSError as err:
                raise GradattnError(f"--commands {args.commands}: {err.strerror}: name a "
                                    "readable text file of the commands that made the runs"
                                    ) from None
        written = publish(runs, args.publish, repo=args.repo, command=" ".join(
            ["gradattn", *sys.argv[1:]]), commands=commands, force=args.force,
            workspace=not args.no_workspace)
        print(f"published {len(table.Study(runs).runs)} runs: {written}", file=sys.stderr)
        return ""
    study = table.Study(runs)
    if not study.runs:  # one line saying how to get some, and a failing exit code
        raise GradattnError(
            "no runs found (no metrics/<dataset>/<model>.json in the workspace, the experiments "
            "or the revisions asked for): `dvc pull` fetches a pushed study's results "
            "(docs/reproduce.md, \"Share the results\"), `dvc exp pull origin` its experiments, "
            "`dvc repro` runs it")
    tables = args.table or list(table.TABLES)
    return table.csv(study, tables) if args.format == "csv" else table.markdown(study, tables)


def compare_images(out: Path) -> Path:
    """Where `--out report.md` keeps its figures without --images: report_images/ beside it."""
    return out.parent / f"{out.stem}_images"


def _compare(args: argparse.Namespace) -> str:
    from gradattn.reporting.compare import compare_markdown

    # A report written to a file keeps its figures beside it (--images DIR, or
    # <report>_images/), linked relative to it: they outlive the command and move with it.
    images, links = args.images, None
    if args.out is not None:
        images, links = images or compare_images(args.out), args.out.parent
    if not args.html:
        return compare_markdown(args.rev, args.repo, images=images, links=links)
    import tempfile

    from gradattn.reporting.pages import markdown_page

    with tempfile.TemporaryDirectory() as tmp:  # the page embeds the figures it shows
        text = compare_markdown(args.rev, args.repo, images=images or Path(tmp), links=links)
        _write(args.html, markdown_page(text, links or Path(".")))
    return text


def _plots(args: argparse.Namespace) -> str:
    import tempfile

    from gradattn.reporting.pages import plot_rows, plots_page

    with tempfile.TemporaryDirectory() as tmp:
        rows, skipped = plot_rows(args.repo, args.revs, Path(tmp))
        return plots_page(rows, args.revs, skipped)


def _write(path: Path, text: str) -> None:
    write_with(path, lambda tmp: tmp.write_text(text))
    print(f"wrote {path}", file=sys.stderr)


def _grid(args: argparse.Namespace) -> str:
    from gradattn.studies import grid

    cells = grid.load_cells()
    if args.count:
        return f"{len(cells)}\n"
    if args.index is None and not args.queue:
        return grid.listing(cells)
    chosen = cells if args.index is None else [grid.pick(cells, args.index)]
    for cell in chosen:
        status = grid.run_cell(cell, args.targets, queue=args.queue, push=args.push,
                               pull=args.pull, force=args.force)
        if status:
            raise SystemExit(status)  # DVC has said what failed
    return ""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gradattn", description=__doc__)
    p.add_argument("--version", action="version", version=f"gradattn {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser(
        "table", help="the paper's Tables 1-6 over the workspace, experiments and revisions",
        description="Gather runs from the workspace, `dvc exp show` (commits and finished "
        "experiments) and --rev revisions; pool runs that differ only in train.seed "
        "(mean ± std, n) and print Tables 1-6.")
    t.add_argument("--rev", action="append", default=[], metavar="REV",
                   help="also read this git revision or DVC experiment name (repeatable)")
    t.add_argument("-A", "--all-commits", action="store_true",
                   help="experiments of all commits, not only HEAD's")
    t.add_argument("--no-exps", action="store_true", help="skip `dvc exp show`")
    t.add_argument("--no-workspace", action="store_true", help="skip the working tree")
    t.add_argument("--table", type=int, action="append", choices=range(1, 7), metavar="N",
                   help="print only table N (1-6; repeatable); default all")
    t.add_argument("--format", choices=("markdown", "csv"), default="markdown",
                   help="markdown (percentages, default) or csv (tidy, raw fractions)")
    t.add_argument("--publish", type=Path, metavar="DIR",
                   help="write the study into DIR (e.g. results/<name>): README.md with "
                   "Tables 1-6, the commit, commands and every run's provenance, tables.csv, "
                   "provenance.json and the key figures")
    t.add_argument("--commands", type=Path, metavar="FILE",
                   help="with --publish: a file of the commands that made the runs, quoted "
                   "in README.md")
    t.add_argument("--force", action="store_true",
                   help="with --publish: replace DIR if it exists")
    t.add_argument("--strict", action="store_true",
                   help="refuse when a revision's results are not available here (not in git "
                   "or the local DVC cache) instead of leaving it out with a note")
    t.set_defaults(run=_table)

    c = sub.add_parser(
        "compare", help="markdown report of params, metrics and plots changed against a rev",
        description="`dvc params diff`, `dvc metrics diff` (with deltas) and the changed plots "
        "of the workspace against REV, as one markdown report (CI posts it on the PR).")
    c.add_argument("--rev", required=True, metavar="REV", help="the git revision to compare with")
    c.add_argument("--images", type=Path, metavar="DIR",
                   help="draw each changed data plot (REV vs workspace) as a PNG in DIR and "
                   "embed it in the report (with --out, default: <report>_images/ beside it, "
                   "linked relative to the report)")
    c.add_argument("--html", type=Path, metavar="FILE",
                   help="also write the report as one offline HTML page (images embedded)")
    c.set_defaults(run=_compare)

    pl = sub.add_parser(
        "plots", help="every plot of some revisions side by side, as one offline HTML page",
        description="`dvc plots diff REV...` as one self-contained HTML page that needs no "
        "network: data plots drawn with one line per revision, images in equal columns.")
    pl.add_argument("revs", nargs="+", metavar="REV",
                    help="git revisions or DVC experiments (`workspace` is not a rev: "
                    "`dvc plots diff` adds it when one REV is given)")
    pl.set_defaults(run=_plots)

    for s in (t, c, pl):
        s.add_argument("--repo", type=Path, default=Path("."), help="project root (default .)")
        s.add_argument("-o", "--out", type=Path, help="write to this file instead of stdout")

    g = sub.add_parser(
        "grid", help="the study's cells (datasets x models/encodings x seeds), one DVC "
        "experiment each",
        description="List the cells params.yaml's data.datasets, models, recipe and grid "
        "section (seeds, pe) make, or run one as `dvc exp run -n <name> -S ...`: the body of "
        "a SLURM array task, a Kubernetes Indexed Job or a SkyPilot job (docs/scale.md). Run "
        "from the project root.")
    what = g.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true",
                      help="print index, name and -S overrides of every cell (the default; "
                      "`cut -f2-` of it is a jobs file for scripts/cpu_lanes.sh)")
    what.add_argument("--count", action="store_true", help="print the number of cells")
    what.add_argument("--index", type=int, metavar="I", help="run cell I (0-based)")
    g.add_argument("--queue", action="store_true",
                   help="queue the cell (every cell without --index) for `dvc queue start`")
    g.add_argument("--push", action="store_true",
                   help="push the finished experiment (`dvc exp push`) to the git remote and "
                   "the DVC remote; checked before training starts")
    g.add_argument("--pull", action="store_true",
                   help="pass --pull to `dvc exp run`: fetch cached stage outputs (prepared "
                   "data) from the DVC remote instead of recomputing them")
    g.add_argument("--force", action="store_true",
                   help="run a cell even if an experiment of that name exists here (replaces it)")
    g.add_argument("targets", nargs="*", metavar="STAGE",
                   help="stages for `dvc exp run` to reproduce (default: the whole pipeline)")
    g.add_argument("-o", "--out", type=Path, help=argparse.SUPPRESS)
    g.set_defaults(run=_grid)

    from gradattn.studies.study import add_parser as add_study  # `gradattn study run`

    add_study(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """The command's exit code: every failure (and Ctrl-C) is one line, as in the stages."""
    args = parser().parse_args(argv)

    def command() -> None:
        text = args.run(args)
        if args.out:
            _write(args.out, text)
        else:
            sys.stdout.write(text)

    return guarded(command)


if __name__ == "__main__":
    sys.exit(main())
