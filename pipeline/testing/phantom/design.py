"""Ground-truth PET/CT phantom: analytic anatomy and lesions, written as real DICOM.

The phantom is part of the product: users validate an installation by running the pipeline on it,
and every test of the package is built on it. Everything in it is analytic, so the truth is exact.

Frames and units
----------------
* Coordinates are millimetres in DICOM LPS (x to the patient's left, y posterior, z superior).
  The patient lies supine on the table, so the table is posterior (+y).
* Arrays are indexed ``(z, y, x)`` (see :mod:`pipeline.geometry`); grids are axial and axis
  aligned (ImageOrientationPatient 1,0,0,0,1,0).
* CT values are HU, PET values SUVbw (body weight) in the arrays and Bq/mL in the DICOM files.
* A voxel belongs to a structure when its *centre* lies inside (or on) the structure's analytic
  surface; CT and PET are sampled at their own voxel centres, with no blur. The CT has Gaussian
  noise (sigma 8 HU), the PET has none.

Anatomy (analytic, LPS mm; the body axis is z)
----------------------------------------------
============================ ================================================ ========== =======
structure                    shape                                            HU nc / ce SUV
============================ ================================================ ========== =======
air                          outside everything                               -1000      0
table                        slab y in [130, 140], x in [-200, 200]           300        0
body (subcutaneous fat)      elliptic cylinder, semi-axes 170 (x), 120 (y);   -100       0.5
                             the outer 12 mm (exact in-plane offset of the
                             ellipse)
soft tissue / muscle         body deeper than 12 mm                           40         1.0
lungs                        ellipsoids centre (+-80, 10, 50), semi-axes      -850       0.4
                             (55, 75, 50); +x is ``lung_left``
liver                        ellipsoid centre (-70, 0, -30), semi-axes        55 / 110   2.0
                             (80, 70, 60); wins over lung (diaphragm)
spleen                       ellipsoid centre (95, 40, -30), semi-axes        45 / 120   1.8
                             (35, 30, 45); wins over lung
aorta                        cylinder radius 12 at (x=20, y=40)               40 / 250   1.6
vertebral column             cylinder radius 18 at (x=0, y=75)                700        1.2
============================ ================================================ ========== =======

Later rows win where structures overlap (the aorta crosses the medial edge of the left lung:
the aorta wins). Organ masks do not depend on lesions: a liver lesion lies inside the liver mask.

Lesions (canonical design, patient 1)
-------------------------------------
=================== ======================= =============== ========== ============= =============
name                centre LPS mm           semi-axes mm    SUV        HU nc / ce    purpose
=================== ======================= =============== ========== ============= =============
soft_tissue_flank   (120, -60, -45)         12 (sphere)     8.0        45 / 95       superficial
                                                                                     soft tissue
node_axillary_R     (-124, -64, 55)         (10, 8, 10)     7.0        40 / 80       superficial
                                                                                     lymph node
liver_deep          (-70, 0, -30)           15              6.0        45 / 140      deep liver
liver_subcapsular   (-139.985713, 0, -31)   10              6.0        45 / 140      touches the
                                                                                     capsule
lung_nodule_tiny    (80, 10, 55)            3.5             1.5        30 / 40       < 10 mm
necrotic_mass       (70, -40, -50)          30, core r 20   5.0 / 0.8  40 / 80,      > 50 mm,
                                                                       core 15 / 15  necrotic core
node_paraaortic     (44, 40, -10)           12              6.5        40 / 85       abuts the
                                                                                     aorta
lung_subpleural     (-124, 10, 50)          8               4.0        30 / 50       3 mm from the
                                                                                     pleura
=================== ======================= =============== ========== ============= =============

Changes from the first draft of the design, and why:

* ``node_axillary_R`` moved from (-130, -70, 55) to (-124, -64, 55): at the drafted centre it
  stuck 3.4 mm out of the skin. Its analytic skin depth is now 5.05 mm (jittered patients are
  re-anchored to 5.0 mm).
* ``liver_subcapsular`` moved from (-140, 0, -30) to z = -31 with x re-solved so that it stays
  internally tangent to the liver capsule (distance 0): at the drafted centre every CT voxel
  centre sat on a half-voxel offset and the voxelised volume was 7.4 % above the analytic
  volume; it is now 2.1 % above.

The test-suite checks that lesions do not overlap each other, the spine or the table, that each
lies in its intended tissue, that ``node_paraaortic`` touches the aorta (surface distance 0),
that ``liver_subcapsular`` touches the liver capsule (distance 0) and that ``lung_subpleural`` is
3.0 mm from the lung surface. Analytic skin depths: ``soft_tissue_flank`` 7.65 mm,
``node_axillary_R`` 5.05 mm (both reach into the 12 mm subcutaneous fat, as superficial
targets do).

Patients 2..N jitter every lesion centre by up to +-3 mm per axis and its SUV by up to +-10 %
(seeded); lesions that must touch a structure (``anchor``) are then slid back along one axis until
the designed distance holds again. Weight, height, dose and times also vary. Patient 1 is always
the canonical design; the seed then only changes the CT noise and the UIDs.

Extended variant (``variant="extended"``)
-----------------------------------------
The 8 lesions above (labels 1-8, identical) plus, as labels 9-12:

===================== ====================== ============ ===== ========== ===================
name                  centre LPS mm          semi-axes mm SUV   HU nc / ce purpose
===================== ====================== ============ ===== ========== ===================
aorta_encasing        (25, 27.5, -67.5)      (23, 23, 11) 6.0   30 / 70    wraps the aorta:
                                                                           ellipsoid minus the
                                                                           aortic lumen; 258
                                                                           deg of the wall
                                                                           (voxels: 243 deg)
liver_exophytic       (-70, -67.491162, -40) 12           7.0   45 / 130   centre 1.5 mm inside
                                                                           the anterior
                                                                           capsule: 44 %
                                                                           outside the liver
lung_deep             (-73.75, -3.75, 67.5)  10           4.5   30 / 50    20.6 mm below the
                                                                           pleura; 46.1 mm of
                                                                           aerated lung on the
                                                                           shortest skin path
noncontrast_invisible (-95, 25, -50)         12           5.0   55 / 140   isodense to the
                                                                           liver without
                                                                           contrast
===================== ====================== ============ ===== ========== ===================

* ``aorta_encasing`` has ``exclude_aorta``: a point belongs to it when inside its ellipsoid and
  outside the aortic cylinder, so the lesion never covers the lumen. Its ``centre_lps_mm`` (the
  ellipsoid centre) lies in the lesion only 1.5 mm from the aortic wall; its voxelized centroid
  is (26.6, 23.4, -67.5). It is 12.7 mm from the vertebral column and 9.3 mm from the liver
  (at least 5 mm in jittered patients), and covers > 195 degrees of the wall for any jitter.
* ``liver_exophytic`` is anchored to the depth of its *centre* below the liver surface
  (``"liver@centre"``, :data:`EXOPHYTIC_CENTRE_DEPTH_MM`), so jittered patients keep 40-50 %
  outside. The liver organ mask is not extended to the exophytic part.
* ``lung_deep``: the nearest skin point to its centre is anterolateral, (-139.4, -68.7, 67.5);
  the straight path crosses fat, chest wall soft tissue and 46.1 mm of right lung.
* Host tissue (for the designed CNR) is a lesion's first ``host_tissues`` entry. Note that in
  the standard design several soft-tissue lesions (node_axillary_R, necrotic_mass rim,
  node_paraaortic) have the soft-tissue HU (40) without contrast: their designed non-contrast
  CNR is 0 too.
* Jittered extended patients draw the standard lesions first from the same random stream, so
  their first 8 lesions and demographics equal the standard patient's.

Organ masks in other formats (``organ_formats``)
------------------------------------------------
``"seg"``: ``SEG_organs.dcm`` (default for both variants). ``"rtstruct"``:
``RTSTRUCT_organs.dcm`` on the non-contrast CT, ROIs :data:`ORGAN_ROI_NAMES` (Liver, Spleen,
Lung_L, Lung_R, Aorta, Spine), RTROIInterpretedType ORGAN, contours traced from the organ masks
(every outline and hole a separate CLOSED_PLANAR contour; an even-odd fill at voxel centres gives
the masks back exactly). ``"totalseg"``: ``totalseg/`` with one binary uint8 NIfTI per
:data:`TOTALSEG_STRUCTURES` entry (TotalSegmentator v2 names; lobes and vertebrae are axial slabs),
non-contrast CT grid, RAS affine, plus ``README.txt``. Default: ``("seg",)`` for the standard
variant (the archive then holds exactly one RTSTRUCT), all three for the extended one.

Shifted contrast CT (``contrast_shift_mm``)
-------------------------------------------
The contrast CT keeps its grid but shows the patient translated by (dx, dy, dz) mm, in a second
FrameOfReferenceUID. ``SEG_lesions.dcm``, ``RTSTRUCT_lesions.dcm`` and ``labelmap/`` are drawn
on the contrast CT, so they are shifted and in that frame; ``SEG_lesions_noncontrast.dcm`` holds
the unshifted lesions on the non-contrast CT, in the frame of the PET and the organ masks. All
``centre_lps_mm`` and voxel counts in truth are in the non-contrast frame
(``centre_lps_mm_contrast``, ``voxel_count_contrast`` for the contrast CT).

truth.json keys added for the anatomy and biomarker work (every lesion, both variants)
---------------------------------------------------------------------------------------
``uniform``, ``excludes_aortic_lumen``, ``necrotic_core_fraction_voxelized``,
``suv_mean_voxelized``, ``mtv41_ml_voxelized`` (PET voxels with centre in the lesion and SUV >=
41 % of the lesion's SUVmax, x 0.064 mL; the PET has no blur, so background never counts),
``mtv25_ml_voxelized`` (same with SUV >= 2.5), ``designed_enhancement_hu``,
``designed_core_enhancement_hu``, ``host_tissue``, ``host_hu_noncontrast``, ``host_hu_contrast``,
``designed_cnr_noncontrast`` / ``designed_cnr_contrast`` (|lesion HU - host HU| / 8),
``aorta_contact_angle_deg`` (voxelized, :func:`aorta_contact_angle_voxelized`),
``aorta_contact_angle_deg_analytic`` (:func:`aorta_contact_angle_analytic`; 0 for a tangent
lesion), ``relation_to_aorta`` (``encasing`` / ``abutting`` / ``none``, :func:`aorta_relation`),
``exophytic_fraction`` (voxelized, fraction of lesion voxels outside the liver mask) and
``exophytic_fraction_analytic`` (liver lesions, else null), the straight skin path to the centre
(:func:`skin_path`): ``path_entry_lps_mm``, ``path_direction_lps``, ``path_length_analytic_mm``
(entry to centre; skin depth + radius for a sphere), ``path_length_to_surface_mm``,
``path_surface_point_lps_mm``, ``aerated_lung_path_mm_analytic`` (lung along entry -> lesion
surface, :func:`aerated_lung_length_mm`), ``path_tissues``, ``path_lesions_crossed``; and
``centre_lps_mm_contrast``, ``voxel_count_contrast``. ``aorta_distance_mm`` is the analytic
surface-to-surface distance (0 when touching, and for ``aorta_encasing``);
``liver_capsule_distance_mm`` is 0 for a lesion crossing the capsule. Top level: ``variant``,
``organ_formats``, ``contrast_shift_mm``, ``contrast_frame_of_reference_uid`` and ``files``
(what each file is, which series it references, in which frame).

Public API
----------
:func:`generate_patient`, :func:`generate_cohort`, :func:`lesion_designs`,
:func:`patient_design`, :func:`phantom_arrays` (arrays without files), :func:`truth_dict`.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError
from pipeline.geometry import Grid

log = logging.getLogger(__name__)

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


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ConfigError(
            f"unknown phantom size {size!r}", hint=f"use one of {', '.join(SIZES)}"
        )


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(
            f"unknown phantom variant {variant!r}", hint=f"use one of {', '.join(VARIANTS)}"
        )


def _check_shift(shift) -> tuple[float, float, float] | None:
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


def _check_organ_formats(organ_formats, variant: str) -> tuple[str, ...]:
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
    _check_size(size)
    _check_variant(variant)
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
    _check_size(size)
    _check_variant(variant)
    shift = _check_shift(contrast_shift_mm)
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
    _check_size(size)
    if size == "small":
        return _centred_grid((56, 160, 160), (2.5, 2.5, 3.0))
    return _centred_grid((112, 512, 512), (0.78125, 0.78125, 1.5))


def pet_grid(size: str = "small") -> Grid:
    """PET grid: 96x96x42 at 4 mm isotropic, centred on LPS (0, 0, 0) (same for both sizes)."""
    _check_size(size)
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


def ellipse_closest_point(px: float, py: float, a: float, b: float) -> tuple[float, float]:
    """Closest point (x, y) of the origin-centred ellipse (semi-axes a, b) to (px, py).

    Same Lagrange bisection as :func:`ellipsoid_signed_distance` (Eberly), in 2-D. A point on
    the major axis close enough to the centre (``|p| < (a^2 - b^2) / a``) has two mirror-image
    closest points; the one with negative minor coordinate is returned (for the body ellipse,
    the anterior one: a supine patient is approached from the front).
    """
    if a > b and abs(py) < 1e-9 and abs(px) < (a * a - b * b) / a:
        x = a * a * px / (a * a - b * b)
        return float(x), float(-b * math.sqrt(max(0.0, 1.0 - (x / a) ** 2)))
    if b > a and abs(px) < 1e-9 and abs(py) < (b * b - a * a) / b:
        y = b * b * py / (b * b - a * a)
        return float(-a * math.sqrt(max(0.0, 1.0 - (y / b) ** 2))), float(y)
    e = np.array([a, b], dtype=float)
    sgn = np.where(np.array([px, py]) < 0, -1.0, 1.0)
    q = np.maximum(np.abs(np.array([px, py], dtype=float)), 1e-9)
    k = int(np.argmin(e))
    emin = e[k]
    eq = e * q
    lo = -emin**2 + emin * q[k]
    hi = -emin**2 + float(np.sqrt(np.sum(eq**2)))
    e2 = e**2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        f = float(np.sum((eq / (mid + e2)) ** 2)) - 1.0
        if f > 0:
            lo = mid
        else:
            hi = mid
    t = 0.5 * (lo + hi)
    x = e2 * q / (t + e2)
    return float(sgn[0] * x[0]), float(sgn[1] * x[1])


def skin_path(les: LesionDesign) -> dict:
    """The shortest straight path from the skin to the lesion centre.

    The skin is the elliptic cylinder of the body, so the nearest skin point to the centre lies
    in the centre's axial plane: ``entry`` = closest point of the body ellipse to (cx, cy), at
    z = cz. Direction: from the entry towards the centre. The lesion surface is crossed
    ``1 / sqrt(sum((u_i / a_i)^2))`` before the centre (ray-ellipsoid intersection).

    Returns
    -------
    dict with ``entry`` (3,), ``direction`` (3,) unit, ``length_mm`` (entry -> centre),
    ``surface_point`` (3,), ``length_to_surface_mm`` (entry -> lesion surface).
    """
    c = np.asarray(les.centre_lps_mm, dtype=float)
    ex, ey = ellipse_closest_point(c[0], c[1], *BODY_SEMI_AXES_XY_MM)
    entry = np.array([ex, ey, c[2]])
    v = c - entry
    length = float(np.linalg.norm(v))
    u = v / length
    t_in = 1.0 / math.sqrt(float(np.sum((u / np.asarray(les.semi_axes_mm)) ** 2)))
    surface = c - t_in * u
    return {
        "entry": entry,
        "direction": u,
        "length_mm": length,
        "surface_point": surface,
        "length_to_surface_mm": length - t_in,
    }


def _ellipsoid_interval(p0, p1, shape: Ellipsoid) -> tuple[float, float] | None:
    """Parameter interval [t0, t1] within [0, 1] of the segment p0 -> p1 inside an ellipsoid."""
    c, e = np.asarray(shape.centre_lps_mm), np.asarray(shape.semi_axes_mm)
    o, d = (np.asarray(p0) - c) / e, (np.asarray(p1) - np.asarray(p0)) / e
    return _quadratic_interval(float(d @ d), 2.0 * float(o @ d), float(o @ o) - 1.0)


def _cylinder_interval(p0, p1, centre_xy, radius: float) -> tuple[float, float] | None:
    """Parameter interval within [0, 1] of the segment inside a z-aligned circular cylinder."""
    o = np.asarray(p0[:2], dtype=float) - np.asarray(centre_xy)
    d = np.asarray(p1[:2], dtype=float) - np.asarray(p0[:2], dtype=float)
    return _quadratic_interval(float(d @ d), 2.0 * float(o @ d), float(o @ o) - radius**2)


def _quadratic_interval(a: float, b: float, c: float) -> tuple[float, float] | None:
    """Where a t^2 + b t + c <= 0 within [0, 1] (a >= 0), as one interval or None."""
    if a < 1e-15:
        return (0.0, 1.0) if c <= 0 else None
    disc = b * b - 4 * a * c
    if disc <= 0:
        return None
    r = math.sqrt(disc)
    t0, t1 = max((-b - r) / (2 * a), 0.0), min((-b + r) / (2 * a), 1.0)
    return (t0, t1) if t1 > t0 else None


def _union(intervals):
    out: list[list[float]] = []
    for a, b in sorted(i for i in intervals if i is not None):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _subtract(base, cut):
    out = []
    for a, b in base:
        pieces = [(a, b)]
        for c0, c1 in cut:
            nxt = []
            for p0, p1 in pieces:
                if c1 <= p0 or c0 >= p1:
                    nxt.append((p0, p1))
                    continue
                if c0 > p0:
                    nxt.append((p0, c0))
                if c1 < p1:
                    nxt.append((c1, p1))
            pieces = nxt
        out.extend(pieces)
    return out


def aerated_lung_length_mm(p0, p1) -> float:
    """Length (mm) of the segment p0 -> p1 lying in aerated lung, analytically.

    Lung tissue = (left lung ellipsoid U right lung ellipsoid) minus the structures painted over
    it (liver, spleen, aorta, vertebral column; see :func:`classify_tissue`). Intersections are
    exact roots of quadratics. The segment must lie inside the body (true for skin paths).
    """
    lungs = _union([_ellipsoid_interval(p0, p1, LUNG_LEFT),
                    _ellipsoid_interval(p0, p1, LUNG_RIGHT)])
    cut = _union([
        _ellipsoid_interval(p0, p1, LIVER),
        _ellipsoid_interval(p0, p1, SPLEEN),
        _cylinder_interval(p0, p1, AORTA_CENTRE_XY_MM, AORTA_RADIUS_MM),
        _cylinder_interval(p0, p1, SPINE_CENTRE_XY_MM, SPINE_RADIUS_MM),
    ])
    length = float(np.linalg.norm(np.subtract(p1, p0)))
    return float(sum(b - a for a, b in _subtract(lungs, cut)) * length)


def path_crossings(p0, p1, lesions: Sequence[LesionDesign], own: int, step_mm: float = 0.05):
    """Tissues and other lesions met along the segment p0 -> p1 (dense sampling, step 0.05 mm,
    from 1 micrometre after p0, which is on the skin for skin paths).

    Returns
    -------
    tissues : list of str
        Tissue names (lower case) in the order met from p0, consecutive repeats merged.
    lesions : list of str
        Names of other lesions (not label ``own``) the segment enters.
    """
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0))
    n = max(2, math.ceil(length / step_mm) + 1)
    t = np.linspace(min(1e-3 / length, 0.5), 1.0, n)  # start 1 um inside: p0 is on the skin
    pts = p0[None, :] + t[:, None] * (p1 - p0)[None, :]
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    tissue = classify_tissue(x, y, z)
    labels, _, _ = label_lesions(x, y, z, lesions)
    names = []
    for v in tissue:
        nm = Tissue(int(v)).name.lower()
        if not names or names[-1] != nm:
            names.append(nm)
    others = [lesions[int(k) - 1].name for k in dict.fromkeys(labels.tolist()) if k and k != own]
    return names, others


def aorta_contact_angle_analytic(les: LesionDesign, n: int = 360_000) -> float:
    """Degrees of the aortic circumference covered by the lesion at its widest level (z = cz).

    The arc of the aorta circle (radius :data:`AORTA_RADIUS_MM`) lying inside or on the lesion's
    axial cross-section (the outer ellipse), sampled at ``n`` angles. 0 for a lesion tangent to
    the aorta (point contact) or apart from it.
    """
    (cx, cy, _), (a, b, _) = les.centre_lps_mm, les.semi_axes_mm
    ax, ay = AORTA_CENTRE_XY_MM
    if math.hypot(cx - ax, cy - ay) > max(a, b) + AORTA_RADIUS_MM:
        return 0.0
    th = (np.arange(n) + 0.5) * (2.0 * math.pi / n)
    x = ax + AORTA_RADIUS_MM * np.cos(th)
    y = ay + AORTA_RADIUS_MM * np.sin(th)
    inside = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0 + 1e-12
    return float(inside.sum()) * 360.0 / n


def aorta_relation(les: LesionDesign) -> str:
    """``encasing`` (analytic contact angle > 180 degrees), ``abutting`` (surfaces touch,
    angle <= 180) or ``none``."""
    if aorta_contact_angle_analytic(les) > 180.0:
        return "encasing"
    if les.exclude_aorta or abs(structure_distance(les, "aorta")) < 1e-6:
        return "abutting"
    return "none"


def exophytic_fraction_analytic(les: LesionDesign, step_mm: float = 0.2) -> float:
    """Fraction of the lesion volume outside the liver ellipsoid (regular 0.2 mm sampling)."""
    (cx, cy, cz), (a, b, c) = les.centre_lps_mm, les.semi_axes_mm
    axes_ = [np.arange(-r + step_mm / 2, r, step_mm) for r in (a, b, c)]
    x = cx + axes_[0][None, None, :]
    y = cy + axes_[1][None, :, None]
    z = cz + axes_[2][:, None, None]
    m = les.contains(x, y, z)
    out = m & ~LIVER.contains(x, y, z)
    return float(out.sum()) / float(m.sum())



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


def _label_grid(grid: Grid, lesions: Sequence[LesionDesign], shift=None):
    """Tissue, lesion, core and overlap arrays on a grid, in z-chunks of ~4 M voxels.

    ``shift`` (dx, dy, dz mm): the patient is translated by it, i.e. voxel centre ``p`` shows
    the anatomy at ``p - shift`` (the shifted contrast CT).
    """
    xs, ys, zs = grid_axes(grid)
    if shift is not None:
        xs, ys, zs = xs - shift[0], ys - shift[1], zs - shift[2]
    x = xs[None, None, :]
    y = ys[None, :, None]
    skin = body_skin_depth(x, y)  # (1, ny, nx)
    nz, ny, nx = grid.shape_zyx
    tissue = np.empty(grid.shape_zyx, dtype=np.uint8)
    labels = np.empty(grid.shape_zyx, dtype=np.uint8)
    core = np.empty(grid.shape_zyx, dtype=bool)
    overlap = np.empty(grid.shape_zyx, dtype=bool)
    step = max(1, int(4_000_000 // (ny * nx)))
    for z0 in range(0, nz, step):
        z = zs[z0 : z0 + step, None, None]
        tissue[z0 : z0 + step] = classify_tissue(x, y, z, skin)
        lab, cor, ovl = label_lesions(x, y, z, lesions)
        labels[z0 : z0 + step] = lab
        core[z0 : z0 + step] = cor
        overlap[z0 : z0 + step] = ovl
    return tissue, labels, core, overlap


# --------------------------------------------------------------------------- arrays
@dataclass(frozen=True, eq=False)
class PhantomArrays:
    """All phantom images of one patient, without files.

    Attributes
    ----------
    design : PatientDesign
    ct_grid, pet_grid : Grid
        LPS geometry of the CT (both phases) and the PET.
    ct_noncontrast_hu, ct_contrast_hu : (z, y, x) float32
        HU with noise, rounded to integers exactly as stored in the DICOM files.
    pet_suv : (z, y, x) float32
        Exact SUVbw at PET voxel centres (before int16 storage).
    tissue_labels : (z, y, x) uint8 on the CT grid
        :class:`Tissue` classes without lesions.
    lesion_labels : (z, y, x) uint8 on the CT grid
        k = ``design.lesions[k-1]``, 0 = background.
    lesion_core : (z, y, x) bool on the CT grid
        Necrotic core voxels.
    pet_tissue_labels, pet_lesion_labels, pet_lesion_core : same on the PET grid.
    contrast_shift_mm : (dx, dy, dz) or None
        Rigid offset of the patient in the contrast CT.
    contrast_tissue_labels, contrast_lesion_labels, contrast_lesion_core : arrays or None
        When shifted: the labels of the contrast CT (same grid, shifted content); else None
        (use the properties ``*_contrast``, which fall back to the unshifted arrays).
    """

    design: PatientDesign
    ct_grid: Grid
    pet_grid: Grid
    ct_noncontrast_hu: np.ndarray
    ct_contrast_hu: np.ndarray
    pet_suv: np.ndarray
    tissue_labels: np.ndarray
    lesion_labels: np.ndarray
    lesion_core: np.ndarray
    pet_tissue_labels: np.ndarray
    pet_lesion_labels: np.ndarray
    pet_lesion_core: np.ndarray
    contrast_shift_mm: tuple[float, float, float] | None = None
    contrast_tissue_labels: np.ndarray | None = None
    contrast_lesion_labels: np.ndarray | None = None
    contrast_lesion_core: np.ndarray | None = None

    @property
    def tissue_labels_contrast(self) -> np.ndarray:
        """Tissue labels of the contrast CT (shifted content when ``contrast_shift_mm``)."""
        return self.tissue_labels if self.contrast_tissue_labels is None else (
            self.contrast_tissue_labels)

    @property
    def lesion_labels_contrast(self) -> np.ndarray:
        """Lesion labels of the contrast CT (shifted content when ``contrast_shift_mm``)."""
        return self.lesion_labels if self.contrast_lesion_labels is None else (
            self.contrast_lesion_labels)

    @property
    def lesion_names(self) -> tuple[str, ...]:
        """Lesion names in label order."""
        return tuple(les.name for les in self.design.lesions)

    @property
    def organ_labels(self) -> np.ndarray:
        """(z, y, x) uint8 on the CT grid: k = ``ORGAN_NAMES[k-1]`` (lesions included)."""
        lut = np.zeros(len(Tissue), dtype=np.uint8)
        for k, (_, tissue, _, _) in enumerate(ORGANS, start=1):
            lut[int(tissue)] = k
        return lut[self.tissue_labels]

    def organ_mask(self, name: str) -> np.ndarray:
        """Boolean CT-grid mask of organ ``name`` (one of :data:`ORGAN_NAMES`)."""
        tissue = dict((o[0], o[1]) for o in ORGANS)[name]
        return self.tissue_labels == int(tissue)

    def totalseg_masks(self) -> dict[str, np.ndarray]:
        """Boolean CT-grid masks of :data:`TOTALSEG_STRUCTURES` (files of ``totalseg/``)."""
        zs = grid_axes(self.ct_grid)[2]
        out = {}
        for name, organ, z0, z1 in TOTALSEG_STRUCTURES:
            in_slab = (zs >= z0) & (zs < z1)
            out[name] = self.organ_mask(organ) & in_slab[:, None, None]
        return out

    @property
    def body_mask(self) -> np.ndarray:
        """Boolean CT-grid mask of the patient body (no air, no table)."""
        return (self.tissue_labels != Tissue.AIR) & (self.tissue_labels != Tissue.TABLE)

    def pet_activity_bqml(self) -> np.ndarray:
        """Exact PET activity concentration, Bq/mL decay-corrected to SeriesTime (float64)."""
        return self.pet_suv.astype(np.float64) / self.design.suvbw_factor


def _value_luts(lesions: Sequence[LesionDesign], column: int):
    """Lookup tables (tissue, lesion, core) for column 0 = HU nc, 1 = HU ce, 2 = SUV."""
    tissue = np.array([TISSUE_VALUES[t][column] for t in Tissue], dtype=np.float32)
    les_vals = [np.nan] + [(l.hu_noncontrast, l.hu_contrast, l.suv)[column] for l in lesions]
    core_vals = [np.nan] + [
        (l.core_hu_noncontrast, l.core_hu_contrast, l.core_suv)[column] for l in lesions
    ]
    return tissue, np.array(les_vals, np.float32), np.array(core_vals, np.float32)


def _render(tissue, labels, core, lesions, column: int) -> np.ndarray:
    t_lut, l_lut, c_lut = _value_luts(lesions, column)
    out = t_lut[tissue]
    m = labels > 0
    out[m] = l_lut[labels[m]]
    mc = core & m
    out[mc] = c_lut[labels[mc]]
    return out


def phantom_arrays(
    size: str = "small",
    patient_index: int = 1,
    seed: int = 0,
    variant: str = "standard",
    contrast_shift_mm: tuple[float, float, float] | None = None,
) -> PhantomArrays:
    """Build every phantom image of one patient in memory.

    Parameters
    ----------
    size : {"small", "full"}
    patient_index : int
        1 = canonical design.
    seed : int
        Cohort seed (CT noise, jitter of patients >= 2).
    variant : {"standard", "extended"}
        See :func:`lesion_designs`.
    contrast_shift_mm : (dx, dy, dz) mm, optional
        The contrast CT shows the patient translated by this offset (same grid, so voxel ``p``
        of the contrast CT shows the anatomy at ``p - shift``); everything else is unshifted.

    Returns
    -------
    PhantomArrays

    Raises
    ------
    RuntimeError
        If lesions overlap each other or leave their intended tissue (a design error).
    """
    design = patient_design(patient_index, seed, size, variant, contrast_shift_mm)
    shift = design.contrast_shift_mm
    cg, pg = ct_grid(size), pet_grid(size)
    lesions = design.lesions
    tissue, labels, core, overlap = _label_grid(cg, lesions)
    if overlap.any():
        raise RuntimeError(f"phantom lesions overlap in {int(overlap.sum())} CT voxels")
    _check_hosts(tissue, labels, lesions)
    p_tissue, p_labels, p_core, p_overlap = _label_grid(pg, lesions)
    if p_overlap.any():
        raise RuntimeError("phantom lesions overlap on the PET grid")
    c_tissue, c_labels, c_core = tissue, labels, core
    if shift is not None:
        c_tissue, c_labels, c_core, _ = _label_grid(cg, lesions, shift)

    cts = []
    for phase, column in ((0, 0), (1, 1)):
        if phase == 0:
            clean = _render(tissue, labels, core, lesions, column)
        else:
            clean = _render(c_tissue, c_labels, c_core, lesions, column)
        rng = np.random.default_rng([int(seed), int(patient_index), 1000 + phase])
        noise = rng.standard_normal(cg.shape_zyx, dtype=np.float32) * CT_NOISE_SIGMA_HU
        hu = np.clip(np.rint(clean + noise), -1024, 3071).astype(np.float32)
        cts.append(hu)
    suv = _render(p_tissue, p_labels, p_core, lesions, 2).astype(np.float32)
    return PhantomArrays(
        design=design,
        ct_grid=cg,
        pet_grid=pg,
        ct_noncontrast_hu=cts[0],
        ct_contrast_hu=cts[1],
        pet_suv=suv,
        tissue_labels=tissue,
        lesion_labels=labels,
        lesion_core=core,
        pet_tissue_labels=p_tissue,
        pet_lesion_labels=p_labels,
        pet_lesion_core=p_core,
        contrast_shift_mm=shift,
        contrast_tissue_labels=c_tissue if shift is not None else None,
        contrast_lesion_labels=c_labels if shift is not None else None,
        contrast_lesion_core=c_core if shift is not None else None,
    )


def _check_hosts(tissue: np.ndarray, labels: np.ndarray, lesions: Sequence[LesionDesign]) -> None:
    for k, les in enumerate(lesions, start=1):
        under = np.unique(tissue[labels == k])
        allowed = {int(Tissue[name]) for name in les.host_tissues}
        bad = [Tissue(int(t)).name for t in under if int(t) not in allowed]
        if len(under) == 0:
            raise RuntimeError(f"phantom lesion {les.name} covers no CT voxel")
        if bad:
            raise RuntimeError(
                f"phantom lesion {les.name} leaves its host tissue {les.host_tissues}: covers {bad}"
            )


def quantize_pet_slices(activity_bqml: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Store PET activity as int16 with one RescaleSlope per slice (intercept 0).

    The slope is ``slice max / 32000`` rounded to a valid 16-character DICOM DS, and the stored
    values are quantised with that rounded slope, so ``stored * slope`` is what a reader gets.

    Returns
    -------
    stored : (z, y, x) int16
    slopes : (z,) float64
    """
    from pydicom.valuerep import DSfloat

    nz = activity_bqml.shape[0]
    stored = np.empty(activity_bqml.shape, dtype=np.int16)
    slopes = np.empty(nz, dtype=np.float64)
    for k in range(nz):
        mx = float(activity_bqml[k].max())
        slope = float(DSfloat(mx / PET_STORED_MAX, auto_format=True)) if mx > 0 else 1.0
        slopes[k] = slope
        stored[k] = np.clip(np.rint(activity_bqml[k] / slope), 0, 32767).astype(np.int16)
    return stored, slopes


