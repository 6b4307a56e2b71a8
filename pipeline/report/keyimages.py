"""Key images: a labelled CT (and fused PET) image per lesion, a PET MIP per study.

The paper asks for a labelled screenshot of each targeted tumour on the pre-injection CT, with
the needle path (ALGORITHM.md section 5). The study job, which holds the volumes, calls
:func:`write_key_images` once after the features; it writes into ``<study>/keyimages/``:

``<lesion_id>.png``
    Axial CT through the lesion centre in a soft-tissue window (W400/L40) with the lesion
    contour; when the study has both CT phases (and their roles are known), the contrast CT and
    beside it the non-contrast CT -- the phase the needle is guided on -- on the same plane; then
    the PET (SUV) fused on the same CT slice.
``<lesion_id>.npz``
    The compact crop the worksheet redraws from, after the ranking: one to three 2D slices
    (``centre``: the slice through the lesion centroid; ``target``: through the needle target when
    it is on another slice; ``needle``: an oblique plane containing the planned needle path when
    the lesion row has a skin entry point), each with its CT (HU, int16), lesion mask, PET (SUV,
    float32, resampled onto the CT slice), the other CT phase on the same plane when there is
    one (``ct_other``, int16) and its geometry (a one-slice :class:`Grid`: the pixel -> LPS
    mapping). Never a whole volume.
``pet_mip.png`` / ``pet_mip.npz``
    Coronal maximum-intensity projection of the SUV volume with the lesion labels, and the
    projection itself (float32, 2D) with the PET grid to place labels later.
``index.json``
    What was written, the window, palette and any per-lesion error (a key image never fails the
    study).

Geometry
--------
Every mapping goes through :class:`pipeline.geometry.Grid`: :func:`slice_pixel` maps LPS points
to (column, row) pixel coordinates of a saved slice (and the signed distance from its plane);
:class:`PanelMap` maps slice pixels to pixels of a rendered PNG. Images are shown in the
radiological convention of the acquisition (patient right on the image left for an axial
slice with the row direction along +x), with R/L/A/P letters derived from the grid direction.

Rendering is numpy + Pillow (no matplotlib figure): deterministic pixels that the tests sample.
Colours are Okabe-Ito (:mod:`pipeline.report.figures`): contour yellow on CT, sky blue on PET,
needle path bluish green, target vermillion.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import SegmentationError
from pipeline.geometry import Grid, resample
from pipeline.report import figures as F

log = logging.getLogger(__name__)

KEYIMAGE_DIR = "keyimages"
INDEX_NAME = "index.json"
MIP_STEM = "pet_mip"
FORMAT_VERSION = 1
#: Soft-tissue window (width, level) in HU.
SOFT_TISSUE_WINDOW = (400.0, 40.0)
HEADER_PX = 22
GAP_PX = 4
#: CT phase names (``LesionCrops.ct_phase`` / ``other_phase``, the study's CT roles) as shown.
_PHASE_TEXT = {"contrast": "contrast-enhanced", "noncontrast": "non-contrast"}
#: Panel order of the CT phases: contrast first, the non-contrast CT (needle guidance) beside it.
_PHASE_ORDER = {"contrast": 0, "noncontrast": 1}


# --------------------------------------------------------------------------- slice crops
@dataclass(frozen=True)
class SliceCrop:
    """One saved 2D slice around a lesion.

    Attributes
    ----------
    kind : {"centre", "target", "needle"}
    grid : Grid
        One-slice grid (shape ``(1, h, w)``); its ``zyx_to_lps`` is the pixel -> LPS mapping.
    ct_hu : (h, w) int16
    mask : (h, w) bool
        The lesion mask on this slice.
    pet : (h, w) float32 or None
        PET (SUV, or the units of the PET volume) resampled onto the slice.
    ct_other_hu : (h, w) int16 or None
        The other CT phase (:attr:`LesionCrops.other_phase`) resampled onto the same slice.
    """

    kind: str
    grid: Grid
    ct_hu: np.ndarray
    mask: np.ndarray
    pet: np.ndarray | None = None
    ct_other_hu: np.ndarray | None = None

    def project(self, points_lps) -> np.ndarray:
        """(N, 3): column, row (pixels of this slice) and signed distance from its plane (mm)."""
        return slice_pixel(self.grid, points_lps)


@dataclass(frozen=True)
class LesionCrops:
    """Everything saved for one lesion's key images."""

    lesion_id: str
    lesion_label: str
    slices: tuple[SliceCrop, ...]
    centroid_lps: tuple[float, float, float]
    ct_series_uid: str = ""
    pet_units: str = ""
    notes: tuple[str, ...] = ()
    ct_phase: str = ""
    other_phase: str = ""

    def get(self, kind: str) -> SliceCrop | None:
        """The slice of this kind, or None."""
        for s in self.slices:
            if s.kind == kind:
                return s
        return None


def slice_pixel(grid: Grid, points_lps) -> np.ndarray:
    """Map LPS points to pixel coordinates of a saved slice crop.

    Parameters
    ----------
    grid : Grid
        The slice's one-slice grid (:attr:`SliceCrop.grid`).
    points_lps : (N, 3) or (3,) array-like, mm

    Returns
    -------
    (N, 3) float array
        Column (along the grid's i axis), row (j axis), both continuous pixel indices with pixel
        centres at integers, and the signed distance of each point from the slice plane (mm,
        positive along the grid's k axis).
    """
    zyx = grid.lps_to_zyx(np.asarray(points_lps, dtype=float).reshape(-1, 3))
    return np.column_stack([zyx[:, 2], zyx[:, 1], zyx[:, 0] * grid.spacing_xyz_mm[2]])


def _grid_corners_lps(grid: Grid) -> np.ndarray:
    nz, ny, nx = grid.shape_zyx
    cs = [(z, y, x) for z in (-0.5, nz - 0.5) for y in (-0.5, ny - 0.5) for x in (-0.5, nx - 0.5)]
    return grid.zyx_to_lps(np.array(cs, dtype=float))


