"""Batch bookkeeping: per-study output folders and the cohort tables.

The study sheet itself (with its sanitized ``patient_dir`` / ``study_dir``) is owned by
:mod:`pipeline.sheet`.

The cohort step only concatenates per-study tables; it computes nothing new. The follow-up
tables (``cohort/response.csv``, ``cohort/lesion_tracking.csv``) are those of each patient's
latest dated study (its ``followup_*.csv`` hold the patient's whole history,
:mod:`pipeline.followup.tracking`); a patient removed from the sheet leaves them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError
from pipeline.followup.tracking import followup_failures
from pipeline.io.provenance import write_json
from pipeline.io.tables import FAILURE_COLUMNS, failures_frame, read_table, write_table

log = logging.getLogger(__name__)


class OutputPathError(PipelineError):
    """A study's output folder would lie outside the results folder."""

    stage = "workflow"


def study_output_dir(results: Path, row: dict) -> Path:
    """``RESULTS/studies/<patient_dir>/<study_dir>``; never outside ``RESULTS``.

    Raises
    ------
    OutputPathError
        When ``patient_dir`` / ``study_dir`` lead outside ``RESULTS/studies`` (e.g. ``..`` or an
        absolute path in an edited sheet).
    """
    results = Path(results).resolve()
    pdir, sdir = str(row["patient_dir"]), str(row["study_dir"])
    out = (results / "studies" / pdir / sdir).resolve()
    if (results / "studies") not in out.parents:
        raise OutputPathError(
            f"refusing to write outside the results folder: study folder {pdir}/{sdir} "
            f"resolves to {out}, expected a folder under {results / 'studies'}",
            tag="patient_dir/study_dir",
            hint="patient_dir and study_dir must be plain folder names; they are recomputed from "
            "patient_id and study_uid when the index step writes cohort/studies.csv, so re-run "
            "the index step rather than editing them")
    return out


def index_failures(problems: pd.DataFrame) -> list[dict]:
    """Index problems (unreadable, truncated, non-DICOM files) as failure records."""
    from pipeline.io.integrity import NOT_DICOM

    recs = []
    for p in problems.to_dict(orient="records"):
        if p.get("error_class") == NOT_DICOM:
            continue  # skipped, listed in index/problems.csv
        recs.append({
            "patient_id": p.get("patient_id", "") or "", "study_uid": p.get("study_uid", "") or "",
            "stage": "index", "error_class": p.get("error_class", "DicomReadError"),
            "message": p.get("reason", ""), "file": p.get("path", ""),
            "series_uid": p.get("series_uid", "") or "", "tag": p.get("tag", "") or "",
            "hint": p.get("hint", "") or "",
        })
    return recs


