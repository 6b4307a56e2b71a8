"""Phantom patients with several timepoints (follow-up studies) and their designed itRECIST truth.

Each patient gets T studies (same PatientID, new StudyInstanceUID, StudyDate = baseline + 8 weeks
x t). The baseline (t = 0) is exactly what :func:`.dicom.generate_patient` writes for the same
(index, size, seed). A follow-up study t > 0:

* has its own FrameOfReferenceUID, shared by its two CT phases, its PET and its SEGs;
* shows the whole scene (anatomy, lesions *and table*: the table moves with the patient, i.e.
  the scanner frame moved) repositioned by a known rigid transform ``patient_to_scanner``
  (canonical patient LPS mm -> this study's scanner LPS mm): >= 10 mm translation and >= 3 degree
  rotation. Voxel centre ``p`` shows the analytic design at ``inverse(patient_to_scanner) p``;
* holds the lesions of its scenario (:data:`SCENARIOS`, patient index mod 3) with their designed
  sizes (:func:`timepoint_lesions`); a lesion that disappeared is a SEG segment with zero voxels
  (a SegmentSequence item referenced by no frame);
* labels its segments ``Lesion N`` (odd t) or ``target X`` (even t) in a shuffled order, so labels
  never identify a lesion. Patient 1 keeps each lesion's baseline TrackingUID (longitudinal
  UIDs); other patients get fresh TrackingUIDs per study, except a disappeared lesion's empty
  segment, which keeps the baseline TrackingUID (the reader marked that lesion as gone).

Written per follow-up study: ``CT_noncontrast/``, ``CT_contrast/``, ``PET/``,
``SEG_lesions.dcm`` (on the contrast CT) and ``SEG_organs.dcm`` (on the non-contrast CT). No
RTSTRUCT or label map of the lesions at follow-up.

Folder layout for T > 1: ``OUT/PHANTOM001/<YYYYMMDD>_t<k>/`` per study (names sort in date
order) and ``OUT/PHANTOM001/truth.json``: the baseline study's truth (as for T = 1) plus the key
``"followup"`` (see :func:`followup_truth`).

Everything is in LPS mm; arrays are indexed (z, y, x).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.geometry import Grid
from pipeline.testing.phantom.design import (
    CT_NOISE_SIGMA_HU,
    LIVER,
    LesionDesign,
    PatientDesign,
    Tissue,
    check_size,
    check_variant,
    classify_tissue,
    ct_grid,
    grid_axes,
    label_lesions,
    patient_design,
    pet_grid,
)
from pipeline.testing.phantom.render import PhantomArrays, _check_hosts, _render, quantize_pet_slices

log = logging.getLogger(__name__)

#: Designed scenario of patient i: ``SCENARIOS[(i - 1) % 3]``.
SCENARIOS = ("confirmed_progression", "reset", "nodal_complete_response")
#: Days between consecutive studies.
DAYS_BETWEEN_STUDIES = 56
#: Baseline itRECIST category of each standard lesion (the tool's proposal on the standard design).
BASELINE_CATEGORY = {
    "soft_tissue_flank": "T-I",
    "node_axillary_R": "T-I",
    "liver_deep": "T-NI",
    "lung_subpleural": "T-NI",
    "node_paraaortic": "T-NI",
    "necrotic_mass": "T-NI",
    "liver_subcapsular": "T-NI",
    "lung_nodule_tiny": "NT-NI",
}
#: Nominal repositioning of follow-up t (1-based; t > 2 reuses t = 1, 2 alternately):
#: (translation x, y, z mm, rotation about z deg, rotation about x deg). z translations stay
#: small and positive so that the lowest lesion (necrotic_mass, bottom at z = -80) and the
#: highest (node_axillary_R, top at z = 65) stay inside the CT field of view (z +-84 mm).
NOMINAL_MOTION = (
    ((12.0, -8.0, 4.0), 4.0, 0.0),
    ((-10.0, 8.0, 6.0), 3.0, 2.0),
)
#: Smallest designed translation (mm) and rotation (deg) of a follow-up.
MIN_TRANSLATION_MM = 10.0
MIN_ROTATION_DEG = 3.0
#: Smallest gap (mm) between a new lesion's surface and any other lesion or its organ's surface.
NEW_LESION_MARGIN_MM = 5.0

# Designed changes: scenario -> follow-up t -> lesion name -> (semi-axes mm, core radius mm),
# or None when the lesion has disappeared. Lesions not listed keep their baseline shape. t > 2
# repeats t = 2. Necrotic_mass grows in-plane only (z semi-axis 30): growing it in z too would push
# its lower pole (z = -80) out of the CT field of view; its axial longest diameter is 2 x the
# in-plane semi-axis either way. Its core keeps the rim / core proportion (20/30 of the radius).
_CHANGES: dict[str, dict[int, dict[str, tuple[tuple[float, float, float], float] | None]]] = {
    "confirmed_progression": {
        1: {
            "soft_tissue_flank": ((7.0, 7.0, 7.0), 0.0),        # LD 24 -> 14
            "node_axillary_R": ((8.0, 6.0, 8.0), 0.0),          # short axis 16 -> 12
            "liver_deep": ((19.0, 19.0, 19.0), 0.0),            # LD 30 -> 38
            "necrotic_mass": ((33.0, 33.0, 30.0), 22.0),        # LD 60 -> 66
        },
        2: {
            "soft_tissue_flank": ((6.0, 6.0, 6.0), 0.0),        # LD 12
            "node_axillary_R": ((7.5, 5.5, 7.5), 0.0),          # short axis 11
            "liver_deep": ((19.0, 19.0, 19.0), 0.0),
            "necrotic_mass": ((33.0, 33.0, 30.0), 22.0),
        },
    },
    "reset": {
        1: {
            "liver_deep": ((24.0, 24.0, 24.0), 0.0),            # LD 30 -> 48
            "necrotic_mass": ((36.0, 36.0, 30.0), 24.0),        # LD 60 -> 72
            "lung_subpleural": ((10.0, 10.0, 10.0), 0.0),       # LD 16 -> 20
        },
        2: {},                                                  # back to the baseline sizes
    },
    "nodal_complete_response": {
        1: {
            "soft_tissue_flank": ((5.5, 5.5, 5.5), 0.0),        # LD 24 -> 11
            "node_axillary_R": ((7.5, 6.0, 7.5), 0.0),          # short axis 16 -> 12
        },
        2: {
            "soft_tissue_flank": None,                          # disappeared: 0 mm
            "node_axillary_R": ((5.625, 4.5, 5.625), 0.0),      # short axis 9 (< 10: gone)
        },
    },
}

#: The new lesion of ``confirmed_progression``: in the liver, 50 mm from liver_deep, > 5 mm from
#: every other lesion and from the capsule. Radius per follow-up t (t > 2 repeats t = 2).
_NEW_LESION = LesionDesign(
    "liver_new", (-40.0, 35.0, -10.0), (5.0, 5.0, 5.0), 6.0, 45.0, 140.0,
    organ="liver", site="liver", host_tissues=("LIVER",),
    purpose="new lesion at follow-up (iUPD, then iCPD when it grows)",
)
_NEW_RADIUS = {"confirmed_progression": {1: 5.0, 2: 8.0}}

# Designed responses (itRECIST; overall = all targets + non-targets + new lesions, injected =
# T-I + NT-I, noninjected = T-NI + NT-NI + new lesions; iPR <= -30 % from baseline; iUPD >= +20 %
# and >= +5 mm from the nadir, or a new lesion; iCPD at the next assessment after iUPD with a
# further SOD increase >= 5 mm, new lesions' sum +5 mm or a further new lesion; nodes < 10 mm count
# as gone). Baseline SODs of every scenario: T-I 24 + 16 = 40, T-NI 30 + 16 + 24 + 60 + 20 = 150,
# targets 190. Per scenario and t: (overall, injected, noninjected) with the arithmetic.
_RESPONSES: dict[str, dict[int, dict[str, tuple[str, str]]]] = {
    "confirmed_progression": {
        1: {
            "overall": ("iUPD", "new lesion liver_new (10 mm); targets 14 + 12 + 38 + 16 + 24 + 66 "
                                "+ 20 = 190 vs baseline 190 (0.0 %)"),
            "injected": ("iPR", "T-I 14 + 12 = 26 vs baseline 40: -35.0 % <= -30 %"),
            "noninjected": ("iUPD", "new lesion liver_new (10 mm); T-NI 38 + 16 + 24 + 66 + 20 = "
                                    "164 vs nadir 150: +9.3 % (< 20 %)"),
        },
        2: {
            "overall": ("iCPD", "after iUPD, new lesions' sum 10 -> 16 mm (+6 >= 5 mm); targets "
                                "12 + 11 + 164 = 187"),
            "injected": ("iPR", "T-I 12 + 11 = 23 vs baseline 40: -42.5 % <= -30 %"),
            "noninjected": ("iCPD", "after iUPD, new lesions' sum 10 -> 16 mm (+6 >= 5 mm); T-NI "
                                    "164 unchanged"),
        },
    },
    "reset": {
        1: {
            "overall": ("iSD", "targets 40 + 184 = 224 vs nadir 190: +17.9 % (< 20 %), +34 mm; "
                               "no new lesion"),
            "injected": ("iSD", "T-I 24 + 16 = 40 vs baseline 40: 0.0 %"),
            "noninjected": ("iUPD", "T-NI 48 + 20 + 24 + 72 + 20 = 184 vs nadir 150: +22.7 % "
                                    "(>= 20 %) and +34 mm (>= 5 mm)"),
        },
        2: {
            "overall": ("iSD", "targets 40 + 150 = 190 vs baseline 190: 0.0 %"),
            "injected": ("iSD", "T-I 40 vs baseline 40: 0.0 %"),
            "noninjected": ("iSD", "reset: T-NI back to 150 (0.0 % from baseline, -34 mm from "
                                   "the iUPD timepoint); iUPD not confirmed"),
        },
    },
    "nodal_complete_response": {
        1: {
            "overall": ("iSD", "targets 11 + 12 + 150 = 173 vs baseline 190: -8.9 %"),
            "injected": ("iPR", "T-I 11 + 12 = 23 vs baseline 40: -42.5 % <= -30 %"),
            "noninjected": ("iSD", "T-NI 150 vs baseline 150: 0.0 %"),
        },
        2: {
            "overall": ("iSD", "targets 0 + 9 + 150 = 159 vs baseline 190: -16.3 %; T-NI present"),
            "injected": ("iCR", "soft_tissue_flank disappeared (0 mm), node_axillary_R short "
                                "axis 9 mm < 10 mm: every injected target gone, no NT-I"),
            "noninjected": ("iSD", "T-NI 150 vs baseline 150: 0.0 %"),
        },
    },
}
# After t = 2 the sizes stay as at t = 2: a confirmed progression stays iCPD, the others repeat.


def scenario_of(patient_index: int) -> str:
    """Designed scenario of patient ``patient_index`` (1-based)."""
    return SCENARIOS[(int(patient_index) - 1) % len(SCENARIOS)]


def _design_t(t: int) -> int:
    """Design row used at follow-up t (t > 2 repeats t = 2)."""
    return min(int(t), 2)


# --------------------------------------------------------------------------- transforms
def rigid_matrix(translation_mm, rot_z_deg: float, rot_x_deg: float = 0.0) -> np.ndarray:
    """4x4 affine p' = Rz Rx p + t (LPS mm; rotations about the axes through the origin)."""
    az, ax = math.radians(rot_z_deg), math.radians(rot_x_deg)
    rz = np.array([[math.cos(az), -math.sin(az), 0.0], [math.sin(az), math.cos(az), 0.0],
                   [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(ax), -math.sin(ax)],
                   [0.0, math.sin(ax), math.cos(ax)]])
    m = np.eye(4)
    m[:3, :3] = rz @ rx
    m[:3, 3] = np.asarray(translation_mm, dtype=float)
    return m


