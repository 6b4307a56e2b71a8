"""Small synthetic DICOM builders for the ingestion tests (no shared data needed).

Every builder writes real files with pydicom and returns the truth it encoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

DATA = Path(__file__).resolve().parents[1] / "data"


def rot_x(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


@dataclass
class Series:
    """What a builder wrote."""

    folder: Path
    paths: list[Path]
    series_uid: str
    study_uid: str
    sop_uids: list[str]
    positions: np.ndarray  # (n, 3) LPS, in slice order (ascending along the normal)
    iop: np.ndarray
    values: np.ndarray  # (n, rows, cols) truth in physical units, slice order
    datasets: list[Dataset] = field(default_factory=list)


def base_dataset(modality: str, sop_class: str, *, study_uid: str, series_uid: str,
                 patient_id: str, for_uid: str) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20240115"
    ds.StudyTime = "100000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "test"
    ds.SeriesDate = "20240115"
    ds.SeriesTime = "110000"
    ds.SeriesNumber = 1
    return ds


def make_series(
    folder: Path,
    *,
    modality: str = "CT",
    n: int = 6,
    rows: int = 8,
    cols: int = 10,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    step: float = 2.5,
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    origin: tuple[float, float, float] = (-10.0, -20.0, 30.0),
    shear_deg: float = 0.0,
    order: str = "shuffled",
    names: str = "numbered",
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "P001",
    for_uid: str | None = None,
    description: str = "",
    seed: int = 0,
    write: bool = True,
    extra=None,
    positions: np.ndarray | None = None,
    value_fn=None,
) -> Series:
    """A single-frame series. Stored value of slice k, row j, column i: 100*k + 10*j + i.

    CT: HU = stored - 1024. PT: Bq/mL = stored * slope_k with slope_k = 0.5 * (k + 1).
    ``order``: "shuffled" (files written and named in random order), "reversed"
    (InstanceNumber/file names descending along the normal) or "sorted".
    ``shear_deg`` shifts slice k by k*step*tan(shear) along the column direction (gantry tilt).
    ``positions`` (n, 3) overrides the slice positions (given in slice order). ``value_fn``
    (CT only) maps (N, 3) LPS points to HU: pixel values are then ``round(f(centre) + 1024)``
    at each pixel centre (quantisation 0.5 HU).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    for_uid = for_uid or generate_uid()
    iop_a = np.asarray(iop, dtype=float)
    normal = np.cross(iop_a[:3], iop_a[3:])
    if positions is None:
        positions = np.array([
            np.asarray(origin) + k * step * normal + k * step * math.tan(math.radians(shear_deg))
            * iop_a[3:]
            for k in range(n)
        ])
    else:
        positions = np.asarray(positions, dtype=float)
        n = len(positions)
    sop_class = CTImageStorage if modality == "CT" else PositronEmissionTomographyImageStorage
    values = np.zeros((n, rows, cols), dtype=np.float64)
    datasets = []
    perm = {"shuffled": rng.permutation(n), "reversed": np.arange(n)[::-1],
            "sorted": np.arange(n)}[order]
    paths: list[Path] = []
    sops = []
    for write_idx, k in enumerate(perm):
        ds = base_dataset(modality, sop_class, study_uid=study_uid, series_uid=series_uid,
                          patient_id=patient_id, for_uid=for_uid)
        ds.SeriesDescription = description
        ds.InstanceNumber = write_idx + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in iop_a]
        ds.PixelSpacing = [str(pixel_spacing[0]), str(pixel_spacing[1])]
        ds.SliceThickness = str(step)
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        jj, ii = np.mgrid[0:rows, 0:cols]
        stored = (100 * k + 10 * jj + ii).astype(np.uint16)
        if value_fn is not None:
            pts = (positions[k][None, :] + ii.reshape(-1, 1) * pixel_spacing[1] * iop_a[:3]
                   + jj.reshape(-1, 1) * pixel_spacing[0] * iop_a[3:])
            stored = np.clip(np.rint(np.asarray(value_fn(pts)).reshape(rows, cols) + 1024),
                             0, 65535).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        if modality == "CT":
            ds.RescaleSlope = "1"
            ds.RescaleIntercept = "-1024"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            values[k] = stored.astype(float) - 1024.0
        else:
            slope = 0.5 * (k + 1)
            ds.RescaleSlope = f"{slope:g}"
            ds.RescaleIntercept = "0"
            ds.Units = "BQML"
            ds.DecayCorrection = "START"
            ds.CorrectedImage = ["ATTN", "DECY"]
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.AcquisitionDate = "20240115"
            ds.AcquisitionTime = "110000"
            ds.PatientWeight = "75"
            item = Dataset()
            item.RadionuclideTotalDose = "370000000"
            item.RadionuclideHalfLife = "6586.2"
            item.RadiopharmaceuticalStartDateTime = "20240115100000"
            item.RadiopharmaceuticalStartTime = "100000"
            ds.RadiopharmaceuticalInformationSequence = [item]
            values[k] = stored.astype(float) * slope
        if extra is not None:
            extra(ds, k)
        name = f"{write_idx:04d}.dcm" if names == "numbered" else f"IM{write_idx:03d}"
        path = folder / name
        if write:
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        sops.append(ds.SOPInstanceUID)
        datasets.append(ds)
    inv = np.argsort(perm)
    return Series(folder=folder, paths=paths, series_uid=series_uid, study_uid=study_uid,
                  sop_uids=[sops[i] for i in inv], positions=positions, iop=iop_a,
                  values=values, datasets=[datasets[i] for i in inv])


