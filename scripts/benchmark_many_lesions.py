#!/usr/bin/env python
"""Many-lesion benchmark (issue 12 item 10): study job, ranking and worksheet for 100 / 300 /
1000 lesion segments.

Usage::

    .venv/bin/python scripts/benchmark_many_lesions.py [--counts 100 300 1000] [--keep DIR]

Generates one small phantom patient, then for each count replaces its lesion SEG by one with
that many small segments (:func:`pipeline.testing.corpus.many_segment_seg`: 2 x 3 x 3 voxels in
soft tissue, none overlapping), and runs the study job (:func:`pipeline.study.run_study`), the
ranking (:func:`pipeline.ranking.longitudinal.rank_patient`) and the worksheet
(:func:`pipeline.report.worksheet.write_worksheet`, ``ranking.worksheet_max_lesions`` of the
configuration in full, the rest in the compact table). Prints per count: wall time of each
study stage, of the ranking and of the worksheet, seconds per lesion, and the worksheet size.
Per-lesion time should stay flat as the count grows (linear cost). It prints figures; it is
not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _one(base: Path, work: Path, n: int, cfg: dict) -> dict:
    import pydicom

    from pipeline.io.index import scan_archive
    from pipeline.io.provenance import write_json
    from pipeline.io.tables import read_table, write_table
    from pipeline.ranking.longitudinal import rank_patient
    from pipeline.report.worksheet import write_worksheet
    from pipeline.sheet import build_study_sheet
    from pipeline.study import run_study
    from pipeline.testing.corpus import many_segment_seg

    root = work / f"archive_{n}"
    shutil.copytree(base, root)
    folder = next(p.parent for p in root.rglob("SEG_lesions.dcm"))
    cts = [pydicom.dcmread(p) for p in sorted((folder / "CT_contrast").iterdir())]
    seg, _ = many_segment_seg(pydicom.dcmread(folder / "SEG_lesions.dcm"), cts, n)
    seg.save_as(folder / "SEG_lesions.dcm")
    index = scan_archive(root)
    row = build_study_sheet(index).iloc[0].to_dict()
    out = work / f"study_{n}"
    t0 = time.perf_counter()
    prov = run_study(row, index.files, root, cfg, out)
    t_study = time.perf_counter() - t0
    lesions = read_table(out / "lesions.csv")
    t0 = time.perf_counter()
    ranking = rank_patient([(row["study_uid"], str(row.get("study_date", "")), lesions)],
                           cfg["ranking"])[row["study_uid"]]
    write_table(ranking, out / "ranking.csv")
    t_rank = time.perf_counter() - t0
    write_json(out / "ranking_provenance.json",
               {"worksheet_max_lesions": cfg["ranking"]["worksheet_max_lesions"]})
    t0 = time.perf_counter()
    ws = write_worksheet(out)
    t_ws = time.perf_counter() - t0
    return {"n": n, "status": prov["status"], "rows": int(len(lesions)),
            "stages": {s["stage"]: s["wall_s"] for s in prov["stages"]}, "study_s": t_study,
            "rank_s": t_rank, "worksheet_s": t_ws, "worksheet_mb": ws.stat().st_size / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--keep", type=Path, help="keep the archives and study folders here")
    args = ap.parse_args(argv)

    from pipeline.config import load_config
    from pipeline.testing.phantom import generate_patient

    cfg = load_config()
    tmp = None
    work = args.keep
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="hitit_many_")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        base = work / "base"
        generate_patient(base, 1, "small", 0)
        print(f"worksheet: {cfg['ranking']['worksheet_max_lesions']} lesions in full, the rest "
              "in the compact table")
        print(f"{'lesions':>8} {'study s':>8} {'s/lesion':>9} {'lesions s':>9} {'keyimg s':>9} "
              f"{'rank s':>7} {'sheet s':>8} {'sheet MB':>9}  status")
        results = []
        for n in args.counts:
            r = _one(base, work, n, cfg)
            results.append(r)
            st = r["stages"]
            print(f"{n:>8} {r['study_s']:>8.1f} {r['study_s'] / n:>9.3f} "
                  f"{st.get('lesions', 0):>9.1f} {st.get('key_images', 0):>9.1f} "
                  f"{r['rank_s']:>7.1f} {r['worksheet_s']:>8.1f} {r['worksheet_mb']:>9.2f}  "
                  f"{r['status']} ({r['rows']} rows)", flush=True)
        print(json.dumps(results, indent=1))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
