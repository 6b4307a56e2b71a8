"""Assemble CT and PET image series into volumes.

Pixels are decoded with pydicom; compressed transfer syntaxes go through the installed plugins
(JPEG baseline / extended / lossless: pylibjpeg-libjpeg or GDCM; JPEG-LS: pyjpegls; JPEG 2000:
pylibjpeg-openjpeg; RLE: pylibjpeg-rle or pydicom's own decoder; deflate: pydicom). Geometry
comes only from :mod:`pipeline.geometry`: slices are ordered by the projection of
ImagePositionPatient on the slice normal (:func:`pipeline.geometry.sort_slices`), the grid from
:func:`pipeline.geometry.grid_from_slices`, irregular stacks are resampled by
:func:`pipeline.geometry.resample_stack`.

Slices and frames
-----------------
A series is a set of *slices*. A single-frame file is one slice; a multi-frame file (Enhanced CT
/ PET, Legacy Converted Enhanced CT / PET) contributes one slice per frame, with its position,
orientation, pixel spacing and rescale taken from the per-frame functional groups, else the
shared functional groups, else the top-level attributes. Both kinds may be mixed in one series.
Headers are read first (no pixel data); pixels are decoded only once the geometry is accepted.

Assembly rules
--------------
* Every file must belong to the requested SeriesInstanceUID and Modality, and all slices share
  ImageOrientationPatient (within 1e-4), Rows, Columns and PixelSpacing; otherwise
  :class:`GeometryError` / :class:`DicomReadError` naming the tag and the file.
* **Duplicates** (two slices within 0.01 mm along the normal): identical SOPInstanceUID (and
  frame) -> the copy is dropped; different instances -> the one with the higher InstanceNumber
  is kept. Both are recorded in ``Volume.notes``. Two frames of one multi-frame object at one
  position (several stacks or time points) -> :class:`GeometryError`.
* **Missing slices**: a step along the normal larger than 1.5 x the median step is a *gap* when
  the InstanceNumbers on both sides jump by more than 1 (instances are missing), when the step
  exceeds 3.5 x the median, or (InstanceNumbers unusable) when it is an isolated near-integer
  multiple of the median. A gap -> :class:`GeometryError` naming the series and the positions on
  both sides ("missing slices"), whatever ``on_irregular`` says: interpolating over lost files
  would invent anatomy.
* **Variable spacing** (steps that are not gaps, or any slice more than 5 % of the median step
  off the regular grid starting at the first slice) and **gantry tilt** (a slice whose origin
  drifts in-plane from the normal line through the first slice by more than 0.1 pixel) make the
  stack *irregular*. With ``on_irregular="resample"`` (default) it is resampled with linear
  interpolation onto :func:`pipeline.geometry.regular_stack_grid` (the acquired planes' frame,
  median step, in-plane extent grown to keep every slice), and ``Volume.notes`` say so, with
  the tilt in degrees and the spacings found. With ``"refuse"`` -> :class:`GeometryError` naming
  the tilt (tag GantryDetectorTilt) or the irregular spacing. A tilted series is never loaded as
  if it were untilted.
* Missing required attributes -> :class:`MissingTagError` naming keyword and ``(gggg,eeee)``.

Arrays are float32 in (z, y, x) order; the grid is in LPS mm.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pipeline.errors import ConfigError, DicomReadError, GeometryError, MissingTagError
from pipeline.geometry import (
    Grid,
    grid_from_slices,
    regular_stack_grid,
    resample_stack,
    slice_normal,
    sort_slices,
    stack_layout,
)
from pipeline.records import Volume

log = logging.getLogger(__name__)

#: Positions closer than this along the normal are the same slice (mm).
DUPLICATE_TOL_MM = 0.01
#: A step larger than this multiple of the median step is a gap or variable spacing.
GAP_FACTOR = 1.5
#: A step larger than this multiple of the median step is always a gap (missing slices).
MAX_VARIABLE_RATIO = 3.5
#: Largest deviation of a slice from the regular grid accepted as regular, fraction of the step.
IRREGULAR_FRACTION = 0.05
#: Largest in-plane drift of a slice origin from the normal line accepted as untilted (pixels).
TILT_TOL_PX = 0.1
#: Tolerance for ImageOrientationPatient equality (direction cosines).
IOP_TOL = 1e-4
#: Value given to resampled voxels outside every acquired slice, per modality.
FILL_VALUE = {"CT": -1024.0, "PT": 0.0}

OnIrregular = Literal["resample", "refuse"]

_DECODE_HINT = (
    "install the pixel-data plugins (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, "
    "pylibjpeg-rle, pyjpegls, python-gdcm) with the project's setup command, or decompress the "
    "series (e.g. `gdcmconv --raw`)"
)


# --------------------------------------------------------------------------- tag helpers
def tag_label(keyword: str) -> str:
    """``"Keyword (gggg,eeee)"`` for a DICOM keyword, e.g. ``"PatientWeight (0010,1030)"``."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def has_value(ds: Dataset, keyword: str) -> bool:
    """True if ``keyword`` is present in ``ds`` with a non-empty value."""
    if keyword not in ds:
        return False
    value = ds[keyword].value
    if value is None:
        return False
    if isinstance(value, (str, bytes, list, tuple)) or hasattr(value, "__len__"):
        try:
            return len(value) > 0
        except TypeError:  # pragma: no cover - exotic value types
            return True
    return True


