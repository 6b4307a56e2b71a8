"""Header-only index of an arbitrary archive tree, and the study sheet built from it.

Scanning
--------
Every regular file under the root is looked at once (:func:`scan_archive`):

* **DICOM is recognised by content**, not by name: either the 128-byte preamble followed by
  ``DICM``, or (files without preamble) a first element in group 0002 or 0008 and a dataset that
  pydicom can parse. Headers are read with ``pydicom.dcmread(..., stop_before_pixels=True)``; no
  pixel data is read.
* **DICOMDIR** files (MediaStorageSOPClassUID 1.2.840.10008.1.3.10) are skipped: the tree itself
  is indexed, the directory record is neither required nor trusted.
* **NIfTI label maps** (``*.nii``, ``*.nii.gz``) with a ``<stem>.json`` sidecar are indexed as
  :attr:`Modality.LABELMAP` with the sidecar's patient_id / study_uid / referenced_series_uid / kind.
  Sidecars themselves are not records.
* Everything else, and every file that fails a check, goes to ``problems`` with the reason.

Truncation check (:func:`check_complete`)
-----------------------------------------
pydicom silently accepts a file cut in the middle of an element (it reads what is there), so
after the header is parsed the file's element *structure* is walked without reading values:
from the start of the data set (after the preamble and group 0002), each element header (tag,
VR, length) is read and the reader seeks past the value; undefined-length sequences and
encapsulated pixel data are walked item by item (8-byte item headers only). Whenever an element
or item claims more bytes than remain in the file (``value offset + length > file size``), or a
header itself is cut, the file is truncated. For a file cut in the middle of PixelData this costs
one seek: the PixelData element header gives its length, which is compared with the bytes left.
Native (uncompressed) PixelData is also compared with Rows x Columns x SamplesPerPixel x
NumberOfFrames x BitsAllocated / 8. Deflated transfer syntaxes cannot be walked without
inflating and are only parsed.

Tables
------
``files`` (one row per DICOM object or label map), ``series`` (one row per series with its
classification) and ``problems`` (path, reason, error_class) are pandas DataFrames; paths are
relative to ``root`` (POSIX separators). :func:`write_index` / :func:`read_index` store them as
``files.csv``, ``series.csv``, ``problems.csv`` plus ``index.json`` (root, counts).
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from pipeline.errors import ConfigError, PipelineError
from pipeline.io.dicom import has_value
from pipeline.io.labelmap import (
    is_labelmap,
    is_nrrd,
    labelmap_grid,
    nrrd_segments,
    read_sidecar,
    sidecar_path,
)
from pipeline.io.rtstruct import classify_roi, roi_table, rtstruct_references
from pipeline.io.seg import (
    DEFAULT_LESION_NAME_PATTERNS,
    DEFAULT_ORGAN_NAME_PATTERNS,
    classify_segment,
    referenced_series_uids,
    segment_descriptions,
)
from pipeline.records import CTPhase, Modality, SegmentKind, SeriesRef

log = logging.getLogger(__name__)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
DEFLATED_TS = "1.2.840.10008.1.2.1.99"
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
#: Storage SOP classes that always carry PixelData (CT, enhanced/legacy CT, MR, PET, enhanced/
#: legacy PET, SEG, secondary capture).
IMAGE_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2",
    "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.128",
    "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1",
    "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.7",
})
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}

#: Description keywords (regular expressions, lower case) telling a CT's contrast phase. The
#: non-contrast list is tried first because "non-contrast" contains "contrast".
NONCONTRAST_KEYWORDS: tuple[str, ...] = (
    r"\bnon[-_ ]?contrast", r"\bnon[-_ ]?enhanced", r"\bunenhanced", r"\bnative\b",
    r"\bw/o\b", r"\bwithout\b", r"\bnc\b", r"\bplain\b", r"\bpre[-_ ]?contrast",
    r"(^|[\s_(])c-($|[\s_)])", r"\bnoncon\b", r"\bnon[-_ ]?con\b",
)
CONTRAST_KEYWORDS: tuple[str, ...] = (
    r"contrast", r"\benhanced", r"(^|[\s_(])c\+", r"\bce\b", r"\bcect\b", r"\barterial",
    r"\bvenous", r"\bportal", r"\bpv\b", r"\bdelayed", r"\bnephrographic", r"\bw/(?!o)",
    r"\bwith\b", r"\bangio",
)
#: Description keywords of dose reports and summaries (excluded series).
DOSE_REPORT_KEYWORDS: tuple[str, ...] = (
    r"dose\s*(report|info|summary)", r"patient\s*protocol", r"screen\s*save", r"\bsummary\b",
    r"exam\s*summary",
)
_NO_AGENT = {"", "none", "no", "n/a", "na", "0", "-", "nil", "non", "without"}

# Column specifications: name -> kind ("str", "int", "Int64" (nullable), "bool", "boolean").
FILE_COLUMNS: dict[str, str] = {
    "path": "str", "patient_id": "str", "study_uid": "str", "series_uid": "str",
    "sop_instance_uid": "str", "sop_class_uid": "str", "modality": "str",
    "dicom_modality": "str", "series_description": "str", "series_number": "str",
    "frame_of_reference_uid": "str", "image_position": "str", "image_orientation": "str",
    "instance_number": "Int64", "rows": "Int64", "columns": "Int64",
    "number_of_frames": "Int64", "image_type": "str", "transfer_syntax_uid": "str",
    "file_size": "int", "study_date": "str",
}
SERIES_COLUMNS: dict[str, str] = {
    "series_uid": "str", "study_uid": "str", "patient_id": "str", "modality": "str",
    "dicom_modality": "str", "n_files": "int", "n_instances": "int", "n_slices": "int",
    "description": "str",
    "series_number": "str", "frame_of_reference_uid": "str", "study_date": "str",
    "orientation": "str", "ct_phase": "str", "phase_reason": "str", "excluded_reason": "str",
    "is_localizer": "bool", "pet_corrected": "boolean", "referenced_series_uids": "str",
    "segment_kind": "str", "n_segments": "int", "n_lesion_segments": "int",
    "n_organ_segments": "int", "segment_names": "str", "reference_problem": "str",
    "first_path": "str",
}
PROBLEM_COLUMNS: dict[str, str] = {
    "path": "str", "reason": "str", "error_class": "str",
    # filled when the header could still be read (e.g. a file cut in its pixel data), so that a
    # study can report its own broken files
    "patient_id": "str", "study_uid": "str", "series_uid": "str",
}
STUDY_SHEET_COLUMNS: tuple[str, ...] = (
    "patient_id", "study_uid", "ct_series_uid", "ce_ct_series_uid", "pet_series_uid",
    "lesion_mask_source", "lesion_mask_ref", "organ_mask_source", "organ_mask_ref", "notes",
)


@dataclass
class ArchiveIndex:
    """Result of :func:`scan_archive`.

    Attributes
    ----------
    files, series, problems : pandas.DataFrame
        See the module docstring and ``FILE_COLUMNS`` / ``SERIES_COLUMNS`` / ``PROBLEM_COLUMNS``.
    root : Path
        The scanned folder; all ``path`` columns are relative to it.
    """

    files: pd.DataFrame
    series: pd.DataFrame
    problems: pd.DataFrame
    root: Path
    meta: dict = field(default_factory=dict)

    def series_paths(self, series_uid: str) -> list[Path]:
        """Absolute paths of the files of one series, in ``files`` order."""
        rows = self.files[self.files["series_uid"] == series_uid]
        return [self.root / p for p in rows["path"]]

    def series_sop_uids(self, series_uid: str) -> list[str]:
        """SOPInstanceUIDs of one series."""
        rows = self.files[self.files["series_uid"] == series_uid]
        return [u for u in rows["sop_instance_uid"] if u]

    def series_row(self, series_uid: str) -> pd.Series:
        """The ``series`` row of one series (KeyError if absent)."""
        rows = self.series[self.series["series_uid"] == series_uid]
        if rows.empty:
            raise KeyError(series_uid)
        return rows.iloc[0]

    def series_refs(self) -> list[SeriesRef]:
        """The series as :class:`pipeline.records.SeriesRef` records."""
        out = []
        for r in self.series.itertuples(index=False):
            kind = r.segment_kind if r.segment_kind in {k.value for k in SegmentKind} else "unknown"
            out.append(SeriesRef(
                series_uid=r.series_uid, study_uid=r.study_uid, patient_id=r.patient_id,
                modality=Modality(r.modality), n_files=int(r.n_files), description=r.description,
                ct_phase=CTPhase(r.ct_phase) if r.ct_phase else CTPhase.UNKNOWN,
                frame_of_reference_uid=r.frame_of_reference_uid,
                referenced_series_uids=tuple(u for u in r.referenced_series_uids.split(";") if u),
                segment_kind=SegmentKind(kind),
            ))
        return out


# =========================================================================== structure walk
class _Truncated(Exception):
    pass


def _skip_meta(fp, start: int, size: int) -> int:
    """Offset of the first element after group 0002 (explicit VR little endian)."""
    fp.seek(start)
    while True:
        pos = fp.tell()
        hdr = fp.read(8)
        if len(hdr) < 8:
            fp.seek(pos)
            return pos
        group = struct.unpack("<H", hdr[:2])[0]
        if group != 0x0002:
            return pos
        vr = hdr[4:6]
        if vr in _LONG_VRS:
            ext = fp.read(4)
            if len(ext) < 4:
                raise _Truncated(f"file meta element header at byte {pos} is cut")
            length = struct.unpack("<I", ext)[0]
        else:
            length = struct.unpack("<H", hdr[6:8])[0]
        if fp.tell() + length > size:
            raise _Truncated(f"file meta element at byte {pos} declares {length} bytes but only "
                             f"{size - fp.tell()} remain (file cut)")
        fp.seek(fp.tell() + length)


def _walk_items(fp, size: int, implicit: bool, endian: str, where: str) -> None:
    """Walk the items of an undefined-length sequence / encapsulated value up to (FFFE,E0DD)."""
    while True:
        pos = fp.tell()
        hdr = fp.read(8)
        if len(hdr) < 8:
            raise _Truncated(f"{where}: item header at byte {pos} is cut (file ends)")
        group, elem, length = struct.unpack(endian + "HHI", hdr)
        if group != 0xFFFE:
            raise _Truncated(f"{where}: expected an item tag at byte {pos}, found "
                             f"({group:04X},{elem:04X}) (file damaged)")
        if elem == 0xE0DD:
            return
        if elem != 0xE000:
            raise _Truncated(f"{where}: unexpected delimiter ({group:04X},{elem:04X}) at {pos}")
        if length == 0xFFFFFFFF:
            _walk_dataset(fp, size, implicit, endian, nested=True, where=where)
        else:
            if fp.tell() + length > size:
                raise _Truncated(f"{where}: item at byte {pos} needs {length} bytes, only "
                                 f"{size - fp.tell()} remain")
            fp.seek(fp.tell() + length)


def _walk_dataset(fp, size: int, implicit: bool, endian: str, *, nested: bool,
                  where: str = "", pixel_info: dict | None = None) -> None:
    while True:
        pos = fp.tell()
        hdr = fp.read(8)
        if not hdr and not nested:
            return
        if len(hdr) < 8:
            raise _Truncated(f"{where or 'data set'}: element header at byte {pos} is cut "
                             "(file ends)")
        group, elem = struct.unpack(endian + "HH", hdr[:4])
        if group == 0xFFFE and elem == 0xE00D:  # end of an undefined-length item
            return
        tag = f"({group:04X},{elem:04X})"
        vr = b""
        if implicit:
            length = struct.unpack(endian + "I", hdr[4:8])[0]
        else:
            vr = hdr[4:6]
            if vr in _LONG_VRS:
                ext = fp.read(4)
                if len(ext) < 4:
                    raise _Truncated(f"element {tag} header at byte {pos} is cut (file ends)")
                length = struct.unpack(endian + "I", ext)[0]
            else:
                length = struct.unpack(endian + "H", hdr[6:8])[0]
        value_pos = fp.tell()
        if pixel_info is not None and not nested and group == 0x7FE0 and elem == 0x0010:
            pixel_info["length"] = length
            pixel_info["offset"] = value_pos
        if length == 0xFFFFFFFF:
            # UN with undefined length is encoded implicit VR little endian (PS3.5 6.2.2)
            sub_implicit = implicit or vr == b"UN"
            _walk_items(fp, size, sub_implicit, "<" if vr == b"UN" else endian,
                        where=f"element {tag}")
        else:
            if value_pos + length > size:
                raise _Truncated(
                    f"element {tag} at byte {pos} declares {length} bytes but only "
                    f"{size - value_pos} remain (file cut)"
                )
            fp.seek(value_pos + length)


def check_complete(path: str | Path, ds: pydicom.Dataset) -> str | None:
    """Return why ``path`` is truncated or inconsistent, or None if its structure is complete.

    Reads only element and item headers (see the module docstring), never pixel values.
    """
    size = os.path.getsize(path)
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if ts == DEFLATED_TS:
        return None
    enc = getattr(ds, "original_encoding", None) or (None, None)
    implicit, little = enc
    if implicit is None:
        implicit, little = False, True
    pixel_info: dict = {}
    with open(path, "rb") as fp:
        head = fp.read(132)
        start = 132 if len(head) == 132 and head[128:132] == b"DICM" else 0
        try:
            data_start = _skip_meta(fp, start, size)
            if data_start >= size:
                raise _Truncated("no data set after the file meta information")
            fp.seek(data_start)
            _walk_dataset(fp, size, bool(implicit), "<" if little else ">", nested=False,
                          pixel_info=pixel_info)
        except _Truncated as exc:
            return f"truncated or damaged: {exc}; file size {size} bytes"
        except struct.error as exc:  # pragma: no cover - defensive
            return f"damaged element structure: {exc}"
    length = pixel_info.get("length")
    if length is not None and length != 0xFFFFFFFF and has_value(ds, "Rows"):
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            spp = int(ds.get("SamplesPerPixel", 1) or 1)
            bits = int(ds.BitsAllocated)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError):
            return None
        expected_bits = rows * cols * spp * frames * bits
        expected = (expected_bits + 7) // 8
        if length < expected:
            return (f"PixelData holds {length} bytes, expected {expected} for Rows {rows} x "
                    f"Columns {cols} x SamplesPerPixel {spp} x NumberOfFrames {frames} x "
                    f"BitsAllocated {bits} / 8 (inconsistent or cut file)")
    elif length is None:
        sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
                  or ds.get("SOPClassUID", "") or "")
        if sop in IMAGE_SOP_CLASSES or has_value(ds, "Rows"):
            return (f"image object (SOP class {sop or 'unknown'}) without PixelData: file cut "
                    "before the pixels")
    return None


# =========================================================================== per-file records
def _sniff(path: Path) -> tuple[bool, bool]:
    """(looks like DICOM, has preamble)."""
    with open(path, "rb") as fp:
        head = fp.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return True, True
    if len(head) >= 8:
        group = struct.unpack("<H", head[:2])[0]
        if group in (0x0002, 0x0008):
            return True, False
    return False, False


def _s(ds, kw: str) -> str:
    v = ds.get(kw, "")
    if v is None:
        return ""
    if isinstance(v, pydicom.multival.MultiValue) or isinstance(v, (list, tuple)):
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def _int_or_none(ds, kw: str):
    v = ds.get(kw, None)
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _modality_enum(dicom_modality: str) -> Modality:
    try:
        return Modality(dicom_modality)
    except ValueError:
        return Modality.OTHER


def _orientation_label(iop: str) -> str:
    if not iop:
        return ""
    try:
        v = np.asarray([float(x) for x in iop.split("\\")], dtype=float).reshape(2, 3)
    except ValueError:
        return ""
    n = np.cross(v[0], v[1])
    if np.linalg.norm(n) < 1e-6:
        return "invalid"
    n = np.abs(n / np.linalg.norm(n))
    axis = int(np.argmax(n))
    if n[axis] < 0.99:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _fg_first(ds, group: str, kw: str) -> str:
    """A multi-frame functional-group attribute of the first frame (per-frame, then shared)."""
    from pipeline.io.dicom import functional_group_value

    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        return ""
    try:
        v = functional_group_value(ds, 0, group, kw)
    except Exception:  # damaged functional groups: leave it to the loader
        return ""
    if v is None:
        return ""
    return "\\".join(str(x) for x in v) if isinstance(v, (list, tuple,
                                                         pydicom.multival.MultiValue)) else str(v)


def _file_record(path: Path, root: Path, ds, size: int) -> dict:
    dm = _s(ds, "Modality").upper()
    return {
        "path": path.relative_to(root).as_posix(),
        "patient_id": _s(ds, "PatientID"),
        "study_uid": _s(ds, "StudyInstanceUID"),
        "series_uid": _s(ds, "SeriesInstanceUID"),
        "sop_instance_uid": _s(ds, "SOPInstanceUID"),
        "sop_class_uid": _s(ds, "SOPClassUID"),
        "modality": _modality_enum(dm).value,
        "dicom_modality": dm,
        "series_description": _s(ds, "SeriesDescription"),
        "series_number": _s(ds, "SeriesNumber"),
        "frame_of_reference_uid": _s(ds, "FrameOfReferenceUID"),
        "image_position": _s(ds, "ImagePositionPatient")
        or _fg_first(ds, "PlanePositionSequence", "ImagePositionPatient"),
        "image_orientation": _s(ds, "ImageOrientationPatient")
        or _fg_first(ds, "PlaneOrientationSequence", "ImageOrientationPatient"),
        "instance_number": _int_or_none(ds, "InstanceNumber"),
        "rows": _int_or_none(ds, "Rows"),
        "columns": _int_or_none(ds, "Columns"),
        "number_of_frames": _int_or_none(ds, "NumberOfFrames"),
        "image_type": _s(ds, "ImageType"),
        "transfer_syntax_uid": _s(getattr(ds, "file_meta", {}), "TransferSyntaxUID")
        if hasattr(ds, "file_meta") else "",
        "file_size": int(size),
        "study_date": _s(ds, "StudyDate"),
    }


@dataclass
class _Extra:
    """Per-file information used only to classify series (not stored in files.csv)."""

    contrast_agent: str = ""
    corrected_image: str = ""
    study_date: str = ""
    segments: list = field(default_factory=list)  # (label, kind)
    ref_series: list = field(default_factory=list)
    ref_sops: list = field(default_factory=list)


def _extra(ds, dm: str, lesion_patterns, organ_patterns) -> _Extra:
    agent = _s(ds, "ContrastBolusAgent")
    if not agent:  # enhanced CT: Contrast/Bolus Agent Sequence (0018,0012)
        seq = ds.get("ContrastBolusAgentSequence", None) or []
        agent = next((str(it.get("CodeMeaning", "") or it.get("CodeValue", "")) for it in seq
                      if it.get("CodeMeaning", "") or it.get("CodeValue", "")), "")
    ex = _Extra(contrast_agent=agent,
                corrected_image=_s(ds, "CorrectedImage"), study_date=_s(ds, "StudyDate"))
    if dm == "SEG":
        for d in segment_descriptions(ds):
            kind = classify_segment(name=d["label"], category_code=d["category_code"],
                                    type_code=d["type_code"],
                                    lesion_name_patterns=lesion_patterns,
                                    organ_name_patterns=organ_patterns)
            ex.segments.append((d["label"], kind.value))
        ex.ref_series = referenced_series_uids(ds)
        for item in ds.get("ReferencedSeriesSequence", []) or []:
            for ri in item.get("ReferencedInstanceSequence", []) or []:
                if "ReferencedSOPInstanceUID" in ri:
                    ex.ref_sops.append(str(ri.ReferencedSOPInstanceUID))
    elif dm == "RTSTRUCT":
        for roi in roi_table(ds):
            kind = classify_roi(roi["name"], roi["interpreted_type"],
                                lesion_name_patterns=lesion_patterns,
                                organ_name_patterns=organ_patterns)
            if roi["n_contours"] > 0:
                ex.segments.append((roi["name"], kind.value))
        ex.ref_series, ex.ref_sops = rtstruct_references(ds)
    return ex


def _labelmap_record(path: Path, root: Path, lesion_patterns, organ_patterns
                     ) -> tuple[dict, _Extra]:
    sc = read_sidecar(path)
    grid = labelmap_grid(path)  # header only: validates the NIfTI / NRRD header
    rel = path.relative_to(root).as_posix()
    rec = {k: "" for k, t in FILE_COLUMNS.items() if t == "str"}
    rec.update({
        "path": rel, "patient_id": sc["patient_id"], "study_uid": sc["study_uid"],
        "series_uid": f"labelmap:{rel}", "modality": Modality.LABELMAP.value,
        "dicom_modality": "", "series_description": sidecar_path(path).name,
        "instance_number": None, "rows": grid.shape_zyx[1], "columns": grid.shape_zyx[2],
        "number_of_frames": grid.shape_zyx[0], "file_size": int(os.path.getsize(path)),
    })
    ex = _Extra()
    kind = sc["kind"].value
    names = dict(sc["names"])
    if not names and is_nrrd(path):  # 3D Slicer .seg.nrrd: names in the header
        import SimpleITK as sitk

        r = sitk.ImageFileReader()
        r.SetFileName(str(path))
        r.ReadImageInformation()
        names = {v: n for _, v, n in nrrd_segments({k: r.GetMetaData(k)
                                                     for k in r.GetMetaDataKeys()})}
    for value, name in sorted(names.items()):
        if value == 0:
            continue
        k = kind
        if k == "unknown":
            k = classify_segment(name=name, lesion_name_patterns=lesion_patterns,
                                 organ_name_patterns=organ_patterns).value
        ex.segments.append((name, k))
    if sc["referenced_series_uid"]:
        ex.ref_series = [sc["referenced_series_uid"]]
    return rec, ex


# =========================================================================== series
def _match(desc: str, patterns: Iterable[str]) -> str | None:
    low = desc.lower()
    for p in patterns:
        if re.search(p, low):
            return p
    return None


def _ct_phase(agents: list[str], desc: str) -> tuple[str, str]:
    real = sorted({a for a in agents if a.strip().lower() not in _NO_AGENT})
    if real:
        return CTPhase.CONTRAST.value, f"ContrastBolusAgent '{real[0]}'"
    p = _match(desc, NONCONTRAST_KEYWORDS)
    if p:
        return CTPhase.NONCONTRAST.value, f"description '{desc}' matches {p}"
    p = _match(desc, CONTRAST_KEYWORDS)
    if p:
        return CTPhase.CONTRAST.value, f"description '{desc}' matches {p}"
    return CTPhase.UNKNOWN.value, "no ContrastBolusAgent and no phase keyword in the description"


#: Median HU inside the (eroded) aorta above which a CT is contrast-enhanced, and below which
#: it is non-contrast (unenhanced blood is 30-60 HU; portal-venous aorta 120-200 HU, arterial
#: > 250 HU). In between: unknown.
AORTA_CONTRAST_HU = 110.0
AORTA_NONCONTRAST_HU = 75.0


def refine_ct_phase(
    ct_volume,
    aorta_mask,
    *,
    header_phase: CTPhase | str = CTPhase.UNKNOWN,
    min_voxels: int = 20,
) -> tuple[CTPhase, str]:
    """CT contrast phase from the HU of the aorta (needs pixels: call it outside the index).

    Parameters
    ----------
    ct_volume : Volume
        The CT (HU), e.g. from :func:`pipeline.io.dicom.load_ct`.
    aorta_mask : LesionMask or (z, y, x) bool array
        The aorta on ``ct_volume``'s grid (an organ mask from a SEG, RTSTRUCT or label map).
    header_phase : CTPhase or str
        The phase the index found from the headers (ContrastBolusAgent, description).
    min_voxels : int
        Fewest voxels (after a one-voxel erosion, to leave out the wall and partial volume)
        needed to judge.

    Returns
    -------
    (CTPhase, reason)
        ``contrast`` when the median aortic HU is >= 110, ``noncontrast`` when <= 75, else the
        header phase. The reason gives the median HU, the voxel count and whether it agrees with
        the header phase; a disagreement keeps the HU verdict (the pixels decide) and says so.
    """
    from scipy import ndimage

    header_phase = CTPhase(header_phase)
    if hasattr(aorta_mask, "full"):
        if not aorta_mask.grid.same_as(ct_volume.grid):
            return header_phase, "aorta mask is not on the CT grid; phase from the headers"
        mask = aorta_mask.full()
    else:
        mask = np.asarray(aorta_mask, dtype=bool)
    if mask.shape != tuple(ct_volume.array.shape):
        return header_phase, "aorta mask shape differs from the CT; phase from the headers"
    core = ndimage.binary_erosion(mask, iterations=1)
    if core.sum() < min_voxels:
        core = mask
    n = int(core.sum())
    if n < min_voxels:
        return header_phase, (f"aorta mask has {n} voxels (< {min_voxels}); phase from the "
                              "headers")
    hu = float(np.median(ct_volume.array[core]))
    if hu >= AORTA_CONTRAST_HU:
        phase = CTPhase.CONTRAST
    elif hu <= AORTA_NONCONTRAST_HU:
        phase = CTPhase.NONCONTRAST
    else:
        return header_phase, (f"median aortic HU {hu:.0f} over {n} voxels is between "
                              f"{AORTA_NONCONTRAST_HU:.0f} and {AORTA_CONTRAST_HU:.0f}: "
                              "inconclusive; phase from the headers")
    reason = f"median aortic HU {hu:.0f} over {n} voxels"
    if header_phase is CTPhase.UNKNOWN:
        reason += " (headers did not tell)"
    elif header_phase is not phase:
        reason += f" contradicts the header phase {header_phase.value}; the HU decide"
        log.warning("CT %s: %s", ct_volume.series_uid, reason)
    else:
        reason += f" agrees with the headers ({header_phase.value})"
    return phase, reason


def _excluded_reason(dm: str, sop_classes: set[str], image_types: list[str], desc: str
                     ) -> tuple[str, bool]:
    localizer = any(
        tok in {"LOCALIZER", "SCOUT", "TOPOGRAM", "SURVIEW", "SCANOGRAM"}
        for it in image_types for tok in it.upper().split("\\")
    )
    if localizer:
        return "localizer/scout (ImageType)", True
    if any(c.startswith(SECONDARY_CAPTURE_PREFIX) for c in sop_classes):
        return "secondary capture", False
    if dm == "SR" or any(c.startswith(SR_PREFIX) for c in sop_classes):
        return "structured report (dose report or summary)", False
    if _match(desc, DOSE_REPORT_KEYWORDS):
        return f"dose report/summary (description '{desc}')", False
    if dm in ("CT", "PT") and any("SCREEN SAVE" in it.upper() for it in image_types):
        return "screen save", False
    if dm not in {m.value for m in Modality} and dm:
        return f"modality {dm} not used", False
    return "", False


def _series_kind(kinds: list[str]) -> str:
    c = Counter(kinds)
    if c["lesion"] and c["organ"]:
        return "mixed"
    if c["lesion"]:
        return "lesion"
    if c["organ"]:
        return "organ"
    return "unknown" if kinds else ""


def _build_series(files: pd.DataFrame, extras: dict[str, _Extra]) -> pd.DataFrame:
    all_series = set(files["series_uid"])
    all_sops = set(files["sop_instance_uid"]) - {""}
    rows = []
    for uid, g in files.groupby("series_uid", sort=False):
        first = g.iloc[0]
        mod = Counter(g["modality"]).most_common(1)[0][0]
        dm = Counter(g["dicom_modality"]).most_common(1)[0][0]
        ex_list = [extras[p] for p in g["path"]]
        desc = first["series_description"]
        orients = {_orientation_label(o) for o in g["image_orientation"] if o}
        orientation = orients.pop() if len(orients) == 1 else ("mixed" if orients else "")
        excluded, is_loc = _excluded_reason(dm, set(g["sop_class_uid"]),
                                            list(g["image_type"]), desc)
        if not excluded and mod == Modality.CT.value and orientation in ("sagittal", "coronal"):
            excluded = f"{orientation} reformat (not an axial CT volume)"
        phase, phase_reason = "", ""
        if mod == Modality.CT.value:
            phase, phase_reason = _ct_phase([e.contrast_agent for e in ex_list], desc)
        pet_corrected = pd.NA
        if mod == Modality.PT.value:
            ci = {e.corrected_image.upper() for e in ex_list if e.corrected_image}
            if ci:
                pet_corrected = any("ATTN" in c.split("\\") for c in ci)
            elif re.search(r"\bnac\b|uncorrected|no[-_ ]?ac\b", desc.lower()):
                pet_corrected = False
        segs: list[tuple[str, str]] = []
        refs: list[str] = []
        ref_sops: list[str] = []
        for e in ex_list:
            segs += e.segments
            refs += e.ref_series
            ref_sops += e.ref_sops
        refs = list(dict.fromkeys(refs))
        problems = []
        missing_series = [r for r in refs if r not in all_series]
        if missing_series:
            problems.append(f"referenced series not in the archive: {', '.join(missing_series)}")
        missing_sops = [s for s in dict.fromkeys(ref_sops) if s not in all_sops]
        if missing_sops:
            problems.append(f"{len(missing_sops)} referenced image instance(s) not in the "
                            f"archive (first {missing_sops[0]})")
        if mod in (Modality.SEG.value, Modality.RTSTRUCT.value) and not refs:
            problems.append("names no referenced image series")
        kinds = [k for _, k in segs]
        rows.append({
            "series_uid": uid,
            "study_uid": Counter(g["study_uid"]).most_common(1)[0][0],
            "patient_id": Counter(g["patient_id"]).most_common(1)[0][0],
            "modality": mod, "dicom_modality": dm,
            "n_files": int(len(g)),
            "n_instances": int(len(set(g["sop_instance_uid"]) - {""}) or len(g)),
            "n_slices": int(sum(int(v) if not pd.isna(v) and int(v) > 1 else 1
                                for v in g.drop_duplicates("sop_instance_uid")
                                ["number_of_frames"])),
            "description": desc, "series_number": first["series_number"],
            "frame_of_reference_uid": first["frame_of_reference_uid"],
            "study_date": next((e.study_date for e in ex_list if e.study_date), ""),
            "orientation": orientation,
            "ct_phase": phase, "phase_reason": phase_reason,
            "excluded_reason": excluded, "is_localizer": bool(is_loc),
            "pet_corrected": pet_corrected,
            "referenced_series_uids": ";".join(refs),
            "segment_kind": _series_kind(kinds) if segs or mod in (
                Modality.SEG.value, Modality.RTSTRUCT.value, Modality.LABELMAP.value) else "",
            "n_segments": len(segs),
            "n_lesion_segments": kinds.count("lesion"),
            "n_organ_segments": kinds.count("organ"),
            "segment_names": json.dumps([n for n, _ in segs], ensure_ascii=False) if segs else "",
            "reference_problem": "; ".join(problems),
            "first_path": first["path"],
        })
    return _typed(pd.DataFrame(rows, columns=list(SERIES_COLUMNS)), SERIES_COLUMNS)


def _typed(df: pd.DataFrame, spec: dict[str, str]) -> pd.DataFrame:
    """Cast columns to their declared kinds (also used after reading CSV)."""
    df = df.copy()
    for col, kind in spec.items():
        if col not in df.columns:
            df[col] = pd.Series([None] * len(df), dtype=object)
        s = df[col]
        if kind == "str":
            df[col] = s.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v))
                            or v is pd.NA else str(v)).astype(str)
        elif kind == "int":
            df[col] = pd.to_numeric(s, errors="raise").astype("int64")
        elif kind == "Int64":
            df[col] = pd.to_numeric(s.replace("", None), errors="coerce").astype("Int64")
        elif kind == "bool":
            df[col] = s.map(lambda v: v if isinstance(v, (bool, np.bool_))
                            else str(v).strip().lower() == "true").astype(bool)
        elif kind == "boolean":
            df[col] = s.map(
                lambda v: pd.NA if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                or (isinstance(v, str) and v.strip() in ("", "<NA>", "nan"))
                else (bool(v) if isinstance(v, (bool, np.bool_))
                      else str(v).strip().lower() == "true")
            ).astype("boolean")
    return df[list(spec)]


# =========================================================================== public: scan
def scan_archive(
    root: Path,
    progress: Callable[[int, int], None] | None = None,
    *,
    lesion_name_patterns: Iterable[str] = DEFAULT_LESION_NAME_PATTERNS,
    organ_name_patterns: Iterable[str] = DEFAULT_ORGAN_NAME_PATTERNS,
) -> ArchiveIndex:
    """Index every file under ``root`` from headers only.

    Parameters
    ----------
    root : Path
        Archive folder (any layout, any file names).
    progress : callable (done, total), optional
        Called after each file.
    lesion_name_patterns, organ_name_patterns : iterable of str
        fnmatch patterns (case-insensitive) for segments / ROIs whose coded category does not
        tell lesion from organ (see :func:`pipeline.io.seg.classify_segment`).

    Returns
    -------
    ArchiveIndex
        ``series`` classification:

        * ``ct_phase``: ``contrast`` if any file has a ContrastBolusAgent (not "none"/"no"),
          else by description keywords (:data:`NONCONTRAST_KEYWORDS` first, then
          :data:`CONTRAST_KEYWORDS`), else ``unknown``; ``phase_reason`` says which.
        * ``excluded_reason``: localizer/scout (ImageType), secondary capture, structured
          reports and dose reports/summaries, screen saves, unused modalities ("" = usable).
        * ``pet_corrected``: CorrectedImage contains ATTN (NA when unknown, non-PET).
        * ``referenced_series_uids``: SEG ReferencedSeriesSequence, RTSTRUCT
          RTReferencedSeriesSequence, label-map sidecar (";"-joined).
        * ``segment_kind``: lesion / organ / mixed / unknown from the segments' coded categories
          (49755003 -> lesion, 91723000 -> organ), then name patterns; sidecar ``kind`` for label
          maps.
        * ``reference_problem``: referenced series or instances missing from the archive.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"archive folder does not exist: {root}", file=root,
                          hint="pass the folder that holds the DICOM files")
    all_paths: list[Path] = []
    seen_dirs: set[str] = set()
    # symbolic links to folders are followed (archives are often assembled from links); a
    # folder reached twice (link loops, duplicate links) is scanned once
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            all_paths.append(Path(dirpath) / name)
    nifti_stems = {sidecar_path(p) for p in all_paths if is_labelmap(p)}
    totalseg_dirs: dict[Path, bool] = {}
    records: list[dict] = []
    extras: dict[str, _Extra] = {}
    problems: list[dict] = []
    total = len(all_paths)

    def problem(p: Path, reason: str, cls: str, ds=None) -> None:
        rec = {"path": p.relative_to(root).as_posix(), "reason": reason, "error_class": cls}
        if ds is not None:
            rec.update(patient_id=_s(ds, "PatientID"), study_uid=_s(ds, "StudyInstanceUID"),
                       series_uid=_s(ds, "SeriesInstanceUID"))
        problems.append(rec)

    for i, p in enumerate(all_paths):
        try:
            if p.is_symlink() and not p.exists():
                problem(p, "broken symbolic link", "DicomReadError")
            elif is_labelmap(p):
                if not sidecar_path(p).exists() and _in_totalseg_folder(p, totalseg_dirs):
                    pass  # part of a TotalSegmentator output folder (organ masks)
                elif not sidecar_path(p).exists():
                    problem(p, f"label map without sidecar {sidecar_path(p).name} (needs "
                            "patient_id, study_uid, referenced_series_uid, kind, names)",
                            "SegmentationError")
                else:
                    rec, ex = _labelmap_record(p, root, lesion_name_patterns,
                                               organ_name_patterns)
                    records.append(rec)
                    extras[rec["path"]] = ex
            elif p in nifti_stems:
                pass  # sidecar of a label map
            else:
                _index_dicom(p, root, records, extras, problem, lesion_name_patterns,
                             organ_name_patterns)
        except PipelineError as exc:
            problem(p, exc.message, type(exc).__name__)
        except Exception as exc:  # one bad file never stops the scan
            problem(p, f"unreadable: {type(exc).__name__}: {exc}", "DicomReadError")
        if progress is not None:
            progress(i + 1, total)

    files = _inherit_labelmap_ids(
        _typed(pd.DataFrame(records, columns=list(FILE_COLUMNS)), FILE_COLUMNS), extras)
    series = _build_series(files, extras) if len(files) else _typed(
        pd.DataFrame(columns=list(SERIES_COLUMNS)), SERIES_COLUMNS)
    probs = _typed(pd.DataFrame(problems, columns=list(PROBLEM_COLUMNS)), PROBLEM_COLUMNS)
    log.info("indexed %d files in %d series under %s; %d problem file(s)",
             len(files), len(series), root, len(probs))
    return ArchiveIndex(files=files, series=series, problems=probs, root=root,
                        meta={"n_scanned": total,
                              "totalseg_folders": _totalseg_records(totalseg_dirs, root, files)})


