"""DICOM SR export: one TID 1500 Measurement Report per study (highdicom).

:func:`write_sr` writes a Comprehensive 3D SR whose content is a TID 1500 *Imaging Measurement
Report* with one measurement group per lesion:

* **SEG masks** -> TID 1411 *Volumetric ROI Measurements and Qualitative Evaluations* with a
  ``ReferencedSegment`` (the lesion SEG instance and the lesion's segment number; no frame
  numbers, which DICOM does not allow beside a segment number) and the source CT images of the
  segment's frames (from each frame's DerivationImageSequence, else by matching frame
  positions to the CT slices).
* **RTSTRUCT / label-map masks** (no segment to point at) -> TID 1501 *Measurements and
  Qualitative Evaluations* for the lesion, whose source images are the CT slices within half
  the lesion's 3D diameter of its centroid.

Source CT of each mask: the series named in the lesion's ``mask_referenced_series_uid`` column
(the image series the study job drew / mapped the mask on). Tables of older pipeline versions
lack it: the SEG's ReferencedSeriesSequence is used then, else the study sheet's CT (contrast CT
when the masks came from it), with a logged warning.

The TrackingUID of a lesion is ``ranking.csv``'s ``tracking_uid`` when set (the follow-up step
puts the lesion track's UID there, :mod:`pipeline.followup.replan`: the baseline segment's
TrackingUID, so the SRs of every timepoint name the same lesion with the same UID although its
lesion id, label and own segment UID change), else the SEG TrackingUID of ``lesions.csv``.

Every group carries a tracking identifier (the lesion's stable ``lesion_id`` and its
TrackingUID, else a UID derived from study and lesion id, so it is stable across reruns), the
finding type *Lesion*, the organ as finding site when it has a SNOMED CT code, and:

=====================  ===============================================  =========================
measurement            concept                                          unit (UCUM)
=====================  ===============================================  =========================
volume                 SCT 118565006 Volume                             ``ml`` milliliter
longest diameter       SCT 103339001 Long axis                          ``mm``
short axis             SCT 103340004 Short axis                         ``mm``
3D maximum diameter    SCT 81827009 Diameter, derivation Maximum        ``mm``
SUVmax                 DCM 126401 SUVbw, derivation SCT 56851009 Max.   ``{SUVbw}g/ml``
SUVmean                DCM 126401 SUVbw, derivation SCT 373098007 Mean  ``{SUVbw}g/ml``
SUVpeak                DCM 126401 SUVbw, derivation DCM 126031 Peak     ``{SUVbw}g/ml``
skin depth             99HITIT SKIN_DEPTH (local code, see below)       ``mm``
ranking score          99HITIT SCORE                                    ``1`` (no units)
=====================  ===============================================  =========================

Qualitative evaluations use local codes because DICOM and SNOMED CT have no concept for an
intratumoral-injection role or a suitability tier: coding scheme designator **99HITIT**
(``99`` prefix = private/local scheme, declared in the SR's CodingSchemeIdentificationSequence):

* ``99HITIT ROLE`` *Intratumoral immunotherapy role*: ``INJECT`` (injected target, itRECIST
  T-I), ``MONITOR`` (noninjected monitoring lesion, T-NI), ``NONE`` (not selected);
* ``99HITIT TIER`` *Injection suitability tier*: ``RECOMMENDED``, ``ACCEPTABLE``,
  ``BOARD_REVIEW``, ``NOT_SUITABLE``.

Missing values (e.g. no PET) are left out, never written as 0. The document is PRELIMINARY and
UNVERIFIED (machine output, not signed by a radiologist).

Privacy: source headers are read with pydicom ``stop_before_pixels`` and ``specific_tags``
(UIDs, PatientID, StudyDate/Time, AccessionNumber, StudyID, positions): PatientName,
birth date and sex are never read and are written empty (type 2). The PatientID, the study UID
and the accession number are kept so that a PACS files the SR with its study.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.report import figures as F

log = logging.getLogger(__name__)


class SRError(PipelineError):
    """The study's tables or images do not allow a DICOM SR."""

    stage = "report"


