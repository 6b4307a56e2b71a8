"""DICOM SEG -> lesion / organ masks on the grid of the referenced image series.

Each frame of the SEG is placed on the referenced series' grid by its own ImagePositionPatient
(PlanePositionSequence), never by frame order: a SEG may hold only the slices that contain a
segment, in any order, one frame per segment and slice. Frames must share the grid's in-plane
orientation and pixel spacing (resampling SEG frames is issue 3); their origin may be offset by a
whole number of pixels (cropped frames).

Segment kind (lesion / organ) comes from the coded SegmentedPropertyCategory, then the
SegmentedPropertyType, then the segment label matched against name patterns (see
:func:`classify_segment`). The same function classifies RTSTRUCT ROIs and is used by the index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from pipeline.errors import SegmentationError
from pipeline.geometry import Grid, bbox_of
from pipeline.io.dicom import tag_label
from pipeline.records import LesionMask, MaskSource, SegmentKind

log = logging.getLogger(__name__)

#: SegmentedPropertyCategory codes of lesions (SCT "Morphologically abnormal structure",
#: SRT "Morphologically altered structure").
LESION_CATEGORY_CODES = frozenset({"49755003", "M-01000"})
#: SegmentedPropertyCategory codes of organs (SCT "Anatomical structure", "Body structure",
#: SRT "Anatomical Structure").
ORGAN_CATEGORY_CODES = frozenset({"91723000", "123037004", "T-D000A"})
#: SegmentedPropertyType codes that denote a lesion whatever the category (neoplasm, mass,
#: nodule, lesion, metastasis, malignant neoplasm).
LESION_TYPE_CODES = frozenset(
    {"108369006", "4147007", "27925004", "52988006", "128462008", "14799000", "86049000",
     "363346000", "M-80003", "M-80006", "M-03000"}
)

#: Default name patterns (fnmatch, case-insensitive) of lesion segments / ROIs.
DEFAULT_LESION_NAME_PATTERNS: tuple[str, ...] = (
    "gtv*", "*lesion*", "*tumor*", "*tumour*", "met", "met[-_ 0-9]*", "*metast*", "*_met*",
    "*nodule*", "mass*", "*_mass*", "target*", "non-target*", "nontarget*", "ln[-_ 0-9]*",
    "*node[-_ 0-9]*", "les[-_ 0-9]*",
)
#: Default name patterns (fnmatch, case-insensitive) of organ segments / ROIs.
DEFAULT_ORGAN_NAME_PATTERNS: tuple[str, ...] = (
    "liver", "spleen", "*lung*", "aorta", "heart", "*kidney*", "spine", "*vertebra*",
    "spinal*", "*bone*", "body", "external", "skin", "bladder", "pancreas", "stomach",
    "esophagus", "oesophagus", "trachea", "brain", "*bowel*", "colon", "*adrenal*",
    "gallbladder", "prostate", "*vessel*", "ivc", "*vena*", "portal*", "*muscle*", "fat",
    "table", "couch*", "breast*", "*artery*", "*vein*", "thyroid", "*gland*", "*organ*",
)


def match_any(name: str, patterns: Iterable[str]) -> bool:
    """True if ``name`` matches one of the fnmatch ``patterns`` (case-insensitive)."""
    low = (name or "").strip().lower()
    return any(fnmatchcase(low, p.lower()) for p in patterns)


def classify_segment(
    *,
    name: str,
    category_code: str = "",
    type_code: str = "",
    lesion_name_patterns: Iterable[str] = DEFAULT_LESION_NAME_PATTERNS,
    organ_name_patterns: Iterable[str] = DEFAULT_ORGAN_NAME_PATTERNS,
) -> SegmentKind:
    """Lesion or organ, by coded category, then coded type, then name patterns.

    Parameters
    ----------
    name : str
        SegmentLabel or ROIName.
    category_code, type_code : str
        CodeValue of SegmentedPropertyCategoryCodeSequence / SegmentedPropertyTypeCodeSequence
        ("" for RTSTRUCT).
    lesion_name_patterns, organ_name_patterns : iterable of str
        fnmatch patterns, case-insensitive; lesion patterns are tried first.
    """
    if category_code in LESION_CATEGORY_CODES:
        return SegmentKind.LESION
    if category_code in ORGAN_CATEGORY_CODES:
        return SegmentKind.ORGAN
    if type_code in LESION_TYPE_CODES:
        return SegmentKind.LESION
    if match_any(name, lesion_name_patterns):
        return SegmentKind.LESION
    if match_any(name, organ_name_patterns):
        return SegmentKind.ORGAN
    return SegmentKind.UNKNOWN


def _code(item, keyword: str) -> str:
    seq = item.get(keyword, None)
    if not seq:
        return ""
    return str(seq[0].get("CodeValue", "") or seq[0].get("LongCodeValue", "") or "")


def segment_descriptions(ds) -> list[dict]:
    """Per segment of a SEG header: number, label, category/type codes, tracking UID."""
    out = []
    for s in ds.get("SegmentSequence", []) or []:
        out.append(
            {
                "segment_number": int(s.get("SegmentNumber", 0)),
                "label": str(s.get("SegmentLabel", "") or ""),
                "category_code": _code(s, "SegmentedPropertyCategoryCodeSequence"),
                "type_code": _code(s, "SegmentedPropertyTypeCodeSequence"),
                "tracking_uid": str(s.get("TrackingUID", "") or ""),
            }
        )
    return out


def referenced_series_uids(ds) -> list[str]:
    """SeriesInstanceUIDs named in a SEG's ReferencedSeriesSequence (0008,1115)."""
    return [
        str(item.SeriesInstanceUID)
        for item in (ds.get("ReferencedSeriesSequence", []) or [])
        if "SeriesInstanceUID" in item
    ]


