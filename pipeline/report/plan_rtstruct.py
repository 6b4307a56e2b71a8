"""The injection plan of one study as a DICOM RT Structure Set on the planning CT.

``hitit plan-export RESULTS`` writes ``RESULTS/studies/<patient>/<study>/plan_rtstruct.dcm`` for
every study with at least one lesion the tool proposes to inject (a separate command, not a
workflow step: the plan is exported when the team wants to load it on a CT console or in
3D Slicer, and a rerun of the workflow never depends on it).

Content, per injected lesion (``ranking.csv`` ``role == inject``, in rank order):

* ``target <lesion_id>``: a POINT ROI at the needle target (``ranking.csv``
  ``target_x_mm``/``_y_mm``/``_z_mm``), RTROIInterpretedType ``MARKER``;
* ``entry <lesion_id>``: a POINT ROI at the skin entry (``lesions.csv`` ``entry_*_mm``), ``MARKER``;
* ``needle <lesion_id>``: the needle path from entry to target as an OPEN_PLANAR contour of two
  points (two points always lie in a plane), RTROIInterpretedType empty (Type 2: DICOM has no
  defined term for a needle trajectory; ``BRACHY_CHANNEL`` would tell a planning system it is a
  catheter), ROIObservationLabel ``needle path``.

A lesion without a finite target gets no ROI; one without a planned entry gets its target only.
All coordinates are DICOM patient coordinates (LPS, mm) of the planning CT's frame of reference.

Planning CT and references (outputs only, never DICOM): the study's non-contrast CT
(``provenance.json`` ``inputs.series.ct_series_uid``; the contrast CT when there is none), its
SOP class/instance UIDs, frame of reference and slice positions from the archive index
(``RESULTS/index/files.csv``). ``ReferencedFrameOfReferenceSequence`` names that frame, the study
and the series with every CT instance (ContourImageSequence); each POINT references the CT slice
it lies on (nearest slice within half the slice spacing). Patient module: ``PatientID`` as in the
study sheet (control characters removed, at most 64 characters), name, birth date and sex empty
(Type 2): no identifying header is copied. UIDs are derived deterministically from the study UID
and the plan's content, so the same plan gives the same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

PLAN_NAME = "plan_rtstruct.dcm"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: Detached Study Management SOP class, what RTReferencedStudySequence items name.
STUDY_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
SERIES_NUMBER = 9902
#: Display colours (RGB): target, entry, needle path.
COLOURS = {"target": [230, 97, 1], "entry": [0, 114, 178], "needle": [240, 228, 66]}


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _read_csv(p: Path) -> pd.DataFrame:
    if not p.is_file():
        return pd.DataFrame()
    try:
        return pd.read_csv(p, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _point(row: dict, prefix: str) -> np.ndarray | None:
    try:
        v = np.array([float(row.get(f"{prefix}_{a}_mm", "")) for a in "xyz"])
    except (TypeError, ValueError):
        return None
    return v if np.all(np.isfinite(v)) else None


def _ds(v: float) -> str:
    """A DS value (at most 16 characters): micrometre precision."""
    s = f"{v:.3f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def plan_points(study_dir: Path) -> list[dict]:
    """The plan of a study: one dict per injected lesion with a target, in rank order.

    Returns
    -------
    list of dict
        ``lesion_id``, ``label``, ``rank``, ``target_lps_mm`` (3,), ``entry_lps_mm`` (3,) or None.
    """
    ranking = _read_csv(Path(study_dir) / "ranking.csv")
    lesions = _read_csv(Path(study_dir) / "lesions.csv")
    if ranking.empty or "role" not in ranking.columns:
        return []
    entry = {r["lesion_id"]: _point(r, "entry") for r in lesions.to_dict("records")} if not lesions.empty else {}
    out = []
    for r in ranking[ranking["role"] == "inject"].to_dict("records"):
        t = _point(r, "target")
        if t is None:
            continue
        try:
            rank = float(r.get("rank") or "nan")
        except ValueError:
            rank = float("nan")
        out.append({"lesion_id": str(r["lesion_id"]), "label": str(r.get("lesion_label") or r["lesion_id"]),
                    "rank": rank, "target_lps_mm": t, "entry_lps_mm": entry.get(r["lesion_id"])})
    out.sort(key=lambda p: (np.isnan(p["rank"]), p["rank"], p["lesion_id"]))
    return out


def _planning_ct(study_dir: Path, files: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    prov = json.loads((study_dir / "provenance.json").read_text()) if (study_dir / "provenance.json").is_file() else {}
    series = (prov.get("inputs") or {}).get("series") or {}
    row = (prov.get("inputs") or {}).get("study_sheet_row") or {}
    for key in ("ct_series_uid", "ce_ct_series_uid"):
        uid = str(series.get(key) or row.get(key) or "")
        sel = files[files["series_uid"].astype(str) == uid] if uid else files.iloc[0:0]
        if len(sel):
            return uid, sel
    raise ConfigError(f"no planning CT of {study_dir} in the archive index",
                      file=study_dir / "provenance.json",
                      hint="the study's CT series (inputs.series.ct_series_uid) must be in "
                           "RESULTS/index/files.csv: rerun `hitit index` on the archive")


def _slice_positions(ct: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, float]:
    """Per instance: position along the slice normal (mm); the normal; half the slice spacing."""
    iop = np.array([float(v) for v in str(ct["image_orientation"].iloc[0]).split("\\")])
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([[float(v) for v in str(p).split("\\")] for p in ct["image_position"]])
    d = pos @ normal
    ds = np.diff(np.sort(d))
    half = float(np.median(ds)) / 2.0 if len(ds) else 0.5
    return d, normal, half


def build_plan_rtstruct(study_dir: str | Path, files: pd.DataFrame):
    """The plan as a pydicom Dataset (RT Structure Set), or None when nothing is to be injected.

    Parameters
    ----------
    study_dir : path
        ``RESULTS/studies/<patient>/<study>`` (``ranking.csv``, ``lesions.csv``,
        ``provenance.json``).
    files : DataFrame
        The archive index's file table (``RESULTS/index/files.csv``: ``series_uid``,
        ``sop_instance_uid``, ``sop_class_uid``, ``frame_of_reference_uid``, ``image_position``,
        ``image_orientation``, ``study_uid``, ``patient_id``, ``study_date``).

    Raises
    ------
    ConfigError
        The planning CT is not in the index, or it has no frame of reference.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    from pipeline import __version__ as version
    from pipeline.io.sanitize import checked_uid, clean_text, safe_id

    study_dir = Path(study_dir)
    plan = plan_points(study_dir)
    if not plan:
        return None
    ct_uid, ct = _planning_ct(study_dir, files)
    ct = ct.sort_values("instance_number", key=lambda s: pd.to_numeric(s, errors="coerce"), kind="stable")
    for_uid = str(ct["frame_of_reference_uid"].iloc[0] or "")
    if not for_uid:
        raise ConfigError(f"planning CT {ct_uid} has no FrameOfReferenceUID in the index",
                          series_uid=ct_uid, tag="FrameOfReferenceUID (0020,0052)",
                          hint="an RT structure set needs the CT's frame of reference")
    study_uid = checked_uid(str(ct["study_uid"].iloc[0]), tag="StudyInstanceUID (0020,000D)")
    sop_class = {str(r.sop_instance_uid): str(r.sop_class_uid) for r in ct.itertuples()}
    depth, normal, half = _slice_positions(ct)
    sops = list(sop_class)
    content = json.dumps([{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in p.items()}
                          for p in plan], sort_keys=True, default=str)
    digest = hashlib.sha256((content + ct_uid).encode()).hexdigest()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    sop_uid = _uid(study_uid, "hitit-plan-rtstruct", digest)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    when = ""
    rp = study_dir / "ranking_provenance.json"
    if rp.is_file():
        when = str(json.loads(rp.read_text()).get("finished") or "")
    day = when[:10].replace("-", "") if len(when) >= 10 else ""
    tod = when[11:19].replace(":", "") if len(when) >= 19 else ""
    # patient and study: identifiers only, from the index (no name, birth date or sex)
    pid = clean_text(str(ct["patient_id"].iloc[0] if "patient_id" in ct else ""))
    ds.PatientName = ""
    ds.PatientID = pid if len(pid) <= 64 else safe_id(pid)[:64]
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = str(ct["study_date"].iloc[0] or "") if "study_date" in ct else ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.FrameOfReferenceUID = for_uid  # Frame of Reference module: the planning CT's
    ds.PositionReferenceIndicator = ""
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = _uid(study_uid, "hitit-plan-rtstruct-series")
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = "HIT-IT injection plan (targets, skin entries, needle paths)"
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    ds.Manufacturer = "HIT-IT pipeline"
    ds.ManufacturerModelName = "hitit-pipeline"
    ds.SoftwareVersions = str(version or "unknown")
    ds.StructureSetLabel = "HIT-IT plan"
    ds.StructureSetName = "injection plan"
    ds.StructureSetDate = day
    ds.StructureSetTime = tod

    images = Sequence()
    for u in sops:
        it = Dataset()
        it.ReferencedSOPClassUID = sop_class[u]
        it.ReferencedSOPInstanceUID = u
        images.append(it)
    ser = Dataset()
    ser.SeriesInstanceUID = ct_uid
    ser.ContourImageSequence = images
    stu = Dataset()
    stu.ReferencedSOPClassUID = STUDY_SOP_CLASS
    stu.ReferencedSOPInstanceUID = study_uid
    stu.RTReferencedSeriesSequence = Sequence([ser])
    fr = Dataset()
    fr.FrameOfReferenceUID = for_uid
    fr.RTReferencedStudySequence = Sequence([stu])
    ds.ReferencedFrameOfReferenceSequence = Sequence([fr])

    rois, contours, observations = Sequence(), Sequence(), Sequence()

    def add(kind: str, lid: str, label: str, points: list[np.ndarray]) -> None:
        n = len(rois) + 1
        roi = Dataset()
        roi.ROINumber = n
        roi.ReferencedFrameOfReferenceUID = for_uid
        roi.ROIName = clean_text(f"{kind} {lid}")[:64]
        roi.ROIDescription = clean_text(f"{kind} of lesion {label}")[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)
        c = Dataset()
        c.ContourGeometricType = "POINT" if kind != "needle" else "OPEN_PLANAR"
        c.NumberOfContourPoints = len(points)
        c.ContourData = [_ds(float(v)) for p in points for v in p]
        c.ContourNumber = 1
        if kind != "needle":
            dist = np.abs(depth - float(points[0] @ normal))
            k = int(np.argmin(dist))
            if dist[k] <= half + 1e-6:
                img = Dataset()
                img.ReferencedSOPClassUID = sop_class[sops[k]]
                img.ReferencedSOPInstanceUID = sops[k]
                c.ContourImageSequence = Sequence([img])
        rc = Dataset()
        rc.ReferencedROINumber = n
        rc.ROIDisplayColor = COLOURS[kind]
        rc.ContourSequence = Sequence([c])
        contours.append(rc)
        ob = Dataset()
        ob.ObservationNumber = n
        ob.ReferencedROINumber = n
        ob.ROIObservationLabel = {"target": "needle target", "entry": "skin entry",
                                  "needle": "needle path"}[kind]
        ob.RTROIInterpretedType = "MARKER" if kind != "needle" else ""
        ob.ROIInterpreter = ""
        observations.append(ob)

    for p in plan:
        add("target", p["lesion_id"], p["label"], [p["target_lps_mm"]])
        if p["entry_lps_mm"] is not None:
            add("entry", p["lesion_id"], p["label"], [p["entry_lps_mm"]])
            add("needle", p["lesion_id"], p["label"], [p["entry_lps_mm"], p["target_lps_mm"]])
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def write_plan_rtstruct(study_dir: str | Path, files: pd.DataFrame, out_path: str | Path | None = None) -> Path | None:
    """Write ``plan_rtstruct.dcm`` of a study (atomically); None when no lesion is to be injected.

    See :func:`build_plan_rtstruct` for the parameters and errors.
    """
    ds = build_plan_rtstruct(study_dir, files)
    if ds is None:
        log.info("plan RTSTRUCT: no injected lesion with a target in %s", study_dir)
        return None
    out = Path(out_path) if out_path is not None else Path(study_dir) / PLAN_NAME
    tmp = out.with_name(out.name + ".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    tmp.replace(out)
    log.info("plan RTSTRUCT: %d ROI(s) -> %s", len(ds.StructureSetROISequence), out)
    return out


def export_plans(results: str | Path) -> list[tuple[str, str, Path | None]]:
    """``hitit plan-export``: the plan of every study of the study sheet.

    Returns
    -------
    list of (patient_dir, study_dir, path or None)
    """
    from pipeline.sheet import read_study_sheet, sheet_path

    results = Path(results)
    fp = results / "index" / "files.csv"
    if not fp.is_file():
        raise ConfigError(f"no archive index at {fp}", file=fp,
                          hint="pass the results folder of `hitit run` (it holds index/files.csv)")
    files = pd.read_csv(fp, dtype=str, keep_default_na=False)
    out = []
    for r in read_study_sheet(sheet_path(results)).to_dict("records"):
        d = results / "studies" / str(r["patient_dir"]) / str(r["study_dir"])
        out.append((str(r["patient_dir"]), str(r["study_dir"]),
                    write_plan_rtstruct(d, files) if (d / "ranking.csv").is_file() else None))
    return out


def cmd_plan_export(args) -> int:
    """``hitit plan-export RESULTS``: write every study's plan RTSTRUCT."""
    import sys

    n = 0
    for pdir, sdir, path in export_plans(args.results):
        if path is None:
            print(f"{pdir}/{sdir}: no lesion to inject, no plan", file=sys.stderr)
        else:
            n += 1
            print(f"{pdir}/{sdir}: {path}", file=sys.stderr)
    print(f"{n} plan RTSTRUCT file(s) written ({PLAN_NAME} in each study folder)", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add ``plan-export`` to a ``hitit`` subparsers object."""
    p = subparsers.add_parser(
        "plan-export", help="write each study's injection plan as a DICOM RTSTRUCT on its planning CT "
                            f"(target and entry points, needle paths): studies/*/*/{PLAN_NAME}")
    p.add_argument("results", help="results folder of `hitit run`")
    p.set_defaults(func=cmd_plan_export)
