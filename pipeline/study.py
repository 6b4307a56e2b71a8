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
import re
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import config as cfgmod
from pipeline.errors import InternalError, PipelineError, SegmentationError
from pipeline.io.provenance import StageTimer, now_iso, package_versions, write_json
from pipeline.io.tables import failures_frame, write_table
from pipeline.records import LesionMask, SegmentKind

log = logging.getLogger(__name__)

LESION_ID_COLUMNS = [
    "patient_id", "study_uid", "lesion_id", "lesion_label", "mask_source", "mask_series_uid",
    "segment_number", "tracking_uid",
]


def lesion_ids(labels: list[str]) -> list[str]:
    """Stable, readable lesion identifiers from lesion labels (order-independent for unique labels).

    Lowercase ASCII slug of the label; a label that occurs more than once gets ``-2``, ``-3`` ...
    in input order (SEG segment number / ROI number order).
    """
    out, seen = [], {}
    for label in labels:
        slug = re.sub(r"[^a-z0-9]+", "_", str(label).lower()).strip("_") or "lesion"
        n = seen.get(slug, 0) + 1
        seen[slug] = n
        out.append(slug if n == 1 else f"{slug}-{n}")
    return out


class StudyInputs:
    """Paths of the series of one study, from the index and the study sheet."""

    def __init__(self, row: dict, files: pd.DataFrame, root: Path) -> None:
        self.row = row
        self.root = Path(root)
        self._files = files

    def paths(self, series_uid: str) -> list[Path]:
        sel = self._files[self._files["series_uid"] == series_uid]
        return [self.root / p for p in sel["path"].tolist()]

    def sop_uids(self, series_uid: str) -> list[str]:
        sel = self._files[self._files["series_uid"] == series_uid]
        return [u for u in sel["sop_instance_uid"].tolist() if u]

    def uid(self, key: str) -> str:
        v = self.row.get(key)
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def _load_masks(inp: StudyInputs, source: str, ref: str, grids: dict, cfg: dict) -> list[LesionMask]:
    """Read one segmentation object (SEG, RTSTRUCT or label map) onto its referenced grid."""
    from pipeline.io import labelmap, rtstruct, seg

    pats = dict(
        lesion_name_patterns=tuple(cfg["index"]["lesion_name_patterns"]),
        organ_name_patterns=tuple(cfg["index"]["organ_name_patterns"]),
    )
    if source == "seg":
        paths = inp.paths(ref)
        if not paths:
            raise SegmentationError("SEG series listed in the study sheet has no files", series_uid=ref)
        return seg.read_seg(paths[0], grids=grids, **pats)
    if source == "rtstruct":
        paths = inp.paths(ref)
        if not paths:
            raise SegmentationError("RTSTRUCT listed in the study sheet has no files", series_uid=ref)
        ref_uid = _rtstruct_reference(paths[0], grids)
        return rtstruct.read_rtstruct(paths[0], grid=grids[ref_uid], series_uid=ref_uid,
                                      sop_instance_uids=inp.sop_uids(ref_uid), **pats)
    if source == "labelmap":
        path = inp.root / ref
        side = labelmap.read_sidecar(path)
        ref_uid = str(side.get("referenced_series_uid", ""))
        if ref_uid not in grids:
            raise SegmentationError(
                f"label map refers to series {ref_uid or '(none)'} which is not loaded for this study",
                file=path, hint="set referenced_series_uid in the JSON sidecar to the CT it was drawn on",
            )
        return labelmap.read_labelmap(path, grid=grids[ref_uid], names=side["names"],
                                      kind=SegmentKind(side["kind"]), referenced_series_uid=ref_uid)
    if source == "totalseg":
        from pipeline.anatomy.organs import read_totalseg_folder

        folder = inp.root / ref
        grid = next(iter(grids.values()), None)
        return list(read_totalseg_folder(folder, grid=grid, source_uid=ref).values())
    raise SegmentationError(f"unknown mask source {source!r} in the study sheet")