def motion_parameters(patient_index: int, seed: int, t: int) -> tuple[tuple[float, ...], float, float]:
    """(translation mm, rotation about z deg, rotation about x deg) of follow-up ``t`` >= 1.

    Patient 1 uses :data:`NOMINAL_MOTION`; others add seeded jitter (x, y +-3 mm, z +-1 mm, the
    rotations 0..+1 deg), which keeps the translation >= 10 mm and the rotation >= 3 deg.
    """
    tr, rz, rx = NOMINAL_MOTION[(int(t) - 1) % len(NOMINAL_MOTION)]
    if patient_index == 1:
        return tuple(tr), rz, rx
    rng = np.random.default_rng([int(seed), int(patient_index), 4242, int(t)])
    jit = rng.uniform(-1.0, 1.0, size=3) * np.array([3.0, 3.0, 1.0])
    tr = tuple(round(float(v + j), 3) for v, j in zip(tr, jit))
    rz = round(rz + float(rng.uniform(0.0, 1.0)), 3)
    rx = round(rx + float(rng.uniform(0.0, 1.0)) if rx else 0.0, 3)
    return tr, rz, rx


def patient_to_scanner(patient_index: int, seed: int, t: int) -> np.ndarray:
    """4x4 affine mapping canonical patient LPS mm to study ``t``'s scanner LPS mm (identity at
    t = 0)."""
    if t == 0:
        return np.eye(4)
    tr, rz, rx = motion_parameters(patient_index, seed, t)
    return rigid_matrix(tr, rz, rx)


