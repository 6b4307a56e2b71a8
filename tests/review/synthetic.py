"""A tiny results folder for the store and app tests: a study sheet and per-study ranking.csv."""

from __future__ import annotations

import csv
from pathlib import Path

RANK_COLUMNS = ["patient_id", "study_uid", "lesion_id", "lesion_label", "role", "tier", "rank",
                "reasons", "explanation", "measurable", "planned_volume_ml"]
#: (lesion_id, label, role, tier, rank, measurable, planned_volume_ml)
LESIONS = [
    ("les_a", "liver A", "inject", "recommended", "1", "True", "2.0"),
    ("les_b", "node B", "monitor", "acceptable", "2", "True", ""),
    ("les_c", "lung C", "none", "not_suitable", "", "False", ""),
]


def make_results(root: Path, n_patients: int = 2, label_override: dict | None = None) -> Path:
    """``root`` with ``cohort/studies.csv`` and one ranked study per patient; returns ``root``."""
    sheet = []
    for i in range(1, n_patients + 1):
        pid, suid = f"P{i:03d}", f"1.2.3.{i}"
        d = root / "studies" / pid / suid
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "ranking.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(RANK_COLUMNS)
            for lid, lab, role, tier, rank, meas, vol in LESIONS:
                lab = (label_override or {}).get(lid, lab)
                w.writerow([pid, suid, lid, lab, role, tier, rank, "R1;R2", f"{lab}: {tier}", meas, vol])
        sheet.append({"patient_id": pid, "study_uid": suid, "patient_dir": pid, "study_dir": suid,
                      "study_date": f"202401{i:02d}"})
    (root / "cohort").mkdir(parents=True, exist_ok=True)
    with open(root / "cohort" / "studies.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(sheet[0]))
        w.writeheader()
        w.writerows(sheet)
    return root