# --------------------------------------------------------------------------- truth
def lesion_truth(arrays: PhantomArrays, pet_suv_stored: np.ndarray | None = None) -> list[dict]:
    """Ground-truth table of the lesions (analytic and voxelised values).

    Parameters
    ----------
    arrays : PhantomArrays
    pet_suv_stored : (z, y, x) array, optional
        SUV as a reader gets it from the written PET (``stored * slope * suvbw_factor``); used for
        ``suv_max_voxelized``. Defaults to the exact PET.

    Returns
    -------
    list of dict, one per lesion in label order (see :func:`truth_dict`).
    """
    cg = arrays.ct_grid
    pet = arrays.pet_suv if pet_suv_stored is None else pet_suv_stored
    out = []
    for k, les in enumerate(arrays.design.lesions, start=1):
        a, b, c = les.semi_axes_mm
        shape = les.shape
        mask = arrays.lesion_labels == k
        idx = np.argwhere(mask)
        n = int(len(idx))
        centroid = cg.zyx_to_lps(idx.mean(axis=0)[None, :])[0] if n else np.full(3, np.nan)
        pet_mask = arrays.pet_lesion_labels == k
        suv_max_vox = float(pet[pet_mask].max()) if pet_mask.any() else None
        core = les.core
        core_frac = 0.0 if core is None else core.volume_mm3 / shape.volume_mm3
        liver_d = structure_distance(les, "liver") if les.organ == "liver" else None
        if liver_d is not None and liver_d < -1e-3:
            liver_d = 0.0  # the lesion crosses the capsule (exophytic): it touches it
        aorta_d = structure_distance(les, "aorta")
        if aorta_d < -1e-3:
            aorta_d = 0.0  # the lesion wraps around the aorta (its lumen is excluded): touching
        lung_key = next((h.lower() for h in les.host_tissues if h.startswith("LUNG")), None)
        pleura_d = structure_distance(les, lung_key) if lung_key else None
        out.append(
            {
                "label": k,
                "name": les.name,
                "organ": les.organ,
                "site": les.site,
                "host_tissues": [h.lower() for h in les.host_tissues],
                "centre_lps_mm": [float(v) for v in les.centre_lps_mm],
                "semi_axes_mm": [float(v) for v in les.semi_axes_mm],
                "volume_ml_analytic": les.volume_mm3_analytic / 1000.0,
                "volume_ml_voxelized": n * cg.voxel_volume_mm3 / 1000.0,
                "voxel_count": n,
                "longest_axial_diameter_mm": 2.0 * max(a, b),
                "short_axis_mm": 2.0 * min(a, b),
                "max_3d_diameter_mm": 2.0 * max(a, b, c),
                "centroid_lps_mm_voxelized": [float(v) for v in centroid],
                "skin_depth_mm": structure_distance(les, "skin"),
                "suv": les.suv,
                "suv_core": les.core_suv if core is not None else None,
                "suv_max_voxelized": suv_max_vox,
                "pet_voxel_count": int(pet_mask.sum()),
                "hu_noncontrast": les.hu_noncontrast,
                "hu_contrast": les.hu_contrast,
                "hu_core_noncontrast": les.core_hu_noncontrast if core is not None else None,
                "hu_core_contrast": les.core_hu_contrast if core is not None else None,
                "necrotic_core_radius_mm": les.core_radius_mm,
                "necrotic_core_fraction": core_frac,
                "liver_capsule_distance_mm": liver_d,
                "lung_pleura_distance_mm": pleura_d,
                "aorta_distance_mm": aorta_d,
                "vertebral_column_distance_mm": structure_distance(les, "vertebral_column"),
                "purpose": les.purpose,
            }
        )
        out[-1].update(_more_truth(arrays, k, pet))
    return out