def rotation_angle_deg(m: np.ndarray) -> float:
    """Total rotation angle (deg) of the rotation part of a 4x4 rigid affine."""
    c = (float(np.trace(m[:3, :3])) - 1.0) / 2.0
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


# --------------------------------------------------------------------------- lesion plan
@dataclass(frozen=True)
class TimepointLesion:
    """One lesion track at one timepoint, in the canonical patient frame.

    Attributes
    ----------
    track_id : str
        Baseline lesion name (new lesions: their own name).
    design : LesionDesign or None
        Shape at this timepoint (canonical LPS mm), None when the lesion has disappeared.
    status : str
        ``present``, ``disappeared`` or ``new``.
    category : str
        itRECIST category (``T-I``, ``T-NI``, ``NT-I``, ``NT-NI``, ``NEW``).
    measure_kind : str
        ``short_axis`` for lymph nodes, else ``longest_diameter`` (axial plane).
    measure_mm : float
        Analytic axial measure: 2 x max in-plane semi-axis (longest diameter) or 2 x min
        in-plane semi-axis (short axis); 0 when disappeared.
    """

    track_id: str
    design: LesionDesign | None
    status: str
    category: str
    measure_kind: str
    measure_mm: float


def _measure(les: LesionDesign) -> tuple[str, float]:
    a, b, _ = les.semi_axes_mm
    if les.organ == "lymph_node":
        return "short_axis", 2.0 * min(a, b)
    return "longest_diameter", 2.0 * max(a, b)


