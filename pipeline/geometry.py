"""The one place that owns image geometry.

Everything else in the package asks this module how indices map to patient coordinates; nothing
re-derives slice order, direction cosines or NIfTI/DICOM frame flips.

Conventions
-----------
* Arrays are indexed ``(z, y, x)`` = ``(k, j, i)``; ``i`` runs along a row (DICOM column index),
  ``j`` along a column, ``k`` across slices.
* Physical points are millimetres in DICOM LPS (x left, y posterior, z superior).
* ``Grid.direction`` is SimpleITK's row-major 3x3 matrix whose *columns* are the unit vectors of the
  i, j and k axes in LPS, so ``p = origin + D @ (spacing * (i, j, k))``.
* Slices of a DICOM series are ordered by the projection of ImagePositionPatient on the slice
  normal ``n = row_cosine x column_cosine``, ascending; never by InstanceNumber or file name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pipeline.errors import GeometryError

log = logging.getLogger(__name__)

BBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

#: NIfTI stores RAS; DICOM and SimpleITK use LPS. Multiply an RAS point by this to get LPS.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Grid:
    """A regular 3D grid in LPS.

    Attributes
    ----------
    shape_zyx : tuple of int
        Array shape, (slices, rows, columns).
    spacing_xyz_mm : tuple of float
        Voxel size along i (columns), j (rows) and k (slices), mm.
    origin_lps_mm : tuple of float
        LPS position of the centre of voxel (0, 0, 0), mm.
    direction : tuple of 9 float
        Row-major 3x3 matrix; columns are the i, j, k unit vectors in LPS.
    """

    shape_zyx: tuple[int, int, int]
    spacing_xyz_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    # ----------------------------------------------------------------- basic properties
    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 direction matrix (columns = i, j, k axes in LPS)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm^3."""
        sx, sy, sz = self.spacing_xyz_mm
        return float(sx * sy * sz)

    @property
    def slice_normal(self) -> np.ndarray:
        """Unit vector of the k axis in LPS."""
        return self.direction_matrix[:, 2]

    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous (i, j, k, 1) to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing_xyz_mm)[None, :]
        a[:3, 3] = self.origin_lps_mm
        return a

    # ----------------------------------------------------------------- coordinates
    def zyx_to_lps(self, idx_zyx: np.ndarray) -> np.ndarray:
        """Map (N, 3) continuous indices in (z, y, x) order to (N, 3) LPS mm."""
        idx = np.asarray(idx_zyx, dtype=float).reshape(-1, 3)[:, ::-1]
        return idx @ self.affine()[:3, :3].T + np.asarray(self.origin_lps_mm)

    def lps_to_zyx(self, points_lps: np.ndarray) -> np.ndarray:
        """Map (N, 3) LPS mm to (N, 3) continuous indices in (z, y, x) order."""
        p = np.asarray(points_lps, dtype=float).reshape(-1, 3) - np.asarray(self.origin_lps_mm)
        ijk = p @ np.linalg.inv(self.affine()[:3, :3]).T
        return ijk[:, ::-1]

    def contains_zyx(self, idx_zyx: np.ndarray) -> np.ndarray:
        """Boolean (N,) for integer (z, y, x) indices inside the grid."""
        idx = np.asarray(idx_zyx).reshape(-1, 3)
        return np.all((idx >= 0) & (idx < np.asarray(self.shape_zyx)), axis=1)

    def crop(self, bbox: BBox) -> "Grid":
        """The sub-grid covering ``bbox`` (half-open (z, y, x) index ranges)."""
        start_zyx = np.array([b[0] for b in bbox], dtype=float)
        origin = self.zyx_to_lps(start_zyx[None, :])[0]
        shape = tuple(int(b[1] - b[0]) for b in bbox)
        return Grid(shape, self.spacing_xyz_mm, tuple(float(v) for v in origin), self.direction)

    def is_axis_aligned(self, tol: float = 1e-4) -> bool:
        """True if the direction matrix is the identity (axial, no obliquity)."""
        return bool(np.allclose(self.direction_matrix, np.eye(3), atol=tol))

    def same_as(self, other: "Grid", tol_mm: float = 1e-3) -> bool:
        """True if both grids sample the same points."""
        return (
            self.shape_zyx == other.shape_zyx
            and np.allclose(self.spacing_xyz_mm, other.spacing_xyz_mm, atol=tol_mm)
            and np.allclose(self.origin_lps_mm, other.origin_lps_mm, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-5)
        )

    # ----------------------------------------------------------------- SimpleITK bridge
    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        """Wrap a (z, y, x) array as a SimpleITK image carrying this grid's geometry."""
        if tuple(array.shape) != tuple(self.shape_zyx):
            raise GeometryError(
                f"array shape {array.shape} does not match grid shape {self.shape_zyx}"
            )
        arr = array.astype(np.uint8) if array.dtype == bool else array
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(tuple(float(v) for v in self.spacing_xyz_mm))
        img.SetOrigin(tuple(float(v) for v in self.origin_lps_mm))
        img.SetDirection(tuple(float(v) for v in self.direction))
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> "Grid":
        """The grid of a SimpleITK image."""
        size = img.GetSize()
        return cls(
            shape_zyx=(int(size[2]), int(size[1]), int(size[0])),
            spacing_xyz_mm=tuple(float(v) for v in img.GetSpacing()),
            origin_lps_mm=tuple(float(v) for v in img.GetOrigin()),
            direction=tuple(float(v) for v in img.GetDirection()),
        )

    # ----------------------------------------------------------------- NIfTI bridge
    def nifti_affine_ras(self) -> np.ndarray:
        """4x4 NIfTI (RAS) affine for an array stored in (x, y, z) = (i, j, k) order."""
        a = self.affine()
        out = a.copy()
        out[:3, :] = RAS_TO_LPS @ a[:3, :]
        return out

    @classmethod
    def from_nifti_affine(cls, affine_ras: np.ndarray, shape_xyz: tuple[int, int, int]) -> "Grid":
        """Grid from a NIfTI RAS affine and its (x, y, z) data shape."""
        a = np.asarray(affine_ras, dtype=float)
        m = RAS_TO_LPS @ a[:3, :3]
        origin = RAS_TO_LPS @ a[:3, 3]
        spacing = np.linalg.norm(m, axis=0)
        if np.any(spacing <= 0):
            raise GeometryError(f"NIfTI affine has a zero-length axis: spacing {spacing}")
        direction = m / spacing[None, :]
        return cls(
            shape_zyx=(int(shape_xyz[2]), int(shape_xyz[1]), int(shape_xyz[0])),
            spacing_xyz_mm=tuple(float(v) for v in spacing),
            origin_lps_mm=tuple(float(v) for v in origin),
            direction=tuple(float(v) for v in direction.ravel()),
        )


