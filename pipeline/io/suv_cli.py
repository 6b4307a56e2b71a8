"""``hitit suv PET_SERIES_DIR [--mask FILE] [--label NAME]``: the SUV audit of one PET series.

Prints one JSON object (stdout) with

* ``series_uid``, ``n_files``, ``volume`` (shape, spacing, assembly notes);
* ``audit``: every field of :class:`pipeline.io.suv.SUVAudit` -- the factor
  (``suv_per_stored_unit``, ``suvbw_factor``, ``bqml_per_unit``), units and the rule applied,
  decay correction, reference time and the rule that chose it, injection time, dose, weight,
  half-life, SUL, warnings, and ``suv_reason`` when SUV is unavailable (the audit is printed
  whatever happens: missing weight or dose give an audit without SUV, not an error);
* ``masks`` (with ``--mask``): per segment, the PET voxels it covers and SUVbw (and SUL, and
  activity in Bq/mL when the units allow) min / mean / median / max over them.

Masks
-----
``--mask`` takes a DICOM SEG, an RTSTRUCT, or a NIfTI / NRRD label map (with its JSON sidecar
when present). A mask drawn on this PET series is read on the PET grid directly. A mask drawn on
another series (usually the CT, which need not be given) is read on its own grid (the SEG's
frame grid, the RTSTRUCT's contour planes at 1 mm, the label map's grid) and reaches the PET
grid through :func:`pipeline.geometry.map_mask_coverage` (2 x 2 x 2 sub-points per voxel); a
PET voxel belongs to the mask when at least half of it is covered -- the rule of the PET
features. ``--label`` keeps the segments with that name (case-insensitive); default: all.

Loading goes through the study loader (:mod:`pipeline.io.study_loader`): the PET with
:func:`~pipeline.io.study_loader.load_images` and the mask with the same dispatcher the study job
uses (:func:`~pipeline.io.study_loader.read_mask_file`), with the configured
``index.on_irregular`` and segment-name patterns (``--settings`` to give a configuration file),
so that ``hitit suv`` and the study job read identical masks.

Exit status: 0 with the audit printed (even without SUV), 2 on an input error (no PET, several
PET series without ``--series``, unreadable mask), with the message on stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from typing import TYPE_CHECKING

from pipeline.errors import DicomReadError, PipelineError, SegmentationError

if TYPE_CHECKING:  # imported where used: `hitit` registers this command without loading them
    from pipeline.geometry import Grid
    from pipeline.records import LesionMask

log = logging.getLogger(__name__)

#: A PET voxel belongs to a mask drawn on another grid when this fraction of it is covered.
MIN_COVERAGE = 0.5


def register(subparsers) -> None:
    """Add the ``suv`` subcommand to a ``hitit`` argparse subparsers object."""
    p = subparsers.add_parser(
        "suv", help="print the SUV audit (JSON) of one PET series, optionally inside a mask",
        description=__doc__.split("\n")[0])
    p.add_argument("pet_dir", metavar="PET_SERIES_DIR",
                   help="folder holding the PET series (searched recursively, by content)")
    p.add_argument("--mask", metavar="FILE",
                   help="DICOM SEG, RTSTRUCT, or NIfTI / NRRD label map")
    p.add_argument("--label", metavar="NAME", help="only the segment(s) with this name")
    p.add_argument("--series", metavar="UID",
                   help="SeriesInstanceUID of the PET when the folder holds several")
    p.add_argument("--settings", help="validated configuration YAML (default: packaged)")
    p.set_defaults(func=cmd_suv)


def cmd_suv(args) -> int:
    """Entry point of ``hitit suv``: print the report of :func:`suv_report` as JSON."""
    from pipeline import config as cfgmod

    try:
        cfg = cfgmod.load_config(getattr(args, "settings", None))
        report = suv_report(Path(args.pet_dir), mask=Path(args.mask) if args.mask else None,
                            label=args.label, series_uid=getattr(args, "series", None), cfg=cfg)
    except PipelineError as exc:
        print(f"hitit suv: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=_json_default))
    return 0


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def suv_report(pet_dir: Path, *, mask: Path | None = None, label: str | None = None,
               series_uid: str | None = None, cfg: dict | None = None) -> dict:
    """The audit of one PET series, and SUV statistics inside a mask.

    Parameters
    ----------
    pet_dir : Path
        Folder with the PET series (other files are ignored).
    mask : Path, optional
        SEG, RTSTRUCT, NIfTI or NRRD.
    label : str, optional
        Segment name to keep.
    series_uid : str, optional
        The PET series, when ``pet_dir`` holds several.
    cfg : dict, optional
        Validated configuration (default: the packaged one): ``index.on_irregular`` and the
        segment-name patterns.

    Returns
    -------
    dict
        JSON-serialisable; see the module docstring.

    Raises
    ------
    PipelineError
        No PET in the folder, several without ``series_uid``, unreadable series or mask.
    """
    from pipeline import config as cfgmod
    from pipeline.io import suv
    from pipeline.io.index import scan_archive
    from pipeline.io.study_loader import StudyInputs, load_images

    cfg = cfg if cfg is not None else cfgmod.load_config()
    pet_dir = Path(pet_dir)
    from pipeline.io.study_loader import name_patterns

    index = scan_archive(pet_dir, **name_patterns(cfg))
    pets = index.series[index.series["modality"] == "PT"]
    if series_uid:
        pets = pets[pets["series_uid"] == series_uid]
    if pets.empty:
        raise DicomReadError(
            f"no PET series{' ' + series_uid if series_uid else ''} found under {pet_dir}",
            file=pet_dir, hint="give the folder of one PET series (DICOM, Modality PT)")
    if len(pets) > 1:
        listing = "; ".join(f"{r.series_uid} ({r.description or 'no description'}, "
                            f"{r.n_files} files)" for r in pets.itertuples())
        raise DicomReadError(
            f"{len(pets)} PET series under {pet_dir}: {listing}", file=pet_dir,
            hint="choose one with --series UID")
    uid = str(pets.iloc[0]["series_uid"])
    paths = index.series_paths(uid)
    images = load_images(StudyInputs({"pet_series_uid": uid}, index.files, index.root), cfg,
                         pet_required=True)
    activity, audit = images.pet_stored, images.suv_audit
    report: dict = {
        "series_uid": uid,
        "n_files": len(paths),
        "volume": {"shape_zyx": list(activity.grid.shape_zyx),
                   "spacing_xyz_mm": list(activity.grid.spacing_xyz_mm),
                   "units": activity.units, "notes": list(activity.notes)},
        "audit": audit.as_dict(),
        "suv_available": audit.available,
    }
    if not index.problems.empty:
        report["skipped_files"] = [f"{r.path}: {r.reason}" for r in index.problems.itertuples()]
    if mask is None:
        return report
    suv_vol, bq_vol = images.pet_suv, images.pet_activity_bqml
    sul_vol = None
    if audit.available and audit.sul_factor is not None:
        sul_vol = suv.to_suv(activity, audit, kind="SUL")
    masks = load_masks_for_grid(Path(mask), images.grids_by_series_uid, cfg)
    if label:
        kept = [m for m in masks if m.name.strip().lower() == label.strip().lower()]
        if not kept:
            raise SegmentationError(
                f"no segment named {label!r} in the mask (segments: "
                f"{', '.join(m.name for m in masks) or 'none'})", file=mask, tag="--label",
                hint="use one of the listed names")
        masks = kept
    report["masks"] = [_mask_stats(m, activity.grid, suv_vol, sul_vol, bq_vol, audit)
                       for m in masks]
    return report


def load_masks_for_grid(path: Path, grids: dict[str, Grid], cfg: dict) -> list[LesionMask]:
    """Masks of a SEG / RTSTRUCT / label map / TotalSegmentator folder for ``hitit suv``.

    The study job's dispatcher (:func:`pipeline.io.study_loader.read_mask_file`, configured name
    patterns), with the source decided from the file's content; a mask drawn on a series that
    is not loaded (usually the CT) is read on its own grid.

    Parameters
    ----------
    path : Path
        The mask file (or TotalSegmentator folder).
    grids : dict SeriesInstanceUID -> Grid
        The loaded series (the PET).
    cfg : dict
        Validated configuration.

    Returns
    -------
    list of LesionMask
        ``mask.grid`` is a grid of ``grids`` or the mask's native grid (see the module docstring).
    """
    from pipeline.io.study_loader import mask_source_of, read_mask_file

    path = Path(path)
    return read_mask_file(mask_source_of(path), path, grids, cfg, own_grid_when_unloaded=True)


def _stats(values: np.ndarray) -> dict:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"min": None, "mean": None, "median": None, "max": None}
    return {"min": float(v.min()), "mean": float(v.mean()), "median": float(np.median(v)),
            "max": float(v.max())}


def _mask_stats(m: LesionMask, grid: Grid, suv_vol, sul_vol, bq_vol, audit) -> dict:
    from pipeline.geometry import map_mask_coverage

    if m.grid.same_as(grid):
        bbox, inside = m.bbox_zyx, m.crop
        how = "drawn on the PET grid"
    else:
        mapped = map_mask_coverage(m.crop, m.bbox_zyx, m.grid, grid, supersample=2)
        if mapped is None:
            return {"name": m.name, "segment_number": m.segment_number, "pet_voxels": 0,
                    "reason": "the mask lies outside the PET field of view"}
        bbox, cov = mapped
        inside = cov >= MIN_COVERAGE
        how = (f"mapped from its own grid by coverage (PET voxels >= {MIN_COVERAGE:.0%} "
               "covered)")
    sl = tuple(slice(a, b) for a, b in bbox)
    out = {
        "name": m.name, "segment_number": m.segment_number, "kind": m.kind.value,
        "source": m.source.value, "mask_volume_ml": m.voxel_count * m.grid.voxel_volume_mm3 / 1e3,
        "pet_voxels": int(inside.sum()), "mapping": how,
    }
    if not inside.any():
        out["reason"] = "no PET voxel is at least half covered by the mask"
        return out
    if suv_vol is not None:
        out["suvbw"] = _stats(suv_vol.array[sl][inside])
    else:
        out["suvbw"] = None
        out["suv_reason"] = audit.suv_reason
    if sul_vol is not None:
        out["sul"] = _stats(sul_vol.array[sl][inside])
    if bq_vol is not None:
        out["activity_bqml"] = _stats(bq_vol.array[sl][inside])
    return out