def aorta_contact_angle_voxelized(
    tissue_labels: np.ndarray, lesion_mask: np.ndarray, grid: Grid
) -> float:
    """Aortic circumference (degrees) in contact with a lesion mask, from the voxel masks.

    Per axial slice: the aortic wall voxels are the aorta voxels with an in-plane 4-neighbour
    outside the aorta; each wall voxel stands for the angular sector (seen from the aorta's
    centroid in that slice, in mm) from half-way to its angular predecessor to half-way to its
    successor; a wall voxel is in contact when one of its in-plane 4-neighbours is a lesion
    voxel. The angle is the sum of the contacted sectors, and the result the largest over the
    slices the lesion occupies (0 when it touches no wall voxel).
    """
    aorta = tissue_labels == int(Tissue.AORTA)
    sx, sy, _ = grid.spacing_xyz_mm
    best = 0.0
    for kz in np.flatnonzero(lesion_mask.any(axis=(1, 2))):
        a2, l2 = aorta[kz], lesion_mask[kz]
        if not a2.any():
            continue
        pa = np.pad(a2, 1)
        interior = pa[1:-1, 1:-1] & pa[:-2, 1:-1] & pa[2:, 1:-1] & pa[1:-1, :-2] & pa[1:-1, 2:]
        wall = a2 & ~interior
        pl = np.pad(l2, 1)
        near = pl[:-2, 1:-1] | pl[2:, 1:-1] | pl[1:-1, :-2] | pl[1:-1, 2:]
        contact = wall & near
        if not contact.any():
            continue
        jj, ii = np.nonzero(a2)
        cj, ci = jj.mean(), ii.mean()
        wj, wi = np.nonzero(wall)
        ang = np.arctan2((wj - cj) * sy, (wi - ci) * sx)
        order = np.argsort(ang)
        ang, hit = ang[order], contact[wj, wi][order]
        gaps = np.diff(np.concatenate([ang, ang[:1] + 2.0 * math.pi]))
        sector = 0.5 * (gaps + np.roll(gaps, 1))
        best = max(best, math.degrees(float(sector[hit].sum())))
    return min(best, 360.0)