# --------------------------------------------------------------------------- DICOM slices
def slice_normal(image_orientation_patient: np.ndarray) -> np.ndarray:
    """Unit normal of a DICOM slice from ImageOrientationPatient (row cosine, column cosine)."""
    iop = np.asarray(image_orientation_patient, dtype=float).reshape(2, 3)
    n = np.cross(iop[0], iop[1])
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        raise GeometryError(
            f"ImageOrientationPatient {list(iop.ravel())} has parallel row and column cosines",
            tag="ImageOrientationPatient (0020,0037)",
        )
    return n / norm


def sort_slices(
    positions_lps_mm: np.ndarray, image_orientation_patient: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Order slices by the projection of their position on the slice normal.

    Parameters
    ----------
    positions_lps_mm : (N, 3) array
        ImagePositionPatient of each slice, LPS mm.
    image_orientation_patient : (6,) array
        The shared ImageOrientationPatient.

    Returns
    -------
    order : (N,) int array
        Indices that sort the slices, ascending along the normal.
    projections_mm : (N,) float array
        Sorted projections (mm along the normal).
    """
    n = slice_normal(image_orientation_patient)
    proj = np.asarray(positions_lps_mm, dtype=float) @ n
    order = np.argsort(proj, kind="stable")
    return order, proj[order]


def grid_from_slices(
    first_position_lps_mm: np.ndarray,
    image_orientation_patient: np.ndarray,
    pixel_spacing_rc_mm: tuple[float, float],
    n_rows: int,
    n_cols: int,
    sorted_positions_lps_mm: np.ndarray,
) -> Grid:
    """Build the grid of a sorted, regularly spaced slice stack.

    ``pixel_spacing_rc_mm`` is DICOM PixelSpacing: (row spacing = between rows, i.e. along j;
    column spacing = between columns, i.e. along i). The k axis runs from the first to the last
    slice position, which may differ from the normal when the stack is sheared (gantry tilt): the
    caller must detect and handle that (see :func:`stack_shear_deg`).
    """
    iop = np.asarray(image_orientation_patient, dtype=float).reshape(2, 3)
    pos = np.asarray(sorted_positions_lps_mm, dtype=float)
    n = slice_normal(image_orientation_patient)
    if len(pos) > 1:
        step = np.median(np.diff(pos @ n))
    else:
        step = 1.0
    direction = np.column_stack([iop[0], iop[1], n])
    return Grid(
        shape_zyx=(int(len(pos)), int(n_rows), int(n_cols)),
        spacing_xyz_mm=(float(pixel_spacing_rc_mm[1]), float(pixel_spacing_rc_mm[0]), float(step)),
        origin_lps_mm=tuple(float(v) for v in first_position_lps_mm),
        direction=tuple(float(v) for v in direction.ravel()),
    )


def stack_shear_deg(sorted_positions_lps_mm: np.ndarray, image_orientation_patient) -> float:
    """Angle (degrees) between the slice normal and the line through the slice positions.

    0 for an ordinary stack; the gantry tilt for a tilted CT acquisition.
    """
    pos = np.asarray(sorted_positions_lps_mm, dtype=float)
    if len(pos) < 2:
        return 0.0
    d = pos[-1] - pos[0]
    nd = np.linalg.norm(d)
    if nd < 1e-6:
        return 0.0
    cosang = abs(float(d @ slice_normal(image_orientation_patient))) / nd
    return float(np.degrees(np.arccos(np.clip(cosang, -1.0, 1.0))))


# --------------------------------------------------------------------------- resampling
def resample(
    array: np.ndarray,
    src: Grid,
    dst: Grid,
    *,
    interpolation: str = "linear",
    default: float = 0.0,
) -> np.ndarray:
    """Resample ``array`` (on ``src``) onto ``dst`` with SimpleITK.

    Parameters
    ----------
    array : (z, y, x) array on ``src``.
    interpolation : {"linear", "nearest", "bspline"}
        Nearest for labels and masks, linear for intensities.
    default : float
        Value outside ``src``.

    Returns
    -------
    (z, y, x) array on ``dst`` (float32 for linear/bspline, input dtype for nearest; bool stays
    bool).
    """
    interp = {
        "linear": sitk.sitkLinear,
        "nearest": sitk.sitkNearestNeighbor,
        "bspline": sitk.sitkBSpline,
    }[interpolation]
    is_bool = array.dtype == bool
    src_img = src.to_sitk(array.astype(np.uint8) if is_bool else array)
    if interpolation != "nearest" and src_img.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        src_img = sitk.Cast(src_img, sitk.sitkFloat32)
    ref = dst.to_sitk(np.zeros(dst.shape_zyx, dtype=np.uint8))
    out = sitk.Resample(src_img, ref, sitk.Transform(), interp, float(default), src_img.GetPixelID())
    res = sitk.GetArrayFromImage(out)
    return res.astype(bool) if is_bool else res


def map_mask_coverage(
    crop: np.ndarray, bbox: BBox, src: Grid, dst: Grid, supersample: int = 1
) -> tuple[BBox, np.ndarray] | None:
    """Fraction of each ``dst`` voxel covered by a binary mask given on ``src``.

    Each ``src`` mask voxel is split into ``supersample**3`` points; each point is assigned to the
    ``dst`` voxel containing it. Coverage = (points in the voxel) x (point volume) / (dst voxel
    volume). This is the documented path for masks to coarser grids (CT mask -> PET): PET values
    stay untouched, and partial-volume voxels are known by their coverage.

    Returns
    -------
    (bbox_dst, coverage) or None if the mask falls outside ``dst``. ``coverage`` is float32 in
    [0, 1] (can slightly exceed 1 through discretisation; it is clipped).
    """
    idx = np.argwhere(crop)
    if len(idx) == 0:
        return None
    idx = idx + np.array([b[0] for b in bbox])
    if supersample > 1:
        offs = (np.arange(supersample) + 0.5) / supersample - 0.5
        grid_offs = np.stack(np.meshgrid(offs, offs, offs, indexing="ij"), -1).reshape(-1, 3)
        pts = (idx[:, None, :].astype(float) + grid_offs[None, :, :]).reshape(-1, 3)
    else:
        pts = idx.astype(float)
    lps = src.zyx_to_lps(pts)
    dst_idx = np.rint(dst.lps_to_zyx(lps)).astype(np.int64)
    inside = dst.contains_zyx(dst_idx)
    dst_idx = dst_idx[inside]
    if len(dst_idx) == 0:
        return None
    lo = dst_idx.min(axis=0)
    hi = dst_idx.max(axis=0) + 1
    shape = tuple(int(v) for v in hi - lo)
    counts = np.zeros(shape, dtype=np.float64)
    np.add.at(counts, tuple((dst_idx - lo).T), 1.0)
    point_volume = src.voxel_volume_mm3 / supersample**3
    coverage = np.clip(counts * point_volume / dst.voxel_volume_mm3, 0.0, 1.0).astype(np.float32)
    bbox_dst = tuple((int(a), int(b)) for a, b in zip(lo, hi))
    return bbox_dst, coverage


# --------------------------------------------------------------------------- crops and surfaces
def bbox_of(mask: np.ndarray) -> BBox | None:
    """Tight half-open (z, y, x) bounding box of a boolean array, or None if empty."""
    if not mask.any():
        return None
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        out.append((int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]


def expand_bbox(bbox: BBox, grid: Grid, margin_mm: float) -> BBox:
    """Grow ``bbox`` by ``margin_mm`` on every side, clipped to ``grid``."""
    sx, sy, sz = grid.spacing_xyz_mm
    m_zyx = [int(np.ceil(margin_mm / s)) for s in (sz, sy, sx)]
    return tuple(
        (max(0, b[0] - m), min(n, b[1] + m)) for b, m, n in zip(bbox, m_zyx, grid.shape_zyx)
    )  # type: ignore[return-value]


def paste(crop: np.ndarray, crop_bbox: BBox, target_bbox: BBox) -> np.ndarray:
    """Place ``crop`` (at ``crop_bbox``) into a zero array covering ``target_bbox``.

    ``crop_bbox`` must lie within ``target_bbox``.
    """
    shape = tuple(b[1] - b[0] for b in target_bbox)
    out = np.zeros(shape, dtype=crop.dtype)
    sl = tuple(slice(c[0] - t[0], c[1] - t[0]) for c, t in zip(crop_bbox, target_bbox))
    out[sl] = crop
    return out


def surface_points_lps(
    mask: np.ndarray, grid: Grid, *, offset_zyx=(0, 0, 0), in_plane_only: bool = False
) -> np.ndarray:
    """Points on the surface of a binary mask, at the faces between inside and outside voxels.

    Parameters
    ----------
    mask : (z, y, x) bool array, a crop of ``grid`` starting at ``offset_zyx``.
    grid : the full grid.
    in_plane_only : bool
        Only faces between neighbours in the same slice (excludes the caps of a stack, e.g. the
        body cut by the first and last slices, which are not skin).

    Returns
    -------
    (N, 3) LPS mm.
    """
    m = np.asarray(mask, dtype=bool)
    padded = np.pad(m, 1, constant_values=False)
    pts = []
    axes = (1, 2) if in_plane_only else (0, 1, 2)
    for axis in axes:
        for step in (-1, 1):
            nb = np.roll(padded, -step, axis=axis)[1:-1, 1:-1, 1:-1]
            face = m & ~nb
            idx = np.argwhere(face).astype(float)
            if len(idx):
                idx[:, axis] += 0.5 * step
                pts.append(idx)
    if not pts:
        return np.zeros((0, 3))
    allidx = np.concatenate(pts) + np.asarray(offset_zyx, dtype=float)
    return grid.zyx_to_lps(allidx)


def max_pairwise_distance(points: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Largest distance between any two of (N, D) points, with the two points.

    Uses the convex hull when there are many points.
    """
    pts = np.asarray(points, dtype=float)
    if len(pts) < 2:
        z = pts[0] if len(pts) else np.zeros(pts.shape[1] if pts.ndim == 2 else 3)
        return 0.0, z, z
    cand = pts
    if len(pts) > 64:
        try:
            from scipy.spatial import ConvexHull

            hull = ConvexHull(pts)
            cand = pts[hull.vertices]
        except Exception:  # degenerate (flat) point sets: fall back to all points
            cand = pts
    if len(cand) > 4000:
        cand = cand[np.random.default_rng(0).choice(len(cand), 4000, replace=False)]
    d2 = ((cand[:, None, :] - cand[None, :, :]) ** 2).sum(-1)
    a, b = np.unravel_index(np.argmax(d2), d2.shape)
    return float(np.sqrt(d2[a, b])), cand[a], cand[b]


# --------------------------------------------------------------------------- irregular stacks
@dataclass(frozen=True)
class StackLayout:
    """How the slices of a sorted stack sit relative to their common slice normal.

    Attributes
    ----------
    normal : (3,) array
        Unit slice normal ``row_cosine x column_cosine`` in LPS.
    projections_mm : (N,) array
        ImagePositionPatient of each slice projected on the normal (ascending), mm.
    steps_mm : (N-1,) array
        Differences of consecutive projections, mm.
    inplane_offsets_mm : (N, 2) array
        In-plane offset of each slice's first pixel from the line through slice 0 along the
        normal, as (along the row cosine = i axis, along the column cosine = j axis), mm. All
        zeros for an ordinary stack; grows linearly with the slice for a gantry-tilted (sheared)
        acquisition.
    shear_deg : float
        Angle between the normal and the line through the first and last slice positions.
    """

    normal: np.ndarray
    projections_mm: np.ndarray
    steps_mm: np.ndarray
    inplane_offsets_mm: np.ndarray
    shear_deg: float

    @property
    def max_offset_mm(self) -> float:
        """Largest in-plane offset of a slice from the normal line, mm."""
        if len(self.inplane_offsets_mm) == 0:
            return 0.0
        return float(np.max(np.linalg.norm(self.inplane_offsets_mm, axis=1)))


def stack_layout(sorted_positions_lps_mm: np.ndarray, image_orientation_patient) -> StackLayout:
    """Describe a sorted slice stack (see :class:`StackLayout`).

    Parameters
    ----------
    sorted_positions_lps_mm : (N, 3) array
        ImagePositionPatient of the slices, sorted along the normal (:func:`sort_slices`).
    image_orientation_patient : (6,) array
        The shared ImageOrientationPatient (row cosine, column cosine).
    """
    iop = np.asarray(image_orientation_patient, dtype=float).reshape(2, 3)
    n = slice_normal(iop)
    pos = np.asarray(sorted_positions_lps_mm, dtype=float).reshape(-1, 3)
    proj = pos @ n
    rel = pos - pos[0] if len(pos) else pos
    offsets = np.stack([rel @ iop[0], rel @ iop[1]], axis=1) if len(pos) else np.zeros((0, 2))
    return StackLayout(
        normal=n, projections_mm=proj, steps_mm=np.diff(proj), inplane_offsets_mm=offsets,
        shear_deg=stack_shear_deg(pos, iop),
    )


def regular_stack_grid(
    sorted_positions_lps_mm: np.ndarray,
    image_orientation_patient,
    pixel_spacing_rc_mm: tuple[float, float],
    n_rows: int,
    n_cols: int,
    *,
    step_mm: float | None = None,
) -> Grid:
    """The regular, orthogonal grid that an irregular or sheared slice stack is resampled onto.

    * Axes: i along the row cosine, j along the column cosine, k along the slice normal
      ``n = row x column`` (an orthonormal frame: the acquired image planes are kept, the stack
      is made orthogonal to them). For a gantry-tilted CT this is the de-sheared volume; for an
      axial acquisition with variable spacing it is axial.
    * Along k: from the first slice's plane to the last one's (never extrapolated), at
      ``step_mm`` (default: the median step between the acquired planes).
    * In-plane: the acquired pixel spacing; the extent is grown by whole pixels so that every
      slice's footprint is inside (a tilted stack drifts along the column direction), and the
      grid is aligned with slice 0's pixels.

    Parameters
    ----------
    sorted_positions_lps_mm : (N, 3) array
        ImagePositionPatient of the slices, sorted along the normal, LPS mm.
    image_orientation_patient : (6,) array
    pixel_spacing_rc_mm : (row spacing, column spacing)
        DICOM PixelSpacing, mm.
    n_rows, n_cols : int
        Size of each acquired slice.
    step_mm : float, optional
        Slice spacing of the result along the normal, mm.

    Returns
    -------
    Grid
    """
    iop = np.asarray(image_orientation_patient, dtype=float).reshape(2, 3)
    lay = stack_layout(sorted_positions_lps_mm, iop)
    pos = np.asarray(sorted_positions_lps_mm, dtype=float).reshape(-1, 3)
    rs, cs = float(pixel_spacing_rc_mm[0]), float(pixel_spacing_rc_mm[1])
    a = lay.inplane_offsets_mm[:, 0] / cs  # column (i) offset of each slice, pixels
    b = lay.inplane_offsets_mm[:, 1] / rs  # row (j) offset, pixels
    lo_i, hi_i = int(np.floor(a.min() + 1e-6)), int(np.ceil(a.max() - 1e-6))
    lo_j, hi_j = int(np.floor(b.min() + 1e-6)), int(np.ceil(b.max() - 1e-6))
    extent = float(lay.projections_mm[-1] - lay.projections_mm[0]) if len(pos) > 1 else 0.0
    if step_mm is None:
        step_mm = float(np.median(lay.steps_mm)) if len(pos) > 1 else 1.0
    if not step_mm > 0:
        raise GeometryError(f"slice step must be positive, got {step_mm} mm")
    nz = int(np.floor(extent / step_mm + 1e-6)) + 1
    origin = pos[0] + lo_i * cs * iop[0] + lo_j * rs * iop[1]
    direction = np.column_stack([iop[0], iop[1], lay.normal])
    return Grid(
        shape_zyx=(nz, int(n_rows + hi_j - lo_j), int(n_cols + hi_i - lo_i)),
        spacing_xyz_mm=(cs, rs, float(step_mm)),
        origin_lps_mm=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in direction.ravel()),
    )


