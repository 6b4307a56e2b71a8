"""File recognition and integrity checks of the archive index (headers only, no pixel values).

Recognition (:func:`read_checked_header`)
-----------------------------------------
* **DICOM is recognised by content**, not by name (:func:`sniff_dicom`): either the 128-byte
  preamble followed by ``DICM``, or (files without preamble) a first element in group 0002 or
  0008 and a dataset that pydicom can parse. Headers are read with
  ``pydicom.dcmread(..., stop_before_pixels=True)``; no pixel data is read.
* **DICOMDIR** files (MediaStorageSOPClassUID 1.2.840.10008.1.3.10) are skipped: the tree itself
  is indexed, the directory record is neither required nor trusted. A DICOMDIR whose records
  reference files that are not there (:func:`dicomdir_absent_files`) is a problem row listing them.
* Files that are not DICOM get the error class :data:`NOT_DICOM` (listed, not failures).

Fast path (:func:`read_fast_header`)
------------------------------------
Classic single-frame CT, MR and PET files (:data:`FAST_SOP_CLASSES`) are parsed in Python up to
PixelData, reading only the values of :data:`FAST_TAGS` through a small window (skipped values
are sought past); the PixelData value must end inside the file and hold Rows x Columns x
SamplesPerPixel x BitsAllocated / 8 bytes (encapsulated: its item headers are walked), and any
elements after it are walked by their headers. Whatever the fast path is not sure of (no
preamble, big endian, deflated, another character set, a cut or inconsistent file, a missing
UID, a non-image object) returns None and is read by :func:`read_checked_header`, which gives
the documented reasons below.

Truncation check (:func:`check_complete`)
-----------------------------------------
pydicom silently accepts a file cut in the middle of an element (it reads what is there), so
after the header is parsed the file's element *structure* is walked without reading values:
from the start of the data set (after the preamble and group 0002), each element header (tag,
VR, length) is read and the reader seeks past the value; undefined-length sequences and
encapsulated pixel data are walked item by item (8-byte item headers only). Whenever an element
or item claims more bytes than remain in the file (``value offset + length > file size``), or a
header itself is cut, the file is truncated. Tags must ascend within a data set: zero bytes
(read as (0000,0000)) or an out-of-order tag end the walk at once, so the cost is bounded by the
number of elements, never by the file size; after the top-level PixelData up to
:data:`TRAILING_JUNK_MAX_BYTES` of such trailing bytes are accepted, more (a file zero-padded to
2 GB) is refused naming PixelData (7FE0,0010) and the byte count; elsewhere it is a damaged file.
Files larger than ``index.max_file_mb`` are refused by the index before any byte is read. For a file cut in the middle of PixelData this costs
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


#: Bytes after the top-level PixelData that do not form DICOM elements (zero padding, junk)
#: accepted without remark; more is refused (pydicom would read them 8 bytes at a time: about
#: 0.7 s per MB, 13 min for a file zero-padded to 2 GB).
TRAILING_JUNK_MAX_BYTES = 64 * 1024


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
    prev = -1
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
        cur = (group << 16) | elem
        if prev >= 0 and cur <= prev:
            # tags ascend in a data set; zero bytes read as (0000,0000) break the order at once,
            # so padding is never walked 8 bytes at a time
            prev_tag = f"({prev >> 16:04X},{prev & 0xFFFF:04X})"
            left = size - pos
            if not nested and prev >= 0x7FE00010:
                if left <= TRAILING_JUNK_MAX_BYTES:
                    return  # a little padding after the pixels: pydicom reads it in no time
                raise _Truncated(
                    f"{left} bytes from byte {pos} to the end of the file, after PixelData "
                    f"(7FE0,0010), are not DICOM elements ({tag} follows {prev_tag}): zero "
                    "padding or a damaged file; not read (more than "
                    f"{TRAILING_JUNK_MAX_BYTES} bytes of trailing data)")
            raise _Truncated(f"{where or 'data set'}: element {tag} at byte {pos} follows "
                             f"{prev_tag}: tags out of order or zero bytes inside the data set "
                             "(damaged file)")
        prev = cur
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


def dicomdir_absent_files(ds, folder: Path) -> list[str]:
    """ReferencedFileIDs of a DICOMDIR's records that do not exist under ``folder`` (its own
    folder), as "/"-joined paths in record order; a file differing only in case counts as present
    (file IDs are upper case, copies often are not)."""
    absent: list[str] = []
    for rec in ds.get("DirectoryRecordSequence", []) or []:
        fid = rec.get("ReferencedFileID", None)
        if not fid:
            continue
        parts = [str(x) for x in (fid if isinstance(fid, (list, pydicom.multival.MultiValue))
                                  else [fid])]
        if any(q in ("", ".", "..") or "/" in q or "\\" in q for q in parts):
            absent.append("/".join(parts))  # never looked up: it would leave the folder
            continue
        cur = Path(folder)
        for part in parts:
            nxt = cur / part
            if not nxt.exists() and cur.is_dir():
                nxt = next((c for c in cur.iterdir() if c.name.upper() == part.upper()), nxt)
            cur = nxt
        if not cur.is_file():
            absent.append("/".join(parts))
    return list(dict.fromkeys(absent))


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
        absent = dicomdir_absent_files(ds, p.parent)
        if absent:
            return HeaderCheck(None, f"DICOMDIR references {len(absent)} file(s) that are not in "
                               f"the archive: {', '.join(absent[:20])}"
                               + (" ..." if len(absent) > 20 else ""), "DicomReadError")
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


# =========================================================================== fast path
#: SOP classes read by the fast path (:func:`read_fast_header`): classic single-frame CT, MR and
#: PET images, the bulk of every archive. Everything else (SEG, RTSTRUCT, enhanced multi-frame,
#: SR, ...) is read in full by :func:`read_checked_header`; those objects are few.
FAST_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.128",
})
#: Tags the fast path extracts: tag -> (keyword, value kind). Kinds follow pydicom's decoding so
#: that a fast header and a pydicom header give the same index record: ``cs`` (CS, DA, UI:
#: default character set, trailing NUL/space removed, split on backslash), ``num`` (DS, IS:
#: every value stripped), ``text`` (LO: the data set's character set, every value right-
#: stripped), ``us`` (unsigned short).
FAST_TAGS: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "cs"),
    0x00080008: ("ImageType", "cs"),
    0x00080016: ("SOPClassUID", "cs"),
    0x00080018: ("SOPInstanceUID", "cs"),
    0x00080020: ("StudyDate", "cs"),
    0x00080060: ("Modality", "cs"),
    0x0008103E: ("SeriesDescription", "text"),
    0x00100020: ("PatientID", "text"),
    0x00180010: ("ContrastBolusAgent", "text"),
    0x0020000D: ("StudyInstanceUID", "cs"),
    0x0020000E: ("SeriesInstanceUID", "cs"),
    0x00200011: ("SeriesNumber", "num"),
    0x00200013: ("InstanceNumber", "num"),
    0x00200032: ("ImagePositionPatient", "num"),
    0x00200037: ("ImageOrientationPatient", "num"),
    0x00200052: ("FrameOfReferenceUID", "cs"),
    0x00280002: ("SamplesPerPixel", "us"),
    0x00280008: ("NumberOfFrames", "num"),
    0x00280010: ("Rows", "us"),
    0x00280011: ("Columns", "us"),
    0x00280051: ("CorrectedImage", "cs"),
    0x00280100: ("BitsAllocated", "us"),
}
#: Tags whose presence sends a file to the full read (their sequences are needed, or the file is
#: a directory): Contrast/Bolus Agent Sequence, shared / per-frame functional groups,
#: DirectoryRecordSequence.
_FAST_FALLBACK_TAGS = frozenset({0x00180012, 0x52009229, 0x52009230, 0x00041220})
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_FAST_CHARSETS = {"": "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1",
                  "ISO_IR 192": "utf_8"}
_IMPLICIT_LE = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_CHUNK = 2048
_MAX_DEPTH = 16
_UNDEFINED = 0xFFFFFFFF
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_HHI = struct.Struct("<HHI")
_HH2sH = struct.Struct("<HH2sH")


#: Version of the fast reader's decoding rules; part of the index cache key.
FAST_READER_VERSION = 1


class _Window:
    """Reads an open file through a small window, so that skipped values are never read."""

    __slots__ = ("fp", "buf", "base")

    def __init__(self, fp, first: bytes):
        self.fp, self.buf, self.base = fp, first, 0

    def get(self, off: int, n: int) -> bytes:
        rel = off - self.base
        if rel >= 0 and rel + n <= len(self.buf):
            return self.buf[rel:rel + n]
        self.fp.seek(off)
        self.buf = self.fp.read(max(n, _CHUNK))
        self.base = off
        return self.buf[:n]


class _Fallback(Exception):
    """The fast path cannot decide: read the file with pydicom instead."""


def _element(w: _Window, pos: int, implicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, value offset) of the element header at ``pos``."""
    hdr = w.get(pos, 8)
    if len(hdr) < 8:
        raise _Fallback
    if implicit:
        g, e, length = _HHI.unpack(hdr)
        return (g << 16) | e, b"", length, pos + 8
    g, e, vr, length = _HH2sH.unpack(hdr)
    if vr in _LONG_VRS:
        ext = w.get(pos + 8, 4)
        if len(ext) < 4:
            raise _Fallback
        return (g << 16) | e, vr, _U32.unpack(ext)[0], pos + 12
    if not (b"AA" <= vr <= b"ZZ"):
        raise _Fallback  # not explicit VR after all: let pydicom sort it out
    return (g << 16) | e, vr, length, pos + 8