def _in_totalseg_folder(p: Path, cache: dict[Path, bool]) -> bool:
    """True when ``p`` lies in a TotalSegmentator output folder (cached per folder)."""
    from pipeline.io.totalseg import is_totalseg_folder

    d = p.parent
    if d not in cache:
        cache[d] = is_totalseg_folder(d)
    return cache[d]


def _totalseg_records(dirs: dict[Path, bool], root: Path, files: pd.DataFrame) -> list[dict]:
    """TotalSegmentator folders with the study they belong to.

    A folder belongs to a study when the DICOM files under its parent folder are of exactly one
    study; otherwise its study is left empty and the folder must be named in an edited study
    sheet (``organ_mask_source`` totalseg, ``organ_mask_ref`` the folder relative to the root).
    """
    out = []
    for d, ok in sorted(dirs.items()):
        if not ok:
            continue
        rel = d.relative_to(root).as_posix()
        parent = d.parent.relative_to(root).as_posix()
        prefix = "" if parent == "." else parent + "/"
        near = files[files["path"].str.startswith(prefix) & (files["modality"] != "LABELMAP")] \
            if len(files) else files
        studies = sorted(set(near["study_uid"])) if len(near) else []
        out.append({"path": rel, "study_uid": studies[0] if len(studies) == 1 else "",
                    "patient_id": str(near["patient_id"].iloc[0]) if len(studies) == 1 else ""})
    return out


