#!/usr/bin/env python
"""Follow-up registration and matching time per follow-up study, and the error it makes.

Usage::

    .venv/bin/python scripts/benchmark_followup.py [--size full|small] [--repeat 3]
    .venv/bin/python scripts/benchmark_followup.py --archive PHANTOM/PATIENT_FOLDER

Default (no ``--archive``): the phantom patient 1 is built in memory; its "follow-up" is the same
patient with another CT noise seed, seen by a scanner after a KNOWN rigid motion (30 mm shift,
10 deg about z, 3 deg about x) on a grid with another origin (SimpleITK linear resampling). Prints,
as the median of ``--repeat`` runs:

* reference build: :func:`reference_volume` + :func:`write_reference` of one CT (the study job's
  extra cost) and the file size;
* registration: :func:`register_followup` with the configured settings (and rigid only);
* matching: :func:`match_to_tracks` of the lesions mapped to the baseline frame;
* the error of the recovered follow-up -> baseline map at the lesion centres, mm.

``--archive``: a patient folder written by ``hitit phantom --timepoints N`` (its ``truth.json``
holds ``followup.timepoints[i].patient_to_scanner``, canonical patient LPS -> that study's
scanner LPS). Each study's non-contrast CT is loaded from DICOM, and every follow-up is registered
to the baseline; the true follow-up -> baseline map is ``P_0 @ inv(P_i)``. The error is measured
at the canonical design's lesion centres. Runs on one core (threads set to 1 before numpy and
SimpleITK start). Prints figures; it is not a test.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
           "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from pipeline.config import load_config
from pipeline.followup.matching import match_to_tracks
from pipeline.followup.registration import (
    REFERENCE_FILE,
    reference_volume,
    register_followup,
    write_reference,
)
from pipeline.geometry import Grid
from pipeline.testing import phantom as P


def _rot(axis: str, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _median_time(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def _match_time(res, centres_bl: np.ndarray, centres_fu: np.ndarray, max_mm: float, repeat: int):
    n = len(centres_bl)
    tracks = pd.DataFrame({"track_id": [f"t{i}" for i in range(n)], "tracking_uid": "",
                           "x_mm": centres_bl[:, 0], "y_mm": centres_bl[:, 1],
                           "z_mm": centres_bl[:, 2]})

    def run():
        mapped = res.to_baseline(centres_fu)
        lesions = pd.DataFrame({"lesion_id": [f"l{i}" for i in range(n)], "tracking_uid": "",
                                "x_mm": mapped[:, 0], "y_mm": mapped[:, 1], "z_mm": mapped[:, 2]})
        return match_to_tracks(tracks, lesions, max_distance_mm=max_mm)

    t, m = _median_time(run, repeat)
    right = sum(1 for x in m.matches if x.track_id[1:] == x.lesion_id[1:])
    return t, right, n


def _report(label, res, t_reg, err, t_match, right, n):
    print(f"{label}: status {res.status} {res.reason}".rstrip())
    print(f"  registration {t_reg:.2f} s (median), body Dice {res.body_dice:.3f}, lung MSD "
          f"{res.lung_msd_mm if res.lung_msd_mm is None else round(res.lung_msd_mm, 2)} mm, "
          f"rotation {res.rotation_deg:.2f} deg, translation {res.translation_mm:.1f} mm")
    print(f"  recovered vs true at {len(err)} lesion centres: max {err.max():.2f} mm, "
          f"mean {err.mean():.2f} mm")
    print(f"  matching {t_match * 1000:.2f} ms (median), {right}/{n} lesions on their true track")
    print(f"  notes: {res.notes}")


def bench_in_memory(size: str, repeat: int, rcfg: dict, max_mm: float) -> None:
    t0 = time.perf_counter()
    base = P.phantom_arrays(size, 1, 0)
    other = P.phantom_arrays(size, 1, 1)
    g = base.ct_grid
    rot = _rot("z", 10.0) @ _rot("x", 3.0)
    shift = np.array([10.0, -20.0, 20.0])
    fu_grid = Grid(g.shape_zyx, g.spacing_xyz_mm,
                   tuple(float(v) for v in np.array(g.origin_lps_mm) + [7.0, -11.0, 13.0]),
                   g.direction)
    inv = sitk.AffineTransform(3)  # resampling: follow-up point -> baseline point
    inv.SetMatrix(tuple(float(v) for v in rot.T.ravel()))
    inv.SetTranslation(tuple(float(v) for v in -rot.T @ shift))
    fu = sitk.GetArrayFromImage(sitk.Resample(
        g.to_sitk(other.ct_noncontrast_hu), fu_grid.to_sitk(np.zeros(fu_grid.shape_zyx, np.float32)),
        inv, sitk.sitkLinear, -1000.0, sitk.sitkFloat32))
    print(f"phantom {size}: CT {g.shape_zyx} at {g.spacing_xyz_mm} mm; follow-up moved by 30 mm, "
          f"10 deg about z, 3 deg about x (set-up {time.perf_counter() - t0:.1f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / REFERENCE_FILE

        def build():
            ref = reference_volume(base.ct_noncontrast_hu, g, resample_mm=rcfg["resample_mm"],
                                   frame_of_reference_uid="1.2.3.1", series_uid="1.2.3.10")
            write_reference(path, ref)
            return ref

        t_ref, ref_b = _median_time(build, repeat)
        print(f"reference build + write: {t_ref:.3f} s (median of {repeat}); "
              f"{ref_b.hu.shape} voxels of {ref_b.spacing_xyz_mm} mm, "
              f"{path.stat().st_size / 1024:.0f} kB")
    ref_f = reference_volume(fu, fu_grid, resample_mm=rcfg["resample_mm"],
                             frame_of_reference_uid="1.2.3.2", series_uid="1.2.3.20")
    centres = np.array([les.centre_lps_mm for les in base.design.lesions])
    centres_fu = centres @ rot.T + shift
    for label, cfg in (("configured (affine %s)" % rcfg["affine"], rcfg),
                       ("rigid only", {**rcfg, "affine": False})):
        t_reg, res = _median_time(lambda: register_followup(ref_b, ref_f, cfg), repeat)
        err = np.linalg.norm(res.to_baseline(centres_fu) - centres, axis=1)
        t_match, right, n = _match_time(res, centres, centres_fu, max_mm, repeat)
        _report(label, res, t_reg, err, t_match, right, n)


def bench_archive(folder: Path, repeat: int, cfg: dict) -> None:
    from pipeline.io.index import scan_archive
    from pipeline.io.study_loader import StudyInputs, load_images
    from pipeline.sheet import build_study_sheet

    truth = json.loads((folder / "truth.json").read_text())
    tps = sorted(truth["followup"]["timepoints"], key=lambda t: int(t["index"]))
    index = scan_archive(folder)
    sheet = build_study_sheet(index)
    rcfg, max_mm = cfg["followup"]["registration"], cfg["followup"]["matching"]["max_distance_mm"]
    canon = np.array([les.centre_lps_mm for les in P.lesion_designs("small")])
    refs, mats = [], []
    for tp in tps:
        rows = sheet[sheet["study_uid"].astype(str) == str(tp["study_uid"])]
        if rows.empty:
            raise SystemExit(f"study {tp['study_uid']} of truth.json is not in the archive {folder}")
        img = load_images(StudyInputs(rows.iloc[0].to_dict(), index.files, folder), cfg)
        vol = img.ct_by_role.get("noncontrast") or next(iter(img.ct_by_role.values()))
        t_ref, ref = _median_time(lambda: reference_volume(
            vol.array, vol.grid, resample_mm=rcfg["resample_mm"],
            frame_of_reference_uid=vol.frame_of_reference_uid, series_uid=vol.series_uid), repeat)
        print(f"timepoint {tp['index']}: CT {vol.grid.shape_zyx}, reference {t_ref:.3f} s")
        refs.append(ref)
        mats.append(np.asarray(tp["patient_to_scanner"], float).reshape(4, 4))
    p0 = mats[0]
    bl = canon @ p0[:3, :3].T + p0[:3, 3]
    for tp, ref, pi in zip(tps[1:], refs[1:], mats[1:]):
        t_reg, res = _median_time(lambda: register_followup(refs[0], ref, rcfg), repeat)
        fu_pts = canon @ pi[:3, :3].T + pi[:3, 3]
        err = np.linalg.norm(res.to_baseline(fu_pts) - bl, axis=1)
        t_match, right, n = _match_time(res, bl, fu_pts, max_mm, repeat)
        _report(f"timepoint {tp['index']} -> baseline", res, t_reg, err, t_match, right, n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["full", "small"], default="full")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--archive", type=Path, default=None,
                    help="patient folder of a timepoint phantom (hitit phantom --timepoints N)")
    args = ap.parse_args()
    cfg = load_config()
    if args.archive is not None:
        bench_archive(args.archive, args.repeat, cfg)
    else:
        bench_in_memory(args.size, args.repeat, cfg["followup"]["registration"],
                        cfg["followup"]["matching"]["max_distance_mm"])


if __name__ == "__main__":
    main()