def resample_stack(
    slices: np.ndarray,
    sorted_positions_lps_mm: np.ndarray,
    image_orientation_patient,
    pixel_spacing_rc_mm: tuple[float, float],
    target: Grid,
    *,
    fill: float = 0.0,
) -> np.ndarray:
    """Resample an irregular or sheared stack of planes onto a grid with the same plane frame.

    Each acquired slice ``k`` is a plane of pixels at its own ImagePositionPatient. A target
    voxel centre ``p`` is valued by linear interpolation **along the slice normal** between the
    two acquired planes that bracket it (``w`` from the projections of ``p`` and of the planes on
    the normal), each plane being sampled bilinearly at the orthogonal projection of ``p`` onto
    it. The in-plane (bilinear, translation-only) resampling of every plane onto the target's
    in-plane grid ("de-shearing") is done with SimpleITK from the true slice position; the
    interpolation between planes with numpy.

    Parameters
    ----------
    slices : (N, rows, cols) array
        Pixel values in the sorted order of ``sorted_positions_lps_mm``.
    sorted_positions_lps_mm : (N, 3) array
        ImagePositionPatient of each slice, LPS mm, ascending along the normal.
    image_orientation_patient : (6,) array
        Shared row and column cosines; ``target`` must have the same in-plane axes and its k
        axis along the slice normal (e.g. from :func:`regular_stack_grid`).
    pixel_spacing_rc_mm : (row spacing, column spacing), mm
    target : Grid
    fill : float
        Value of target voxels outside the acquired planes' footprints.

    Returns
    -------
    (z, y, x) float32 array on ``target``.

    Raises
    ------
    GeometryError
        ``target`` does not share the stack's plane frame.
    """
    iop = np.asarray(image_orientation_patient, dtype=float).reshape(2, 3)
    pos = np.asarray(sorted_positions_lps_mm, dtype=float).reshape(-1, 3)
    src = np.asarray(slices)
    n = slice_normal(iop)
    d = target.direction_matrix
    if not (np.allclose(d[:, 0], iop[0], atol=1e-5) and np.allclose(d[:, 1], iop[1], atol=1e-5)
            and np.allclose(d[:, 2], n, atol=1e-5)):
        raise GeometryError(
            "resample_stack needs a target grid in the slices' own frame (row, column, normal)",
            hint="build the target with pipeline.geometry.regular_stack_grid",
        )
    if src.shape[0] != len(pos):
        raise GeometryError(f"{src.shape[0]} slices but {len(pos)} positions")
    rs, cs = float(pixel_spacing_rc_mm[0]), float(pixel_spacing_rc_mm[1])
    nz, ny, nx = target.shape_zyx
    t_origin = np.asarray(target.origin_lps_mm, dtype=float)
    proj = pos @ n
    if np.any(np.diff(proj) <= 0):
        raise GeometryError("slice positions must be strictly ascending along the normal")
    tz = t_origin @ n + target.spacing_xyz_mm[2] * np.arange(nz)

    ref2d = sitk.Image(int(nx), int(ny), sitk.sitkFloat32)
    ref2d.SetSpacing((cs, rs))
    ref2d.SetOrigin((0.0, 0.0))
    cache: dict[int, np.ndarray] = {}

    def deshear(k: int) -> np.ndarray:
        if k in cache:
            return cache[k]
        rel = pos[k] - t_origin
        off = (float(rel @ iop[0]), float(rel @ iop[1]))  # mm along i, j
        fi, fj = off[0] / cs, off[1] / rs
        img2d = src[k].astype(np.float32)
        if (abs(fi - round(fi)) < 1e-6 and abs(fj - round(fj)) < 1e-6):
            out = np.full((ny, nx), fill, dtype=np.float32)  # whole-pixel shift: exact copy
            i0, j0 = int(round(fi)), int(round(fj))
            ys = slice(max(j0, 0), min(j0 + img2d.shape[0], ny))
            xs = slice(max(i0, 0), min(i0 + img2d.shape[1], nx))
            out[ys, xs] = img2d[ys.start - j0: ys.stop - j0, xs.start - i0: xs.stop - i0]
        else:
            im = sitk.GetImageFromArray(img2d)
            im.SetSpacing((cs, rs))
            im.SetOrigin(off)
            res = sitk.Resample(im, ref2d, sitk.Transform(2, sitk.sitkIdentity), sitk.sitkLinear,
                                float(fill), sitk.sitkFloat32)
            out = sitk.GetArrayFromImage(res)
        if len(cache) > 4:
            cache.pop(min(cache))
        cache[k] = out
        return out

    result = np.empty((nz, ny, nx), dtype=np.float32)
    tol = 1e-4
    for m in range(nz):
        t = tz[m]
        if t < proj[0] - tol or t > proj[-1] + tol:
            result[m] = fill
            continue
        k0 = int(np.clip(np.searchsorted(proj, t, side="right") - 1, 0, len(proj) - 1))
        if abs(t - proj[k0]) <= tol or k0 == len(proj) - 1:
            result[m] = deshear(k0)
            continue
        w = float((t - proj[k0]) / (proj[k0 + 1] - proj[k0]))
        if w >= 1.0 - 1e-9:
            result[m] = deshear(k0 + 1)
            continue
        result[m] = (1.0 - w) * deshear(k0) + w * deshear(k0 + 1)
    return result