class NoLesionsForSRError(SRError):
    """The study has no lesion rows (e.g. a failed study): there is nothing to report."""


class SourceImagesMissingError(SRError):
    """The CT series a lesion mask was drawn on has no readable image in the archive."""

SR_NAME = "measurements_sr.dcm"
LOCAL_SCHEME = "99HITIT"
SERIES_NUMBER = 9901

#: Tags read from the source images (never PatientName).
SOURCE_TAGS = [
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
    "SeriesInstanceUID", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
    "Modality", "FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient",
]
SEG_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID",
    "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "Modality", "SegmentSequence",
    "ReferencedSeriesSequence", "PerFrameFunctionalGroupsSequence", "FrameOfReferenceUID",
    "NumberOfFrames", "SpecificCharacterSet",
]

ORGAN_CODES = {  # organ term -> SNOMED CT (anatomic location)
    "liver": ("10200004", "Liver"), "lung": ("39607008", "Lung"),
    "lymph_node": ("59441001", "Lymph node"), "spleen": ("78961009", "Spleen"),
    "soft_tissue": ("87784001", "Soft tissue"), "kidney": ("64033007", "Kidney"),
    "bone": ("272673000", "Bone"), "muscle": ("71616004", "Muscle"),
    "adrenal_gland": ("23451007", "Adrenal gland"), "pancreas": ("15776009", "Pancreas"),
    "breast": ("76752008", "Breast"), "skin": ("39937001", "Skin"),
}
ROLE_CODES = {
    "inject": ("INJECT", "Injected target lesion (itRECIST T-I)"),
    "monitor": ("MONITOR", "Noninjected monitoring lesion (itRECIST T-NI)"),
    "none": ("NONE", "Not selected for injection or monitoring"),
}
TIER_CODES = {
    "recommended": ("RECOMMENDED", "Recommended for injection"),
    "acceptable": ("ACCEPTABLE", "Acceptable for injection"),
    "board_review": ("BOARD_REVIEW", "Multidisciplinary board review needed"),
    "not_suitable": ("NOT_SUITABLE", "Not suitable for injection"),
}


def _local(value: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value, LOCAL_SCHEME, meaning)


def units():
    """UCUM unit concepts used by the report."""
    import highdicom as hd

    return {
        "ml": hd.sr.CodedConcept("ml", "UCUM", "milliliter"),
        "mm": hd.sr.CodedConcept("mm", "UCUM", "millimeter"),
        "suv": hd.sr.CodedConcept("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight"),
        "1": hd.sr.CodedConcept("1", "UCUM", "no units"),
    }


def measurement_specs() -> list[tuple[str, object, object | None, str]]:
    """(column, concept name, derivation or None, unit key) of every measurement written."""
    from pydicom.sr.codedict import codes

    suv = codes.DCM.SUVbw if hasattr(codes.DCM, "SUVbw") else codes.DCM.Suvbw
    return [
        ("volume_ml", codes.SCT.Volume, None, "ml"),
        ("longest_diameter_mm", codes.SCT.LongAxis, None, "mm"),
        ("short_axis_mm", codes.SCT.ShortAxis, None, "mm"),
        ("max_3d_diameter_mm", codes.SCT.Diameter, codes.SCT.Maximum, "mm"),
        ("suv_max", suv, codes.SCT.Maximum, "suv"),
        ("suv_mean", suv, codes.SCT.Mean, "suv"),
        ("suv_peak", suv, codes.DCM.PeakValueWithinROI, "suv"),
        ("skin_depth_mm", _local("SKIN_DEPTH", "Skin depth (shortest distance from lesion surface to skin)"), None, "mm"),
        ("score", _local("SCORE", "Injection suitability score"), None, "1"),
    ]