def _host_tissue(les: LesionDesign) -> Tissue:
    """The tissue a lesion's conspicuity is designed against: its first host tissue."""
    return Tissue[les.host_tissues[0]]


def _more_truth(arrays: PhantomArrays, k: int, pet: np.ndarray) -> dict:
    """Truth keys added for the anatomy / biomarker issues (every lesion, both variants)."""
    les = arrays.design.lesions[k - 1]
    cg, pg = arrays.ct_grid, arrays.pet_grid
    mask = arrays.lesion_labels == k
    n = int(mask.sum())
    core = les.core
    # PET: voxels whose centre is inside the lesion (no blur, so no background voxel counts)
    pet_mask = arrays.pet_lesion_labels == k
    vals = pet[pet_mask]
    pet_ml = pg.voxel_volume_mm3 / 1000.0
    if len(vals):
        mtv41 = float(np.count_nonzero(vals >= 0.41 * float(vals.max()))) * pet_ml
        mtv25 = float(np.count_nonzero(vals >= 2.5)) * pet_ml
        suv_mean = float(vals.mean())
    else:
        mtv41 = mtv25 = 0.0
        suv_mean = None
    # CT design
    host = _host_tissue(les)
    host_nc, host_ce, _ = TISSUE_VALUES[host]
    # vessels
    angle_vox = aorta_contact_angle_voxelized(arrays.tissue_labels, mask, cg)
    # liver
    if les.organ == "liver":
        liver = arrays.tissue_labels == int(Tissue.LIVER)
        exo_vox = float(np.count_nonzero(mask & ~liver)) / n if n else None
        exo_an = exophytic_fraction_analytic(les)
    else:
        exo_vox = exo_an = None
    # straight path from the skin to the centre
    path = skin_path(les)
    tissues, crossed = path_crossings(path["entry"], path["surface_point"],
                                      arrays.design.lesions, k)
    shift = np.zeros(3) if arrays.contrast_shift_mm is None else np.asarray(
        arrays.contrast_shift_mm)
    mask_ce = arrays.lesion_labels_contrast == k
    return {
        "uniform": core is None,
        "excludes_aortic_lumen": les.exclude_aorta,
        "necrotic_core_fraction_voxelized": (
            float(np.count_nonzero(mask & arrays.lesion_core)) / n if (n and core is not None)
            else 0.0
        ),
        "suv_mean_voxelized": suv_mean,
        "mtv41_ml_voxelized": mtv41,
        "mtv25_ml_voxelized": mtv25,
        "designed_enhancement_hu": les.hu_contrast - les.hu_noncontrast,
        "designed_core_enhancement_hu": (
            les.core_hu_contrast - les.core_hu_noncontrast if core is not None else None
        ),
        "host_tissue": host.name.lower(),
        "host_hu_noncontrast": host_nc,
        "host_hu_contrast": host_ce,
        "designed_cnr_noncontrast": abs(les.hu_noncontrast - host_nc) / CT_NOISE_SIGMA_HU,
        "designed_cnr_contrast": abs(les.hu_contrast - host_ce) / CT_NOISE_SIGMA_HU,
        "aorta_contact_angle_deg": angle_vox,
        "aorta_contact_angle_deg_analytic": aorta_contact_angle_analytic(les),
        "relation_to_aorta": aorta_relation(les),
        "exophytic_fraction": exo_vox,
        "exophytic_fraction_analytic": exo_an,
        "path_entry_lps_mm": [float(v) for v in path["entry"]],
        "path_direction_lps": [float(v) for v in path["direction"]],
        "path_length_analytic_mm": path["length_mm"],
        "path_length_to_surface_mm": path["length_to_surface_mm"],
        "path_surface_point_lps_mm": [float(v) for v in path["surface_point"]],
        "aerated_lung_path_mm_analytic": aerated_lung_length_mm(path["entry"],
                                                                path["surface_point"]),
        "path_tissues": tissues,
        "path_lesions_crossed": crossed,
        "centre_lps_mm_contrast": [float(c + d) for c, d in zip(les.centre_lps_mm, shift)],
        "voxel_count_contrast": int(mask_ce.sum()),
    }


