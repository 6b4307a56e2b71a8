"""Malformed-input corpus: the archive damage real trials bring, generated from the phantom.

:func:`write_corpus` writes one patient/study folder per case under ``outdir``, each derived
from a single small phantom patient (:func:`pipeline.testing.phantom.generate_patient`): by default
the contrast CT (``CT_contrast/``, 56 slices), the PET (``PET/``, 42 slices) and the lesion
SEG (``SEG_lesions.dcm``, 8 lesions). Every case gets its own PatientID, StudyInstanceUID and
every other instance UID (remapped deterministically, references inside SEG / RTSTRUCT /
label-map sidecars included), so that the whole corpus can be run as one archive; then one
kind of damage is applied. Each :class:`CorpusCase` documents the outcome the workflow must
reach: a clear **error** (``failures.csv`` row with the error class and a message naming the
tag or file), a **warning** (the study completes; the problem is said where ``where`` points),
or a correct **load** (all lesions, and for SUV repairs the same SUV as the reference case).
Users re-run it with ``python -c "from pipeline.testing.corpus import write_corpus;
write_corpus('corpus')"`` and then ``hitit run --input corpus --output results``.

Cases (``where``: failures = ``cohort/failures.csv``; suv_reason = ``lesions.csv`` column,
every lesion; notes = ``cohort/studies.csv`` notes; provenance = the study's
``provenance.json`` warnings; volume = the notes of the series loaded with
:mod:`pipeline.io.dicom`)

================================  =======  =================  ======================================  ===========
case                              outcome  error class        message contains                        where
================================  =======  =================  ======================================  ===========
reference                         load                                                                (8 lesions)
truncated_pixel_data              error    DicomReadError     truncated                               failures
truncated_header                  error    DicomReadError                                             failures
junk_files_and_dicomdir           load                                                                (8 lesions)
missing_ImagePositionPatient      error    MissingTagError    ImagePositionPatient                    failures
missing_ImageOrientationPatient   error    MissingTagError    ImageOrientationPatient                 failures
missing_PixelSpacing              error    MissingTagError    PixelSpacing                            failures
missing_RescaleIntercept          error    MissingTagError    RescaleIntercept                        failures
missing_Rows                      error    MissingTagError    Rows                                    failures
missing_SeriesInstanceUID         error    MissingTagError    SeriesInstanceUID                       failures
missing_slice                     error    GeometryError      missing slices                          failures
inconsistent_spacing              warning                     variable slice spacing                  volume
variable_spacing                  warning                     variable slice spacing                  volume
gantry_tilt                       warning                     gantry tilt                             volume
mixed_orientations                error    GeometryError      ImageOrientationPatient                 failures
duplicate_instances               warning                     duplicate                               volume
seg_of_another_series             error    SegmentationError  not in the archive                      failures
seg_some_segments_empty           load                        kept as an empty lesion                 provenance
seg_all_segments_empty            warning                     is empty (no voxel)                     provenance
pet_without_weight                warning                     PatientWeight (0010,1030)               suv_reason
pet_without_dose                  warning                     RadionuclideTotalDose (0018,1074)       suv_reason
pet_without_injection_time        warning                     RadiopharmaceuticalStartTime            suv_reason
pet_without_radiopharmaceutical   warning                     RadiopharmaceuticalInformationSequence  suv_reason
pet_without_units                 warning                     Units (0054,1001)                       suv_reason
pet_wrong_units                   warning                     unsupported PET Units                   suv_reason
pet_dose_mbq_weight_grams         load                        taken as MBq                            provenance
pet_units_gml                     load                        not converted again                     provenance
pet_philips_cnts                  load                                                                (8 lesions)
pet_decay_admin                   load                                                                (8 lesions)
pet_midnight_crossing             load                        midnight crossing                       provenance
pet_not_attenuation_corrected     warning                     non-attenuation-corrected               notes
unsafe_patient_id_dotdot          load                                                                (8 lesions)
unsafe_patient_id_unicode         load                                                                (8 lesions)
empty_patient_id                  load                                                                (8 lesions)
compressed_rle_jpegls             load                                                                (8 lesions)
compressed_j2k_jpeg_lossless      load                                                                (8 lesions)
compressed_jpeg_baseline_deflate  load                                                                (8 lesions)
enhanced_ct                       load                                                                (8 lesions)
localizer_and_reports             load                        series excluded                         notes
ct_only                           warning                     no PET series                           suv_reason
pet_only_labelmap                 load                        PET-only study                          notes
rtstruct_only                     load                                                                (8 lesions)
rtstruct_contours_off_slices      error    SegmentationError  lies on no slice                        failures
rtstruct_partly_present_series    warning                     partly present series                   notes
rtstruct_of_absent_series         error    SegmentationError  not in the archive                      failures
invalid_study_uid                 load                                                                (8 lesions)
control_characters_in_patient_id  load                                                                (8 lesions)
labelmap_only                     load                                                                (8 lesions)
================================  =======  =================  ======================================  ===========

What each case does to the reference files:

* ``reference``: the phantom's contrast CT, PET and lesion SEG, unchanged.
* ``truncated_pixel_data``: one CT file cut in half (inside its pixel data).
* ``truncated_header``: one CT file cut 300 bytes after its start (inside the header).
* ``junk_files_and_dicomdir``: a text file, a JPEG, a ZIP, an empty file and a DICOMDIR among
  the images.
* ``missing_ImagePositionPatient``: ImagePositionPatient deleted from one CT slice.
* ``missing_ImageOrientationPatient``: ImageOrientationPatient deleted from one CT slice.
* ``missing_PixelSpacing``: PixelSpacing deleted from one CT slice.
* ``missing_RescaleIntercept``: RescaleIntercept deleted from one CT slice.
* ``missing_Rows``: Rows deleted from one CT slice.
* ``missing_SeriesInstanceUID``: SeriesInstanceUID deleted from one CT slice.
* ``missing_slice``: one CT file deleted from the middle of the stack.
* ``inconsistent_spacing``: one CT slice moved 1.2 mm along z (40 % of the 3 mm step).
* ``variable_spacing``: every other CT slice above z = 30 mm removed, InstanceNumbers
  renumbered (3 mm then 6 mm steps).
* ``gantry_tilt``: CT slice origins (and the SEG frames drawn on them) shifted along y by z x
  tan(12 deg), GantryDetectorTilt 12.
* ``mixed_orientations``: one CT slice with a coronal ImageOrientationPatient.
* ``duplicate_instances``: 3 CT files copied under other names, and a re-sent slice with a new
  SOPInstanceUID and a higher InstanceNumber at the same position.
* ``seg_of_another_series``: the SEG references a CT series that is not in the archive.
* ``seg_some_segments_empty``: the frames of lesion segments 1 and 2 zeroed (declared but
  empty): 8 rows, those 2 with ``lesion_empty`` true (zeros and reasons; tier not_suitable by
  rule LESION_EMPTY).
* ``seg_all_segments_empty``: every frame of the lesion SEG zeroed: the study is done with a
  warning, 8 rows all with ``lesion_empty`` true (e.g. a complete response at follow-up).
* ``pet_without_weight``: PatientWeight deleted from every PET slice.
* ``pet_without_dose``: RadionuclideTotalDose deleted.
* ``pet_without_injection_time``: both injection time attributes deleted.
* ``pet_without_radiopharmaceutical``: the whole radiopharmaceutical sequence deleted.
* ``pet_without_units``: Units deleted.
* ``pet_wrong_units``: Units CPS (counts per second).
* ``pet_dose_mbq_weight_grams``: RadionuclideTotalDose in MBq (370) and PatientWeight in grams
  (75000).
* ``pet_units_gml``: values stored as SUVbw (Units GML: RescaleSlope x SUV factor).
* ``pet_philips_cnts``: Philips counts: Units CNTS, RescaleSlope halved, activity concentration
  scale factor 2 and SUV scale factor in the private group 7053.
* ``pet_decay_admin``: DecayCorrection ADMIN, values decay-corrected to the injection.
* ``pet_midnight_crossing``: every PET time moved 13.5 h later (injection 23:30, scan after
  midnight), only RadiopharmaceuticalStartTime kept.
* ``pet_not_attenuation_corrected``: the only PET is not attenuation-corrected (CorrectedImage
  without ATTN).
* ``unsafe_patient_id_dotdot``: PatientID ../../x.
* ``unsafe_patient_id_unicode``: PatientID with a slash, accents and CJK characters.
* ``empty_patient_id``: PatientID empty.
* ``compressed_rle_jpegls``: CT slices alternately RLE and JPEG-LS lossless.
* ``compressed_j2k_jpeg_lossless``: CT slices alternately JPEG 2000 lossless and JPEG lossless
  (process 14).
* ``compressed_jpeg_baseline_deflate``: CT in 8-bit JPEG baseline (lossy), PET in deflated
  explicit VR.
* ``enhanced_ct``: the CT as one Enhanced CT multi-frame object (frames in reverse order).
* ``localizer_and_reports``: a localizer series, a secondary-capture dose screen and a dose SR
  added.
* ``ct_only``: the PET removed.
* ``pet_only_labelmap``: no CT: the PET and a NIfTI label map of the lesions drawn on the PET
  grid.
* ``rtstruct_only``: lesions as RTSTRUCT only (no SEG).
* ``rtstruct_contours_off_slices``: RTSTRUCT only, every contour moved 500 mm along z (beyond
  the CT).
* ``rtstruct_partly_present_series``: RTSTRUCT only, the top 20 CT slices not transferred (the
  structure set still lists them): the contours on the 36 present slices are used.
* ``rtstruct_of_absent_series``: RTSTRUCT only, referencing a CT series (and instances) that is
  not in the archive.
* ``invalid_study_uid``: StudyInstanceUID ';rm -rf /' followed by 10,000 digits in every file
  (the study gets a generated 2.25 UID).
* ``control_characters_in_patient_id``: PatientID with an escape sequence and a bell (ESC [31m,
  BEL).
* ``labelmap_only``: lesions as the NIfTI label map with its JSON sidecar only.

``pet_only_labelmap`` checks that a study without CT still gives its lesion rows (shape and
SUV on the PET grid; skin depth and organ empty with a reason).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

#: Transfer syntaxes :func:`compress_dataset` can write, by short name.
COMPRESSED_SYNTAXES: dict[str, str] = {
    "jpeg_baseline": "1.2.840.10008.1.2.4.50",
    "jpeg_lossless": "1.2.840.10008.1.2.4.70",
    "jpeg_ls": "1.2.840.10008.1.2.4.80",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "rle": "1.2.840.10008.1.2.5",
    "deflate": "1.2.840.10008.1.2.1.99",
}


def _gdcm_convert(src: Path, dst: Path, syntax_uid: str) -> None:
    import gdcm

    ts = {
        "1.2.840.10008.1.2.4.50": gdcm.TransferSyntax.JPEGBaselineProcess1,
        "1.2.840.10008.1.2.4.70": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
    }[syntax_uid]
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(ts))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {src} as {syntax_uid}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM cannot write {dst}")


def to_8bit(ds: Dataset) -> Dataset:
    """Requantise a greyscale image to 8 bits (JPEG baseline needs 8-bit samples).

    Stored values become ``round((v - min) / slope8)`` with ``slope8 = (max - min) / 255``;
    RescaleSlope / RescaleIntercept are set so that the rescaled (physical) values are kept
    within ``slope8 / 2`` of the original ones.
    """
    arr = ds.pixel_array.astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    inter = float(ds.get("RescaleIntercept", 0) or 0)
    phys = arr * slope + inter
    lo, hi = float(phys.min()), float(phys.max())
    s8 = (hi - lo) / 255.0 if hi > lo else 1.0
    stored = np.clip(np.rint((phys - lo) / s8), 0, 255).astype(np.uint8)
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{s8:.10g}"
    ds.RescaleIntercept = f"{lo:.10g}"
    ds.PixelData = stored.tobytes()
    return ds


def compress_file(src: str | Path, dst: str | Path, syntax: str) -> Path:
    """Write a copy of a single-frame greyscale DICOM image in a compressed transfer syntax.

    Parameters
    ----------
    src, dst : path
        Input file (native transfer syntax) and output file (may be the same).
    syntax : str
        A key of :data:`COMPRESSED_SYNTAXES`: ``jpeg_baseline`` (8-bit, lossy: the image is
        requantised with :func:`to_8bit` first; GDCM encoder), ``jpeg_lossless`` (process 14,
        GDCM), ``jpeg_ls`` (lossless, pyjpegls), ``jpeg2000`` (lossless, pylibjpeg-openjpeg),
        ``rle`` (pydicom) or ``deflate`` (Deflated Explicit VR Little Endian, pydicom).

    Returns
    -------
    Path
        ``dst``.
    """
    src, dst = Path(src), Path(dst)
    if syntax not in COMPRESSED_SYNTAXES:
        raise ValueError(f"unknown syntax {syntax!r}; use one of {sorted(COMPRESSED_SYNTAXES)}")
    uid = COMPRESSED_SYNTAXES[syntax]
    ds = pydicom.dcmread(str(src))
    if syntax in ("jpeg_baseline", "jpeg_lossless"):
        if syntax == "jpeg_baseline":
            to_8bit(ds)
        with tempfile.TemporaryDirectory() as tmp:
            native = Path(tmp) / "native.dcm"
            ds.save_as(native, enforce_file_format=True)
            _gdcm_convert(native, Path(tmp) / "out.dcm", uid)
            data = (Path(tmp) / "out.dcm").read_bytes()
        dst.write_bytes(data)
        return dst
    if syntax == "deflate":
        ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(uid)
    else:  # lossless transcoding keeps the instance's identity (SEG/RTSTRUCT references)
        ds.compress(pydicom.uid.UID(uid), generate_instance_uid=False)
    ds.save_as(dst, enforce_file_format=True)
    return dst


def to_enhanced_ct(
    paths: list[str | Path], dst: str | Path, *, frame_order: list[int] | None = None
) -> Path:
    """Convert a single-frame CT series into one Enhanced CT Image Storage object.

    Geometry goes to the functional groups the way scanners write it: PixelMeasures,
    PlaneOrientation and PixelValueTransformation in the shared groups, PlanePosition and
    FrameContent per frame; the top-level ImagePositionPatient / ImageOrientationPatient /
    PixelSpacing / Rescale attributes are removed.

    Parameters
    ----------
    paths : list of path
        The single-frame files (same series, same size).
    dst : path
        Output file.
    frame_order : list of int, optional
        Order of ``paths`` in the frames (default: as given).

    Returns
    -------
    Path
        ``dst``.
    """
    from pydicom.sequence import Sequence as Seq
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    dss = [pydicom.dcmread(str(p)) for p in paths]
    order = list(range(len(dss))) if frame_order is None else list(frame_order)
    first = dss[order[0]]
    out = Dataset()
    for elem in first:
        if elem.tag.group in (0x0008, 0x0010, 0x0018, 0x0020, 0x0028) and elem.keyword not in (
                "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                "RescaleSlope", "RescaleIntercept", "RescaleType", "SliceLocation",
                "InstanceNumber", "SOPInstanceUID", "SOPClassUID", "SliceThickness",
                "WindowCenter", "WindowWidth"):
            out.add(elem)
    out.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"
    out.SOPInstanceUID = generate_uid()
    out.InstanceNumber = 1
    out.NumberOfFrames = len(order)
    out.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]

    def item(**kw) -> Dataset:
        it = Dataset()
        for k, v in kw.items():
            setattr(it, k, v)
        return it

    shared = Dataset()
    shared.PixelMeasuresSequence = Seq([item(PixelSpacing=first.PixelSpacing,
                                             SliceThickness=first.get("SliceThickness", "1"))])
    shared.PlaneOrientationSequence = Seq([item(
        ImageOrientationPatient=first.ImageOrientationPatient)])
    shared.PixelValueTransformationSequence = Seq([item(
        RescaleSlope=first.get("RescaleSlope", "1"),
        RescaleIntercept=first.get("RescaleIntercept", "0"), RescaleType="HU")])
    out.SharedFunctionalGroupsSequence = Seq([shared])
    per = []
    for n, i in enumerate(order):
        fg = Dataset()
        fg.PlanePositionSequence = Seq([item(ImagePositionPatient=dss[i].ImagePositionPatient)])
        fg.FrameContentSequence = Seq([item(StackID="1", InStackPositionNumber=n + 1)])
        per.append(fg)
    out.PerFrameFunctionalGroupsSequence = Seq(per)
    out.PixelData = b"".join(np.ascontiguousarray(dss[i].pixel_array).tobytes() for i in order)
    out.file_meta = pydicom.dataset.FileMetaDataset()
    out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.save_as(str(dst), enforce_file_format=True)
    return Path(dst)


# =========================================================================== cases
@dataclass(frozen=True)
class CorpusCase:
    """One generated case and the outcome the workflow must reach.

    Attributes
    ----------
    name : str
        Case name (also the folder name, prefixed with its number).
    folder : Path
        The patient/study folder.
    outcome : {"error", "warning", "load"}
        A failure record / a completed study with a stated problem / a completed study.
    error_class : str
        Expected ``error_class`` in ``failures.csv`` (outcome "error").
    message : str
        Substring the error message, the reason or the warning must contain ("" = none).
    where : str
        Where the message appears: ``failures``, ``suv_reason``, ``notes``, ``provenance``,
        ``volume`` (see the module docstring) or "".
    patient_id, study_uid : str
        The case's (remapped) identifiers.
    series : dict
        Role (``ct``, ``pet``, ``seg``, ``rtstruct``) -> SeriesInstanceUID in this case.
    expected_lesions : int or None
        Lesion rows the study must produce (None for errors), empty lesion segments included.
    expected_empty : int
        Of those, rows with ``lesion_empty`` true (declared lesion segments without a voxel).
    same_suv_as_reference : bool
        SUVmax of every lesion must equal the reference case's (SUV repairs).
    description : str
        What was done to the files.
    """

    name: str
    folder: Path
    outcome: str
    error_class: str = ""
    message: str = ""
    where: str = ""
    patient_id: str = ""
    study_uid: str = ""
    series: dict = field(default_factory=dict)
    expected_lesions: int | None = None
    expected_empty: int = 0
    same_suv_as_reference: bool = False
    description: str = ""


@dataclass
class _Ctx:
    """Mutable state of one case while it is built."""

    name: str
    files: dict[str, Dataset]  # relative path -> dataset (deep copies)
    base: dict[str, Dataset]  # the untouched base datasets (read only)
    extra: dict[str, bytes] = field(default_factory=dict)
    post: list[Callable[[Path], None]] = field(default_factory=list)
    patient_id: str | None = None
    json_files: dict[str, dict] = field(default_factory=dict)
    uid_map: dict[str, str] = field(default_factory=dict)
    expected_lesions: int | None = None  # set by a builder when it depends on the data

    def rels(self, prefix: str) -> list[str]:
        """Relative paths under ``prefix/`` sorted by ascending z (slice position)."""
        rels = [r for r in self.files if r.startswith(prefix + "/")]
        return sorted(rels, key=lambda r: float(self.files[r].ImagePositionPatient[2]))

    def ct(self) -> list[str]:
        return self.rels("CT_contrast")

    def pet(self) -> list[str]:
        return self.rels("PET")

    def seg(self) -> Dataset:
        return self.files["SEG_lesions.dcm"]

    def add_from_base(self, rel: str) -> None:
        self.files[rel] = copy.deepcopy(self.base[rel])


#: The StudyInstanceUID of case ``invalid_study_uid`` (not a UID: 10,009 characters, a shell
#: command).
INVALID_STUDY_UID = ";rm -rf /" + "1" * 10000

Builder = Callable[[_Ctx], None]
_CASES: list[tuple[str, dict, Builder]] = []


def _case(name: str, **expect):
    def deco(fn: Builder) -> Builder:
        _CASES.append((name, expect, fn))
        return fn
    return deco


def _mid(rels: list[str]) -> str:
    return rels[len(rels) // 2]


# ------------------------------------------------------------------ reference and file damage
@_case("reference", outcome="load", expected_lesions=8,
       description="the phantom's contrast CT, PET and lesion SEG, unchanged")
def _reference(c: _Ctx) -> None:
    pass


@_case("truncated_pixel_data", outcome="error", error_class="DicomReadError",
       message="truncated", where="failures",
       description="one CT file cut in half (inside its pixel data)")
def _truncated_pixels(c: _Ctx) -> None:
    rel = _mid(c.ct())

    def cut(folder: Path) -> None:
        p = folder / rel
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    c.post.append(cut)


@_case("truncated_header", outcome="error", error_class="DicomReadError", where="failures",
       description="one CT file cut 300 bytes after its start (inside the header)")
def _truncated_header(c: _Ctx) -> None:
    rel = c.ct()[5]

    def cut(folder: Path) -> None:
        p = folder / rel
        p.write_bytes(p.read_bytes()[:300])
    c.post.append(cut)


@_case("junk_files_and_dicomdir", outcome="load", expected_lesions=8,
       description="a text file, a JPEG, a ZIP, an empty file and a DICOMDIR among the images")
def _junk(c: _Ctx) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    c.extra["notes.txt"] = b"scanned on the old console; see report\n"
    c.extra["CT_contrast/thumbnail.jpg"] = b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(200)
    c.extra["export.zip"] = b"PK\x03\x04" + bytes(100)
    c.extra["PET/empty.dcm"] = b""
    dd = Dataset()
    dd.file_meta = FileMetaDataset()
    dd.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dd.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dd.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dd.FileSetID = "CORPUS"
    dd.DirectoryRecordSequence = []
    c.files["DICOMDIR"] = dd


def _missing(tag: str) -> Builder:
    def build(c: _Ctx) -> None:
        ds = c.files[_mid(c.ct())]
        if tag in ds:
            delattr(ds, tag)
    return build


for _tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
             "RescaleIntercept", "Rows", "SeriesInstanceUID"):
    _case(f"missing_{_tag}", outcome="error", error_class="MissingTagError", message=_tag,
          where="failures", description=f"{_tag} deleted from one CT slice")(_missing(_tag))


# ------------------------------------------------------------------ geometry
def _drop_seg_refs(c: _Ctx, sops: set[str]) -> None:
    """Remove references to dropped image instances from the SEG (as if made without them)."""
    for item in c.seg().ReferencedSeriesSequence:
        seq = item.get("ReferencedInstanceSequence", None)
        if seq is not None:
            item.ReferencedInstanceSequence = [r for r in seq
                                               if str(r.ReferencedSOPInstanceUID) not in sops]


@_case("missing_slice", outcome="error", error_class="GeometryError", message="missing slices",
       where="failures", description="one CT file deleted from the middle of the stack")
def _missing_slice(c: _Ctx) -> None:
    rel = _mid(c.ct())
    _drop_seg_refs(c, {str(c.files[rel].SOPInstanceUID)})
    del c.files[rel]


@_case("inconsistent_spacing", outcome="warning", message="variable slice spacing",
       where="volume", expected_lesions=8,
       description="one CT slice moved 1.2 mm along z (40 % of the 3 mm step)")
def _inconsistent(c: _Ctx) -> None:
    ds = c.files[c.ct()[10]]
    p = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [p[0], p[1], p[2] + 1.2]


@_case("variable_spacing", outcome="warning", message="variable slice spacing", where="volume",
       expected_lesions=8,
       description="every other CT slice above z = 30 mm removed, InstanceNumbers renumbered "
       "(3 mm then 6 mm steps)")
def _variable(c: _Ctx) -> None:
    rels = c.ct()
    upper = [r for r in rels if float(c.files[r].ImagePositionPatient[2]) > 30.0]
    gone = upper[1::2]
    _drop_seg_refs(c, {str(c.files[r].SOPInstanceUID) for r in gone})
    for r in gone:
        del c.files[r]
    for n, r in enumerate(reversed(c.ct()), start=1):
        c.files[r].InstanceNumber = n


@_case("gantry_tilt", outcome="warning", message="gantry tilt", where="volume",
       expected_lesions=8,
       description="CT slice origins (and the SEG frames drawn on them) shifted along y by "
       "z x tan(12 deg), GantryDetectorTilt 12")
def _tilt(c: _Ctx) -> None:
    t = float(np.tan(np.radians(12.0)))
    z0 = float(c.files[c.ct()[0]].ImagePositionPatient[2])
    for r in c.ct():
        ds = c.files[r]
        p = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [p[0], round(p[1] + (p[2] - z0) * t, 6), p[2]]
        ds.GantryDetectorTilt = "12"
    for fg in c.seg().PerFrameFunctionalGroupsSequence:
        pp = fg.PlanePositionSequence[0]
        p = [float(v) for v in pp.ImagePositionPatient]
        pp.ImagePositionPatient = [p[0], round(p[1] + (p[2] - z0) * t, 6), p[2]]


@_case("mixed_orientations", outcome="error", error_class="GeometryError",
       message="ImageOrientationPatient", where="failures",
       description="one CT slice with a coronal ImageOrientationPatient")
def _mixed(c: _Ctx) -> None:
    c.files[_mid(c.ct())].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


@_case("duplicate_instances", outcome="warning", message="duplicate", where="volume",
       expected_lesions=8,
       description="3 CT files copied under other names, and a re-sent slice with a new "
       "SOPInstanceUID and a higher InstanceNumber at the same position")
def _dups(c: _Ctx) -> None:
    from pydicom.uid import generate_uid

    rels = c.ct()
    for k, r in enumerate(rels[3:6]):
        c.files[f"CT_contrast/copy_{k}.dcm"] = copy.deepcopy(c.files[r])
    re = copy.deepcopy(c.files[rels[20]])
    re.SOPInstanceUID = generate_uid()
    re.file_meta.MediaStorageSOPInstanceUID = re.SOPInstanceUID
    re.InstanceNumber = 999
    c.files["CT_contrast/resent.dcm"] = re


# ------------------------------------------------------------------ segmentations
@_case("seg_of_another_series", outcome="error", error_class="SegmentationError",
       message="not in the archive", where="failures",
       description="the SEG references a CT series that is not in the archive")
def _seg_other(c: _Ctx) -> None:
    from pydicom.uid import generate_uid

    for item in c.seg().ReferencedSeriesSequence:
        item.SeriesInstanceUID = generate_uid()


def _blank_segments(c: _Ctx, numbers: set[int] | None) -> None:
    from pydicom.pixels import pack_bits

    ds = c.seg()
    arr = ds.pixel_array.copy()
    if arr.ndim == 2:
        arr = arr[None]
    for f, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        n = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if numbers is None or n in numbers:
            arr[f] = 0
    ds.PixelData = pack_bits(arr)


@_case("seg_some_segments_empty", outcome="load", expected_lesions=8, expected_empty=2,
       message="kept as an empty lesion", where="provenance",
       description="the frames of lesion segments 1 and 2 zeroed (declared but empty)")
def _seg_some_empty(c: _Ctx) -> None:
    _blank_segments(c, {1, 2})


@_case("seg_all_segments_empty", outcome="warning", expected_lesions=8, expected_empty=8,
       message="is empty (no voxel)", where="provenance",
       description="every frame of the lesion SEG zeroed")
def _seg_all_empty(c: _Ctx) -> None:
    _blank_segments(c, None)


# ------------------------------------------------------------------ PET / SUV
def _each_pet(c: _Ctx, fn: Callable[[Dataset], None]) -> None:
    for r in c.pet():
        fn(c.files[r])


def _radio(ds: Dataset) -> Dataset:
    return ds.RadiopharmaceuticalInformationSequence[0]


def _suv_case(name: str, mutate: Callable[[Dataset], None], message: str, desc: str) -> None:
    _case(name, outcome="warning", message=message, where="suv_reason", expected_lesions=8,
          description=desc)(lambda c: _each_pet(c, mutate))


_suv_case("pet_without_weight", lambda ds: delattr(ds, "PatientWeight"),
          "PatientWeight (0010,1030)", "PatientWeight deleted from every PET slice")
_suv_case("pet_without_dose", lambda ds: delattr(_radio(ds), "RadionuclideTotalDose"),
          "RadionuclideTotalDose (0018,1074)", "RadionuclideTotalDose deleted")
_suv_case("pet_without_injection_time",
          lambda ds: (delattr(_radio(ds), "RadiopharmaceuticalStartDateTime"),
                      delattr(_radio(ds), "RadiopharmaceuticalStartTime")),
          "RadiopharmaceuticalStartTime", "both injection time attributes deleted")
_suv_case("pet_without_radiopharmaceutical",
          lambda ds: delattr(ds, "RadiopharmaceuticalInformationSequence"),
          "RadiopharmaceuticalInformationSequence", "the whole radiopharmaceutical sequence "
          "deleted")
_suv_case("pet_without_units", lambda ds: delattr(ds, "Units"), "Units (0054,1001)",
          "Units deleted")
_suv_case("pet_wrong_units", lambda ds: setattr(ds, "Units", "CPS"), "unsupported PET Units",
          "Units CPS (counts per second)")


def _pet_factor(c: _Ctx) -> tuple[float, float]:
    """(SUVbw factor, decay factor) of the base PET, from its headers."""
    from pipeline.io.suv import suv_audit

    a = suv_audit([c.base[r] for r in sorted(r for r in c.base if r.startswith("PET/"))])
    return float(a.suvbw_factor), float(a.decay_factor)


@_case("pet_dose_mbq_weight_grams", outcome="load", message="taken as MBq",
       where="provenance", expected_lesions=8, same_suv_as_reference=True,
       description="RadionuclideTotalDose in MBq (370) and PatientWeight in grams (75000)")
def _mbq(c: _Ctx) -> None:
    def f(ds):
        r = _radio(ds)
        r.RadionuclideTotalDose = f"{float(r.RadionuclideTotalDose) / 1e6:.6g}"
        ds.PatientWeight = f"{float(ds.PatientWeight) * 1000:.6g}"
    _each_pet(c, f)


@_case("pet_units_gml", outcome="load", message="not converted again", where="provenance",
       expected_lesions=8, same_suv_as_reference=True,
       description="values stored as SUVbw (Units GML: RescaleSlope x SUV factor)")
def _gml(c: _Ctx) -> None:
    factor, _ = _pet_factor(c)

    def f(ds):
        ds.Units = "GML"
        ds.RescaleSlope = f"{float(ds.RescaleSlope) * factor:.10g}"
    _each_pet(c, f)


@_case("pet_philips_cnts", outcome="load", expected_lesions=8, same_suv_as_reference=True,
       description="Philips counts: Units CNTS, RescaleSlope halved, activity concentration "
       "scale factor 2 and SUV scale factor in the private group 7053")
def _cnts(c: _Ctx) -> None:
    factor, _ = _pet_factor(c)

    def f(ds):
        ds.Units = "CNTS"
        ds.RescaleSlope = f"{float(ds.RescaleSlope) / 2:.10g}"
        blk = ds.private_block(0x7053, "Philips PET Private Group", create=True)
        blk.add_new(0x00, "DS", f"{2 * factor:.10g}")
        blk.add_new(0x09, "DS", "2")
    _each_pet(c, f)


@_case("pet_decay_admin", outcome="load", expected_lesions=8, same_suv_as_reference=True,
       description="DecayCorrection ADMIN, values decay-corrected to the injection")
def _admin(c: _Ctx) -> None:
    _, decay = _pet_factor(c)

    def f(ds):
        ds.DecayCorrection = "ADMIN"
        ds.RescaleSlope = f"{float(ds.RescaleSlope) / decay:.10g}"
    _each_pet(c, f)


@_case("pet_midnight_crossing", outcome="load", message="midnight crossing", where="provenance",
       expected_lesions=8, same_suv_as_reference=True,
       description="every PET time moved 13.5 h later (injection 23:30, scan after midnight), "
       "only RadiopharmaceuticalStartTime kept")
def _midnight(c: _Ctx) -> None:
    from datetime import datetime, timedelta

    shift = timedelta(hours=13, minutes=30)

    def mv(date: str, time: str) -> tuple[str, str]:
        t = str(time).split(".")[0]
        dt = datetime.strptime(str(date) + t, "%Y%m%d%H%M%S") + shift
        return dt.strftime("%Y%m%d"), dt.strftime("%H%M%S")

    def f(ds):
        for d_kw, t_kw in (("SeriesDate", "SeriesTime"), ("AcquisitionDate", "AcquisitionTime"),
                           ("ContentDate", "ContentTime"), ("StudyDate", "StudyTime")):
            if d_kw in ds and t_kw in ds:
                d, t = mv(ds.data_element(d_kw).value, ds.data_element(t_kw).value)
                setattr(ds, d_kw, d)
                setattr(ds, t_kw, t)
        r = _radio(ds)
        _, t = mv(ds.SeriesDate, str(r.RadiopharmaceuticalStartTime))
        # the injection keeps its date (the day before the new SeriesDate): only the time is kept
        r.RadiopharmaceuticalStartTime = (datetime.strptime(str(r.RadiopharmaceuticalStartTime)
                                                            .split(".")[0], "%H%M%S")
                                          + shift).strftime("%H%M%S")
        del r.RadiopharmaceuticalStartDateTime
    _each_pet(c, f)


@_case("pet_not_attenuation_corrected", outcome="warning",
       message="non-attenuation-corrected", where="notes", expected_lesions=8,
       description="the only PET is not attenuation-corrected (CorrectedImage without ATTN)")
def _nac(c: _Ctx) -> None:
    def f(ds):
        ds.CorrectedImage = ["DECY", "RAN", "NORM"]
        ds.SeriesDescription = "PET WB NAC"
    _each_pet(c, f)


# ------------------------------------------------------------------ identifiers
@_case("unsafe_patient_id_dotdot", outcome="load", expected_lesions=8,
       description="PatientID ../../x")
def _dotdot(c: _Ctx) -> None:
    c.patient_id = "../../x"


@_case("unsafe_patient_id_unicode", outcome="load", expected_lesions=8,
       description="PatientID with a slash, accents and CJK characters")
def _unicode(c: _Ctx) -> None:
    c.patient_id = "Müller/患者 01"


@_case("empty_patient_id", outcome="load", expected_lesions=8, description="PatientID empty")
def _empty_id(c: _Ctx) -> None:
    c.patient_id = ""


# ------------------------------------------------------------------ encodings
def _compress(rels: list[str], syntax: str) -> Callable[[Path], None]:
    def run(folder: Path) -> None:
        for r in rels:
            compress_file(folder / r, folder / r, syntax)
    return run


@_case("compressed_rle_jpegls", outcome="load", expected_lesions=8,
       description="CT slices alternately RLE and JPEG-LS lossless")
def _c1(c: _Ctx) -> None:
    rels = c.ct()
    c.post += [_compress(rels[0::2], "rle"), _compress(rels[1::2], "jpeg_ls")]


@_case("compressed_j2k_jpeg_lossless", outcome="load", expected_lesions=8,
       description="CT slices alternately JPEG 2000 lossless and JPEG lossless (process 14)")
def _c2(c: _Ctx) -> None:
    rels = c.ct()
    c.post += [_compress(rels[0::2], "jpeg2000"), _compress(rels[1::2], "jpeg_lossless")]


@_case("compressed_jpeg_baseline_deflate", outcome="load", expected_lesions=8,
       same_suv_as_reference=True,
       description="CT in 8-bit JPEG baseline (lossy), PET in deflated explicit VR")
def _c3(c: _Ctx) -> None:
    c.post += [_compress(c.ct(), "jpeg_baseline"), _compress(c.pet(), "deflate")]


@_case("enhanced_ct", outcome="load", expected_lesions=8,
       description="the CT as one Enhanced CT multi-frame object (frames in reverse order)")
def _enhanced(c: _Ctx) -> None:
    rels = c.ct()
    for item in c.seg().ReferencedSeriesSequence:
        if "ReferencedInstanceSequence" in item:
            del item.ReferencedInstanceSequence

    def run(folder: Path) -> None:
        paths = [folder / r for r in rels]
        to_enhanced_ct(paths, folder / "CT_contrast_enhanced.dcm",
                       frame_order=list(range(len(paths)))[::-1])
        shutil.rmtree(folder / "CT_contrast")
    c.post.append(run)


# ------------------------------------------------------------------ series choice
@_case("localizer_and_reports", outcome="load", message="series excluded", where="notes",
       expected_lesions=8,
       description="a localizer series, a secondary-capture dose screen and a dose SR added")
def _loc(c: _Ctx) -> None:
    from pydicom.uid import generate_uid

    src = c.files[c.ct()[0]]
    loc = copy.deepcopy(src)
    loc.SeriesInstanceUID = generate_uid()
    loc.SOPInstanceUID = generate_uid()
    loc.file_meta.MediaStorageSOPInstanceUID = loc.SOPInstanceUID
    loc.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    loc.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    loc.SeriesDescription = "Topogram 0.6 T20f"
    c.files["localizer/IM0001"] = loc
    sc = copy.deepcopy(src)
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    sc.SeriesInstanceUID = generate_uid()
    sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sc.Modality = "OT"
    sc.SeriesDescription = "Dose Report"
    c.files["dose/screen.dcm"] = sc
    sr = Dataset()
    sr.file_meta = copy.deepcopy(src.file_meta)
    for kw in ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyTime"):
        setattr(sr, kw, src.data_element(kw).value)
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.SeriesInstanceUID = generate_uid()
    sr.Modality = "SR"
    sr.SeriesDescription = "Radiation Dose Information"
    c.files["dose/rdsr.dcm"] = sr


@_case("ct_only", outcome="warning", message="no PET series", where="suv_reason",
       expected_lesions=8, description="the PET removed")
def _ct_only(c: _Ctx) -> None:
    for r in c.pet():
        del c.files[r]


@_case("pet_only_labelmap", outcome="load", message="PET-only study", where="notes",
       description="no CT: the PET and a NIfTI label map of the lesions drawn on the PET grid")
def _pet_only(c: _Ctx) -> None:
    for r in c.ct():
        del c.files[r]
    del c.files["SEG_lesions.dcm"]
    c.extra["labelmap_pet/lesions_pet.nii.gz"] = c.base_labelmap_pet  # type: ignore[attr-defined]
    pet_uid = str(c.files[c.pet()[0]].SeriesInstanceUID)
    c.json_files["labelmap_pet/lesions_pet.json"] = {
        "kind": "lesion", "referenced_series_uid": pet_uid,
        "study_uid": str(c.files[c.pet()[0]].StudyInstanceUID),
        "patient_id": "", "names": c.base_labelmap_pet_names,  # type: ignore[attr-defined]
    }


@_case("rtstruct_only", outcome="load", expected_lesions=8,
       description="lesions as RTSTRUCT only (no SEG)")
def _rt_only(c: _Ctx) -> None:
    del c.files["SEG_lesions.dcm"]
    c.add_from_base("RTSTRUCT_lesions.dcm")


@_case("rtstruct_contours_off_slices", outcome="error", error_class="SegmentationError",
       message="lies on no slice", where="failures",
       description="RTSTRUCT only, every contour moved 500 mm along z (beyond the CT)")
def _rt_off(c: _Ctx) -> None:
    del c.files["SEG_lesions.dcm"]
    c.add_from_base("RTSTRUCT_lesions.dcm")
    for rc in c.files["RTSTRUCT_lesions.dcm"].ROIContourSequence:
        for ct in rc.ContourSequence:
            v = [float(x) for x in ct.ContourData]
            ct.ContourData = [f"{x + 500.0:.4f}" if i % 3 == 2 else f"{x:.4f}"
                              for i, x in enumerate(v)]


@_case("rtstruct_partly_present_series", outcome="warning", message="partly present series",
       where="notes",
       description="RTSTRUCT only, the top 20 CT slices not transferred (the structure set "
       "still lists them): the contours on the 36 present slices are used")
def _rt_partial(c: _Ctx) -> None:
    del c.files["SEG_lesions.dcm"]
    c.add_from_base("RTSTRUCT_lesions.dcm")
    rels = c.ct()
    gone = {str(c.files[r].SOPInstanceUID) for r in rels[-20:]}
    for r in rels[-20:]:
        del c.files[r]
    kept = 0
    for rc in c.files["RTSTRUCT_lesions.dcm"].ROIContourSequence:
        refs = [str(ci.ReferencedSOPInstanceUID) for ct in rc.ContourSequence
                for ci in ct.get("ContourImageSequence", [])]
        kept += any(u not in gone for u in refs)
    c.expected_lesions = kept


@_case("rtstruct_of_absent_series", outcome="error", error_class="SegmentationError",
       message="not in the archive", where="failures",
       description="RTSTRUCT only, referencing a CT series (and instances) that is not in the "
       "archive")
def _rt_absent(c: _Ctx) -> None:
    from pydicom.uid import generate_uid

    del c.files["SEG_lesions.dcm"]
    c.add_from_base("RTSTRUCT_lesions.dcm")
    rt = c.files["RTSTRUCT_lesions.dcm"]
    new = {}
    for fr in rt.ReferencedFrameOfReferenceSequence:
        for st in fr.RTReferencedStudySequence:
            for se in st.RTReferencedSeriesSequence:
                se.SeriesInstanceUID = generate_uid()
                for ci in se.ContourImageSequence:
                    ci.ReferencedSOPInstanceUID = new.setdefault(
                        str(ci.ReferencedSOPInstanceUID), generate_uid())
    for rc in rt.ROIContourSequence:
        for ct in rc.ContourSequence:
            for ci in ct.get("ContourImageSequence", []):
                ci.ReferencedSOPInstanceUID = new.setdefault(str(ci.ReferencedSOPInstanceUID),
                                                             generate_uid())


@_case("invalid_study_uid", outcome="load", expected_lesions=8,
       description="StudyInstanceUID ';rm -rf /' followed by 10,000 digits in every file (the "
       "study gets a generated 2.25 UID)")
def _bad_study_uid(c: _Ctx) -> None:
    for ds in c.files.values():
        ds.StudyInstanceUID = INVALID_STUDY_UID


@_case("control_characters_in_patient_id", outcome="load", expected_lesions=8,
       description="PatientID with an escape sequence and a bell (ESC [31m, BEL)")
def _ctrl_id(c: _Ctx) -> None:
    c.patient_id = "CTRL\x1b[31m\x07 01"


@_case("labelmap_only", outcome="load", expected_lesions=8,
       description="lesions as the NIfTI label map with its JSON sidecar only")
def _lm_only(c: _Ctx) -> None:
    del c.files["SEG_lesions.dcm"]
    c.extra["labelmap/lesions.nii.gz"] = c.base_labelmap  # type: ignore[attr-defined]
    c.json_files["labelmap/lesions.json"] = dict(c.base_labelmap_sidecar)  # type: ignore


def case_names() -> list[str]:
    """Names of all corpus cases, in table order."""
    return [name for name, _, _ in _CASES]


# =========================================================================== writing
_STANDARD_PREFIX = "1.2.840.10008."


def _instance_uids(datasets) -> set[str]:
    """Every UID value in the datasets that is not a standard (DICOM-defined) UID."""
    found: set[str] = set()

    def cb(_ds, elem):
        if elem.VR == "UI" and elem.value:
            vals = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) \
                else [elem.value]
            found.update(str(v) for v in vals if not str(v).startswith(_STANDARD_PREFIX))
    for ds in datasets:
        ds.walk(cb)
    return found


def _remap(ds: Dataset, m: dict[str, str]) -> None:
    def cb(_ds, elem):
        if elem.VR == "UI" and elem.value:
            if isinstance(elem.value, (list, pydicom.multival.MultiValue)):
                elem.value = [m.get(str(v), str(v)) for v in elem.value]
            else:
                elem.value = m.get(str(elem.value), str(elem.value))
    ds.walk(cb)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = m.get(str(meta.MediaStorageSOPInstanceUID),
                                                str(meta.MediaStorageSOPInstanceUID))


def write_corpus(outdir: str | Path, *, seed: int = 0, only: list[str] | None = None
                 ) -> list[CorpusCase]:
    """Write the malformed-input corpus (see the module docstring) under ``outdir``.

    Parameters
    ----------
    outdir : path
        Created if needed; one sub-folder ``NN_<case>`` per case (replaced if present).
    seed : int
        Phantom seed.
    only : list of str, optional
        Case names to write (default: all).

    Returns
    -------
    list of CorpusCase
        In table order. Also written to ``outdir/corpus.json`` (without folders' absolute
        paths) for tools that check a run.
    """
    from pydicom.uid import generate_uid

    from pipeline.io.sanitize import is_valid_uid, replacement_uid
    from pipeline.testing.phantom import generate_patient, phantom_arrays

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=outdir) as tmp:
        folder = generate_patient(Path(tmp), 1, "small", seed)
        base: dict[str, Dataset] = {}
        for sub in ("CT_contrast", "PET"):
            for p in sorted((folder / sub).iterdir()):
                base[f"{sub}/{p.name}"] = pydicom.dcmread(p)
        for name in ("SEG_lesions.dcm", "RTSTRUCT_lesions.dcm"):
            base[name] = pydicom.dcmread(folder / name)
        labelmap = (folder / "labelmap" / "lesions.nii.gz").read_bytes()
        sidecar = json.loads((folder / "labelmap" / "lesions.json").read_text())
    arrays = phantom_arrays("small", 1, seed)
    pet_lab, pet_names = _pet_labelmap(arrays)
    default = [r for r in base if r.startswith(("CT_contrast/", "PET/"))] + ["SEG_lesions.dcm"]
    uids = _instance_uids(base.values())
    uids.update(str(sidecar.get(k, "")) for k in ("referenced_series_uid", "study_uid")
                if sidecar.get(k))
    cases: list[CorpusCase] = []
    for number, (name, expect, build) in enumerate(_CASES, start=1):
        if only is not None and name not in only:
            continue
        case_dir = outdir / f"{number:02d}_{name}"
        if case_dir.exists():
            shutil.rmtree(case_dir)
        ctx = _Ctx(name=name, files={r: copy.deepcopy(base[r]) for r in default}, base=base)
        ctx.base_labelmap, ctx.base_labelmap_sidecar = labelmap, sidecar  # type: ignore
        ctx.base_labelmap_pet, ctx.base_labelmap_pet_names = pet_lab, pet_names  # type: ignore
        build(ctx)
        m = {u: generate_uid(entropy_srcs=[f"hitit corpus {seed}", name, u]) for u in uids}
        pid = f"CORPUS{number:02d}" if ctx.patient_id is None else ctx.patient_id
        for rel, ds in ctx.files.items():
            _remap(ds, m)
            if "PatientID" in ds or ds.get("Modality", ""):
                if not pid.isascii():
                    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
                ds.PatientID = pid
                ds.PatientName = f"Corpus^{name}"
            path = case_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
        for fn in ctx.post:
            fn(case_dir)
        for rel, data in ctx.extra.items():
            (case_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (case_dir / rel).write_bytes(data)
        for rel, obj in ctx.json_files.items():
            obj = {k: (m.get(v, v) if isinstance(v, str) else v) for k, v in obj.items()}
            if "patient_id" in obj:
                obj["patient_id"] = pid
            (case_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (case_dir / rel).write_text(json.dumps(obj, indent=2))
        any_ds = next(iter(ctx.files.values()))
        study = str(any_ds.get("StudyInstanceUID", "") or m.get(sidecar.get("study_uid", ""), ""))
        series = {}
        for role, prefix in (("ct", "CT_contrast/"), ("pet", "PET/")):
            rel = next((r for r in ctx.files if r.startswith(prefix)), None)
            if rel is not None and "SeriesInstanceUID" in ctx.files[rel]:
                series[role] = str(ctx.files[rel].SeriesInstanceUID)
        for role, rel in (("seg", "SEG_lesions.dcm"), ("rtstruct", "RTSTRUCT_lesions.dcm")):
            if rel in ctx.files:
                series[role] = str(ctx.files[rel].SeriesInstanceUID)
        if study and not is_valid_uid(study):
            study = replacement_uid(study)  # what the index uses instead
        exp = dict(expect)
        if ctx.expected_lesions is not None:
            exp["expected_lesions"] = ctx.expected_lesions
        if name == "pet_only_labelmap":
            exp["expected_lesions"] = len(pet_names)
        cases.append(CorpusCase(name=name, folder=case_dir, patient_id=pid, study_uid=study,
                                series=series, **exp))
    (outdir / "corpus.json").write_text(json.dumps(
        [dict(c.__dict__, folder=c.folder.name) for c in cases], indent=2, ensure_ascii=False))
    log.info("corpus: %d cases written to %s", len(cases), outdir)
    return cases


def _pet_labelmap(arrays) -> tuple[bytes, dict[str, str]]:
    """The phantom's lesion labels on the PET grid as NIfTI bytes, and their names."""
    import gzip
    import io

    import nibabel as nib

    lab = np.asarray(arrays.pet_lesion_labels, dtype=np.uint8)
    img = nib.Nifti1Image(np.ascontiguousarray(lab.transpose(2, 1, 0)),
                          arrays.pet_grid.nifti_affine_ras())
    buf = io.BytesIO()
    buf.write(img.to_bytes())
    names = {str(k): les.name for k, les in enumerate(arrays.design.lesions, start=1)
             if (lab == k).any()}
    return gzip.compress(buf.getvalue()), names