def require(
    ds: Dataset,
    keyword: str,
    *,
    file: str | Path | None = None,
    series_uid: str | None = None,
    context: str = "",
    hint: str | None = None,
) -> Any:
    """Return ``ds.<keyword>`` or raise :class:`MissingTagError` naming the tag and the file."""
    if not has_value(ds, keyword):
        what = f" for {context}" if context else ""
        raise MissingTagError(
            f"required attribute {tag_label(keyword)} is absent or empty{what}",
            file=file,
            series_uid=series_uid or str(ds.get("SeriesInstanceUID", "")) or None,
            tag=tag_label(keyword),
            hint=hint
            or f"fill {keyword} in the exported files (it is mandatory in the DICOM image IOD) "
            "or exclude the series",
        )
    return ds[keyword].value


def functional_group_value(ds: Dataset, frame: int, group_keyword: str, keyword: str) -> Any:
    """An attribute of a multi-frame functional group: per-frame first, then shared; else None.

    Parameters
    ----------
    ds : Dataset
        A multi-frame object (Enhanced / Legacy Converted CT or PET, SEG).
    frame : int
        0-based frame index.
    group_keyword : str
        The functional group macro, e.g. ``"PlanePositionSequence"``.
    keyword : str
        The attribute inside it, e.g. ``"ImagePositionPatient"``.
    """
    pf = ds.get("PerFrameFunctionalGroupsSequence", None)
    if pf is not None and len(pf) > frame:
        grp = pf[frame].get(group_keyword, None)
        if grp and keyword in grp[0] and grp[0][keyword].value not in (None, ""):
            return grp[0][keyword].value
    sh = ds.get("SharedFunctionalGroupsSequence", None)
    if sh:
        grp = sh[0].get(group_keyword, None)
        if grp and keyword in grp[0] and grp[0][keyword].value not in (None, ""):
            return grp[0][keyword].value
    return None


def _fmt_pos(p: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(v):.2f}" for v in p) + ")"


# --------------------------------------------------------------------------- headers
def load_series_headers(paths: Sequence[str | Path]) -> list[Dataset]:
    """Read the headers (no pixel data) of ``paths``.

    Parameters
    ----------
    paths : sequence of path
        Files of one series, any order.

    Returns
    -------
    list of pydicom Dataset
        In the order of ``paths``; each has ``filename`` set.

    Raises
    ------
    DicomReadError
        A file cannot be parsed as DICOM (names the file).
    """
    out = []
    for p in paths:
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for bad files
            raise DicomReadError(
                f"cannot read DICOM header: {type(exc).__name__}: {exc}",
                file=p,
                hint="re-export the file; run the archive index to list all unreadable files",
            ) from exc
        out.append(ds)
    return out


