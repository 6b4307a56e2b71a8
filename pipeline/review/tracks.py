"""Follow-up lesion tracks for the side-by-side viewer: the same lesion at two timepoints.

Read from ``followup_tracking.csv`` in the study folders (written by the follow-up step, columns
``LESION_TRACKING_COLUMNS`` of :mod:`pipeline.followup`: ``track_id``, ``study_uid``,
``timepoint_index``, ``lesion_id``, ``lesion_label``, ``itrecist_category``, ``status`` ...); each
study's file holds the patient's rows up to that timepoint, so the later study's file is enough,
and both files are read (rows deduplicated) in case one is missing. Nothing is written.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TRACKING_NAME = "followup_tracking.csv"


@dataclass(frozen=True)
class TrackLink:
    """One lesion track at two studies (``""`` = the track has no lesion at that study).

    Attributes
    ----------
    track_id : str
    lesion_a, lesion_b : str
        ``lesion_id`` at study a and at study b (as in each study's ``lesions.csv`` and cache).
    label_a, label_b : str
    status_b : str
        ``present`` / ``disappeared`` / ``new`` / ``not_evaluable`` at study b.
    category : str
        itRECIST category in force at study b (else at study a).
    """

    track_id: str
    lesion_a: str
    lesion_b: str
    label_a: str = ""
    label_b: str = ""
    status_b: str = ""
    category: str = ""


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        log.warning("unreadable %s: %s", path, e)
        return []


def track_links(study_dirs: tuple[Path, Path], study_uids: tuple[str, str]) -> list[TrackLink]:
    """Tracks present at study a or study b, in ``track_id`` order; [] without tracking files.

    Parameters
    ----------
    study_dirs : (Path, Path)
        Output folders of study a and study b.
    study_uids : (str, str)
        Their StudyInstanceUIDs.
    """
    seen: dict[tuple[str, str], dict[str, str]] = {}
    for d in study_dirs:
        for r in _rows(Path(d) / TRACKING_NAME):
            seen.setdefault((r.get("track_id", ""), r.get("study_uid", "")), r)
    ua, ub = study_uids
    out = []
    for tid in sorted({k[0] for k in seen if k[0]}):
        a, b = seen.get((tid, ua), {}), seen.get((tid, ub), {})
        if not (a.get("lesion_id") or b.get("lesion_id")):
            continue
        out.append(TrackLink(tid, a.get("lesion_id", ""), b.get("lesion_id", ""),
                             a.get("lesion_label", ""), b.get("lesion_label", ""),
                             b.get("status", ""), b.get("itrecist_category") or a.get("itrecist_category", "")))
    return out