def _uid(*parts: str) -> str:
    """Deterministic UID from the given strings (pydicom's 2.25 / root derivation)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _files_table(files_index) -> pd.DataFrame:
    if isinstance(files_index, pd.DataFrame):
        return files_index
    from pipeline.io.index import read_index

    return read_index(Path(files_index)).files


def _paths(files: pd.DataFrame, root: Path, series_uid: str) -> list[Path]:
    sel = files[files["series_uid"].astype(str) == str(series_uid)]
    return [Path(root) / p for p in sel["path"].astype(str)]


def _read_headers(paths: list[Path], tags: list[str]):
    import pydicom

    out = []
    for p in paths:
        try:
            out.append(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=tags))
        except Exception as exc:  # noqa: BLE001 - an unreadable file is left out of the evidence
            log.warning("SR evidence: cannot read %s: %s", p, exc)
    return out


def _evidence_copy(ds):
    """A minimal dataset for the SR evidence and patient/study module (no name, birth date, sex)."""
    from pydicom.dataset import Dataset

    from pipeline.io.sanitize import checked_uid, clean_text, safe_id

    e = Dataset()
    for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
               "FrameOfReferenceUID", "SpecificCharacterSet"):
        if kw in ds:
            setattr(e, kw, ds.data_element(kw).value)
    if "StudyInstanceUID" in ds:  # the same replacement the index made for an invalid one
        e.StudyInstanceUID = checked_uid(str(ds.StudyInstanceUID), tag="StudyInstanceUID (0020,000D)")
    pid = clean_text(str(ds.get("PatientID", "") or ""))
    e.PatientID = pid if len(pid) <= 64 else safe_id(pid)[:64]  # LO: at most 64 characters
    e.PatientName = ""
    e.PatientBirthDate = ""
    e.PatientSex = ""
    e.AccessionNumber = clean_text(str(ds.get("AccessionNumber", "") or ""))[:16]  # SH
    e.StudyID = clean_text(str(ds.get("StudyID", "") or ""))[:16]  # SH
    e.StudyDate = str(ds.get("StudyDate", "") or "")
    e.StudyTime = str(ds.get("StudyTime", "") or "")
    e.ReferringPhysicianName = ""
    return e


def _seg_frames(seg, segment_number: int) -> tuple[list[int], list[str], list[tuple[float, ...]]]:
    """1-based frames of a segment, their source SOP Instance UIDs and their positions."""
    frames, sources, positions = [], [], []
    for i, fg in enumerate(seg.get("PerFrameFunctionalGroupsSequence", []), start=1):
        try:
            n = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        except (AttributeError, IndexError):
            continue
        if n != int(segment_number):
            continue
        frames.append(i)
        for der in fg.get("DerivationImageSequence", []):
            for src in der.get("SourceImageSequence", []):
                sources.append(str(src.ReferencedSOPInstanceUID))
        try:
            positions.append(tuple(float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient))
        except (AttributeError, IndexError):
            pass
    return frames, sources, positions


def _match_positions(ct_headers, positions) -> list[str]:
    """SOP Instance UIDs of the CT slices nearest (along the normal) to the given frame positions."""
    if not ct_headers or not positions:
        return []
    try:
        iop = np.asarray(ct_headers[0].ImageOrientationPatient, float).reshape(2, 3)
        n = np.cross(iop[0], iop[1])
        proj = np.array([np.asarray(h.ImagePositionPatient, float) @ n for h in ct_headers])
    except (AttributeError, ValueError):
        return []
    out = []
    for p in positions:
        k = int(np.argmin(np.abs(proj - np.asarray(p) @ n)))
        out.append(str(ct_headers[k].SOPInstanceUID))
    return list(dict.fromkeys(out))


def _slices_near(ct_headers, row: dict) -> list:
    """CT slices whose plane lies within half the lesion's 3D diameter of its centroid."""
    c = [F.to_float(row.get(f"centroid_{a}_mm")) for a in "xyz"]
    if any(v is None for v in c) or not ct_headers:
        return []
    half = 0.5 * (F.to_float(row.get("max_3d_diameter_mm")) or F.to_float(row.get("longest_diameter_mm")) or 10.0)
    try:
        iop = np.asarray(ct_headers[0].ImageOrientationPatient, float).reshape(2, 3)
        n = np.cross(iop[0], iop[1])
        d = np.array([abs((np.asarray(h.ImagePositionPatient, float) - np.asarray(c)) @ n) for h in ct_headers])
    except (AttributeError, ValueError):
        return []
    sel = [h for h, dd in zip(ct_headers, d) if dd <= half]
    return sel or [ct_headers[int(np.argmin(d))]]


