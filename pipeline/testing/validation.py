"""Compare a run on phantom data with the phantom's ground truth (``truth.json``).

Used by ``hitit demo`` to show a new user that the installation measures what it should, and by
the tests. Tolerances are those of the acceptance criteria:
volume 5 % of the voxelized truth, longest diameter one voxel diagonal, centroid 1 mm, skin depth
2 mm, SUVmax 1 %.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TOLERANCES = {
    "volume_rel": 0.05,
    "centroid_mm": 1.0,
    "skin_depth_mm": 2.0,
    "suv_max_rel": 0.01,
}


@dataclass(frozen=True)
class Check:
    patient_id: str
    lesion: str
    quantity: str
    measured: float | None
    truth: float | None
    error: float | None
    tolerance: float
    unit: str

    @property
    def ok(self) -> bool:
        return self.error is not None and abs(self.error) <= self.tolerance


def truth_checks(lesions: pd.DataFrame, truth: dict) -> list[Check]:
    """Checks of one phantom patient's lesion rows against its truth dict."""
    out: list[Check] = []
    pid = truth["patient_id"]
    g = truth["ct_grid"]
    sp = np.asarray(g["spacing_xyz_mm"], dtype=float)
    voxel_diag = float(np.sqrt((sp ** 2).sum()))
    rows = lesions[lesions["patient_id"].astype(str) == str(pid)]
    by_label = {r["lesion_label"]: r for r in rows.to_dict(orient="records")}
    for t in truth["lesions"]:
        r = by_label.get(t["name"])
        if r is None:
            out.append(Check(pid, t["name"], "present", None, 1.0, None, 0.0, ""))
            continue

        def num(v):
            return None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)

        vol = num(r.get("volume_ml"))
        tv = float(t["volume_ml_voxelized"])
        out.append(Check(pid, t["name"], "volume_ml", vol, tv,
                         None if vol is None else (vol - tv) / tv, TOLERANCES["volume_rel"], "rel"))
        ld = num(r.get("longest_diameter_mm"))
        tl = float(t["longest_axial_diameter_mm"])
        out.append(Check(pid, t["name"], "longest_diameter_mm", ld, tl,
                         None if ld is None else ld - tl, voxel_diag, "mm"))
        c = np.array([np.nan if num(r.get(f"centroid_{a}_mm")) is None
                      else num(r.get(f"centroid_{a}_mm")) for a in "xyz"])
        tc = np.asarray(t["centroid_lps_mm_voxelized"], dtype=float)
        err = float(np.linalg.norm(c - tc)) if np.all(np.isfinite(c)) else None
        out.append(Check(pid, t["name"], "centroid_mm", None if err is None else 0.0, 0.0, err,
                         TOLERANCES["centroid_mm"], "mm"))
        sd = num(r.get("skin_depth_mm"))
        ts = float(t["skin_depth_mm"])
        out.append(Check(pid, t["name"], "skin_depth_mm", sd, ts, None if sd is None else sd - ts,
                         TOLERANCES["skin_depth_mm"], "mm"))
        sm = num(r.get("suv_max"))
        tsm = t.get("suv_max_voxelized")
        if tsm is not None:
            out.append(Check(pid, t["name"], "suv_max", sm, float(tsm),
                             None if sm is None else (sm - tsm) / tsm, TOLERANCES["suv_max_rel"], "rel"))
    return out


def compare_with_truth(results: Path, archive: Path) -> str:
    """A readable report of measured versus true values for every phantom patient in ``archive``."""
    lesions_path = Path(results) / "cohort" / "lesions.csv"
    if not lesions_path.exists():
        return f"no lesion table at {lesions_path}"
    lesions = pd.read_csv(lesions_path, dtype={"patient_id": str})
    checks: list[Check] = []
    for tp in sorted(Path(archive).glob("*/truth.json")):
        checks.extend(truth_checks(lesions, json.loads(tp.read_text())))
    if not checks:
        return "no truth.json found in the archive: nothing to compare"
    n_ok = sum(c.ok for c in checks)
    lines = [f"Ground-truth check: {n_ok}/{len(checks)} measurements within tolerance"]
    by_q: dict[str, list[Check]] = {}
    for c in checks:
        by_q.setdefault(c.quantity, []).append(c)
    for q, cs in by_q.items():
        errs = [abs(c.error) for c in cs if c.error is not None]
        worst = max(errs) if errs else float("nan")
        unit = cs[0].unit
        shown = f"{worst * 100:.2f} %" if unit == "rel" else f"{worst:.2f} {unit}"
        tol = cs[0].tolerance
        tol_s = f"{tol * 100:.0f} %" if unit == "rel" else f"{tol:.2f} {unit}"
        lines.append(f"  {q:22s} worst error {shown:>10s}  (tolerance {tol_s}), "
                     f"{sum(c.ok for c in cs)}/{len(cs)} ok")
    for c in checks:
        if not c.ok:
            lines.append(f"  OUT OF TOLERANCE: {c.patient_id} {c.lesion} {c.quantity}: "
                         f"measured {c.measured}, truth {c.truth}, error {c.error}")
    return "\n".join(lines)