def followup_tables(results: Path, sheet: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cohort's follow-up tables: per patient, the ``followup_response.csv`` and
    ``followup_tracking.csv`` of the latest dated study that has them.

    Returns
    -------
    (response, lesion_tracking) : DataFrames with
        :data:`~pipeline.followup.response.RESPONSE_COLUMNS` and
        :data:`~pipeline.followup.tracking.LESION_TRACKING_COLUMNS` (header only when empty).
    """
    from pipeline.followup.response import RESPONSE_COLUMNS
    from pipeline.followup.tracking import LESION_TRACKING_COLUMNS, RESPONSE_NAME, TRACKING_NAME
    from pipeline.sheet import study_order_key

    responses, tracks = [], []
    rows = [r for r in sheet.to_dict(orient="records") if str(r.get("study_date", "") or "")]
    by_patient: dict[str, list[dict]] = {}
    for r in rows:
        by_patient.setdefault(str(r["patient_dir"]), []).append(r)
    for pdir in sorted(by_patient):
        for r in sorted(by_patient[pdir], key=study_order_key, reverse=True):
            d = study_output_dir(results, r)
            if (d / RESPONSE_NAME).is_file() and (d / TRACKING_NAME).is_file():
                rs = pd.read_csv(d / RESPONSE_NAME, dtype=str, keep_default_na=False)
                tr = pd.read_csv(d / TRACKING_NAME, dtype=str, keep_default_na=False)
                if len(rs):
                    responses.append(rs.reindex(columns=RESPONSE_COLUMNS))
                if len(tr):
                    tracks.append(tr.reindex(columns=LESION_TRACKING_COLUMNS))
                break
    resp = (pd.concat(responses, ignore_index=True) if responses
            else pd.DataFrame(columns=RESPONSE_COLUMNS))
    trk = (pd.concat(tracks, ignore_index=True) if tracks
           else pd.DataFrame(columns=LESION_TRACKING_COLUMNS))
    return resp, trk


def build_cohort(results: Path, sheet: pd.DataFrame, problems: pd.DataFrame | None) -> dict:
    """Concatenate the per-study tables into ``RESULTS/cohort``.

    Returns a summary dict (also written to ``cohort/summary.json``).
    """
    results = Path(results)
    cohort = results / "cohort"
    lesions, rankings, failures, status = [], [], [], []
    for row in sheet.to_dict(orient="records"):
        d = study_output_dir(results, row)
        prov_path = d / "provenance.json"
        ids = {"patient_dir": row["patient_dir"], "study_dir": row.get("study_dir", ""),
               "study_uid": row["study_uid"]}
        job_log = f"logs/studies/{row['patient_dir']}/{row.get('study_dir', '')}.log"
        if not prov_path.exists():
            failures.append({"patient_id": row.get("patient_id", ""), "study_uid": row.get("study_uid", ""),
                             "stage": "workflow", "error_class": "MissingOutput",
                             "message": "the study job did not finish (no provenance.json): lost to "
                                        "the scheduler, out of memory or time, or interrupted",
                             "file": str(d), "hint": f"see {job_log}; run again to retry it"})
            status.append({**ids, "status": "missing"})
            continue
        prov = json.loads(prov_path.read_text())
        st = prov.get("status", "unknown")
        les = read_table(d / "lesions.csv")
        if not les.empty:
            lesions.append(les)
        if (d / "ranking.csv").exists():
            rk = read_table(d / "ranking.csv")
            if not rk.empty:
                rankings.append(rk)
        else:
            failures.append({"patient_id": row.get("patient_id", ""), "study_uid": row.get("study_uid", ""),
                             "stage": "rank", "error_class": "MissingOutput",
                             "message": "the rank job did not finish (no ranking.csv)", "file": str(d),
                             "hint": f"see logs/rank/{row['patient_dir']}/{row.get('study_dir', '')}.log; "
                                     "run again to retry it"})
            st = "not_ranked" if st == "done" else st
        status.append({**ids, "status": st, "n_lesions": prov.get("n_lesions", 0),
                       "wall_s": prov.get("total_wall_s")})
        fl = pd.read_csv(d / "failures.csv", dtype=str, keep_default_na=False)
        if not fl.empty:
            failures.extend(fl.to_dict(orient="records"))
        failures.extend(followup_failures(d))
    if problems is not None and not problems.empty:
        failures = index_failures(problems) + failures
    les_df = pd.concat(lesions, ignore_index=True) if lesions else pd.DataFrame(
        columns=["patient_id", "study_uid", "lesion_id", "lesion_label"])
    rk_df = pd.concat(rankings, ignore_index=True) if rankings else pd.DataFrame(
        columns=["patient_id", "study_uid", "lesion_id", "lesion_label", "role", "tier", "rank",
                 "score", "reasons", "explanation"])
    write_table(les_df, cohort / "lesions.csv", parquet=True)
    write_table(rk_df, cohort / "ranking.csv")
    write_table(failures_frame(failures)[FAILURE_COLUMNS], cohort / "failures.csv")
    resp_df, track_df = followup_tables(results, sheet)
    write_table(resp_df, cohort / "response.csv")
    write_table(track_df, cohort / "lesion_tracking.csv")
    write_table(pd.DataFrame(status), cohort / "status.csv")
    summary = {
        "studies": len(sheet),
        "studies_done": sum(1 for s in status if s["status"] == "done"),
        "studies_failed": sum(1 for s in status if s["status"] != "done"),
        "lesions": int(len(les_df)),
        "followup_patients": int(resp_df["patient_id"].nunique()) if len(resp_df) else 0,
        "failures": len(failures),
        "skipped_non_dicom_files": 0 if problems is None else int(
            (problems.get("error_class", pd.Series(dtype=str)) == "NotDicom").sum()),
        "tables": {
            "lesions": str(cohort / "lesions.csv"),
            "lesions_parquet": str(cohort / "lesions.parquet"),
            "ranking": str(cohort / "ranking.csv"),
            "failures": str(cohort / "failures.csv"),
            "status": str(cohort / "status.csv"),
            "response": str(cohort / "response.csv"),
            "lesion_tracking": str(cohort / "lesion_tracking.csv"),
        },
    }
    write_json(cohort / "summary.json", summary)
    return summary
