"""RTSTRUCT contour volumes by the planning-system (dicompyler) convention: a validation reference.

:func:`contour_volume_ml` measures a structure from its contour polygons, without
rasterisation, the way planning systems and dicompyler report it. The pipeline itself measures
voxel volumes on the CT grid; this function is used to check those against published
planning-system volumes (and is not called by the pipeline).
"""

from __future__ import annotations

import numpy as np
import pydicom

from pipeline.errors import SegmentationError
from pipeline.io.dicom import tag_label


def _point_in_polygon(pt: np.ndarray, poly: np.ndarray) -> bool:
    """Even-odd ray test of a 2D point against a closed polygon ((N, 2), closing edge implied)."""
    x, y = float(pt[0]), float(pt[1])
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    cross = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return bool(np.count_nonzero(cross & (x < xi)) % 2)


def contour_volume_ml(
    path_or_ds,
    roi_number: int,
    *,
    plane_spacing_mm: float | None = None,
    end_planes: str = "half",
) -> float:
    """Volume of an RTSTRUCT ROI from its contour polygons (no rasterisation), mL (= cm^3).

    This is the reference convention of planning systems and of dicompyler: each contour
    plane's area (shoelace formula on the closed polygon, in the plane's own 2D frame) times the
    plane spacing, where the first and the last plane count with **half** the spacing
    (``end_planes="half"``): the structure is taken to end half-way between its last contour
    and the next, empty, plane's position is not known, so the trapezoid rule is used.

    Difference from the voxel volume of :func:`read_rtstruct` masks (``voxel_count x voxel
    volume``): the voxel volume counts the pixels whose centre is inside the contour on every
    contour plane with the **full** slice thickness, the end planes included, so it exceeds this
    value by about ``(A_first + A_last) x spacing / 2`` plus the pixel-centre discretisation of
    the outline (dicompyler's Heart: voxels +1.6 %, this function +0.3 % of the published
    432.841 cm^3). Use this function to compare with planning-system volumes; features use
    the voxel volume on the CT grid.

    Parameters
    ----------
    path_or_ds : path or pydicom Dataset
        The RTSTRUCT.
    roi_number : int
        ROINumber of the structure.
    plane_spacing_mm : float, optional
        Distance between contour planes; default the median distance between the ROI's
        distinct planes (required when the ROI has a single plane).
    end_planes : {"half", "full"}
        Weight of the first and last plane (``"full"`` reproduces the voxel convention).

    Returns
    -------
    float
        Volume in mL.

    Notes
    -----
    Contours on one plane combine by the even-odd rule: a contour inside an odd number of
    other contours of the same plane is a hole (subtracted), inside an even number an island
    (added). Planes are identified by the projection of the contour points on the contour
    normal (axial and oblique structure sets alike).

    Raises
    ------
    SegmentationError
        Unknown ROI, no closed planar contour, or a single plane without ``plane_spacing_mm``.
    """
    ds = path_or_ds if hasattr(path_or_ds, "ROIContourSequence") else pydicom.dcmread(
        str(path_or_ds))
    where = getattr(ds, "filename", None)
    rc = next((r for r in ds.get("ROIContourSequence", []) or []
               if int(r.get("ReferencedROINumber", -1)) == int(roi_number)), None)
    if rc is None:
        raise SegmentationError(f"ROI {roi_number} not in the structure set", file=where,
                                tag=tag_label("ReferencedROINumber"),
                                hint="use a ROINumber of StructureSetROISequence")
    contours = []
    for c in rc.get("ContourSequence", []) or []:
        if str(c.get("ContourGeometricType", "CLOSED_PLANAR")).upper() != "CLOSED_PLANAR":
            continue
        pts = np.asarray([float(v) for v in c.get("ContourData", [])], float).reshape(-1, 3)
        if len(pts) >= 3:
            contours.append(pts)
    if not contours:
        raise SegmentationError(f"ROI {roi_number} has no closed planar contour", file=where,
                                tag=tag_label("ContourData"), hint="nothing to measure")
    # common plane normal from the largest contour (Newell's method)
    big = max(contours, key=len)
    nrm = np.zeros(3)
    for a, b in zip(big, np.roll(big, -1, axis=0)):
        nrm += np.cross(a, b)
    if np.linalg.norm(nrm) < 1e-9:
        nrm = np.array([0.0, 0.0, 1.0])
    nrm /= np.linalg.norm(nrm)
    u = np.cross(nrm, [1.0, 0.0, 0.0] if abs(nrm[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(nrm, u)
    planes: dict[float, list[np.ndarray]] = {}
    for pts in contours:
        key = round(float(np.mean(pts @ nrm)), 2)
        planes.setdefault(key, []).append(np.stack([pts @ u, pts @ v], axis=1))
    keys = sorted(planes)
    if plane_spacing_mm is None:
        if len(keys) < 2:
            raise SegmentationError(
                f"ROI {roi_number} has one contour plane: its thickness is unknown", file=where,
                tag=tag_label("ContourData"), hint="pass plane_spacing_mm (the slice spacing)")
        plane_spacing_mm = float(np.median(np.diff(keys)))
    areas = []
    for k in keys:
        polys = planes[k]
        total = 0.0
        for i, p in enumerate(polys):
            a = 0.5 * abs(float(np.dot(p[:, 0], np.roll(p[:, 1], -1))
                                - np.dot(p[:, 1], np.roll(p[:, 0], -1))))
            depth = sum(_point_in_polygon(p[0], q) for j, q in enumerate(polys) if j != i)
            total += a if depth % 2 == 0 else -a
        areas.append(total)
    w = np.ones(len(areas))
    if end_planes == "half" and len(areas) > 1:
        w[0] = w[-1] = 0.5
    elif end_planes not in ("half", "full"):
        raise ValueError(f"end_planes must be 'half' or 'full', got {end_planes!r}")
    return float(np.dot(w, areas) * plane_spacing_mm / 1000.0)
