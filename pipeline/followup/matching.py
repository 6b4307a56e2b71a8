"""Lesions of a follow-up study matched to the baseline tracks, in the baseline frame.

Rules, in order (labels are never used: they differ between readers and visits):

1. **TrackingUID.** A lesion whose non-empty ``tracking_uid`` equals that of exactly one track
   (and no other lesion carries it) is that track's lesion (method ``"tracking_uid"``), whatever
   the distance. A UID shared by several tracks or several lesions is ambiguous and falls through
   to rule 2.
2. **Position.** The remaining tracks and lesions with a finite position are paired by an optimal
   assignment (:func:`scipy.optimize.linear_sum_assignment`) on their centroid distances (mm,
   baseline LPS frame): as many pairs as possible within ``max_distance_mm``, and among those the
   smallest total distance (method ``"position"``). A nearest-neighbour rule would let one close
   lesion steal the track of another.
3. A lesion with no position (an empty segment: NaN centroid) matches only by TrackingUID.

Ties are deterministic: tracks and lesions are sorted by id before the assignment, so the result
does not depend on row order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from pipeline.errors import FollowupError

log = logging.getLogger(__name__)

#: Match methods.
METHODS = ("tracking_uid", "position")
_XYZ = ["x_mm", "y_mm", "z_mm"]


@dataclass(frozen=True)
class Match:
    """One lesion assigned to one track.

    Attributes
    ----------
    track_id, lesion_id : str
    method : str
        ``"tracking_uid"`` or ``"position"``.
    distance_mm : float or None
        Centroid distance in the baseline frame (None when either position is unknown).
    """

    track_id: str
    lesion_id: str
    method: str
    distance_mm: float | None


@dataclass(frozen=True)
class MatchResult:
    """All matches (sorted by track id) and what stayed unmatched (sorted ids)."""

    matches: tuple[Match, ...]
    unmatched_tracks: tuple[str, ...]
    unmatched_lesions: tuple[str, ...]


def _prepared(df: pd.DataFrame, id_col: str, what: str) -> pd.DataFrame:
    need = [id_col, "tracking_uid", *_XYZ]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise FollowupError(f"{what} table lacks the columns {missing}; expected {need}",
                            hint="build it with the follow-up tracking step")
    out = df[need].copy()
    out[id_col] = out[id_col].astype(str)
    dup = out[id_col][out[id_col].duplicated()].tolist()
    if dup:
        raise FollowupError(f"{what} table repeats the ids {sorted(set(dup))}",
                            hint=f"each {id_col} must be unique")
    out["tracking_uid"] = out["tracking_uid"].fillna("").astype(str).str.strip()
    out[_XYZ] = out[_XYZ].apply(pd.to_numeric, errors="coerce").astype(float)
    return out.sort_values(id_col, kind="stable").reset_index(drop=True)


def match_to_tracks(tracks: pd.DataFrame, lesions: pd.DataFrame, *,
                    max_distance_mm: float) -> MatchResult:
    """Match a follow-up's lesions to the tracks (see the module docstring).

    Parameters
    ----------
    tracks : pd.DataFrame
        Columns ``track_id``, ``tracking_uid`` ("" if none), ``x_mm``, ``y_mm``, ``z_mm``: the
        track's last known centroid in the baseline LPS frame, mm.
    lesions : pd.DataFrame
        Columns ``lesion_id``, ``tracking_uid``, ``x_mm``, ``y_mm``, ``z_mm``: centroids already
        mapped to the baseline frame, mm (NaN for an empty segment).
    max_distance_mm : float
        Largest centroid distance of a positional match.

    Returns
    -------
    MatchResult
    """
    t = _prepared(tracks, "track_id", "tracks")
    les = _prepared(lesions, "lesion_id", "lesions")
    tp = {r.track_id: np.array([r.x_mm, r.y_mm, r.z_mm]) for r in t.itertuples()}
    lp = {r.lesion_id: np.array([r.x_mm, r.y_mm, r.z_mm]) for r in les.itertuples()}

    def dist(tid: str, lid: str) -> float | None:
        d = float(np.linalg.norm(tp[tid] - lp[lid]))
        return d if np.isfinite(d) else None

    matches: list[Match] = []
    # 1. TrackingUID equality (unique on both sides)
    t_uid = t[t.tracking_uid != ""].groupby("tracking_uid")["track_id"].apply(list)
    l_uid = les[les.tracking_uid != ""].groupby("tracking_uid")["lesion_id"].apply(list)
    for uid in sorted(set(t_uid.index) & set(l_uid.index)):
        tids, lids = t_uid[uid], l_uid[uid]
        if len(tids) == 1 and len(lids) == 1:
            matches.append(Match(tids[0], lids[0], "tracking_uid", dist(tids[0], lids[0])))
        else:
            log.warning("TrackingUID %s is shared by tracks %s and lesions %s: matched by "
                        "position instead", uid, tids, lids)
    done_t = {m.track_id for m in matches}
    done_l = {m.lesion_id for m in matches}

    # 2. optimal assignment on centroid distance, within the limit
    rt = [k for k in t.track_id if k not in done_t and np.all(np.isfinite(tp[k]))]
    rl = [k for k in les.lesion_id if k not in done_l and np.all(np.isfinite(lp[k]))]
    if rt and rl:
        a = np.stack([tp[k] for k in rt])
        b = np.stack([lp[k] for k in rl])
        d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
        limit = float(max_distance_mm)
        ok = d <= limit
        # out-of-limit pairs cost more than any set of in-limit pairs: the assignment first
        # maximises the number of pairs within the limit, then minimises their total distance
        big = (limit + 1.0) * (min(len(rt), len(rl)) + 1)
        cost = np.where(ok, d, big)
        rows, cols = linear_sum_assignment(cost)
        for i, j in zip(rows, cols):
            if ok[i, j]:
                matches.append(Match(rt[i], rl[j], "position", float(d[i, j])))
    matches.sort(key=lambda m: m.track_id)
    done_t = {m.track_id for m in matches}
    done_l = {m.lesion_id for m in matches}
    return MatchResult(tuple(matches),
                       tuple(k for k in t.track_id if k not in done_t),
                       tuple(k for k in les.lesion_id if k not in done_l))
