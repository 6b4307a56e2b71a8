#!/usr/bin/env python
"""Workflow benchmark: bookkeeping overhead of a batch, and the study job against its decode floor.

Usage::

    .venv/bin/python scripts/benchmark_workflow.py [--studies 20] [--cores 2] [--no-batch]
                                                    [--no-full] [--workdir DIR]

Prints, side by side in one run:

1. **Batch**: ``hitit run`` over ``--studies`` small phantom patients on ``--cores`` cores. The
   wall time of the whole run against the *study work* (the sum over studies of the study
   stage's own wall time, from each ``provenance.json``): ``wall / study work`` (target <= 1.5 on
   2 cores), and a no-change rerun (pure bookkeeping).
2. **Full-size study job**: one full-size phantom study (two CT phases, PET, SEGs). Its decode
   floor is every series decoded once by SimpleITK/GDCM plus the SEG pixels (pydicom), measured
   in this process; the study job is the workflow's own command (``hitit study``) timed as a
   subprocess, process start included. Printed: floor, job, ``job / floor`` (target <= 3).

Every figure is measured here; nothing is a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HITIT = [sys.executable, "-m", "pipeline.cli"]


def _run(cmd: list[str], **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, **kw)
    return time.perf_counter() - t0


def _phantom(out: Path, patients: int, size: str) -> None:
    if out.exists() and any(out.iterdir()):
        return
    t = _run([*HITIT, "phantom", str(out), "--patients", str(patients), "--size", size],
             stdout=subprocess.DEVNULL)
    print(f"  wrote {patients} {size} phantom patient(s) in {t:.1f} s -> {out}")


def _study_work(results: Path) -> tuple[float, int]:
    walls = [json.loads(p.read_text()).get("total_wall_s", 0.0)
             for p in results.glob("studies/*/*/provenance.json")]
    return float(sum(walls)), len(walls)


def batch(work: Path, n: int, cores: int) -> None:
    print(f"== batch: {n} small phantom studies on {cores} core(s)")
    archive = work / f"batch{n}"
    _phantom(archive, n, "small")
    results = work / f"batch{n}_results"
    wall = _run([*HITIT, "run", "--input", str(archive), "--output", str(results),
                 "--cores", str(cores)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study_s, k = _study_work(results)
    print(f"  wall time of the run      {wall:8.1f} s")
    print(f"  study work (sum, {k:3d} jobs) {study_s:8.1f} s")
    print(f"  wall / study work          {wall / study_s:8.2f}   (target <= 1.5 on 2 cores)")
    print(f"  wall x cores / study work  {wall * cores / study_s:8.2f}")
    again = _run([*HITIT, "run", "--input", str(archive), "--output", str(results),
                  "--cores", str(cores)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"  rerun with nothing changed {again:8.1f} s")


def _decode_floor(archive: Path, results: Path) -> float:
    """Every series of the study decoded once (SimpleITK/GDCM for images, pydicom for SEG)."""
    import pandas as pd
    import pydicom
    import SimpleITK as sitk

    files = pd.read_csv(results / "index" / "files.csv", dtype=str, keep_default_na=False)
    t0 = time.perf_counter()
    for uid, g in files.groupby("series_uid"):
        mod = g["modality"].iloc[0] if "modality" in g else ""
        paths = [str(archive / p) for p in g["path"]]
        if mod in ("CT", "PT"):
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(
                str(Path(paths[0]).parent), uid) or paths)
            sitk.GetArrayViewFromImage(reader.Execute())
        elif mod == "SEG":
            for p in paths:
                pydicom.dcmread(p).pixel_array  # noqa: B018 - decode the frames
    return time.perf_counter() - t0


def full_study(work: Path, repeats: int) -> None:
    print("== full-size study job against its decode floor")
    archive = work / "full"
    _phantom(archive, 1, "full")
    results = work / "full_results"
    _run([*HITIT, "index", "--input", str(archive), "--output", str(results)],
         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import pandas as pd

    sheet = pd.read_csv(results / "cohort" / "studies.csv", dtype=str, keep_default_na=False)
    row = sheet.iloc[0]
    floors, jobs, stages = [], [], []
    for _ in range(repeats):
        floors.append(_decode_floor(archive, results))
        jobs.append(_run([*HITIT, "study", "--results", str(results), "--patient-dir",
                          row["patient_dir"], "--study-dir", row["study_dir"]],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        prov = json.loads((results / "studies" / row["patient_dir"] / row["study_dir"]
                           / "provenance.json").read_text())
        stages.append(prov.get("stages", []))
    floor, job = statistics.median(floors), statistics.median(jobs)
    print(f"  decode floor (median of {repeats})   {floor:6.2f} s")
    print(f"  study job (median of {repeats})      {job:6.2f} s")
    print(f"  job / floor                   {job / floor:6.2f}   (target <= 3)")
    parts = ", ".join(f"{s['stage']} {s['wall_s']:.2f} s" for s in stages[-1])
    print(f"  stages of the last job: {parts}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-batch", action="store_true")
    ap.add_argument("--no-full", action="store_true")
    ap.add_argument("--workdir", help="reuse generated archives here (default: a temp folder)")
    args = ap.parse_args()
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="hitit-bench-")
        work = Path(tmp.name)
    if not args.no_batch:
        batch(work, args.studies, args.cores)
    if not args.no_full:
        full_study(work, args.repeats)
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
