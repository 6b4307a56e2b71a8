"""Aligning the two CT phases (and the PET) of a study: one rigid registration per study, checked.

Which images share a space
--------------------------
Every image series lives in a DICOM frame of reference (FrameOfReferenceUID). Two series in the
same frame share patient coordinates: a point in LPS mm means the same anatomy in both, so one is
simply *resampled* onto the other's grid. Series in different frames (a contrast CT acquired
after the patient moved, or exported from another scanner session) need a *registration*.

:func:`align_phases` decides, once per study (in :func:`pipeline.features.stage.prepare`):

* ``"not_needed"`` -- fewer than two CT phases: nothing to align.
* ``"same_frame_resampled"`` -- both phases carry the same, non-empty FrameOfReferenceUID and
  their fields of view overlap: the other phase is resampled (linear) onto each lesion's crop
  grid; no transform.
* ``"registered_ok"`` -- different (or missing) frames: a rigid (6 degrees of freedom)
  SimpleITK registration of the contrast CT (moving) to the non-contrast CT (fixed) on
  downsampled, body-masked images, which passed the quality check below.
* ``"registration_failed"`` -- the registration ran but failed the quality check (or the phases
  share a frame but do not overlap). The transform is **never used**: enhancement and every
  other two-phase value is left empty with the reason.

Registration (defaults in ``features.registration`` of ``configs/config.yaml``)
-------------------------------------------------------------------------------
1. Both CTs are block-averaged to about ``resample_mm`` voxels (integer factors per axis: the
   block mean is the anti-aliasing filter) and clamped to [-1000, 1500] HU.
2. Body masks: HU > ``body_threshold_hu``, the largest connected component, holes filled slice
   by slice (lungs and bowel gas belong to the body). The fixed body mask (dilated by one voxel)
   restricts the metric to the patient, so the table and air do not drive the result.
3. Initial transform: identity when the two fields of view overlap by at least half of the
   smaller one in LPS (the scanner's coordinates are then trusted to a few cm); otherwise the
   centres of mass of the two body masks are matched (frames from different sessions can be far
   apart).
4. Metric ``mattes`` (Mattes mutual information, ``histogram_bins``; the right choice between
   phases because iodinated contrast changes organ HU) or ``mean_squares``; random sampling of
   ``sampling_fraction`` of the masked voxels with a fixed seed (repeatable); regular-step
   gradient descent with physical-shift scaling; two resolution levels (x2, x1).
5. Quality check -- all must hold, else ``registration_failed``:
   * the optimiser returned a finite metric value;
   * ``body_dice`` >= ``min_body_dice``: Dice of the fixed body mask and the registered moving
     body mask, counted only where the moving image has data (a contrast series of unrelated
     content -- another patient, a calibration phantom -- fails here);
   * ``overlap_mm`` >= ``min_overlap_mm``: extent along the fixed image's slice axis of the body
     that both images cover (a tiny overlap cannot determine a rigid transform);
   * rotation angle <= ``max_rotation_deg`` (patients lie supine in both phases).
   Known limit: the body masks cannot reveal a slide along a body of constant cross-section; for
   that the mutual-information optimum is trusted.

Transforms and grids
--------------------
A registration result ``T`` maps points of the non-contrast frame to the contrast frame (LPS mm,
``p_ce = T(p_nc)``; SimpleITK's fixed-to-moving convention). A lesion drawn on one phase is taken
to the other space *without resampling the mask*: :func:`grid_through` gives the same voxels as
a grid expressed in the other frame (origin mapped, direction matrix rotated), so PET coverage
mapping and CT sampling stay exact.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipeline.geometry import BBox, Grid, resample
from pipeline.records import LesionMask, Volume

log = logging.getLogger(__name__)

#: Registration statuses written to ``registration_status``.
STATUSES = ("same_frame_resampled", "registered_ok", "registration_failed", "not_needed")
#: HU clamp applied to both images before registration.
CLAMP_HU = (-1000.0, 1500.0)
#: Seed of the metric's random sampling (repeatable registrations).
SAMPLING_SEED = 20240605
#: Gaussian smoothing (in low-resolution voxels) at the two levels (x2, x1). Smoothing the
#: final level too damps the mutual-information "interpolation artefact" that pulls images on
#: identical grids towards whole-voxel shifts.
SMOOTHING_SIGMAS_VOX = (2.0, 1.0)
#: Fewest low-resolution voxels per axis a CT must have to be registered (the x2 level and its
#: Gaussian smoothing need at least 4).
MIN_LOWRES_VOXELS = 8


# --------------------------------------------------------------------------- grids & transforms
def grid_through(grid: Grid, transform: sitk.Transform | None) -> Grid:
    """The voxels of ``grid`` expressed in another frame through a rigid ``transform``.

    Parameters
    ----------
    grid : Grid
        A grid in frame A (LPS mm).
    transform : sitk.Transform or None
        Rigid map ``p_B = T(p_A)`` (rotation + translation). None = identity.

    Returns
    -------
    Grid
        Same shape and spacing; origin ``T(origin)``; direction ``R @ D`` where ``R`` is the
        rotation of ``T``. Voxel ``(k, j, i)`` of the result lies at ``T`` of voxel
        ``(k, j, i)`` of ``grid``: masks and crops move between frames with no resampling.
    """
    if transform is None:
        return grid
    origin = np.asarray(transform.TransformPoint(tuple(float(v) for v in grid.origin_lps_mm)))
    rot = _rotation_matrix(transform)
    direction = rot @ grid.direction_matrix
    return Grid(grid.shape_zyx, grid.spacing_xyz_mm, tuple(float(v) for v in origin),
                tuple(float(v) for v in direction.ravel()))


def _rotation_matrix(transform: sitk.Transform) -> np.ndarray:
    """3x3 linear part of a rigid transform (finite differences of unit vectors)."""
    p0 = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    cols = [np.asarray(transform.TransformPoint(tuple(e))) - p0 for e in np.eye(3)]
    return np.column_stack(cols)


def rotation_angle_deg(transform: sitk.Transform) -> float:
    """Rotation angle (degrees) of a rigid transform."""
    r = _rotation_matrix(transform)
    c = (np.trace(r) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def is_subgrid(src: Grid, dst: Grid, tol_vox: float = 1e-4) -> bool:
    """True when ``dst`` samples whole voxels of ``src`` (same axes and spacing, integer offset):
    :func:`sample_volume` then copies values, it never interpolates."""
    if not (np.allclose(src.direction, dst.direction, atol=1e-6)
            and np.allclose(src.spacing_xyz_mm, dst.spacing_xyz_mm, atol=1e-6)):
        return False
    start = src.lps_to_zyx(np.asarray(dst.origin_lps_mm, dtype=float)[None])[0]
    return bool(np.allclose(start, np.rint(start), atol=tol_vox))


def sample_volume(
    volume: Volume, dst: Grid, *, interpolation: str = "linear", fill: float = np.nan,
    margin_vox: int = 2,
) -> np.ndarray:
    """Values of ``volume`` at the voxel centres of ``dst`` (a small grid in the same frame).

    Crop first: only the part of the source covering ``dst`` (its corners mapped to source
    indices, plus ``margin_vox``) is handed to :func:`pipeline.geometry.resample`. When ``dst``
    is a whole-voxel sub-grid of the source (same spacing and direction, integer offset) the
    values are sliced out exactly, with no interpolation.

    Parameters
    ----------
    volume : Volume
        Source image (z, y, x) on ``volume.grid``.
    dst : Grid
        Target grid, in the source's frame (use :func:`grid_through` to bring a grid from
        another frame).
    interpolation : {"linear", "nearest"}
    fill : float
        Value of target voxels outside the source's field of view (NaN by default, so callers
        can tell missing data from values).

    Returns
    -------
    (z, y, x) float32 array of ``dst.shape_zyx``.
    """
    src = volume.grid
    arr = np.asarray(volume.array)
    corners = np.array([[z, y, x] for z in (0, dst.shape_zyx[0] - 1)
                        for y in (0, dst.shape_zyx[1] - 1) for x in (0, dst.shape_zyx[2] - 1)],
                       dtype=float)
    src_idx = src.lps_to_zyx(dst.zyx_to_lps(corners))
    same_axes = (np.allclose(src.direction, dst.direction, atol=1e-6)
                 and np.allclose(src.spacing_xyz_mm, dst.spacing_xyz_mm, atol=1e-6))
    start = src_idx[0] if same_axes else None
    if same_axes and np.allclose(start, np.rint(start), atol=1e-4):
        s = np.rint(start).astype(int)
        out = np.full(dst.shape_zyx, fill, dtype=np.float32)
        lo = np.maximum(s, 0)
        hi = np.minimum(s + np.asarray(dst.shape_zyx), np.asarray(src.shape_zyx))
        if np.all(hi > lo):
            out[tuple(slice(a - b, c - b) for a, b, c in zip(lo, s, hi))] = arr[
                tuple(slice(a, c) for a, c in zip(lo, hi))]
        return out
    lo = np.maximum(np.floor(src_idx.min(axis=0)).astype(int) - margin_vox, 0)
    hi = np.minimum(np.ceil(src_idx.max(axis=0)).astype(int) + margin_vox + 1,
                    np.asarray(src.shape_zyx))
    if np.any(hi <= lo):
        return np.full(dst.shape_zyx, fill, dtype=np.float32)
    bbox: BBox = tuple((int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[assignment]
    sub = arr[tuple(slice(a, b) for a, b in bbox)]
    if interpolation != "nearest" or not np.isfinite(fill):
        sub = sub.astype(np.float32, copy=False)  # float, so that NaN can mark "outside"
    out = resample(sub, src.crop(bbox), dst, interpolation=interpolation, default=float(fill))
    out = out.astype(np.float32, copy=False)
    return out


def mask_on_grid(mask: LesionMask, dst: Grid, transform: sitk.Transform | None = None
                 ) -> np.ndarray:
    """A mask (any grid, possibly another frame) as a bool array on ``dst``.

    ``transform`` maps the mask's frame to ``dst``'s frame (None = same frame). Exact slicing
    when the grids share voxels; nearest neighbour otherwise. Only the mask's crop is resampled.
    """
    mgrid = grid_through(mask.grid.crop(mask.bbox_zyx), transform)
    vol = Volume(np.asarray(mask.crop, dtype=np.uint8), mgrid, "label", "")
    out = sample_volume(vol, dst, interpolation="nearest", fill=0.0)
    return out > 0.5


# --------------------------------------------------------------------------- frames of a study
@dataclass
class PhaseAlignment:
    """How the non-contrast and contrast CT of a study relate (see the module docstring).

    Attributes
    ----------
    status : str
        One of :data:`STATUSES`.
    reason : str
        Why the status (always filled for ``registration_failed``).
    transform : sitk.Transform or None
        ``p_contrast = T(p_noncontrast)``, LPS mm. Set only for ``registered_ok``.
    metric : float or None
        Final registration metric value (Mattes MI is negative: lower is better).
    body_dice : float or None
        Body-mask agreement after registration, within the common field of view.
    overlap_mm : float or None
        Extent of the common body along the fixed slice axis, mm.
    translation_mm : tuple of float or None
        Translation of ``T`` at the fixed image centre, LPS mm.
    rotation_deg : float or None
    wall_s : float
        Time spent, s.
    """

    status: str
    reason: str = ""
    transform: sitk.Transform | None = None
    metric: float | None = None
    body_dice: float | None = None
    overlap_mm: float | None = None
    translation_mm: tuple[float, float, float] | None = None
    rotation_deg: float | None = None
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        """JSON-friendly summary (for provenance and logs)."""
        return {
            "status": self.status, "reason": self.reason, "metric": self.metric,
            "body_dice": self.body_dice, "overlap_mm": self.overlap_mm,
            "translation_mm": list(self.translation_mm) if self.translation_mm else None,
            "rotation_deg": self.rotation_deg, "wall_s": round(self.wall_s, 3),
        }


@dataclass
class StudyFrames:
    """Spaces of the images of one study and the maps between them.

    Two spaces exist at most: ``"nc"`` (the non-contrast CT's frame) and ``"ce"`` (the contrast
    CT's frame, identical to ``"nc"`` when both share a frame of reference). The PET and every
    mask are assigned to one of them.

    Attributes
    ----------
    alignment : PhaseAlignment
    space_of_series : dict series_uid -> space
        For the CT series (and the PET series).
    space_of_frame : dict FrameOfReferenceUID -> space
    pet_space : str or None
    notes : list of str
        Assumptions made (e.g. a PET whose frame matches no CT).
    """

    alignment: PhaseAlignment
    space_of_series: dict[str, str] = field(default_factory=dict)
    space_of_frame: dict[str, str] = field(default_factory=dict)
    grid_space: list[tuple[Grid, str]] = field(default_factory=list)
    pet_space: str | None = None
    notes: list[str] = field(default_factory=list)

    def space_of_mask(self, mask: LesionMask) -> str:
        """Space of a mask: that of the series it was drawn on, else of a CT on its grid."""
        s = self.space_of_series.get(mask.referenced_series_uid)
        if s is not None:
            return s
        spaces = {sp for g, sp in self.grid_space if g.same_as(mask.grid)}
        if len(spaces) == 1:
            return spaces.pop()
        return "nc"

    def transform(self, src: str, dst: str) -> tuple[sitk.Transform | None, str]:
        """Point map from space ``src`` to ``dst``: (transform or None for identity, reason).

        Returns ``(None, "")`` for the same space; ``(None, reason)`` with a non-empty reason
        when the spaces cannot be related (registration failed): the caller must not use it.
        """
        if src == dst:
            return None, ""
        a = self.alignment
        if a.status != "registered_ok" or a.transform is None:
            return None, (f"images in different frames of reference and the phase registration "
                          f"is {a.status}: {a.reason}")
        if src == "nc" and dst == "ce":
            return a.transform, ""
        return a.transform.GetInverse(), ""


def study_frames(ct: dict[str, Volume], pet: Volume | None, rcfg: dict) -> StudyFrames:
    """Assign spaces to the study's images and align the CT phases (once per study).

    Parameters
    ----------
    ct : role ("noncontrast" / "contrast") -> CT Volume (HU).
    pet : the PET (SUV or activity) Volume, or None.
    rcfg : ``features.registration`` settings.
    """
    nc, ce = ct.get("noncontrast"), ct.get("contrast")
    if nc is not None and ce is not None and nc is not ce:
        alignment = align_phases(nc, ce, rcfg)
    else:
        alignment = PhaseAlignment("not_needed", "fewer than two CT phases" if (
            nc is None or ce is None) else "one CT series serves both phases")
    frames = StudyFrames(alignment)
    ce_space = "nc" if alignment.status in ("same_frame_resampled", "not_needed") else "ce"
    for role, vol, space in (("noncontrast", nc, "nc"), ("contrast", ce, ce_space)):
        if vol is None:
            continue
        if nc is None:  # only a contrast CT: it defines the single space
            space = "nc"
        frames.space_of_series[vol.series_uid] = space
        frames.grid_space.append((vol.grid, space))
        if vol.frame_of_reference_uid:
            frames.space_of_frame.setdefault(vol.frame_of_reference_uid, space)
    if pet is not None:
        sp = frames.space_of_frame.get(pet.frame_of_reference_uid) if (
            pet.frame_of_reference_uid) else None
        if sp is None:
            sp = "nc"
            frames.notes.append(
                "the PET's frame of reference matches no CT phase: PET assumed aligned with "
                "the non-contrast CT" if pet.frame_of_reference_uid else
                "the PET has no FrameOfReferenceUID: assumed aligned with the non-contrast CT")
        frames.pet_space = sp
        if pet.series_uid:
            frames.space_of_series[pet.series_uid] = sp
    return frames


# --------------------------------------------------------------------------- registration
def _block_mean(vol: Volume, target_mm: float) -> tuple[np.ndarray, Grid]:
    """Downsample by integer block means to about ``target_mm`` voxels (anti-aliased)."""
    grid = vol.grid
    f = [max(1, int(round(target_mm / s))) for s in grid.spacing_xyz_mm[::-1]]  # z, y, x
    arr = np.clip(np.asarray(vol.array, dtype=np.float32), *CLAMP_HU)
    n = [a // b for a, b in zip(arr.shape, f)]
    arr = arr[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    if any(v > 1 for v in f):
        arr = arr.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5),
                                                                     dtype=np.float32)
    centre0 = grid.zyx_to_lps(np.array([[(f[0] - 1) / 2, (f[1] - 1) / 2, (f[2] - 1) / 2]]))[0]
    sx, sy, sz = grid.spacing_xyz_mm
    g = Grid(tuple(int(v) for v in arr.shape), (sx * f[2], sy * f[1], sz * f[0]),
             tuple(float(v) for v in centre0), grid.direction)
    return np.ascontiguousarray(arr), g


#: Public name of the block-mean downsampler (shared with :mod:`pipeline.followup.registration`).
block_mean = _block_mean


def body_mask_lowres(arr: np.ndarray, threshold_hu: float) -> np.ndarray:
    """Largest connected component above ``threshold_hu``, holes filled slice by slice."""
    m = arr > threshold_hu
    lab, n = ndimage.label(m)
    if n == 0:
        return m
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    m = lab == int(np.argmax(counts))
    for k in range(m.shape[0]):
        if m[k].any():
            m[k] = ndimage.binary_fill_holes(m[k])
    return m


def _fov_overlap_fraction(a: Grid, b: Grid) -> float:
    """Overlap of the two grids' LPS bounding boxes, as a fraction of the smaller box."""
    def box(g: Grid):
        n = np.array(g.shape_zyx) - 1
        c = np.array([[z, y, x] for z in (0, n[0]) for y in (0, n[1]) for x in (0, n[2])], float)
        p = g.zyx_to_lps(c)
        return p.min(0), p.max(0)
    (alo, ahi), (blo, bhi) = box(a), box(b)
    inter = np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0, None).prod()
    va, vb = np.prod(ahi - alo), np.prod(bhi - blo)
    small = min(va, vb)
    return float(inter / small) if small > 0 else 0.0


