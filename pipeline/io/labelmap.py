"""NIfTI label maps with a JSON names sidecar -> masks on an image grid.

Sidecar
-------
A label map ``lesions.nii.gz`` (or ``.nii``) is described by ``lesions.json`` next to it::

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

Geometry: the NIfTI RAS affine is turned into an LPS :class:`pipeline.geometry.Grid` by
:meth:`Grid.from_nifti_affine` (the only place that knows the flip). If that grid samples the same
points as the target grid, the labels are used as they are; otherwise they are resampled with
nearest neighbour by :func:`pipeline.geometry.resample`, with a warning.
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


def nifti_stem(path: str | Path) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suf in NIFTI_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def is_nifti(path: str | Path) -> bool:
    """True for ``*.nii`` and ``*.nii.gz`` names (case-insensitive)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def sidecar_path(path: str | Path) -> Path:
    """The ``<stem>.json`` sidecar of a label map (or ``path`` itself if it is a .json)."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        return p
    return p.with_name(nifti_stem(p) + ".json")


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
    """Grid (LPS) of a NIfTI label map from its header, without reading the voxels."""
    import nibabel as nib

    img = nib.load(str(path))
    return Grid.from_nifti_affine(img.affine, tuple(int(v) for v in img.shape[:3]))


def read_labelmap(
    path: str | Path,
    *,
    grid: Grid,
    names: Mapping[int, str],
    kind: SegmentKind | str,
    referenced_series_uid: str = "",
    warnings: list[str] | None = None,
) -> list[LesionMask]:
    """Read a NIfTI label map as one mask per label value on ``grid``.

    Parameters
    ----------
    path : path
        ``.nii`` or ``.nii.gz``; integer labels, 0 = background; data stored (x, y, z).
    grid : Grid
        Target grid (LPS mm), normally the referenced CT.
    names : mapping int -> str
        Label value -> name (e.g. from :func:`read_sidecar`). Values present in the image but not
        here are named ``label_<value>`` with a warning.
    kind : SegmentKind or str
        Kind given to every mask.
    referenced_series_uid : str
        SeriesInstanceUID of the image series ``grid`` belongs to.
    warnings : list of str, optional
        Appended with warnings (resampling, unnamed or empty labels), which are also logged.

    Returns
    -------
    list of LesionMask
        One per non-empty label, by ascending value; ``crop`` bool (z, y, x) on ``grid``;
        ``source_uid`` = file name; ``segment_number`` = label value.

    Raises
    ------
    SegmentationError
        Unreadable file, non-integer labels, or labels falling outside ``grid``.
    """
    import nibabel as nib

    path = Path(path)
    warn = warnings if warnings is not None else []
    kind = SegmentKind(kind) if not isinstance(kind, SegmentKind) else kind
    names = {int(k): str(v) for k, v in names.items()}  # JSON keys arrive as strings
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise SegmentationError(
            f"cannot read NIfTI label map: {type(exc).__name__}: {exc}", file=path,
            hint="re-export the label map (the file may be truncated)",
        ) from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SegmentationError(
            f"expected a 3D label map, found shape {data.shape}", file=path,
            hint="export one 3D integer label image",
        )
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or not np.allclose(data, np.rint(data)):
            raise SegmentationError(
                f"label map holds non-integer values (dtype {data.dtype})", file=path,
                hint="export integer labels (0 = background)",
            )
    labels = np.rint(data).astype(np.int32) if data.dtype.kind == "f" else data.astype(np.int32)
    arr_zyx = np.ascontiguousarray(np.transpose(labels, (2, 1, 0)))
    src = Grid.from_nifti_affine(img.affine, tuple(int(v) for v in data.shape))
    if not src.same_as(grid):
        msg = (f"label map {path.name} is not on the target grid (shape {src.shape_zyx} vs "
               f"{grid.shape_zyx}, spacing {tuple(round(s, 3) for s in src.spacing_xyz_mm)} vs "
               f"{tuple(round(s, 3) for s in grid.spacing_xyz_mm)}): resampled with nearest "
               "neighbour")
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
    out: list[LesionMask] = []
    for value in sorted(set(present) | {k for k in names if k != 0}):
        name = names.get(value)
        if value not in present:
            msg = f"label map {path.name}: label {value} '{name}' is empty; skipped"
            warn.append(msg)
            log.warning(msg)
            continue
        if name is None:
            name = f"label_{value}"
            msg = f"label map {path.name}: label {value} has no name in the sidecar; named {name}"
            warn.append(msg)
            log.warning(msg)
        full = arr_zyx == value
        bbox = bbox_of(full)
        assert bbox is not None
        crop = full[tuple(slice(a, b) for a, b in bbox)].copy()
        out.append(
            LesionMask(
                name=str(name), source=MaskSource.LABELMAP, grid=grid, bbox_zyx=bbox, crop=crop,
                kind=kind, source_uid=path.name, referenced_series_uid=referenced_series_uid,
                segment_number=value,
            )
        )
    return out
