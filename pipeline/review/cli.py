"""``hitit review RESULTS``: start the review app, export decisions, or backfill image caches.

Registered into ``hitit`` by :func:`register` (like :mod:`pipeline.report.cli`).
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path


def cmd_review(args) -> int:
    """Serve the app (default), or ``--export FILE [--cutoff ISO]``, or ``--backfill-cache``."""
    from pipeline.errors import ConfigError
    from pipeline.review import store

    results = Path(args.results)
    if not (results / "cohort" / "studies.csv").is_file():
        raise ConfigError(f"{results} is not a results folder (no cohort/studies.csv)",
                          file=results, hint="pass the --output folder of `hitit run`")
    if args.cutoff and not args.export:
        raise ConfigError("--cutoff needs --export FILE", hint="hitit review RESULTS --export FILE --cutoff ISO")
    if args.export:
        cutoff = None
        if args.cutoff:
            try:
                cutoff = store.parse_utc(args.cutoff)
            except ValueError as e:
                raise ConfigError(f"--cutoff {args.cutoff!r} is not an ISO 8601 time",
                                  hint="e.g. 2026-03-31T23:59:59Z (no zone = UTC)") from e
        out = store.export(results, args.export, cutoff)
        print(f"decisions{' at ' + cutoff.isoformat() if cutoff else ''} -> {out}", file=sys.stderr)
        return 0
    if args.backfill_cache:
        from pipeline.review.backfill import backfill_study_cache

        for r in store.read_study_sheet(results):
            d = backfill_study_cache(results, r["patient_id"], r["study_uid"], archive=args.archive)
            print(f"review cache: {d}", file=sys.stderr)
        return 0
    from pipeline.review.app import serve

    try:
        srv, url = serve(results, reader=args.reader, host=args.host, port=args.port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {e}",
                          hint="choose another --port (0 = any free port)") from e
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"WARNING: listening on {args.host}: other machines can reach this server; only the "
              "token protects it", file=sys.stderr)
    print(f"Reviewing {results} as {args.reader!r}. Open (token included; keep it private):\n  {url}\n"
          "Ctrl-C stops the server; every saved decision is already on disk.", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0


def register(subparsers) -> None:
    """Add ``review`` to a ``hitit`` subparsers object."""
    r = subparsers.add_parser("review", help="local web app: look at studies, record the team's "
                                             "decisions and sign-offs (RESULTS/review/)")
    r.add_argument("results", help="results folder of `hitit run`")
    r.add_argument("--port", type=int, default=8765, help="TCP port (0 = any free port)")
    r.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only)")
    r.add_argument("--reader", default=getpass.getuser(), help="name recorded with each decision")
    r.add_argument("--export", metavar="FILE", help="write the decisions CSV (hitit train format) and exit")
    r.add_argument("--cutoff", metavar="ISO", help="with --export: decisions as they stood at this UTC time")
    r.add_argument("--backfill-cache", action="store_true",
                   help="write the viewer's image cache of every study from the archive, and exit")
    r.add_argument("--archive", help="with --backfill-cache: archive root (default: the indexed one)")
    r.set_defaults(func=cmd_review)