def align_phases(nc: Volume, ce: Volume, rcfg: dict) -> PhaseAlignment:
    """Decide how the contrast CT maps onto the non-contrast CT (see the module docstring)."""
    t0 = time.perf_counter()
    same_frame = bool(nc.frame_of_reference_uid) and (
        nc.frame_of_reference_uid == ce.frame_of_reference_uid)
    if same_frame:
        frac = _fov_overlap_fraction(nc.grid, ce.grid)
        if frac <= 0.0:
            return PhaseAlignment("registration_failed",
                                  "the two CT phases share a frame of reference but their fields "
                                  "of view do not overlap", wall_s=time.perf_counter() - t0)
        return PhaseAlignment("same_frame_resampled",
                              f"shared FrameOfReferenceUID; fields of view overlap "
                              f"({frac:.0%} of the smaller)", wall_s=time.perf_counter() - t0)
    why = ("different FrameOfReferenceUIDs" if nc.frame_of_reference_uid and
           ce.frame_of_reference_uid else "FrameOfReferenceUID missing on a CT phase")
    try:
        res = register_rigid(nc, ce, rcfg)
    except RuntimeError as exc:  # SimpleITK raises RuntimeError on optimiser/metric failure
        log.warning("phase registration raised: %s", exc)
        return PhaseAlignment("registration_failed", f"{why}; registration error: {exc}",
                              wall_s=time.perf_counter() - t0)
    res.reason = f"{why}; {res.reason}"
    res.wall_s = time.perf_counter() - t0
    log.info("phase registration: %s", res.as_dict())
    return res