def _rtstruct_reference(path: Path, grids: dict) -> str:
    """SeriesInstanceUID an RTSTRUCT refers to (must be a loaded series)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    uids = []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []):
        for st in fr.get("RTReferencedStudySequence", []):
            for se in st.get("RTReferencedSeriesSequence", []):
                uids.append(str(se.SeriesInstanceUID))
    for u in uids:
        if u in grids:
            return u
    raise SegmentationError(
        f"RTSTRUCT refers to series {uids or '(none)'}, none of which is a loaded image series of "
        "this study",
        file=path, series_uid=str(ds.get("SeriesInstanceUID", "")),
        tag="RTReferencedSeriesSequence (3006,0014)",
        hint="add the referenced CT to the archive or fix the study sheet",
    )


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

    if lesions.empty:
        lesions = pd.DataFrame(columns=LESION_ID_COLUMNS)
    write_table(lesions, out_dir / "lesions.csv")
    write_table(failures_frame(failures), out_dir / "failures.csv")
    suv_audit = used_series.pop("suv_audit", None)
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
    from pipeline.anatomy import stage as anatomy_stage
    from pipeline.features import stage as feature_stage
    from pipeline.io import dicom, suv
    warnings: list[str] = []
    used: dict[str, str] = {}
    patient_id, study_uid = inp.uid("patient_id"), inp.uid("study_uid")

    # ---- load each image series once
    on_irregular = cfg["index"]["on_irregular"]
    with timer.stage("load_images"):
        cts: dict[str, object] = {}
        by_uid: dict[str, object] = {}
        for key, role in (("ct_series_uid", "noncontrast"), ("ce_ct_series_uid", "contrast")):
            uid = inp.uid(key)
            if not uid:
                continue
            if uid not in by_uid:
                by_uid[uid] = dicom.load_ct(inp.paths(uid), series_uid=uid,
                                            on_irregular=on_irregular)
                warnings.extend(f"CT {uid}: {n}" for n in by_uid[uid].notes
                                if n.startswith("RESAMPLED") or "duplicate" in n
                                or "replaced by" in n)
            cts[role] = by_uid[uid]
            used[key] = uid
        suv_vol = activity = audit = None
        suv_reason = ""
        pet_uid = inp.uid("pet_series_uid")
        grids = {uid: v.grid for uid, v in by_uid.items()}
        if pet_uid:
            try:
                raw, headers = dicom.load_pet_activity(inp.paths(pet_uid), series_uid=pet_uid,
                                                       on_irregular=on_irregular)
                used["pet_series_uid"] = pet_uid
                grids[pet_uid] = raw.grid
                audit = suv.suv_audit(headers, file_hint=str(inp.paths(pet_uid)[0]), strict=False)
                warnings.extend(f"SUV: {w}" for w in audit.warnings)
                # Bq/mL only when the units allow it (None for GML, CM2ML, CNTS without factor)
                activity = suv.to_activity_bqml(raw, audit)
                if audit.available:
                    suv_vol = suv.to_suv(raw, audit)
                else:
                    suv_reason = f"SUV unavailable: {audit.suv_reason}"
                    warnings.append(suv_reason)
            except PipelineError as exc:
                suv_reason = f"PET unusable: {exc}"
                warnings.append(suv_reason)
        else:
            suv_reason = "no PET series in this study"

    # ---- masks
    with timer.stage("load_masks"):
        source, ref = inp.uid("lesion_mask_source"), inp.uid("lesion_mask_ref")
        if not source or not ref:
            raise SegmentationError(
                "no lesion segmentation (SEG, RTSTRUCT or label map) found for this study",
                hint="add a lesion segmentation to the archive or name one in the study sheet",
            )
        used["lesion_mask"] = ref
        masks = [m for m in _load_masks(inp, source, ref, grids, cfg) if m.kind != SegmentKind.ORGAN]
        masks = [m for m in masks if m.voxel_count > 0]
        if not masks:
            raise SegmentationError("the lesion segmentation holds no non-empty lesion segment",
                                    series_uid=ref)
        organs: dict[str, LesionMask] = {}
        organ_segment_names = None
        osrc, oref = inp.uid("organ_mask_source"), inp.uid("organ_mask_ref")
        if osrc and oref:
            try:
                if osrc == "seg":
                    from pipeline.anatomy.organs import seg_structure_names

                    organ_segment_names = seg_structure_names(inp.paths(oref)[0])
                for m in _load_masks(inp, osrc, oref, grids, cfg):
                    if m.kind != SegmentKind.LESION and m.voxel_count > 0:
                        organs[m.name] = m
                used["organ_mask"] = oref
            except PipelineError as exc:
                warnings.append(f"organ masks unusable, organ will be unknown: {exc}")
                organs = {}

    # ---- whole-study preparation, once
    with timer.stage("prepare"):
        actx = anatomy_stage.prepare(cts, masks[0].grid, organs, cfg,
                                     organ_segment_names=organ_segment_names)
        warnings.extend(f"anatomy: {n}" for n in actx.notes)
        fctx = feature_stage.prepare(cts, suv_vol, activity, suv_reason, cfg,
                                     lesion_grid=masks[0].grid, organs=actx.organs,
                                     lesions=masks, suv_audit=audit)

    # ---- per lesion: crops only
    rows = []
    ids = lesion_ids([m.name for m in masks])
    with timer.stage("lesions"):
        for lid, m in zip(ids, masks):
            row = {
                "patient_id": patient_id, "study_uid": study_uid, "lesion_id": lid,
                "lesion_label": m.name, "mask_source": m.source.value,
                "mask_series_uid": m.source_uid, "segment_number": m.segment_number,
                "tracking_uid": m.tracking_uid,
            }
            feats = feature_stage.lesion_columns(m, fctx, cfg)
            row.update(feats)
            row.update(anatomy_stage.lesion_columns(m, actx, cfg, features=feats))
            rows.append(row)
    lesions = pd.DataFrame(rows)

    # ---- key images from the volumes already in memory (small slice crops only)
    with timer.stage("key_images"):
        try:
            from pipeline.report.keyimages import write_key_images

            write_key_images(out_dir, by_uid, masks, ids, suv=suv_vol, rows=rows)
        except Exception as exc:  # noqa: BLE001 - key images never fail the study
            log.warning("key images not written: %s", exc)
            warnings.append(f"key images not written: {exc}")
    if audit is not None:
        used["suv_audit"] = audit.as_dict()
    used["features"] = fctx.provenance()
    warnings.extend(str(n) for n in fctx.frames.notes)
    return lesions, used, warnings


def run_ranking(results: Path, row: dict, sheet: pd.DataFrame, cfg: dict, out_dir: Path) -> dict:
    """Rank one study's lesions from its lesion table (and the patient's earlier studies).

    Runs after the study job (and after the patient's earlier studies), so that the ranking sees
    only tables, never images. Writes ``ranking.csv`` and ``ranking_provenance.json`` into
    ``out_dir``.

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
        "warnings": warnings,
        "wall_s": round(time.perf_counter() - t0, 4),
    }
    write_json(out_dir / "ranking_provenance.json", prov)
    return prov
