"""Typed records passed between stages.

Conventions
-----------
* Image arrays are numpy arrays in **(z, y, x)** index order (SimpleITK's ``GetArrayFromImage``
  order): ``array[k, j, i]`` is the voxel at column ``i``, row ``j``, slice ``k``.
* Physical coordinates are in millimetres in the DICOM patient frame **LPS** (x to the patient's
  left, y to posterior, z to superior). Fields carry units and frame in their names.
* The mapping from index to LPS is owned by :class:`pipeline.geometry.Grid`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.geometry import Grid


class Modality(str, enum.Enum):
    """Kinds of series the pipeline uses."""

    CT = "CT"
    PT = "PT"
    SEG = "SEG"
    RTSTRUCT = "RTSTRUCT"
    LABELMAP = "LABELMAP"
    OTHER = "OTHER"


class CTPhase(str, enum.Enum):
    """Contrast phase of a CT series."""

    NONCONTRAST = "noncontrast"
    CONTRAST = "contrast"
    UNKNOWN = "unknown"


class MaskSource(str, enum.Enum):
    """Where a lesion or organ mask came from."""

    SEG = "seg"
    RTSTRUCT = "rtstruct"
    LABELMAP = "labelmap"


class SegmentKind(str, enum.Enum):
    """Whether a segment describes a lesion or an organ."""

    LESION = "lesion"
    ORGAN = "organ"
    UNKNOWN = "unknown"


class Role(str, enum.Enum):
    """Role of a lesion in the treatment plan."""

    INJECT = "inject"
    MONITOR = "monitor"
    NONE = "none"


class Tier(str, enum.Enum):
    """Suitability tier for injection, best first."""

    RECOMMENDED = "recommended"
    ACCEPTABLE = "acceptable"
    BOARD_REVIEW = "board_review"
    NOT_SUITABLE = "not_suitable"

    @property
    def order(self) -> int:
        """0 for the best tier, 3 for the worst."""
        return list(Tier).index(self)


@dataclass(frozen=True)
class Volume:
    """A scalar image on a regular grid.

    Attributes
    ----------
    array : np.ndarray
        Voxel values, shape ``grid.shape_zyx``. CT: HU (float32); PET: SUVbw or Bq/mL (float32),
        see ``units``.
    grid : Grid
        Geometry (spacing, origin, direction) in LPS mm.
    units : str
        ``"HU"``, ``"SUVbw"``, ``"BQML"`` ...
    series_uid : str
        SeriesInstanceUID of the source series.
    frame_of_reference_uid : str
        FrameOfReferenceUID of the source series ("" when absent).
    notes : tuple of str
        Assembly notes for provenance (duplicates dropped, resampling applied ...).
    """

    array: np.ndarray
    grid: "Grid"
    units: str
    series_uid: str
    frame_of_reference_uid: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LesionMask:
    """A binary mask of one lesion (or organ), stored as a crop of its grid.

    Attributes
    ----------
    name : str
        SEG SegmentLabel, RTSTRUCT ROIName or label-map name.
    source : MaskSource
        Where the mask was read from.
    grid : Grid
        The full grid the mask lives on (normally the referenced CT).
    bbox_zyx : tuple of (start, stop) pairs
        Index bounding box of ``crop`` within ``grid``, half-open, in (z, y, x) order.
    crop : np.ndarray of bool
        The mask inside the bounding box, shape ``(z1-z0, y1-y0, x1-x0)``.
    kind : SegmentKind
        Lesion or organ.
    source_uid : str
        SeriesInstanceUID of the SEG/RTSTRUCT, or the label-map file name.
    referenced_series_uid : str
        SeriesInstanceUID of the image series the mask was drawn on ("" if unknown).
    segment_number : int
        SEG SegmentNumber, RTSTRUCT ROINumber or label value.
    tracking_uid : str
        SEG TrackingUID when present ("" otherwise), for following lesions across studies.
    """

    name: str
    source: MaskSource
    grid: "Grid"
    bbox_zyx: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    crop: np.ndarray
    kind: SegmentKind = SegmentKind.LESION
    source_uid: str = ""
    referenced_series_uid: str = ""
    segment_number: int = 0
    tracking_uid: str = ""

    @property
    def voxel_count(self) -> int:
        """Number of voxels in the mask."""
        return int(np.count_nonzero(self.crop))

    def full(self) -> np.ndarray:
        """Return the mask on the whole grid (bool, (z, y, x)). Avoid in per-lesion loops."""
        out = np.zeros(self.grid.shape_zyx, dtype=bool)
        (z0, z1), (y0, y1), (x0, x1) = self.bbox_zyx
        out[z0:z1, y0:y1, x0:x1] = self.crop
        return out


@dataclass(frozen=True)
class SeriesRef:
    """One series found by the index (headers only)."""

    series_uid: str
    study_uid: str
    patient_id: str
    modality: Modality
    n_files: int
    description: str = ""
    ct_phase: CTPhase = CTPhase.UNKNOWN
    frame_of_reference_uid: str = ""
    referenced_series_uids: tuple[str, ...] = ()
    segment_kind: SegmentKind = SegmentKind.UNKNOWN


@dataclass(frozen=True)
class Measurement:
    """A value that may be unavailable; ``value`` is None with a ``reason`` then."""

    value: float | None
    reason: str = ""


@dataclass(frozen=True)
class ShapeFeatures:
    """Size and position of a lesion from its mask (CT grid).

    Diameters follow RECIST: the longest diameter in an axial (acquisition) plane, the short axis
    perpendicular to it in the same plane, and the longest 3D extent. Surfaces are taken at the
    voxel faces (midway between an inside and an outside voxel centre).
    """

    volume_ml: float
    voxel_count: int
    longest_diameter_mm: float
    short_axis_mm: float
    max_3d_diameter_mm: float
    centroid_x_mm: float
    centroid_y_mm: float
    centroid_z_mm: float


@dataclass(frozen=True)
class PetFeatures:
    """PET uptake of a lesion on the PET's own grid. ``None`` with ``suv_reason`` if unavailable."""

    suv_max: float | None = None
    suv_mean: float | None = None
    suv_peak: float | None = None
    suv_peak_x_mm: float | None = None
    suv_peak_y_mm: float | None = None
    suv_peak_z_mm: float | None = None
    pet_voxel_count: int | None = None
    activity_max_bqml: float | None = None
    suv_reason: str = ""


@dataclass(frozen=True)
class SiteFeatures:
    """Where a lesion sits: organ, skin depth and distances to structures that matter for safety.

    Distances are in mm between surfaces; ``None`` with a reason when the structure is unknown.
    """

    organ: str
    organ_reason: str
    organ_overlap_fraction: float | None
    site: str
    skin_depth_mm: float | None
    skin_depth_reason: str = ""
    liver_capsule_distance_mm: float | None = None
    vessel_distance_mm: float | None = None
    vessel_name: str = ""
    lung_pleura_distance_mm: float | None = None
    anatomy_reason: str = ""
    # Lower bounds: the measured distance when measured, the search margin when the surface lies
    # beyond it (distance > margin), None when the structure is absent. Rules comparing a distance
    # with a threshold below the margin can then be evaluated for far lesions too.
    liver_capsule_distance_min_mm: float | None = None
    lung_pleura_distance_min_mm: float | None = None
    vessel_distance_min_mm: float | None = None


@dataclass(frozen=True)
class Decision:
    """The ranking's answer for one lesion."""

    lesion_id: str
    role: Role
    tier: Tier
    rank: int | None
    score: float
    reasons: tuple[str, ...]
    explanation: str