def truth_dict(
    arrays: PhantomArrays,
    uids: dict[str, str],
    pet_suv_stored=None,
    organ_formats: Sequence[str] = ("seg",),
) -> dict:
    """The content of ``truth.json``.

    Parameters
    ----------
    arrays : PhantomArrays
    uids : dict
        ``study_uid``, ``frame_of_reference_uid``, ``frame_of_reference_uid_contrast`` and the
        series keys ``ct_noncontrast``, ``ct_contrast``, ``pet``, ``seg_lesions``,
        ``seg_organs``, ``rtstruct`` (+ ``rtstruct_organs``, ``seg_lesions_noncontrast``).
    pet_suv_stored : array, optional
        SUV as read back from the written PET (see :func:`lesion_truth`).
    organ_formats : sequence of str
        The organ mask formats written (see :func:`generate_patient`).
    """
    d = arrays.design
    shifted = arrays.contrast_shift_mm is not None
    series_keys = ["ct_noncontrast", "ct_contrast", "pet", "seg_lesions", "seg_organs", "rtstruct"]
    if "seg" not in organ_formats:
        series_keys.remove("seg_organs")
    if "rtstruct" in organ_formats:
        series_keys.append("rtstruct_organs")
    if shifted:
        series_keys.append("seg_lesions_noncontrast")
    frame_ce = uids.get("frame_of_reference_uid_contrast", uids["frame_of_reference_uid"])
    return {
        "generator": GENERATOR,
        "size": d.size,
        "seed": d.seed,
        "patient_index": d.patient_index,
        "patient_id": d.patient_id,
        "patient_name": d.patient_name,
        "study_uid": uids["study_uid"],
        "frame_of_reference_uid": uids["frame_of_reference_uid"],
        "series": {k: uids[k] for k in series_keys},
        "pet": {
            "weight_kg": d.weight_kg,
            "height_m": d.height_m,
            "dose_bq": d.dose_bq,
            "injection_time": d.injection_datetime.isoformat(),
            "series_time": d.pet_series_datetime.isoformat(),
            "half_life_s": d.half_life_s,
            "decay_to_series": d.decay_to_series,
            "suvbw_factor": d.suvbw_factor,
            "units": "BQML",
        },
        "ct_grid": grid_dict(arrays.ct_grid),
        "pet_grid": grid_dict(arrays.pet_grid),
        "ct_noise_sigma_hu": CT_NOISE_SIGMA_HU,
        "organs": list(ORGAN_NAMES),
        "variant": d.variant,
        "organ_formats": list(organ_formats),
        "contrast_shift_mm": list(arrays.contrast_shift_mm) if shifted else None,
        "contrast_frame_of_reference_uid": frame_ce,
        "files": _files_truth(arrays, uids, organ_formats),
        "lesions": lesion_truth(arrays, pet_suv_stored),
    }


