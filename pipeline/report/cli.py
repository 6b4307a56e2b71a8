"""Command line of the review outputs.

As a module (what the Snakemake rules in ``report.smk`` call)::

    python -m pipeline.report.cli study --results R --patient-dir P --study-dir S [--no-sr]
    python -m pipeline.report.cli dashboard --results R
    python -m pipeline.report.cli all --results R [--no-sr] [--no-rebuild-keyimages]

and, through :func:`register`, as ``hitit report`` (everything), ``hitit report-study`` and
``hitit dashboard``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _cfg(args):
    from pipeline import config as cfgmod

    return cfgmod.load_config(args.settings) if getattr(args, "settings", None) else None


def cmd_study(args) -> int:
    """One study: worksheet, SR, key images when missing."""
    from pipeline.report.run import report_study

    st = report_study(Path(args.results), args.patient_dir, args.study_dir, sr=not args.no_sr,
                      rebuild_keyimages=not args.no_rebuild_keyimages, cfg=_cfg(args))
    print(json.dumps(st, indent=2), file=sys.stderr)
    return 0


def cmd_dashboard(args) -> int:
    """The cohort dashboard."""
    from pipeline.report.dashboard import write_dashboard

    print(f"dashboard: {write_dashboard(Path(args.results))}", file=sys.stderr)
    return 0


def cmd_all(args) -> int:
    """Every study, then the dashboard."""
    from pipeline.report.run import build_reports

    out = build_reports(Path(args.results), sr=not args.no_sr,
                        rebuild_keyimages=not args.no_rebuild_keyimages, cfg=_cfg(args))
    n_sr = sum(1 for s in out["studies"] if s.get("sr"))
    print(f"{len(out['studies'])} worksheets, {n_sr} DICOM SR; dashboard: {out['dashboard']}",
          file=sys.stderr)
    return 0


def _common(p, study: bool = True) -> None:
    p.add_argument("--results", required=True, help="results folder")
    p.add_argument("--settings", help="validated configuration YAML")
    if study:
        p.add_argument("--no-sr", action="store_true", help="do not write the DICOM SR")
        p.add_argument("--no-rebuild-keyimages", action="store_true",
                       help="do not load images from the archive when the study job wrote no key images")


def register(subparsers) -> None:
    """Add ``report``, ``report-study`` and ``dashboard`` to a ``hitit`` subparsers object."""
    a = subparsers.add_parser("report", help="worksheets, DICOM SR and dashboard of a results folder")
    _common(a)
    a.set_defaults(func=cmd_all)
    s = subparsers.add_parser("report-study", help="(workflow step) worksheet and SR of one study")
    _common(s)
    s.add_argument("--patient-dir", required=True)
    s.add_argument("--study-dir", required=True)
    s.set_defaults(func=cmd_study)
    d = subparsers.add_parser("dashboard", help="(workflow step) RESULTS/report/index.html")
    _common(d, study=False)
    d.set_defaults(func=cmd_dashboard)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.report.cli {study,dashboard,all}``."""
    p = argparse.ArgumentParser(prog="python -m pipeline.report.cli", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("all", help="every study, then the dashboard")
    _common(a)
    a.set_defaults(func=cmd_all)
    s = sub.add_parser("study", help="worksheet and SR of one study")
    _common(s)
    s.add_argument("--patient-dir", required=True)
    s.add_argument("--study-dir", required=True)
    s.set_defaults(func=cmd_study)
    d = sub.add_parser("dashboard", help="RESULTS/report/index.html")
    _common(d, study=False)
    d.set_defaults(func=cmd_dashboard)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