def _sample_on(array: np.ndarray, grid: Grid, dst: Grid, interpolation: str,
               default: float) -> np.ndarray:
    """Values of ``array`` (on ``grid``) at the voxels of ``dst``, from a sub-crop only."""
    zyx = grid.lps_to_zyx(_grid_corners_lps(dst))
    lo = np.maximum(np.floor(zyx.min(axis=0)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(zyx.max(axis=0)).astype(int) + 2, np.asarray(grid.shape_zyx))
    if np.any(hi <= lo):
        return np.full(dst.shape_zyx, default, dtype=np.float32)
    bbox = tuple((int(a), int(b)) for a, b in zip(lo, hi))
    sub = np.ascontiguousarray(array[tuple(slice(a, b) for a, b in bbox)])
    if sub.dtype == bool:
        sub = sub.astype(np.uint8)
    if interpolation != "nearest":
        sub = sub.astype(np.float32)
        if not np.all(np.isfinite(sub)):
            sub = np.where(np.isfinite(sub), sub, np.float32(default))
    return resample(sub, grid.crop(bbox), dst, interpolation=interpolation, default=default)


def _val(row: Mapping | None, key: str) -> float | None:
    return None if row is None else F.to_float(row.get(key))


def _point(row: Mapping | None, prefix: str) -> np.ndarray | None:
    vals = [_val(row, f"{prefix}_{a}_mm") for a in "xyz"]
    return None if any(v is None for v in vals) else np.array(vals, dtype=float)


def target_of(row: Mapping | None) -> np.ndarray | None:
    """The needle target (LPS mm) of a table row: ``target_*``, else SUVpeak centre, else None."""
    return _point(row, "target") if _point(row, "target") is not None else _point(row, "suv_peak")


def _mask_centroid_lps(mask) -> np.ndarray:
    idx = np.argwhere(mask.crop).astype(float).mean(axis=0) + np.array([b[0] for b in mask.bbox_zyx])
    return mask.grid.zyx_to_lps(idx[None, :])[0]


def _nearest_nonempty(mask, k: int) -> int:
    """Grid slice index closest to ``k`` on which the mask has voxels."""
    z0 = mask.bbox_zyx[0][0]
    per = mask.crop.reshape(mask.crop.shape[0], -1).any(axis=1)
    ks = np.flatnonzero(per) + z0
    return int(ks[np.argmin(np.abs(ks - k))])


def _axial_slice_grid(mask, k: int, extra_pts: list[np.ndarray], context_mm: float,
                      margin_mm: float) -> Grid:
    g = mask.grid
    (_, _), (y0, y1), (x0, x1) = mask.bbox_zyx
    sx, sy, _ = g.spacing_xyz_mm
    lo = np.array([y0 - context_mm / sy, x0 - context_mm / sx])
    hi = np.array([y1 - 1 + context_mm / sy, x1 - 1 + context_mm / sx])
    for p in extra_pts:
        zyx = g.lps_to_zyx(p[None, :])[0]
        lo = np.minimum(lo, zyx[1:] - np.array([margin_mm / sy, margin_mm / sx]))
        hi = np.maximum(hi, zyx[1:] + np.array([margin_mm / sy, margin_mm / sx]))
    lo = np.maximum(np.floor(lo).astype(int), 0)
    hi = np.minimum(np.ceil(hi).astype(int) + 1, np.array(g.shape_zyx[1:]))
    return g.crop(((k, k + 1), (int(lo[0]), int(hi[0])), (int(lo[1]), int(hi[1]))))


def _needle_plane_grid(mask, entry: np.ndarray, target: np.ndarray, context_mm: float) -> Grid | None:
    """One-slice grid of the plane containing the needle line, as close to axial as possible."""
    d = target - entry
    length = float(np.linalg.norm(d))
    if length < 1e-3:
        return None
    d /= length
    ez = np.array([0.0, 0.0, 1.0])
    w = np.cross(d, ez)
    if np.linalg.norm(w) < 1e-6:  # purely craniocaudal path: use a coronal plane
        w = np.array([1.0, 0.0, 0.0])
    w /= np.linalg.norm(w)
    n = np.cross(d, w)
    n /= np.linalg.norm(n)
    if n[2] < 0:
        n = -n
    ex, ey = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    a = ex - (ex @ n) * n
    if np.linalg.norm(a) < 1e-6:
        a = ey - (ey @ n) * n
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    if b @ ey < 0:  # keep anterior at the top, as on an axial slice
        b = -b
        a = -a
        n = np.cross(a, b)
    sp = float(min(mask.grid.spacing_xyz_mm[:2]))
    sz = float(mask.grid.spacing_xyz_mm[2])
    # in-plane extent: the lesion's bounding-box corners, the entry and the target
    (z0, z1), (y0, y1), (x0, x1) = mask.bbox_zyx
    corners = mask.grid.zyx_to_lps(np.array(
        [(z, y, x) for z in (z0, z1 - 1) for y in (y0, y1 - 1) for x in (x0, x1 - 1)], float))
    pts = np.vstack([corners, entry[None, :], target[None, :]])
    rel = pts - target
    u, v = rel @ a, rel @ b
    umin, umax = u.min() - context_mm, u.max() + context_mm
    vmin, vmax = v.min() - context_mm, v.max() + context_mm
    nx = int(math.ceil((umax - umin) / sp)) + 1
    ny = int(math.ceil((vmax - vmin) / sp)) + 1
    origin = target + umin * a + vmin * b
    direction = np.column_stack([a, b, n])
    return Grid((1, ny, nx), (sp, sp, sz), tuple(float(x) for x in origin),
                tuple(float(x) for x in direction.ravel()))


def extract_lesion_crops(
    ct,
    mask,
    lesion_id: str,
    row: Mapping | None = None,
    *,
    suv=None,
    context_mm: float = 40.0,
    path_margin_mm: float = 150.0,
    ct_phase: str = "",
    other_ct=None,
    other_phase: str = "",
) -> LesionCrops:
    """Cut the key-image slices of one lesion out of the study's volumes.

    Parameters
    ----------
    ct : Volume
        The CT, ideally the one the mask was drawn on (any grid: the slices are resampled).
    mask : LesionMask
    lesion_id : str
    row : mapping, optional
        The lesion's table row: ``centroid_*_mm``, ``target_*_mm`` / ``suv_peak_*_mm`` and, when
        the path planner has run, ``entry_*_mm``.
    suv : Volume, optional
        PET (SUVbw); resampled onto every slice.
    context_mm : float
        Margin around the lesion, mm.
    path_margin_mm : float
        When the row has no entry point, the in-plane margin kept so that a needle path planned
        later (at most this long) still fits on the slice.
    ct_phase : {"contrast", "noncontrast", ""}
        Phase of ``ct`` ("" unknown).
    other_ct : Volume, optional
        The other CT phase (``other_phase``), sampled on the same slices so that the key image
        shows the non-contrast CT (needle guidance) beside the contrast CT. Used only in the
        frame of reference of ``ct`` (else a note says why it is not shown).
    other_phase : {"contrast", "noncontrast", ""}

    Returns
    -------
    LesionCrops

    Raises
    ------
    SegmentationError
        The mask is empty.
    """
    g = mask.grid
    if not np.any(mask.crop):
        raise SegmentationError(
            f"lesion {lesion_id}: expected a mask with at least one voxel, found an empty mask "
            f"({mask.name!r}); no key image", series_uid=str(mask.source_uid or "") or None,
            hint="drop or redraw the empty segment; the other lesions keep their key images")
    notes: list[str] = []
    centroid = _point(row, "centroid")
    if centroid is None:
        centroid = _mask_centroid_lps(mask)
    target = target_of(row)
    entry = _point(row, "entry")
    k_c = _nearest_nonempty(mask, int(round(g.lps_to_zyx(centroid[None, :])[0, 0])))
    plans: list[tuple[str, Grid]] = []
    extra = [entry] if entry is not None else []
    margin = 20.0 if entry is not None else path_margin_mm
    if entry is None:
        # keep room for a path planned later: a square of +-path_margin around the lesion
        extra = [centroid + np.array([sx, sy, 0.0]) * path_margin_mm
                 for sx in (-1, 1) for sy in (-1, 1)]
        margin = 0.0
    plans.append(("centre", _axial_slice_grid(mask, k_c, extra, context_mm, margin)))
    if target is not None:
        kt = int(round(g.lps_to_zyx(target[None, :])[0, 0]))
        z0, z1 = mask.bbox_zyx[0]
        if kt != k_c and z0 <= kt < z1:
            plans.append(("target", _axial_slice_grid(mask, kt, extra, context_mm, margin)))
    if entry is not None:
        tgt = target if target is not None else centroid
        pg = _needle_plane_grid(mask, entry, tgt, context_mm=20.0)
        if pg is not None:
            plans.append(("needle", pg))
    mask_grid = g.crop(mask.bbox_zyx)
    if ct.series_uid and mask.referenced_series_uid and ct.series_uid != mask.referenced_series_uid:
        notes.append(f"CT series {ct.series_uid} shown; the mask was drawn on "
                     f"{mask.referenced_series_uid} (same frame of reference assumed)")
    if other_ct is not None and (getattr(other_ct, "frame_of_reference_uid", "") or "") != (
            getattr(ct, "frame_of_reference_uid", "") or ""):
        notes.append(f"{_PHASE_TEXT.get(other_phase, 'other')} CT not shown: it is in another "
                     "frame of reference than the CT the lesion is drawn on")
        other_ct, other_phase = None, ""
    slices = []
    for kind, sg in plans:
        ct_s = _sample_on(ct.array, ct.grid, sg, "linear", -1024.0)[0]
        m_s = _sample_on(mask.crop, mask_grid, sg, "nearest", 0)[0].astype(bool)
        pet_s = None
        if suv is not None:
            pet_s = _sample_on(suv.array, suv.grid, sg, "linear", 0.0)[0].astype(np.float32)
        ct_i16 = np.clip(np.rint(ct_s), -32768, 32767).astype(np.int16)
        other_i16 = None
        if other_ct is not None:
            o = _sample_on(other_ct.array, other_ct.grid, sg, "linear", -1024.0)[0]
            other_i16 = np.clip(np.rint(o), -32768, 32767).astype(np.int16)
        slices.append(SliceCrop(kind, sg, ct_i16, m_s, pet_s, other_i16))
    return LesionCrops(
        lesion_id=str(lesion_id), lesion_label=str(mask.name), slices=tuple(slices),
        centroid_lps=tuple(float(v) for v in centroid), ct_series_uid=str(ct.series_uid or ""),
        pet_units="" if suv is None else str(suv.units), notes=tuple(notes),
        ct_phase=str(ct_phase or ""), other_phase=str(other_phase or "") if other_ct is not None
        else "",
    )


# --------------------------------------------------------------------------- npz I/O
def _grid_arrays(prefix: str, grid: Grid) -> dict[str, np.ndarray]:
    return {f"{prefix}shape": np.asarray(grid.shape_zyx, dtype=np.int64),
            f"{prefix}spacing": np.asarray(grid.spacing_xyz_mm, dtype=float),
            f"{prefix}origin": np.asarray(grid.origin_lps_mm, dtype=float),
            f"{prefix}direction": np.asarray(grid.direction, dtype=float)}


def _grid_from(z, prefix: str) -> Grid:
    return Grid(tuple(int(v) for v in z[f"{prefix}shape"]),
                tuple(float(v) for v in z[f"{prefix}spacing"]),
                tuple(float(v) for v in z[f"{prefix}origin"]),
                tuple(float(v) for v in z[f"{prefix}direction"]))


def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_crops(path: Path, crops: LesionCrops) -> Path:
    """Write ``crops`` as a compressed ``.npz`` (no pickled objects)."""
    arrays: dict[str, np.ndarray] = {
        "format_version": np.asarray(FORMAT_VERSION),
        "lesion_id": np.asarray(crops.lesion_id), "lesion_label": np.asarray(crops.lesion_label),
        "centroid_lps": np.asarray(crops.centroid_lps, dtype=float),
        "ct_series_uid": np.asarray(crops.ct_series_uid), "pet_units": np.asarray(crops.pet_units),
        "notes": np.asarray(list(crops.notes) or [""]), "n_slices": np.asarray(len(crops.slices)),
        "ct_phase": np.asarray(crops.ct_phase), "other_phase": np.asarray(crops.other_phase),
    }
    for i, s in enumerate(crops.slices):
        p = f"s{i}_"
        arrays[p + "kind"] = np.asarray(s.kind)
        arrays[p + "ct"] = np.asarray(s.ct_hu, dtype=np.int16)
        arrays[p + "mask"] = np.asarray(s.mask, dtype=bool)
        if s.pet is not None:
            arrays[p + "pet"] = np.asarray(s.pet, dtype=np.float32)
        if s.ct_other_hu is not None:
            arrays[p + "ct_other"] = np.asarray(s.ct_other_hu, dtype=np.int16)
        arrays.update(_grid_arrays(p, s.grid))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    _atomic_bytes(Path(path), buf.getvalue())
    return Path(path)


def load_crops(path: Path) -> LesionCrops:
    """Read a file written by :func:`save_crops`."""
    with np.load(path, allow_pickle=False) as z:
        slices = []
        for i in range(int(z["n_slices"])):
            p = f"s{i}_"
            slices.append(SliceCrop(
                kind=str(z[p + "kind"]), grid=_grid_from(z, p), ct_hu=z[p + "ct"],
                mask=z[p + "mask"].astype(bool), pet=z[p + "pet"] if p + "pet" in z else None,
                ct_other_hu=z[p + "ct_other"] if p + "ct_other" in z else None))
        return LesionCrops(
            lesion_id=str(z["lesion_id"]), lesion_label=str(z["lesion_label"]),
            slices=tuple(slices), centroid_lps=tuple(float(v) for v in z["centroid_lps"]),
            ct_series_uid=str(z["ct_series_uid"]), pet_units=str(z["pet_units"]),
            notes=tuple(str(n) for n in z["notes"] if str(n)),
            ct_phase=str(z["ct_phase"]) if "ct_phase" in z else "",
            other_phase=str(z["other_phase"]) if "other_phase" in z else "")


# --------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class PanelMap:
    """Where a slice is drawn inside a PNG.

    A PNG pixel ``(x, y)`` (column, row; integers are pixel centres) shows the slice point at
    column ``c0 + (x - x0 + 0.5 - width / 2) * mm_per_px / sx`` (rows likewise with ``sy``).
    """

    x0: int
    y0: int
    width: int
    height: int
    c0: float
    r0: float
    mm_per_px: float
    sx: float
    sy: float
    grid: Grid

    def slice_to_png(self, cols, rows) -> np.ndarray:
        """(N, 2) PNG pixel coordinates (x, y) of slice pixel coordinates."""
        cols, rows = np.asarray(cols, float), np.asarray(rows, float)
        x = (cols - self.c0) * self.sx / self.mm_per_px + self.width / 2 - 0.5 + self.x0
        y = (rows - self.r0) * self.sy / self.mm_per_px + self.height / 2 - 0.5 + self.y0
        return np.column_stack([np.atleast_1d(x), np.atleast_1d(y)])

    def lps_to_png(self, points_lps) -> np.ndarray:
        """(N, 3): PNG x, y and the signed distance from the slice plane (mm)."""
        p = slice_pixel(self.grid, points_lps)
        return np.column_stack([self.slice_to_png(p[:, 0], p[:, 1]), p[:, 2]])

    def sample_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Slice (row, col) coordinates of every panel pixel centre, each (height, width)."""
        xs = self.c0 + (np.arange(self.width) + 0.5 - self.width / 2) * self.mm_per_px / self.sx
        ys = self.r0 + (np.arange(self.height) + 0.5 - self.height / 2) * self.mm_per_px / self.sy
        rr, cc = np.meshgrid(ys, xs, indexing="ij")
        return rr, cc


@dataclass(frozen=True)
class NeedlePath:
    """A planned straight needle path (LPS mm)."""

    entry_lps: tuple[float, float, float]
    target_lps: tuple[float, float, float]
    length_mm: float | None = None
    safe: bool | None = None

    @property
    def length(self) -> float:
        """Entry-to-target length: the planner's value when given, else the straight distance."""
        if self.length_mm is not None:
            return float(self.length_mm)
        return float(np.linalg.norm(np.subtract(self.target_lps, self.entry_lps)))


@dataclass
class KeyImage:
    """A rendered key image: PNG bytes, the panel mappings, alt text and notes."""

    png: bytes
    panels: list[PanelMap]
    slice_kind: str
    alt: str
    notes: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)
    phases: tuple[str, ...] = ()


