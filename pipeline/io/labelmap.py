"""NIfTI and NRRD label maps with a JSON names sidecar -> masks on an image grid.

Formats
-------
* NIfTI ``.nii`` / ``.nii.gz`` (nibabel; RAS affine turned into LPS by
  :meth:`Grid.from_nifti_affine`).
* NRRD ``.nrrd`` / ``.nhdr`` and 3D Slicer segmentations ``.seg.nrrd`` (SimpleITK, whose
  geometry already is LPS). A ``.seg.nrrd`` may hold several layers (a vector image, one
  component per layer) so that segments can overlap; its header names every segment
  (``Segment<i>_Name``, ``Segment<i>_LabelValue``, ``Segment<i>_Layer``), which gives names and
  per-layer values when the sidecar has none.

Sidecar
-------
A label map ``lesions.nii.gz`` (or ``.nii``, ``.nrrd``, ``.seg.nrrd``) is described by
``lesions.json`` next to it::

    {
      "patient_id": "PHANTOM001",
      "study_uid": "1.2.3",
      "referenced_series_uid": "1.2.3.4",      # the image series the labels were drawn on
      "kind": "lesion",                         # lesion | organ | unknown
      "names": {"1": "lesion_a", "2": "lesion_b"}
    }

``names`` may also be a list of ``{"value": 1, "name": "lesion_a"}`` objects; ``labels`` is
accepted as a synonym of ``names``; ``series_uid`` / ``reference_series_uid`` of
``referenced_series_uid``.

Geometry: if the label map's grid samples the same points as the target grid, the labels are used
as they are; otherwise they are resampled with nearest neighbour by
:func:`pipeline.geometry.resample` (the one resampling path of masks, shared with DICOM SEG
frames that are off their image grid), with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from pipeline.errors import SegmentationError
from pipeline.geometry import Grid, bbox_of, resample
from pipeline.records import LesionMask, MaskSource, SegmentKind

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NRRD_SUFFIXES = (".seg.nrrd", ".nrrd", ".nhdr")
LABELMAP_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES


def labelmap_stem(path: str | Path) -> str:
    """File name without ``.nii``, ``.nii.gz``, ``.seg.nrrd``, ``.nrrd`` or ``.nhdr``."""
    name = Path(path).name
    for suf in LABELMAP_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


#: Former name of :func:`labelmap_stem`.
nifti_stem = labelmap_stem


def is_nifti(path: str | Path) -> bool:
    """True for ``*.nii`` and ``*.nii.gz`` names (case-insensitive)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def is_nrrd(path: str | Path) -> bool:
    """True for ``*.nrrd``, ``*.seg.nrrd`` and ``*.nhdr`` names (case-insensitive)."""
    return Path(path).name.lower().endswith(NRRD_SUFFIXES)


def is_labelmap(path: str | Path) -> bool:
    """True for NIfTI and NRRD file names."""
    return is_nifti(path) or is_nrrd(path)