def _read_json(p: Path) -> dict:
    try:
        return json.loads(Path(p).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def build_sr(study_dir: Path, archive_root: Path, files_index):
    """Build the SR dataset of one study (see :func:`write_sr`).

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
    """
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes

    from pipeline.io.tables import read_table_if_present
    from pipeline.report.worksheet import merged_rows

    study_dir = Path(study_dir)
    prov = _read_json(study_dir / "provenance.json")
    rprov = _read_json(study_dir / "ranking_provenance.json")
    inputs = prov.get("inputs", {}) or {}
    series = inputs.get("series", {}) or {}
    sheet_row = inputs.get("study_sheet_row", {}) or {}
    files = _files_table(files_index)
    root = Path(archive_root)
    rows = merged_rows(read_table_if_present(study_dir / "lesions.csv"), read_table_if_present(study_dir / "ranking.csv"))
    rows = [r for r in rows if F.to_bool(r.get("lesion_empty")) is not True]  # no voxel, no finding
    if not rows:
        raise NoLesionsForSRError(
            f"expected at least one lesion row in lesions.csv / ranking.csv of {study_dir}, "
            "found none: nothing to report", file=study_dir / "lesions.csv",
            hint="an SR is written only for a study that finished (provenance.json status done) "
                 "with lesions; see the study's failures.csv")

    # ---- segmentation object and the CT each mask was drawn on
    source = str(sheet_row.get("lesion_mask_source", "") or "")
    mask_ref = str(series.get("lesion_mask", "") or sheet_row.get("lesion_mask_ref", "") or "")
    seg = None
    seg_ct_uid = ""
    if source == "seg" and mask_ref:
        seg_paths = _paths(files, root, mask_ref)
        segs = _read_headers(seg_paths[:1], SEG_TAGS)
        seg = segs[0] if segs else None
        if seg is not None:
            for item in seg.get("ReferencedSeriesSequence", []):
                seg_ct_uid = str(item.SeriesInstanceUID)
                break
    lesion_ct = {str(r.get("lesion_id")): _text(r.get("mask_referenced_series_uid")) for r in rows}
    unknown = sorted(lid for lid, u in lesion_ct.items() if not u)
    if unknown:
        guess = seg_ct_uid
        if not guess:
            mask_uids = {str(r.get("mask_series_uid") or "") for r in rows}
            guess = str(series.get("ce_ct_series_uid") if series.get("ce_ct_series_uid") in mask_uids
                        else series.get("ct_series_uid") or series.get("ce_ct_series_uid") or "")
        log.warning("SR %s: mask_referenced_series_uid empty for lesion(s) %s (table of an older "
                    "pipeline version); source CT taken from %s: %s", study_dir, unknown,
                    "the SEG's ReferencedSeriesSequence" if seg_ct_uid else "the study sheet",
                    guess or "none")
        for lid in unknown:
            lesion_ct[lid] = guess
    ct_headers_of: dict[str, list] = {}
    for uid in dict.fromkeys(lesion_ct.values()):
        ct_headers_of[uid] = _read_headers(_paths(files, root, uid), SOURCE_TAGS) if uid else []
        if not ct_headers_of[uid]:
            lids = sorted(k for k, v in lesion_ct.items() if v == uid)
            raise SourceImagesMissingError(
                f"expected readable source CT images for the mask(s) of lesion(s) {lids}, found "
                f"none in the archive index for {study_dir}", series_uid=uid or None,
                hint="keep the CT series the masks were drawn on in the archive (and its index), "
                     "or rerun the study so that lesions.csv names it in mask_referenced_series_uid")
    ct_headers = [h for hs in ct_headers_of.values() for h in hs]
    ct_by_uid = {str(h.SOPInstanceUID): h for h in ct_headers}
    evidence = [_evidence_copy(h) for h in ct_by_uid.values()]
    if seg is not None:
        evidence.append(_evidence_copy(seg))

    # ---- measurement groups
    U = units()
    specs = measurement_specs()
    version = str((prov.get("versions") or {}).get("hitit-pipeline", "") or "")
    algo = hd.sr.AlgorithmIdentification(name="HIT-IT lesion selection", version=version or "unknown")
    study_uid = str(prov.get("study_uid") or sheet_row.get("study_uid") or ct_headers[0].StudyInstanceUID)
    groups = []
    for r in rows:
        lid = str(r.get("lesion_id"))
        tuid = str(r.get("tracking_uid") or "")
        if not tuid or not _valid_uid(tuid):
            tuid = _uid(study_uid, "lesion", lid)
        tracking = hd.sr.TrackingIdentifier(uid=tuid, identifier=lid[:64])
        measurements = []
        for col, name, deriv, unit in specs:
            v = F.to_float(r.get(col))
            if v is None:
                continue
            measurements.append(hd.sr.Measurement(name=name, value=v, unit=U[unit], derivation=deriv,
                                                  algorithm_id=algo))
        quals = []
        role = str(r.get("role") or "")
        if role in ROLE_CODES:
            quals.append(hd.sr.QualitativeEvaluation(
                _local("ROLE", "Intratumoral immunotherapy role"), _local(*ROLE_CODES[role])))
        tier = str(r.get("tier") or "")
        if tier in TIER_CODES:
            quals.append(hd.sr.QualitativeEvaluation(
                _local("TIER", "Injection suitability tier"), _local(*TIER_CODES[tier])))
        organ = str(r.get("organ") or "")
        sites = ([hd.sr.FindingSite(hd.sr.CodedConcept(*ORGAN_CODES[organ][:1], "SCT", ORGAN_CODES[organ][1]))]
                 if organ in ORGAN_CODES else None)
        seg_no = F.to_float(r.get("segment_number"))
        common = dict(tracking_identifier=tracking, finding_type=codes.SCT.Lesion,
                      algorithm_id=algo, finding_sites=sites, measurements=measurements or None,
                      qualitative_evaluations=quals or None)
        ref_ct_uid = lesion_ct[lid]
        lesion_headers = ct_headers_of[ref_ct_uid]
        own = {str(h.SOPInstanceUID) for h in lesion_headers}
        if seg is not None and seg_no is not None and str(r.get("mask_series_uid") or mask_ref) == str(seg.SeriesInstanceUID):
            _frames, srcs, pos = _seg_frames(seg, int(seg_no))
            srcs = [u for u in dict.fromkeys(srcs) if u in own] or _match_positions(lesion_headers, pos)
            src_items = [hd.sr.SourceImageForSegmentation(str(ct_by_uid[u].SOPClassUID), u) for u in srcs]
            # Segment number only: DICOM forbids ReferencedSegmentNumber together with
            # ReferencedFrameNumber in one reference (PS3.3 Table 10-3; dciodvfy flags it), and the
            # segment number already selects the segment's frames. Their derivation images and
            # positions still pick the source CT slices.
            ref = hd.sr.ReferencedSegment(
                sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                segment_number=int(seg_no), frame_numbers=None,
                source_images=src_items or None,
                source_series=None if src_items else hd.sr.SourceSeriesForSegmentation(ref_ct_uid))
            groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=ref, **common))
        else:
            srcs = _slices_near(lesion_headers, r)
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                source_images=[hd.sr.SourceImageForMeasurementGroup(str(h.SOPClassUID), str(h.SOPInstanceUID))
                               for h in srcs] or None, **common))

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("hitit-pipeline", version), name="HIT-IT lesion selection",
            manufacturer_name="HIT-IT pipeline (open source)", model_name=version or None))
    procedure = (hd.sr.CodedConcept("443271005", "SCT", "PET/CT FDG imaging of whole body")
                 if series.get("pet_series_uid") else codes.SCT.ComputedTomography)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure, imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    content_hash = hashlib.sha256(
        b"".join((study_dir / n).read_bytes() for n in ("lesions.csv", "ranking.csv")
                 if (study_dir / n).exists())).hexdigest()
    scheme = CodingSchemeIdentificationItem(
        designator=LOCAL_SCHEME, name="HIT-IT local codes",
        responsible_organization="HIT-IT lesion selection project (see pipeline/report/sr.py)")
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0],
        series_instance_uid=_uid(study_uid, "hitit-sr-series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=_uid(study_uid, "hitit-sr", content_hash, str(rprov.get("config_hash", ""))),
        instance_number=1, manufacturer="HIT-IT pipeline", is_complete=True, is_final=False,
        is_verified=False, series_description="HIT-IT lesion measurements and injection plan",
        coding_schemes=[scheme], manufacturer_model_name="hitit-pipeline",
        software_versions=version or "unknown",
    )
    return sr