def ct_panels(crops: LesionCrops, s: SliceCrop) -> list[tuple[str, np.ndarray]]:
    """(phase, HU slice) of the CT panels of slice ``s`` in display order.

    One panel (the CT the lesion is drawn on) unless the other phase was saved: then the
    contrast CT first and the non-contrast CT beside it (the phase the needle is guided on).
    A phase is ``""`` when unknown.
    """
    pan = [(crops.ct_phase, s.ct_hu)]
    if s.ct_other_hu is not None and crops.other_phase:
        pan.append((crops.other_phase, s.ct_other_hu))
        pan.sort(key=lambda t: _PHASE_ORDER.get(t[0], 2))
    return pan


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


#: matplotlib's "inferno" colour map (CC0) sampled at 256 levels as uint8 RGB, the value of
#: ``_lut_from_matplotlib("inferno")``: kept here so that the study job does not import matplotlib
#: (about 0.2 s) for one table; ``tests/report/test_keyimages_lut.py`` checks it against matplotlib.
_INFERNO_RGB_HEX = (
    "00000300000400000601000701010901010b02010e02021003021204031404031605041806041b07051d08061f090621"
    "0a07230b07260d08280e082a0f092d10092f120a32130a34140b36160b39170b3b190b3e1a0b401c0c431d0c451f0c47"
    "200c4a220b4c240b4e260b50270b52290b542b0a562d0a582e0a5a300a5c32095d34095f3509603709613909623b0964"
    "3c09653e0966400966410967430a68450a69460a69480b6a4a0b6a4b0c6b4d0c6b4f0d6c500d6c520e6c530e6d550f6d"
    "570f6d58106d5a116d5b116e5d126e5f126e60136e62146e63146e65156e66156e68166e6a176e6b176e6d186e6e186e"
    "70196e72196d731a6d751b6d761b6d781c6d7a1c6d7b1d6c7d1d6c7e1e6c801f6b811f6b83206b85206a86216a88216a"
    "8922698b22698d23698e24689024689125679325679526669626669827659928649b28649c29639e2963a02a62a12b61"
    "a32b61a42c60a62c5fa72d5fa92e5eab2e5dac2f5cae305baf315bb1315ab23259b43358b53357b73456b83556ba3655"
    "bb3754bd3753be3852bf3951c13a50c23b4fc43c4ec53d4dc73e4cc83e4bc93f4acb4049cc4148cd4247cf4446d04544"
    "d14643d24742d44841d54940d64a3fd74b3ed94d3dda4e3bdb4f3adc5039dd5238de5337df5436e05634e25733e35832"
    "e45a31e55b30e65c2ee65e2de75f2ce8612be9622aea6428eb6527ec6726ed6825ed6a23ee6c22ef6d21f06f1ff0701e"
    "f1721df2741cf2751af37719f37918f47a16f57c15f57e14f68012f68111f78310f7850ef8870df8880cf88a0bf98c09"
    "f98e08f99008fa9107fa9306fa9506fa9706fb9906fb9b06fb9d06fb9e07fba007fba208fba40afba60bfba80dfbaa0e"
    "fbac10fbae12fbb014fbb116fbb318fbb51afbb71cfbb91efabb21fabd23fabf25fac128f9c32af9c52cf9c72ff8c931"
    "f8cb34f8cd37f7cf3af7d13cf6d33ff6d542f5d745f5d948f4db4bf4dc4ff3de52f3e056f3e259f2e45df2e660f1e864"
    "f1e968f1eb6cf1ed70f1ee74f1f079f1f27df2f381f2f485f3f689f4f78df5f891f6fa95f7fb99f9fc9dfafda0fcfea4"
)