def _frame_attr(ds, frame: int, group_kw: str, attr: str):
    """An attribute of a functional group, per-frame first, then shared."""
    pf = ds.get("PerFrameFunctionalGroupsSequence", None)
    if pf is not None and len(pf) > frame:
        grp = pf[frame].get(group_kw, None)
        if grp and attr in grp[0]:
            return grp[0][attr].value
    sh = ds.get("SharedFunctionalGroupsSequence", None)
    if sh:
        grp = sh[0].get(group_kw, None)
        if grp and attr in grp[0]:
            return grp[0][attr].value
    return None


def read_seg(
    path: str | Path,
    *,
    grids: Mapping[str, Grid],
    lesion_name_patterns: Iterable[str] = DEFAULT_LESION_NAME_PATTERNS,
    organ_name_patterns: Iterable[str] = DEFAULT_ORGAN_NAME_PATTERNS,
    slice_tolerance: float = 0.5,
    warnings: list[str] | None = None,
) -> list[LesionMask]:
    """Read every non-empty segment of a DICOM SEG onto the grid of its referenced series.

    Parameters
    ----------
    path : path
        The SEG file.
    grids : mapping str -> Grid
        SeriesInstanceUID -> grid of the loaded image series. The SEG is mapped onto the first
        series of its ReferencedSeriesSequence found here.
    lesion_name_patterns, organ_name_patterns : iterable of str
        Used for segments whose coded category/type does not tell lesion from organ.
    slice_tolerance : float
        Largest distance (fraction of the slice step, and of a pixel in-plane) between a frame's
        ImagePositionPatient and the nearest grid position; beyond it, or outside the grid, the
        frame does not belong to the grid.
    warnings : list of str, optional
        Appended with the warnings (empty segments skipped ...), which are also logged.

    Returns
    -------
    list of LesionMask
        One per non-empty segment, in SegmentSequence order; ``crop`` is bool (z, y, x) tight
        to the segment, ``bbox_zyx`` its half-open index box on ``grid``. BINARY segments: pixel
        value 1; FRACTIONAL: value / MaximumFractionalValue >= 0.5; LABELMAP: value ==
        SegmentNumber.

    Raises
    ------
    SegmentationError
        Unreadable SEG; referenced series not in ``grids`` (names the SEG file, its
        SeriesInstanceUID and the missing UID); frames off the grid or with another in-plane
        geometry.
    """
    import highdicom as hd

    path = Path(path)
    warn = warnings if warnings is not None else []
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:
        raise SegmentationError(
            f"cannot read as DICOM SEG: {type(exc).__name__}: {exc}", file=path,
            hint="check that the file is a valid Segmentation Storage object (e.g. with "
            "dciodvfy); re-export it from the segmentation tool",
        ) from exc
    seg_uid = str(seg.get("SeriesInstanceUID", ""))
    refs = referenced_series_uids(seg)
    ref_uid = next((u for u in refs if u in grids), None)
    if ref_uid is None:
        if not refs and len(grids) == 1:
            ref_uid = next(iter(grids))
            msg = (f"SEG {path.name} has no ReferencedSeriesSequence; mapped onto the only loaded "
                   f"series {ref_uid}")
            warn.append(msg)
            log.warning(msg)
        else:
            missing = ", ".join(refs) if refs else "(none named)"
            raise SegmentationError(
                f"SEG references image series {missing}, expected one of the loaded series "
                f"{sorted(grids)}",
                file=path, series_uid=seg_uid, tag=tag_label("ReferencedSeriesSequence"),
                hint="add the referenced image series to the archive, or choose another "
                "segmentation for this study in the study sheet",
            )
    grid = grids[ref_uid]
    dmat = grid.direction_matrix
    nz, ny, nx = grid.shape_zyx
    seg_type = str(seg.get("SegmentationType", "BINARY")).upper()

    descs = {d["segment_number"]: d for d in segment_descriptions(seg)}
    try:
        pixels = np.asarray(seg.pixel_array)
    except Exception as exc:
        raise SegmentationError(
            f"cannot decode SEG pixel data: {type(exc).__name__}: {exc}", file=path,
            series_uid=seg_uid, tag=tag_label("PixelData"),
            hint="install the pixel-data plugins with the setup command, or re-export the SEG",
        ) from exc
    if pixels.ndim == 2:
        pixels = pixels[None]
    n_frames = pixels.shape[0]
    max_frac = float(seg.get("MaximumFractionalValue", 1) or 1)

    # per segment: list of (k, y0, x0, 2D bool)
    parts: dict[int, list[tuple[int, int, int, np.ndarray]]] = {n: [] for n in descs}
    for f in range(n_frames):
        iop = _frame_attr(seg, f, "PlaneOrientationSequence", "ImageOrientationPatient")
        ps = _frame_attr(seg, f, "PixelMeasuresSequence", "PixelSpacing")
        ipp = _frame_attr(seg, f, "PlanePositionSequence", "ImagePositionPatient")
        if ipp is None or iop is None:
            missing = "ImagePositionPatient" if ipp is None else "ImageOrientationPatient"
            raise SegmentationError(
                f"frame {f + 1} has no {missing}: cannot place it on the image grid",
                file=path, series_uid=seg_uid, tag=tag_label(missing),
                hint="re-export the SEG with plane position/orientation functional groups",
            )
        iop = np.asarray([float(v) for v in iop])
        if not (np.allclose(iop[:3], dmat[:, 0], atol=1e-3)
                and np.allclose(iop[3:], dmat[:, 1], atol=1e-3)):
            raise SegmentationError(
                f"frame {f + 1} orientation {list(iop)} differs from the referenced series "
                f"{ref_uid} ({list(dmat[:, 0])} / {list(dmat[:, 1])}); resampling SEG frames is "
                "not supported yet",
                file=path, series_uid=seg_uid, tag=tag_label("ImageOrientationPatient"),
                hint="export the SEG on the referenced image grid",
            )
        if ps is not None:
            ps = [float(v) for v in ps]
            sx, sy, _ = grid.spacing_xyz_mm
            if not (np.isclose(ps[0], sy, rtol=1e-3, atol=1e-3)
                    and np.isclose(ps[1], sx, rtol=1e-3, atol=1e-3)):
                raise SegmentationError(
                    f"frame {f + 1} PixelSpacing {ps} differs from the referenced series "
                    f"({sy}, {sx}); resampling SEG frames is not supported yet",
                    file=path, series_uid=seg_uid, tag=tag_label("PixelSpacing"),
                    hint="export the SEG on the referenced image grid",
                )
        zyx = grid.lps_to_zyx(np.asarray([float(v) for v in ipp]))[0]
        k, y0, x0 = (int(np.rint(v)) for v in zyx)
        off = np.abs(zyx - np.array([k, y0, x0]))
        if off[0] > slice_tolerance or not (0 <= k < nz) or off[1] > slice_tolerance \
                or off[2] > slice_tolerance:
            raise SegmentationError(
                f"frame {f + 1} at ImagePositionPatient {[round(float(v), 3) for v in ipp]} "
                f"matches no slice of series {ref_uid}: nearest index (z, y, x) "
                f"({zyx[0]:.2f}, {zyx[1]:.2f}, {zyx[2]:.2f}) for {nz} slices, tolerance "
                f"{slice_tolerance} of a step",
                file=path, series_uid=seg_uid, tag=tag_label("ImagePositionPatient"),
                hint="the SEG was drawn on another series or reconstruction; choose the matching "
                "image series or re-export the SEG",
            )
        frame = pixels[f]
        if seg_type == "LABELMAP":
            targets = [(n, frame == n) for n in descs if n != 0]
        else:
            n = _frame_attr(seg, f, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
            if n is None:
                raise SegmentationError(
                    f"frame {f + 1} does not name its segment", file=path, series_uid=seg_uid,
                    tag=tag_label("ReferencedSegmentNumber"),
                    hint="re-export the SEG with SegmentIdentificationSequence per frame",
                )
            n = int(n)
            if seg_type == "FRACTIONAL":
                m = frame.astype(np.float32) / max_frac >= 0.5
            else:
                m = frame > 0
            targets = [(n, m)]
        for n, m in targets:
            if not m.any():
                continue
            if n not in parts:
                msg = f"SEG {path.name}: frame {f + 1} refers to undeclared segment {n}; ignored"
                warn.append(msg)
                log.warning(msg)
                continue
            rows = np.flatnonzero(m.any(axis=1))
            cols = np.flatnonzero(m.any(axis=0))
            if (y0 + rows[0] < 0 or y0 + rows[-1] >= ny or x0 + cols[0] < 0
                    or x0 + cols[-1] >= nx):
                raise SegmentationError(
                    f"frame {f + 1} of segment {n} has pixels outside the {ny}x{nx} image of "
                    f"series {ref_uid}",
                    file=path, series_uid=seg_uid, tag=tag_label("ImagePositionPatient"),
                    hint="the SEG does not match the referenced image grid; re-export it",
                )
            sub = m[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
            parts[n].append((k, y0 + int(rows[0]), x0 + int(cols[0]), sub))

    out: list[LesionMask] = []
    for n, d in descs.items():
        if n == 0 and seg_type == "LABELMAP":
            continue
        pieces = parts.get(n, [])
        if not pieces:
            msg = f"SEG {path.name} (series {seg_uid}): segment {n} '{d['label']}' is empty; skipped"
            warn.append(msg)
            log.warning(msg)
            continue
        z0 = min(p[0] for p in pieces)
        z1 = max(p[0] for p in pieces) + 1
        y0 = min(p[1] for p in pieces)
        y1 = max(p[1] + p[3].shape[0] for p in pieces)
        x0 = min(p[2] for p in pieces)
        x1 = max(p[2] + p[3].shape[1] for p in pieces)
        crop = np.zeros((z1 - z0, y1 - y0, x1 - x0), dtype=bool)
        for k, py, px, sub in pieces:
            crop[k - z0, py - y0: py - y0 + sub.shape[0], px - x0: px - x0 + sub.shape[1]] |= sub
        tight = bbox_of(crop)
        assert tight is not None
        crop = crop[tuple(slice(a, b) for a, b in tight)]
        bbox = tuple((o + a, o + b) for o, (a, b) in zip((z0, y0, x0), tight))
        kind = classify_segment(
            name=d["label"], category_code=d["category_code"], type_code=d["type_code"],
            lesion_name_patterns=lesion_name_patterns, organ_name_patterns=organ_name_patterns,
        )
        out.append(
            LesionMask(
                name=d["label"], source=MaskSource.SEG, grid=grid, bbox_zyx=bbox, crop=crop,
                kind=kind, source_uid=seg_uid, referenced_series_uid=ref_uid,
                segment_number=int(n), tracking_uid=d["tracking_uid"],
            )
        )
    return out