def _files_truth(arrays: PhantomArrays, uids: dict[str, str], organ_formats) -> dict:
    """What each written file is, what it references and in which frame of reference."""
    fr = uids["frame_of_reference_uid"]
    fr_ce = uids.get("frame_of_reference_uid_contrast", fr)
    nc = {"references_series": "ct_noncontrast", "frame_of_reference_uid": fr}
    ce = {"references_series": "ct_contrast", "frame_of_reference_uid": fr_ce}
    out = {
        "CT_noncontrast/": {"series": "ct_noncontrast", "frame_of_reference_uid": fr},
        "CT_contrast/": {"series": "ct_contrast", "frame_of_reference_uid": fr_ce},
        "PET/": {"series": "pet", "frame_of_reference_uid": fr},
        "SEG_lesions.dcm": {"series": "seg_lesions", "kind": "lesion", **ce},
        "RTSTRUCT_lesions.dcm": {"series": "rtstruct", "kind": "lesion", **ce},
        "labelmap/lesions.nii.gz": {"kind": "lesion", **ce},
    }
    if arrays.contrast_shift_mm is not None:
        out["SEG_lesions_noncontrast.dcm"] = {
            "series": "seg_lesions_noncontrast", "kind": "lesion", **nc,
        }
    if "seg" in organ_formats:
        out["SEG_organs.dcm"] = {"series": "seg_organs", "kind": "organ", **nc}
    if "rtstruct" in organ_formats:
        out["RTSTRUCT_organs.dcm"] = {
            "series": "rtstruct_organs", "kind": "organ",
            "roi_names": {ORGAN_ROI_NAMES[o]: o for o in ORGAN_NAMES}, **nc,
        }
    if "totalseg" in organ_formats:
        out["totalseg/"] = {
            "kind": "organ", "format": "TotalSegmentator v2 NIfTI (one binary mask per file)",
            "structures": {name: organ for name, organ, _, _ in TOTALSEG_STRUCTURES}, **nc,
        }
    return out