def _text(v) -> str:
    """A table cell as text, "" when missing."""
    return "" if F.is_missing(v) else str(v).strip()


def _valid_uid(u: str) -> bool:
    import re

    return bool(re.fullmatch(r"[0-9]+(\.[0-9]+)*", u)) and len(u) <= 64


def write_sr(study_dir: Path, archive_root: Path, files_index, out_path: Path | None = None) -> Path:
    """Write the study's DICOM SR (TID 1500 Measurement Report).

    Parameters
    ----------
    study_dir : Path
        ``RESULTS/studies/<patient>/<study>`` (``provenance.json``, ``lesions.csv``,
        ``ranking.csv``).
    archive_root : Path
        Root of the DICOM archive (the index's paths are relative to it).
    files_index : DataFrame or Path
        The index's file table (``path``, ``series_uid``), or the ``RESULTS/index`` folder.
    out_path : Path, optional
        Output file (default ``study_dir/measurements_sr.dcm``).

    Returns
    -------
    Path

    Raises
    ------
    NoLesionsForSRError
        The study has no lesions (e.g. a failed study).
    SourceImagesMissingError
        A lesion's source CT (``mask_referenced_series_uid``) has no readable image.
    """
    study_dir = Path(study_dir)
    out = Path(out_path) if out_path is not None else study_dir / SR_NAME
    sr = build_sr(study_dir, archive_root, files_index)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    sr.save_as(tmp, enforce_file_format=True)
    tmp.replace(out)
    log.info("SR: %s", out)
    return out