def _skip_items(w: _Window, pos: int, implicit: bool, size: int, depth: int) -> int:
    """Offset after the sequence delimiter of an undefined-length value starting at ``pos``."""
    if depth > _MAX_DEPTH:
        raise _Fallback
    while True:
        hdr = w.get(pos, 8)
        if len(hdr) < 8:
            raise _Fallback
        g, e, length = _HHI.unpack(hdr)
        pos += 8
        if g != 0xFFFE:
            raise _Fallback
        if e == 0xE0DD:
            return pos
        if e != 0xE000:
            raise _Fallback
        if length == _UNDEFINED:
            pos = _skip_dataset(w, pos, implicit, size, depth + 1, nested=True)
        else:
            pos += length
            if pos > size:
                raise _Fallback


def _skip_dataset(w: _Window, pos: int, implicit: bool, size: int, depth: int, *,
                  nested: bool) -> int:
    """Offset after an undefined-length item (``nested``) or the end of the file."""
    while True:
        if not nested and pos == size:
            return pos
        tag, vr, length, vpos = _element(w, pos, implicit)
        if tag == 0xFFFEE00D:
            return vpos
        if length == _UNDEFINED:
            pos = _skip_items(w, vpos, implicit or vr == b"UN", size, depth + 1)
        else:
            pos = vpos + length
            if pos > size:
                raise _Fallback


