#!/usr/bin/env python
"""Time the feature stage per lesion on the full-size phantom (PET, CT and radiomics separately).

Usage::

    .venv/bin/python scripts/benchmark_features.py [--size full|small] [--variant extended]
                                                   [--shift 3,-2,4.5] [--repeat 1]

Builds the phantom in memory (``pipeline.testing.phantom.phantom_arrays``: CT 512x512x112 at
0.78x0.78x1.5 mm, PET 96x96x42 at 4 mm for ``full``), hands it to
``pipeline.features.stage.prepare`` exactly as ``study.py`` does (lesion masks on the CT they were
drawn on, organ masks on the non-contrast CT), then calls ``lesion_columns`` once per lesion
and prints the wall time of each part. ``--shift`` writes the contrast CT in a second frame of
reference shifted by (dx, dy, dz) mm, so the one-off rigid registration is timed too. Prints
figures; not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import config as cfgmod
from pipeline.features import stage
from pipeline.geometry import bbox_of
from pipeline.records import LesionMask, MaskSource, SegmentKind, Volume
from pipeline.testing.phantom import ORGAN_NAMES, phantom_arrays


def _mask(full, grid, name, kind, ref, k):
    bb = bbox_of(full)
    return LesionMask(name, MaskSource.SEG, grid, bb, full[tuple(slice(a, b) for a, b in bb)],
                      kind=kind, referenced_series_uid=ref, segment_number=k)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="full", choices=["full", "small"])
    ap.add_argument("--variant", default="extended", choices=["standard", "extended"])
    ap.add_argument("--shift", default=None, help="contrast CT shift dx,dy,dz in mm (2nd frame)")
    ap.add_argument("--no-radiomics", action="store_true")
    args = ap.parse_args(argv)
    shift = tuple(float(v) for v in args.shift.split(",")) if args.shift else None

    t0 = time.perf_counter()
    a = phantom_arrays(args.size, 1, 0, variant=args.variant, contrast_shift_mm=shift)
    t_build = time.perf_counter() - t0
    cfg = cfgmod.load_config(overrides={"features": {"radiomics": {
        "enabled": not args.no_radiomics}}})
    nc = Volume(a.ct_noncontrast_hu, a.ct_grid, "HU", "nc", "frame-1")
    ce = Volume(a.ct_contrast_hu, a.ct_grid, "HU", "ce", "frame-2" if shift else "frame-1")
    suv = Volume(a.pet_suv, a.pet_grid, "SUVbw", "pet", "frame-1")
    labels = a.lesion_labels_contrast if shift else a.lesion_labels
    ref = "ce" if shift else "nc"
    lesions = [_mask(labels == k, a.ct_grid, n, SegmentKind.LESION, ref, k)
               for k, n in enumerate(a.lesion_names, start=1)]
    organs = {n: _mask(a.organ_mask(n), a.ct_grid, n, SegmentKind.ORGAN, "nc", k)
              for k, n in enumerate(ORGAN_NAMES, start=1)}

    print(f"phantom {args.size}/{args.variant}: CT {a.ct_grid.shape_zyx} at "
          f"{a.ct_grid.spacing_xyz_mm} mm, PET {a.pet_grid.shape_zyx} at "
          f"{a.pet_grid.spacing_xyz_mm} mm, {len(lesions)} lesions; built in {t_build:.1f} s "
          "(not counted)")
    t0 = time.perf_counter()
    ctx = stage.prepare({"noncontrast": nc, "contrast": ce}, suv, None, "", cfg,
                        lesion_grid=a.ct_grid, organs=organs, lesions=lesions)
    t_prep = time.perf_counter() - t0
    tm = ctx.timings_s
    print(f"\nprepare (once per study): {t_prep:.3f} s  = registration "
          f"{tm.get('registration', 0):.3f} s ({ctx.frames.alignment.status}) + liver reference "
          f"{tm.get('liver_reference', 0):.3f} s + radiomics setup "
          f"{tm.get('radiomics_setup', 0):.3f} s")

    print(f"\n{'lesion':24s} {'voxels':>8s} {'shape s':>8s} {'PET s':>8s} {'CT s':>8s} "
          f"{'radiomics s':>12s} {'total s':>8s}")
    rows = []
    for m in lesions:
        before = dict(ctx.timings_s)
        t0 = time.perf_counter()
        stage.lesion_columns(m, ctx, cfg)
        tot = time.perf_counter() - t0
        d = {k: ctx.timings_s.get(k, 0.0) - before.get(k, 0.0)
             for k in ("shape", "pet", "ct", "radiomics")}
        rows.append((d["shape"], d["pet"], d["ct"], d["radiomics"], tot))
        print(f"{m.name:24s} {m.voxel_count:8d} {d['shape']:8.3f} {d['pet']:8.3f} {d['ct']:8.3f} "
              f"{d['radiomics']:12.3f} {tot:8.3f}")
    r = np.array(rows)
    print(f"{'mean per lesion':24s} {'':8s} {r[:, 0].mean():8.3f} {r[:, 1].mean():8.3f} "
          f"{r[:, 2].mean():8.3f} {r[:, 3].mean():12.3f} {r[:, 4].mean():8.3f}")
    print(f"{'max per lesion':24s} {'':8s} {r[:, 0].max():8.3f} {r[:, 1].max():8.3f} "
          f"{r[:, 2].max():8.3f} {r[:, 3].max():12.3f} {r[:, 4].max():8.3f}")
    print(f"\nstudy total (prepare + {len(lesions)} lesions): {t_prep + r[:, 4].sum():.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