def pet_headers(**overrides) -> list[Dataset]:
    """Headers of a 3-slice PET (not written) with the defaults of :func:`make_series`.

    Default truth: weight 75 kg, dose 370 MBq, F-18 half-life 6586.2 s, injection 10:00:00,
    series 11:00:00 on 2024-01-15, so dt = 3600 s.
    """
    s = make_series(Path("/nonexistent"), modality="PT", n=3, order="sorted", write=False)
    return s.datasets


def write_rtstruct(
    path: Path,
    *,
    ref: Series,
    rois: list[tuple[int, str, list[np.ndarray]]],
    interpreted_type: str = "",
    contour_sop: str | None = None,
) -> str:
    """Write a minimal RTSTRUCT. ``rois``: (number, name, [contour points (N, 3) LPS]).

    Returns its SeriesInstanceUID.
    """
    ds = base_dataset("RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3", study_uid=ref.study_uid,
                      series_uid=generate_uid(), patient_id="P001", for_uid=generate_uid())
    del ds.FrameOfReferenceUID
    fr = Dataset()
    fr.FrameOfReferenceUID = generate_uid()
    st = Dataset()
    st.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    st.ReferencedSOPInstanceUID = ref.study_uid
    se = Dataset()
    se.SeriesInstanceUID = ref.series_uid
    imgs = []
    for u in ref.sop_uids:
        ci = Dataset()
        ci.ReferencedSOPClassUID = CTImageStorage
        ci.ReferencedSOPInstanceUID = u
        imgs.append(ci)
    se.ContourImageSequence = imgs
    st.RTReferencedSeriesSequence = [se]
    fr.RTReferencedStudySequence = [st]
    ds.ReferencedFrameOfReferenceSequence = [fr]
    ssroi, rcs, obs = [], [], []
    for number, name, contours in rois:
        r = Dataset()
        r.ROINumber = number
        r.ROIName = name
        r.ReferencedFrameOfReferenceUID = fr.FrameOfReferenceUID
        ssroi.append(r)
        rc = Dataset()
        rc.ReferencedROINumber = number
        cs = []
        for pts in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [f"{v:.6f}" for v in np.asarray(pts).ravel()]
            if contour_sop:
                ci = Dataset()
                ci.ReferencedSOPClassUID = CTImageStorage
                ci.ReferencedSOPInstanceUID = contour_sop
                c.ContourImageSequence = [ci]
            cs.append(c)
        rc.ContourSequence = cs
        rcs.append(rc)
        o = Dataset()
        o.ObservationNumber = number
        o.ReferencedROINumber = number
        o.RTROIInterpretedType = interpreted_type
        obs.append(o)
    ds.StructureSetROISequence = ssroi
    ds.ROIContourSequence = rcs
    ds.RTROIObservationsSequence = obs
    ds.save_as(path, enforce_file_format=True)
    return ds.SeriesInstanceUID


def write_seg(
    path: Path,
    *,
    ref: Series,
    masks: dict[int, np.ndarray],
    labels: dict[int, str],
    category: str = "lesion",
    fractional: bool = False,
) -> str:
    """Write a DICOM SEG with highdicom over ``ref`` (CT datasets must have pixels).

    ``masks[n]`` is a (z, y, x) bool array in slice order. Returns the SEG SeriesInstanceUID.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    cat = (codes.SCT.MorphologicallyAbnormalStructure if category == "lesion"
           else codes.SCT.AnatomicalStructure if category == "organ" else codes.SCT.Tissue)
    typ = codes.SCT.Neoplasm if category == "lesion" else codes.SCT.Liver
    numbers = sorted(masks)
    descs = [
        hd.seg.SegmentDescription(
            segment_number=i + 1, segment_label=labels[n], segmented_property_category=cat,
            segmented_property_type=typ, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for i, n in enumerate(numbers)
    ]
    stack = np.stack([masks[n] for n in numbers], axis=-1).astype(np.uint8)
    sources = [pydicom.dcmread(p) for p in ref.paths]
    by_sop = {s.SOPInstanceUID: s for s in sources}
    sources = [by_sop[u] for u in ref.sop_uids]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=stack.astype(np.float32) if fractional else stack,
        segmentation_type=(hd.seg.SegmentationTypeValues.FRACTIONAL if fractional
                           else hd.seg.SegmentationTypeValues.BINARY),
        segment_descriptions=descs,
        series_instance_uid=generate_uid(),
        series_number=50,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(path)
    return seg.SeriesInstanceUID