def registration_method(rcfg: dict, fmask: sitk.Image) -> sitk.ImageRegistrationMethod:
    """The SimpleITK registration method both CT-to-CT registrations use (phases here,
    follow-up to baseline in :mod:`pipeline.followup.registration`): the configured metric
    (``metric``, ``histogram_bins``), random sampling of ``sampling_fraction`` of the voxels of
    ``fmask`` (fixed-image mask, uint8 on the fixed grid) with a fixed seed, linear
    interpolation, regular-step gradient descent (``max_iterations``) with physical-shift
    scaling, two levels (x2, x1)."""
    reg = sitk.ImageRegistrationMethod()
    if rcfg["metric"] == "mattes":
        reg.SetMetricAsMattesMutualInformation(int(rcfg["histogram_bins"]))
    else:
        reg.SetMetricAsMeanSquares()
    reg.SetMetricFixedMask(fmask)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(float(rcfg["sampling_fraction"]), SAMPLING_SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=int(rcfg["max_iterations"]),
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel(list(SMOOTHING_SIGMAS_VOX))
    return reg


def register_rigid(fixed: Volume, moving: Volume, rcfg: dict) -> PhaseAlignment:
    """Rigid registration of ``moving`` to ``fixed`` with the quality check.

    Parameters
    ----------
    fixed, moving : Volume
        CT images (HU) in their own frames.
    rcfg : ``features.registration`` settings (``resample_mm``, ``metric``,
        ``histogram_bins``, ``sampling_fraction``, ``max_iterations``, ``body_threshold_hu``,
        ``min_body_dice``, ``min_overlap_mm``, ``max_rotation_deg``).

    Returns
    -------
    PhaseAlignment
        ``registered_ok`` with the transform (``p_moving = T(p_fixed)``), or
        ``registration_failed`` with the failed checks in ``reason`` (transform not kept).
    """
    f_arr, f_grid = _block_mean(fixed, float(rcfg["resample_mm"]))
    m_arr, m_grid = _block_mean(moving, float(rcfg["resample_mm"]))
    for name, arr in (("non-contrast", f_arr), ("contrast", m_arr)):
        if min(arr.shape) < MIN_LOWRES_VOXELS:
            return PhaseAlignment(
                "registration_failed",
                f"the {name} CT is too small to register: {arr.shape} voxels of about "
                f"{float(rcfg['resample_mm']):g} mm (at least {MIN_LOWRES_VOXELS} per axis needed)")
    thr = float(rcfg["body_threshold_hu"])
    f_body = body_mask_lowres(f_arr, thr)
    m_body = body_mask_lowres(m_arr, thr)
    if not f_body.any() or not m_body.any():
        return PhaseAlignment("registration_failed", "no body found on one of the CT phases")
    f_img, m_img = f_grid.to_sitk(f_arr), m_grid.to_sitk(m_arr)

    # initial transform
    tx = sitk.Euler3DTransform()
    centre = f_grid.zyx_to_lps(np.array([[(n - 1) / 2 for n in f_grid.shape_zyx]]))[0]
    tx.SetCenter(tuple(float(v) for v in centre))
    init = "identity"
    if _fov_overlap_fraction(f_grid, m_grid) < 0.5:
        cf = f_grid.zyx_to_lps(np.argwhere(f_body).mean(0)[None])[0]
        cm = m_grid.zyx_to_lps(np.argwhere(m_body).mean(0)[None])[0]
        tx.SetTranslation(tuple(float(v) for v in cm - cf))
        init = "body centres of mass"

    reg = registration_method(
        rcfg, f_grid.to_sitk(ndimage.binary_dilation(f_body).astype(np.uint8)))
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(f_img, m_img)
    metric = float(reg.GetMetricValue())

    # quality check on the low-resolution grids
    fov = sitk.Resample(m_grid.to_sitk(np.ones(m_grid.shape_zyx, np.uint8)), f_img, tx,
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    mb = sitk.Resample(m_grid.to_sitk(m_body.astype(np.uint8)), f_img, tx,
                       sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    fov_a = sitk.GetArrayFromImage(fov) > 0
    mb_a = sitk.GetArrayFromImage(mb) > 0
    fb_in = f_body & fov_a
    denom = int(fb_in.sum()) + int(mb_a.sum())
    dice = 2.0 * float(np.count_nonzero(fb_in & mb_a)) / denom if denom else 0.0
    common = fb_in & mb_a
    ks = np.flatnonzero(common.any(axis=(1, 2)))
    overlap = float((ks[-1] - ks[0] + 1) * f_grid.spacing_xyz_mm[2]) if len(ks) else 0.0
    rot = rotation_angle_deg(tx)
    trans = np.asarray(tx.TransformPoint(tuple(float(v) for v in centre))) - centre
    checks = []
    if not np.isfinite(metric):
        checks.append("the metric is not finite")
    if dice < float(rcfg["min_body_dice"]):
        checks.append(f"body masks agree poorly after registration (Dice {dice:.2f} < "
                      f"{float(rcfg['min_body_dice']):.2f})")
    if overlap < float(rcfg["min_overlap_mm"]):
        checks.append(f"the phases share only {overlap:.0f} mm of body along the slice axis "
                      f"(< {float(rcfg['min_overlap_mm']):.0f} mm)")
    if rot > float(rcfg["max_rotation_deg"]):
        checks.append(f"rotation {rot:.1f} deg > {float(rcfg['max_rotation_deg']):.1f} deg")
    common_kw = dict(metric=metric, body_dice=dice, overlap_mm=overlap,
                     translation_mm=tuple(float(v) for v in trans), rotation_deg=rot)
    summary = (f"rigid {rcfg['metric']} registration (init: {init}; {reg.GetOptimizerIteration()} "
               f"iterations at the last level): translation ({trans[0]:.2f}, {trans[1]:.2f}, "
               f"{trans[2]:.2f}) mm, rotation {rot:.2f} deg, body Dice {dice:.3f}, overlap "
               f"{overlap:.0f} mm, metric {metric:.4f}")
    if checks:
        return PhaseAlignment("registration_failed", "quality check failed: " + "; ".join(checks)
                              + f" [{summary}]", **common_kw)
    return PhaseAlignment("registered_ok", summary, transform=tx, **common_kw)
