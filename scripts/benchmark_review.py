#!/usr/bin/env python
"""Image serving of the review app on the full-size phantom: time to first slice and p95 latency.

1. Writes one full-size phantom patient (512 x 512 x 112 CT, both phases, PET, lesion SEG) and
   builds its review image cache from the volumes (:func:`pipeline.review.cache.write_image_cache`,
   what the study job calls), printing that step's time and the cache's size.
2. Starts the app on 127.0.0.1 with werkzeug's threaded server (as ``hitit review`` does).
3. **Time to first slice**: from a fresh app (no cache file opened yet) to the first windowed
   CT slice PNG received over HTTP (the viewer's first paint needs the viewer JSON, the slice and
   the PET fusion overlay: that sum is reported too).
4. **Slice-to-slice**: scrolls through every slice of the non-contrast CT once (window changes
   every 10 slices), requesting the slice and its fusion overlay as the viewer does; prints the
   median and p95 latency per slice (both images) and per single PNG.

Targets (issue 14): first slice <= 1 s, p95 slice-to-slice <= 100 ms.

Usage: ``python scripts/benchmark_review.py [--workdir DIR] [--keep]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _series(folder: Path) -> tuple[list[Path], str]:
    import pydicom

    files = sorted(folder.glob("*.dcm"))
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    return files, uid


def build_full_size_study(work: Path) -> tuple[Path, float]:
    """Full-size phantom -> results-like folder with one study and its cache; returns (results, s)."""
    import csv

    import pydicom

    from pipeline.io import dicom, seg, suv
    from pipeline.testing.phantom import generate_patient
    from pipeline.review.cache import write_image_cache
    from pipeline.study import lesion_ids

    archive = work / "archive"
    t0 = time.perf_counter()
    pdir = generate_patient(archive, 1, "full", 0)
    print(f"full-size phantom written in {time.perf_counter() - t0:.1f} s -> {pdir}")
    t0 = time.perf_counter()
    vols = {}
    for role, sub in (("ct", "CT_noncontrast"), ("ce_ct", "CT_contrast")):
        files, uid = _series(pdir / sub)
        vols[role] = dicom.load_ct(files, series_uid=uid)
    files, uid = _series(pdir / "PET")
    act, headers = dicom.load_pet_activity(files, series_uid=uid)
    vols["pet"] = suv.to_suv(act, suv.suv_audit(headers))
    grids = {v.series_uid: v.grid for v in vols.values()}
    masks = [m for m in seg.read_seg(pdir / "SEG_lesions.dcm", grids=grids) if m.kind.value != "organ"]
    t_load = time.perf_counter() - t0
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    pid, suid = str(ds.PatientID), str(ds.StudyInstanceUID)
    results = work / "results"
    out = results / "studies" / pid / suid
    by_id = dict(zip(lesion_ids([m.name for m in masks]), masks, strict=True))
    t0 = time.perf_counter()
    write_image_cache(out, vols, by_id)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()  # again, as in a study job (skimage already imported, pages warm)
    write_image_cache(out, vols, by_id)
    t_cache = time.perf_counter() - t0
    sizes = {f.name: f.stat().st_size / 1e6 for f in sorted((out / 'review_cache').iterdir())}
    print(f"DICOM loaded in {t_load:.1f} s; review cache written in {t_cache:.2f} s (target < 0.5 s; "
          f"{t_first:.2f} s as the first call of a fresh process), "
          f"{sum(sizes.values()):.1f} MB: " + ", ".join(f"{k} {v:.1f} MB" for k, v in sizes.items()))
    (results / "cohort").mkdir(parents=True, exist_ok=True)
    with open(results / "cohort" / "studies.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "study_uid", "patient_dir", "study_dir"])
        w.writerow([pid, suid, pid, suid])
    with open(out / "ranking.csv", "w", newline="") as fh:
        csv.writer(fh).writerow(["patient_id", "study_uid", "lesion_id", "lesion_label", "role"])
    return results, t_cache


def _get(url: str, token: str) -> tuple[bytes, float]:
    req = urllib.request.Request(url, headers={"X-Review-Token": token})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
        assert r.status == 200, (url, r.status)
    return body, time.perf_counter() - t0


def measure(results: Path) -> dict:
    """Serve ``results`` and time the slice requests; returns the figures (seconds)."""
    import logging

    from pipeline.review import store
    from pipeline.review.app import serve

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

    row = store.read_study_sheet(results)[0]
    pid, suid = row["patient_id"], row["study_uid"]
    t_start = time.perf_counter()
    srv, url = serve(results, reader="benchmark")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base, token = url.split("/?token=")
    try:
        import json

        t0 = time.perf_counter()
        meta, _ = _get(f"{base}/api/study/{pid}/{suid}/viewer.json", token)
        index = json.loads(meta)["index"]
        nz = index["phases"]["ct"]["shape_zyx"][0]
        z0 = nz // 2
        png, t_first = _get(f"{base}/slice/{pid}/{suid}/ct/{z0}.png?window=soft", token)
        _, t_fus = _get(f"{base}/fusion/{pid}/{suid}/ct/{z0}.png", token)
        first_paint = time.perf_counter() - t0
        server_start = t0 - t_start
        per_slice, per_png = [], []
        windows = ["soft", "lung", "bone", "liver"]
        for i, z in enumerate(list(range(z0 + 1, nz)) + list(range(0, z0))):
            w = windows[(i // 10) % len(windows)]
            t1 = time.perf_counter()
            _, a = _get(f"{base}/slice/{pid}/{suid}/ct/{z}.png?window={w}", token)
            _, b = _get(f"{base}/fusion/{pid}/{suid}/ct/{z}.png", token)
            per_slice.append(time.perf_counter() - t1)
            per_png += [a, b]
        return {"shape_zyx": index["phases"]["ct"]["shape_zyx"], "server_start_s": server_start,
                "first_slice_s": t_first, "first_paint_s": first_paint, "first_png_bytes": len(png),
                "slice_median_s": float(np.median(per_slice)), "slice_p95_s": float(np.percentile(per_slice, 95)),
                "png_p95_s": float(np.percentile(per_png, 95)), "n_slices": len(per_slice)}
    finally:
        srv.shutdown()
        srv.server_close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", help="working folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    args = ap.parse_args(argv)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hitit-bench-review-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results, _ = build_full_size_study(work)
        m = measure(results)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"CT {m['shape_zyx'][2]} x {m['shape_zyx'][1]} x {m['shape_zyx'][0]} (x, y, z)")
    print(f"time to first slice: {m['first_slice_s'] * 1000:.0f} ms (target <= 1000 ms); first paint "
          f"(viewer JSON + slice + PET overlay): {m['first_paint_s'] * 1000:.0f} ms")
    print(f"slice-to-slice over {m['n_slices']} slices (CT slice + PET overlay): median "
          f"{m['slice_median_s'] * 1000:.1f} ms, p95 {m['slice_p95_s'] * 1000:.1f} ms (target <= 100 ms); "
          f"single PNG p95 {m['png_p95_s'] * 1000:.1f} ms")
    ok = m["first_slice_s"] <= 1.0 and m["slice_p95_s"] <= 0.1
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
