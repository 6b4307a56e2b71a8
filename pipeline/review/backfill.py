"""Write the review image cache of a study whose job ran before the study job wrote one.

Reads the study's CT phases, PET and lesion SEG from the archive the results were indexed from
(``RESULTS/index/files.csv`` paths relative to ``RESULTS/index/index.json`` ``root``), then calls
:func:`pipeline.review.cache.write_image_cache`. No feature, ranking or table is recomputed.
Only SEG lesion masks are supported here (the study job itself passes any mask source).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from pipeline.errors import ConfigError, SegmentationError
from pipeline.review.cache import needles_from_rows, write_image_cache
from pipeline.review.store import read_study_sheet

log = logging.getLogger(__name__)


def _slug_ids(labels: list[str]) -> list[str]:
    from pipeline.study import lesion_ids

    return lesion_ids(labels)


def backfill_study_cache(results: str | Path, patient_id: str, study_uid: str, *,
                         archive: str | Path | None = None) -> Path:
    """Write ``review_cache/`` of one study from its DICOM series.

    Parameters
    ----------
    results : path
        Results folder (with ``index/`` and ``cohort/studies.csv``).
    patient_id, study_uid : str
        The study.
    archive : path, optional
        Archive root; default: the ``root`` recorded in ``RESULTS/index/index.json``.

    Returns
    -------
    Path
        The cache folder.

    Raises
    ------
    ConfigError
        Study not in the sheet, archive unknown.
    SegmentationError
        The lesion masks are not a SEG.
    """
    from pipeline.io import dicom, seg, suv

    results = Path(results)
    row = next((r for r in read_study_sheet(results)
                if r["patient_id"] == patient_id and r["study_uid"] == study_uid), None)
    if row is None:
        raise ConfigError(f"study {study_uid} of patient {patient_id} is not in the study sheet",
                          file=results / "cohort" / "studies.csv")
    if archive is None:
        idx = results / "index" / "index.json"
        archive = json.loads(idx.read_text()).get("root") if idx.is_file() else None
        if not archive:
            raise ConfigError("archive root unknown", file=idx, hint="pass --archive")
    archive = Path(archive)
    files = pd.read_csv(results / "index" / "files.csv", dtype=str, keep_default_na=False)

    def paths(uid: str) -> list[Path]:
        return [archive / p for p in files.loc[files["series_uid"] == uid, "path"]]

    vols = {}
    for role in ("ct", "ce_ct"):
        uid = row.get(f"{role}_series_uid", "")
        if uid:
            vols[role] = dicom.load_ct(paths(uid), series_uid=uid)
    pet_uid = row.get("pet_series_uid", "")
    if pet_uid:
        act, headers = dicom.load_pet_activity(paths(pet_uid), series_uid=pet_uid)
        try:
            vols["pet"] = suv.to_suv(act, suv.suv_audit(headers, strict=True))
        except Exception as e:  # noqa: BLE001 - display the activity when SUV is impossible
            log.warning("PET of %s shown as activity (%s): %s", study_uid, act.units, e)
            vols["pet"] = act
    masks = {}
    if row.get("lesion_mask_source") == "seg":
        grids = {v.series_uid: v.grid for v in vols.values()}
        found = seg.read_seg(paths(row["lesion_mask_ref"])[0], grids=grids,
                             keep_empty_lesions=True)  # ids numbered as the study job does
        lesions = [m for m in found if m.kind.value != "organ"]
        masks = {lid: m for lid, m in zip(_slug_ids([m.name for m in lesions]), lesions,
                                          strict=True) if m.voxel_count}
    elif row.get("lesion_mask_source"):
        raise SegmentationError(f"backfill reads SEG lesion masks only, found "
                                f"{row['lesion_mask_source']}", series_uid=row.get("lesion_mask_ref"),
                                hint="re-run the study job, which writes the cache for any mask source")
    out = results / "studies" / row["patient_dir"] / row["study_dir"]
    rows = []
    lp = out / "lesions.csv"
    if lp.is_file():
        rows = pd.read_csv(lp, dtype=str, keep_default_na=False).to_dict("records")
    return write_image_cache(out, vols, masks, needles=needles_from_rows(rows))
