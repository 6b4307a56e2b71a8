"""Follow-up: match the lesions of a patient's earlier study, compute growth, rank per patient.

Matching (:func:`match_lesions`)
--------------------------------
1. **Tracking UID**: a DICOM SEG segment's TrackingUID is meant to stay the same for the same
   finding across studies. Lesions whose ``tracking_uid`` occurs in both tables are matched.
2. **Nearest centroid** for the rest: an optimal one-to-one assignment (Hungarian algorithm,
   :func:`scipy.optimize.linear_sum_assignment`) on the distances between the centroids
   (``centroid_x/y/z_mm``, DICOM LPS), keeping pairs within ``max_distance_mm``. When at least one
   tracking UID matched, the UIDs are taken as longitudinal and two lesions that both carry a
   (different) UID are never paired by position; when none matched (UIDs generated per study)
   every lesion may be paired by position.

   Positions are compared in the scanner frame as they are. This is right for the phantom, whose
   studies of one patient share a frame of reference, and **wrong for real follow-ups**: the
   patient lies differently at each visit, so real studies must first be registered (rigid or
   deformable CT-to-CT registration, then the prior centroids mapped into the current frame)
   before calling :func:`match_lesions`; registration is not part of this module. A study with
   another ``frame_of_reference_uid`` than its prior is therefore matched by tracking UID only
   (a warning says so) unless the caller registered it. The follow-up step
   (:mod:`pipeline.followup`) does register: at a follow-up timepoint the rank job passes its
   track matches (baseline frame, after registration) to :func:`rank_patient`
   (``track_matches``), and growth is computed along the tracks (``match_method`` "track").

Growth: longest diameter change (%, mm) and volume change (%) of each matched lesion.
``new_or_growing`` is True for a lesion that matches no earlier lesion (new: seen now, not
before; the earlier study is assumed to cover the same region) and for a matched lesion whose
longest diameter grew by at least ``growth_min_pct`` % and ``growth_min_abs_mm`` mm (RECIST-like
thresholds from ``ranking.longitudinal``); False for a matched lesion that did not grow; unknown
(None) when the lesion could not be placed (no centroid and no UID match).

Per patient (:func:`rank_patient`): studies in date order; each study is ranked with
``new_or_growing`` from its previous study (when there is one), the clinical sidecar applied on
top (a clinician's statement wins), then :func:`pipeline.ranking.select.rank_study`.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.ranking.rules import is_missing
from pipeline.ranking.select import rank_study
from pipeline.ranking.sidecar import load_sidecar_from_config, merge_sidecar

log = logging.getLogger(__name__)

MATCH_COLUMNS = [
    "lesion_id", "prior_lesion_id", "match_method", "match_distance_mm",
    "prior_longest_diameter_mm", "longest_diameter_change_mm", "longest_diameter_change_pct",
    "volume_change_pct", "is_new", "is_growing", "new_or_growing",
]
_XYZ = ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")


def _uids(df: pd.DataFrame) -> pd.Series:
    if "tracking_uid" not in df.columns:
        return pd.Series("", index=df.index)
    return df["tracking_uid"].map(lambda v: "" if is_missing(v) else str(v).strip())


def _xyz(df: pd.DataFrame) -> np.ndarray:
    cols = [pd.to_numeric(df[c], errors="coerce") if c in df.columns
            else pd.Series(np.nan, index=df.index) for c in _XYZ]
    return np.column_stack([c.to_numpy(dtype=float) for c in cols]) if len(df) else np.zeros((0, 3))


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def match_lesions(prior: pd.DataFrame, current: pd.DataFrame, *, max_distance_mm: float,
                  growth_min_pct: float, growth_min_abs_mm: float) -> pd.DataFrame:
    """Match the current study's lesions to an earlier study's and compute growth.

    Parameters
    ----------
    prior, current : DataFrame
        Lesion tables of two studies of one patient (``lesion_id``; ``tracking_uid`` and
        ``centroid_x/y/z_mm`` used for matching; ``longest_diameter_mm`` and ``volume_ml`` for
        growth).
    max_distance_mm : float
        Largest centroid distance of a positional match (``ranking.longitudinal``).
    growth_min_pct, growth_min_abs_mm : float
        A matched lesion is growing when its longest diameter increased by at least both.

    Returns
    -------
    DataFrame
        :data:`MATCH_COLUMNS`, one row per current lesion in the order of ``current``;
        ``match_method`` is "tracking_uid", "centroid" or "none". ``attrs["disappeared"]`` lists
        the prior lesion_ids that matched nothing.
    """
    cur = current.reset_index(drop=True)
    pri = prior.reset_index(drop=True)
    cu, pu = _uids(cur), _uids(pri)
    match: dict[int, tuple[int, str, float]] = {}
    # 1. tracking UID
    p_by_uid: dict[str, int] = {}
    for j, u in enumerate(pu):
        if u and u not in p_by_uid and (pu == u).sum() == 1:
            p_by_uid[u] = j
    for i, u in enumerate(cu):
        if u and u in p_by_uid and (cu == u).sum() == 1:
            match[i] = (p_by_uid[u], "tracking_uid", float("nan"))
    uids_longitudinal = bool(match)
    # 2. nearest centroid, optimal assignment
    used_p = {j for j, _, _ in match.values()}
    ci = [i for i in range(len(cur)) if i not in match]
    pj = [j for j in range(len(pri)) if j not in used_p]
    if ci and pj:
        a, b = _xyz(cur)[ci], _xyz(pri)[pj]
        d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
        allowed = np.isfinite(d) & (d <= max_distance_mm)
        if uids_longitudinal:
            both = np.array([[bool(cu[i]) and bool(pu[j]) for j in pj] for i in ci])
            allowed &= ~both
        if allowed.any():
            big = 1e9
            cost = np.where(allowed, np.nan_to_num(d, nan=big), big)
            from scipy.optimize import linear_sum_assignment  # here: 0.6 s import, prior studies only

            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if allowed[r, c]:
                    match[ci[r]] = (pj[c], "centroid", float(d[r, c]))
    xyz_cur = _xyz(cur)
    placeable = {i: bool(np.isfinite(xyz_cur[i]).all() or (bool(cu[i]) and uids_longitudinal))
                 for i in range(len(cur))}
    return _growth_table(pri, cur, match, placeable, growth_min_pct=growth_min_pct,
                         growth_min_abs_mm=growth_min_abs_mm)


def _growth_table(pri: pd.DataFrame, cur: pd.DataFrame, match: dict[int, tuple[int, str, float]],
                  placeable: dict[int, bool], *, growth_min_pct: float,
                  growth_min_abs_mm: float) -> pd.DataFrame:
    """:data:`MATCH_COLUMNS` rows of ``cur`` given the matches (row -> (prior row, method,
    distance)); an unmatched lesion is new when ``placeable``, else unknown (None)."""
    out = []
    for i in range(len(cur)):
        lid = str(cur.at[i, "lesion_id"])
        if i in match:
            j, how, dist = match[i]
            ld0 = _num(pri.at[j, "longest_diameter_mm"]) if "longest_diameter_mm" in pri else np.nan
            ld1 = _num(cur.at[i, "longest_diameter_mm"]) if "longest_diameter_mm" in cur else np.nan
            v0 = _num(pri.at[j, "volume_ml"]) if "volume_ml" in pri else np.nan
            v1 = _num(cur.at[i, "volume_ml"]) if "volume_ml" in cur else np.nan
            dmm = ld1 - ld0
            dpct = 100.0 * dmm / ld0 if ld0 > 0 else np.nan
            vpct = 100.0 * (v1 - v0) / v0 if v0 > 0 else np.nan
            if np.isfinite(dpct) and np.isfinite(dmm):
                growing = bool(dpct >= growth_min_pct and dmm >= growth_min_abs_mm)
            else:
                growing = None
            out.append({
                "lesion_id": lid, "prior_lesion_id": str(pri.at[j, "lesion_id"]),
                "match_method": how, "match_distance_mm": dist,
                "prior_longest_diameter_mm": ld0, "longest_diameter_change_mm": dmm,
                "longest_diameter_change_pct": dpct, "volume_change_pct": vpct,
                "is_new": False, "is_growing": growing, "new_or_growing": growing,
            })
        else:
            out.append({
                "lesion_id": lid, "prior_lesion_id": "", "match_method": "none",
                "match_distance_mm": np.nan, "prior_longest_diameter_mm": np.nan,
                "longest_diameter_change_mm": np.nan, "longest_diameter_change_pct": np.nan,
                "volume_change_pct": np.nan, "is_new": True if placeable[i] else None,
                "is_growing": None, "new_or_growing": True if placeable[i] else None,
            })
    res = pd.DataFrame(out, columns=MATCH_COLUMNS)
    for c in ("is_new", "is_growing", "new_or_growing"):
        res[c] = res[c].astype(object)
    matched_p = {j for j, _, _ in match.values()}
    res.attrs["disappeared"] = [str(pri.at[j, "lesion_id"]) for j in range(len(pri))
                                if j not in matched_p]
    return res


def _frame_uid(df: pd.DataFrame) -> str:
    if "frame_of_reference_uid" not in df.columns or df.empty:
        return ""
    vals = {str(v) for v in df["frame_of_reference_uid"] if not is_missing(v)}
    return vals.pop() if len(vals) == 1 else ""


def track_matched_growth(prior: pd.DataFrame, current: pd.DataFrame,
                         matched: dict[str, str | None], *, growth_min_pct: float,
                         growth_min_abs_mm: float) -> pd.DataFrame:
    """Growth of the current lesions against the prior study's, from given matches.

    ``matched`` maps a current lesion_id to the prior study's lesion_id of the same follow-up
    track (:mod:`pipeline.followup.tracking`, matched in the baseline frame after registration),
    to "" for a new lesion, or to None when it could not be placed (unknown). ``match_method``
    is "track". Returns :data:`MATCH_COLUMNS` like :func:`match_lesions`.
    """
    cur = current.reset_index(drop=True)
    pri = prior.reset_index(drop=True)
    row_of = {str(v): j for j, v in enumerate(pri["lesion_id"])}
    match, placeable = {}, {}
    for i, lid in enumerate(cur["lesion_id"].astype(str)):
        p = matched.get(lid)
        if p and p in row_of:
            match[i] = (row_of[p], "track", float("nan"))
        placeable[i] = p is not None and lid in matched
    res = _growth_table(pri, cur, match, placeable, growth_min_pct=growth_min_pct,
                        growth_min_abs_mm=growth_min_abs_mm)
    matched_p = {j for j, _, _ in match.values()}
    res.attrs["disappeared"] = [str(pri.at[j, "lesion_id"]) for j in range(len(pri))
                                if j not in matched_p]
    return res


def add_prior(current: pd.DataFrame, prior: pd.DataFrame, prior_study_uid: str,
              cfg_ranking: dict, *, matched: dict[str, str | None] | None = None) -> pd.DataFrame:
    """``current`` with growth columns from ``prior`` (see :func:`match_lesions`).

    Adds ``prior_study_uid``, ``prior_lesion_id``, ``match_method``,
    ``longest_diameter_change_pct``, ``volume_change_pct`` and fills ``new_or_growing`` where the
    table has no value yet (``new_or_growing_source`` = "prior_study"). When both tables state
    different frames of reference (``frame_of_reference_uid``), positions are not comparable
    without registration: only tracking UIDs are used, with a warning. With ``matched`` (the
    follow-up's tracks, :func:`track_matched_growth`) those matches are used instead.
    """
    lcfg = cfg_ranking["longitudinal"]
    df = current.copy().reset_index(drop=True)
    warnings = list(df.attrs.get("warnings", []))
    f0, f1 = _frame_uid(prior), _frame_uid(df)
    pri = prior
    if matched is not None:
        m = track_matched_growth(prior, df, matched, growth_min_pct=lcfg["growth_min_pct"],
                                 growth_min_abs_mm=lcfg["growth_min_abs_mm"])
    elif f0 and f1 and f0 != f1:
        warnings.append(
            f"prior study {prior_study_uid} has another frame of reference: lesions matched by "
            "tracking UID only (register the studies to match by position)")
        pri = prior.copy()
        for c in _XYZ:
            pri[c] = np.nan
    if matched is None:
        m = match_lesions(pri, df, max_distance_mm=lcfg["max_match_distance_mm"],
                          growth_min_pct=lcfg["growth_min_pct"],
                          growth_min_abs_mm=lcfg["growth_min_abs_mm"])
    df["prior_study_uid"] = prior_study_uid
    for c in ("prior_lesion_id", "match_method", "longest_diameter_change_pct", "volume_change_pct"):
        df[c] = m[c].to_numpy()
    if "new_or_growing" not in df.columns:
        df["new_or_growing"] = None
    df["new_or_growing"] = df["new_or_growing"].astype(object)
    src = df["new_or_growing_source"] if "new_or_growing_source" in df.columns else \
        pd.Series("", index=df.index)
    src = src.astype(object).where(src.notna(), "")
    for i in range(len(df)):
        if is_missing(df.at[i, "new_or_growing"]) and m.at[i, "new_or_growing"] is not None:
            df.at[i, "new_or_growing"] = bool(m.at[i, "new_or_growing"])
            src.iat[i] = "prior_study"
        elif not is_missing(df.at[i, "new_or_growing"]) and not src.iat[i]:
            src.iat[i] = "table"
    df["new_or_growing_source"] = src
    df.attrs["warnings"] = warnings
    return df


def rank_patient(studies: list[tuple[str, str, pd.DataFrame]], cfg_ranking: dict,
                 sidecar: pd.DataFrame | None = None, *, model=None,
                 track_matches: dict[str, tuple[str, dict[str, str | None]]] | None = None
                 ) -> dict[str, pd.DataFrame]:
    """Rank every study of one patient, each with its previous study when there is one.

    Parameters
    ----------
    studies : list of (study_uid, study_date, lesions)
        ``study_date`` as DICOM ``YYYYMMDD`` (any string that sorts chronologically); "" when
        unknown. Studies are processed in (date, study_uid) order; an undated study is ranked
        without a prior and is never used as a prior (its place in time is unknown).
    cfg_ranking : dict
        Validated ``ranking`` section.
    sidecar : DataFrame, optional
        From :func:`pipeline.ranking.sidecar.load_sidecar`; when None, ``ranking.sidecar`` is
        loaded if set.
    model : optional
        Trained ranker passed to :func:`~pipeline.ranking.select.rank_study`.
    track_matches : dict, optional
        study_uid -> (prior study_uid, {lesion_id: prior lesion_id, "" new, None unknown}): the
        follow-up's matches (registered, :mod:`pipeline.followup.tracking`), used for that
        study's growth when its prior is that study (else the usual matching).

    Returns
    -------
    dict
        study_uid -> ranking DataFrame (:data:`~pipeline.ranking.select.RANKING_COLUMNS`),
        warnings in ``attrs["warnings"]``.
    """
    if sidecar is None:
        sidecar = load_sidecar_from_config(cfg_ranking)
    dated = sorted((s for s in studies if str(s[1] or "").strip()), key=lambda s: (str(s[1]), s[0]))
    undated = sorted((s for s in studies if not str(s[1] or "").strip()), key=lambda s: s[0])
    out: dict[str, pd.DataFrame] = {}
    prev: tuple[str, pd.DataFrame] | None = None
    for uid, date, lesions in dated + undated:
        lesions = lesions if lesions is not None else pd.DataFrame()
        warnings: list[str] = []
        tab = lesions.copy()
        is_dated = bool(str(date or "").strip())
        if not tab.empty:
            if is_dated and prev is not None:
                tm = (track_matches or {}).get(uid)
                tab = add_prior(tab, prev[1], prev[0], cfg_ranking,
                                matched=tm[1] if tm is not None and tm[0] == prev[0] else None)
                warnings += tab.attrs.get("warnings", [])
            elif not is_dated and len(studies) > 1:
                warnings.append("study date unknown: ranked without the earlier study")
            tab.attrs["warnings"] = []
            tab = merge_sidecar(tab, sidecar)
            warnings += tab.attrs.get("warnings", [])
            tab.attrs["warnings"] = []
        res = rank_study(tab, cfg_ranking, model=model)
        res.attrs["warnings"] = warnings + list(res.attrs.get("warnings", []))
        out[uid] = res
        if is_dated and not lesions.empty:
            prev = (uid, lesions)
    return out
