"""Phantom design: anatomy, lesion and patient designs, constants, and the analytic geometry
that defines them (see :mod:`pipeline.testing.phantom` for the full description).

Everything here is a closed-form definition in LPS mm: the organ ellipsoids and cylinders, the
lesion shapes, point classification (:func:`classify_tissue`, :func:`label_lesions`) and exact
surface distances (:func:`structure_distance`). Nothing here builds images or writes files.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from pipeline.errors import ConfigError
from pipeline.geometry import Grid

# --------------------------------------------------------------------------- constants
#: F-18 half-life, s.
HALF_LIFE_F18_S = 6586.2
#: Name written as Manufacturer / software into every file.
GENERATOR = "hitit-phantom"
#: Largest stored PET value; the per-slice RescaleSlope is slice max / this.
PET_STORED_MAX = 32000
#: CT RescaleIntercept (stored = HU + 1024).
CT_RESCALE_INTERCEPT = -1024.0
#: CT noise standard deviation, HU.
CT_NOISE_SIGMA_HU = 8.0

BODY_SEMI_AXES_XY_MM = (170.0, 120.0)
FAT_THICKNESS_MM = 12.0
TABLE_X_RANGE_MM = (-200.0, 200.0)
TABLE_Y_RANGE_MM = (130.0, 140.0)
SPINE_CENTRE_XY_MM = (0.0, 75.0)
SPINE_RADIUS_MM = 18.0
AORTA_CENTRE_XY_MM = (20.0, 40.0)
AORTA_RADIUS_MM = 12.0

SIZES = ("small", "full")
#: Lesion designs: ``standard`` = the canonical 8 lesions, ``extended`` = those 8 + 4 more.
VARIANTS = ("standard", "extended")
#: Organ mask formats :func:`generate_patient` can write.
ORGAN_FORMATS = ("seg", "rtstruct", "totalseg")
#: Default ``organ_formats`` per variant.
DEFAULT_ORGAN_FORMATS = {"standard": ("seg",), "extended": ORGAN_FORMATS}
#: Largest accepted ``contrast_shift_mm`` component, mm (lesions must stay inside the grid).
MAX_CONTRAST_SHIFT_MM = 10.0
#: Designed depth (mm, positive inside) of the ``liver_exophytic`` centre below the liver surface.
EXOPHYTIC_CENTRE_DEPTH_MM = 1.5


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid.

    Attributes
    ----------
    centre_lps_mm : tuple of 3 float
        Centre, LPS mm.
    semi_axes_mm : tuple of 3 float
        Semi-axes along x, y and z, mm.
    """

    centre_lps_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]

    def q(self, x, y, z) -> np.ndarray:
        """Normalised squared radius sum(((p - c) / a)^2) at broadcastable x, y, z (mm)."""
        (cx, cy, cz), (a, b, c) = self.centre_lps_mm, self.semi_axes_mm
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2

    def contains(self, x, y, z) -> np.ndarray:
        """True where the point is inside or on the surface."""
        return self.q(x, y, z) <= 1.0

    def signed_distance(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Exact distance (mm) from (N, 3) points to the surface; positive inside."""
        return ellipsoid_signed_distance(points_lps_mm, self.centre_lps_mm, self.semi_axes_mm)

    @property
    def volume_mm3(self) -> float:
        """Analytic volume, mm^3."""
        a, b, c = self.semi_axes_mm
        return 4.0 / 3.0 * math.pi * a * b * c


LIVER = Ellipsoid((-70.0, 0.0, -30.0), (80.0, 70.0, 60.0))
SPLEEN = Ellipsoid((95.0, 40.0, -30.0), (35.0, 30.0, 45.0))
LUNG_LEFT = Ellipsoid((80.0, 10.0, 50.0), (55.0, 75.0, 50.0))
LUNG_RIGHT = Ellipsoid((-80.0, 10.0, 50.0), (55.0, 75.0, 50.0))


class Tissue(enum.IntEnum):
    """Tissue classes of the phantom anatomy (values of the tissue label arrays)."""

    AIR = 0
    TABLE = 1
    FAT = 2
    SOFT_TISSUE = 3
    LUNG_LEFT = 4
    LUNG_RIGHT = 5
    LIVER = 6
    SPLEEN = 7
    AORTA = 8
    VERTEBRAL_COLUMN = 9


#: (HU non-contrast, HU contrast, SUV) per tissue.
TISSUE_VALUES: dict[Tissue, tuple[float, float, float]] = {
    Tissue.AIR: (-1000.0, -1000.0, 0.0),
    Tissue.TABLE: (300.0, 300.0, 0.0),
    Tissue.FAT: (-100.0, -100.0, 0.5),
    Tissue.SOFT_TISSUE: (40.0, 40.0, 1.0),
    Tissue.LUNG_LEFT: (-850.0, -850.0, 0.4),
    Tissue.LUNG_RIGHT: (-850.0, -850.0, 0.4),
    Tissue.LIVER: (55.0, 110.0, 2.0),
    Tissue.SPLEEN: (45.0, 120.0, 1.8),
    Tissue.AORTA: (40.0, 250.0, 1.6),
    Tissue.VERTEBRAL_COLUMN: (700.0, 700.0, 1.2),
}

#: Organ segments written to SEG_organs.dcm: (SegmentLabel, tissue, SCT code, code meaning).
ORGANS: tuple[tuple[str, Tissue, str, str], ...] = (
    ("liver", Tissue.LIVER, "10200004", "Liver"),
    ("spleen", Tissue.SPLEEN, "78961009", "Spleen"),
    ("lung_left", Tissue.LUNG_LEFT, "44029006", "Left lung"),
    ("lung_right", Tissue.LUNG_RIGHT, "3341006", "Right lung"),
    ("aorta", Tissue.AORTA, "15825003", "Aorta"),
    ("vertebral_column", Tissue.VERTEBRAL_COLUMN, "421060004", "Vertebral column"),
)
ORGAN_NAMES: tuple[str, ...] = tuple(o[0] for o in ORGANS)

#: ROIName of each organ in ``RTSTRUCT_organs.dcm`` (common clinical ROI names).
ORGAN_ROI_NAMES: dict[str, str] = {
    "liver": "Liver",
    "spleen": "Spleen",
    "lung_left": "Lung_L",
    "lung_right": "Lung_R",
    "aorta": "Aorta",
    "vertebral_column": "Spine",
}

_INF = float("inf")
#: Files of ``totalseg/`` (TotalSegmentator v2 names): (structure, phantom organ, z_min, z_max).
#: A structure is its organ's mask restricted to voxel centres with z_min <= z < z_max (LPS mm,
#: non-contrast CT frame). The phantom has no fissures or intervertebral discs: lobes and
#: vertebrae are axial slabs of the lungs and of the vertebral column (no voxel centre lies on a
#: boundary for either grid size). The union of a phantom organ's structures is its SEG mask.
TOTALSEG_STRUCTURES: tuple[tuple[str, str, float, float], ...] = (
    ("liver", "liver", -_INF, _INF),
    ("spleen", "spleen", -_INF, _INF),
    ("lung_upper_lobe_left", "lung_left", 45.0, _INF),
    ("lung_lower_lobe_left", "lung_left", -_INF, 45.0),
    ("lung_upper_lobe_right", "lung_right", 55.0, _INF),
    ("lung_middle_lobe_right", "lung_right", 35.0, 55.0),
    ("lung_lower_lobe_right", "lung_right", -_INF, 35.0),
    ("aorta", "aorta", -_INF, _INF),
    ("vertebrae_T9", "vertebral_column", 55.0, _INF),
    ("vertebrae_T10", "vertebral_column", 27.5, 55.0),
    ("vertebrae_T11", "vertebral_column", 0.0, 27.5),
    ("vertebrae_T12", "vertebral_column", -27.5, 0.0),
    ("vertebrae_L1", "vertebral_column", -55.0, -27.5),
    ("vertebrae_L2", "vertebral_column", -_INF, -55.0),
)


# --------------------------------------------------------------------------- designs
@dataclass(frozen=True)
class LesionDesign:
    """One analytic lesion: an axis-aligned ellipsoid, optionally with a spherical necrotic core.

    Attributes
    ----------
    name : str
        SegmentLabel / ROIName / label-map name.
    centre_lps_mm : tuple of 3 float
        Centre, LPS mm.
    semi_axes_mm : tuple of 3 float
        Semi-axes along x, y, z, mm (equal for a sphere).
    suv : float
        SUVbw of the lesion (of the rim when there is a core).
    hu_noncontrast, hu_contrast : float
        CT value (HU) without and with contrast (of the rim when there is a core).
    organ : str
        Organ class: ``soft_tissue``, ``lymph_node``, ``liver``, ``lung``.
    site : str
        Finer site description.
    host_tissues : tuple of str
        :class:`Tissue` names the lesion may occupy (the intended organ / tissue).
    purpose : str
        Which selection rule the lesion exercises.
    core_radius_mm : float
        Radius of the concentric necrotic core sphere, mm (0 = no core).
    core_suv, core_hu_noncontrast, core_hu_contrast : float
        Values inside the core.
    anchor : tuple (structure, distance_mm, axis) or None
        For jittered patients: slide the centre along ``axis`` (0=x, 1=y, 2=z) until the analytic
        surface distance to ``structure`` (any name accepted by :func:`structure_distance`,
        e.g. ``"skin"``, ``"aorta"``, ``"liver"``, ``"lung_right"``, ``"liver@centre"``) equals
        ``distance_mm``.
    exclude_aorta : bool
        The lesion excludes the aortic lumen (see :meth:`contains`): a lesion wrapped around the
        aorta. Needs circular axial sections (equal x and y semi-axes).
    """

    name: str
    centre_lps_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    suv: float
    hu_noncontrast: float
    hu_contrast: float
    organ: str
    site: str
    host_tissues: tuple[str, ...]
    purpose: str
    core_radius_mm: float = 0.0
    core_suv: float = 0.0
    core_hu_noncontrast: float = 0.0
    core_hu_contrast: float = 0.0
    anchor: tuple[str, float, int] | None = None
    exclude_aorta: bool = False

    @property
    def shape(self) -> Ellipsoid:
        """The lesion's ellipsoid (its outer surface)."""
        return Ellipsoid(self.centre_lps_mm, self.semi_axes_mm)

    def contains(self, x, y, z) -> np.ndarray:
        """True where a point belongs to the lesion: inside its ellipsoid and, when
        ``exclude_aorta``, outside the aortic lumen (the aorta wins on its surface)."""
        m = self.shape.contains(x, y, z)
        if self.exclude_aorta:
            ax, ay = AORTA_CENTRE_XY_MM
            m = m & ((x - ax) ** 2 + (y - ay) ** 2 > AORTA_RADIUS_MM**2)
        return m

    @property
    def volume_mm3_analytic(self) -> float:
        """Analytic volume, mm^3 (the ellipsoid, minus the aortic lumen when excluded)."""
        if not self.exclude_aorta:
            return self.shape.volume_mm3
        return _shell_volume_mm3(self)

    @property
    def core(self) -> Ellipsoid | None:
        """The necrotic core sphere, or None."""
        if self.core_radius_mm <= 0:
            return None
        r = self.core_radius_mm
        return Ellipsoid(self.centre_lps_mm, (r, r, r))


_CANONICAL_LESIONS: tuple[LesionDesign, ...] = (
    LesionDesign(
        "soft_tissue_flank", (120.0, -60.0, -45.0), (12.0, 12.0, 12.0), 8.0, 45.0, 95.0,
        organ="soft_tissue", site="superficial_soft_tissue", host_tissues=("SOFT_TISSUE", "FAT"),
        purpose="superficial soft tissue, preferred site",
    ),
    LesionDesign(
        "node_axillary_R", (-124.0, -64.0, 55.0), (10.0, 8.0, 10.0), 7.0, 40.0, 80.0,
        organ="lymph_node", site="superficial_lymph_node", host_tissues=("SOFT_TISSUE", "FAT"),
        purpose="superficial lymph node (name contains 'node')", anchor=("skin", 5.0, 0),
    ),
    LesionDesign(
        "liver_deep", (-70.0, 0.0, -30.0), (15.0, 15.0, 15.0), 6.0, 45.0, 140.0,
        organ="liver", site="liver_deep", host_tissues=("LIVER",), purpose="deep liver",
    ),
    LesionDesign(
        "liver_subcapsular", (-139.985713, 0.0, -31.0), (10.0, 10.0, 10.0), 6.0, 45.0, 140.0,
        organ="liver", site="liver_subcapsular", host_tissues=("LIVER",),
        purpose="touches the liver capsule (x = -150)", anchor=("liver", 0.0, 0),
    ),
    LesionDesign(
        "lung_nodule_tiny", (80.0, 10.0, 55.0), (3.5, 3.5, 3.5), 1.5, 30.0, 40.0,
        organ="lung", site="lung", host_tissues=("LUNG_LEFT",), purpose="< 10 mm",
    ),
    LesionDesign(
        "necrotic_mass", (70.0, -40.0, -50.0), (30.0, 30.0, 30.0), 5.0, 40.0, 80.0,
        organ="soft_tissue", site="deep_soft_tissue", host_tissues=("SOFT_TISSUE",),
        purpose="> 50 mm with a necrotic core (radius 20 mm)",
        core_radius_mm=20.0, core_suv=0.8, core_hu_noncontrast=15.0, core_hu_contrast=15.0,
    ),
    LesionDesign(
        "node_paraaortic", (44.0, 40.0, -10.0), (12.0, 12.0, 12.0), 6.5, 40.0, 85.0,
        organ="lymph_node", site="paraaortic_lymph_node", host_tissues=("SOFT_TISSUE",),
        purpose="abuts the aorta (surfaces touch)", anchor=("aorta", 0.0, 0),
    ),
    LesionDesign(
        "lung_subpleural", (-124.0, 10.0, 50.0), (8.0, 8.0, 8.0), 4.0, 30.0, 50.0,
        organ="lung", site="lung_subpleural", host_tissues=("LUNG_RIGHT",),
        purpose="lung lesion 3 mm from the pleura", anchor=("lung_right", 3.0, 0),
    ),
)

#: Lesions added by the ``extended`` variant (labels 9.. after the canonical 8).
_EXTENDED_LESIONS: tuple[LesionDesign, ...] = (
    LesionDesign(
        "aorta_encasing", (25.0, 27.5, -67.5), (23.0, 23.0, 11.0), 6.0, 30.0, 70.0,
        organ="soft_tissue", site="deep_soft_tissue_periaortic", host_tissues=("SOFT_TISSUE",),
        purpose="encases the aorta (> 180 degrees of its circumference); lumen excluded",
        exclude_aorta=True,
    ),
    LesionDesign(
        "liver_exophytic", (-70.0, -67.491162, -40.0), (12.0, 12.0, 12.0), 7.0, 45.0, 130.0,
        organ="liver", site="liver_exophytic", host_tissues=("LIVER", "SOFT_TISSUE"),
        purpose="liver lesion bulging out of the anterior capsule (30-60 % outside the liver)",
        anchor=("liver@centre", EXOPHYTIC_CENTRE_DEPTH_MM, 1),
    ),
    LesionDesign(
        "lung_deep", (-73.75, -3.75, 67.5), (10.0, 10.0, 10.0), 4.5, 30.0, 50.0,
        organ="lung", site="lung_deep", host_tissues=("LUNG_RIGHT",),
        purpose="deep lung lesion: the shortest skin path crosses aerated lung",
    ),
    LesionDesign(
        "noncontrast_invisible", (-95.0, 25.0, -50.0), (12.0, 12.0, 12.0), 5.0, 55.0, 140.0,
        organ="liver", site="liver", host_tissues=("LIVER",),
        purpose="isodense to the liver without contrast (CNR 0), enhancing with contrast",
    ),
)


def check_size(size: str) -> None:
    if size not in SIZES:
        raise ConfigError(
            f"unknown phantom size {size!r}", hint=f"use one of {', '.join(SIZES)}"
        )


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(
            f"unknown phantom variant {variant!r}", hint=f"use one of {', '.join(VARIANTS)}"
        )


def check_shift(shift) -> tuple[float, float, float] | None:
    if shift is None:
        return None
    try:
        out = tuple(float(v) for v in shift)
    except (TypeError, ValueError):
        raise ConfigError(f"contrast_shift_mm must be 3 numbers (mm), got {shift!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ConfigError(f"contrast_shift_mm must be 3 finite numbers (mm), got {shift!r}")
    if max(abs(v) for v in out) > MAX_CONTRAST_SHIFT_MM:
        raise ConfigError(
            f"contrast_shift_mm {out} is too large",
            hint=f"use components within +-{MAX_CONTRAST_SHIFT_MM:g} mm (a few mm is realistic)",
        )
    return out  # type: ignore[return-value]


def check_organ_formats(organ_formats, variant: str) -> tuple[str, ...]:
    if organ_formats is None:
        return DEFAULT_ORGAN_FORMATS[variant]
    if isinstance(organ_formats, str):
        organ_formats = (organ_formats,)
    out = tuple(dict.fromkeys(str(f).lower() for f in organ_formats))
    bad = [f for f in out if f not in ORGAN_FORMATS]
    if bad:
        raise ConfigError(
            f"unknown organ mask format(s) {', '.join(bad)}",
            hint=f"use any of {', '.join(ORGAN_FORMATS)}",
        )
    return out


def lesion_designs(size: str = "small", variant: str = "standard") -> list[LesionDesign]:
    """The canonical lesions (patient 1).

    Parameters
    ----------
    size : {"small", "full"}
        Grid size; lesions are defined in mm and are the same for both sizes.
    variant : {"standard", "extended"}
        ``extended`` appends ``aorta_encasing``, ``liver_exophytic``, ``lung_deep`` and
        ``noncontrast_invisible`` (labels 9-12) to the 8 standard lesions.

    Returns
    -------
    list of LesionDesign
        In label order (label k = k-th lesion, 1-based).
    """
    check_size(size)
    check_variant(variant)
    if variant == "extended":
        return list(_CANONICAL_LESIONS) + list(_EXTENDED_LESIONS)
    return list(_CANONICAL_LESIONS)


@dataclass(frozen=True)
class PatientDesign:
    """Everything that defines one phantom patient.

    Times are naive local datetimes (DICOM DA/TM have no time zone).
    """

    patient_index: int
    seed: int
    size: str
    patient_id: str
    patient_name: str
    sex: str
    birth_date: str
    height_m: float
    weight_kg: float
    dose_bq: float
    half_life_s: float
    study_datetime: dt.datetime
    injection_datetime: dt.datetime
    pet_series_datetime: dt.datetime
    ct_noncontrast_datetime: dt.datetime
    ct_contrast_datetime: dt.datetime
    lesions: tuple[LesionDesign, ...]
    variant: str = "standard"
    contrast_shift_mm: tuple[float, float, float] | None = None
    #: 0 = baseline; t > 0 = follow-up study t (:mod:`.followup`), which gets its own UIDs.
    timepoint_index: int = 0

    @property
    def uid_salt(self) -> tuple[str, ...]:
        """Extra entropy for the UIDs: empty for the standard, unshifted phantom (whose UIDs are
        therefore unchanged), else the variant and the shift, so that different content never
        shares a UID."""
        salt: tuple[str, ...] = ()
        if self.variant != "standard":
            salt += (f"variant={self.variant}",)
        if self.contrast_shift_mm is not None:
            salt += ("contrast_shift=" + ",".join(f"{v:.6f}" for v in self.contrast_shift_mm),)
        if self.timepoint_index:
            salt += (f"timepoint={self.timepoint_index}",)
        return salt

    @property
    def decay_to_series(self) -> float:
        """Fraction of the injected activity left at the PET SeriesTime."""
        delta = (self.pet_series_datetime - self.injection_datetime).total_seconds()
        return math.exp(-math.log(2.0) * delta / self.half_life_s)

    @property
    def suvbw_factor(self) -> float:
        """SUVbw per Bq/mL: weight_g / (dose decayed to SeriesTime)."""
        return self.weight_kg * 1000.0 / (self.dose_bq * self.decay_to_series)


def patient_design(
    patient_index: int = 1,
    seed: int = 0,
    size: str = "small",
    variant: str = "standard",
    contrast_shift_mm: tuple[float, float, float] | None = None,
) -> PatientDesign:
    """Design of phantom patient ``patient_index`` (1 = canonical, others seeded jitter).

    Parameters
    ----------
    patient_index : int
        1-based patient number; PatientID ``PHANTOM{index:03d}``.
    seed : int
        Cohort seed; patient ``i`` uses the random stream ``(seed, i)``.
    size : {"small", "full"}
    variant : {"standard", "extended"}
        The extended lesions are jittered after the standard ones from the same random stream,
        so the 8 standard lesions and the demographics of an extended patient equal those of the
        standard patient with the same (index, seed).
    contrast_shift_mm : (dx, dy, dz) or None
        Rigid offset of the patient in the contrast CT (see :func:`generate_patient`).
    """
    check_size(size)
    check_variant(variant)
    shift = check_shift(contrast_shift_mm)
    if patient_index < 1:
        raise ConfigError(f"patient_index must be >= 1, got {patient_index}")
    # Designs are immutable and re-anchoring jittered lesions costs ~0.5 s each: cache them.
    return _patient_design(int(patient_index), int(seed), size, variant, shift)


@functools.lru_cache(maxsize=64)
def _patient_design(
    patient_index: int,
    seed: int,
    size: str,
    variant: str,
    shift: tuple[float, float, float] | None,
) -> PatientDesign:
    day = dt.datetime(2024, 1, 15) + dt.timedelta(days=patient_index - 1)
    extra = tuple(_EXTENDED_LESIONS) if variant == "extended" else ()
    lesions = tuple(_CANONICAL_LESIONS) + extra
    if patient_index == 1:
        sex, birth, height, weight, dose = "M", "19600101", 1.75, 75.0, 370e6
        injection = day.replace(hour=10)
        uptake_s = 3600.0
    else:
        rng = np.random.default_rng([int(seed), int(patient_index)])
        sex = "M" if rng.random() < 0.5 else "F"
        birth = f"{int(rng.integers(1940, 1990))}0101"
        height = round(float(rng.uniform(1.55, 1.92)), 2)
        weight = round(float(rng.uniform(52.0, 105.0)), 1)
        dose = round(float(rng.uniform(250e6, 450e6)), -5)
        injection = day.replace(hour=9) + dt.timedelta(minutes=int(rng.integers(0, 150)))
        uptake_s = float(rng.integers(50 * 60, 80 * 60))
        lesions = tuple(_jitter_lesion(les, rng) for les in _CANONICAL_LESIONS)
        lesions += tuple(_jitter_lesion(les, rng) for les in extra)
    series = injection + dt.timedelta(seconds=uptake_s)
    return PatientDesign(
        patient_index=patient_index,
        seed=int(seed),
        size=size,
        patient_id=f"PHANTOM{patient_index:03d}",
        patient_name=f"Phantom^Patient{patient_index:03d}",
        sex=sex,
        birth_date=birth,
        height_m=height,
        weight_kg=weight,
        dose_bq=dose,
        half_life_s=HALF_LIFE_F18_S,
        study_datetime=injection - dt.timedelta(minutes=15),
        injection_datetime=injection,
        pet_series_datetime=series,
        ct_noncontrast_datetime=series - dt.timedelta(minutes=20),
        ct_contrast_datetime=series - dt.timedelta(minutes=18),
        lesions=lesions,
        variant=variant,
        contrast_shift_mm=shift,
    )


def _jitter_lesion(les: LesionDesign, rng: np.random.Generator) -> LesionDesign:
    """Shift a lesion by up to +-3 mm per axis and scale its SUV by 0.9..1.1; re-anchor it."""
    shift = rng.uniform(-3.0, 3.0, size=3)
    factor = float(rng.uniform(0.9, 1.1))
    centre = tuple(round(float(c + s), 3) for c, s in zip(les.centre_lps_mm, shift))
    out = replace(
        les,
        centre_lps_mm=centre,
        suv=round(les.suv * factor, 4),
        core_suv=round(les.core_suv * factor, 4),
    )
    if les.anchor is not None:
        out = _apply_anchor(out)
    return out


def _apply_anchor(les: LesionDesign) -> LesionDesign:
    """Slide the lesion along its anchor axis until the designed surface distance holds."""
    from scipy.optimize import brentq

    structure, target, axis = les.anchor  # type: ignore[misc]

    def moved(s: float) -> LesionDesign:
        c = list(les.centre_lps_mm)
        c[axis] = s
        return replace(les, centre_lps_mm=tuple(c))

    def g(s: float) -> float:
        return structure_distance(moved(s), structure) - target

    s0 = les.centre_lps_mm[axis]
    lo, hi = s0 - 15.0, s0 + 15.0
    if g(lo) * g(hi) > 0:
        raise RuntimeError(f"cannot anchor lesion {les.name} to {structure}: no sign change")
    s = brentq(g, lo, hi, xtol=1e-6)
    return moved(round(float(s), 6))


# --------------------------------------------------------------------------- grids
def ct_grid(size: str = "small") -> Grid:
    """CT grid (both phases): small 160x160x56 at 2.5x2.5x3 mm, full 512x512x112 at
    0.78125x0.78125x1.5 mm; centred on LPS (0, 0, 0), axial."""
    check_size(size)
    if size == "small":
        return _centred_grid((56, 160, 160), (2.5, 2.5, 3.0))
    return _centred_grid((112, 512, 512), (0.78125, 0.78125, 1.5))


def pet_grid(size: str = "small") -> Grid:
    """PET grid: 96x96x42 at 4 mm isotropic, centred on LPS (0, 0, 0) (same for both sizes)."""
    check_size(size)
    return _centred_grid((42, 96, 96), (4.0, 4.0, 4.0))


def _centred_grid(shape_zyx: tuple[int, int, int], spacing_xyz: tuple[float, float, float]) -> Grid:
    nz, ny, nx = shape_zyx
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip((nx, ny, nz), spacing_xyz))
    return Grid(shape_zyx, spacing_xyz, origin)


def grid_axes(grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates of the voxel centres along x, y, z (1-D, mm) of an axis-aligned grid."""
    if not grid.is_axis_aligned():
        raise ValueError("phantom grids are axis aligned")
    nz, ny, nx = grid.shape_zyx
    sx, sy, sz = grid.spacing_xyz_mm
    ox, oy, oz = grid.origin_lps_mm
    return ox + sx * np.arange(nx), oy + sy * np.arange(ny), oz + sz * np.arange(nz)


def grid_dict(grid: Grid) -> dict:
    """JSON-ready description of a grid."""
    return {
        "shape_zyx": list(grid.shape_zyx),
        "spacing_xyz_mm": list(grid.spacing_xyz_mm),
        "origin_lps_mm": list(grid.origin_lps_mm),
        "direction": list(grid.direction),
    }


# --------------------------------------------------------------------------- analytic geometry
def ellipsoid_signed_distance(points: np.ndarray, centre, semi_axes) -> np.ndarray:
    """Exact Euclidean distance from points to an axis-aligned ellipsoid (or ellipse) surface.

    Works in any dimension D (2 for an ellipse, 3 for an ellipsoid) by solving the Lagrange
    condition ``sum((e_i q_i / (t + e_i^2))^2) = 1`` for ``t`` by bisection (Eberly), on the
    monotone branch ``t > -min(e)^2``.

    Parameters
    ----------
    points : (N, D) array, mm.
    centre : (D,) mm.
    semi_axes : (D,) mm.

    Returns
    -------
    (N,) float array, mm; positive inside, negative outside.
    """
    p = np.atleast_2d(np.asarray(points, dtype=float))
    e = np.asarray(semi_axes, dtype=float)
    # Points on a symmetry plane are degenerate for the root bracket; moving them by 1e-6 mm
    # changes the distance by at most 1e-6 mm (the distance function is 1-Lipschitz).
    q = np.maximum(np.abs(p - np.asarray(centre, dtype=float)), 1e-6)
    inside = np.sum((q / e) ** 2, axis=1) <= 1.0
    k = int(np.argmin(e))
    emin = e[k]
    eq = e * q
    lo = -emin**2 + emin * q[:, k]
    hi = -emin**2 + np.sqrt(np.sum(eq**2, axis=1))
    e2 = e**2
    for _ in range(90):
        mid = 0.5 * (lo + hi)
        f = np.sum((eq / (mid[:, None] + e2)) ** 2, axis=1) - 1.0
        pos = f > 0
        lo = np.where(pos, mid, lo)
        hi = np.where(pos, hi, mid)
    t = 0.5 * (lo + hi)
    x = e2 * q / (t[:, None] + e2)
    d = np.linalg.norm(x - q, axis=1)
    return np.where(inside, d, -d)


def body_skin_depth(x, y) -> np.ndarray:
    """Signed in-plane distance (mm) from points to the body ellipse; positive inside the body.

    ``x`` and ``y`` are broadcastable arrays of LPS mm; the body is an elliptic cylinder along z.
    """
    xb, yb = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
    pts = np.stack([xb.ravel(), yb.ravel()], axis=1)
    d = ellipsoid_signed_distance(pts, (0.0, 0.0), BODY_SEMI_AXES_XY_MM)
    return d.reshape(xb.shape)


def _surface_points(les: LesionDesign, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Points (N, 3) on the lesion ellipsoid at polar angles ``u`` and azimuths ``v`` (rad)."""
    (cx, cy, cz), (a, b, c) = les.centre_lps_mm, les.semi_axes_mm
    su = np.sin(u)
    return np.stack([cx + a * su * np.cos(v), cy + b * su * np.sin(v), cz + c * np.cos(u)], axis=1)


def min_over_surface(
    les: LesionDesign, f: Callable[[np.ndarray], np.ndarray]
) -> tuple[float, np.ndarray]:
    """Minimum of a smooth function over the lesion surface.

    A 3-degree grid of (polar, azimuth) angles, then five zooms (x10 each) around the best
    sample, so the minimiser is located to ~1e-6 rad.

    Returns
    -------
    (value, point_lps_mm)
    """
    du = 3.0 * math.pi / 180.0
    u = np.arange(0.0, math.pi + du / 2, du)
    v = np.arange(0.0, 2.0 * math.pi, du)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    uu, vv = uu.ravel(), vv.ravel()
    vals = f(_surface_points(les, uu, vv))
    best = int(np.argmin(vals))
    bu, bv, step = uu[best], vv[best], du
    for _ in range(5):
        offs = np.linspace(-2.0 * step, 2.0 * step, 41)
        uu, vv = np.meshgrid(np.clip(bu + offs, 0.0, math.pi), bv + offs, indexing="ij")
        uu, vv = uu.ravel(), vv.ravel()
        vals = f(_surface_points(les, uu, vv))
        best = int(np.argmin(vals))
        bu, bv, step = uu[best], vv[best], step / 10.0
    pt = _surface_points(les, np.array([bu]), np.array([bv]))[0]
    return float(vals[best]), pt


def _aorta_distance_fn(pts: np.ndarray) -> np.ndarray:
    ax, ay = AORTA_CENTRE_XY_MM
    return np.hypot(pts[:, 0] - ax, pts[:, 1] - ay) - AORTA_RADIUS_MM


def _spine_distance_fn(pts: np.ndarray) -> np.ndarray:
    sx, sy = SPINE_CENTRE_XY_MM
    return np.hypot(pts[:, 0] - sx, pts[:, 1] - sy) - SPINE_RADIUS_MM


_ELLIPSOID_STRUCTURES = {
    "liver": LIVER,
    "spleen": SPLEEN,
    "lung_left": LUNG_LEFT,
    "lung_right": LUNG_RIGHT,
}


def structure_distance(les: LesionDesign, structure: str) -> float:
    """Analytic shortest distance (mm) between the lesion surface and a structure's surface.

    ``structure`` is ``"skin"`` (in-plane distance to the body ellipse, positive when the lesion is
    inside the body), ``"aorta"`` / ``"vertebral_column"`` (surface to surface, positive when
    apart, 0 when touching), or an organ ellipsoid ``"liver"``, ``"spleen"``, ``"lung_left"``,
    ``"lung_right"`` (signed: positive when the lesion is inside the organ, i.e. the depth
    below the capsule / pleura; 0 when touching it).

    ``"<structure>@centre"`` (e.g. ``"liver@centre"``) is the same signed distance measured from
    the lesion *centre* point instead of its surface (used to anchor ``liver_exophytic``).
    """
    if structure.endswith("@centre"):
        base = structure[: -len("@centre")]
        pt = np.asarray(les.centre_lps_mm, dtype=float)[None, :]
        if base == "skin":
            d = float(body_skin_depth(pt[:, 0], pt[:, 1])[0])
        elif base == "aorta":
            d = float(_aorta_distance_fn(pt)[0])
        elif base == "vertebral_column":
            d = float(_spine_distance_fn(pt)[0])
        elif base in _ELLIPSOID_STRUCTURES:
            d = float(_ELLIPSOID_STRUCTURES[base].signed_distance(pt)[0])
        else:
            raise ValueError(f"unknown structure {structure!r}")
        return 0.0 if abs(d) < 1e-6 else d
    if structure == "skin":
        fn = lambda p: body_skin_depth(p[:, 0], p[:, 1])  # noqa: E731
    elif structure == "aorta":
        fn = _aorta_distance_fn
    elif structure == "vertebral_column":
        fn = _spine_distance_fn
    elif structure in _ELLIPSOID_STRUCTURES:
        shape = _ELLIPSOID_STRUCTURES[structure]
        fn = shape.signed_distance
    else:
        raise ValueError(f"unknown structure {structure!r}")
    d = min_over_surface(les, fn)[0]
    return 0.0 if abs(d) < 1e-6 else d  # the computation is accurate to ~1e-6 mm


# ------------------------------------------------------------------ extended analytic truth
def _circle_overlap_area(r1: float, r2: float, d: float) -> float:
    """Area of the intersection of two discs of radii r1, r2 whose centres are d apart."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return math.pi * min(r1, r2) ** 2
    a1 = r1**2 * math.acos(np.clip((d**2 + r1**2 - r2**2) / (2 * d * r1), -1.0, 1.0))
    a2 = r2**2 * math.acos(np.clip((d**2 + r2**2 - r1**2) / (2 * d * r2), -1.0, 1.0))
    k = (-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)
    return a1 + a2 - 0.5 * math.sqrt(max(k, 0.0))


def _shell_volume_mm3(les: LesionDesign) -> float:
    """Volume of a lesion ellipsoid with circular axial sections minus the aortic lumen.

    Integrates (section area - disc-disc overlap with the aorta) over z (scipy quad, ~1e-9).
    """
    from scipy.integrate import quad

    (cx, cy, cz), (a, b, c) = les.centre_lps_mm, les.semi_axes_mm
    if abs(a - b) > 1e-9:
        raise ValueError(f"{les.name}: aorta exclusion needs circular axial sections (a == b)")
    ax, ay = AORTA_CENTRE_XY_MM
    d = math.hypot(cx - ax, cy - ay)

    def area(z: float) -> float:
        s = 1.0 - ((z - cz) / c) ** 2
        if s <= 0:
            return 0.0
        r = a * math.sqrt(s)
        return math.pi * r * r - _circle_overlap_area(r, AORTA_RADIUS_MM, d)

    val, _ = quad(area, cz - c, cz + c, epsabs=1e-6, epsrel=1e-10, limit=200)
    return float(val)


# --------------------------------------------------------------------------- labelling
def classify_tissue(x, y, z, skin_depth: np.ndarray | None = None) -> np.ndarray:
    """Tissue class (:class:`Tissue` values, uint8) at broadcastable LPS coordinates (mm).

    Lesions are not included. ``skin_depth`` (from :func:`body_skin_depth` for the broadcast of
    ``x`` and ``y``) may be passed to avoid recomputing it.
    """
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    if skin_depth is None:
        skin_depth = body_skin_depth(x, y)
    out = np.zeros(shape, dtype=np.uint8)

    def paint(mask: np.ndarray, value: Tissue) -> None:
        out[np.broadcast_to(mask, shape)] = int(value)

    (tx0, tx1), (ty0, ty1) = TABLE_X_RANGE_MM, TABLE_Y_RANGE_MM
    paint((x >= tx0) & (x <= tx1) & (y >= ty0) & (y <= ty1), Tissue.TABLE)
    body = skin_depth >= 0.0
    paint(body, Tissue.FAT)
    paint(skin_depth >= FAT_THICKNESS_MM, Tissue.SOFT_TISSUE)
    paint(LUNG_LEFT.contains(x, y, z) & body, Tissue.LUNG_LEFT)
    paint(LUNG_RIGHT.contains(x, y, z) & body, Tissue.LUNG_RIGHT)
    paint(LIVER.contains(x, y, z) & body, Tissue.LIVER)
    paint(SPLEEN.contains(x, y, z) & body, Tissue.SPLEEN)
    ax, ay = AORTA_CENTRE_XY_MM
    paint((x - ax) ** 2 + (y - ay) ** 2 <= AORTA_RADIUS_MM**2, Tissue.AORTA)
    sx, sy = SPINE_CENTRE_XY_MM
    paint((x - sx) ** 2 + (y - sy) ** 2 <= SPINE_RADIUS_MM**2, Tissue.VERTEBRAL_COLUMN)
    return out


def label_lesions(
    x, y, z, lesions: Sequence[LesionDesign]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lesion labels at broadcastable LPS coordinates (mm).

    Returns
    -------
    labels : uint8 array
        k (1-based) where the point is inside lesion k, else 0.
    core : bool array
        True inside a necrotic core.
    overlap : bool array
        True where more than one lesion claims the point (a design error).
    """
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    labels = np.zeros(shape, dtype=np.uint8)
    core = np.zeros(shape, dtype=bool)
    overlap = np.zeros(shape, dtype=bool)
    for k, les in enumerate(lesions, start=1):
        m = np.broadcast_to(les.contains(x, y, z), shape)
        overlap |= m & (labels > 0)
        labels[m] = k
        if les.core is not None:
            core |= np.broadcast_to(les.core.contains(x, y, z), shape)
    return labels, core, overlap
