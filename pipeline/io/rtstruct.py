"""RTSTRUCT -> masks on an image grid, with our own rasterizer.

Rasterization
-------------
* Contour points (ContourData, LPS mm) are mapped to continuous (z, y, x) indices with
  :meth:`pipeline.geometry.Grid.lps_to_zyx`, so oblique and anisotropic grids need no special case.
* Each CLOSED_PLANAR contour is matched to a slice by position: its mean z index is rounded; the
  contour must lie within ``slice_tolerance`` (fraction of the slice step) of that slice, inside the
  stack, and be planar in the grid (z spread of its points <= ``slice_tolerance``).
* Polygons are filled at voxel centres by a vectorised scanline even-odd fill
  (:func:`fill_evenodd`: a voxel is inside when its centre is inside). All contours of one ROI on
  one slice are combined with XOR (even-odd rule), so holes and nested islands subtract and add as
  drawn. (skimage's point-in-polygon fill costs bbox x vertices per contour, ~10 s for a body
  outline structure set; the scanline costs rows x edges.)
* POINT and OPEN_PLANAR contours carry no area: skipped with a warning.

References
----------
The RTSTRUCT must reference the image series it is rasterized on: if its
RTReferencedSeriesSequence names series and ``series_uid`` is not among them, or (when
``sop_instance_uids`` of the loaded series are given) it names no series and none of the instances
its ContourImageSequences name is loaded, :class:`SegmentationError` names the file and the UID.

A partly present series (a cropped or partly transferred export that keeps the SeriesInstanceUID
but only some of the instances the structure set lists) is rasterized on the loaded slices:
contours that lie off the loaded slices and name an absent instance (or no instance) are
skipped, and one warning gives the counts (absent instances, skipped and rasterized contours).
Only when no contour falls on a loaded slice is it an error. A contour that names an absent instance yet lies on a loaded slice is a broken
reference (the slice is there under another UID): an error naming the UID.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from pathlib import Path

import numpy as np
import pydicom

from pipeline.errors import SegmentationError
from pipeline.geometry import Grid, bbox_of
from pipeline.io.dicom import tag_label
from pipeline.io.seg import (
    DEFAULT_LESION_NAME_PATTERNS,
    DEFAULT_ORGAN_NAME_PATTERNS,
    classify_segment,
    empty_mask,
)
from pipeline.records import LesionMask, MaskSource, SegmentKind

log = logging.getLogger(__name__)

#: RTROIInterpretedType values that decide the kind before any name pattern (coded type first:
#: a GTV named after its site, e.g. "lung_subpleural", is still a lesion).
DECISIVE_LESION_TYPES = frozenset({"GTV"})
DECISIVE_ORGAN_TYPES = frozenset({"EXTERNAL"})
#: RTROIInterpretedType values used only when an ROI name matches no pattern (many tools write
#: ORGAN for every ROI, so it must not override a lesion-like name).
FALLBACK_ORGAN_TYPES = frozenset({"ORGAN", "AVOIDANCE", "BRACHY_CHANNEL", "SUPPORT", "FIXATION",
                                  "CAVITY", "BOLUS"})


def fill_evenodd(polygons: list[np.ndarray], ny: int, nx: int) -> np.ndarray:
    """Even-odd fill of closed polygons at pixel centres (scanline, vectorised).

    Parameters
    ----------
    polygons : list of (N, 2) arrays
        Vertices as continuous (y, x) = (row, column) indices; pixel (j, i) has its centre at
        (j, i). Closing edge implied.
    ny, nx : int
        Image size.

    Returns
    -------
    (ny, nx) bool
        A pixel is set when the horizontal ray through its centre crosses the polygon edges an
        odd number of times counting all polygons together, i.e. the XOR of the polygons (holes
        and nested islands as drawn). Edges are half-open (a centre exactly on a left/lower edge
        is inside, on a right/upper edge outside) so shared edges are never counted twice.
    """
    diff = np.zeros((ny, nx + 1), dtype=np.int32)
    for poly in polygons:
        pts = np.asarray(poly, dtype=float)
        if len(pts) < 3:
            continue
        y0, x0 = pts[:, 0], pts[:, 1]
        y1, x1 = np.roll(y0, -1), np.roll(x0, -1)
        r0 = max(0, int(np.ceil(y0.min())))
        r1 = min(ny - 1, int(np.floor(y0.max())))
        if r1 < r0:
            continue
        rows = np.arange(r0, r1 + 1, dtype=float)[:, None]
        cross = ((y0 <= rows) & (y1 > rows)) | ((y1 <= rows) & (y0 > rows))
        dy = np.where(y1 == y0, 1.0, y1 - y0)
        xs = np.where(cross, x0 + (rows - y0) * (x1 - x0) / dy, np.inf)
        xs.sort(axis=1)
        npairs = int(cross.sum(axis=1).max()) // 2
        if npairs == 0:
            continue
        a = xs[:, 0: 2 * npairs: 2]
        b = xs[:, 1: 2 * npairs: 2]
        ok = np.isfinite(a) & np.isfinite(b)
        rr = np.broadcast_to(np.arange(r0, r1 + 1)[:, None], a.shape)[ok]
        start = np.clip(np.ceil(a[ok]), 0, nx).astype(np.int64)
        stop = np.clip(np.ceil(b[ok]), 0, nx).astype(np.int64)
        keep = stop > start
        np.add.at(diff, (rr[keep], start[keep]), 1)
        np.add.at(diff, (rr[keep], stop[keep]), -1)
    return (np.cumsum(diff, axis=1)[:, :nx] % 2).astype(bool)


def rtstruct_references(ds) -> tuple[list[str], list[str]]:
    """Series and SOP instance UIDs referenced by an RTSTRUCT.

    Returns
    -------
    series_uids : list of str
        From ReferencedFrameOfReferenceSequence > RTReferencedStudySequence >
        RTReferencedSeriesSequence.
    sop_instance_uids : list of str
        From the ContourImageSequence of those series and of every contour (unique, in order).
    """
    series: list[str] = []
    sops: list[str] = []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        for st in fr.get("RTReferencedStudySequence", []) or []:
            for se in st.get("RTReferencedSeriesSequence", []) or []:
                if "SeriesInstanceUID" in se:
                    series.append(str(se.SeriesInstanceUID))
                for ci in se.get("ContourImageSequence", []) or []:
                    if "ReferencedSOPInstanceUID" in ci:
                        sops.append(str(ci.ReferencedSOPInstanceUID))
    for rc in ds.get("ROIContourSequence", []) or []:
        for c in rc.get("ContourSequence", []) or []:
            for ci in c.get("ContourImageSequence", []) or []:
                if "ReferencedSOPInstanceUID" in ci:
                    sops.append(str(ci.ReferencedSOPInstanceUID))
    return list(dict.fromkeys(series)), list(dict.fromkeys(sops))


def roi_table(ds) -> list[dict]:
    """Per ROI of an RTSTRUCT: number, name, RTROIInterpretedType, number of contours."""
    names = {
        int(r.ROINumber): str(r.get("ROIName", "") or "")
        for r in ds.get("StructureSetROISequence", []) or []
        if "ROINumber" in r
    }
    types = {
        int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "").upper()
        for o in ds.get("RTROIObservationsSequence", []) or []
        if "ReferencedROINumber" in o
    }
    ncont = {
        int(rc.ReferencedROINumber): len(rc.get("ContourSequence", []) or [])
        for rc in ds.get("ROIContourSequence", []) or []
        if "ReferencedROINumber" in rc
    }
    return [
        {"roi_number": n, "name": names[n], "interpreted_type": types.get(n, ""),
         "n_contours": ncont.get(n, 0)}
        for n in names
    ]


def classify_roi(
    name: str,
    interpreted_type: str,
    *,
    lesion_name_patterns: Iterable[str],
    organ_name_patterns: Iterable[str],
) -> SegmentKind:
    """Lesion or organ for an RTSTRUCT ROI.

    Order: RTROIInterpretedType GTV -> lesion, EXTERNAL -> organ; then the name patterns
    (lesion patterns first); then the other organ-like interpreted types (ORGAN, AVOIDANCE ...);
    else unknown.
    """
    itype = (interpreted_type or "").strip().upper()
    if itype in DECISIVE_LESION_TYPES:
        return SegmentKind.LESION
    if itype in DECISIVE_ORGAN_TYPES:
        return SegmentKind.ORGAN
    kind = classify_segment(name=name, lesion_name_patterns=lesion_name_patterns,
                            organ_name_patterns=organ_name_patterns)
    if kind is not SegmentKind.UNKNOWN:
        return kind
    if itype in FALLBACK_ORGAN_TYPES:
        return SegmentKind.ORGAN
    return SegmentKind.UNKNOWN


def read_rtstruct(
    path: str | Path,
    *,
    grid: Grid,
    series_uid: str,
    lesion_name_patterns: Iterable[str] = DEFAULT_LESION_NAME_PATTERNS,
    organ_name_patterns: Iterable[str] = DEFAULT_ORGAN_NAME_PATTERNS,
    sop_instance_uids: Collection[str] | None = None,
    slice_tolerance: float = 0.5,
    warnings: list[str] | None = None,
    keep_empty_lesions: bool = False,
) -> list[LesionMask]:
    """Rasterize every non-empty ROI of an RTSTRUCT onto ``grid``.

    Parameters
    ----------
    path : path
        The RTSTRUCT file.
    grid : Grid
        Grid of the referenced image series (LPS mm).
    series_uid : str
        SeriesInstanceUID of that image series.
    lesion_name_patterns, organ_name_patterns : iterable of str
        fnmatch patterns (case-insensitive) telling lesions from organs by ROIName, used after
        the decisive RTROIInterpretedType values (GTV -> lesion, EXTERNAL -> organ); see
        :func:`classify_roi`.
    sop_instance_uids : collection of str, optional
        SOPInstanceUIDs of the loaded image series; when given, contours drawn on instances
        that are not among them are skipped with a warning (partly present series), and an
        error is raised when no contour is left.
    slice_tolerance : float
        Largest distance of a contour from its slice, as a fraction of the slice step.
    warnings : list of str, optional
        Appended with warnings (empty ROIs, open contours ...), which are also logged.
    keep_empty_lesions : bool
        Keep an ROI that is not an organ (lesion or unknown kind) and covers no voxel (no
        contour, or contours that fill no voxel centre) as an empty mask
        (:func:`pipeline.io.seg.empty_mask`, ``voxel_count`` 0), so that the study job writes its
        row. An ROI whose contours all lie on absent slices of a partly present series is not
        empty (it was not loaded): it is skipped. Empty organ ROIs are always skipped.

    Returns
    -------
    list of LesionMask
        One per non-empty ROI (and per empty lesion ROI with ``keep_empty_lesions``), in
        StructureSetROISequence order; ``crop`` bool (z, y, x) tight to
        the ROI; ``segment_number`` = ROINumber; ``source_uid`` = the RTSTRUCT's
        SeriesInstanceUID.

    Raises
    ------
    SegmentationError
        Unreadable file; broken references (names the file and the UID); contours off the grid.
    """
    path = Path(path)
    warn = warnings if warnings is not None else []
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise SegmentationError(
            f"cannot read RTSTRUCT: {type(exc).__name__}: {exc}", file=path,
            hint="re-export the structure set",
        ) from exc
    rt_uid = str(ds.get("SeriesInstanceUID", ""))
    if str(ds.get("Modality", "")) != "RTSTRUCT":
        raise SegmentationError(
            f"expected Modality RTSTRUCT, found {ds.get('Modality', '')!r}", file=path,
            series_uid=rt_uid, tag=tag_label("Modality"),
            hint="pass an RT Structure Set file",
        )
    ref_series, ref_sops = rtstruct_references(ds)
    if ref_series and series_uid not in ref_series:
        raise SegmentationError(
            f"RTSTRUCT references image series {', '.join(ref_series)}, expected {series_uid}",
            file=path, series_uid=rt_uid, tag=tag_label("RTReferencedSeriesSequence"),
            hint="rasterize the structure set on the series it was drawn on (add that series to "
            "the archive) or choose another segmentation in the study sheet",
        )
    missing: set[str] = set()
    if sop_instance_uids is not None:
        known = set(sop_instance_uids)
        missing = {u for u in ref_sops if u not in known}
        if missing and ref_sops and len(missing) == len(ref_sops) and not ref_series:
            # nothing ties the structure set to this series: neither a series reference nor a
            # single loaded instance
            raise SegmentationError(
                f"RTSTRUCT references {len(missing)} image instance(s) that are not in series "
                f"{series_uid}, first {ref_sops[0]}",
                file=path, series_uid=rt_uid, tag=tag_label("ReferencedSOPInstanceUID"),
                hint="the referenced CT slices are missing from the archive or the structure set "
                "belongs to another series; add the slices or choose another segmentation",
            )

    nz, ny, nx = grid.shape_zyx
    contours_by_roi: dict[int, list] = {}
    for rc in ds.get("ROIContourSequence", []) or []:
        if "ReferencedROINumber" in rc:
            contours_by_roi[int(rc.ReferencedROINumber)] = list(rc.get("ContourSequence", []) or [])

    out: list[LesionMask] = []
    n_contours = n_absent = 0
    for roi in roi_table(ds):
        n, name = roi["roi_number"], roi["name"]
        absent_before = n_absent
        polys: dict[int, list[np.ndarray]] = {}  # slice -> contours as (N, 2) (y, x) indices
        for ci, c in enumerate(contours_by_roi.get(n, [])):
            gtype = str(c.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            data = c.get("ContourData", None)
            if gtype != "CLOSED_PLANAR" or not data:
                msg = (f"RTSTRUCT {path.name}: ROI {n} '{name}' contour {ci + 1} is {gtype} "
                       f"with {len(data or []) // 3} point(s); skipped (no area)")
                warn.append(msg)
                log.warning(msg)
                continue
            n_contours += 1
            img_refs = [str(x.ReferencedSOPInstanceUID)
                        for x in c.get("ContourImageSequence", []) or []
                        if "ReferencedSOPInstanceUID" in x]
            pts = np.asarray([float(v) for v in data], dtype=float).reshape(-1, 3)
            zyx = grid.lps_to_zyx(pts)
            zc = float(zyx[:, 0].mean())
            k = int(np.rint(zc))
            spread = float(np.ptp(zyx[:, 0]))
            on_grid = not (abs(zc - k) > slice_tolerance or not (0 <= k < nz)
                           or spread > slice_tolerance)
            absent_refs = [u for u in img_refs if u in missing]
            if absent_refs and on_grid:
                # the slice is loaded but under another UID: a broken reference, not a crop
                raise SegmentationError(
                    f"ROI {n} '{name}' contour {ci + 1} references image instance "
                    f"{absent_refs[0]}, which is not in series {series_uid}, yet lies on its "
                    f"loaded slice {k}",
                    file=path, series_uid=rt_uid, tag=tag_label("ReferencedSOPInstanceUID"),
                    hint="the structure set's image references are broken or it belongs to "
                    "another series; re-export it from the series it was drawn on")
            if not on_grid and missing and (not img_refs or absent_refs):
                n_absent += 1  # drawn on a slice that is not in the (partly present) series
                continue
            if not on_grid:
                ref_txt = f" (ContourImageSequence references {img_refs[0]})" if img_refs else ""
                raise SegmentationError(
                    f"ROI {n} '{name}' contour {ci + 1} at LPS z {pts[:, 2].mean():.2f} mm lies on "
                    f"no slice of series {series_uid}: continuous slice index {zc:.2f} "
                    f"(spread {spread:.2f}) for {nz} slices, tolerance {slice_tolerance} of a "
                    f"step{ref_txt}",
                    file=path, series_uid=rt_uid, tag=tag_label("ContourData"),
                    hint="the structure set was drawn on another series or slices are missing; "
                    "rasterize it on the series it references",
                )
            if (zyx[:, 1].min() < -0.5 or zyx[:, 1].max() > ny - 0.5 or zyx[:, 2].min() < -0.5
                    or zyx[:, 2].max() > nx - 0.5):
                msg = (f"RTSTRUCT {path.name}: ROI {n} '{name}' contour {ci + 1} extends beyond "
                       f"the {ny}x{nx} image of series {series_uid}; clipped to the image")
                warn.append(msg)
                log.warning(msg)
            polys.setdefault(k, []).append(zyx[:, 1:])
        slices = {k: fill_evenodd(v, ny, nx) for k, v in polys.items()}
        slices = {k: m for k, m in slices.items() if m.any()}
        kind = classify_roi(name, roi["interpreted_type"],
                            lesion_name_patterns=lesion_name_patterns,
                            organ_name_patterns=organ_name_patterns)
        if not slices:
            keep = (keep_empty_lesions and kind != SegmentKind.ORGAN
                    and n_absent == absent_before)
            msg = (f"RTSTRUCT {path.name} (series {rt_uid}): ROI {n} '{name}' is empty; "
                   + ("kept as an empty lesion" if keep else "skipped"))
            warn.append(msg)
            log.warning(msg)
            if keep:
                out.append(empty_mask(
                    name=name, source=MaskSource.RTSTRUCT, grid=grid, kind=kind,
                    source_uid=rt_uid, referenced_series_uid=series_uid, segment_number=int(n)))
            continue
        ks = sorted(slices)
        stack = np.zeros((ks[-1] - ks[0] + 1, ny, nx), dtype=bool)
        for k in ks:
            stack[k - ks[0]] = slices[k]
        tight = bbox_of(stack)
        assert tight is not None
        crop = stack[tuple(slice(a, b) for a, b in tight)].copy()
        bbox = ((ks[0] + tight[0][0], ks[0] + tight[0][1]), tight[1], tight[2])
        out.append(
            LesionMask(
                name=name, source=MaskSource.RTSTRUCT, grid=grid, bbox_zyx=bbox, crop=crop,
                kind=kind, source_uid=rt_uid, referenced_series_uid=series_uid,
                segment_number=int(n),
            )
        )
    if missing:
        used = n_contours - n_absent
        msg = (f"RTSTRUCT {path.name} (series {rt_uid}): {len(missing)} of {len(ref_sops)} "
               f"referenced image instance(s) are not in series {series_uid} (partly present "
               f"series, first missing {next(u for u in ref_sops if u in missing)}); "
               f"{n_absent} of {n_contours} closed contour(s) lie on absent slices and were "
               f"skipped, {used} rasterized on the loaded slices")
        if used == 0:
            raise SegmentationError(
                f"{msg}: no contour falls on a loaded slice", file=path, series_uid=rt_uid,
                tag=tag_label("ReferencedSOPInstanceUID"),
                hint="the slices the structures were drawn on are missing from the archive; "
                "transfer the complete image series or choose another segmentation")
        warn.append(msg)
        log.warning(msg)
    return out


def rtstruct_native_grid(path_or_ds, *, pixel_mm: float = 1.0, margin_mm: float = 2.0) -> Grid:
    """A grid on which an RTSTRUCT can be rasterised without its image series.

    The k axis is the contours' plane normal (Newell's method on the largest contour), the
    planes the distinct contour planes (step: the smallest distance between them); in-plane
    axes are the patient x / y axes projected on the plane (axial: LPS x and y), at
    ``pixel_mm``; the extent covers every contour point plus ``margin_mm``. Use it to measure
    a structure set whose CT is missing (e.g. ``hitit suv --mask`` on a PET), then map the masks
    to another grid with :func:`pipeline.geometry.map_mask_coverage`.

    Raises
    ------
    SegmentationError
        No closed planar contour.
    """
    ds = path_or_ds if hasattr(path_or_ds, "ROIContourSequence") else pydicom.dcmread(
        str(path_or_ds))
    pts_all = []
    for rc in ds.get("ROIContourSequence", []) or []:
        for c in rc.get("ContourSequence", []) or []:
            if str(c.get("ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
                continue
            p = np.asarray([float(v) for v in c.get("ContourData", [])], float).reshape(-1, 3)
            if len(p) >= 3:
                pts_all.append(p)
    if not pts_all:
        raise SegmentationError("the structure set has no closed planar contour",
                                file=getattr(ds, "filename", None),
                                tag=tag_label("ContourData"), hint="nothing to rasterise")
    big = max(pts_all, key=len)
    nrm = np.zeros(3)
    for a, b in zip(big, np.roll(big, -1, axis=0)):
        nrm += np.cross(a, b)
    nrm = nrm / np.linalg.norm(nrm) if np.linalg.norm(nrm) > 1e-9 else np.array([0.0, 0.0, 1.0])
    if nrm[int(np.argmax(np.abs(nrm)))] < 0:
        nrm = -nrm
    ex = np.array([1.0, 0.0, 0.0]) if abs(nrm[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = ex - (ex @ nrm) * nrm
    u /= np.linalg.norm(u)
    v = np.cross(nrm, u)
    allp = np.concatenate(pts_all)
    planes = np.unique(np.round([float(np.mean(p @ nrm)) for p in pts_all], 3))
    diffs = np.diff(planes)
    diffs = diffs[diffs > 1e-3]
    step = float(diffs.min()) if len(diffs) else 1.0
    lo_u, hi_u = (allp @ u).min() - margin_mm, (allp @ u).max() + margin_mm
    lo_v, hi_v = (allp @ v).min() - margin_mm, (allp @ v).max() + margin_mm
    nz = int(round((planes[-1] - planes[0]) / step)) + 1
    origin = lo_u * u + lo_v * v + planes[0] * nrm
    return Grid(
        shape_zyx=(nz, int(np.ceil((hi_v - lo_v) / pixel_mm)) + 1,
                   int(np.ceil((hi_u - lo_u) / pixel_mm)) + 1),
        spacing_xyz_mm=(float(pixel_mm), float(pixel_mm), step),
        origin_lps_mm=tuple(float(x) for x in origin),
        direction=tuple(float(x) for x in np.column_stack([u, v, nrm]).ravel()),
    )
