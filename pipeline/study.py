"""One study end to end: load each series once, map masks once, crop per lesion, call the stages.

Data flow: study-sheet row -> ``io`` loads CT, contrast CT and PET once -> lesion and organ masks
on the grid of the CT they were drawn on -> body mask and skin surface once -> for every lesion
the feature and anatomy functions work on the lesion crop -> ``ranking`` sees only the lesion
table -> tables and ``provenance.json`` are written atomically.

A :class:`~pipeline.errors.PipelineError` in a stage that the study cannot do without (CT or
masks) marks the study failed, with the file, series and tag in ``failures.csv``; an error in an
optional input (PET, SUV tags, organ masks) degrades the affected columns to empty values with a
reason. Unexpected exceptions are recorded as ``InternalError`` with the traceback in the job
log; the job still writes its (empty) tables so that one study never stops the batch.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pandas as pd

from pipeline import config as cfgmod
from pipeline.columns import order_lesion_columns
from pipeline.errors import InternalError, PipelineError
from pipeline.io.provenance import StageTimer, now_iso, package_versions, write_json
from pipeline.io.study_loader import (
    StudyInputs,
    empty_lesion_columns,
    lesion_ids,
    load_images,
    load_study_masks,
)
from pipeline.io.suv import audit_failure_records
from pipeline.io.tables import failures_frame, write_table

log = logging.getLogger(__name__)


def run_study(
    row: dict,
    files: pd.DataFrame,
    archive_root: Path,
    cfg: dict,
    out_dir: Path,
) -> dict:
    """Process one study and write its tables and provenance into ``out_dir``.

    Parameters
    ----------
    row : one row of the study sheet (``cohort/studies.csv``).
    files : the index's file table (path relative to ``archive_root``, series_uid ...).
    archive_root : root of the DICOM archive.
    cfg : validated configuration.
    out_dir : ``RESULTS/studies/<patient_dir>/<study_dir>``.

    Returns
    -------
    The provenance dict (also written to ``out_dir/provenance.json``).
    """
    out_dir = Path(out_dir)
    timer = StageTimer()
    inp = StudyInputs(row, files, Path(archive_root))
    patient_id, study_uid = inp.uid("patient_id"), inp.uid("study_uid")
    failures: list[dict] = []
    warnings: list[str] = []
    lesions = pd.DataFrame()
    used_series: dict[str, str] = {}
    status = "done"
    try:
        lesions, used_series, warnings = _process(inp, cfg, timer, out_dir)
    except PipelineError as exc:
        status = "failed"
        log.error("study failed at stage %s: %s", exc.stage, exc)
        failures.append({"patient_id": patient_id, "study_uid": study_uid, "stage": exc.stage,
                         **exc.as_record()})
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the batch
        status = "failed"
        log.error("internal error: %s\n%s", exc, traceback.format_exc())
        err = InternalError(f"{type(exc).__name__}: {exc}", hint="this is a bug; see the job log")
        failures.append({"patient_id": patient_id, "study_uid": study_uid, "stage": "internal",
                         **err.as_record()})

    # The declared columns, in the declared order (pipeline/columns.py); an undeclared
    # produced column is a bug and raises InternalError.
    lesions = lesions.reindex(columns=order_lesion_columns(list(lesions.columns)))
    write_table(lesions, out_dir / "lesions.csv")
    suv_audit = used_series.pop("suv_audit", None)
    failures.extend(used_series.pop("suv_refusals", []))  # severity "warning": the study goes on
    write_table(failures_frame(failures), out_dir / "failures.csv")
    feature_prov = used_series.pop("features", None)
    prov = {
        "status": status,
        "patient_id_sanitized": out_dir.parent.name,
        "study_uid": study_uid,
        "finished": now_iso(),
        "config_hash": cfgmod.config_hash(cfg),
        "versions": package_versions(),
        "inputs": {"series": used_series, "study_sheet_row": {k: ("" if pd.isna(v) else v) for k, v in row.items()}},
        "suv_audit": suv_audit,
        "features": feature_prov,
        "stages": timer.stages,
        "total_wall_s": timer.total_s(),
        "n_lesions": int(len(lesions)),
        "warnings": warnings,
        "failures": failures,
    }
    prov["inputs"]["study_sheet_row"].pop("patient_name", None)
    write_json(out_dir / "provenance.json", prov)
    return prov


def _process(inp: StudyInputs, cfg: dict, timer: StageTimer, out_dir: Path):
    """Stage calls of one study: images -> masks -> whole-study preparation -> lesion rows -> key images.

    Returns the lesion table, the provenance inputs (series used, SUV audit, feature
    provenance) and the warnings, in stage order.
    """
    from pipeline.anatomy import stage as anatomy_stage
    from pipeline.anatomy.organs import structures_of_codes
    from pipeline.features import stage as feature_stage

    with timer.stage("load_images"):
        img = load_images(inp, cfg)
    with timer.stage("load_masks"):
        sm = load_study_masks(inp, img.grids_by_series_uid, cfg)
    warnings = [*img.warnings, *sm.warnings]
    used = {**img.used_series, **sm.used_series}
    masks, grid = list(sm.nonempty), sm.lesions[0].grid  # empty segments: rows of zeros below

    with timer.stage("prepare"):  # whole-study work, once
        actx = anatomy_stage.prepare(img.ct_by_role, grid, sm.organs, cfg,
                                     organ_segment_names=structures_of_codes(sm.organ_segment_codes))
        warnings.extend(f"anatomy: {n}" for n in actx.notes)
        fctx = feature_stage.prepare(img.ct_by_role, img.pet_suv, img.pet_activity_bqml,
                                     img.suv_reason, cfg, lesion_grid=grid, organs=actx.organs,
                                     lesions=masks, suv_audit=img.suv_audit)

    rows = []
    all_ids = lesion_ids([m.name for m in sm.lesions])
    ids = [lid for lid, m in zip(all_ids, sm.lesions) if m.voxel_count > 0]
    with timer.stage("lesions"):  # per lesion: crops only
        for lid, m, on_uid in zip(all_ids, sm.lesions, sm.lesion_grid_series_uids):
            row = {
                "patient_id": inp.uid("patient_id"), "study_uid": inp.uid("study_uid"),
                "lesion_id": lid, "lesion_label": m.name, "mask_source": m.source.value,
                "mask_series_uid": m.source_uid, "segment_number": m.segment_number,
                "tracking_uid": m.tracking_uid, "mask_referenced_series_uid": on_uid,
                "ct_slice_spacing_mm": float(m.grid.spacing_xyz_mm[2]), "lesion_empty": False,
            }
            if m.voxel_count == 0:  # declared, no voxel: zeros and reasons, no feature call
                row.update(empty_lesion_columns(m))
                rows.append(row)
                continue
            feats = feature_stage.lesion_columns(m, fctx, cfg)
            row.update(feats)
            row.update(anatomy_stage.lesion_columns(m, actx, cfg, features=feats))
            rows.append(row)

    with timer.stage("key_images"):  # from the volumes already in memory (small slice crops)
        try:
            from pipeline.report.keyimages import write_key_images

            write_key_images(out_dir, img.ct_by_series_uid, masks, ids, suv=img.pet_suv,
                             rows=[r for r in rows if not r["lesion_empty"]])
        except Exception as exc:  # noqa: BLE001 - key images never fail the study
            log.warning("key images not written: %s", exc)
            warnings.append(f"key images not written: {exc}")
    if img.suv_audit is not None:
        used["suv_audit"] = img.suv_audit.as_dict()
        used["suv_refusals"] = audit_failure_records(img.suv_audit, inp.uid("patient_id"),
                                                     inp.uid("study_uid"))
    used["features"] = fctx.provenance()
    warnings.extend(str(n) for n in fctx.frames.notes)
    return pd.DataFrame(rows), used, warnings


def run_ranking(results: Path, row: dict, sheet: pd.DataFrame, cfg: dict, out_dir: Path) -> dict:
    """Rank one study's lesions from its lesion table (and the patient's earlier studies).

    Runs after the study job (and after the patient's earlier studies), so that the ranking sees
    only tables, never images. Then the follow-up step
    (:func:`pipeline.followup.tracking.run_followup`: tracks, responses, ``followup_*`` files)
    and the re-planning with the categories locked at baseline
    (:func:`pipeline.followup.replan.replan`). Writes ``ranking.csv`` and
    ``ranking_provenance.json`` into ``out_dir``.

    Parameters
    ----------
    results : RESULTS folder.
    row : this study's study-sheet row.
    sheet : the whole study sheet; the patient's earlier studies are
        :func:`pipeline.sheet.earlier_studies` (the list the Snakefile's rank inputs wait for).
    cfg : validated configuration.
    out_dir : ``RESULTS/studies/<patient_dir>/<study_dir>``.
    """
    import hashlib
    import time

    from pipeline.cohort import study_output_dir
    from pipeline.followup.replan import replan
    from pipeline.followup.tracking import run_followup
    from pipeline.io.tables import read_table
    from pipeline.ranking.longitudinal import rank_patient
    from pipeline.ranking.select import RANKING_COLUMNS
    from pipeline.sheet import earlier_studies

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    lesions_path = out_dir / "lesions.csv"
    lesions = read_table(lesions_path)
    prior = []
    date = str(row.get("study_date", "") or "")
    for r in earlier_studies(sheet, str(row["patient_dir"]), str(row["study_dir"])):
        p = study_output_dir(results, r) / "lesions.csv"
        if p.exists():
            prior.append((r["study_uid"], r["study_date"], read_table(p)))
    warnings: list[str] = []
    if lesions.empty or "volume_ml" not in lesions.columns:
        ranking = pd.DataFrame(columns=RANKING_COLUMNS)
    else:
        uid = str(row.get("study_uid", ""))
        usable = [p for p in prior if not p[2].empty and "volume_ml" in p[2].columns]
        ranked = rank_patient(usable + [(uid, date, lesions)], cfg["ranking"])
        ranking = ranked[uid]
        warnings = list(ranking.attrs.get("warnings", []))
    fu = run_followup(results, row, sheet, cfg, out_dir, lesions=lesions, ranking=ranking)
    ranking = replan(ranking, fu.current, lesions, cfg["ranking"],
                     timepoint_index=fu.timepoint_index)
    warnings = list(ranking.attrs.get("warnings", warnings))
    write_table(ranking, out_dir / "ranking.csv")
    prov = {
        "study_uid": str(row.get("study_uid", "")),
        "finished": now_iso(),
        "config_hash": cfgmod.config_hash(cfg),
        "versions": package_versions(),
        "inputs": {
            "lesions_sha256": hashlib.sha256(lesions_path.read_bytes()).hexdigest(),
            "prior_studies": [p[0] for p in prior],
        },
        "study_date": date,
        "score_source": str(ranking["score_source"].iloc[0])
        if len(ranking) and "score_source" in ranking.columns else "",
        "model": cfg["ranking"].get("model"),
        "sidecar": cfg["ranking"].get("sidecar"),
        "n_lesions": int(len(ranking)),
        "followup": {"timepoint_index": fu.timepoint_index,
                     "baseline_study_uid": fu.info.get("baseline_study_uid", ""),
                     "flagged_for_review": fu.info.get("flagged_for_review", False)},
        "warnings": warnings,
        "wall_s": round(time.perf_counter() - t0, 4),
    }
    write_json(out_dir / "ranking_provenance.json", prov)
    return prov