# --------------------------------------------------------------------------- slices
@dataclass
class _Slice:
    """One image plane: a single-frame file or one frame of a multi-frame file."""

    file: str
    frame: int | None  # None for single-frame files
    ds: Dataset  # header (no pixel data)
    position: np.ndarray
    iop: np.ndarray
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float
    sop_uid: str
    instance_number: int | None

    @property
    def key(self) -> tuple[str, int]:
        return (self.sop_uid, -1 if self.frame is None else self.frame)

    @property
    def name(self) -> str:
        base = Path(self.file).name
        return base if self.frame is None else f"{base} frame {self.frame + 1}"


def _as_floats(value, n: int, *, file, series_uid, keyword: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{keyword} is not numeric: {value!r}", file=file,
                            series_uid=series_uid, tag=tag_label(keyword),
                            hint="re-export the series; the header is damaged") from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise GeometryError(f"{keyword} must hold {n} finite numbers, found {list(value)}",
                            file=file, series_uid=series_uid, tag=tag_label(keyword),
                            hint="re-export the series; the header is damaged")
    return arr


def _instance_number(ds: Dataset) -> int | None:
    v = ds.get("InstanceNumber", None)
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _slices_of(ds: Dataset, path: str, series_uid: str, rescale_required: bool) -> list[_Slice]:
    """Expand one header into its slices (1 for single-frame, NumberOfFrames otherwise)."""
    for kw in ("Rows", "Columns", "SOPInstanceUID"):
        require(ds, kw, file=path, series_uid=series_uid)
    try:
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        nframes = 1
    multi = nframes > 1 or "PerFrameFunctionalGroupsSequence" in ds
    out = []
    for f in range(nframes if multi else 1):
        def get(group: str, kw: str):
            if multi:
                v = functional_group_value(ds, f, group, kw)
                if v is not None:
                    return v
            return ds[kw].value if has_value(ds, kw) else None

        where = f" (frame {f + 1})" if multi else ""
        ipp = get("PlanePositionSequence", "ImagePositionPatient")
        iop = get("PlaneOrientationSequence", "ImageOrientationPatient")
        ps = get("PixelMeasuresSequence", "PixelSpacing")
        for kw, v in (("ImagePositionPatient", ipp), ("ImageOrientationPatient", iop),
                      ("PixelSpacing", ps)):
            if v is None:
                require(ds, kw, file=path, series_uid=series_uid,
                        context=f"placing the slice{where}")
        slope = get("PixelValueTransformationSequence", "RescaleSlope")
        inter = get("PixelValueTransformationSequence", "RescaleIntercept")
        if rescale_required:
            for kw, v in (("RescaleSlope", slope), ("RescaleIntercept", inter)):
                if v is None:
                    require(ds, kw, file=path, series_uid=series_uid,
                            context=f"converting stored values to physical units{where}")
        try:
            slope_f = float(slope) if slope is not None else 1.0
            inter_f = float(inter) if inter is not None else 0.0
        except (TypeError, ValueError) as exc:
            raise MissingTagError(f"RescaleSlope/RescaleIntercept not numeric{where}",
                                  file=path, series_uid=series_uid,
                                  tag=tag_label("RescaleSlope"),
                                  hint="re-export the series") from exc
        out.append(_Slice(
            file=path, frame=f if multi else None, ds=ds,
            position=_as_floats(ipp, 3, file=path, series_uid=series_uid,
                                keyword="ImagePositionPatient"),
            iop=_as_floats(iop, 6, file=path, series_uid=series_uid,
                           keyword="ImageOrientationPatient"),
            pixel_spacing=tuple(_as_floats(ps, 2, file=path, series_uid=series_uid,
                                           keyword="PixelSpacing")),
            slope=slope_f, intercept=inter_f, sop_uid=str(ds.SOPInstanceUID),
            instance_number=_instance_number(ds),
        ))
    return out


