"""Follow-up CT registered to the baseline CT, on small low-resolution references.

Why references
--------------
The follow-up step runs in the rank job of a later study, long after the baseline study's job
has released its images. Each study job therefore writes ``registration_ref.npz`` into its study
folder (:func:`write_study_reference`): its non-contrast CT (else its first CT phase)
block-averaged to about ``resample_mm`` voxels, stored as int16 HU with the grid and the
FrameOfReferenceUID (a few hundred kB). A follow-up registers its reference to the baseline's.

Registration (settings ``followup.registration`` of ``configs/config.yaml``)
-----------------------------------------------------------------------------
The baseline is the FIXED image, the follow-up the MOVING one. SimpleITK's resampling convention
gives a transform ``T`` that maps fixed points to moving points (``p_followup = T(p_baseline)``);
the map a caller needs, follow-up -> baseline, is its inverse and is what
:class:`FollowupRegistration` stores (``followup_to_baseline``, a 4x4 LPS mm matrix).

1. Body masks (HU > ``body_threshold_hu``, largest component, holes filled slice by slice; the
   helpers of :mod:`pipeline.features.registration`).
2. Initialisation: the follow-up body's centre of mass is put on the baseline body's (different
   FrameOfReferenceUIDs are the normal case, so scanner coordinates are not trusted). Along the
   body axis a body is a cylinder cut by the field of view, so its centre of mass says little in
   z; and a patient lying rotated on the table turns about that axis. A coarse search evaluates
   the metric (on the x2 level, over the whole baseline body, follow-up values outside its field
   of view counted as air so that sliding a short scan out of view is no gain) over rotations
   about the body axis (:data:`SEARCH_ANGLES_DEG`) and shifts along it
   (:data:`SEARCH_SHIFTS_MM`), refines around the best by half a step, and starts from there: a
   30 mm shift with a 10 degree turn then converges.
3. Rigid (Euler3D, 6 parameters), metric ``mattes`` (Mattes mutual information) or
   ``mean_squares``; random sampling of ``sampling_fraction`` of the baseline body voxels where
   the initially placed follow-up has data (a fixed sample set: SimpleITK drops samples that
   leave the moving image, which biases mutual information towards less overlap), fixed seed
   (repeatable); regular-step gradient descent, two levels (x2, x1).
4. When ``affine`` is true an affine stage (12 parameters) starts from the rigid result (breathing
   and posture change the body's shape a little). If it lowers the quality (body Dice) the
   rigid result is kept, with a note.
5. Quality (on the baseline reference grid, where the follow-up has data):
   * ``body_dice``: Dice of the baseline body mask and the registered follow-up body mask,
     must be >= ``min_body_dice``;
   * ``lung_msd_mm``: symmetric mean surface distance of the lung masks (air, HU < -400, inside
     the body: the largest two components of at least :data:`LUNG_MIN_ML` mL), must be <=
     ``max_lung_msd_mm``; skipped with a note when either CT shows no lungs.
   Failing either gives status ``"failed"`` with the figure and the threshold in ``reason``; the
   transform is still recorded but callers must not match lesions through it.
   Known limit: neither figure sees a slide along a body of constant cross-section; on a short
   lung-free slab of the smooth phantom abdomen that slide is determined to about 3 mm only
   (with the chest in view: below 0.5 mm).
6. Both references in the same frame (same, non-empty FrameOfReferenceUID) are still registered
   (the patient may have moved between the scans); when no motion is found (translation below
   :data:`IDENTITY_MAX_TRANSLATION_MM` and rotation below :data:`IDENTITY_MAX_ROTATION_DEG`) the
   status is ``"identity"`` and the exact identity is stored.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipeline.errors import FollowupError
from pipeline.features.registration import (
    CLAMP_HU,
    MIN_LOWRES_VOXELS,
    SMOOTHING_SIGMAS_VOX,
    block_mean,
    body_mask_lowres,
    registration_method,
)
from pipeline.geometry import Grid
from pipeline.records import Volume

log = logging.getLogger(__name__)

#: File name of a study's registration reference, in its study folder.
REFERENCE_FILE = "registration_ref.npz"
#: Version of the ``.npz`` layout (checked on read).
REFERENCE_FORMAT = 1
#: Registration statuses.
STATUSES = ("ok", "failed", "identity")
#: Rotations about the body axis tried by the coarse initial search, degrees (then refined by
#: half a step on either side of the best).
SEARCH_ANGLES_DEG = (-20.0, -10.0, 0.0, 10.0, 20.0)
#: Shifts along the body axis tried by the coarse initial search, mm (refined likewise); the
#: range grows by half the difference of the two bodies' lengths along the axis.
SEARCH_SHIFTS_MM = tuple(float(v) for v in range(-60, 61, 10))
#: Air inside the body below this HU is lung (or bowel gas).
LUNG_THRESHOLD_HU = -400.0
#: An air component counts as a lung from this volume (mL): bowel gas stays below it.
LUNG_MIN_ML = 150.0
#: Same-frame registrations whose motion stays below both limits are reported as ``"identity"``.
IDENTITY_MAX_TRANSLATION_MM = 1.0
IDENTITY_MAX_ROTATION_DEG = 0.5


# --------------------------------------------------------------------------- reference volume
@dataclass(frozen=True)
class ReferenceVolume:
    """Low-resolution CT that a study job writes for later registration.

    Attributes
    ----------
    hu : np.ndarray
        int16 HU, (z, y, x), block means of the CT (clamped to [-1000, 1500]) to about
        ``resample_mm`` voxels.
    origin_lps_mm : (x, y, z) mm
        LPS centre of voxel (0, 0, 0).
    spacing_xyz_mm : (x, y, z) mm
    direction : 9 floats, row-major, columns = i, j, k axes in LPS (as :class:`Grid`).
    frame_of_reference_uid, series_uid : str
        Of the CT it was built from.
    """

    hu: np.ndarray
    origin_lps_mm: tuple[float, float, float]
    spacing_xyz_mm: tuple[float, float, float]
    direction: tuple[float, ...]
    frame_of_reference_uid: str
    series_uid: str

    @property
    def grid(self) -> Grid:
        """The reference's grid (LPS mm)."""
        return Grid(tuple(int(v) for v in self.hu.shape), self.spacing_xyz_mm,
                    self.origin_lps_mm, self.direction)