# --------------------------------------------------------------------------- planes -> grid
def sample_planes_nearest(
    planes: list[tuple[np.ndarray, np.ndarray, tuple[float, float], np.ndarray]],
    target: Grid,
    *,
    plane_step_mm: float | None = None,
) -> tuple[BBox, np.ndarray] | None:
    """Nearest-neighbour sampling of 2D binary images placed anywhere in space onto a grid.

    Each plane is an image with its own DICOM geometry (a SEG frame, a slice). A target voxel
    centre ``p`` takes the value of the pixel nearest to it in the plane nearest to it along the
    planes' normal, if that plane is within half a plane step; otherwise it is empty. This maps
    frames that are sheared (gantry tilt), irregularly spaced, on another pixel grid or only a
    subset of slices, each by its true position.

    Parameters
    ----------
    planes : list of (ImagePositionPatient (3,), ImageOrientationPatient (6,), PixelSpacing
        (row, column), mask (rows, cols) bool)
        All planes share one orientation; two planes at the same position are OR-ed.
    target : Grid
    plane_step_mm : float, optional
        Distance between planes (default: the smallest distance between distinct plane
        positions; a single plane: the target's slice spacing).

    Returns
    -------
    (bbox_zyx, crop) or None
        Half-open (z, y, x) box on ``target`` and the bool crop inside it, tight; None if no
        target voxel is set.

    Raises
    ------
    GeometryError
        Planes with different orientations.
    """
    if not planes:
        return None
    iop0 = np.asarray(planes[0][1], dtype=float)
    if any(not np.allclose(np.asarray(p[1], float), iop0, atol=1e-4) for p in planes):
        raise GeometryError("planes with different orientations cannot be sampled together",
                            tag="ImageOrientationPatient (0020,0037)")
    iop = iop0.reshape(2, 3)
    nrm = slice_normal(iop0)
    # group planes by position along the normal
    proj = np.array([float(np.asarray(p[0], float) @ nrm) for p in planes])
    order = np.argsort(proj)
    groups: list[list[int]] = []
    for i in order:
        if groups and abs(proj[i] - proj[groups[-1][0]]) < 1e-3:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    gpos = np.array([proj[g[0]] for g in groups])
    if plane_step_mm is None:
        d = np.diff(gpos)
        plane_step_mm = float(d.min()) if len(d) else float(target.spacing_xyz_mm[2])
    half = 0.5 * float(plane_step_mm) + 1e-6
    # target box: the set pixels' centres of every plane, +-1 voxel, within the target
    corners = []
    for ipp, _, ps, m in planes:
        rr = np.flatnonzero(np.asarray(m).any(axis=1))
        cc = np.flatnonzero(np.asarray(m).any(axis=0))
        if len(rr) == 0:
            continue
        for j in (rr[0] - 0.5, rr[-1] + 0.5):
            for i in (cc[0] - 0.5, cc[-1] + 0.5):
                for dz in (-half, half):
                    corners.append(np.asarray(ipp, float) + i * ps[1] * iop[0]
                                   + j * ps[0] * iop[1] + dz * nrm)
    if not corners:
        return None
    zyx = target.lps_to_zyx(np.array(corners))
    lo = np.maximum(np.floor(zyx.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(zyx.max(axis=0)).astype(int) + 2, np.array(target.shape_zyx))
    if np.any(hi <= lo):
        return None
    zz, yy, xx = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    idx = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1)
    pts = target.zyx_to_lps(idx)
    t = pts @ nrm
    k = np.clip(np.searchsorted(gpos, t), 0, len(gpos) - 1)
    km = np.clip(k - 1, 0, len(gpos) - 1)
    nearest = np.where(np.abs(t - gpos[km]) <= np.abs(t - gpos[k]), km, k)
    ok = np.abs(t - gpos[nearest]) <= half
    out = np.zeros(len(pts), dtype=bool)
    for gi, members in enumerate(groups):
        sel = np.flatnonzero(ok & (nearest == gi))
        if len(sel) == 0:
            continue
        for mi in members:
            ipp, _, ps, m = planes[mi]
            m = np.asarray(m, dtype=bool)
            rel = pts[sel] - np.asarray(ipp, float)
            ii = np.floor(rel @ iop[0] / ps[1] + 0.5).astype(np.int64)
            jj = np.floor(rel @ iop[1] / ps[0] + 0.5).astype(np.int64)
            inside = (ii >= 0) & (ii < m.shape[1]) & (jj >= 0) & (jj < m.shape[0])
            hit = np.zeros(len(sel), dtype=bool)
            hit[inside] = m[jj[inside], ii[inside]]
            out[sel] |= hit
    if not out.any():
        return None
    crop = out.reshape(tuple(int(b - a) for a, b in zip(lo, hi)))
    tight = bbox_of(crop)
    assert tight is not None
    bbox = tuple((int(a + t0), int(a + t1)) for a, (t0, t1) in zip(lo, tight))
    return bbox, crop[tuple(slice(a, b) for a, b in tight)]
