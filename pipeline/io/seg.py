"""DICOM SEG -> lesion / organ masks on the grid of the referenced image series.

Each frame of the SEG is placed by its own geometry (PlanePositionSequence,
PlaneOrientationSequence, PixelMeasuresSequence), never by frame order: a SEG may hold only the
slices that contain a segment, in any order, one frame per segment and slice (BINARY,
FRACTIONAL) or one frame per slice holding segment numbers (LABELMAP).

Mapping onto the target grid
----------------------------
* **On the grid** (the common case): every frame has the grid's orientation and pixel spacing,
  lies on one of its planes (within 0.05 of a step) and is offset in-plane by a whole number of
  pixels (within 0.05 pixel; cropped frames): frames are pasted as they are, exactly.
* **Off the grid** (frames on another in-plane grid, another slice spacing, a subset of other
  slices, sheared by a gantry tilt, or in another orientation): each segment is sampled onto the
  target grid by nearest neighbour, every frame placed by its own position
  (:func:`pipeline.geometry.sample_planes_nearest`): a target voxel takes the nearest pixel of
  the nearest frame plane within half the SEG's plane step (SharedFunctionalGroups
  SpacingBetweenSlices, else the smallest step between frame planes); planes without a frame
  are empty, as the standard says. A warning says so. (Label maps, which are regular grids,
  take the equivalent nearest-neighbour path of :func:`pipeline.geometry.resample`.)
* A non-empty frame outside the target grid along the normal (beyond half a step) or in-plane
  means the SEG was drawn on another series: :class:`SegmentationError`.

Masks reach the PET grid from their CT grid through
:func:`pipeline.geometry.map_mask_coverage` (features); a SEG that references the PET series is
read directly on the PET grid.

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

from pipeline.errors import PipelineError, SegmentationError
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
    from pipeline.io.dicom import functional_group_value

    return functional_group_value(ds, frame, group_kw, attr)


#: Segmentation Storage SOP class.
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: Frames within this fraction of a step / pixel of the target grid are pasted without resampling.
ON_GRID_TOL = 0.05


def _frame_geometry(seg, f: int, path: Path, seg_uid: str) -> tuple[np.ndarray, np.ndarray,
                                                                       tuple[float, float]]:
    """(IPP (3,), IOP (6,), PixelSpacing (row, column)) of frame ``f``."""
    iop = _frame_attr(seg, f, "PlaneOrientationSequence", "ImageOrientationPatient")
    ps = _frame_attr(seg, f, "PixelMeasuresSequence", "PixelSpacing")
    ipp = _frame_attr(seg, f, "PlanePositionSequence", "ImagePositionPatient")
    for kw, v in (("ImagePositionPatient", ipp), ("ImageOrientationPatient", iop),
                  ("PixelSpacing", ps)):
        if v is None:
            raise SegmentationError(
                f"frame {f + 1} has no {kw}: cannot place it on the image grid",
                file=path, series_uid=seg_uid, tag=tag_label(kw),
                hint="re-export the SEG with plane position / orientation / pixel measures "
                "functional groups",
            )
    return (np.asarray([float(v) for v in ipp]), np.asarray([float(v) for v in iop]),
            (float(ps[0]), float(ps[1])))


def _frame_targets(seg, f: int, frame: np.ndarray, seg_type: str, descs: dict, max_frac: float,
                   padding, path: Path, seg_uid: str) -> list[tuple[int, np.ndarray]]:
    """(segment number, 2D bool) pairs held by frame ``f``."""
    if seg_type == "LABELMAP":
        vals = frame if padding is None else np.where(frame == padding, 0, frame)
        return [(n, vals == n) for n in descs if n != 0]
    n = _frame_attr(seg, f, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
    if n is None:
        raise SegmentationError(
            f"frame {f + 1} does not name its segment", file=path, series_uid=seg_uid,
            tag=tag_label("ReferencedSegmentNumber"),
            hint="re-export the SEG with SegmentIdentificationSequence per frame",
        )
    if seg_type == "FRACTIONAL":
        return [(int(n), frame.astype(np.float32) / max_frac >= 0.5)]
    return [(int(n), frame > 0)]


def read_seg(
    path: str | Path,
    *,
    grids: Mapping[str, Grid],
    lesion_name_patterns: Iterable[str] = DEFAULT_LESION_NAME_PATTERNS,
    organ_name_patterns: Iterable[str] = DEFAULT_ORGAN_NAME_PATTERNS,
    slice_tolerance: float = 0.5,
    warnings: list[str] | None = None,
    keep_empty_lesions: bool = False,
) -> list[LesionMask]:
    """Read every non-empty segment of a DICOM SEG onto the grid of its referenced series.

    Parameters
    ----------
    path : path
        The SEG file.
    grids : mapping str -> Grid
        SeriesInstanceUID -> grid of the loaded image series. The SEG is mapped onto the first
        series of its ReferencedSeriesSequence found here (CT or PET alike).
    lesion_name_patterns, organ_name_patterns : iterable of str
        Used for segments whose coded category/type does not tell lesion from organ.
    slice_tolerance : float
        A non-empty frame farther than this (fraction of the target's slice step / pixel) outside
        the target grid is an error (the SEG belongs to another series).
    warnings : list of str, optional
        Appended with the warnings (empty segments skipped or kept, frames resampled ...), which
        are also logged.
    keep_empty_lesions : bool
        Keep a declared segment without any voxel when it is not an organ (lesion or unknown
        kind) as an empty mask (:func:`empty_mask`: ``voxel_count`` 0), so that the study job
        writes its row (``lesion_empty``: a resolved lesion or a drawing error). Empty organ
        segments are always skipped. Default: every empty segment is skipped.

    Returns
    -------
    list of LesionMask
        One per non-empty segment (and per empty lesion segment with ``keep_empty_lesions``),
        in SegmentSequence order; ``crop`` is bool (z, y, x) tight
        to the segment, ``bbox_zyx`` its half-open index box on ``grid``. BINARY segments: pixel
        value > 0; FRACTIONAL: value / MaximumFractionalValue >= 0.5; LABELMAP: value ==
        SegmentNumber (PixelPaddingValue is background). Overlapping segments each keep all
        their voxels.

    Raises
    ------
    SegmentationError
        Unreadable SEG; referenced series not in ``grids`` (names the SEG file, its
        SeriesInstanceUID and the missing UID); frames outside the target grid.
    """
    import pydicom

    path = Path(path)
    warn = warnings if warnings is not None else []
    try:
        seg = pydicom.dcmread(str(path))
    except Exception as exc:
        raise SegmentationError(
            f"cannot read as DICOM: {type(exc).__name__}: {exc}", file=path,
            hint="re-export the SEG from the segmentation tool (the file may be truncated)",
        ) from exc
    sop = str(seg.get("SOPClassUID", "") or "")
    if sop != SEG_SOP_CLASS and str(seg.get("Modality", "")) != "SEG":
        raise SegmentationError(
            f"expected a Segmentation Storage object (SOP class {SEG_SOP_CLASS}), found "
            f"SOP class {sop or 'none'} / Modality {seg.get('Modality', '') or 'none'}",
            file=path, tag=tag_label("SOPClassUID"), hint="pass a DICOM SEG file")
    for kw in ("SegmentSequence", "PixelData"):
        if kw not in seg or not seg[kw].value:
            raise SegmentationError(
                f"DICOM SEG without {kw}: not a usable segmentation", file=path,
                series_uid=str(seg.get("SeriesInstanceUID", "")) or None, tag=tag_label(kw),
                hint="re-export the SEG (check it with dciodvfy)")
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
    max_frac = float(seg.get("MaximumFractionalValue", 1) or 1)
    padding = seg.get("PixelPaddingValue", None)
    if padding is not None and int(padding) in descs:
        padding = None

    # per frame: geometry and the segments it holds (empty ones dropped)
    frames = []
    for f in range(pixels.shape[0]):
        ipp, iop, ps = _frame_geometry(seg, f, path, seg_uid)
        for n, m in _frame_targets(seg, f, pixels[f], seg_type, descs, max_frac, padding, path,
                                   seg_uid):
            if not m.any():
                continue
            if n not in descs:
                msg = f"SEG {path.name}: frame {f + 1} refers to undeclared segment {n}; ignored"
                warn.append(msg)
                log.warning(msg)
                continue
            frames.append((f, n, ipp, iop, ps, m))

    on_grid = all(_on_grid(grid, ipp, iop, ps) for _, _, ipp, iop, ps, _ in frames)
    if on_grid:
        parts = _paste_on_grid(frames, grid, ref_uid, path, seg_uid, slice_tolerance)
    else:
        parts = _resample_native(frames, grid, ref_uid, path, seg_uid, slice_tolerance, seg)
        msg = (f"SEG {path.name}: frames are not on the grid of series {ref_uid} (other "
               "spacing, slices or orientation); resampled with nearest neighbour")
        warn.append(msg)
        log.warning(msg)

    out: list[LesionMask] = []
    for n, d in descs.items():
        if n == 0 and seg_type == "LABELMAP":
            continue
        kind = classify_segment(
            name=d["label"], category_code=d["category_code"], type_code=d["type_code"],
            lesion_name_patterns=lesion_name_patterns, organ_name_patterns=organ_name_patterns,
        )
        got = parts.get(n)
        if got is None:
            keep = keep_empty_lesions and kind != SegmentKind.ORGAN
            msg = (f"SEG {path.name} (series {seg_uid}): segment {n} '{d['label']}' is empty; "
                   + ("kept as an empty lesion" if keep else "skipped"))
            warn.append(msg)
            log.warning(msg)
            if not keep:
                continue
            got = EMPTY_BBOX, np.zeros((0, 0, 0), dtype=bool)
        bbox, crop = got
        out.append(
            LesionMask(
                name=d["label"], source=MaskSource.SEG, grid=grid, bbox_zyx=bbox, crop=crop,
                kind=kind, source_uid=seg_uid, referenced_series_uid=ref_uid,
                segment_number=int(n), tracking_uid=d["tracking_uid"],
            )
        )
    return out


#: Bounding box of an empty mask (:func:`empty_mask`).
EMPTY_BBOX: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0), (0, 0))


def empty_mask(**fields) -> LesionMask:
    """A mask without voxels: ``crop`` of shape (0, 0, 0), ``bbox_zyx`` :data:`EMPTY_BBOX`.

    The readers return it for a declared lesion segment / ROI that holds no voxel
    (``keep_empty_lesions``); ``fields`` are the other :class:`~pipeline.records.LesionMask`
    fields (name, source, grid ...).
    """
    return LesionMask(bbox_zyx=EMPTY_BBOX, crop=np.zeros((0, 0, 0), dtype=bool), **fields)


def is_empty_mask(mask: LesionMask) -> bool:
    """True for a mask without any voxel (an empty lesion segment kept by a reader)."""
    return mask.crop.size == 0 or not mask.crop.any()


def _on_grid(grid: Grid, ipp, iop, ps) -> bool:
    d = grid.direction_matrix
    sx, sy, _ = grid.spacing_xyz_mm
    if not (np.allclose(iop[:3], d[:, 0], atol=1e-4) and np.allclose(iop[3:], d[:, 1], atol=1e-4)):
        return False
    if not (np.isclose(ps[0], sy, rtol=1e-4, atol=1e-4) and np.isclose(ps[1], sx, rtol=1e-4,
                                                                        atol=1e-4)):
        return False
    zyx = grid.lps_to_zyx(ipp)[0]
    return bool(np.all(np.abs(zyx - np.rint(zyx)) <= ON_GRID_TOL))


def _outside_error(f: int, n: int, where: str, ref_uid: str, path: Path, seg_uid: str):
    return SegmentationError(
        f"frame {f + 1} (segment {n}) matches no slice of series {ref_uid}: {where}",
        file=path, series_uid=seg_uid, tag=tag_label("ImagePositionPatient"),
        hint="the SEG was drawn on another series or reconstruction; choose the matching "
        "image series or re-export the SEG",
    )


def _assemble_parts(pieces: list[tuple[int, int, int, np.ndarray]]
                    ) -> tuple[tuple, np.ndarray]:
    """(bbox, tight crop) from (k, y0, x0, 2D bool) pieces on one grid."""
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
    return bbox, crop


def _paste_on_grid(frames, grid: Grid, ref_uid: str, path: Path, seg_uid: str,
                   tol: float) -> dict[int, tuple]:
    nz, ny, nx = grid.shape_zyx
    pieces: dict[int, list] = {}
    for f, n, ipp, _, _, m in frames:
        k, y0, x0 = (int(v) for v in np.rint(grid.lps_to_zyx(ipp)[0]))
        if not 0 <= k < nz:
            raise _outside_error(f, n, f"ImagePositionPatient {[round(float(v), 3) for v in ipp]}"
                                 f" is slice index {k} of {nz}", ref_uid, path, seg_uid)
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        if (y0 + rows[0] < 0 or y0 + rows[-1] >= ny or x0 + cols[0] < 0
                or x0 + cols[-1] >= nx):
            raise _outside_error(f, n, f"pixels outside the {ny}x{nx} image", ref_uid, path,
                                 seg_uid)
        sub = m[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
        pieces.setdefault(n, []).append((k, y0 + int(rows[0]), x0 + int(cols[0]), sub))
    return {n: _assemble_parts(p) for n, p in pieces.items()}


def _resample_native(frames, grid: Grid, ref_uid: str, path: Path, seg_uid: str, tol: float,
                     seg) -> dict[int, tuple]:
    """Frames off the target grid: every segment sampled by nearest neighbour from its frames,
    each placed by its own position (:func:`pipeline.geometry.sample_planes_nearest`)."""
    from pipeline.geometry import sample_planes_nearest, slice_normal

    if not frames:
        return {}
    nz, ny, nx = grid.shape_zyx
    shape = np.array(grid.shape_zyx, dtype=float)
    for f, n, ipp, iop, ps, m in frames:  # a frame off the image means another series
        j, i = np.argwhere(m).mean(axis=0)
        iopm = np.asarray(iop).reshape(2, 3)
        c = ipp + i * ps[1] * iopm[0] + j * ps[0] * iopm[1]
        zyx = grid.lps_to_zyx(c[None])[0]
        if np.any(zyx < -0.5 - tol) or np.any(zyx > shape - 0.5 + tol):
            raise _outside_error(
                f, n, f"its pixels centre at index (z, y, x) ({zyx[0]:.2f}, {zyx[1]:.2f}, "
                f"{zyx[2]:.2f}) is outside the {nz}x{ny}x{nx} image", ref_uid, path, seg_uid)
    step = _frame_attr(seg, 0, "PixelMeasuresSequence", "SpacingBetweenSlices")
    if step is None or float(step) <= 0:
        nrm = slice_normal(frames[0][3])
        planes = np.unique(np.round([fr[2] @ nrm for fr in frames], 3))
        d = np.diff(planes)
        step = float(d.min()) if len(d) else float(grid.spacing_xyz_mm[2])
    by_seg: dict[int, list] = {}
    for f, n, ipp, iop, ps, m in frames:
        by_seg.setdefault(n, []).append((ipp, iop, ps, m))
    out = {}
    for n, planes in by_seg.items():
        try:
            got = sample_planes_nearest(planes, grid, plane_step_mm=float(step))
        except PipelineError as exc:
            raise SegmentationError(f"segment {n}: {exc.message}", file=path, series_uid=seg_uid,
                                    tag=tag_label("PlaneOrientationSequence"),
                                    hint="re-export the SEG on one image grid") from exc
        if got is not None:
            out[n] = got
    return out


def _native_grid(geoms: list, seg, default_step: float, path: Path, seg_uid: str
                 ) -> tuple[Grid, np.ndarray]:
    """The grid the SEG frames themselves define, and each frame's (j, i, k) offset on it.

    ``geoms``: per frame (IPP, IOP, PixelSpacing, (rows, cols)). Orientation and pixel spacing
    of the frames; k along the normal at SpacingBetweenSlices (shared PixelMeasures), else the
    smallest step between distinct frame planes, else ``default_step``; in-plane extent covering
    every frame.
    """
    from pipeline.geometry import slice_normal

    ipp0, iop0, ps0, _ = geoms[0]
    nrm = slice_normal(iop0)
    proj = np.array([g[0] @ nrm for g in geoms])
    planes = np.unique(np.round(proj, 3))
    step = _frame_attr(seg, 0, "PixelMeasuresSequence", "SpacingBetweenSlices")
    if step is None or float(step) <= 0:
        diffs = np.diff(planes)
        diffs = diffs[diffs > 1e-3]
        step = float(diffs.min()) if len(diffs) else float(default_step)
    step = float(step)
    iop = np.asarray(iop0).reshape(2, 3)
    base = geoms[int(np.argmin(proj))][0]
    offs = np.asarray([((g[0] - base) @ iop[1] / ps0[0], (g[0] - base) @ iop[0] / ps0[1],
                        (g[0] - base) @ nrm / step) for g in geoms])
    if np.any(np.abs(offs - np.rint(offs)) > 0.25):
        raise SegmentationError(
            "SEG frames are not on one regular grid (in-plane offsets or plane positions are not "
            f"whole multiples of the pixel spacing {tuple(ps0)} / plane step {step:.3f} mm)",
            file=path, series_uid=seg_uid, tag=tag_label("ImagePositionPatient"),
            hint="re-export the SEG on the referenced image grid")
    ioff = np.rint(offs).astype(int)
    lo = ioff.min(axis=0)
    rows = max(int(o[0] - lo[0]) + g[3][0] for o, g in zip(ioff, geoms))
    cols = max(int(o[1] - lo[1]) + g[3][1] for o, g in zip(ioff, geoms))
    shape = (int(ioff[:, 2].max() - lo[2] + 1), rows, cols)
    origin = base + lo[1] * ps0[1] * iop[0] + lo[0] * ps0[0] * iop[1] + lo[2] * step * nrm
    native = Grid(shape, (float(ps0[1]), float(ps0[0]), step), tuple(float(v) for v in origin),
                  tuple(float(v) for v in np.column_stack([iop[0], iop[1], nrm]).ravel()))
    return native, ioff - lo


def seg_native_grid(path: str | Path) -> Grid:
    """The grid a SEG's frames define (headers only), for a SEG whose image series is absent.

    Use it as ``read_seg(path, grids={referenced_uid: seg_native_grid(path)})`` to read the
    segments on their own grid, then map them to another grid (e.g. the PET) with
    :func:`pipeline.geometry.map_mask_coverage`.

    Raises
    ------
    SegmentationError
        Unreadable file, missing plane geometry, or frames that do not form one regular grid.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:
        raise SegmentationError(f"cannot read SEG header: {type(exc).__name__}: {exc}",
                                file=path, hint="re-export the SEG") from exc
    uid = str(ds.get("SeriesInstanceUID", ""))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    geoms = []
    for f in range(n):
        ipp, iop, ps = _frame_geometry(ds, f, path, uid)
        geoms.append((ipp, iop, ps, (int(ds.Rows), int(ds.Columns))))
    iop0, ps0 = geoms[0][1], geoms[0][2]
    if any(not (np.allclose(g[1], iop0, atol=1e-4) and np.allclose(g[2], ps0, atol=1e-4))
           for g in geoms):
        raise SegmentationError("SEG frames have several orientations or pixel spacings",
                                file=path, series_uid=uid,
                                tag=tag_label("PlaneOrientationSequence"),
                                hint="re-export the SEG on one image grid")
    return _native_grid(geoms, ds, 1.0, path, uid)[0]
