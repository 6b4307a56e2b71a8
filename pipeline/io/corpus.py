"""Malformed-input corpus: the archive damage real trials bring, generated from the phantom.

(The case table is completed below, in :data:`CASES_DOC`.)
"""

from __future__ import annotations

import logging
import tempfile
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
    else:
        ds.compress(pydicom.uid.UID(uid))
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