def reference_volume(ct_hu: np.ndarray, grid: Grid, *, resample_mm: float,
                     frame_of_reference_uid: str, series_uid: str) -> ReferenceVolume:
    """Block-average a CT to about ``resample_mm`` voxels (integer factors per axis).

    Parameters
    ----------
    ct_hu : np.ndarray
        CT in HU, (z, y, x), on ``grid``.
    grid : Grid
        The CT's grid (LPS mm).
    resample_mm : float
        Target voxel size, mm.

    Returns
    -------
    ReferenceVolume
    """
    arr, g = block_mean(Volume(np.asarray(ct_hu), grid, "HU", series_uid), float(resample_mm))
    return ReferenceVolume(np.rint(arr).astype(np.int16), g.origin_lps_mm, g.spacing_xyz_mm,
                           tuple(float(v) for v in g.direction), str(frame_of_reference_uid or ""),
                           str(series_uid or ""))


def write_reference(path: str | Path, ref: ReferenceVolume) -> None:
    """Write ``ref`` as a compressed ``.npz``, atomically (temp file in the folder + replace)."""
    _write_npz(Path(path), {
        "format": np.array(REFERENCE_FORMAT), "hu": np.asarray(ref.hu, dtype=np.int16),
        "origin_lps_mm": np.asarray(ref.origin_lps_mm, float),
        "spacing_xyz_mm": np.asarray(ref.spacing_xyz_mm, float),
        "direction": np.asarray(ref.direction, float),
        "frame_of_reference_uid": np.array(ref.frame_of_reference_uid),
        "series_uid": np.array(ref.series_uid), "unavailable_reason": np.array(""),
    })