def sidecar_path(path: str | Path) -> Path:
    """The ``<stem>.json`` sidecar of a label map (or ``path`` itself if it is a .json)."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        return p
    return p.with_name(labelmap_stem(p) + ".json")


def read_sidecar(path: str | Path) -> dict:
    """Read and normalise the JSON sidecar of a label map.

    Parameters
    ----------
    path : path
        The label map (``.nii``/``.nii.gz``) or its ``.json`` sidecar.

    Returns
    -------
    dict
        ``patient_id``, ``study_uid``, ``referenced_series_uid`` (str, "" when absent), ``kind``
        (:class:`SegmentKind`), ``names`` (dict int -> str; also under ``labels`` for callers
        that use the phantom's key) and ``raw`` (the parsed JSON).

    Raises
    ------
    SegmentationError
        Missing or unparseable sidecar, or a malformed ``names`` entry (names the file and key).
    """
    sp = sidecar_path(path)
    try:
        raw = json.loads(sp.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SegmentationError(
            f"label map has no sidecar: expected {sp.name} next to it", file=sp,
            hint="write a JSON sidecar with patient_id, study_uid, referenced_series_uid, kind "
            "and names (see pipeline.io.labelmap)",
        ) from exc
    except (OSError, ValueError) as exc:
        raise SegmentationError(
            f"cannot parse label-map sidecar: {exc}", file=sp,
            hint="fix the JSON syntax of the sidecar",
        ) from exc
    if not isinstance(raw, dict):
        raise SegmentationError("label-map sidecar must be a JSON object", file=sp,
                                hint="see pipeline.io.labelmap for the expected keys")
    names_raw = raw.get("names", raw.get("labels", {}))
    names: dict[int, str] = {}
    try:
        if isinstance(names_raw, dict):
            for k, v in names_raw.items():
                if isinstance(v, dict):  # {"1": {"name": ..}}
                    v = v.get("name", "")
                names[int(k)] = str(v)
        elif isinstance(names_raw, list):
            for item in names_raw:
                names[int(item["value"])] = str(item["name"])
        else:
            raise TypeError(f"expected an object or a list, found {type(names_raw).__name__}")
    except (KeyError, TypeError, ValueError) as exc:
        raise SegmentationError(
            f"malformed 'names' in label-map sidecar: {exc}", file=sp, tag="names",
            hint='use {"names": {"1": "lesion_a", ...}}',
        ) from exc
    kind_raw = str(raw.get("kind", "unknown") or "unknown").lower()
    try:
        kind = SegmentKind(kind_raw)
    except ValueError as exc:
        raise SegmentationError(
            f"label-map sidecar kind must be lesion, organ or unknown, found {kind_raw!r}",
            file=sp, tag="kind", hint='set "kind": "lesion" or "organ"',
        ) from exc
    ref = (raw.get("referenced_series_uid") or raw.get("series_uid")
           or raw.get("reference_series_uid") or "")
    return {
        "patient_id": str(raw.get("patient_id", "") or ""),
        "study_uid": str(raw.get("study_uid", "") or ""),
        "referenced_series_uid": str(ref),
        "kind": kind,
        "names": names,
        "labels": dict(names),
        "raw": raw,
    }


def labelmap_grid(path: str | Path) -> Grid:
    """Grid (LPS) of a NIfTI or NRRD label map from its header, without reading the voxels."""
    if is_nrrd(path):
        import SimpleITK as sitk

        r = sitk.ImageFileReader()
        r.SetFileName(str(path))
        r.ReadImageInformation()
        if r.GetDimension() != 3:
            raise SegmentationError(f"expected a 3D NRRD label map, found {r.GetDimension()}D",
                                    file=path, hint="export one 3D label image")
        size = r.GetSize()
        return Grid((int(size[2]), int(size[1]), int(size[0])),
                    tuple(float(v) for v in r.GetSpacing()),
                    tuple(float(v) for v in r.GetOrigin()),
                    tuple(float(v) for v in r.GetDirection()))
    import nibabel as nib

    img = nib.load(str(path))
    return Grid.from_nifti_affine(img.affine, tuple(int(v) for v in img.shape[:3]))


def nrrd_segments(meta: Mapping[str, str]) -> list[tuple[int, int, str]]:
    """Segments of a 3D Slicer ``.seg.nrrd`` header: (layer, label value, name), by index.

    Parameters
    ----------
    meta : mapping
        Header key -> value (e.g. SimpleITK metadata).
    """
    out = []
    i = 0
    while f"Segment{i}_ID" in meta or f"Segment{i}_Name" in meta:
        try:
            value = int(meta.get(f"Segment{i}_LabelValue", i + 1))
            layer = int(meta.get(f"Segment{i}_Layer", 0))
        except ValueError:
            value, layer = i + 1, 0
        out.append((layer, value, str(meta.get(f"Segment{i}_Name", f"Segment_{i + 1}"))))
        i += 1
    return out


def _load(path: Path) -> tuple[np.ndarray, Grid, list[tuple[int, int, str]]]:
    """(labels (z, y, x, layers) int32, grid, header segments) of a NIfTI or NRRD label map."""
    if is_nrrd(path):
        import SimpleITK as sitk

        img = sitk.ReadImage(str(path))
        if img.GetDimension() != 3:
            raise SegmentationError(f"expected a 3D NRRD label map, found {img.GetDimension()}D",
                                    file=path, hint="export one 3D label image")
        arr = sitk.GetArrayFromImage(img)
        if arr.ndim == 3:
            arr = arr[..., None]
        meta = {k: img.GetMetaData(k) for k in img.GetMetaDataKeys()}
        return _integer_labels(arr, path), Grid.from_sitk(img), nrrd_segments(meta)
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SegmentationError(f"expected a 3D label map, found shape {data.shape}", file=path,
                                hint="export one 3D integer label image")
    arr = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))[..., None]
    grid = Grid.from_nifti_affine(img.affine, tuple(int(v) for v in data.shape))
    return _integer_labels(arr, path), grid, []


def _integer_labels(data: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or not np.allclose(data, np.rint(data)):
            raise SegmentationError(
                f"label map holds non-integer values (dtype {data.dtype})", file=path,
                hint="export integer labels (0 = background)",
            )
        return np.rint(data).astype(np.int32)
    return data.astype(np.int32)


def read_labelmap(
    path: str | Path,
    *,
    grid: Grid,
    names: Mapping[int, str],
    kind: SegmentKind | str,
    referenced_series_uid: str = "",
    warnings: list[str] | None = None,
) -> list[LesionMask]:
    """Read a NIfTI or NRRD label map as one mask per label value (and layer) on ``grid``.

    Parameters
    ----------
    path : path
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr`` or ``.seg.nrrd``; integer labels, 0 =
        background.
    grid : Grid
        Target grid (LPS mm), normally the referenced CT (or PET).
    names : mapping int -> str
        Label value -> name (e.g. from :func:`read_sidecar`). When empty, a ``.seg.nrrd``'s
        header names are used. Values present in the image but named nowhere are named
        ``label_<value>`` with a warning.
    kind : SegmentKind or str
        Kind given to every mask.
    referenced_series_uid : str
        SeriesInstanceUID of the image series ``grid`` belongs to.
    warnings : list of str, optional
        Appended with warnings (resampling, unnamed or empty labels), which are also logged.

    Returns
    -------
    list of LesionMask
        One per non-empty label (per layer for multi-layer ``.seg.nrrd``), by layer then
        ascending value; ``crop`` bool (z, y, x) on ``grid``; ``source_uid`` = file name;
        ``segment_number`` = label value.

    Raises
    ------
    SegmentationError
        Unreadable file, non-integer labels, or labels falling outside ``grid``.
    """
    path = Path(path)
    warn = warnings if warnings is not None else []
    kind = SegmentKind(kind) if not isinstance(kind, SegmentKind) else kind
    names = {int(k): str(v) for k, v in names.items()}  # JSON keys arrive as strings
    try:
        labels, src, header_segments = _load(path)
    except SegmentationError:
        raise
    except Exception as exc:
        raise SegmentationError(
            f"cannot read label map: {type(exc).__name__}: {exc}", file=path,
            hint="re-export the label map (the file may be truncated)",
        ) from exc
    n_layers = labels.shape[-1]
    by_layer: dict[int, dict[int, str]] = {}
    for layer, value, name in header_segments:
        by_layer.setdefault(layer, {})[value] = name
    out: list[LesionMask] = []
    for layer in range(n_layers):
        arr_zyx = np.ascontiguousarray(labels[..., layer])
        layer_names = dict(by_layer.get(layer, {}))
        if names and n_layers == 1:
            layer_names.update(names)
        elif names and not layer_names:
            layer_names = dict(names)
        if not src.same_as(grid):
            msg = (f"label map {path.name} is not on the target grid (shape {src.shape_zyx} vs "
                   f"{grid.shape_zyx}, spacing {tuple(round(s, 3) for s in src.spacing_xyz_mm)} "
                   f"vs {tuple(round(s, 3) for s in grid.spacing_xyz_mm)}): resampled with "
                   "nearest neighbour")
            if msg not in warn:
                warn.append(msg)
                log.warning(msg)
            before = {int(v) for v in np.unique(arr_zyx) if v != 0}
            arr_zyx = resample(arr_zyx, src, grid, interpolation="nearest", default=0)
            lost = before - {int(v) for v in np.unique(arr_zyx) if v != 0}
            if lost:
                msg = f"label map {path.name}: labels {sorted(lost)} fall outside the target grid"
                warn.append(msg)
                log.warning(msg)
        present = sorted(int(v) for v in np.unique(arr_zyx) if v != 0)
        for value in sorted(set(present) | {k for k in layer_names if k != 0}):
            name = layer_names.get(value)
            if value not in present:
                msg = f"label map {path.name}: label {value} '{name}' is empty; skipped"
                warn.append(msg)
                log.warning(msg)
                continue
            if name is None:
                name = f"label_{value}"
                msg = (f"label map {path.name}: label {value} has no name in the sidecar; "
                       f"named {name}")
                warn.append(msg)
                log.warning(msg)
            full = arr_zyx == value
            bbox = bbox_of(full)
            assert bbox is not None
            crop = full[tuple(slice(a, b) for a, b in bbox)].copy()
            out.append(
                LesionMask(
                    name=str(name), source=MaskSource.LABELMAP, grid=grid, bbox_zyx=bbox,
                    crop=crop, kind=kind, source_uid=path.name,
                    referenced_series_uid=referenced_series_uid, segment_number=value,
                )
            )
    return out