def read_measurements(path: Path) -> dict[str, dict]:
    """Read an SR back with highdicom (``hd.sr.srread``): every lesion's measurement group.

    Returns
    -------
    dict
        ``{tracking identifier (lesion_id): {"tracking_uid", "template" ("1411" volumetric ROI
        or "1501"), "segment": (SEG SOP Instance UID, segment numbers, frame numbers) or None,
        "source_images": [SOP Instance UID, ...] (source images for segmentation, or the 1501
        group's source-of-measurement images), "measurements": {(concept meaning, derivation
        meaning or ""): (value, UCUM unit code)}, "evaluations": {concept code: value code}}}``
    """
    import highdicom as hd

    sr = hd.sr.srread(path)
    report = sr.content
    groups = [("1411", g) for g in report.get_volumetric_roi_measurement_groups()]
    groups += [("1501", g) for g in report.get_image_measurement_groups()]
    out = {}
    for template, g in groups:
        seg, sources = None, []
        rs = getattr(g, "referenced_segment", None) if template == "1411" else None
        if rs is not None:
            seg = (str(rs.referenced_sop_instance_uid), list(rs.referenced_segment_numbers),
                   list(rs.referenced_frame_numbers or []))
            for item in rs:
                if item.ConceptNameCodeSequence[0].CodeValue == "121233":  # Source image for segmentation
                    sources.append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        if template == "1501":
            for item in g.source_images:  # Source of Measurement images of the group
                sources.append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        meas = {}
        for m in g.get_measurements():
            deriv = m.derivation.meaning if m.derivation is not None else ""
            meas[(m.name.meaning, deriv)] = (float(m.value), m.unit.value)
        evals = {e.name.value: e.value.value for e in g.get_qualitative_evaluations()}
        out[str(g.tracking_identifier)] = {
            "tracking_uid": str(g.tracking_uid), "template": template, "segment": seg,
            "source_images": sources, "measurements": meas, "evaluations": evals}
    return out