def write_reference_unavailable(path: str | Path, reason: str) -> None:
    """Write a reference file that says why the study has no reference (the study job's output
    exists either way); :func:`read_reference` raises with ``reason``."""
    _write_npz(Path(path), {"format": np.array(REFERENCE_FORMAT),
                            "unavailable_reason": np.array(str(reason) or "unknown reason")})


def _write_npz(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_reference(path: str | Path) -> ReferenceVolume:
    """Read a reference written by :func:`write_reference`.

    Raises
    ------
    FollowupError
        Naming the file, when it is missing, unreadable, of another format, or says that the
        study had no reference.
    """
    path = Path(path)
    hint = "rerun the study job of this study (it writes the reference)"
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise FollowupError("registration reference not found", file=path, hint=hint) from None
    except Exception as exc:  # noqa: BLE001 - zip/npy errors of a corrupt file take many forms
        raise FollowupError(f"registration reference unreadable ({type(exc).__name__}: {exc}); "
                            f"expected a .npz written by the study job", file=path,
                            hint=hint) from None
    fmt = int(data["format"]) if "format" in data else None
    if fmt != REFERENCE_FORMAT:
        raise FollowupError(f"registration reference of format {fmt}, expected "
                            f"{REFERENCE_FORMAT}", file=path, hint=hint)
    why = str(data.get("unavailable_reason", ""))
    if why:
        raise FollowupError(f"the study has no registration reference: {why}", file=path,
                            hint="fix the study's CT so that its study job succeeds")
    try:
        hu = np.asarray(data["hu"])
        ref = ReferenceVolume(
            hu.astype(np.int16, copy=False),
            tuple(float(v) for v in data["origin_lps_mm"]),
            tuple(float(v) for v in data["spacing_xyz_mm"]),
            tuple(float(v) for v in data["direction"]),
            str(data["frame_of_reference_uid"]), str(data["series_uid"]))
    except KeyError as exc:
        raise FollowupError(f"registration reference lacks the array {exc}", file=path,
                            hint=hint) from None
    if hu.ndim != 3 or len(ref.origin_lps_mm) != 3 or len(ref.spacing_xyz_mm) != 3 or len(
            ref.direction) != 9 or min(ref.spacing_xyz_mm) <= 0:
        raise FollowupError(f"registration reference has an invalid grid (array {hu.shape}, "
                            f"spacing {ref.spacing_xyz_mm})", file=path, hint=hint)
    return ref


def write_study_reference(out_dir: str | Path, ct_by_role: dict, cfg: dict) -> str | None:
    """Study job: write ``REFERENCE_FILE`` of the non-contrast CT (else the first CT phase).

    Never fails the study: an error is written into the file (see
    :func:`write_reference_unavailable`) and returned as a warning string (None when written).
    """
    path = Path(out_dir) / REFERENCE_FILE
    vol = ct_by_role.get("noncontrast") or next(iter(ct_by_role.values()), None)
    try:
        if vol is None:
            raise FollowupError("the study has no CT")
        ref = reference_volume(vol.array, vol.grid,
                               resample_mm=float(cfg["followup"]["registration"]["resample_mm"]),
                               frame_of_reference_uid=vol.frame_of_reference_uid,
                               series_uid=vol.series_uid)
        write_reference(path, ref)
        return None
    except Exception as exc:  # noqa: BLE001 - the reference is optional for this study's job
        log.warning("registration reference not written: %s", exc)
        write_reference_unavailable(path, str(exc))
        return f"registration reference not written: {exc}"


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class FollowupRegistration:
    """Result of :func:`register_followup`.

    Attributes
    ----------
    status : str
        ``"ok"``, ``"failed"`` (quality check failed: do not match through the transform) or
        ``"identity"`` (same frame of reference, no motion found; the identity is stored).
    followup_to_baseline : 16 floats
        Row-major 4x4 affine, LPS mm, mapping follow-up points to baseline points.
    body_dice : float or None
        Body-mask Dice after registration (on the baseline reference grid).
    lung_msd_mm : float or None
        Symmetric mean surface distance of the lung masks after registration, mm (None when
        skipped).
    rotation_deg : float or None
        Rotation angle of the follow-up -> baseline map (rotation part of its polar
        decomposition), degrees.
    translation_mm : float or None
        Distance by which the map moves the follow-up body's centre of mass, mm.
    reason : str
        Why the status "failed" (quality figure and threshold); "" otherwise.
    notes : str
        What was done (initialisation, stages, skipped checks).
    wall_s : float
    """

    status: str
    followup_to_baseline: tuple[float, ...]
    body_dice: float | None
    lung_msd_mm: float | None
    rotation_deg: float | None
    translation_mm: float | None
    reason: str
    wall_s: float
    notes: str = ""

    @property
    def matrix(self) -> np.ndarray:
        """The 4x4 follow-up -> baseline matrix."""
        return np.asarray(self.followup_to_baseline, dtype=float).reshape(4, 4)

    def to_baseline(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Map (n, 3) follow-up LPS points (mm) to (n, 3) baseline LPS points (mm); NaN rows stay
        NaN."""
        p = np.asarray(points_lps_mm, dtype=float).reshape(-1, 3)
        m = self.matrix
        return p @ m[:3, :3].T + m[:3, 3]

    def as_dict(self) -> dict:
        """JSON-friendly summary (for ``followup.json``)."""
        def r(v, n=3):
            return None if v is None else round(float(v), n)
        return {"status": self.status, "reason": self.reason, "notes": self.notes,
                "followup_to_baseline": [float(v) for v in self.followup_to_baseline],
                "body_dice": r(self.body_dice, 4), "lung_msd_mm": r(self.lung_msd_mm),
                "rotation_deg": r(self.rotation_deg), "translation_mm": r(self.translation_mm),
                "wall_s": r(self.wall_s)}


def _failed(reason: str, t0: float, notes: str = "") -> FollowupRegistration:
    return FollowupRegistration("failed", tuple(float(v) for v in np.eye(4).ravel()), None, None,
                                None, None, reason, time.perf_counter() - t0, notes)


# --------------------------------------------------------------------------- registration
def register_followup(baseline: ReferenceVolume, followup: ReferenceVolume,
                      cfg_registration: dict) -> FollowupRegistration:
    """Register the follow-up reference (moving) to the baseline reference (fixed).

    Parameters
    ----------
    baseline, followup : ReferenceVolume
    cfg_registration : dict
        ``followup.registration`` settings (see the module docstring).

    Returns
    -------
    FollowupRegistration
        Never raises for bad images: a registration that cannot run or fails its quality check
        is returned with status ``"failed"`` and the reason.
    """
    t0 = time.perf_counter()
    c = cfg_registration
    f_grid, m_grid = baseline.grid, followup.grid
    f_arr = np.asarray(baseline.hu, dtype=np.float32)
    m_arr = np.asarray(followup.hu, dtype=np.float32)
    for name, arr in (("baseline", f_arr), ("follow-up", m_arr)):
        if min(arr.shape) < MIN_LOWRES_VOXELS:
            return _failed(f"the {name} reference is too small to register: {arr.shape} voxels "
                           f"(at least {MIN_LOWRES_VOXELS} per axis needed)", t0)
    thr = float(c["body_threshold_hu"])
    f_body, m_body = body_mask_lowres(f_arr, thr), body_mask_lowres(m_arr, thr)
    if not f_body.any() or not m_body.any():
        return _failed(f"no body (HU > {thr:g}) found on the "
                       f"{'baseline' if not f_body.any() else 'follow-up'} reference", t0)
    f_img, m_img = f_grid.to_sitk(f_arr), m_grid.to_sitk(m_arr)
    fmask = f_grid.to_sitk(ndimage.binary_dilation(f_body).astype(np.uint8))
    cf = f_grid.zyx_to_lps(np.argwhere(f_body).mean(0)[None])[0]
    cm = m_grid.zyx_to_lps(np.argwhere(m_body).mean(0)[None])[0]
    notes = []

    # ---- initialisation: body centres of mass, then a coarse search about / along the body axis
    axis = f_grid.slice_normal / np.linalg.norm(f_grid.slice_normal)
    # The metric of the search is computed here on the x2 level, over the WHOLE baseline body:
    # follow-up values outside its field of view count as air (-1000 HU). SimpleITK's metrics
    # skip such samples instead, and mutual information then improves just by sliding most of
    # the samples out of a short scan's field of view.
    f_small, m_small = _coarse(f_img), _coarse(m_img)
    f_sel = sitk.GetArrayViewFromImage(_coarse(fmask, mask=True)) > 0
    f_val = sitk.GetArrayFromImage(f_small)[f_sel]

    def metric(ang: float, dz: float) -> float:
        moved = sitk.Resample(m_small, f_small, _euler(cf, cm - cf + dz * axis, ang),
                              sitk.sitkLinear, CLAMP_HU[0], sitk.sitkFloat32)
        return _search_metric(f_val, sitk.GetArrayViewFromImage(moved)[f_sel], c)

    # scans of different length (chest vs chest-abdomen-pelvis): the centres of mass differ by
    # up to half the difference of the body lengths, so the shift range grows with it
    half = abs(_body_length_mm(f_body, f_grid, axis) - _body_length_mm(m_body, m_grid, axis)) / 2
    step = SEARCH_SHIFTS_MM[1] - SEARCH_SHIFTS_MM[0]
    reach = max(SEARCH_SHIFTS_MM[-1], step * np.ceil((half + SEARCH_SHIFTS_MM[-1] / 2) / step))
    shifts = np.arange(-reach, reach + step / 2, step)
    best = min((metric(a, z), a, z) for a in SEARCH_ANGLES_DEG for z in shifts)
    da = (SEARCH_ANGLES_DEG[1] - SEARCH_ANGLES_DEG[0]) / 2
    dd = (SEARCH_SHIFTS_MM[1] - SEARCH_SHIFTS_MM[0]) / 2
    best = min([best] + [(metric(best[1] + i * da, best[2] + j * dd), best[1] + i * da,
                          best[2] + j * dd) for i in (-1, 0, 1) for j in (-1, 0, 1) if i or j])
    notes.append(f"init: body centres of mass, then rotation {best[1]:+.0f} deg about and shift "
                 f"{best[2]:+.0f} mm along the body axis (coarse metric search)")
    rigid = _euler(cf, cm - cf + best[2] * axis, best[1])

    # ---- rigid, then affine
    # the optimisation samples only baseline body where the initially placed follow-up has data
    # (a margin inside its field of view), so the sample set does not change as it moves
    fov0 = _moved(m_grid, np.ones(m_grid.shape_zyx, bool), f_grid, rigid)
    rmask = ndimage.binary_dilation(f_body) & ndimage.binary_erosion(fov0, iterations=2)
    if not rmask.any():
        rmask = ndimage.binary_dilation(f_body)
    try:
        reg = registration_method(c, f_grid.to_sitk(rmask.astype(np.uint8)))
        reg.SetInitialTransform(rigid, inPlace=True)
        reg.Execute(f_img, m_img)
    except RuntimeError as exc:
        return _failed(f"rigid registration error: {exc}", t0, "; ".join(notes))
    final: sitk.Transform = rigid
    q_rigid = _quality(f_grid, f_arr, f_body, m_grid, m_arr, m_body, rigid, thr)
    q = q_rigid
    if bool(c.get("affine", True)):
        aff = sitk.AffineTransform(3)
        aff.SetCenter(rigid.GetCenter())
        aff.SetMatrix(rigid.GetMatrix())
        aff.SetTranslation(rigid.GetTranslation())
        # the affine stage samples only where the rigidly placed follow-up has data (a margin
        # inside its field of view): with samples dropping out at the edge of the field of
        # view, mutual information would favour a scale along the body axis
        fov = _moved(m_grid, np.ones(m_grid.shape_zyx, bool), f_grid, rigid)
        amask = ndimage.binary_dilation(f_body) & ndimage.binary_erosion(fov, iterations=2)
        try:
            reg = registration_method(c, f_grid.to_sitk(amask.astype(np.uint8)))
            reg.SetInitialTransform(aff, inPlace=True)
            reg.Execute(f_img, m_img)
            q_aff = _quality(f_grid, f_arr, f_body, m_grid, m_arr, m_body, aff, thr)
            if q_aff[0] + 1e-3 >= q_rigid[0]:
                final, q = aff, q_aff
                notes.append("rigid then affine")
            else:
                notes.append(f"affine stage lowered the body Dice ({q_aff[0]:.3f} < "
                             f"{q_rigid[0]:.3f}): rigid result kept")
        except RuntimeError as exc:
            notes.append(f"affine stage error ({exc}): rigid result kept")
    else:
        notes.append("rigid only")

    # ---- follow-up -> baseline matrix (inverse of SimpleITK's fixed -> moving transform)
    m_bf = _matrix_of(final)
    m_fb = np.linalg.inv(m_bf)
    rot = _rotation_deg(m_fb[:3, :3])
    trans = float(np.linalg.norm(m_fb[:3, :3] @ cm + m_fb[:3, 3] - cm))
    dice, msd, lung_note = q
    if lung_note:
        notes.append(lung_note)
    checks = []
    if dice < float(c["min_body_dice"]):
        checks.append(f"body Dice {dice:.3f} < min_body_dice {float(c['min_body_dice']):.3f}")
    if msd is not None and msd > float(c["max_lung_msd_mm"]):
        checks.append(f"lung mean surface distance {msd:.2f} mm > max_lung_msd_mm "
                      f"{float(c['max_lung_msd_mm']):.2f} mm")
    status = "failed" if checks else "ok"
    same = bool(baseline.frame_of_reference_uid) and (
        baseline.frame_of_reference_uid == followup.frame_of_reference_uid)
    if (status == "ok" and same and trans < IDENTITY_MAX_TRANSLATION_MM
            and rot < IDENTITY_MAX_ROTATION_DEG):
        status, m_fb = "identity", np.eye(4)
        notes.append(f"same frame of reference and no motion found (translation {trans:.2f} mm, "
                     f"rotation {rot:.2f} deg): identity kept")
    res = FollowupRegistration(
        status, tuple(float(v) for v in m_fb.ravel()), float(dice), msd, rot, trans,
        "quality check failed: " + "; ".join(checks) if checks else "",
        time.perf_counter() - t0, "; ".join(notes))
    log.info("follow-up registration: %s", res.as_dict())
    return res


def _euler(centre: np.ndarray, translation: np.ndarray, angle_z_deg: float) -> sitk.Euler3DTransform:
    tx = sitk.Euler3DTransform()
    tx.SetCenter(tuple(float(v) for v in centre))
    tx.SetTranslation(tuple(float(v) for v in translation))
    tx.SetRotation(0.0, 0.0, float(np.radians(angle_z_deg)))
    return tx


def _body_length_mm(body: np.ndarray, grid: Grid, axis: np.ndarray) -> float:
    """Extent of the body mask along ``axis`` (LPS unit vector), mm."""
    ks = np.flatnonzero(body.any(axis=(1, 2)))
    ends = grid.zyx_to_lps(np.array([[ks[0], 0, 0], [ks[-1], 0, 0]], float))
    return float(abs((ends[1] - ends[0]) @ axis)) + float(abs(grid.slice_normal @ axis)) * float(
        grid.spacing_xyz_mm[2])


def _search_metric(a: np.ndarray, b: np.ndarray, c: dict) -> float:
    """Metric of the coarse search on paired samples (lower is better): minus the mutual
    information (``mattes``; joint histogram of ``histogram_bins`` bins over the HU clamp) or
    the mean squared difference (``mean_squares``)."""
    if c["metric"] != "mattes":
        return float(np.mean((a - b) ** 2))
    n = int(c["histogram_bins"])
    h, _, _ = np.histogram2d(a, b, bins=n, range=[CLAMP_HU, CLAMP_HU])
    p = h / max(h.sum(), 1.0)
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    return -float(np.sum(p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])))


def _coarse(img: sitk.Image, mask: bool = False) -> sitk.Image:
    """The x2 level of the pyramid, computed once for the coarse search (Gaussian smoothing of
    the first level's sigma, then every second voxel; a mask is shrunk by nearest neighbour)."""
    if mask:
        return sitk.Shrink(img, [2, 2, 2])
    sig = [SMOOTHING_SIGMAS_VOX[0] * s for s in img.GetSpacing()]
    return sitk.Shrink(sitk.SmoothingRecursiveGaussian(img, sig), [2, 2, 2])


def _matrix_of(tx: sitk.Transform) -> np.ndarray:
    """4x4 homogeneous matrix of an affine-like transform (point map, LPS mm)."""
    p0 = np.asarray(tx.TransformPoint((0.0, 0.0, 0.0)))
    a = np.column_stack([np.asarray(tx.TransformPoint(tuple(float(v) for v in e))) - p0
                         for e in np.eye(3)])
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = a, p0
    return m


def _rotation_deg(a: np.ndarray) -> float:
    """Angle of the rotation part (polar decomposition) of a 3x3 linear map, degrees."""
    u, _, vt = np.linalg.svd(a)
    r = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def lung_mask(hu: np.ndarray, body: np.ndarray, voxel_ml: float) -> np.ndarray:
    """Air (HU < :data:`LUNG_THRESHOLD_HU`) inside ``body``: the largest two components of at
    least :data:`LUNG_MIN_ML` mL (empty when none)."""
    lab, n = ndimage.label(body & (hu < LUNG_THRESHOLD_HU))
    if n == 0:
        return np.zeros(hu.shape, bool)
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    keep = [k for k in np.argsort(counts)[::-1][:2] if counts[k] * voxel_ml >= LUNG_MIN_ML]
    return np.isin(lab, keep) if keep else np.zeros(hu.shape, bool)


def _moved(m_grid: Grid, mask: np.ndarray, f_grid: Grid, tx: sitk.Transform) -> np.ndarray:
    """A follow-up mask on the baseline grid through ``tx`` (nearest neighbour; 0 outside)."""
    img = sitk.Resample(m_grid.to_sitk(mask.astype(np.uint8)),
                        f_grid.to_sitk(np.zeros(f_grid.shape_zyx, np.uint8)), tx,
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(img) > 0


def _quality(f_grid: Grid, f_arr, f_body, m_grid: Grid, m_arr, m_body, tx: sitk.Transform,
             thr: float) -> tuple[float, float | None, str]:
    """(body Dice, lung mean surface distance mm or None, note) on the baseline grid, counted
    where the follow-up has data."""
    def moved(a: np.ndarray) -> np.ndarray:
        return _moved(m_grid, a, f_grid, tx)

    fov = moved(np.ones(m_grid.shape_zyx, bool))
    mb = moved(m_body)
    fb = f_body & fov
    denom = int(fb.sum()) + int(mb.sum())
    dice = 2.0 * float(np.count_nonzero(fb & mb)) / denom if denom else 0.0
    f_lung = lung_mask(f_arr, f_body, f_grid.voxel_volume_mm3 / 1000.0)
    m_lung = lung_mask(m_arr, m_body, m_grid.voxel_volume_mm3 / 1000.0)
    if not f_lung.any() or not m_lung.any():
        which = "baseline" if not f_lung.any() else "follow-up"
        return dice, None, f"lung check skipped: no lungs on the {which} reference"
    ml = moved(m_lung)
    fl = f_lung & fov
    if not fl.any() or not ml.any():
        return dice, None, "lung check skipped: the lungs lie outside the common field of view"
    return dice, _mean_surface_distance(fl, ml, f_grid.spacing_xyz_mm[::-1]), ""


def _mean_surface_distance(a: np.ndarray, b: np.ndarray, spacing_zyx) -> float:
    """Symmetric mean distance (mm) between the boundary voxels of two masks on one grid."""
    def surface(m):
        return m & ~ndimage.binary_erosion(m)

    sa, sb = surface(a), surface(b)
    da = ndimage.distance_transform_edt(~sa, sampling=spacing_zyx)
    db = ndimage.distance_transform_edt(~sb, sampling=spacing_zyx)
    return float((db[sa].sum() + da[sb].sum()) / (sa.sum() + sb.sum()))
