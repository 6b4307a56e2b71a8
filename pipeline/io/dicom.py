"""Assemble CT and PET image series into volumes.

Pixels are decoded with pydicom (compressed transfer syntaxes through the installed
pylibjpeg / openjpeg / RLE / JPEG-LS / GDCM plugins). Geometry comes only from
:mod:`pipeline.geometry`: slices are ordered by the projection of ImagePositionPatient on the
slice normal (:func:`pipeline.geometry.sort_slices`), the grid from
:func:`pipeline.geometry.grid_from_slices`.

Assembly rules (first version, see issue 3 for the deeper ones)
---------------------------------------------------------------
* Every file must belong to the requested SeriesInstanceUID and share ImageOrientationPatient
  (within 1e-4), Rows, Columns and PixelSpacing; otherwise :class:`GeometryError` naming the tag.
* Duplicates (two files at the same position along the normal, within 0.01 mm): identical
  SOPInstanceUID -> the copy is dropped; different SOPInstanceUIDs -> the one with the higher
  InstanceNumber is kept. Both are recorded in ``Volume.notes``.
* Missing slices: any step between consecutive positions larger than 1.5 x the median step ->
  :class:`GeometryError` naming the series and the positions on both sides of each gap.
* Irregular spacing (a slice more than 10 % of the median step away from the regular grid that
  starts at the first slice) -> :class:`GeometryError` (issue 3 will resample).
* Gantry tilt / sheared stacks (:func:`pipeline.geometry.stack_shear_deg` > 0.5 degrees) ->
  :class:`GeometryError` naming the tilt in degrees (issue 3 will resample). Checked before the
  spacing, so a tilted series with variable spacing is reported as tilted.
* Multi-frame (enhanced / legacy converted) images -> :class:`DicomReadError` for now.
* Missing required attributes -> :class:`MissingTagError` naming keyword and ``(gggg,eeee)``.

Arrays are float32 in (z, y, x) order; the grid is in LPS mm.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from pipeline.errors import DicomReadError, GeometryError, MissingTagError
from pipeline.geometry import Grid, grid_from_slices, slice_normal, sort_slices, stack_shear_deg
from pipeline.records import Volume

log = logging.getLogger(__name__)

#: Positions closer than this along the normal are the same slice (mm).
DUPLICATE_TOL_MM = 0.01
#: A step larger than this multiple of the median step means missing slices.
GAP_FACTOR = 1.5
#: Largest allowed deviation of a slice from the regular grid, as a fraction of the step.
IRREGULAR_FRACTION = 0.10
#: Largest stack shear (gantry tilt) accepted without resampling, degrees.
MAX_SHEAR_DEG = 0.5
#: Tolerance for ImageOrientationPatient equality (direction cosines).
IOP_TOL = 1e-4

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


# --------------------------------------------------------------------------- assembly
def _read_full(path: str | Path) -> Dataset:
    try:
        return pydicom.dcmread(str(path))
    except Exception as exc:
        raise DicomReadError(
            f"cannot read DICOM file: {type(exc).__name__}: {exc}",
            file=path,
            hint="re-export the file; run the archive index to list all unreadable files",
        ) from exc


def _pixels(ds: Dataset, path: str | Path, series_uid: str) -> np.ndarray:
    require(ds, "PixelData", file=path, series_uid=series_uid)
    try:
        arr = ds.pixel_array
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DicomReadError(
            f"cannot decode pixel data (transfer syntax {ts}): {type(exc).__name__}: {exc}",
            file=path,
            series_uid=series_uid,
            tag=tag_label("TransferSyntaxUID"),
            hint=_DECODE_HINT,
        ) from exc
    if arr.ndim != 2:
        raise DicomReadError(
            f"expected a single-frame greyscale image, found pixel array of shape {arr.shape}",
            file=path,
            series_uid=series_uid,
            tag=tag_label("SamplesPerPixel"),
            hint="colour or multi-sample images cannot be used as CT/PET volumes",
        )
    return arr


def _assemble(
    paths: Sequence[str | Path],
    *,
    series_uid: str,
    modality: str,
    rescale_required: bool,
) -> tuple[np.ndarray, Grid, list[Dataset], list[str], str]:
    """Shared CT/PET assembly: returns (array float32 zyx, grid, sorted headers, notes, FoR UID)."""
    if len(paths) == 0:
        raise DicomReadError(
            f"no files given for {modality} series",
            series_uid=series_uid,
            hint="check the archive index: the series has no readable files",
        )
    datasets: list[Dataset] = []
    files: list[str] = []
    for p in paths:
        ds = _read_full(p)
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
        nframes = int(ds.get("NumberOfFrames", 1) or 1)
        if nframes > 1:
            raise DicomReadError(
                f"multi-frame image with {nframes} frames: enhanced and legacy-converted "
                "multi-frame series are not supported yet (expected one slice per file)",
                file=p,
                series_uid=series_uid,
                tag=tag_label("NumberOfFrames"),
                hint="convert to single-frame files (e.g. `emf2sf` of dcm4che) until issue 3 lands",
            )
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
                   "Columns", "SOPInstanceUID"):
            require(ds, kw, file=p, series_uid=series_uid)
        if rescale_required:
            require(ds, "RescaleSlope", file=p, series_uid=series_uid)
            require(ds, "RescaleIntercept", file=p, series_uid=series_uid)
        datasets.append(ds)
        files.append(str(p))
    notes: list[str] = []

    # ---- shared in-plane geometry
    iops = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    bad = np.flatnonzero(np.any(np.abs(iops - iops[0]) > IOP_TOL, axis=1))
    if len(bad):
        distinct = {tuple(np.round(r, 4)) for r in iops}
        raise GeometryError(
            f"mixed slice orientations in one series: expected one ImageOrientationPatient, found "
            f"{len(distinct)} ({'; '.join(str(list(d)) for d in sorted(distinct))}); first "
            f"differing file {files[bad[0]]}",
            file=files[bad[0]],
            series_uid=series_uid,
            tag=tag_label("ImageOrientationPatient"),
            hint="split the series by orientation (e.g. a localizer mixed into the volume) and "
            "re-export the axial stack alone",
        )
    iop = iops[0]
    slice_normal(iop)  # raises GeometryError on degenerate cosines
    for kw in ("Rows", "Columns", "PixelSpacing"):
        vals = [tuple(np.atleast_1d(np.asarray(ds[kw].value, dtype=float))) for ds in datasets]
        if any(not np.allclose(v, vals[0], atol=1e-4) for v in vals):
            i = next(i for i, v in enumerate(vals) if not np.allclose(v, vals[0], atol=1e-4))
            raise GeometryError(
                f"{kw} differs between slices: expected {vals[0]} (file {files[0]}), found "
                f"{vals[i]}",
                file=files[i],
                series_uid=series_uid,
                tag=tag_label(kw),
                hint="the series mixes images of different sizes; re-export the volume alone",
            )

    # ---- order along the normal
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    order, proj = sort_slices(positions, iop)
    datasets = [datasets[i] for i in order]
    files = [files[i] for i in order]
    positions = positions[order]
    notes.append(
        f"{len(datasets)} files sorted by ImagePositionPatient projected on the slice normal"
    )

    # ---- duplicates
    keep: list[int] = []
    n_identical = 0
    replaced: list[str] = []
    i = 0
    n = len(datasets)
    while i < n:
        j = i + 1
        while j < n and proj[j] - proj[i] < DUPLICATE_TOL_MM:
            j += 1
        group = list(range(i, j))
        if len(group) > 1:
            by_uid: dict[str, int] = {}
            for g in group:  # identical SOPInstanceUID: keep the first copy
                uid = str(datasets[g].SOPInstanceUID)
                if uid in by_uid:
                    n_identical += 1
                else:
                    by_uid[uid] = g
            cands = list(by_uid.values())
            if len(cands) > 1:
                def _inst(g: int) -> tuple[int, int]:
                    v = datasets[g].get("InstanceNumber", None)
                    return (int(v) if v not in (None, "") else -(10**9), g)

                best = max(cands, key=_inst)
                for g in cands:
                    if g != best:
                        replaced.append(
                            f"{Path(files[g]).name} (InstanceNumber "
                            f"{datasets[g].get('InstanceNumber', '?')}) replaced by "
                            f"{Path(files[best]).name} (InstanceNumber "
                            f"{datasets[best].get('InstanceNumber', '?')}) at "
                            f"{proj[g]:.2f} mm"
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
    datasets = [datasets[k] for k in keep]
    files = [files[k] for k in keep]
    positions = positions[keep]
    proj = proj[keep]

    # ---- gantry tilt
    shear = stack_shear_deg(positions, iop)
    if shear > MAX_SHEAR_DEG:
        header_tilt = datasets[0].get("GantryDetectorTilt", None)
        extra = f" (GantryDetectorTilt in the header: {header_tilt})" if header_tilt else ""
        raise GeometryError(
            f"gantry tilt: expected slice positions along the slice normal, found the stack "
            f"sheared by {shear:.2f} degrees{extra}; loading it as an untilted volume would "
            "misplace every voxel",
            file=files[0],
            series_uid=series_uid,
            tag=tag_label("GantryDetectorTilt"),
            hint="resample the tilted series to an axial grid before ingestion (issue 3 will do "
            "this automatically) or choose an untilted reconstruction",
        )

    # ---- gaps and irregular spacing
    if len(proj) > 1:
        steps = np.diff(proj)
        med = float(np.median(steps))
        gaps = np.flatnonzero(steps > GAP_FACTOR * med)
        if len(gaps):
            desc = "; ".join(
                f"{steps[g]:.2f} mm between {proj[g]:.2f} and {proj[g + 1]:.2f} mm "
                f"(LPS {_fmt_pos(positions[g])} -> {_fmt_pos(positions[g + 1])})"
                for g in gaps
            )
            raise GeometryError(
                f"missing slices (or variable slice spacing): expected a regular step of "
                f"{med:.3f} mm along the slice normal, found {len(gaps)} gap(s) larger than "
                f"{GAP_FACTOR} x the median: {desc}",
                file=files[gaps[0]],
                series_uid=series_uid,
                tag=tag_label("ImagePositionPatient"),
                hint="re-export the complete series (files may have been lost in transfer) or "
                "remove stray slices that do not belong to the stack",
            )
        dev = proj - (proj[0] + med * np.arange(len(proj)))
        worst = int(np.argmax(np.abs(dev)))
        if abs(dev[worst]) > IRREGULAR_FRACTION * med:
            raise GeometryError(
                f"irregular slice spacing: expected a regular step of {med:.3f} mm, found steps "
                f"from {steps.min():.3f} to {steps.max():.3f} mm (slice at {proj[worst]:.2f} mm "
                f"is {dev[worst]:.2f} mm off the regular grid); resampling of variable spacing "
                "is not supported yet",
                file=files[worst],
                series_uid=series_uid,
                tag=tag_label("ImagePositionPatient"),
                hint="resample the series to regular spacing before ingestion (issue 3 will do "
                "this automatically)",
            )
        if abs(dev[worst]) > 0.01:
            notes.append(f"slice positions deviate up to {abs(dev[worst]):.3f} mm from regular")

    # ---- grid and pixels
    ps = [float(v) for v in datasets[0].PixelSpacing]
    grid = grid_from_slices(
        positions[0], iop, (ps[0], ps[1]), int(datasets[0].Rows), int(datasets[0].Columns),
        positions,
    )
    if len(datasets) == 1:
        thick = datasets[0].get("SpacingBetweenSlices", None) or datasets[0].get(
            "SliceThickness", None
        )
        if thick:
            from dataclasses import replace

            sx, sy, _ = grid.spacing_xyz_mm
            grid = replace(grid, spacing_xyz_mm=(sx, sy, float(thick)))
            notes.append(f"single slice: slice spacing taken from thickness {float(thick)} mm")
        else:
            notes.append("single slice without SliceThickness: slice spacing set to 1 mm")

    arr = np.empty(grid.shape_zyx, dtype=np.float32)
    slopes = []
    for k, (ds, f) in enumerate(zip(datasets, files)):
        px = _pixels(ds, f, series_uid)
        slope = float(ds.RescaleSlope) if has_value(ds, "RescaleSlope") else 1.0
        inter = float(ds.RescaleIntercept) if has_value(ds, "RescaleIntercept") else 0.0
        slopes.append(slope)
        arr[k] = px.astype(np.float32) * np.float32(slope) + np.float32(inter)
    if len(set(slopes)) > 1:
        notes.append(f"per-slice RescaleSlope applied ({min(slopes):.6g} .. {max(slopes):.6g})")
    for ds in datasets:  # keep headers light
        if "PixelData" in ds:
            del ds.PixelData
    for ds, f in zip(datasets, files):
        ds.filename = f
    for_uid = str(datasets[0].get("FrameOfReferenceUID", "") or "")
    return arr, grid, datasets, notes, for_uid


def load_ct(paths: Sequence[str | Path], *, series_uid: str) -> Volume:
    """Load one CT series as a volume in Hounsfield units.

    Parameters
    ----------
    paths : sequence of path
        The files of the series (any order; duplicates allowed, see module docstring).
    series_uid : str
        SeriesInstanceUID every file must carry.

    Returns
    -------
    Volume
        ``array`` float32, shape (z, y, x), HU = stored value x RescaleSlope + RescaleIntercept
        (per slice); ``grid`` in LPS mm; ``notes`` record sorting, duplicates and rescaling.

    Raises
    ------
    MissingTagError, GeometryError, DicomReadError
        See module docstring.
    """
    arr, grid, _, notes, for_uid = _assemble(
        paths, series_uid=series_uid, modality="CT", rescale_required=True
    )
    return Volume(
        array=arr, grid=grid, units="HU", series_uid=series_uid, frame_of_reference_uid=for_uid,
        notes=tuple(notes),
    )


def load_pet_activity(
    paths: Sequence[str | Path], *, series_uid: str
) -> tuple[Volume, list[Dataset]]:
    """Load one PET series as stored activity values (before SUV conversion).

    Parameters
    ----------
    paths : sequence of path
        The files of the series.
    series_uid : str
        SeriesInstanceUID every file must carry.

    Returns
    -------
    volume : Volume
        ``array`` float32 (z, y, x) = stored value x per-slice RescaleSlope + RescaleIntercept,
        in the units of the Units tag (0054,1001) (``"BQML"`` = Bq/mL for the common case);
        ``grid`` in LPS mm.
    headers : list of Dataset
        Headers (pixel data removed) in slice order (index k = ``array[k]``), for
        :func:`pipeline.io.suv.suv_audit`.

    Raises
    ------
    MissingTagError
        Units, RescaleSlope or a geometry tag missing.
    GeometryError, DicomReadError
        See module docstring.
    """
    arr, grid, headers, notes, for_uid = _assemble(
        paths, series_uid=series_uid, modality="PT", rescale_required=True
    )
    units = str(require(headers[0], "Units", file=headers[0].filename, series_uid=series_uid,
                        hint="the PET export lacks Units; re-export from the scanner console"))
    vol = Volume(
        array=arr, grid=grid, units=units, series_uid=series_uid, frame_of_reference_uid=for_uid,
        notes=tuple(notes),
    )
    return vol, headers