def _decode(raw: bytes, kind: str, encoding: str):
    if kind == "us":
        return _U16.unpack(raw[:2])[0] if len(raw) >= 2 else None
    if kind == "text":
        parts = [p.rstrip("\x00 ") for p in raw.decode(encoding).split("\\")]
    else:
        s = raw.decode("latin_1").rstrip("\x00 ")
        parts = s.split("\\")
        if kind == "num":
            parts = [p.strip(" \x00") for p in parts]
    return parts[0] if len(parts) == 1 else parts


class FastHeader(dict):
    """The index tags of one file read by :func:`read_fast_header` (keyword -> value).

    Behaves like the parts of a :class:`pydicom.Dataset` the index uses: ``get(keyword)``,
    ``keyword in header`` and ``file_meta.get("TransferSyntaxUID")``. Values are ``str``, a
    ``list`` of ``str`` (multi-valued), or ``int`` (US).
    """

    file_meta: dict


def read_fast_header(path: str | Path, size: int) -> FastHeader | None:
    """The index tags of a complete classic CT / MR / PET file, or None to read it in full.

    Parses the element headers in Python up to PixelData, reading only the values of
    :data:`FAST_TAGS` (a few kB per file, through a small window: skipped values are sought
    past, never read), then checks completeness the cheap way: the PixelData value must end
    within the file (native: at least Rows x Columns x SamplesPerPixel x BitsAllocated / 8
    bytes; encapsulated: its 8-byte item headers are walked), and any trailing elements are
    walked by their headers.

    Parameters
    ----------
    path : str or Path
        The file.
    size : int
        Its size in bytes (from the directory walk's stat).

    Returns
    -------
    FastHeader or None
        None whenever the file is not a plain, complete, single-frame image of
        :data:`FAST_SOP_CLASSES` with a DICM preamble, little endian, in a simple character
        set (ISO_IR 6 / 100 / 192) with Study, Series and SOP Instance UIDs: the caller then
        reads it with :func:`read_checked_header`, which gives every problem its documented
        reason. A file the fast path accepts is one :func:`read_checked_header` accepts too.
    """
    with open(path, "rb") as fp:
        first = fp.read(_CHUNK)
        if len(first) < 132 + 12 or first[128:132] != b"DICM":
            return None
        w = _Window(fp, first)
        try:
            return _parse_fast(w, size)
        except OSError:
            raise
        except Exception:  # anything odd: the full read decides, with its documented reasons
            return None


