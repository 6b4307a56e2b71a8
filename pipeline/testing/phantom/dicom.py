"""DICOM, NIfTI and JSON writers of the phantom (see :mod:`pipeline.testing.phantom`), and
:func:`generate_patient` / :func:`generate_cohort`, which write whole patients.

All DICOM files are Part 10, Explicit VR Little Endian. UIDs are deterministic: derived with
``pydicom.uid.generate_uid(entropy_srcs=...)`` from the generator name, size, seed, patient and
the object, so a given (size, seed, patient) always yields the same UIDs.

Geometry: axial slices, ImageOrientationPatient (1, 0, 0, 0, 1, 0), ImagePositionPatient = LPS mm
of the first voxel of the slice, PixelSpacing = (row spacing, column spacing) = (dy, dx) mm.

Variants and shifts add to the entropy (``PatientDesign.uid_salt``), so an extended or shifted
patient never shares a UID with the standard one; the standard, unshifted phantom's UIDs are
unchanged. With ``contrast_shift_mm`` the contrast CT and every lesion object drawn on it
(``SEG_lesions.dcm``, ``RTSTRUCT_lesions.dcm``, the label map) use a second
FrameOfReferenceUID.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    RTStructureSetStorage,
    generate_uid,
)
from pydicom.valuerep import DSfloat

from pipeline.errors import ConfigError
from pipeline.testing.phantom.design import (
    AORTA_CENTRE_XY_MM,
    AORTA_RADIUS_MM,
    CT_RESCALE_INTERCEPT,
    GENERATOR,
    ORGAN_NAMES,
    ORGAN_ROI_NAMES,
    ORGANS,
    TOTALSEG_STRUCTURES,
    LesionDesign,
    PatientDesign,
    check_organ_formats,
    check_shift,
    check_size,
    check_variant,
    grid_axes,
    grid_dict,
)
from pipeline.testing.phantom.render import PhantomArrays, phantom_arrays, quantize_pet_slices
from pipeline.testing.phantom.truth import truth_dict

log = logging.getLogger(__name__)


def _software_version() -> str:
    # Read from the installed distribution: under some editable installs ``pipeline`` is
    # imported as a namespace package and ``pipeline.__version__`` is not available.
    try:
        from importlib.metadata import version

        return version("hitit-pipeline")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


__version__ = _software_version()

#: Detached Study Management SOP Class (retired, but what RTReferencedStudySequence conventionally
#: references).
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"
#: Number of vertices of each RTSTRUCT contour polygon.
CONTOUR_VERTICES = 72
#: PET frame duration, s.
PET_FRAME_DURATION_S = 180.0
#: Seconds between the PET SeriesTime and the first slice's AcquisitionTime.
PET_ACQUISITION_DELAY_S = 120.0


# --------------------------------------------------------------------------- uids and helpers
def _uid(design: PatientDesign, *parts: object) -> str:
    srcs = [GENERATOR, design.size, str(design.seed), design.patient_id, *design.uid_salt,
            *map(str, parts)]
    return str(generate_uid(entropy_srcs=srcs))


def patient_uids(design: PatientDesign) -> dict[str, str]:
    """Deterministic study, frame-of-reference and series UIDs of a phantom patient.

    ``frame_of_reference_uid_contrast`` is the frame of the contrast CT: the common frame unless
    the contrast CT is shifted (``design.contrast_shift_mm``).
    """
    keys = ("ct_noncontrast", "ct_contrast", "pet", "seg_lesions", "seg_organs", "rtstruct",
            "rtstruct_organs", "seg_lesions_noncontrast")
    out = {
        "study_uid": _uid(design, "study"),
        "frame_of_reference_uid": _uid(design, "frame_of_reference"),
    }
    out["frame_of_reference_uid_contrast"] = (
        out["frame_of_reference_uid"] if design.contrast_shift_mm is None
        else _uid(design, "frame_of_reference", "contrast")
    )
    out.update({k: _uid(design, "series", k) for k in keys})
    return out


def _ds(v: float) -> DSfloat:
    return DSfloat(float(v), auto_format=True)


def _da(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d")


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S")


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"HITIT_{__version__}"[:16]
    return meta


def _base(
    design: PatientDesign,
    uids: dict[str, str],
    sop_class: str,
    sop_uid: str,
    modality: str,
    series_key: str,
    series_number: int,
    description: str,
    series_time: dt.datetime,
) -> Dataset:
    """Patient, study, series, equipment and SOP common modules."""
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = _da(series_time)
    ds.InstanceCreationTime = _tm(series_time)
    ds.PatientName = design.patient_name
    ds.PatientID = design.patient_id
    ds.PatientBirthDate = design.birth_date
    ds.PatientSex = design.sex
    ds.PatientSize = _ds(design.height_m)
    ds.PatientWeight = _ds(design.weight_kg)
    ds.StudyInstanceUID = uids["study_uid"]
    ds.StudyDate = _da(design.study_datetime)
    ds.StudyTime = _tm(design.study_datetime)
    ds.StudyID = "1"
    ds.AccessionNumber = f"ACC{design.patient_index:06d}"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "PHANTOM PET/CT"
    ds.Modality = modality
    ds.SeriesInstanceUID = uids[series_key]
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.SeriesDate = _da(series_time)
    ds.SeriesTime = _tm(series_time)
    ds.Manufacturer = GENERATOR
    ds.ManufacturerModelName = "analytic PET/CT phantom"
    ds.SoftwareVersions = __version__
    ds.InstitutionName = "Phantom"
    return ds


def _image_plane(ds: Dataset, arrays_grid, k: int, zpos: float, xs, ys) -> None:
    sx, sy, sz = arrays_grid.spacing_xyz_mm
    ds.ImagePositionPatient = [_ds(xs[0]), _ds(ys[0]), _ds(zpos)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [_ds(sy), _ds(sx)]
    ds.SliceThickness = _ds(sz)
    ds.SliceLocation = _ds(zpos)
    ds.PositionReferenceIndicator = ""
    nz, ny, nx = arrays_grid.shape_zyx
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _shuffled_names(n: int, rng: np.random.Generator) -> list[str]:
    """File names NNNN.dcm in an order unrelated to z."""
    perm = rng.permutation(n)
    return [f"{int(p) + 1:04d}.dcm" for p in perm]


# --------------------------------------------------------------------------- CT
def write_ct_series(
    folder: Path,
    arrays: PhantomArrays,
    uids: dict[str, str],
    *,
    contrast: bool,
    rng: np.random.Generator,
) -> list[Dataset]:
    """Write one CT phase, one file per slice, file names shuffled relative to z.

    Stored value = HU + 1024 (int16, RescaleSlope 1, RescaleIntercept -1024). InstanceNumber
    runs from the most superior slice (1) downwards, as on most scanners.

    Returns
    -------
    list of Dataset
        The written datasets, ordered by ascending z (array slice order).
    """
    d = arrays.design
    grid = arrays.ct_grid
    hu = arrays.ct_contrast_hu if contrast else arrays.ct_noncontrast_hu
    key = "ct_contrast" if contrast else "ct_noncontrast"
    t = d.ct_contrast_datetime if contrast else d.ct_noncontrast_datetime
    xs, ys, zs = grid_axes(grid)
    nz = grid.shape_zyx[0]
    names = _shuffled_names(nz, rng)
    stored = np.rint(hu - CT_RESCALE_INTERCEPT).astype(np.int16)
    out = []
    for k in range(nz):
        ds = _base(
            d, uids, CTImageStorage, _uid(d, key, "slice", k), "CT", key,
            3 if contrast else 2,
            "CT ABD PORTAL VENOUS" if contrast else "CT ABD NON-CONTRAST",
            t,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = (
            uids["frame_of_reference_uid_contrast"] if contrast else uids["frame_of_reference_uid"]
        )
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "CHEST"
        ds.ContentDate = _da(t)
        ds.ContentTime = _tm(t)
        ds.AcquisitionDate = _da(t)
        ds.AcquisitionTime = _tm(t)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = nz - k
        ds.KVP = _ds(120)
        ds.ConvolutionKernel = "STANDARD"
        if contrast:
            ds.ContrastBolusAgent = "IOHEXOL"
            ds.ContrastBolusRoute = "IV"
        _image_plane(ds, grid, k, zs[k], xs, ys)
        ds.RescaleIntercept = _ds(CT_RESCALE_INTERCEPT)
        ds.RescaleSlope = _ds(1)
        ds.RescaleType = "HU"
        ds.WindowCenter = _ds(40)
        ds.WindowWidth = _ds(400)
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        _save(ds, folder / names[k])
        out.append(ds)
    return out


# --------------------------------------------------------------------------- PET
def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    it = Dataset()
    it.CodeValue = value
    it.CodingSchemeDesignator = scheme
    it.CodeMeaning = meaning
    return it


def write_pet_series(
    folder: Path,
    arrays: PhantomArrays,
    uids: dict[str, str],
    stored: np.ndarray,
    slopes: np.ndarray,
    *,
    rng: np.random.Generator,
) -> list[Dataset]:
    """Write the PET (Bq/mL decay-corrected to SeriesTime, DecayCorrection START).

    Parameters
    ----------
    stored : (z, y, x) int16
        Stored values (see :func:`.render.quantize_pet_slices`).
    slopes : (z,) float
        Per-slice RescaleSlope (intercept 0).

    Returns
    -------
    list of Dataset, ascending z.
    """
    d = arrays.design
    grid = arrays.pet_grid
    xs, ys, zs = grid_axes(grid)
    nz = grid.shape_zyx[0]
    names = _shuffled_names(nz, rng)
    series_t = d.pet_series_datetime
    lam = math.log(2.0) / d.half_life_s
    dur = PET_FRAME_DURATION_S
    # Decay-weighted mid-frame offset: counts over [t0, t0 + dur] decay-corrected to t0.
    mid_offset = math.log(lam * dur / (1.0 - math.exp(-lam * dur))) / lam
    radio = Dataset()
    radio.Radiopharmaceutical = "Fluorodeoxyglucose"
    radio.RadiopharmaceuticalStartTime = _tm(d.injection_datetime)
    radio.RadiopharmaceuticalStartDateTime = d.injection_datetime.strftime("%Y%m%d%H%M%S")
    radio.RadionuclideTotalDose = _ds(d.dose_bq)
    radio.RadionuclideHalfLife = _ds(d.half_life_s)
    radio.RadionuclidePositronFraction = _ds(0.9673)
    radio.RadiopharmaceuticalRoute = "Intravenous route"
    radio.RadionuclideCodeSequence = DicomSequence([_code_item("77004003", "SCT", "^18^Fluorine")])
    radio.RadiopharmaceuticalCodeSequence = DicomSequence(
        [_code_item("35321007", "SCT", "Fluorodeoxyglucose F^18^")]
    )
    out = []
    for k in range(nz):
        ds = _base(
            d, uids, PositronEmissionTomographyImageStorage, _uid(d, "pet", "slice", k), "PT",
            "pet", 4, "PET WB AC", series_t,
        )
        acq_offset = PET_ACQUISITION_DELAY_S + float(k)
        acq_t = series_t + dt.timedelta(seconds=acq_offset)
        frt_s = acq_offset + mid_offset
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.FrameOfReferenceUID = uids["frame_of_reference_uid"]
        # no PatientPosition: the PET Image IOD says it shall not be present together with
        # PatientOrientationCodeSequence (below), which says the same (supine, head first)
        ds.BodyPartExamined = "WHOLEBODY"
        ds.ContentDate = _da(acq_t)
        ds.ContentTime = _tm(acq_t)
        ds.AcquisitionDate = _da(acq_t)
        ds.AcquisitionTime = _tm(acq_t)
        ds.InstanceNumber = k + 1
        ds.SeriesType = ["WHOLE BODY", "IMAGE"]
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.DecayCorrection = "START"
        ds.CorrectedImage = ["ATTN", "DECY", "SCAT", "RAN", "NORM", "DTIM"]
        ds.RandomsCorrectionMethod = "DLYD"
        ds.AttenuationCorrectionMethod = "CT"
        ds.ScatterCorrectionMethod = "MODEL"
        ds.ReconstructionMethod = "OSEM"
        ds.DecayFactor = _ds(math.exp(lam * frt_s))
        ds.FrameReferenceTime = _ds(round(frt_s * 1000.0, 3))
        ds.ActualFrameDuration = int(dur * 1000)
        ds.NumberOfSlices = nz
        ds.ImageIndex = k + 1  # NumberOfTimeSlices only for DYNAMIC / GATED series (1C)
        ds.CollimatorType = "NONE"
        orientation = _code_item("102538003", "SCT", "recumbent")
        orientation.PatientOrientationModifierCodeSequence = DicomSequence(
            [_code_item("40199007", "SCT", "supine")]
        )
        ds.PatientOrientationCodeSequence = DicomSequence([orientation])
        ds.PatientGantryRelationshipCodeSequence = DicomSequence(
            [_code_item("102540008", "SCT", "headfirst")]
        )
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([radio])
        _image_plane(ds, grid, k, zs[k], xs, ys)
        ds.RescaleIntercept = _ds(0)
        ds.RescaleSlope = _ds(slopes[k])
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        _save(ds, folder / names[k])
        out.append(ds)
    return out


# --------------------------------------------------------------------------- SEG
def write_seg(
    path: Path,
    arrays: PhantomArrays,
    uids: dict[str, str],
    source: list[Dataset],
    *,
    kind: str,
) -> None:
    """Write a BINARY DICOM SEG with highdicom.

    ``kind="lesion"``: one segment per lesion (label = lesion name, category Morphologically
    Abnormal Structure, type Neoplasm, TrackingUID/TrackingID) as drawn on the contrast CT
    (shifted when the contrast CT is); ``kind="lesion_noncontrast"``: the same segments,
    unshifted, for the non-contrast CT (series ``seg_lesions_noncontrast``). ``kind="organ"``:
    one segment per organ of :data:`.design.ORGANS` (category Anatomical Structure).
    ``source`` are the CT datasets in ascending z (array order) that the SEG references.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    d = arrays.design
    descs = []
    if kind in ("lesion", "lesion_noncontrast"):
        if kind == "lesion":
            labels = arrays.lesion_labels_contrast
            key, number, description = "seg_lesions", 100, "SEG LESIONS (phantom truth)"
        else:
            labels = arrays.lesion_labels
            key, number, description = (
                "seg_lesions_noncontrast", 104, "SEG LESIONS NON-CONTRAST (phantom truth)"
            )
        for k, les in enumerate(d.lesions, start=1):
            descs.append(
                hd.seg.SegmentDescription(
                    segment_number=k,
                    segment_label=les.name,
                    segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                    segmented_property_type=codes.SCT.Neoplasm,
                    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
                    tracking_uid=_uid(d, "tracking", les.name),
                    tracking_id=les.name,
                )
            )
    elif kind == "organ":
        labels = arrays.organ_labels
        key, number, description = "seg_organs", 101, "SEG ORGANS (phantom truth)"
        for k, (name, _, code, meaning) in enumerate(ORGANS, start=1):
            descs.append(
                hd.seg.SegmentDescription(
                    segment_number=k,
                    segment_label=name,
                    segmented_property_category=codes.SCT.AnatomicalStructure,
                    segmented_property_type=Code(code, "SCT", meaning),
                    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
                )
            )
    else:
        raise ValueError(f"kind must be 'lesion', 'lesion_noncontrast' or 'organ', got {kind!r}")
    seg = hd.seg.Segmentation(
        source_images=source,
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs,
        series_instance_uid=uids[key],
        series_number=number,
        sop_instance_uid=_uid(d, key, "instance"),
        instance_number=1,
        manufacturer=GENERATOR,
        manufacturer_model_name="analytic PET/CT phantom",
        software_versions=__version__,
        device_serial_number="0",
        series_description=description,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


# --------------------------------------------------------------------------- RTSTRUCT
def _ellipse_polygon(cx: float, cy: float, a: float, b: float, z: float) -> list[float]:
    ang = np.linspace(0.0, 2.0 * math.pi, CONTOUR_VERTICES, endpoint=False)
    pts = np.stack([cx + a * np.cos(ang), cy + b * np.sin(ang), np.full_like(ang, z)], axis=1)
    return [round(float(v), 4) for v in pts.ravel()]


def _flat(pts_xy: np.ndarray, z: float) -> list[float]:
    pts = np.column_stack([pts_xy, np.full(len(pts_xy), z)])
    return [round(float(v), 4) for v in pts.ravel()]


def _bisect(f, lo: float, hi: float, flo: bool) -> float:
    """Root of the boolean change of ``f`` between lo (value ``flo``) and hi."""
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if f(mid) == flo:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _shell_section_polygons(
    cx: float, cy: float, a: float, b: float, ax: float, ay: float, r: float, z: float
) -> list[list[float]]:
    """Polygons of (ellipse (cx, cy, a, b) minus the disc (ax, ay, r)) at height z.

    * disc and ellipse apart: the ellipse;
    * disc inside the ellipse: the ellipse and the circle (a hole: the reader's even-odd rule
      subtracts it);
    * ellipse inside the disc: nothing;
    * otherwise (they cross at two points): one crescent polygon, the ellipse arc outside the
      disc followed by the circle arc inside the ellipse, vertices on the analytic curves.
    """
    def e_pt(t):
        return np.array([cx + a * math.cos(t), cy + b * math.sin(t)])

    def c_pt(t):
        return np.array([ax + r * math.cos(t), ay + r * math.sin(t)])

    def in_disc(t) -> bool:
        x, y = e_pt(t)
        return (x - ax) ** 2 + (y - ay) ** 2 <= r * r

    def in_ellipse(t) -> bool:
        x, y = c_pt(t)
        return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0

    m = 3600
    ts = np.arange(m) * (2.0 * math.pi / m)
    ex, ey = cx + a * np.cos(ts), cy + b * np.sin(ts)
    inside = (ex - ax) ** 2 + (ey - ay) ** 2 <= r * r
    if inside.all():
        return []
    cxs, cys = ax + r * np.cos(ts), ay + r * np.sin(ts)
    circ_in = ((cxs - cx) / a) ** 2 + ((cys - cy) / b) ** 2 <= 1.0
    if not inside.any():
        if circ_in.all():
            return [_ellipse_polygon(cx, cy, a, b, z), _ellipse_polygon(ax, ay, r, r, z)]
        return [_ellipse_polygon(cx, cy, a, b, z)]
    change = np.flatnonzero(inside != np.roll(inside, -1))  # between sample i and i + 1
    if len(change) != 2:
        raise RuntimeError(f"lesion section and aorta cross at {len(change)} points, expected 2")
    step = 2.0 * math.pi / m
    cuts = {}
    for i in change:
        t = _bisect(in_disc, ts[i], ts[i] + step, bool(inside[i]))
        cuts["enter" if not inside[i] else "leave"] = t
    t_leave, t_enter = cuts["leave"], cuts["enter"]  # ellipse leaves the disc, then re-enters
    if t_enter < t_leave:
        t_enter += 2.0 * math.pi
    te = np.linspace(t_leave, t_enter, CONTOUR_VERTICES)
    arc_e = np.stack([cx + a * np.cos(te), cy + b * np.sin(te)], axis=1)
    p_enter, p_leave = arc_e[-1], arc_e[0]
    th0 = math.atan2(p_enter[1] - ay, p_enter[0] - ax)
    th1 = math.atan2(p_leave[1] - ay, p_leave[0] - ax)
    ccw = (th1 - th0) % (2.0 * math.pi)  # going counter-clockwise from th0 to th1
    mid = th0 + 0.5 * ccw
    span = ccw if in_ellipse(mid) else ccw - 2.0 * math.pi
    n_c = max(8, CONTOUR_VERTICES // 2)
    tc = th0 + span * np.arange(1, n_c) / n_c  # inner arc, endpoints excluded
    arc_c = np.stack([ax + r * np.cos(tc), ay + r * np.sin(tc)], axis=1)
    return [_flat(np.concatenate([arc_e, arc_c]), z)]


def _lesion_section_polygons(les: LesionDesign, z: float, shift) -> list[list[float]]:
    """CLOSED_PLANAR polygons (flat LPS lists) of a lesion's section by the plane at z."""
    (cx, cy, cz), (a, b, c) = les.centre_lps_mm, les.semi_axes_mm
    if shift is not None:
        cx, cy, cz = cx + shift[0], cy + shift[1], cz + shift[2]
    s = 1.0 - ((z - cz) / c) ** 2
    if s <= 0.0:
        return []
    if not les.exclude_aorta:
        return [_ellipse_polygon(cx, cy, a * math.sqrt(s), b * math.sqrt(s), z)]
    ax, ay = AORTA_CENTRE_XY_MM
    if shift is not None:
        ax, ay = ax + shift[0], ay + shift[1]
    return _shell_section_polygons(cx, cy, a * math.sqrt(s), b * math.sqrt(s), ax, ay,
                                   AORTA_RADIUS_MM, z)


def _img_ref(src: Dataset) -> Dataset:
    r = Dataset()
    r.ReferencedSOPClassUID = src.SOPClassUID
    r.ReferencedSOPInstanceUID = src.SOPInstanceUID
    return r


def _structure_set(
    arrays: PhantomArrays,
    uids: dict[str, str],
    source: list[Dataset],
    *,
    key: str,
    number: int,
    description: str,
    label: str,
    name: str,
    image_series_key: str,
    frame_uid: str,
    t: dt.datetime,
) -> Dataset:
    """RT Structure Set header referencing the image series ``source``."""
    d = arrays.design
    ds = _base(d, uids, RTStructureSetStorage, _uid(d, key, "instance"), "RTSTRUCT", key,
               number, description, t)
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label
    ds.StructureSetName = name
    ds.StructureSetDate = _da(t)
    ds.StructureSetTime = _tm(t)
    ds.OperatorsName = ""
    ser = Dataset()
    ser.SeriesInstanceUID = uids[image_series_key]
    ser.ContourImageSequence = DicomSequence([_img_ref(s) for s in source])
    study = Dataset()
    study.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study.ReferencedSOPInstanceUID = uids["study_uid"]
    study.RTReferencedSeriesSequence = DicomSequence([ser])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])
    # Frame of Reference module of the RT Structure Set IOD (dciodvfy: Type 1 / Type 2)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    return ds