def timepoint_lesions(base: PatientDesign, t: int) -> list[TimepointLesion]:
    """The lesion tracks of patient ``base`` at timepoint ``t`` (0 = baseline), in baseline
    order, then new lesions."""
    scenario = scenario_of(base.patient_index)
    changes = _CHANGES[scenario].get(_design_t(t), {}) if t > 0 else {}
    out = []
    for les in base.lesions:
        cat = BASELINE_CATEGORY.get(les.name, "NT-NI")
        if les.name in changes and changes[les.name] is None:
            kind, _ = _measure(les)
            out.append(TimepointLesion(les.name, None, "disappeared", cat, kind, 0.0))
            continue
        if les.name in changes:
            axes, core = changes[les.name]  # type: ignore[misc]
            les = replace(les, semi_axes_mm=tuple(axes), core_radius_mm=core)
        kind, m = _measure(les)
        out.append(TimepointLesion(les.name, les, "present", cat, kind, m))
    if t > 0 and scenario in _NEW_RADIUS:
        r = _NEW_RADIUS[scenario][_design_t(t)]
        new = replace(_NEW_LESION, semi_axes_mm=(r, r, r))
        kind, m = _measure(new)
        out.append(TimepointLesion(new.name, new, "new", "NEW", kind, m))
    return out


def timepoint_design(base: PatientDesign, t: int) -> PatientDesign:
    """Patient design of study ``t``: dates + 8 weeks x t, the present lesions, own UIDs."""
    if t == 0:
        return base
    delta = dt.timedelta(days=DAYS_BETWEEN_STUDIES * t)
    present = tuple(tl.design for tl in timepoint_lesions(base, t) if tl.design is not None)
    return replace(
        base,
        study_datetime=base.study_datetime + delta,
        injection_datetime=base.injection_datetime + delta,
        pet_series_datetime=base.pet_series_datetime + delta,
        ct_noncontrast_datetime=base.ct_noncontrast_datetime + delta,
        ct_contrast_datetime=base.ct_contrast_datetime + delta,
        lesions=present,
        timepoint_index=int(t),
    )