def _inherit_labelmap_ids(files: pd.DataFrame, extras: dict[str, _Extra]) -> pd.DataFrame:
    """Label maps whose sidecar lacks patient_id / study_uid take them from their series."""
    if files.empty:
        return files
    lm = files["modality"] == Modality.LABELMAP.value
    need = lm & ((files["patient_id"] == "") | (files["study_uid"] == ""))
    if not need.any():
        return files
    dicom = files[~lm].drop_duplicates("series_uid").set_index("series_uid")
    files = files.copy()
    for i in files.index[need]:
        refs = extras[files.at[i, "path"]].ref_series
        ref = next((r for r in refs if r in dicom.index), None)
        if ref is None:
            continue
        for col in ("patient_id", "study_uid"):
            if not files.at[i, col]:
                files.at[i, col] = dicom.at[ref, col]
    return files


#: ``error_class`` of files that are simply not DICOM (notes, JSON, spreadsheets): listed in
#: ``problems.csv`` as skipped, but not failures of the batch.
NOT_DICOM = "NotDicom"


def _index_dicom(p: Path, root: Path, records: list, extras: dict, problem,
                 lesion_patterns, organ_patterns) -> None:
    looks, preamble = _sniff(p)
    if not looks:
        problem(p, "not a DICOM file (no DICM preamble and no DICOM group 0002/0008 at the "
                   "start)", NOT_DICOM)
        return
    size = p.stat().st_size
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True, force=not preamble)
    except Exception as exc:
        problem(p, f"unreadable DICOM header: {type(exc).__name__}: {exc}", "DicomReadError")
        return
    ms = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if ms == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        log.debug("skipping DICOMDIR %s", p)
        return
    if not preamble and not (has_value(ds, "SOPInstanceUID") or has_value(ds, "Modality")):
        problem(p, "not a DICOM file (no preamble and no SOPInstanceUID/Modality)", NOT_DICOM)
        return
    reason = check_complete(p, ds)
    if reason:
        problem(p, reason, "DicomReadError", ds)
        return
    missing = [kw for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
               if not has_value(ds, kw)]
    if missing:
        problem(p, f"DICOM file without {', '.join(missing)}: cannot be placed in a series",
                "MissingTagError", ds)
        return
    rec = _file_record(p, root, ds, size)
    records.append(rec)
    extras[rec["path"]] = _extra(ds, rec["dicom_modality"], lesion_patterns, organ_patterns)


