"""Command line of the review outputs.

Registered into ``hitit`` by :func:`register`: ``hitit report`` (every study, then the
dashboard), ``hitit report-study`` and ``hitit dashboard`` (``hitit rank --report`` and the dashboard rule
of the workflow call the same functions, so the workflow and the CLI share one code path).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_study(args) -> int:
    """One study: worksheet and SR."""
    from pipeline.report.run import report_study

    st = report_study(Path(args.results), args.patient_dir, args.study_dir, sr=not args.no_sr)
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

    out = build_reports(Path(args.results), sr=not args.no_sr)
    n_sr = sum(1 for s in out["studies"] if s.get("sr"))
    print(f"{len(out['studies'])} worksheets, {n_sr} DICOM SR; dashboard: {out['dashboard']}",
          file=sys.stderr)
    return 0


def _common(p, study: bool = True) -> None:
    p.add_argument("--results", required=True, help="results folder")
    if study:
        p.add_argument("--no-sr", action="store_true", help="do not write the DICOM SR")


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
