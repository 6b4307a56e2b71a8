#!/usr/bin/env python
"""Needle path planning time per lesion on the full-size phantom, and its cost vs directions.

Usage::

    .venv/bin/python scripts/benchmark_access.py [--size full|small] [--repeat 3]

Builds the extended phantom in memory (``phantom_arrays(size, variant="extended")``, no files),
runs the anatomy stage's per-study preparation once (body mask, skin, tissue map), then times
:func:`pipeline.anatomy.access.plan_access` for every lesion with 100, 400 (the default) and 1600
directions, and the whole per-lesion anatomy call (:func:`pipeline.anatomy.stage.lesion_columns`).
Runs on one core (BLAS/OpenMP threads set to 1 before numpy is imported). Prints figures; it is
not a test.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import time

import numpy as np

from pipeline.anatomy import stage
from pipeline.anatomy.access import AccessSettings, plan_access
from pipeline.anatomy.body import SkinSurface, body_mask
from pipeline.anatomy.tissue import build_tissue_map
from pipeline.config import load_config
from pipeline.geometry import bbox_of
from pipeline.records import LesionMask, MaskSource, SegmentKind, Volume
from pipeline.testing import phantom as P


def _mask(full, grid, name, kind):
    bb = bbox_of(full)
    return LesionMask(name, MaskSource.SEG, grid, bb, full[tuple(slice(a, b) for a, b in bb)],
                      kind=kind)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="full", choices=["full", "small"])
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats (best kept)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    a = P.phantom_arrays(args.size, 1, 0, "extended")
    g = a.ct_grid
    print(f"phantom {args.size}: CT {g.shape_zyx[2]}x{g.shape_zyx[1]}x{g.shape_zyx[0]} "
          f"voxels of {g.spacing_xyz_mm[0]:.3g}x{g.spacing_xyz_mm[1]:.3g}x"
          f"{g.spacing_xyz_mm[2]:.3g} mm, {len(a.design.lesions)} lesions "
          f"(built in {time.perf_counter() - t0:.1f} s)")
    cfg = load_config()
    an = cfg["anatomy"]
    organs = {n: _mask(a.organ_mask(n), g, n, SegmentKind.ORGAN) for n in P.ORGAN_NAMES}
    ct = Volume(a.ct_noncontrast_hu, g, "HU", "ct")

    # ---- once per study
    t = time.perf_counter()
    body = body_mask(ct.array, g, threshold_hu=an["body_threshold_hu"])
    t_body = time.perf_counter() - t
    t = time.perf_counter()
    SkinSurface.from_body_mask(body, g)
    t_skin = time.perf_counter() - t
    t = time.perf_counter()
    build_tissue_map(ct.array, g, body, organs, bone_threshold_hu=an["bone_threshold_hu"],
                     air_threshold_hu=an["air_threshold_hu"],
                     vessel_caliber_threshold_mm=an["vessel_caliber_threshold_mm"],
                     forbidden_terms=tuple(an["access"]["forbidden_terms"]))
    t_tissue = time.perf_counter() - t
    t = time.perf_counter()
    ctx = stage.prepare({"noncontrast": ct}, g, organs, cfg)
    t_prep = time.perf_counter() - t
    print(f"\nonce per study: prepare {t_prep:.2f} s (body mask {t_body:.2f} s, skin surface "
          f"{t_skin:.2f} s, tissue map {t_tissue:.2f} s)")

    masks = [_mask(a.lesion_labels == k, g, les.name, SegmentKind.LESION)
             for k, les in enumerate(a.design.lesions, start=1)]
    rows = [stage.lesion_columns(m, ctx, cfg, features={}) for m in masks]
    targets = [np.array([r["target_x_mm"], r["target_y_mm"], r["target_z_mm"]]) for r in rows]
    terms = [r["organ"] if r["organ"] != "unknown" else "" for r in rows]

    base = AccessSettings.from_config(an["access"])
    counts = (100, 400, 1600)
    print("\npath planning time per lesion (plan_access, best of "
          f"{args.repeat}; refine_levels={base.refine_levels}), ms:")
    header = f"{'lesion':24s}" + "".join(f"{n:>10d} dirs" for n in counts) + \
        f"{'all columns':>14s}{'path mm':>10s}"
    print(header)
    per_n = {n: [] for n in counts}
    for m, tp, term, row in zip(masks, targets, terms, rows):
        line = f"{m.name:24s}"
        for n in counts:
            s = AccessSettings(**{**base.__dict__, "n_directions": n})
            best = np.inf
            for _ in range(args.repeat):
                t = time.perf_counter()
                plan_access(ctx.tissue, m, tp, target_term=term, settings=s, skin=ctx.skin)
                best = min(best, time.perf_counter() - t)
            per_n[n].append(best)
            line += f"{1000 * best:14.0f}"
        t = time.perf_counter()
        stage.lesion_columns(m, ctx, cfg, features={})
        line += f"{1000 * (time.perf_counter() - t):14.0f}"
        pl = row["path_length_mm"]
        line += f"{pl:10.1f}" if pl is not None else f"{'none':>10s}"
        print(line)
    print(f"{'mean':24s}" + "".join(f"{1000 * np.mean(per_n[n]):14.0f}" for n in counts))
    print(f"{'max':24s}" + "".join(f"{1000 * np.max(per_n[n]):14.0f}" for n in counts))
    m400 = np.mean(per_n[400])
    print("\ncost relative to 400 directions: " + ", ".join(
        f"{n}: x{np.mean(per_n[n]) / m400:.2f}" for n in counts))

    # pure tracing cost (no refinement): proportional to the number of directions
    print("\nwithout local refinement (refine_levels=0), mean ms per lesion:")
    for n in counts:
        s = AccessSettings(**{**base.__dict__, "n_directions": n, "refine_levels": 0})
        ts = []
        for m, tp, term in zip(masks, targets, terms):
            t = time.perf_counter()
            plan_access(ctx.tissue, m, tp, target_term=term, settings=s, skin=ctx.skin)
            ts.append(time.perf_counter() - t)
        print(f"  {n:5d} directions: {1000 * np.mean(ts):7.1f} ms "
              f"({1e6 * np.mean(ts) / n:.1f} us per direction)")
    vol = int(np.prod(g.shape_zyx))
    print(f"\nvolume: {vol / 1e6:.1f} M voxels; the planner reads only the voxels its rays "
          f"cross (at most {base.max_path_length_mm + base.external_clearance_mm:.0f} mm "
          "per ray), never the whole volume")


if __name__ == "__main__":
    main()
