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
2. **Full-size study job**: one full-size phantom study (two CT phases, PET, lesion and organ
   SEGs). Its decode floor is every series the study's sheet row names decoded once, the CT and
   PET series by SimpleITK/GDCM and the SEG pixels by pydicom, cold in a fresh process like the
   job (not in this process, where the decoders would be imported and initialised already).
   The study job is the workflow's own command (``hitit study``). Both are timed as
   subprocesses, process start and imports included; the decode alone (measured inside the
   floor's process, after its imports) is printed too. Printed: floor, job, ``job / floor``
   (target <= 3) and ``job / decode alone``.

Wall times are stretched on a machine shared with other jobs; the CPU time (user + system of a
command and every process it started) is printed beside them, with the load average before and
after, and the study stages record their own ``cpu_s`` in ``provenance.json``.

Every figure is measured here; nothing is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HITIT = [sys.executable, "-m", "pipeline.cli"]


def _timed(cmd: list[str], **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd`` from the repository: (wall s, CPU s of it and every descendant, result).

    CPU time (user + system, from ``RUSAGE_CHILDREN``) is the work itself; on a machine shared
    with other jobs the wall time also holds the waits for a core.
    """
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, check=True, cwd=REPO, **kw)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), res


def _run(cmd: list[str], **kw) -> float:
    return _timed(cmd, **kw)[0]


def _load() -> str:
    """The 1-minute load average and the core count (how shared the machine was)."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def _phantom(out: Path, patients: int, size: str) -> None:
    if out.exists() and any(out.iterdir()):
        return
    t = _run([*HITIT, "phantom", str(out), "--patients", str(patients), "--size", size],
             stdout=subprocess.DEVNULL)
    print(f"  wrote {patients} {size} phantom patient(s) in {t:.1f} s -> {out}")


def _study_work(results: Path) -> tuple[float, float, int]:
    """Sum over studies of the study stage's wall time and CPU time (its stages' ``cpu_s``)."""
    provs = [json.loads(p.read_text()) for p in results.glob("studies/*/*/provenance.json")]
    walls = [p.get("total_wall_s", 0.0) for p in provs]
    cpus = [sum(s.get("cpu_s", float("nan")) for s in p.get("stages", [])) for p in provs]
    return float(sum(walls)), float(sum(cpus)), len(walls)


def batch(work: Path, n: int, cores: int) -> None:
    print(f"== batch: {n} small phantom studies on {cores} core(s)")
    archive = work / f"batch{n}"
    _phantom(archive, n, "small")
    results = work / f"batch{n}_results"
    if results.exists():  # a reused --workdir: time a complete run, not a no-change rerun
        shutil.rmtree(results)
    print(f"  before: {_load()}")
    wall, cpu, _ = _timed([*HITIT, "run", "--input", str(archive), "--output", str(results),
                           "--cores", str(cores)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    study_s, study_cpu, k = _study_work(results)
    print(f"  after:  {_load()}")
    print(f"  wall time of the run      {wall:8.1f} s")
    print(f"  study work (sum, {k:3d} jobs) {study_s:8.1f} s")
    print(f"  wall / study work          {wall / study_s:8.2f}   (target <= 1.5 on 2 cores)")
    print(f"  wall x cores / study work  {wall * cores / study_s:8.2f}")
    print(f"  CPU of the whole run      {cpu:8.1f} s (every process it started)")
    print(f"  CPU of the study work     {study_cpu:8.1f} s (sum of the study stages' cpu_s)")
    print(f"  CPU outside the study work {(cpu - study_cpu) / max(k, 1):7.2f} s per study "
          f"(process starts, ranking, reports, index, cohort, Snakemake)")
    print(f"  CPU of the run / study CPU {cpu / study_cpu:8.2f}")
    again = _run([*HITIT, "run", "--input", str(archive), "--output", str(results),
                  "--cores", str(cores)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"  rerun with nothing changed {again:8.1f} s")


#: The decode floor, run as its own fresh process (like the study job): import the decoders, then
#: decode every CT/PET series once with SimpleITK/GDCM and the pixels of every SEG with pydicom.
#: Prints the seconds spent decoding (after the imports) as JSON on stdout.
_FLOOR_CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
from pathlib import Path
import pydicom
import SimpleITK as sitk
t_imports = time.perf_counter()
archive = Path(sys.argv[1])
series = json.loads(sys.argv[2])
decoded = {}
for uid, (mod, paths) in series.items():
    paths = [str(archive / p) for p in paths]
    if mod in ("CT", "PT"):
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(
            str(Path(paths[0]).parent), uid) or paths)
        decoded[uid] = list(sitk.GetArrayViewFromImage(reader.Execute()).shape)
    elif mod == "SEG":
        for p in paths:
            decoded[uid] = list(pydicom.dcmread(p).pixel_array.shape)
t_end = time.perf_counter()
print(json.dumps({"imports_s": t_imports - t_start, "decode_s": t_end - t_imports,
                  "decoded": decoded}))
"""


def _study_series(results: Path, row) -> dict[str, tuple[str, list[str]]]:
    """{series UID: (modality, archive-relative paths)} of the series the study's sheet row names."""
    import pandas as pd

    files = pd.read_csv(results / "index" / "files.csv", dtype=str, keep_default_na=False)
    keys = ("ct_series_uid", "ce_ct_series_uid", "pet_series_uid", "lesion_mask_ref",
            "organ_mask_ref")
    uids = {str(row.get(k) or "") for k in keys} - {""}
    out = {}
    for uid, g in files[files["series_uid"].isin(uids)].groupby("series_uid"):
        out[uid] = (g["modality"].iloc[0], g["path"].tolist())
    return out


def _decode_floor(archive: Path, series: dict) -> tuple[float, dict]:
    """The decode floor as a fresh process, timed like the study job (process start included).

    Returns the subprocess wall time and the child's own figures (imports_s, decode_s, the
    decoded array shapes by series UID) with the process's CPU time (cpu_s).
    """
    wall, cpu, res = _timed([sys.executable, "-c", _FLOOR_CHILD, str(archive), json.dumps(series)],
                            capture_output=True, text=True)
    return wall, {**json.loads(res.stdout), "cpu_s": cpu}


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
    series = _study_series(results, row)
    mods = sorted(m for m, _ in series.values())
    print(f"  series of the study: {', '.join(mods)} "
          f"({sum(len(p) for _, p in series.values())} files)")
    floors, decodes, jobs, stages, floor_cpu, job_cpu = [], [], [], [], [], []
    print(f"  before: {_load()}")
    for _ in range(repeats):
        wall, child = _decode_floor(archive, series)
        floors.append(wall)
        decodes.append(child["decode_s"])
        floor_cpu.append(child["cpu_s"])
        wall, cpu, _ = _timed([*HITIT, "study", "--results", str(results), "--patient-dir",
                               row["patient_dir"], "--study-dir", row["study_dir"]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        jobs.append(wall)
        job_cpu.append(cpu)
        prov = json.loads((results / "studies" / row["patient_dir"] / row["study_dir"]
                           / "provenance.json").read_text())
        stages.append(prov.get("stages", []))
    floor, job = statistics.median(floors), statistics.median(jobs)
    decode = statistics.median(decodes)
    print(f"  decoded: {child['decoded']}")
    print(f"  decode alone, fresh process (median of {repeats})   {decode:6.2f} s")
    print(f"  decode floor: fresh process, start + imports + decode (median of {repeats})   "
          f"{floor:6.2f} s")
    print(f"  study job (median of {repeats})      {job:6.2f} s")
    print(f"  job / floor                   {job / floor:6.2f}   (target <= 3)")
    print(f"  job / decode alone            {job / decode:6.2f}")
    fc, jc = statistics.median(floor_cpu), statistics.median(job_cpu)
    print(f"  CPU time: floor {fc:.2f} s, job {jc:.2f} s, job / floor {jc / fc:.2f} "
          f"(medians; not stretched by other jobs on a shared machine)")
    print(f"  after:  {_load()}")
    parts = ", ".join(f"{s['stage']} {s['wall_s']:.2f} s (CPU {s.get('cpu_s', float('nan')):.2f})"
                      for s in stages[-1])
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