_COLOURS = [[255, 0, 0], [0, 200, 0], [0, 0, 255], [255, 160, 0], [200, 0, 200],
            [0, 200, 200], [160, 80, 0], [255, 255, 0]]


def _add_roi(rois, contours, observations, *, number: int, name: str, frame_uid: str,
             items: list, interpreted_type: str) -> None:
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = frame_uid
    roi.ROIName = name
    roi.ROIGenerationAlgorithm = "MANUAL"
    rois.append(roi)
    rc = Dataset()
    rc.ReferencedROINumber = number
    rc.ROIDisplayColor = _COLOURS[(number - 1) % len(_COLOURS)]
    rc.ContourSequence = DicomSequence(items)
    contours.append(rc)
    obs = Dataset()
    obs.ObservationNumber = number
    obs.ReferencedROINumber = number
    obs.RTROIInterpretedType = interpreted_type
    obs.ROIInterpreter = ""
    observations.append(obs)


def _contour_item(src: Dataset, number: int, flat: list[float]) -> Dataset:
    item = Dataset()
    item.ContourImageSequence = DicomSequence([_img_ref(src)])
    item.ContourGeometricType = "CLOSED_PLANAR"
    item.NumberOfContourPoints = len(flat) // 3
    item.ContourNumber = number
    item.ContourData = flat
    return item