def _parse_fast(w: _Window, size: int) -> FastHeader | None:
    meta: dict[str, str] = {}
    pos = 132
    while True:  # file meta: explicit VR little endian
        head = w.get(pos, 2)
        if len(head) < 2 or _U16.unpack(head)[0] != 0x0002:
            break
        tag, vr, length, vpos = _element(w, pos, False)
        if length == _UNDEFINED or vpos + length > size:
            return None
        if tag == 0x00020010:
            meta["TransferSyntaxUID"] = w.get(vpos, length).decode("latin_1").rstrip("\x00 ")
        elif tag == 0x00020002:
            meta["MediaStorageSOPClassUID"] = w.get(vpos, length).decode("latin_1").rstrip(
                "\x00 ")
        pos = vpos + length
    ts = meta.get("TransferSyntaxUID", "")
    if not ts or ts in (_BIG_ENDIAN, DEFLATED_TS):
        return None
    implicit = ts == _IMPLICIT_LE
    raw: dict[int, bytes] = {}
    # the hot loop: element headers unpacked in place from the window's buffer
    fast_tags, fallback_tags, pixel_tags, long_vrs = (FAST_TAGS, _FAST_FALLBACK_TAGS,
                                                      _PIXEL_TAGS, _LONG_VRS)
    unpack_e, unpack_i, unpack_u32 = _HH2sH.unpack_from, _HHI.unpack_from, _U32.unpack_from
    buf, base = w.buf, w.base
    while True:
        if pos >= size:
            return None  # no PixelData: not a plain image
        rel = pos - base
        if rel < 0 or rel + 12 > len(buf):
            w.get(pos, 12)
            buf, base, rel = w.buf, w.base, 0
            if len(buf) < 8:
                raise _Fallback
        if implicit:
            g, e, length = unpack_i(buf, rel)
            vr = b""
            vpos = pos + 8
        else:
            g, e, vr, length = unpack_e(buf, rel)
            if vr in long_vrs:
                if rel + 12 > len(buf):
                    raise _Fallback
                length = unpack_u32(buf, rel + 8)[0]
                vpos = pos + 12
            elif b"AA" <= vr <= b"ZZ":
                vpos = pos + 8
            else:
                raise _Fallback
        tag = (g << 16) | e
        if tag in pixel_tags:
            break
        if tag in fallback_tags:
            return None
        if length == _UNDEFINED:
            pos = _skip_items(w, vpos, implicit or vr == b"UN", size, 1)
            buf, base = w.buf, w.base
            continue
        pos = vpos + length
        if pos > size:
            return None
        if tag in fast_tags:
            r = vpos - base
            if r + length <= len(buf):
                raw[tag] = buf[r:r + length]
            else:
                raw[tag] = w.get(vpos, length)
                buf, base = w.buf, w.base
    cs = raw.get(0x00080005, b"").decode("latin_1").strip("\x00 ")
    encoding = _FAST_CHARSETS.get(cs)
    if encoding is None:
        return None
    hd = FastHeader()
    for tag, value in raw.items():
        kw, kind = FAST_TAGS[tag]
        hd[kw] = _decode(value, kind, encoding)
    hd.file_meta = meta
    sop = hd.get("SOPClassUID")
    if not isinstance(sop, str) or sop not in FAST_SOP_CLASSES or any(
            not isinstance(hd.get(k), str) or not hd.get(k)
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")):
        return None
    frames = hd.get("NumberOfFrames", "")
    if frames not in ("", "1"):
        return None
    # PixelData: must end inside the file, and hold the whole native image
    if length == _UNDEFINED:
        end = _skip_items(w, vpos, False, size, 1)
    else:
        end = vpos + length
        if end > size:
            return None
        rows, cols, bits = hd.get("Rows"), hd.get("Columns"), hd.get("BitsAllocated")
        spp = hd.get("SamplesPerPixel", 1) or 1
        if not all(isinstance(v, int) for v in (rows, cols, bits, spp)):
            return None
        if length < (rows * cols * spp * bits + 7) // 8:
            return None
    if end < size:  # trailing elements (e.g. DataSetTrailingPadding): walk their headers
        _skip_dataset(w, end, implicit, size, 1, nested=False)
    return hd
