"""DICOM, NIfTI and JSON writers of the phantom (see :mod:`pipeline.phantom`).

All DICOM files are Part 10, Explicit VR Little Endian. UIDs are deterministic: derived with
``pydicom.uid.generate_uid(entropy_srcs=...)`` from the generator name, size, seed, patient and
the object, so a given (size, seed, patient) always yields the same UIDs.

Geometry: axial slices, ImageOrientationPatient (1, 0, 0, 0, 1, 0), ImagePositionPatient = LPS mm
of the first voxel of the slice, PixelSpacing = (row spacing, column spacing) = (dy, dx) mm.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
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

from pipeline.phantom import (
    CT_RESCALE_INTERCEPT,
    GENERATOR,
    ORGANS,
    PhantomArrays,
    PatientDesign,
    grid_axes,
)

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
    srcs = [GENERATOR, design.size, str(design.seed), design.patient_id, *map(str, parts)]
    return str(generate_uid(entropy_srcs=srcs))


def patient_uids(design: PatientDesign) -> dict[str, str]:
    """Deterministic study, frame-of-reference and series UIDs of a phantom patient."""
    keys = ("ct_noncontrast", "ct_contrast", "pet", "seg_lesions", "seg_organs", "rtstruct")
    out = {
        "study_uid": _uid(design, "study"),
        "frame_of_reference_uid": _uid(design, "frame_of_reference"),
    }
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
        ds.FrameOfReferenceUID = uids["frame_of_reference_uid"]
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
        Stored values (see :func:`pipeline.phantom.quantize_pet_slices`).
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
        ds.PatientPosition = "HFS"
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
        ds.ImageIndex = k + 1
        ds.NumberOfTimeSlices = 1
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
    Abnormal Structure, type Neoplasm, TrackingUID/TrackingID). ``kind="organ"``: one segment per
    organ of :data:`pipeline.phantom.ORGANS` (category Anatomical Structure). ``source`` are the
    CT datasets in ascending z (array order).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    d = arrays.design
    descs = []
    if kind == "lesion":
        labels = arrays.lesion_labels
        key, number, description = "seg_lesions", 100, "SEG LESIONS (phantom truth)"
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
        raise ValueError(f"kind must be 'lesion' or 'organ', got {kind!r}")
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


def write_rtstruct(
    path: Path, arrays: PhantomArrays, uids: dict[str, str], source: list[Dataset]
) -> None:
    """Write the lesions as an RT Structure Set referencing the contrast CT ``source``.

    Each lesion is one ROI (ROIName = lesion name); on every CT slice whose plane cuts the
    lesion, the analytic elliptic cross-section is a CLOSED_PLANAR polygon of
    :data:`CONTOUR_VERTICES` vertices lying on the ellipse, with a ContourImageSequence pointing
    at that slice.
    """
    d = arrays.design
    t = d.ct_contrast_datetime
    ds = _base(
        d, uids, RTStructureSetStorage, _uid(d, "rtstruct", "instance"), "RTSTRUCT", "rtstruct",
        102, "RTSTRUCT LESIONS (phantom truth)", t,
    )
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "LESIONS"
    ds.StructureSetName = "phantom lesions"
    ds.StructureSetDate = _da(t)
    ds.StructureSetTime = _tm(t)
    ds.OperatorsName = ""

    def img_ref(src: Dataset) -> Dataset:
        r = Dataset()
        r.ReferencedSOPClassUID = src.SOPClassUID
        r.ReferencedSOPInstanceUID = src.SOPInstanceUID
        return r

    ser = Dataset()
    ser.SeriesInstanceUID = uids["ct_contrast"]
    ser.ContourImageSequence = DicomSequence([img_ref(s) for s in source])
    study = Dataset()
    study.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study.ReferencedSOPInstanceUID = uids["study_uid"]
    study.RTReferencedSeriesSequence = DicomSequence([ser])
    frame = Dataset()
    frame.FrameOfReferenceUID = uids["frame_of_reference_uid"]
    frame.RTReferencedStudySequence = DicomSequence([study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame])

    zs = np.array([float(s.ImagePositionPatient[2]) for s in source])
    rois, contours, observations = [], [], []
    colours = [[255, 0, 0], [0, 200, 0], [0, 0, 255], [255, 160, 0], [200, 0, 200],
               [0, 200, 200], [160, 80, 0], [255, 255, 0]]
    for k, les in enumerate(d.lesions, start=1):
        roi = Dataset()
        roi.ROINumber = k
        roi.ReferencedFrameOfReferenceUID = uids["frame_of_reference_uid"]
        roi.ROIName = les.name
        roi.ROIGenerationAlgorithm = "MANUAL"
        rois.append(roi)
        (cx, cy, cz), (a, b, c) = les.centre_lps_mm, les.semi_axes_mm
        items = []
        for i, z in enumerate(zs):
            s = 1.0 - ((z - cz) / c) ** 2
            if s <= 0.0:
                continue
            item = Dataset()
            item.ContourImageSequence = DicomSequence([img_ref(source[i])])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = CONTOUR_VERTICES
            item.ContourNumber = len(items) + 1
            item.ContourData = _ellipse_polygon(cx, cy, a * math.sqrt(s), b * math.sqrt(s), z)
            items.append(item)
        rc = Dataset()
        rc.ReferencedROINumber = k
        rc.ROIDisplayColor = colours[(k - 1) % len(colours)]
        rc.ContourSequence = DicomSequence(items)
        contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber = k
        obs.ReferencedROINumber = k
        obs.RTROIInterpretedType = "GTV"
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    _save(ds, path)


# --------------------------------------------------------------------------- NIfTI
def write_labelmap(folder: Path, arrays: PhantomArrays, uids: dict[str, str]) -> Path:
    """Write ``lesions.nii.gz`` (uint8, (x, y, z) order, RAS affine) and its JSON sidecar."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    affine = arrays.ct_grid.nifti_affine_ras()
    data = np.ascontiguousarray(arrays.lesion_labels.transpose(2, 1, 0)).astype(np.uint8)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path = folder / "lesions.nii.gz"
    nib.save(img, path)
    sidecar = {
        "labels": {str(k): les.name for k, les in enumerate(arrays.design.lesions, start=1)},
        "kind": "lesion",
        "referenced_series_uid": uids["ct_contrast"],
        "study_uid": uids["study_uid"],
        "patient_id": arrays.design.patient_id,
        "frame_of_reference_uid": uids["frame_of_reference_uid"],
    }
    (folder / "lesions.json").write_text(json.dumps(sidecar, indent=2))
    return path