def write_rtstruct(
    path: Path, arrays: PhantomArrays, uids: dict[str, str], source: list[Dataset]
) -> None:
    """Write the lesions as an RT Structure Set referencing the contrast CT ``source``.

    Each lesion is one ROI (ROIName = lesion name, RTROIInterpretedType GTV); on every CT slice
    whose plane cuts the lesion, the analytic elliptic cross-section is a CLOSED_PLANAR polygon
    of :data:`CONTOUR_VERTICES` vertices lying on the ellipse, with a ContourImageSequence
    pointing at that slice. A lesion that excludes the aortic lumen has, per slice, either a
    crescent polygon (ellipse arc + aortic arc) or the ellipse plus the aortic circle as a hole.
    With a shifted contrast CT the contours are shifted too and use its frame of reference.
    """
    d = arrays.design
    frame_uid = uids.get("frame_of_reference_uid_contrast", uids["frame_of_reference_uid"])
    ds = _structure_set(
        arrays, uids, source, key="rtstruct", number=102,
        description="RTSTRUCT LESIONS (phantom truth)", label="LESIONS", name="phantom lesions",
        image_series_key="ct_contrast", frame_uid=frame_uid, t=d.ct_contrast_datetime,
    )
    zs = np.array([float(s.ImagePositionPatient[2]) for s in source])
    rois, contours, observations = [], [], []
    for k, les in enumerate(d.lesions, start=1):
        items = []
        for i, z in enumerate(zs):
            for flat in _lesion_section_polygons(les, z, arrays.contrast_shift_mm):
                items.append(_contour_item(source[i], len(items) + 1, flat))
        _add_roi(rois, contours, observations, number=k, name=les.name, frame_uid=frame_uid,
                 items=items, interpreted_type="GTV")
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    _save(ds, path)


