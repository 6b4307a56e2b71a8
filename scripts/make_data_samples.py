#!/usr/bin/env python
"""Regenerate the committed sample cohort in data_samples/archive (phantom patients, small size).

    .venv/bin/python scripts/make_data_samples.py [--patients 2] [--seed 0]

The output is deterministic for a given seed. The committed cohort must stay under 20 MB.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.testing.phantom import generate_cohort  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = REPO / "data_samples" / "archive"
    if out.exists():
        shutil.rmtree(out)
    generate_cohort(out, n_patients=args.patients, size="small", seed=args.seed)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {args.patients} patients to {out}: {size / 1e6:.1f} MB")
    if size > 20e6:
        print("ERROR: sample cohort exceeds 20 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
