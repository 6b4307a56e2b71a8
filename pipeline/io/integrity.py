"""File recognition and integrity checks of the archive index (headers only, no pixel values).

Recognition (:func:`read_checked_header`)
-----------------------------------------
* **DICOM is recognised by content**, not by name (:func:`sniff_dicom`): either the 128-byte
  preamble followed by ``DICM``, or (files without preamble) a first element in group 0002 or
  0008 and a dataset that pydicom can parse. Headers are read with
  ``pydicom.dcmread(..., stop_before_pixels=True)``; no pixel data is read.
* **DICOMDIR** files (MediaStorageSOPClassUID 1.2.840.10008.1.3.10) are skipped: the tree itself
  is indexed, the directory record is neither required nor trusted.
* Files that are not DICOM get the error class :data:`NOT_DICOM` (listed, not failures).

Truncation check (:func:`check_complete`)
-----------------------------------------
pydicom silently accepts a file cut in the middle of an element (it reads what is there), so
after the header is parsed the file's element *structure* is walked without reading values:
from the start of the data set (after the preamble and group 0002), each element header (tag,
VR, length) is read and the reader seeks past the value; undefined-length sequences and
encapsulated pixel data are walked item by item (8-byte item headers only). Whenever an element
or item claims more bytes than remain in the file (``value offset + length > file size``), or a
header itself is cut, the file is truncated. For a file cut in the middle of PixelData this costs
one seek: the PixelData element header gives its length, which is compared with the bytes left.
Native (uncompressed) PixelData is also compared with Rows x Columns x SamplesPerPixel x
NumberOfFrames x BitsAllocated / 8. Deflated transfer syntaxes cannot be walked without
inflating and are only parsed.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pydicom

from pipeline.io.dicom import has_value

log = logging.getLogger(__name__)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
DEFLATED_TS = "1.2.840.10008.1.2.1.99"
#: Storage SOP classes that always carry PixelData (CT, enhanced/legacy CT, MR, PET, enhanced/
#: legacy PET, SEG, secondary capture).
IMAGE_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2",
    "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.128",
    "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.128.1",
    "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.7",
})
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}

#: ``error_class`` of files that are simply not DICOM (notes, JSON, spreadsheets): listed in
#: ``problems.csv`` as skipped, but not failures of the batch.
NOT_DICOM = "NotDicom"


class _Truncated(Exception):
    pass


def _skip_meta(fp, start: int, size: int) -> int:
    """Offset of the first element after group 0002 (explicit VR little endian)."""
    fp.seek(start)
    while True:
        pos = fp.tell()
        hdr = fp.read(8)
        if len(hdr) < 8:
            fp.seek(pos)
            return pos
        group = struct.unpack("<H", hdr[:2])[0]
        if group != 0x0002:
            return pos
        vr = hdr[4:6]
        if vr in _LONG_VRS:
            ext = fp.read(4)
            if len(ext) < 4:
                raise _Truncated(f"file meta element header at byte {pos} is cut")
            length = struct.unpack("<I", ext)[0]
        else:
            length = struct.unpack("<H", hdr[6:8])[0]
        if fp.tell() + length > size:
            raise _Truncated(f"file meta element at byte {pos} declares {length} bytes but only "
                             f"{size - fp.tell()} remain (file cut)")
        fp.seek(fp.tell() + length)


def _walk_items(fp, size: int, implicit: bool, endian: str, where: str) -> None:
    """Walk the items of an undefined-length sequence / encapsulated value up to (FFFE,E0DD)."""
    while True:
        pos = fp.tell()
        hdr = fp.read(8)
        if len(hdr) < 8:
            raise _Truncated(f"{where}: item header at byte {pos} is cut (file ends)")
        group, elem, length = struct.unpack(endian + "HHI", hdr)
        if group != 0xFFFE:
            raise _Truncated(f"{where}: expected an item tag at byte {pos}, found "
                             f"({group:04X},{elem:04X}) (file damaged)")
        if elem == 0xE0DD:
            return
        if elem != 0xE000:
            raise _Truncated(f"{where}: unexpected delimiter ({group:04X},{elem:04X}) at {pos}")
        if length == 0xFFFFFFFF:
            _walk_dataset(fp, size, implicit, endian, nested=True, where=where)
        else:
            if fp.tell() + length > size:
                raise _Truncated(f"{where}: item at byte {pos} needs {length} bytes, only "
                                 f"{size - fp.tell()} remain")
            fp.seek(fp.tell() + length)


def _walk_dataset(fp, size: int, implicit: bool, endian: str, *, nested: bool,
                  where: str = "", pixel_info: dict | None = None) -> None:
    while True:
        pos = fp.tell()
        hdr = fp.read(8)
        if not hdr and not nested:
            return
        if len(hdr) < 8:
            raise _Truncated(f"{where or 'data set'}: element header at byte {pos} is cut "
                             "(file ends)")
        group, elem = struct.unpack(endian + "HH", hdr[:4])
        if group == 0xFFFE and elem == 0xE00D:  # end of an undefined-length item
            return
        tag = f"({group:04X},{elem:04X})"
        vr = b""
        if implicit:
            length = struct.unpack(endian + "I", hdr[4:8])[0]
        else:
            vr = hdr[4:6]
            if vr in _LONG_VRS:
                ext = fp.read(4)
                if len(ext) < 4:
                    raise _Truncated(f"element {tag} header at byte {pos} is cut (file ends)")
                length = struct.unpack(endian + "I", ext)[0]
            else:
                length = struct.unpack(endian + "H", hdr[6:8])[0]
        value_pos = fp.tell()
        if pixel_info is not None and not nested and group == 0x7FE0 and elem == 0x0010:
            pixel_info["length"] = length
            pixel_info["offset"] = value_pos
        if length == 0xFFFFFFFF:
            # UN with undefined length is encoded implicit VR little endian (PS3.5 6.2.2)
            sub_implicit = implicit or vr == b"UN"
            _walk_items(fp, size, sub_implicit, "<" if vr == b"UN" else endian,
                        where=f"element {tag}")
        else:
            if value_pos + length > size:
                raise _Truncated(
                    f"element {tag} at byte {pos} declares {length} bytes but only "
                    f"{size - value_pos} remain (file cut)"
                )
            fp.seek(value_pos + length)


def check_complete(path: str | Path, ds: pydicom.Dataset) -> str | None:
    """Return why ``path`` is truncated or inconsistent, or None if its structure is complete.

    Reads only element and item headers (see the module docstring), never pixel values.
    """
    size = os.path.getsize(path)
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if ts == DEFLATED_TS:
        return None
    enc = getattr(ds, "original_encoding", None) or (None, None)
    implicit, little = enc
    if implicit is None:
        implicit, little = False, True
    pixel_info: dict = {}
    with open(path, "rb") as fp:
        head = fp.read(132)
        start = 132 if len(head) == 132 and head[128:132] == b"DICM" else 0
        try:
            data_start = _skip_meta(fp, start, size)
            if data_start >= size:
                raise _Truncated("no data set after the file meta information")
            fp.seek(data_start)
            _walk_dataset(fp, size, bool(implicit), "<" if little else ">", nested=False,
                          pixel_info=pixel_info)
        except _Truncated as exc:
            return f"truncated or damaged: {exc}; file size {size} bytes"
        except struct.error as exc:  # pragma: no cover - defensive
            return f"damaged element structure: {exc}"
    length = pixel_info.get("length")
    if length is not None and length != 0xFFFFFFFF and has_value(ds, "Rows"):
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            spp = int(ds.get("SamplesPerPixel", 1) or 1)
            bits = int(ds.BitsAllocated)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError):
            return None
        expected_bits = rows * cols * spp * frames * bits
        expected = (expected_bits + 7) // 8
        if length < expected:
            return (f"PixelData holds {length} bytes, expected {expected} for Rows {rows} x "
                    f"Columns {cols} x SamplesPerPixel {spp} x NumberOfFrames {frames} x "
                    f"BitsAllocated {bits} / 8 (inconsistent or cut file)")
    elif length is None:
        sop = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
                  or ds.get("SOPClassUID", "") or "")
        if sop in IMAGE_SOP_CLASSES or has_value(ds, "Rows"):
            return (f"image object (SOP class {sop or 'unknown'}) without PixelData: file cut "
                    "before the pixels")
    return None



def sniff_dicom(path: str | Path) -> tuple[bool, bool]:
    """(looks like DICOM, has preamble), from the first 132 bytes of ``path``."""
    with open(path, "rb") as fp:
        head = fp.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return True, True
    if len(head) >= 8:
        group = struct.unpack("<H", head[:2])[0]
        if group in (0x0002, 0x0008):
            return True, False
    return False, False


def header_str(ds, kw: str) -> str:
    """A header attribute as a stripped string ("" if absent; multi-values joined by "\\")."""
    v = ds.get(kw, "")
    if v is None:
        return ""
    if isinstance(v, pydicom.multival.MultiValue) or isinstance(v, (list, tuple)):
        return "\\".join(str(x) for x in v)
    return str(v).strip()


@dataclass(frozen=True)
class HeaderCheck:
    """What :func:`read_checked_header` found for one file.

    Attributes
    ----------
    dataset : pydicom.Dataset or None
        The header (no pixel data) when the file is a complete DICOM object; None otherwise.
    reason : str
        Why the file is not usable ("" when ``dataset`` is set or the file is skipped silently,
        e.g. a DICOMDIR).
    error_class : str
        ``DicomReadError``, ``MissingTagError`` or :data:`NOT_DICOM` ("" when usable or skipped).
    partial : pydicom.Dataset or None
        The header of a file that could be parsed but is cut or incomplete, so that its patient,
        study and series can be reported.
    """

    dataset: pydicom.Dataset | None
    reason: str = ""
    error_class: str = ""
    partial: pydicom.Dataset | None = None


def read_checked_header(path: str | Path) -> HeaderCheck:
    """Recognise ``path`` as DICOM by content, read its header and check it is complete.

    Parameters
    ----------
    path : str or Path
        Any file of the archive.

    Returns
    -------
    HeaderCheck
        ``dataset`` set when the file is a complete DICOM object with Study, Series and SOP
        Instance UIDs; otherwise ``reason`` / ``error_class`` say why (DICOMDIR files return an
        empty check: skipped, not a problem).
    """
    p = Path(path)
    looks, preamble = sniff_dicom(p)
    if not looks:
        return HeaderCheck(None, "not a DICOM file (no DICM preamble and no DICOM group "
                                 "0002/0008 at the start)", NOT_DICOM)
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True, force=not preamble)
    except Exception as exc:
        return HeaderCheck(None, f"unreadable DICOM header: {type(exc).__name__}: {exc}",
                           "DicomReadError")
    ms = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if ms == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        log.debug("skipping DICOMDIR %s", p)
        return HeaderCheck(None)
    if not preamble and not (has_value(ds, "SOPInstanceUID") or has_value(ds, "Modality")):
        return HeaderCheck(None, "not a DICOM file (no preamble and no SOPInstanceUID/Modality)",
                           NOT_DICOM)
    reason = check_complete(p, ds)
    if reason:
        return HeaderCheck(None, reason, "DicomReadError", partial=ds)
    missing = [kw for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
               if not has_value(ds, kw)]
    if missing:
        return HeaderCheck(None, f"DICOM file without {', '.join(missing)}: cannot be placed in "
                                 "a series", "MissingTagError", partial=ds)
    return HeaderCheck(ds)