# --------------------------------------------------------------------------- files
def _prepare_folder(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        if not (folder / "truth.json").exists():
            raise FileExistsError(
                f"{folder} exists, is not empty and is not a phantom folder (no truth.json); "
                "refusing to overwrite it"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def generate_patient(
    outdir: Path,
    patient_index: int = 1,
    size: str = "small",
    seed: int = 0,
    variant: str = "standard",
    organ_formats: Sequence[str] | None = None,
    contrast_shift_mm: tuple[float, float, float] | None = None,
) -> Path:
    """Write one phantom patient as DICOM (+ NIfTI label map and truth.json).

    Parameters
    ----------
    outdir : Path
        Parent folder; the patient goes to ``outdir/PHANTOM{patient_index:03d}/`` (an existing
        phantom folder there is replaced).
    patient_index : int
        1 = canonical design; others are seeded variations.
    size : {"small", "full"}
    seed : int
    variant : {"standard", "extended"}
        Lesion set (see :func:`lesion_designs`). The standard, unshifted phantom is byte for byte
        what earlier versions wrote (same UIDs); other variants / shifts get their own UIDs.
    organ_formats : sequence of {"seg", "rtstruct", "totalseg"}, optional
        Organ mask formats to write: ``SEG_organs.dcm``; ``RTSTRUCT_organs.dcm`` (ROIs Liver,
        Spleen, Lung_L, Lung_R, Aorta, Spine, RTROIInterpretedType ORGAN, on the non-contrast
        CT); ``totalseg/`` (TotalSegmentator v2 style NIfTI files, see
        :data:`TOTALSEG_STRUCTURES`). Default: ``("seg",)`` for the standard variant, all
        three for the extended one.
    contrast_shift_mm : (dx, dy, dz) mm, optional
        Write the contrast CT in a second FrameOfReferenceUID with the patient translated by
        this offset (its content moves by +shift in patient coordinates). ``SEG_lesions.dcm``,
        ``RTSTRUCT_lesions.dcm`` and ``labelmap/`` follow the contrast CT (shifted lesions, its
        frame); ``SEG_lesions_noncontrast.dcm`` is then also written: the unshifted lesions on
        the non-contrast CT (the frame of the PET and of the organ masks).

    Returns
    -------
    Path
        The patient folder, containing ``CT_noncontrast/``, ``CT_contrast/``, ``PET/``
        (``NNNN.dcm``, file names shuffled relative to z), ``SEG_lesions.dcm``,
        ``SEG_organs.dcm``, ``RTSTRUCT_lesions.dcm``, ``labelmap/lesions.nii.gz``,
        ``labelmap/lesions.json`` and ``truth.json`` (+ the optional files above).
    """
    from pipeline import phantom_writers as w

    _check_variant(variant)
    formats = _check_organ_formats(organ_formats, variant)
    arrays = phantom_arrays(size, patient_index, seed, variant, contrast_shift_mm)
    folder = Path(outdir) / arrays.design.patient_id
    _prepare_folder(folder)
    uids = w.patient_uids(arrays.design)
    rng = np.random.default_rng([int(seed), int(patient_index), 77])
    ct_nc = w.write_ct_series(folder / "CT_noncontrast", arrays, uids, contrast=False, rng=rng)
    ct_ce = w.write_ct_series(folder / "CT_contrast", arrays, uids, contrast=True, rng=rng)
    stored, slopes = quantize_pet_slices(arrays.pet_activity_bqml())
    w.write_pet_series(folder / "PET", arrays, uids, stored, slopes, rng=rng)
    w.write_seg(folder / "SEG_lesions.dcm", arrays, uids, ct_ce, kind="lesion")
    if "seg" in formats:
        w.write_seg(folder / "SEG_organs.dcm", arrays, uids, ct_nc, kind="organ")
    w.write_rtstruct(folder / "RTSTRUCT_lesions.dcm", arrays, uids, ct_ce)
    w.write_labelmap(folder / "labelmap", arrays, uids)
    if arrays.contrast_shift_mm is not None:
        w.write_seg(folder / "SEG_lesions_noncontrast.dcm", arrays, uids, ct_nc,
                    kind="lesion_noncontrast")
    if "rtstruct" in formats:
        w.write_rtstruct_organs(folder / "RTSTRUCT_organs.dcm", arrays, uids, ct_nc)
    if "totalseg" in formats:
        w.write_totalseg(folder / "totalseg", arrays, uids)
    pet_read = (stored.astype(np.float64) * slopes[:, None, None]) * arrays.design.suvbw_factor
    truth = truth_dict(arrays, uids, pet_read, formats)
    (folder / "truth.json").write_text(json.dumps(truth, indent=2))
    log.info("phantom patient %s written to %s", arrays.design.patient_id, folder)
    return folder


def generate_cohort(
    outdir: Path,
    n_patients: int = 1,
    size: str = "small",
    seed: int = 0,
    progress: Callable[[int, int, Path], None] | None = None,
    variant: str = "standard",
    organ_formats: Sequence[str] | None = None,
    contrast_shift_mm: tuple[float, float, float] | None = None,
) -> list[Path]:
    """Write ``n_patients`` phantom patients (PHANTOM001 ... ) under ``outdir``.

    Parameters
    ----------
    outdir : Path
    n_patients : int
    size : {"small", "full"}
    seed : int
    progress : callable, optional
        Called as ``progress(done, total, folder)`` after each patient.
    variant, organ_formats, contrast_shift_mm
        As for :func:`generate_patient` (the same for every patient).

    Returns
    -------
    list of Path
        The patient folders, in order.
    """
    _check_size(size)
    _check_variant(variant)
    _check_organ_formats(organ_formats, variant)
    _check_shift(contrast_shift_mm)
    if n_patients < 1:
        raise ConfigError(f"n_patients must be >= 1, got {n_patients}")
    out = []
    for i in range(1, n_patients + 1):
        folder = generate_patient(Path(outdir), i, size, seed, variant, organ_formats,
                                  contrast_shift_mm)
        out.append(folder)
        if progress is not None:
            progress(i, n_patients, folder)
    return out