# --------------------------------------------------------------------------- pixels
def _decode(path: str, series_uid: str) -> tuple[np.ndarray, Dataset]:
    """Decode all frames of one file: (frames, rows, cols) array and its dataset."""
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise DicomReadError(
            f"cannot read DICOM file: {type(exc).__name__}: {exc}", file=path,
            series_uid=series_uid,
            hint="re-export the file; run the archive index to list all unreadable files",
        ) from exc
    require(ds, "PixelData", file=path, series_uid=series_uid)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise DicomReadError(
            f"cannot decode pixel data (transfer syntax {ts} "
            f"{getattr(ts, 'name', '')}): {type(exc).__name__}: {exc}",
            file=path, series_uid=series_uid, tag=tag_label("TransferSyntaxUID"),
            hint=_DECODE_HINT,
        ) from exc
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1 or arr.ndim not in (2, 3):
        raise DicomReadError(
            f"expected greyscale image frames, found SamplesPerPixel {spp} and pixel array of "
            f"shape {arr.shape}",
            file=path, series_uid=series_uid, tag=tag_label("SamplesPerPixel"),
            hint="colour or multi-sample images cannot be used as CT/PET volumes",
        )
    if arr.ndim == 2:
        arr = arr[None]
    return arr, ds


#: Uncompressed little-endian transfer syntaxes (Implicit / Explicit VR Little Endian).
_NATIVE_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _read_whole(path: str | Path) -> Dataset:
    """One file read once: header and pixel bytes (not decoded).

    A file whose whole read fails is read again without pixels, so that an unreadable header
    raises :class:`DicomReadError` here, as :func:`load_series_headers` does, and an unreadable
    pixel part raises later from :func:`_decode` (after the geometry checks, as before).
    """
    try:
        return pydicom.dcmread(str(path))
    except Exception:  # noqa: BLE001 - the header-only read below reports the error
        (ds,) = load_series_headers([path])
        return ds