# --------------------------------------------------------------------------- rendering
def _label_grid_moved(grid: Grid, lesions, scanner_to_patient: np.ndarray):
    """Tissue, lesion, core and overlap arrays on ``grid`` (scanner frame) of the scene moved by
    ``inverse(scanner_to_patient)``: voxel centre p shows the design at ``scanner_to_patient p``."""
    xs, ys, zs = grid_axes(grid)
    r, tr = scanner_to_patient[:3, :3], scanner_to_patient[:3, 3]
    nz, ny, nx = grid.shape_zyx
    x = xs[None, None, :]
    y = ys[None, :, None]
    tissue = np.empty(grid.shape_zyx, dtype=np.uint8)
    labels = np.empty(grid.shape_zyx, dtype=np.uint8)
    core = np.empty(grid.shape_zyx, dtype=bool)
    overlap = np.empty(grid.shape_zyx, dtype=bool)
    step = max(1, int(2_000_000 // (ny * nx)))
    for z0 in range(0, nz, step):
        z = zs[z0 : z0 + step, None, None]
        p = [r[i, 0] * x + r[i, 1] * y + (r[i, 2] * z if r[i, 2] != 0.0 else 0.0) + tr[i]
             for i in range(3)]
        shape = (len(z), ny, nx)
        tissue[z0 : z0 + step] = np.broadcast_to(classify_tissue(*p), shape)
        lab, cor, ovl = label_lesions(*p, lesions)
        labels[z0 : z0 + step] = np.broadcast_to(lab, shape)
        core[z0 : z0 + step] = np.broadcast_to(cor, shape)
        overlap[z0 : z0 + step] = np.broadcast_to(ovl, shape)
    return tissue, labels, core, overlap


def _check_fov(grid: Grid, tissue: np.ndarray, labels: np.ndarray, what: str) -> None:
    """The body stays off the in-plane border and no lesion touches any border of the grid."""
    body = (tissue != int(Tissue.AIR)) & (tissue != int(Tissue.TABLE))
    border_xy = np.concatenate([body[:, 0, :].ravel(), body[:, -1, :].ravel(),
                                body[:, :, 0].ravel(), body[:, :, -1].ravel()])
    if border_xy.any():
        raise RuntimeError(f"{what}: the repositioned body touches the in-plane edge of the grid")
    les_border = np.concatenate([labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(),
                                 labels[:, -1].ravel(), labels[:, :, 0].ravel(),
                                 labels[:, :, -1].ravel()])
    if les_border.any():
        raise RuntimeError(f"{what}: a repositioned lesion touches the edge of the grid")


def check_new_lesion(base: PatientDesign, t: int) -> None:
    """Analytic checks of the designed changes of study ``t``: a new lesion keeps
    :data:`NEW_LESION_MARGIN_MM` from every other lesion (bounding spheres) and from the liver
    capsule; grown lesions keep apart (bounding spheres, where they are not designed to touch).
    Raises RuntimeError on a design error."""
    tls = [tl for tl in timepoint_lesions(base, t) if tl.design is not None]
    for i, a in enumerate(tls):
        for b in tls[i + 1 :]:
            da, db = a.design, b.design
            gap = (np.linalg.norm(np.subtract(da.centre_lps_mm, db.centre_lps_mm))
                   - max(da.semi_axes_mm) - max(db.semi_axes_mm))
            need = NEW_LESION_MARGIN_MM if "new" in (a.status, b.status) else 0.0
            if gap <= need:
                raise RuntimeError(f"study t={t}: lesions {a.track_id} and {b.track_id} are "
                                   f"{gap:.1f} mm apart (bounding spheres), need > {need:g} mm")
        if a.status == "new":
            depth = float(LIVER.signed_distance(np.asarray([a.design.centre_lps_mm]))[0])
            if depth - max(a.design.semi_axes_mm) < NEW_LESION_MARGIN_MM:
                raise RuntimeError(f"new lesion {a.track_id} is within {NEW_LESION_MARGIN_MM} mm "
                                   "of the liver capsule")


def timepoint_arrays(base: PatientDesign, t: int) -> tuple[PhantomArrays, np.ndarray]:
    """Images of study ``t`` >= 1 in its scanner frame, and its ``patient_to_scanner`` (4x4).

    Raises
    ------
    RuntimeError
        If lesions overlap, leave their host tissue or the field of view (a design error).
    """
    d = timepoint_design(base, t)
    m = patient_to_scanner(base.patient_index, base.seed, t)
    inv = np.linalg.inv(m)
    check_new_lesion(base, t)
    cg, pg = ct_grid(base.size), pet_grid(base.size)
    tissue, labels, core, overlap = _label_grid_moved(cg, d.lesions, inv)
    if overlap.any():
        raise RuntimeError(f"study t={t}: lesions overlap in {int(overlap.sum())} CT voxels")
    _check_hosts(tissue, labels, d.lesions)
    _check_fov(cg, tissue, labels, f"{d.patient_id} study t={t} CT")
    p_tissue, p_labels, p_core, p_overlap = _label_grid_moved(pg, d.lesions, inv)
    if p_overlap.any():
        raise RuntimeError(f"study t={t}: lesions overlap on the PET grid")
    cts = []
    for phase in (0, 1):
        clean = _render(tissue, labels, core, d.lesions, phase)
        rng = np.random.default_rng([int(base.seed), int(base.patient_index), 1000 + phase,
                                     int(t)])
        noise = rng.standard_normal(cg.shape_zyx, dtype=np.float32) * CT_NOISE_SIGMA_HU
        cts.append(np.clip(np.rint(clean + noise), -1024, 3071).astype(np.float32))
    suv = _render(p_tissue, p_labels, p_core, d.lesions, 2).astype(np.float32)
    arrays = PhantomArrays(
        design=d, ct_grid=cg, pet_grid=pg, ct_noncontrast_hu=cts[0], ct_contrast_hu=cts[1],
        pet_suv=suv, tissue_labels=tissue, lesion_labels=labels, lesion_core=core,
        pet_tissue_labels=p_tissue, pet_lesion_labels=p_labels, pet_lesion_core=p_core,
    )
    return arrays, m


# --------------------------------------------------------------------------- segments
def _letters(i: int) -> str:
    s = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        s = chr(65 + r) + s
    return s


def segment_plan(base: PatientDesign, t: int, baseline_tracking: dict[str, str]) -> list[dict]:
    """Segments of study ``t`` >= 1 in segment-number order: ``track_id``, ``segment_number``,
    ``segment_label``, ``tracking_uid``, ``status``, ``design_label`` (1-based index into
    :func:`timepoint_design` lesions, None for an empty segment)."""
    from pipeline.testing.phantom.dicom import _uid

    tls = timepoint_lesions(base, t)
    d_t = timepoint_design(base, t)
    present = [tl.track_id for tl in tls if tl.design is not None]
    rng = np.random.default_rng([int(base.seed), int(base.patient_index), 5151, int(t)])
    order = [int(i) for i in rng.permutation(len(tls))]
    if order == list(range(len(tls))):  # never the baseline order
        order = order[1:] + order[:1]
    out = []
    for number, i in enumerate(order, start=1):
        tl = tls[i]
        label = f"Lesion {number}" if t % 2 == 1 else f"target {_letters(number - 1)}"
        if tl.status == "disappeared":
            uid = baseline_tracking[tl.track_id]
        elif base.patient_index == 1:
            uid = baseline_tracking.get(tl.track_id) or _uid(base, "tracking", "new", tl.track_id)
        else:
            uid = _uid(d_t, "tracking", tl.track_id)
        out.append({
            "track_id": tl.track_id,
            "segment_number": number,
            "segment_label": label,
            "tracking_uid": uid,
            "status": tl.status,
            "design_label": present.index(tl.track_id) + 1 if tl.design is not None else None,
        })
    return out


def write_followup_seg(path: Path, arrays: PhantomArrays, uids: dict[str, str], source: list,
                       segments: list[dict]) -> None:
    """Write the lesion SEG of a follow-up study (BINARY, highdicom) on the CT ``source``.

    One segment per entry of ``segments`` (see :func:`segment_plan`), category Morphologically
    Abnormal Structure, type Neoplasm, TrackingID = the segment label. An entry whose
    ``design_label`` is None is a segment with zero voxels: a SegmentSequence item that no frame
    references.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from pipeline.testing.phantom.dicom import GENERATOR, __version__, _uid

    d = arrays.design
    labels = arrays.lesion_labels
    stack = np.zeros(labels.shape + (len(segments),), dtype=bool)
    descs = []
    for j, s in enumerate(segments):
        if s["design_label"] is not None:
            stack[..., j] = labels == s["design_label"]
        descs.append(hd.seg.SegmentDescription(
            segment_number=s["segment_number"],
            segment_label=s["segment_label"],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            tracking_uid=s["tracking_uid"],
            tracking_id=s["segment_label"],
        ))
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=stack,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs,
        series_instance_uid=uids["seg_lesions"],
        series_number=100,
        sop_instance_uid=_uid(d, "seg_lesions", "instance"),
        instance_number=1,
        manufacturer=GENERATOR,
        manufacturer_model_name="analytic PET/CT phantom",
        software_versions=__version__,
        device_serial_number="0",
        series_description="SEG LESIONS (phantom truth)",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


# --------------------------------------------------------------------------- truth
def _sods(lesions: list[dict]) -> dict[str, float]:
    ti = sum(x["measure_mm"] for x in lesions if x["category"] == "T-I")
    tni = sum(x["measure_mm"] for x in lesions if x["category"] == "T-NI")
    new = sum(x["measure_mm"] for x in lesions if x["category"] == "NEW")
    return {"sod_ti_mm": ti, "sod_tni_mm": tni, "sod_targets_mm": ti + tni, "sod_new_mm": new}


def designed_responses(scenario: str, t: int) -> dict:
    """Designed (overall, injected, noninjected) responses of study ``t`` with the arithmetic;
    all None at baseline."""
    if t == 0:
        return {"response_overall": None, "response_injected": None,
                "response_noninjected": None, "response_reasons": {}}
    row = _RESPONSES[scenario][_design_t(t)]
    reasons = {k: v[1] for k, v in row.items()}
    if t > 2:
        reasons = {k: f"sizes as at t = 2; {v}" for k, v in reasons.items()}
        if scenario == "confirmed_progression":
            reasons["overall"] = reasons["noninjected"] = "confirmed progression stays iCPD"
    return {"response_overall": row["overall"][0], "response_injected": row["injected"][0],
            "response_noninjected": row["noninjected"][0], "response_reasons": reasons}


def followup_truth_timepoint(base: PatientDesign, t: int, uids: dict[str, str], m: np.ndarray,
                             segments: list[dict], study_folder: str,
                             arrays: PhantomArrays | None = None) -> dict:
    """The ``followup.timepoints[t]`` entry of truth.json (format of the follow-up design doc).

    Each lesion also carries ``centre_lps_mm`` (design centre mapped by ``patient_to_scanner``;
    null when disappeared), ``semi_axes_mm`` and, when ``arrays`` is given, ``voxel_count`` (CT).
    """
    d_t = timepoint_design(base, t)
    by_track = {tl.track_id: tl for tl in timepoint_lesions(base, t)}
    lesions = []
    for s in segments:
        tl = by_track[s["track_id"]]
        centre = None
        if tl.design is not None:
            c = m @ np.append(np.asarray(tl.design.centre_lps_mm, dtype=float), 1.0)
            centre = [round(float(v), 6) for v in c[:3]]
        n = None
        if arrays is not None:
            n = 0 if s["design_label"] is None else int((arrays.lesion_labels
                                                         == s["design_label"]).sum())
        lesions.append({
            "track_id": tl.track_id, "segment_label": s["segment_label"],
            "segment_number": s["segment_number"], "tracking_uid": s["tracking_uid"],
            "status": tl.status, "category": tl.category, "measure_kind": tl.measure_kind,
            "measure_mm": tl.measure_mm, "centre_lps_mm": centre,
            "semi_axes_mm": list(tl.design.semi_axes_mm) if tl.design is not None else None,
            "voxel_count": n,
        })
    out = {
        "index": int(t), "study_uid": uids["study_uid"],
        "study_date": d_t.study_datetime.strftime("%Y%m%d"),
        "study_folder": study_folder,
        "frame_of_reference_uid": uids["frame_of_reference_uid"],
        "patient_to_scanner": [float(v) for v in np.asarray(m, dtype=float).ravel()],
        "lesions": lesions,
    }
    out.update(_sods(lesions))
    out["new_lesions"] = sum(1 for x in lesions if x["status"] == "new")
    out.update(designed_responses(scenario_of(base.patient_index), t))
    return out


# --------------------------------------------------------------------------- writers
def _study_folder_name(d: PatientDesign, t: int) -> str:
    return f"{d.study_datetime.strftime('%Y%m%d')}_t{t}"


def write_followup_study(folder: Path, base: PatientDesign, t: int,
                         baseline_tracking: dict[str, str]) -> dict:
    """Write follow-up study ``t`` >= 1 of patient ``base`` into ``folder``; return its truth."""
    from pipeline.testing.phantom.dicom import (
        patient_uids,
        write_ct_series,
        write_pet_series,
        write_seg,
    )

    arrays, m = timepoint_arrays(base, t)
    uids = patient_uids(arrays.design)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(base.seed), int(base.patient_index), 77, int(t)])
    ct_nc = write_ct_series(folder / "CT_noncontrast", arrays, uids, contrast=False, rng=rng)
    ct_ce = write_ct_series(folder / "CT_contrast", arrays, uids, contrast=True, rng=rng)
    stored, slopes = quantize_pet_slices(arrays.pet_activity_bqml())
    write_pet_series(folder / "PET", arrays, uids, stored, slopes, rng=rng)
    segments = segment_plan(base, t, baseline_tracking)
    write_followup_seg(folder / "SEG_lesions.dcm", arrays, uids, ct_ce, segments)
    write_seg(folder / "SEG_organs.dcm", arrays, uids, ct_nc, kind="organ")
    return followup_truth_timepoint(base, t, uids, m, segments, folder.name, arrays)


def generate_followup_patient(outdir: Path, patient_index: int = 1, size: str = "small",
                              seed: int = 0, timepoints: int = 3) -> Path:
    """Write one phantom patient with ``timepoints`` studies (standard variant).

    Returns
    -------
    Path
        ``outdir/PHANTOM{index:03d}`` holding one folder per study (``<YYYYMMDD>_t<k>``) and
        ``truth.json`` (the baseline truth of :func:`.dicom.generate_patient` plus
        ``"followup"``).
    """
    from pipeline.testing.phantom.dicom import _prepare_folder, _uid, generate_patient

    if timepoints < 2:
        raise ConfigError(f"generate_followup_patient needs timepoints >= 2, got {timepoints}",
                          hint="use generate_patient for a single study")
    base = patient_design(patient_index, seed, size, "standard", None)
    folder = Path(outdir) / base.patient_id
    _prepare_folder(folder)
    staging = folder / ".baseline_staging"
    written = generate_patient(staging, patient_index, size, seed)
    study0 = folder / _study_folder_name(base, 0)
    written.rename(study0)
    shutil.rmtree(staging)
    truth = json.loads((study0 / "truth.json").read_text())
    (study0 / "truth.json").unlink()
    baseline_tracking = {les.name: _uid(base, "tracking", les.name) for les in base.lesions}
    segs0 = [{"track_id": les.name, "segment_number": k, "segment_label": les.name,
              "tracking_uid": baseline_tracking[les.name], "status": "present",
              "design_label": k} for k, les in enumerate(base.lesions, start=1)]
    from pipeline.testing.phantom.dicom import patient_uids

    tps = [followup_truth_timepoint(base, 0, patient_uids(base), np.eye(4), segs0, study0.name)]
    for k, tl in enumerate(truth["lesions"]):
        tps[0]["lesions"][k]["voxel_count"] = tl.get("voxel_count")
    for t in range(1, timepoints):
        d_t = timepoint_design(base, t)
        tps.append(write_followup_study(folder / _study_folder_name(d_t, t), base, t,
                                        baseline_tracking))
    truth["followup"] = {"scenario": scenario_of(patient_index), "timepoints": tps}
    (folder / "truth.json").write_text(json.dumps(truth, indent=2))
    log.info("phantom patient %s with %d studies written to %s", base.patient_id, timepoints,
             folder)
    return folder


def generate_followup_cohort(outdir: Path, n_patients: int = 1, size: str = "small",
                             seed: int = 0, timepoints: int = 1,
                             progress: Callable[[int, int, Path], None] | None = None,
                             variant: str = "standard", organ_formats=None,
                             contrast_shift_mm=None) -> list[Path]:
    """``hitit phantom --timepoints T``: T = 1 is :func:`.dicom.generate_cohort` unchanged;
    T > 1 writes :func:`generate_followup_patient` for each patient (standard variant, default
    organ formats and no contrast shift only)."""
    from pipeline.testing.phantom.dicom import generate_cohort

    if timepoints < 1:
        raise ConfigError(f"timepoints must be >= 1, got {timepoints}")
    if timepoints == 1:
        return generate_cohort(Path(outdir), n_patients, size, seed, progress, variant,
                               organ_formats, contrast_shift_mm)
    check_size(size)
    check_variant(variant)
    if variant != "standard" or organ_formats is not None or contrast_shift_mm is not None:
        raise ConfigError(
            "phantom follow-ups (--timepoints > 1) are designed on the standard variant only",
            hint="drop --variant / --organ-formats / --contrast-shift, or use --timepoints 1",
        )
    if n_patients < 1:
        raise ConfigError(f"n_patients must be >= 1, got {n_patients}")
    out = []
    for i in range(1, n_patients + 1):
        folder = generate_followup_patient(Path(outdir), i, size, seed, timepoints)
        out.append(folder)
        if progress is not None:
            progress(i, n_patients, folder)
    return out