# =========================================================================== persistence
def write_index(index: ArchiveIndex, out_dir: Path) -> None:
    """Write ``files.csv``, ``series.csv``, ``problems.csv`` and ``index.json`` to ``out_dir``.

    Paths stay relative to the archive root; the root is stored in ``index.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index.files.to_csv(out / "files.csv", index=False)
    index.series.to_csv(out / "series.csv", index=False)
    index.problems.to_csv(out / "problems.csv", index=False)
    meta = dict(index.meta)
    meta.update({"root": str(Path(index.root).resolve()), "n_files": int(len(index.files)),
                 "n_series": int(len(index.series)), "n_problems": int(len(index.problems))})
    (out / "index.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _read_csv(path: Path, spec: dict[str, str]) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    missing = [c for c in spec if c not in df.columns]
    if missing:
        raise ConfigError(f"index table lacks column(s) {missing}", file=path, tag=missing[0],
                          hint="re-create the index with scan_archive/write_index")
    return _typed(df, spec)


def read_index(out_dir: Path) -> ArchiveIndex:
    """Read an index written by :func:`write_index` (round-trip safe)."""
    out = Path(out_dir)
    meta = json.loads((out / "index.json").read_text(encoding="utf-8"))
    return ArchiveIndex(
        files=_read_csv(out / "files.csv", FILE_COLUMNS),
        series=_read_csv(out / "series.csv", SERIES_COLUMNS),
        problems=_read_csv(out / "problems.csv", PROBLEM_COLUMNS),
        root=Path(meta["root"]),
        meta=meta,
    )


# =========================================================================== study sheet
def _pick(cands: pd.DataFrame, prefer: Callable[[pd.Series], tuple] | None = None
          ) -> pd.Series | None:
    if cands.empty:
        return None
    keyed = []
    for _, r in cands.iterrows():
        extra = prefer(r) if prefer else ()
        size = int(r["n_slices"]) if "n_slices" in r and int(r["n_slices"]) else int(r["n_files"])
        keyed.append((extra + (-size, r["series_uid"]), r))
    keyed.sort(key=lambda t: t[0])
    return keyed[0][1]


def build_study_sheet(
    index: ArchiveIndex,
    *,
    mask_source_priority: tuple[str, ...] = ("seg", "rtstruct", "labelmap"),
) -> pd.DataFrame:
    """One row per study with the series chosen for each role.

    Choice rules
    ------------
    Series with an ``excluded_reason`` (localizers, secondary captures, reports) are never chosen.

    * ``ct_series_uid``: the non-contrast CT with the most slices (frames of multi-frame objects
      count); if there is none, the CT of unknown phase with the most slices (noted). Ties:
      smallest SeriesInstanceUID.
    * ``ce_ct_series_uid``: the contrast CT with the most slices.
    * ``pet_series_uid``: the attenuation-corrected PET (CorrectedImage ATTN; unknown accepted
      with a note) with the most slices; a PET known to be uncorrected is never chosen, even
      when it is the only PET (noted).
    * Studies with only a PET or only a CT get their row too, with a note saying which features
      their data allow (PET only: shape and SUV from a mask drawn on the PET, no skin depth or
      organ; CT only: no SUV).
    * ``lesion_mask_source`` / ``lesion_mask_ref``: the first source in ``mask_source_priority``
      that has a usable candidate. Candidates: SEG / RTSTRUCT series and label maps of the study
      whose ``segment_kind`` is lesion or mixed (unknown only if no source has one, noted) and
      whose references are intact: a segmentation whose referenced series is not in the study
      or has other ``reference_problem`` is skipped with a note. Among candidates: those
      referencing the chosen CT, then the contrast CT, then the PET; then most segments; then
      smallest UID. ``lesion_mask_ref`` is the SeriesInstanceUID (SEG, RTSTRUCT) or the label
      map's path relative to the archive root.
    * ``organ_mask_*``: the same with segment_kind organ or mixed (no unknown fallback).
    * ``notes``: every such decision, "; "-joined.

    Sources ``""`` mean none; the row is still written so that a user can fill it.
    """
    series = index.series
    out = []
    if series.empty:
        return pd.DataFrame(columns=list(STUDY_SHEET_COLUMNS))
    usable = series[series["excluded_reason"] == ""]
    for (pid, study), g_all in series.groupby(["patient_id", "study_uid"], sort=True):
        g = usable[(usable["patient_id"] == pid) & (usable["study_uid"] == study)]
        notes: list[str] = []
        n_excl = len(g_all) - len(g)
        if n_excl:
            notes.append(f"{n_excl} series excluded ("
                         + ", ".join(sorted(set(g_all["excluded_reason"]) - {""})) + ")")
        if not index.problems.empty:
            bad = index.problems[(index.problems["study_uid"] == study)
                                 & (index.problems["patient_id"] == pid)]
            if len(bad):
                notes.append(f"{len(bad)} file(s) of this study unreadable or truncated, first "
                             f"{bad.iloc[0]['path']}: {bad.iloc[0]['reason']}")
        cts = g[g["modality"] == Modality.CT.value]
        ct = _pick(cts[cts["ct_phase"] == CTPhase.NONCONTRAST.value])
        if ct is None:
            ct = _pick(cts[cts["ct_phase"] == CTPhase.UNKNOWN.value])
            if ct is not None:
                notes.append(f"CT {ct['series_uid']} has unknown contrast phase; used as the "
                             "non-contrast CT")
        ce = _pick(cts[cts["ct_phase"] == CTPhase.CONTRAST.value])
        if ct is None:
            notes.append("no non-contrast CT")
        elif ct["ct_phase"] == CTPhase.NONCONTRAST.value:
            notes.append(f"ct: {ct['n_slices']} slices, non-contrast by {ct['phase_reason']}")
        if ce is None:
            notes.append("no contrast-enhanced CT")
        else:
            notes.append(f"ce_ct: {ce['n_slices']} slices, contrast by {ce['phase_reason']}")
        if ct is not None and len(cts) > 1 + (ce is not None):
            notes.append(f"{len(cts)} CT series; chose the one with most slices per phase")

        pets = g[g["modality"] == Modality.PT.value]
        known_nac = pets[pets["pet_corrected"].fillna(True) == False]  # noqa: E712
        pet_cands = pets[pets["pet_corrected"].fillna(True) == True]  # noqa: E712
        pet = _pick(pet_cands, lambda r: (1 if pd.isna(r["pet_corrected"]) else 0,))
        if len(known_nac):
            notes.append(f"{len(known_nac)} non-attenuation-corrected PET series not used")
        if pet is not None and pd.isna(pet["pet_corrected"]):
            notes.append(f"PET {pet['series_uid']}: attenuation correction unknown "
                         "(no CorrectedImage)")
        if pet is None:
            notes.append("no PET")
        else:
            notes.append(f"pet: {pet['n_slices']} slices")
        if ct is None and ce is None and pet is not None:
            notes.append("PET-only study: shape and SUV features from the PET grid; skin depth, "
                         "organ and CT features unavailable")
        elif pet is None and (ct is not None or ce is not None):
            notes.append("CT-only study: SUV features unavailable")

        study_series = set(g_all["series_uid"])
        chosen_images = [r["series_uid"] for r in (ct, ce, pet) if r is not None]

        def candidates(kinds: set[str], label: str) -> dict[str, list[pd.Series]]:
            res: dict[str, list[pd.Series]] = {}
            for src in mask_source_priority:
                mod = {"seg": Modality.SEG.value, "rtstruct": Modality.RTSTRUCT.value,
                       "labelmap": Modality.LABELMAP.value}.get(src)
                if mod is None:
                    raise ConfigError(f"unknown mask source {src!r} in mask_source_priority",
                                      tag="mask_source_priority",
                                      hint="use seg, rtstruct and labelmap")
                ok = []
                for _, r in g[(g["modality"] == mod) & (g["segment_kind"].isin(kinds))].iterrows():
                    refs = [u for u in r["referenced_series_uids"].split(";") if u]
                    outside = [u for u in refs if u not in study_series]
                    name = r["first_path"] if mod == Modality.LABELMAP.value else r["series_uid"]
                    if outside:
                        notes.append(f"{src} {name} skipped for {label}: referenced series "
                                     f"{', '.join(outside)} not in this study")
                        continue
                    if r["reference_problem"]:
                        notes.append(f"{src} {name} skipped for {label}: {r['reference_problem']}")
                        continue
                    ok.append(r)
                res[src] = ok
            return res

        def choose(kinds: set[str], label: str) -> tuple[str, str]:
            cands = candidates(kinds, label)
            for src in mask_source_priority:
                if not cands[src]:
                    continue

                def key(r: pd.Series) -> tuple:
                    refs = [u for u in r["referenced_series_uids"].split(";") if u]
                    rank = min((chosen_images.index(u) for u in refs if u in chosen_images),
                               default=len(chosen_images))
                    return (rank, -int(r["n_segments"]), r["series_uid"])

                best = sorted(cands[src], key=key)[0]
                if len(cands[src]) > 1:
                    notes.append(f"{len(cands[src])} {src} candidates for {label}; chose the one "
                                 "referencing the chosen images with most segments")
                refs = [u for u in best["referenced_series_uids"].split(";") if u]
                role = next((r for r, row_ in (("ct", ct), ("ce_ct", ce), ("pet", pet))
                             if row_ is not None and row_["series_uid"] in refs), "other series")
                notes.append(f"{label}: {src} with {best['n_segments']} segment(s) "
                             f"({best['segment_kind']}) drawn on {role}")
                ref = best["first_path"] if src == "labelmap" else best["series_uid"]
                return src, ref
            return "", ""

        les_src, les_ref = choose({"lesion", "mixed"}, "lesions")
        if not les_src:
            les_src, les_ref = choose({"unknown"}, "lesions")
            if les_src:
                notes.append(f"lesion mask {les_ref}: segment kind unknown (no lesion category "
                             "or name pattern matched); assumed to hold lesions")
            else:
                notes.append("no lesion segmentation")
        org_src, org_ref = choose({"organ", "mixed"}, "organs")
        if not org_src:
            ts = [t for t in index.meta.get("totalseg_folders", []) if t.get("study_uid") == study]
            if ts:
                org_src, org_ref = "totalseg", ts[0]["path"]
                notes.append(f"organs: TotalSegmentator folder {org_ref}")
        if not org_src:
            notes.append("no organ segmentation")
        out.append({
            "patient_id": pid, "study_uid": study,
            "ct_series_uid": ct["series_uid"] if ct is not None else "",
            "ce_ct_series_uid": ce["series_uid"] if ce is not None else "",
            "pet_series_uid": pet["series_uid"] if pet is not None else "",
            "lesion_mask_source": les_src, "lesion_mask_ref": les_ref,
            "organ_mask_source": org_src, "organ_mask_ref": org_ref,
            "notes": "; ".join(dict.fromkeys(notes)),
        })
    return pd.DataFrame(out, columns=list(STUDY_SHEET_COLUMNS)).astype(str)


def read_study_sheet(path: Path) -> pd.DataFrame:
    """Read a (user-edited) study sheet CSV with every cell as a string ("" when empty)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except Exception as exc:
        raise ConfigError(f"cannot read study sheet: {exc}", file=path,
                          hint="save the sheet as comma-separated CSV with a header row") from exc