def _lut_from_matplotlib(name: str) -> np.ndarray:
    """(256, 3) uint8 RGB of a matplotlib colour map."""
    import matplotlib

    return (np.asarray(matplotlib.colormaps[name](np.linspace(0, 1, 256)))[:, :3] * 255).astype(np.uint8)


def _lut(name: str) -> np.ndarray:
    """(256, 3) uint8 RGB colour table: "inferno" from the stored table, others from matplotlib."""
    if name == "inferno":
        return np.frombuffer(bytes.fromhex(_INFERNO_RGB_HEX), dtype=np.uint8).reshape(256, 3)
    return _lut_from_matplotlib(name)


def _interp(a: np.ndarray, rr: np.ndarray, cc: np.ndarray, order: int, cval: float) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    return map_coordinates(np.asarray(a, dtype=np.float32), [rr, cc], order=order, mode="constant",
                           cval=cval, prefilter=False)


def contour_pixels(inside: np.ndarray) -> np.ndarray:
    """Pixels on either side of the boundary of a boolean image (a 2-pixel-wide outline).

    The boundary of the region lies between the two rings: the inner ring (inside pixels with an
    outside 4-neighbour) and the outer ring (outside pixels with an inside 4-neighbour). Image
    edges are not outlined.
    """
    from scipy.ndimage import binary_dilation, binary_erosion

    inner = inside & ~binary_erosion(inside, border_value=1)
    outer = ~inside & binary_dilation(inside)
    return inner | outer