def _native_frames(ds: Dataset) -> np.ndarray | None:
    """(frames, rows, cols) view of uncompressed greyscale pixels, or None to use pydicom.

    Only for Implicit / Explicit VR Little Endian, SamplesPerPixel 1, BitsStored ==
    BitsAllocated (8, 16 or 32) and PixelRepresentation 0 / 1: there pydicom's ``pixel_array``
    is exactly this reinterpretation of the bytes (no bit masking, no sign extension), so the
    values are identical; everything else goes through :func:`_decode`.
    """
    if "PixelData" not in ds:
        return None
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if ts not in _NATIVE_LITTLE_ENDIAN:
        return None
    try:
        bits, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        rep, spp = int(ds.PixelRepresentation), int(ds.get("SamplesPerPixel", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    if spp != 1 or bits not in (8, 16, 32) or stored != bits or rep not in (0, 1) or nframes < 1:
        return None
    dtype = np.dtype(f"<{'u' if rep == 0 else 'i'}{bits // 8}")
    n = rows * cols * nframes
    buf = ds.PixelData
    if not isinstance(buf, bytes) or len(buf) < n * dtype.itemsize:
        return None
    return np.frombuffer(buf, dtype=dtype, count=n).reshape(nframes, rows, cols)


def _read_pixels(slices: list[_Slice], series_uid: str) -> np.ndarray:
    """Rescaled float32 (N, rows, cols) for ``slices``, each file decoded once."""
    rows, cols = int(slices[0].ds.Rows), int(slices[0].ds.Columns)
    out = np.empty((len(slices), rows, cols), dtype=np.float32)
    by_file: dict[str, list[int]] = {}
    for k, s in enumerate(slices):
        by_file.setdefault(s.file, []).append(k)
    for path, ks in by_file.items():
        arr = _native_frames(slices[ks[0]].ds)
        if arr is None:
            arr, _ = _decode(path, series_uid)
        for k in ks:
            f = slices[k].frame or 0
            if f >= arr.shape[0] or arr.shape[1:] != (rows, cols):
                raise DicomReadError(
                    f"pixel data holds {arr.shape[0]} frame(s) of {arr.shape[1:]}, expected "
                    f"frame {f + 1} of ({rows}, {cols})",
                    file=path, series_uid=series_uid, tag=tag_label("NumberOfFrames"),
                    hint="the file is damaged or its NumberOfFrames/Rows/Columns are wrong; "
                    "re-export it",
                )
            # stored -> float32, x slope, + intercept, each rounded to float32 as before, in place
            np.multiply(arr[f], np.float32(slices[k].slope), out=out[k], dtype=np.float32)
            out[k] += np.float32(slices[k].intercept)
        del arr
        ds = slices[ks[0]].ds
        if "PixelData" in ds:  # headers leave without their pixels (as a header-only read)
            del ds.PixelData
    return out


# --------------------------------------------------------------------------- step analysis
def _gap_steps(proj: np.ndarray, slices: list[_Slice]) -> tuple[list[int], list[int], float]:
    """Split large steps into gaps (missing slices) and variable spacing.

    Returns (gap step indices, variable-spacing step indices, median step).
    """
    steps = np.diff(proj)
    med = float(np.median(steps))
    big = [int(g) for g in np.flatnonzero(steps > GAP_FACTOR * med)]
    inst = [s.instance_number for s in slices]
    usable = (all(v is not None for v in inst) and len(set(inst)) == len(inst)
              and len({s.sop_uid for s in slices}) == len(slices))
    if usable:
        d = np.diff(np.asarray(inst, dtype=np.int64))
        usable = bool(np.all(d > 0) or np.all(d < 0))
    gaps, variable = [], []
    for g in big:
        ratio = steps[g] / med
        if ratio > MAX_VARIABLE_RATIO:
            gaps.append(g)
        elif usable:
            (gaps if abs(inst[g + 1] - inst[g]) > 1 else variable).append(g)
        else:
            near_int = abs(ratio - round(ratio)) < 0.1
            isolated = (g - 1 not in big) and (g + 1 not in big)
            (gaps if near_int and isolated else variable).append(g)
    return gaps, variable, med


# --------------------------------------------------------------------------- assembly
def _assemble(
    paths: Sequence[str | Path],
    *,
    series_uid: str,
    modality: str,
    rescale_required: bool,
    on_irregular: OnIrregular = "resample",
) -> tuple[np.ndarray, Grid, list[Dataset], list[str], str]:
    """Shared CT/PET assembly: (array float32 zyx, grid, headers in slice order, notes, FoR)."""
    if on_irregular not in ("resample", "refuse"):
        raise ConfigError(f"index.on_irregular must be 'resample' or 'refuse', got {on_irregular!r}",
                          hint="set index.on_irregular to resample or refuse")
    if len(paths) == 0:
        raise DicomReadError(
            f"no files given for {modality} series",
            series_uid=series_uid,
            hint="check the archive index: the series has no readable files",
        )
    slices: list[_Slice] = []
    n_multi = 0
    for p in paths:
        ds = _read_whole(p)
        uid = str(require(ds, "SeriesInstanceUID", file=p, series_uid=series_uid))
        if uid != series_uid:
            raise DicomReadError(
                f"file belongs to series {uid}, expected {series_uid}",
                file=p,
                series_uid=series_uid,
                tag=tag_label("SeriesInstanceUID"),
                hint="pass only the files of one series (see files.csv of the archive index)",
            )
        mod = str(require(ds, "Modality", file=p, series_uid=series_uid))
        if mod != modality:
            raise DicomReadError(
                f"expected Modality {modality}, found {mod}",
                file=p,
                series_uid=series_uid,
                tag=tag_label("Modality"),
                hint="check the study sheet: the series chosen for this role has another modality",
            )
        new = _slices_of(ds, str(p), series_uid, rescale_required)
        if new[0].frame is not None:
            n_multi += 1
        slices.extend(new)
    notes: list[str] = []
    if n_multi:
        notes.append(f"{n_multi} multi-frame file(s): geometry and rescale from the functional "
                     "groups")

    # ---- shared in-plane geometry
    iops = np.array([s.iop for s in slices])
    bad = np.flatnonzero(np.any(np.abs(iops - iops[0]) > IOP_TOL, axis=1))
    if len(bad):
        distinct = {tuple(np.round(r, 4)) for r in iops}
        s_bad = slices[bad[0]]
        raise GeometryError(
            f"mixed slice orientations in one series: expected one ImageOrientationPatient, found "
            f"{len(distinct)} ({'; '.join(str(list(d)) for d in sorted(distinct))}); first "
            f"differing slice {s_bad.name}",
            file=s_bad.file,
            series_uid=series_uid,
            tag=tag_label("ImageOrientationPatient"),
            hint="split the series by orientation (e.g. a localizer mixed into the volume) and "
            "re-export the axial stack alone",
        )
    iop = iops[0]
    slice_normal(iop)  # raises GeometryError on degenerate cosines
    checks = {
        "Rows": [(int(s.ds.Rows),) for s in slices],
        "Columns": [(int(s.ds.Columns),) for s in slices],
        "PixelSpacing": [s.pixel_spacing for s in slices],
    }
    for kw, vals in checks.items():
        i = next((i for i, v in enumerate(vals) if not np.allclose(v, vals[0], atol=1e-4)), None)
        if i is not None:
            raise GeometryError(
                f"{kw} differs between slices: expected {vals[0]} ({slices[0].name}), found "
                f"{vals[i]}",
                file=slices[i].file,
                series_uid=series_uid,
                tag=tag_label(kw),
                hint="the series mixes images of different sizes; re-export the volume alone",
            )

    # ---- order along the normal
    positions = np.array([s.position for s in slices])
    order, proj = sort_slices(positions, iop)
    slices = [slices[i] for i in order]
    notes.append(f"{len(slices)} slices sorted by ImagePositionPatient projected on the slice "
                 "normal")

    # ---- duplicates
    keep: list[int] = []
    n_identical = 0
    replaced: list[str] = []
    i = 0
    n = len(slices)
    while i < n:
        j = i + 1
        while j < n and proj[j] - proj[i] < DUPLICATE_TOL_MM:
            j += 1
        group = list(range(i, j))
        if len(group) > 1:
            by_key: dict[tuple, int] = {}
            for g in group:  # identical SOPInstanceUID (and frame): keep the first copy
                if slices[g].key in by_key:
                    n_identical += 1
                else:
                    by_key[slices[g].key] = g
            cands = list(by_key.values())
            sops = [slices[g].sop_uid for g in cands]
            if len(set(sops)) < len(sops):
                raise GeometryError(
                    f"multi-frame object {slices[cands[0]].name} holds several frames at "
                    f"{proj[cands[0]]:.2f} mm along the normal (several stacks or time points): "
                    "not a single volume",
                    file=slices[cands[0]].file, series_uid=series_uid,
                    tag=tag_label("PlanePositionSequence"),
                    hint="split the object into one volume per stack / temporal position",
                )
            if len(cands) > 1:
                def _inst(g: int) -> tuple[int, int]:
                    v = slices[g].instance_number
                    return (v if v is not None else -(10**9), g)

                best = max(cands, key=_inst)
                for g in cands:
                    if g != best:
                        replaced.append(
                            f"{slices[g].name} (InstanceNumber {slices[g].instance_number}) "
                            f"replaced by {slices[best].name} (InstanceNumber "
                            f"{slices[best].instance_number}) at {proj[g]:.2f} mm"
                        )
                keep.append(best)
            else:
                keep.append(cands[0])
        else:
            keep.append(i)
        i = j
    if n_identical:
        notes.append(f"dropped {n_identical} duplicate file(s) with an identical SOPInstanceUID")
    if replaced:
        notes.append(
            "different instances at the same position, kept the higher InstanceNumber: "
            + "; ".join(replaced)
        )
        log.warning("series %s: %d duplicate slice position(s) resolved", series_uid, len(replaced))
    slices = [slices[k] for k in keep]
    positions = np.array([s.position for s in slices])
    proj = proj[keep]
    first = slices[0]
    ps = first.pixel_spacing
    rows, cols = int(first.ds.Rows), int(first.ds.Columns)

    # ---- tilt, gaps, irregular spacing
    lay = stack_layout(positions, iop)
    tilt_px = float(np.max(np.abs(lay.inplane_offsets_mm / np.array([ps[1], ps[0]]))))
    tilted = tilt_px > TILT_TOL_PX
    header_tilt = first.ds.get("GantryDetectorTilt", None)
    irregular_why = ""
    if len(proj) > 1:
        steps = np.diff(proj)
        gaps, variable, med = _gap_steps(proj, slices)
        if gaps:
            desc = "; ".join(
                f"{steps[g]:.2f} mm between {proj[g]:.2f} and {proj[g + 1]:.2f} mm "
                f"(LPS {_fmt_pos(positions[g])} -> {_fmt_pos(positions[g + 1])}"
                + (f", InstanceNumber {slices[g].instance_number} -> "
                   f"{slices[g + 1].instance_number}"
                   if slices[g].instance_number is not None
                   and slices[g + 1].instance_number is not None else "")
                + ")"
                for g in gaps
            )
            raise GeometryError(
                f"missing slices: expected a regular step of {med:.3f} mm along the slice normal, "
                f"found {len(gaps)} gap(s) larger than {GAP_FACTOR} x the median step: {desc}",
                file=slices[gaps[0]].file,
                series_uid=series_uid,
                tag=tag_label("ImagePositionPatient"),
                hint="re-export the complete series (files may have been lost in transfer) or "
                "remove stray slices that do not belong to the stack",
            )
        dev = proj - (proj[0] + med * np.arange(len(proj)))
        worst = int(np.argmax(np.abs(dev)))
        if variable or abs(dev[worst]) > IRREGULAR_FRACTION * med:
            irregular_why = (
                f"variable slice spacing: steps from {steps.min():.3f} to {steps.max():.3f} mm "
                f"(median {med:.3f} mm; slice at {proj[worst]:.2f} mm is {dev[worst]:.2f} mm off "
                "the regular grid)"
            )
        elif abs(dev[worst]) > 0.01:
            notes.append(f"slice positions deviate up to {abs(dev[worst]):.3f} mm from regular")
    if tilted and on_irregular == "refuse":
        extra = f" (GantryDetectorTilt in the header: {header_tilt})" if header_tilt else ""
        raise GeometryError(
            f"gantry tilt: expected slice positions along the slice normal, found the stack "
            f"sheared by {lay.shear_deg:.2f} degrees{extra} (slice origins drift up to "
            f"{lay.max_offset_mm:.2f} mm in-plane); loading it as an untilted volume would "
            "misplace every voxel",
            file=first.file,
            series_uid=series_uid,
            tag=tag_label("GantryDetectorTilt"),
            hint="load with on_irregular='resample' (the default) to resample it to a regular "
            "grid, or choose an untilted reconstruction",
        )
    if irregular_why and on_irregular == "refuse":
        raise GeometryError(
            f"irregular slice spacing: expected a regular step along the slice normal, found "
            f"{irregular_why}",
            file=slices[worst].file,
            series_uid=series_uid,
            tag=tag_label("ImagePositionPatient"),
            hint="load with on_irregular='resample' (the default) to resample it to a regular "
            "grid, or re-export a regularly spaced reconstruction",
        )

    # ---- pixels and grid
    stack = _read_pixels(slices, series_uid)
    slopes = {s.slope for s in slices}
    if len(slopes) > 1:
        notes.append(f"per-slice RescaleSlope applied ({min(slopes):.6g} .. {max(slopes):.6g})")
    if tilted or irregular_why:
        grid = regular_stack_grid(positions, iop, ps, rows, cols)
        arr = resample_stack(stack, positions, iop, ps, grid,
                             fill=FILL_VALUE.get(modality, 0.0))
        what = []
        if tilted:
            what.append(
                f"gantry tilt: stack sheared by {lay.shear_deg:.2f} degrees"
                + (f" (GantryDetectorTilt {header_tilt})" if header_tilt else "")
                + f", slice origins drifting up to {lay.max_offset_mm:.2f} mm in-plane")
        if irregular_why:
            what.append(irregular_why)
        note = (
            f"RESAMPLED: {'; '.join(what)}. {len(slices)} acquired slices resampled with linear "
            f"interpolation (SimpleITK in-plane from each slice's ImagePositionPatient, linear "
            f"along the slice normal) onto a regular grid of {grid.shape_zyx[0]} slices at "
            f"{grid.spacing_xyz_mm[2]:.3f} mm, {grid.shape_zyx[1]} x {grid.shape_zyx[2]} "
            f"pixels (acquired {rows} x {cols}); voxels outside every slice set to "
            f"{FILL_VALUE.get(modality, 0.0):g}"
        )
        notes.append(note)
        log.warning("series %s: %s", series_uid, note)
    else:
        arr = stack
        grid = grid_from_slices(positions[0], iop, ps, rows, cols, positions)
        if len(slices) == 1:
            thick = first.ds.get("SpacingBetweenSlices", None) or first.ds.get(
                "SliceThickness", None)
            if thick is None and first.frame is not None:
                thick = functional_group_value(first.ds, first.frame, "PixelMeasuresSequence",
                                               "SliceThickness")
            if thick:
                sx, sy, _ = grid.spacing_xyz_mm
                grid = replace(grid, spacing_xyz_mm=(sx, sy, float(thick)))
                notes.append(f"single slice: slice spacing taken from thickness {float(thick)} mm")
            else:
                notes.append("single slice without SliceThickness: slice spacing set to 1 mm")
    for s in slices:
        s.ds.filename = s.file
    headers = [s.ds for s in slices]
    for_uid = str(first.ds.get("FrameOfReferenceUID", "") or "")
    return arr, grid, headers, notes, for_uid


def load_ct(
    paths: Sequence[str | Path], *, series_uid: str, on_irregular: OnIrregular = "resample"
) -> Volume:
    """Load one CT series as a volume in Hounsfield units.

    Parameters
    ----------
    paths : sequence of path
        The files of the series (any order; duplicates allowed; single- and multi-frame).
    series_uid : str
        SeriesInstanceUID every file must carry.
    on_irregular : {"resample", "refuse"}
        What to do with gantry tilt and variable slice spacing (see module docstring).

    Returns
    -------
    Volume
        ``array`` float32, shape (z, y, x), HU = stored value x RescaleSlope + RescaleIntercept
        (per slice); ``grid`` in LPS mm; ``notes`` record sorting, duplicates, rescaling and any
        resampling.

    Raises
    ------
    MissingTagError, GeometryError, DicomReadError
        See module docstring.
    """
    arr, grid, _, notes, for_uid = _assemble(
        paths, series_uid=series_uid, modality="CT", rescale_required=True,
        on_irregular=on_irregular,
    )
    return Volume(
        array=arr, grid=grid, units="HU", series_uid=series_uid, frame_of_reference_uid=for_uid,
        notes=tuple(notes),
    )


def load_pet_activity(
    paths: Sequence[str | Path], *, series_uid: str, on_irregular: OnIrregular = "resample"
) -> tuple[Volume, list[Dataset]]:
    """Load one PET series as stored activity values (before SUV conversion).

    Parameters
    ----------
    paths : sequence of path
        The files of the series.
    series_uid : str
        SeriesInstanceUID every file must carry.
    on_irregular : {"resample", "refuse"}
        What to do with tilt and variable slice spacing (see module docstring).

    Returns
    -------
    volume : Volume
        ``array`` float32 (z, y, x) = stored value x per-slice RescaleSlope + RescaleIntercept,
        in the units of the Units tag (0054,1001) (``"BQML"`` = Bq/mL for the common case);
        ``grid`` in LPS mm.
    headers : list of Dataset
        Headers (no pixel data), one per acquired slice in ascending order along the normal
        (equal to ``array`` order unless the notes say the stack was resampled; a multi-frame
        file appears once per frame), for :func:`pipeline.io.suv.suv_audit`.

    Raises
    ------
    MissingTagError
        Units, RescaleSlope or a geometry tag missing.
    GeometryError, DicomReadError
        See module docstring.
    """
    arr, grid, headers, notes, for_uid = _assemble(
        paths, series_uid=series_uid, modality="PT", rescale_required=True,
        on_irregular=on_irregular,
    )
    units = str(require(headers[0], "Units", file=headers[0].filename, series_uid=series_uid,
                        hint="the PET export lacks Units; re-export from the scanner console"))
    vol = Volume(
        array=arr, grid=grid, units=units, series_uid=series_uid, frame_of_reference_uid=for_uid,
        notes=tuple(notes),
    )
    return vol, headers