def validate_study_sheet(
    df: pd.DataFrame, schema_path: Path, *, index: ArchiveIndex | None = None
) -> pd.DataFrame:
    """Check a study sheet against ``configs/studies.schema.yaml`` and against the index.

    Parameters
    ----------
    df : DataFrame
        The sheet (e.g. from :func:`read_study_sheet`). Empty cells may be "" or NaN.
    schema_path : Path
        JSON Schema (in YAML) of one row; ``x-columns`` lists the column order.
    index : ArchiveIndex, optional
        When given, every referenced UID / path must exist in it with the right modality and
        belong to the row's patient and study.

    Returns
    -------
    DataFrame
        The sheet with all cells as strings.

    Raises
    ------
    ConfigError
        Naming the row (1-based data row, with patient and study) and the column.
    """
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))
    sheet = df.copy()
    for col in sheet.columns:
        sheet[col] = sheet[col].map(
            lambda v: "" if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
            else v)
    required_cols = list(schema.get("required", []))
    missing_cols = [c for c in required_cols if c not in sheet.columns]
    if missing_cols:
        raise ConfigError(f"study sheet lacks column(s) {missing_cols}", file=schema_path,
                          tag=missing_cols[0],
                          hint=f"the sheet needs the columns {list(STUDY_SHEET_COLUMNS)}")
    validator = jsonschema.Draft202012Validator(schema)

    def where(i: int, row: dict) -> str:
        return (f"row {i + 1} (patient {row.get('patient_id', '?')}, study "
                f"{row.get('study_uid', '?')})")

    records = sheet.to_dict(orient="records")
    for i, row in enumerate(records):
        errors = sorted(validator.iter_errors(row), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            if e.validator == "additionalProperties":
                col = ", ".join(sorted(set(row) - set(schema.get("properties", {}))))
                msg = f"unknown column(s) {col}"
            else:
                col = str(e.path[0]) if e.path else (
                    e.message.split("'")[1] if e.validator == "required" else "")
                msg = f"column {col}: {e.message}"
            raise ConfigError(f"study sheet {where(i, row)}: {msg}", tag=col or None,
                              hint="fix the cell; allowed values are in "
                              f"{Path(schema_path).name}")
        for src_col, ref_col in (("lesion_mask_source", "lesion_mask_ref"),
                                 ("organ_mask_source", "organ_mask_ref")):
            if bool(row[src_col]) != bool(row[ref_col]):
                raise ConfigError(
                    f"study sheet {where(i, row)}: column {ref_col} must be filled exactly when "
                    f"{src_col} is (found source {row[src_col]!r}, ref {row[ref_col]!r})",
                    tag=ref_col, hint="fill both cells or leave both empty")
    keys = Counter((r["patient_id"], r["study_uid"]) for r in records)
    dup = [k for k, n in keys.items() if n > 1]
    if dup:
        raise ConfigError(f"study sheet lists study {dup[0][1]} of patient {dup[0][0]} "
                          f"{keys[dup[0]]} times", tag="study_uid",
                          hint="keep one row per study")
    if index is not None:
        series = index.series.set_index("series_uid", drop=False)
        expect = {"ct_series_uid": {"CT"}, "ce_ct_series_uid": {"CT"},
                  "pet_series_uid": {"PT"}}
        for i, row in enumerate(records):
            for col, mods in expect.items():
                uid = row[col]
                if uid:
                    _check_ref(series, uid, mods, row, col, where(i, row))
            for src_col, ref_col in (("lesion_mask_source", "lesion_mask_ref"),
                                     ("organ_mask_source", "organ_mask_ref")):
                src, ref = row[src_col], row[ref_col]
                if not src:
                    continue
                if src == "totalseg":
                    if not (Path(index.root) / ref).is_dir():
                        raise ConfigError(
                            f"study sheet {where(i, row)}: column {ref_col}: TotalSegmentator "
                            f"folder {ref!r} does not exist under the archive root", tag=ref_col,
                            hint="give the folder path relative to the archive root")
                    continue
                if src == "labelmap":
                    uid = f"labelmap:{ref}"
                    if uid not in series.index:
                        raise ConfigError(
                            f"study sheet {where(i, row)}: column {ref_col}: label map {ref!r} "
                            "is not in the archive index", tag=ref_col,
                            hint="give the label map's path relative to the archive root, as "
                            "in files.csv")
                    _check_ref(series, uid, {"LABELMAP"}, row, ref_col, where(i, row))
                else:
                    _check_ref(series, ref, {src.upper()}, row, ref_col, where(i, row))
    return sheet.astype(str)


def _check_ref(series: pd.DataFrame, uid: str, modalities: set[str], row: dict, col: str,
               where: str) -> None:
    if uid not in series.index:
        raise ConfigError(f"study sheet {where}: column {col}: series {uid} is not in the "
                          "archive index", tag=col,
                          hint="copy the SeriesInstanceUID from series.csv of the index")
    r = series.loc[uid]
    if isinstance(r, pd.DataFrame):
        r = r.iloc[0]
    if r["modality"] not in modalities:
        raise ConfigError(f"study sheet {where}: column {col}: series {uid} has modality "
                          f"{r['modality']}, expected {'/'.join(sorted(modalities))}", tag=col,
                          hint="choose a series of the right modality from series.csv")
    if r["study_uid"] != row["study_uid"] or r["patient_id"] != row["patient_id"]:
        raise ConfigError(f"study sheet {where}: column {col}: series {uid} belongs to patient "
                          f"{r['patient_id']} study {r['study_uid']}", tag=col,
                          hint="choose a series of this study")