def _orientation_letters(grid: Grid) -> dict[str, str]:
    """Letters for the left/right/top/bottom edges of a slice drawn with i to the right."""
    d = grid.direction_matrix
    names = {0: ("R", "L"), 1: ("A", "P"), 2: ("I", "S")}  # (negative, positive) along LPS axis

    def ends(v):
        ax = int(np.argmax(np.abs(v)))
        neg, pos = names[ax]
        return (neg, pos) if v[ax] > 0 else (pos, neg)

    left, right = ends(d[:, 0])
    top, bottom = ends(d[:, 1])
    return {"left": left, "right": right, "top": top, "bottom": bottom}


def _panel_rgb(s: SliceCrop, pm: PanelMap, *, fused: bool, pet_max: float,
               ct_hu: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    rr, cc = pm.sample_coords()
    w, lvl = SOFT_TISSUE_WINDOW
    hu = _interp(s.ct_hu if ct_hu is None else ct_hu, rr, cc, 1, -1024.0)
    grey = np.clip((hu - (lvl - w / 2)) / w, 0, 1)
    rgb = np.repeat((grey * 255)[..., None], 3, axis=2)
    if fused and s.pet is not None:
        pet = _interp(s.pet, rr, cc, 1, 0.0)
        norm = np.clip(pet / max(pet_max, 1e-6), 0, 1)
        col = _lut("inferno")[(norm * 255).astype(int)].astype(float)
        alpha = (0.75 * np.clip(norm * 2.5, 0, 1))[..., None]
        rgb = (1 - alpha) * rgb + alpha * col
    inside = _interp(s.mask.astype(np.float32), rr, cc, 1, 0.0) >= 0.5
    ring = contour_pixels(inside)
    rgb[ring] = F.hex_to_rgb(F.CONTOUR_PET if fused else F.CONTOUR_CT)
    return np.clip(rgb, 0, 255).astype(np.uint8), ring


def _outlined_text(draw, xy, text, font, fill, anchor="la"):
    draw.text(xy, text, font=font, fill=fill, anchor=anchor, stroke_width=2, stroke_fill=(0, 0, 0))


def _decorate(draw, pm: PanelMap, label: str, font) -> None:
    letters = _orientation_letters(pm.grid)
    x0, y0, w, h = pm.x0, pm.y0, pm.width, pm.height
    white = (255, 255, 255)
    _outlined_text(draw, (x0 + 4, y0 + h // 2), letters["left"], font, white, "lm")
    _outlined_text(draw, (x0 + w - 4, y0 + h // 2), letters["right"], font, white, "rm")
    _outlined_text(draw, (x0 + w // 2, y0 + 3), letters["top"], font, white, "mt")
    _outlined_text(draw, (x0 + w // 2, y0 + h - 3), letters["bottom"], font, white, "mb")
    _outlined_text(draw, (x0 + 4, y0 + 3), label, font, white)
    # scale bar: the longest of 5/10/20/50 mm that fits in a quarter of the panel
    bar_mm = 5.0
    for cand in (10.0, 20.0, 50.0):
        if cand / pm.mm_per_px <= w / 4:
            bar_mm = cand
    n = bar_mm / pm.mm_per_px
    yb = y0 + h - 10
    draw.line([(x0 + 6, yb), (x0 + 6 + n, yb)], fill=(0, 0, 0), width=5)
    draw.line([(x0 + 6, yb), (x0 + 6 + n, yb)], fill=white, width=3)
    _outlined_text(draw, (x0 + 6, yb - 4), f"{bar_mm:.0f} mm", font, white, "lb")


def choose_slice(crops: LesionCrops, needle: NeedlePath | None = None,
                 prefer: str = "centre") -> tuple[SliceCrop, list[str]]:
    """The slice to draw and notes about points that are off its plane.

    With a needle path: the ``needle`` plane when both points lie on it (within half a pixel
    spacing... or 1 mm), else the saved slice closest to the target, with the entry's distance
    from the plane in the notes.
    """
    notes: list[str] = []
    if needle is None:
        return (crops.get(prefer) or crops.slices[0]), notes
    pts = np.array([needle.entry_lps, needle.target_lps], dtype=float)
    best, best_score = None, math.inf
    for s in crops.slices:
        off = np.abs(s.project(pts)[:, 2])
        score = off[1] * 4 + off[0] + (0 if s.kind == "needle" else 0.01)
        if s.kind == "needle" and off.max() <= 1.0:
            return s, notes
        if score < best_score:
            best, best_score = s, score
    off = best.project(pts)[:, 2]
    if abs(off[0]) > 1.0:
        notes.append(f"skin entry is {off[0]:+.0f} mm from this slice plane (path projected)")
    if abs(off[1]) > 1.0:
        notes.append(f"target is {off[1]:+.0f} mm from this slice plane (projected)")
    return best, notes


def render_key_image(
    crops: LesionCrops,
    *,
    title: str | None = None,
    subtitle: str = "",
    needle: NeedlePath | None = None,
    target_lps=None,
    panel_px: int = 256,
    half_mm: float | None = None,
    with_pet: bool = True,
    prefer: str = "centre",
) -> KeyImage:
    """Draw a lesion's key image: CT panel(s) (contour) and, when PET was saved, a fused panel.

    With both CT phases saved (:func:`ct_panels`) the contrast CT and the non-contrast CT (the
    phase the needle is guided on) are drawn side by side on the same plane, with the same
    contour, target and needle path.

    Parameters
    ----------
    crops : LesionCrops
    title : str, optional
        Header text (default: the lesion label and id).
    subtitle : str
        Second header part (role, tier ...).
    needle : NeedlePath, optional
        Draw the planned path (entry marker, line to the target, length label).
    target_lps : (3,), optional
        Draw a target marker without a path.
    panel_px : int
        Width and height of each panel.
    half_mm : float, optional
        Half the field of view (default: fits the lesion, or entry and target).
    with_pet : bool
        Add the fused PET panel when the crop has PET.
    prefer : str
        Slice kind without a needle path (``centre``).

    Returns
    -------
    KeyImage
    """
    from PIL import Image, ImageDraw

    s, notes = choose_slice(crops, needle, prefer)
    sx, sy = s.grid.spacing_xyz_mm[0], s.grid.spacing_xyz_mm[1]
    rows_in, cols_in = np.nonzero(s.mask)
    if len(rows_in):
        c_l, r_l = (cols_in.min() + cols_in.max()) / 2, (rows_in.min() + rows_in.max()) / 2
        ext_mm = max((cols_in.max() - cols_in.min() + 1) * sx, (rows_in.max() - rows_in.min() + 1) * sy)
    else:
        p = s.project(np.asarray(crops.centroid_lps)[None, :])[0]
        c_l, r_l, ext_mm = p[0], p[1], 20.0
        notes.append("the lesion mask does not cross this slice")
    c0, r0 = c_l, r_l
    hm = max(45.0, 0.75 * ext_mm + 20.0)
    if needle is not None:
        pe = s.project(np.asarray(needle.entry_lps)[None, :])[0]
        pts_c = np.array([pe[0], c_l])
        pts_r = np.array([pe[1], r_l])
        c0, r0 = (pts_c.min() + pts_c.max()) / 2, (pts_r.min() + pts_r.max()) / 2
        span = max((pts_c.max() - pts_c.min()) * sx, (pts_r.max() - pts_r.min()) * sy)
        hm = max(hm, span / 2 + 0.5 * ext_mm + 15.0)
    if half_mm is not None:
        hm = float(half_mm)
    mpp = 2 * hm / panel_px
    fused = with_pet and s.pet is not None
    cts = ct_panels(crops, s)
    n_pan = len(cts) + (1 if fused else 0)
    W = n_pan * panel_px + (n_pan - 1) * GAP_PX
    H = HEADER_PX + panel_px
    canvas = np.full((H, W, 3), 24, dtype=np.uint8)
    pms = []
    pet_max = 5.0
    if fused:
        vals = s.pet[s.mask] if s.mask.any() else s.pet
        pet_max = max(4.0, float(np.nanmax(vals)) * 1.05 if vals.size else 4.0)
    for p in range(n_pan):
        pm = PanelMap(p * (panel_px + GAP_PX), HEADER_PX, panel_px, panel_px, float(c0), float(r0),
                      float(mpp), float(sx), float(sy), s.grid)
        is_pet = p >= len(cts)
        rgb, _ = _panel_rgb(s, pm, fused=is_pet, pet_max=pet_max,
                            ct_hu=None if is_pet else cts[p][1])
        canvas[pm.y0:pm.y0 + panel_px, pm.x0:pm.x0 + panel_px] = rgb
        pms.append(pm)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    font, small = _font(13), _font(11)
    if title is None:
        title = crops.lesion_label if crops.lesion_label == crops.lesion_id else (
            f"{crops.lesion_label} ({crops.lesion_id})")
    head = title
    draw.text((4, HEADER_PX // 2), head + (f" · {subtitle}" if subtitle else ""), font=font,
              fill=(255, 255, 255), anchor="lm")
    z_mm = float(s.grid.origin_lps_mm[2])
    win = f"W{SOFT_TISSUE_WINDOW[0]:.0f}/L{SOFT_TISSUE_WINDOW[1]:.0f}"
    ct_label = {"contrast": f"CT+C {win}", "noncontrast": f"non-contrast CT {win}"}
    labels = [ct_label.get(ph, f"CT {win}") if len(cts) > 1 else f"CT {win}" for ph, _ in cts]
    labels.append(f"PET/CT SUV 0-{pet_max:.1f}")
    for p, pm in enumerate(pms):
        _decorate(draw, pm, labels[p], small)
    tgt = needle.target_lps if needle is not None else target_lps
    for pm in pms:
        if needle is not None:
            e = pm.lps_to_png(np.asarray(needle.entry_lps)[None, :])[0]
            t = pm.lps_to_png(np.asarray(needle.target_lps)[None, :])[0]
            box = (pm.x0, pm.y0, pm.x0 + pm.width - 1, pm.y0 + pm.height - 1)
            ln = _clip_line((e[0], e[1]), (t[0], t[1]), box)
            if ln is not None:
                draw.line(ln, fill=(0, 0, 0), width=5)
                draw.line(ln, fill=F.hex_to_rgb(F.NEEDLE), width=3)
            if box[0] <= e[0] <= box[2] and box[1] <= e[1] <= box[3]:
                draw.ellipse([e[0] - 5, e[1] - 5, e[0] + 5, e[1] + 5], fill=F.hex_to_rgb(F.NEEDLE),
                             outline=(0, 0, 0), width=2)
                _outlined_text(draw, (e[0] + 7, e[1] - 7), "entry", small, (255, 255, 255))
            mx, my = (e[0] + t[0]) / 2, (e[1] + t[1]) / 2
            if box[0] <= mx <= box[2] and box[1] <= my <= box[3]:
                # length label beside the line (offset along its normal, towards the top)
                nx, ny = -(t[1] - e[1]), t[0] - e[0]
                nn = math.hypot(nx, ny) or 1.0
                nx, ny = nx / nn, ny / nn
                if ny > 0:
                    nx, ny = -nx, -ny
                _outlined_text(draw, (mx + 8 * nx, my + 8 * ny), f"{needle.length:.0f} mm",
                               small, (255, 255, 255), "rm" if nx < 0 else "lm")
        if tgt is not None:
            t = pm.lps_to_png(np.asarray(tgt, float)[None, :])[0]
            col = F.hex_to_rgb(F.TARGET)
            draw.line([(t[0] - 6, t[1]), (t[0] + 6, t[1])], fill=col, width=2)
            draw.line([(t[0], t[1] - 6), (t[0], t[1] + 6)], fill=col, width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=3)  # 3x faster than 6, files ~7 % larger
    where = {"centre": "through the lesion centre", "target": "through the needle target",
             "needle": "in the oblique plane of the planned needle path"}.get(s.kind, "")
    n = s.grid.slice_normal
    tilt = math.degrees(math.acos(min(1.0, abs(float(n[2])))))
    plane = (f"axial plane at z = {z_mm:.1f} mm LPS" if tilt < 0.5
             else f"plane tilted {tilt:.0f} degrees from axial")
    name = crops.lesion_label if crops.lesion_label == crops.lesion_id else (
        f"{crops.lesion_label} ({crops.lesion_id})")
    alt = (f"Key image of lesion {name}: CT slice {where} ({plane}), soft-tissue window "
           f"W400/L40, lesion contour in yellow")
    if len(cts) > 1:
        alt += ("; " + " and ".join(
            f"{pos} panel: {_PHASE_TEXT.get(ph, ph)} CT" for pos, (ph, _) in
            zip(("left", "middle" if fused else "right"), cts))
            + " on the same plane (the needle is guided on the non-contrast CT)")
    if fused:
        alt += f"; right panel: PET SUV (0 to {pet_max:.1f}, inferno colour map) fused on the same slice, contour in sky blue"
    if needle is not None:
        alt += (f"; planned needle path in green from the skin entry point to the target (red "
                f"cross), {needle.length:.0f} mm")
    elif tgt is not None:
        alt += "; needle target marked with a red cross"
    if notes:
        alt += " (" + "; ".join(notes) + ")"
    return KeyImage(png=buf.getvalue(), panels=pms, slice_kind=s.kind, alt=alt + ".",
                    notes=notes, size=(W, H), phases=tuple(ph for ph, _ in cts))


def _clip_line(p, q, box):
    """Liang-Barsky clip of segment p-q to box (x0, y0, x1, y1); None if outside."""
    x0, y0, x1, y1 = box
    dx, dy = q[0] - p[0], q[1] - p[1]
    t0, t1 = 0.0, 1.0
    for pp, qq in ((-dx, p[0] - x0), (dx, x1 - p[0]), (-dy, p[1] - y0), (dy, y1 - p[1])):
        if abs(pp) < 1e-12:
            if qq < 0:
                return None
            continue
        r = qq / pp
        if pp < 0:
            t0 = max(t0, r)
        else:
            t1 = min(t1, r)
        if t0 > t1:
            return None
    return [(p[0] + t0 * dx, p[1] + t0 * dy), (p[0] + t1 * dx, p[1] + t1 * dy)]


# --------------------------------------------------------------------------- PET MIP
@dataclass(frozen=True)
class Mip:
    """Coronal maximum-intensity projection of a PET volume.

    ``image[k, i]`` is the maximum over the grid's j axis (rows: anterior-posterior for an axial
    acquisition) of voxel ``(k, j, i)``; ``grid`` is the full PET grid (to place LPS points).
    """

    image: np.ndarray
    grid: Grid
    units: str = "SUVbw"


@dataclass(frozen=True)
class MipLabel:
    """A lesion marker on the MIP."""

    text: str
    lps: tuple[float, float, float]
    colour: str = F.OKABE_ITO["vermillion"]
    radius_mm: float = 8.0


def compute_mip(pet) -> Mip:
    """Coronal MIP of a PET :class:`Volume` (non-finite voxels count as 0)."""
    a = np.asarray(pet.array, dtype=np.float32)
    a = np.where(np.isfinite(a), a, 0.0)
    return Mip(a.max(axis=1).astype(np.float32), pet.grid, str(pet.units))


def save_mip(path: Path, mip: Mip, labels: Sequence[MipLabel] = ()) -> Path:
    """Write a :class:`Mip` (and its lesion labels) as ``.npz``."""
    arrays = {"format_version": np.asarray(FORMAT_VERSION), "image": mip.image.astype(np.float32),
              "units": np.asarray(mip.units), **_grid_arrays("grid_", mip.grid),
              "label_text": np.asarray([lb.text for lb in labels] or [""]),
              "label_lps": np.asarray([lb.lps for lb in labels] or [(0.0, 0.0, 0.0)], float),
              "n_labels": np.asarray(len(labels))}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    _atomic_bytes(Path(path), buf.getvalue())
    return Path(path)


def load_mip(path: Path) -> tuple[Mip, list[MipLabel]]:
    """Read a file written by :func:`save_mip`."""
    with np.load(path, allow_pickle=False) as z:
        mip = Mip(z["image"], _grid_from(z, "grid_"), str(z["units"]))
        n = int(z["n_labels"])
        labels = [MipLabel(str(t), tuple(float(v) for v in p))
                  for t, p in zip(z["label_text"][:n], z["label_lps"][:n])]
    return mip, labels


@dataclass
class MipImage:
    """A rendered MIP: PNG bytes, alt text and the label positions (PNG pixels)."""

    png: bytes
    alt: str
    positions: dict[str, tuple[float, float]]
    size: tuple[int, int]


def render_mip(mip: Mip, labels: Sequence[MipLabel] = (), *, max_w: int = 360,
               max_h: int = 520, title: str = "PET MIP (coronal)") -> MipImage:
    """Draw the MIP (inverted grey, SUV 0 to 5-10) with numbered lesion markers."""
    from PIL import Image, ImageDraw

    nk, ni = mip.image.shape
    sx, _, sz = mip.grid.spacing_xyz_mm
    d = mip.grid.direction_matrix
    flip_k = d[2, 2] > 0  # k runs superior: draw it upwards
    flip_i = d[0, 0] < 0  # keep patient right on the image left
    ext_i, ext_k = ni * sx, nk * sz
    mpp = max(ext_i / max_w, ext_k / max_h)
    W, Hp = max(1, int(round(ext_i / mpp))), max(1, int(round(ext_k / mpp)))
    ii = (np.arange(W) + 0.5) * mpp / sx - 0.5
    kk = (np.arange(Hp) + 0.5) * mpp / sz - 0.5
    if flip_i:
        ii = ni - 1 - ii
    if flip_k:
        kk = nk - 1 - kk
    rr, cc = np.meshgrid(kk, ii, indexing="ij")
    img = _interp(mip.image, rr, cc, 1, 0.0)
    finite = mip.image[np.isfinite(mip.image)]
    vmax = 5.0 if finite.size == 0 else float(np.clip(np.percentile(finite, 99.9), 5.0, 10.0))
    grey = (255 * (1 - np.clip(img / vmax, 0, 1))).astype(np.uint8)
    H = HEADER_PX + Hp
    canvas = np.full((H, W, 3), 255, dtype=np.uint8)
    canvas[:HEADER_PX] = 24
    canvas[HEADER_PX:] = grey[..., None]
    pil = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil)
    font, small = _font(12), _font(11)
    draw.text((4, HEADER_PX // 2), f"{title}, {mip.units or 'SUV'} 0-{vmax:.0f}", font=font,
              fill=(255, 255, 255), anchor="lm")
    left, right = ("R", "L") if not flip_i else ("L", "R")
    for xy, t, a in (((4, HEADER_PX + Hp // 2), left, "lm"), ((W - 4, HEADER_PX + Hp // 2), right, "rm"),
                     ((W // 2, HEADER_PX + 3), "S", "mt"), ((W // 2, H - 3), "I", "mb")):
        draw.text(xy, t, font=small, fill=(0, 0, 0), anchor=a)
    positions: dict[str, tuple[float, float]] = {}
    for lb in labels:
        zyx = mip.grid.lps_to_zyx(np.asarray(lb.lps, float)[None, :])[0]
        k, i = zyx[0], zyx[2]
        if flip_i:
            i = ni - 1 - i
        if flip_k:
            k = nk - 1 - k
        x = (i + 0.5) * sx / mpp - 0.5
        y = (k + 0.5) * sz / mpp - 0.5 + HEADER_PX
        positions[lb.text] = (float(x), float(y))
        r = max(5.0, lb.radius_mm / mpp)
        col = F.hex_to_rgb(lb.colour)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=col, width=2)
        draw.text((x + r + 2, y), lb.text, font=small, fill=col, anchor="lm", stroke_width=2,
                  stroke_fill=(255, 255, 255))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=3)
    alt = (f"Coronal maximum-intensity projection of the PET ({mip.units or 'SUV'}, inverted grey "
           f"scale 0 to {vmax:.0f}), patient right on the image left, head at the top")
    if labels:
        alt += "; lesions circled and labelled " + ", ".join(lb.text for lb in labels)
    return MipImage(buf.getvalue(), alt + ".", positions, (W, H))


# --------------------------------------------------------------------------- study entry point
def _ct_for(ct, mask):
    """Pick the CT for a mask from a Volume or a mapping of Volumes."""
    if not isinstance(ct, Mapping):
        return ct
    vols = list(ct.values())
    for v in vols:
        if getattr(v, "series_uid", None) == mask.referenced_series_uid:
            return v
    for key in ("noncontrast", "contrast"):
        if key in ct:
            return ct[key]
    return vols[0]


def _phases_for(ct, vol, ct_roles: Mapping[str, str] | None):
    """(phase of ``vol``, the other-phase Volume or None, its phase) from the study's CT roles.

    Roles come from ``ct_roles`` (SeriesInstanceUID -> "noncontrast" / "contrast") or, when
    ``ct`` is keyed by role, from its keys. Unknown roles: ("", None, "").
    """
    if not isinstance(ct, Mapping):
        return "", None, ""
    roles = dict(ct_roles or {})
    if not roles and set(ct) <= set(_PHASE_ORDER):
        roles = {getattr(v, "series_uid", ""): k for k, v in ct.items()}
    mine = roles.get(getattr(vol, "series_uid", ""), "")
    if mine not in _PHASE_ORDER:
        return "", None, ""
    want = "contrast" if mine == "noncontrast" else "noncontrast"
    for v in ct.values():
        if v is not vol and roles.get(getattr(v, "series_uid", "")) == want:
            return mine, v, want
    return mine, None, ""


def key_image_name(lesion_id: str) -> str:
    """File stem of a lesion's key image files (a safe identifier)."""
    from pipeline.io.sanitize import safe_id

    return safe_id(lesion_id)


def write_key_images(
    out_dir: Path,
    ct,
    masks: Sequence,
    lesion_ids: Sequence[str],
    *,
    suv=None,
    rows: Sequence[Mapping] | None = None,
    context_mm: float = 40.0,
    path_margin_mm: float = 150.0,
    ct_roles: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write every lesion's key image and crop, and the PET MIP, into ``out_dir/keyimages``.

    Called once per study by the study job, after the features (the volumes are in memory).
    Never raises for one lesion: a failure is logged and listed in ``index.json``.

    Parameters
    ----------
    out_dir : Path
        The study's output folder (``RESULTS/studies/<patient>/<study>``).
    ct : Volume or mapping of Volume
        The CT the lesion masks were drawn on, or ``{series_uid: Volume}`` (each mask then uses
        the CT of its ``referenced_series_uid``).
    masks : sequence of LesionMask
        The study's lesion masks, in the order of ``lesion_ids``.
    lesion_ids : sequence of str
        Stable lesion identifiers (the ``lesion_id`` column).
    suv : Volume, optional
        PET in SUVbw (fused panel and MIP); None without PET.
    rows : sequence of mapping, optional
        The lesion table rows (matched by ``lesion_id``): centroid, SUVpeak centre, target and
        entry points when present.
    ct_roles : mapping SeriesInstanceUID -> {"noncontrast", "contrast"}, optional
        The CT phases of ``ct`` (a mapping). With both phases known, each key image shows the
        contrast CT and the non-contrast CT (needle guidance) side by side; ``index.json``
        lists the phases shown per lesion (``phases``, panel order).

    Returns
    -------
    list of Path
        Files written (PNG, NPZ, index.json).
    """
    kdir = Path(out_dir) / KEYIMAGE_DIR
    kdir.mkdir(parents=True, exist_ok=True)
    by_id = {str(r.get("lesion_id")): r for r in (rows or [])}
    written: list[Path] = []
    entries, errors, labels = [], [], []
    for n, (lid, m) in enumerate(zip(lesion_ids, masks), start=1):
        row = by_id.get(str(lid))
        stem = key_image_name(str(lid))
        try:
            vol = _ct_for(ct, m)
            phase, other, other_phase = _phases_for(ct, vol, ct_roles)
            crops = extract_lesion_crops(vol, m, str(lid), row, suv=suv, context_mm=context_mm,
                                         path_margin_mm=path_margin_mm, ct_phase=phase,
                                         other_ct=other, other_phase=other_phase)
            npz = save_crops(kdir / f"{stem}.npz", crops)
            img = render_key_image(crops, target_lps=target_of(row))
            png = kdir / f"{stem}.png"
            _atomic_bytes(png, img.png)
            written += [png, npz]
            entries.append({"lesion_id": str(lid), "lesion_label": str(m.name), "png": png.name,
                            "npz": npz.name, "slices": [s.kind for s in crops.slices],
                            "phases": [p or "unknown" for p in img.phases],
                            "alt": img.alt, "notes": list(crops.notes) + img.notes})
            ld = _val(row, "longest_diameter_mm")
            labels.append(MipLabel(str(lid), crops.centroid_lps,
                                   radius_mm=(ld / 2 + 4) if ld else 8.0))
        except Exception as exc:
            log.warning("key image of lesion %s failed: %s", lid, exc, exc_info=True)
            errors.append({"lesion_id": str(lid), "error": f"{type(exc).__name__}: {exc}"})
    mip_entry = None
    if suv is not None:
        try:
            mip = compute_mip(suv)
            npz = save_mip(kdir / f"{MIP_STEM}.npz", mip, labels)
            im = render_mip(mip, labels)
            png = kdir / f"{MIP_STEM}.png"
            _atomic_bytes(png, im.png)
            written += [png, npz]
            mip_entry = {"png": png.name, "npz": npz.name, "alt": im.alt}
        except Exception as exc:
            log.warning("PET MIP failed: %s", exc, exc_info=True)
            errors.append({"lesion_id": "", "error": f"PET MIP: {type(exc).__name__}: {exc}"})
    index = {"format_version": FORMAT_VERSION, "window_hu": {"width": SOFT_TISSUE_WINDOW[0],
                                                             "level": SOFT_TISSUE_WINDOW[1]},
             "palette": {"contour_ct": F.CONTOUR_CT, "contour_pet": F.CONTOUR_PET,
                         "needle": F.NEEDLE, "target": F.TARGET},
             "lesions": entries, "mip": mip_entry, "errors": errors,
             "pet": None if suv is None else {"units": str(suv.units), "series_uid": str(suv.series_uid)}}
    idx = kdir / INDEX_NAME
    _atomic_bytes(idx, json.dumps(index, indent=2).encode())
    written.append(idx)
    keep = {p.name for p in written}
    for p in list(kdir.glob("*.png")) + list(kdir.glob("*.npz")):
        if p.name not in keep:  # a lesion of an earlier run that is gone now
            p.unlink(missing_ok=True)
    log.info("key images: %d lesions, %d errors -> %s", len(entries), len(errors), kdir)
    return written


def read_index(study_dir: Path) -> dict | None:
    """``keyimages/index.json`` of a study, or None when the study job wrote none."""
    p = Path(study_dir) / KEYIMAGE_DIR / INDEX_NAME
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("unreadable %s: %s", p, exc)
        return None
