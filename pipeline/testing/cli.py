"""``hitit synthetic``: write SYNTHETIC lesions and decisions (the demo of ``hitit train``).

Registered by :func:`pipeline.cli.build_parser` (the composition root), which imports this module
inside the function; nothing here is imported at the top of a product module, and the generator
itself (:mod:`pipeline.testing.decisions`) is imported only when the command runs.

``hitit synthetic --out DIR [--patients N] [--policy expert|rules] [--noise X] [--seed S]``
    Writes a SYNTHETIC lesion table and SYNTHETIC decisions (labelled so in a ``synthetic``
    column) for the demo: ``DIR/lesions.csv``, ``DIR/decisions.csv``.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def cmd_synthetic(args) -> int:
    """Run ``hitit synthetic``."""
    from pipeline.config import load_config
    from pipeline.io.tables import write_table
    from pipeline.testing.decisions import synthetic_decisions, synthetic_lesions

    cfg = load_config(args.config)
    les = synthetic_lesions(args.patients, seed=args.seed,
                            superficial_depth_mm=cfg["anatomy"]["superficial_depth_mm"])
    dec = synthetic_decisions(les, cfg["ranking"], policy=args.policy, noise=args.noise,
                              seed=args.seed + 1)
    out = Path(args.out)
    write_table(les, out / "lesions.csv")
    write_table(dec, out / "decisions.csv")
    print(f"SYNTHETIC: {len(les)} lesions of {les['patient_id'].nunique()} patients and "
          f"decisions of policy '{args.policy}' in {out}")
    return 0


def register(subparsers) -> None:
    """Add ``synthetic`` to the ``hitit`` subcommands.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``parser.add_subparsers()``.
    """
    s = subparsers.add_parser(
        "synthetic", help="write SYNTHETIC lesions and decisions (demo of hitit train)")
    s.add_argument("--out", required=True)
    s.add_argument("--patients", type=int, default=200)
    s.add_argument("--policy", choices=["expert", "rules"], default="expert")
    s.add_argument("--noise", type=float, default=0.2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--config", help="YAML file overriding configs/config.yaml")
    s.set_defaults(func=cmd_synthetic)