def mask_contours(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours (each (N, 2) continuous (row, column) indices, not repeating the first
    vertex) around the pixels of a 2-D mask, one per boundary: outer outlines and holes alike.

    skimage.measure.find_contours at level 0.5 on the zero-padded mask: vertices lie half-way
    between inside and outside pixel centres, so an even-odd fill at pixel centres gives the
    mask back exactly.
    """
    from skimage.measure import find_contours

    m = np.asarray(mask2d, dtype=bool)
    if not m.any():
        return []
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    r0, c0 = int(rows[0]), int(cols[0])
    crop = m[r0 : int(rows[-1]) + 1, c0 : int(cols[-1]) + 1]
    padded = np.pad(crop, 1).astype(np.float32)
    out = []
    for c in find_contours(padded, 0.5):
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        if len(c) < 3:
            continue
        out.append(c + np.array([r0 - 1, c0 - 1], dtype=float))
    return out


def write_rtstruct_organs(
    path: Path, arrays: PhantomArrays, uids: dict[str, str], source: list[Dataset]
) -> None:
    """Write the organ masks as an RT Structure Set on the non-contrast CT ``source``.

    ROIs (ROIName from :data:`.design.ORGAN_ROI_NAMES`: Liver, Spleen, Lung_L, Lung_R,
    Aorta, Spine), RTROIInterpretedType ORGAN. Per slice, every boundary of the organ mask
    (outer outlines of each connected piece and the outlines of holes, e.g. the right lung
    around the liver dome) is a separate CLOSED_PLANAR contour (:func:`mask_contours`),
    converted to LPS on the CT grid.
    """
    d = arrays.design
    grid = arrays.ct_grid
    frame_uid = uids["frame_of_reference_uid"]
    ds = _structure_set(
        arrays, uids, source, key="rtstruct_organs", number=103,
        description="RTSTRUCT ORGANS (phantom truth)", label="ORGANS", name="phantom organs",
        image_series_key="ct_noncontrast", frame_uid=frame_uid, t=d.ct_noncontrast_datetime,
    )
    rois, contours, observations = [], [], []
    for number, organ in enumerate(ORGAN_NAMES, start=1):
        mask = arrays.organ_mask(organ)
        items = []
        for kz in np.flatnonzero(mask.any(axis=(1, 2))):
            for poly in mask_contours(mask[kz]):
                zyx = np.column_stack([np.full(len(poly), float(kz)), poly])
                lps = grid.zyx_to_lps(zyx)
                flat = [round(float(v), 4) for v in lps.ravel()]
                items.append(_contour_item(source[int(kz)], len(items) + 1, flat))
        _add_roi(rois, contours, observations, number=number, name=ORGAN_ROI_NAMES[organ],
                 frame_uid=frame_uid, items=items, interpreted_type="ORGAN")
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    _save(ds, path)


# --------------------------------------------------------------------------- NIfTI
def _save_nifti(data_zyx: np.ndarray, affine: np.ndarray, path: Path, *, xyz=None) -> None:
    """Save a (z, y, x) array (or an already (x, y, z)-ordered ``xyz``) as uint8 NIfTI-1."""
    import nibabel as nib

    if xyz is None:
        xyz = np.ascontiguousarray(data_zyx.transpose(2, 1, 0))
    data = xyz.astype(np.uint8, copy=False)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def write_labelmap(folder: Path, arrays: PhantomArrays, uids: dict[str, str]) -> Path:
    """Write ``lesions.nii.gz`` (uint8, (x, y, z) order, RAS affine) and its JSON sidecar.

    The label map is drawn on the contrast CT (shifted lesions and the contrast frame of
    reference when the contrast CT is shifted).
    """
    folder.mkdir(parents=True, exist_ok=True)
    affine = arrays.ct_grid.nifti_affine_ras()
    path = folder / "lesions.nii.gz"
    _save_nifti(arrays.lesion_labels_contrast, affine, path)
    sidecar = {
        "labels": {str(k): les.name for k, les in enumerate(arrays.design.lesions, start=1)},
        "kind": "lesion",
        "referenced_series_uid": uids["ct_contrast"],
        "study_uid": uids["study_uid"],
        "patient_id": arrays.design.patient_id,
        "frame_of_reference_uid": uids.get("frame_of_reference_uid_contrast",
                                           uids["frame_of_reference_uid"]),
    }
    (folder / "lesions.json").write_text(json.dumps(sidecar, indent=2))
    return path


def write_totalseg(folder: Path, arrays: PhantomArrays, uids: dict[str, str]) -> Path:
    """Write a TotalSegmentator-v2-style folder: one binary uint8 ``<structure>.nii.gz`` per
    structure of :data:`.design.TOTALSEG_STRUCTURES`, on the non-contrast CT grid
    with its RAS affine (:meth:`Grid.nifti_affine_ras`), plus ``README.txt``.
    No JSON sidecars: TotalSegmentator writes none.
    """
    folder.mkdir(parents=True, exist_ok=True)
    grid = arrays.ct_grid
    affine = grid.nifti_affine_ras()
    # Same masks as arrays.totalseg_masks(), built in (x, y, z) order directly: one transpose
    # of the tissue labels instead of one per file (the full-size grid has 29 M voxels).
    tissue_of = {o[0]: int(o[1]) for o in ORGANS}
    labels_xyz = np.ascontiguousarray(arrays.tissue_labels.transpose(2, 1, 0))
    zs = grid_axes(grid)[2]
    for name, organ, z0, z1 in TOTALSEG_STRUCTURES:
        in_slab = (zs >= z0) & (zs < z1)
        xyz = np.zeros(labels_xyz.shape, dtype=np.uint8)
        xyz[:, :, in_slab] = labels_xyz[:, :, in_slab] == tissue_of[organ]
        _save_nifti(None, affine, folder / f"{name}.nii.gz", xyz=xyz)
    g = grid_dict(grid)
    lines = [
        "TotalSegmentator-style organ masks of a hitit phantom patient (ground truth, not a",
        "TotalSegmentator run). One binary uint8 NIfTI-1 file per structure, TotalSegmentator v2",
        "file names, 1 = structure, 0 = background.",
        "",
        f"patient_id: {arrays.design.patient_id}",
        f"study_uid: {uids['study_uid']}",
        f"grid: the non-contrast CT, SeriesInstanceUID {uids['ct_noncontrast']}",
        f"frame_of_reference_uid: {uids['frame_of_reference_uid']}",
        f"shape (x, y, z) as stored: {tuple(g['shape_zyx'][::-1])}",
        f"spacing (x, y, z) mm: {tuple(g['spacing_xyz_mm'])}",
        f"origin of voxel (0, 0, 0), DICOM LPS mm: {tuple(g['origin_lps_mm'])}",
        "affine: RAS (NIfTI convention), qform = sform, code 1:",
        *("  " + " ".join(f"{v: .6f}" for v in row) for row in affine),
        "",
        "structures (file -> phantom organ, z range of voxel centres in LPS mm):",
    ]
    for name, organ, z0, z1 in TOTALSEG_STRUCTURES:
        lines.append(f"  {name}.nii.gz -> {organ}, {z0:g} <= z < {z1:g}")
    lines += [
        "",
        "Lung lobes and vertebrae are axial slabs of the phantom's lungs and vertebral column",
        "(the phantom has no fissures or discs); the union of an organ's files equals its",
        "segment in SEG_organs.dcm voxel for voxel.",
    ]
    (folder / "README.txt").write_text("\n".join(lines) + "\n")
    return folder


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
    check_variant(variant)
    formats = check_organ_formats(organ_formats, variant)
    arrays = phantom_arrays(size, patient_index, seed, variant, contrast_shift_mm)
    folder = Path(outdir) / arrays.design.patient_id
    _prepare_folder(folder)
    uids = patient_uids(arrays.design)
    rng = np.random.default_rng([int(seed), int(patient_index), 77])
    ct_nc = write_ct_series(folder / "CT_noncontrast", arrays, uids, contrast=False, rng=rng)
    ct_ce = write_ct_series(folder / "CT_contrast", arrays, uids, contrast=True, rng=rng)
    stored, slopes = quantize_pet_slices(arrays.pet_activity_bqml())
    write_pet_series(folder / "PET", arrays, uids, stored, slopes, rng=rng)
    write_seg(folder / "SEG_lesions.dcm", arrays, uids, ct_ce, kind="lesion")
    if "seg" in formats:
        write_seg(folder / "SEG_organs.dcm", arrays, uids, ct_nc, kind="organ")
    write_rtstruct(folder / "RTSTRUCT_lesions.dcm", arrays, uids, ct_ce)
    write_labelmap(folder / "labelmap", arrays, uids)
    if arrays.contrast_shift_mm is not None:
        write_seg(folder / "SEG_lesions_noncontrast.dcm", arrays, uids, ct_nc,
                    kind="lesion_noncontrast")
    if "rtstruct" in formats:
        write_rtstruct_organs(folder / "RTSTRUCT_organs.dcm", arrays, uids, ct_nc)
    if "totalseg" in formats:
        write_totalseg(folder / "totalseg", arrays, uids)
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
    check_size(size)
    check_variant(variant)
    check_organ_formats(organ_formats, variant)
    check_shift(contrast_shift_mm)
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
