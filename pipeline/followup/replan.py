"""Re-planning at each follow-up cycle (itRECIST target reappraisal) on top of the tool's ranking.

The rank job ranks a follow-up study like any study (:func:`pipeline.ranking.select.rank_study`,
growth since the previous study included); :func:`replan` then applies the follow-up's locked
categories (:mod:`pipeline.followup.tracking`) to the roles:

* an **injected** track (T-I / NT-I, including a recorded NI -> I reclassification, or any track
  with ``injected_since``) keeps role ``inject`` while its lesion is injectable (tier not
  ``not_suitable``);
* a **T-NI** track is monitored (role ``monitor``: the monitoring set is the T-NI tracks, locked
  at baseline) and is NEVER proposed for injection, whatever its tier or growth bonus
  (``ranking.longitudinal``'s ``new_or_growing``); only a team decision reclassifies it, and
  the tracking step records that;
* when an injected lesion is no longer injectable (tier ``not_suitable``: too small, gone, not
  reachable ...), disappeared, or was not found, the next candidate is proposed among the NT-NI
  and NEW lesions with the usual rules (tier in ``ranking.inject_tiers``, rank order, at most
  ``injections_per_session`` injected in all), and its explanation says which lesion it
  replaces and why;
* every other lesion (NT-NI, NEW, a lesion without a track) gets role ``none``.

``ranking.csv`` gains ``track_id``, ``itrecist_category``, ``injected_since`` and the track's
stable ``tracking_uid`` (the baseline segment's TrackingUID, so the DICOM SR of every timepoint
names the lesion with the same UID). At the baseline only these columns are filled (the roles
are the tool's proposal); a study that is not a timepoint is left as ranked.
"""

from __future__ import annotations

import logging
import math

import pandas as pd

from pipeline.followup.response import Category, Status
from pipeline.ranking.rules import as_bool, is_missing
from pipeline.ranking.select import planned_volume_ml, syringe_note
from pipeline.records import Role, Tier

log = logging.getLogger(__name__)

#: Columns the follow-up adds to ``ranking.csv`` (declared in :mod:`pipeline.columns`).
REPLAN_COLUMNS = ["tracking_uid", "track_id", "itrecist_category", "injected_since"]
_TOOL_CODES = {"SELECTED_INJECTION", "SELECTED_MONITORING", "NOT_SELECTED", "SESSION_LIMIT"}


def _s(v) -> str:
    return "" if is_missing(v) else str(v).strip()


def _is_injected(cat: str, since: str) -> bool:
    return cat in (Category.T_I.value, Category.NT_I.value) or bool(since)


def annotate(ranking: pd.DataFrame, current: pd.DataFrame,
             lesions: pd.DataFrame | None = None) -> pd.DataFrame:
    """``ranking`` with :data:`REPLAN_COLUMNS` from this timepoint's tracking rows (by lesion id).

    A lesion without a track keeps its own ``tracking_uid`` from ``lesions`` (or "").
    """
    out = ranking.copy()
    by_lid = {} if current is None or current.empty else {
        str(r["lesion_id"]): r for r in current.to_dict(orient="records") if _s(r["lesion_id"])}
    own = {} if lesions is None or lesions.empty or "tracking_uid" not in lesions.columns else {
        str(r["lesion_id"]): _s(r["tracking_uid"]) for r in lesions.to_dict(orient="records")}
    lids = out["lesion_id"].astype(str).tolist() if "lesion_id" in out.columns else []
    for c in REPLAN_COLUMNS:
        vals = []
        for lid in lids:
            t = by_lid.get(lid)
            if t is not None and _s(t.get("track_id")):
                vals.append(_s(t.get(c)))
            else:
                vals.append(own.get(lid, "") if c == "tracking_uid" else "")
        out[c] = pd.Series(vals, index=out.index, dtype=object)
    return out


def replan(ranking: pd.DataFrame, current: pd.DataFrame, lesions: pd.DataFrame,
           cfg_ranking: dict, *, timepoint_index: int | None) -> pd.DataFrame:
    """Apply the follow-up's locked categories to one study's ranking (module docstring).

    Parameters
    ----------
    ranking : DataFrame
        The study's ``ranking.csv`` as :func:`~pipeline.ranking.select.rank_study` made it.
    current : DataFrame
        This timepoint's tracking rows (:data:`pipeline.followup.tracking.LESION_TRACKING_COLUMNS`),
        including the not-evaluable rows of injected tracks not found.
    lesions : DataFrame
        The study's lesion table (``longest_diameter_mm``, ``volume_ml``, ``biopsy_required``
        for the planned volume of a replacement).
    cfg_ranking : dict
        Validated ``ranking`` section (``injections_per_session``, ``inject_tiers``, ``volume``,
        ``needle``).
    timepoint_index : int or None
        0 = baseline (annotation only), > 0 follow-up, None not a timepoint (unchanged but for
        the added columns).

    Returns
    -------
    DataFrame
        The ranking with :data:`REPLAN_COLUMNS`, and at a follow-up the roles, reasons,
        explanations and planned volumes re-planned; ``attrs["warnings"]`` extended.
    """
    warnings = list(ranking.attrs.get("warnings", []))
    out = annotate(ranking, current, lesions)
    out.attrs["warnings"] = warnings
    if timepoint_index is None or timepoint_index == 0 or out.empty:
        return out
    les = {} if lesions is None or lesions.empty else {
        str(r["lesion_id"]): r for r in lesions.to_dict(orient="records")}
    rows = {str(r["lesion_id"]): r for r in out.to_dict(orient="records")}
    inject_tiers = {Tier(t).value for t in cfg_ranking["inject_tiers"]}
    n_inject = int(cfg_ranking["injections_per_session"])

    # injected tracks: kept while injectable, else lost (with why)
    kept: list[str] = []
    lost: list[tuple[str, str]] = []  # (track text, why)
    not_injectable: dict[str, str] = {}
    for t in current.to_dict(orient="records"):
        tid, cat, since = _s(t["track_id"]), _s(t["itrecist_category"]), _s(t["injected_since"])
        if not tid or not _is_injected(cat, since):
            continue
        lid = _s(t["lesion_id"])
        name = f"track {tid}" + (f" (lesion {lid})" if lid else "")
        if t["status"] == Status.DISAPPEARED.value:
            lost.append((name, "disappeared (empty segment, 0 mm)"))
        elif not lid or lid not in rows:
            lost.append((name, "was not found in this study (not evaluable)"))
        elif rows[lid]["tier"] == Tier.NOT_SUITABLE.value:
            why = ("is no longer injectable (tier not_suitable: "
                   + (_s(rows[lid].get("reasons")) or "see its explanation") + ")")
            lost.append((name, why))
            not_injectable[lid] = why
        else:
            kept.append(lid)
    slots = min(len(lost), max(0, n_inject - len(kept)))

    def order(lid: str) -> tuple:
        rk = rows[lid].get("rank")
        return (is_missing(rk), float(rk) if not is_missing(rk) else 0.0, lid)

    cands = [lid for lid in sorted(rows, key=order)
             if _s(rows[lid]["itrecist_category"]) in (Category.NT_NI.value, Category.NEW.value)
             and not _is_injected(_s(rows[lid]["itrecist_category"]),
                                  _s(rows[lid]["injected_since"]))
             and rows[lid]["tier"] in inject_tiers and not is_missing(rows[lid].get("rank"))]
    replacements = cands[:slots]
    if lost and len(replacements) < slots:
        warnings.append(f"{slots - len(replacements)} injected lesion(s) not replaced: no "
                        "injectable NT-NI or NEW lesion left")
    lost_text = "; ".join(f"{n} {w}" for n, w in lost)

    new_rows = []
    for lid, r in rows.items():
        cat, since, tid = (_s(r["itrecist_category"]), _s(r["injected_since"]), _s(r["track_id"]))
        codes = [c for c in _s(r.get("reasons")).split(";") if c and c not in _TOOL_CODES]
        tool_role = _s(r.get("role"))
        if lid in kept:
            role = Role.INJECT
            codes += ["SELECTED_INJECTION", "FOLLOWUP_KEEP_INJECTED"]
            text = (f"injected since study {since} (itRECIST {cat}, track {tid}): stays injected "
                    "while injectable")
        elif lid in replacements:
            role = Role.INJECT
            codes += ["SELECTED_INJECTION", "FOLLOWUP_REPLACEMENT"]
            text = (f"proposed for injection (itRECIST {cat}, track {tid}) in place of an "
                    f"injected lesion: {lost_text}; next candidate among NT-NI and new lesions "
                    f"by the usual rules (rank {_s(r.get('rank'))})")
        elif lid in not_injectable:
            role = Role.NONE
            codes += ["FOLLOWUP_NOT_INJECTABLE"]
            text = (f"injected lesion (itRECIST {cat}, track {tid}) {not_injectable[lid]}; "
                    + (f"replaced by {', '.join(replacements)}" if replacements
                       else "no replacement proposed"))
        elif cat == Category.T_NI.value:
            role = Role.MONITOR
            codes += ["SELECTED_MONITORING", "FOLLOWUP_LOCKED_TNI"]
            text = (f"itRECIST non-injected target (T-NI, track {tid}) since baseline: monitored, "
                    "never proposed for injection (a team decision to inject it is recorded as a "
                    "reclassification)")
        else:
            role = Role.NONE
            codes += ["FOLLOWUP_LOCKED"]
            what = f"itRECIST {cat}, track {tid}" if tid else "no track"
            text = (f"{what}: not injected (the injection set is kept while injectable) and not "
                    "monitored (the monitoring set is the baseline T-NI targets)")
        if tool_role != role.value:
            text += f"; the tool alone proposed {tool_role}"
        r = dict(r)
        r["role"] = role.value
        r["reasons"] = ";".join(dict.fromkeys(codes))
        r["explanation"] = (f"Follow-up (timepoint {timepoint_index}): {text}. "
                            f"Tool: {_s(r.get('explanation'))}").strip()
        if role is Role.INJECT and is_missing(r.get("planned_volume_ml")):
            lr = les.get(lid, {})
            ld = lr.get("longest_diameter_mm")
            pv, warn = planned_volume_ml(0.0 if is_missing(ld) else float(ld), lr.get("volume_ml"),
                                         cfg_ranking["volume"])
            r["planned_volume_ml"] = pv
            r["volume_warning"] = warn
            r["syringe_note"] = syringe_note(pv, biopsy=bool(as_bool(lr.get("biopsy_required"))),
                                             vol_cfg=cfg_ranking["volume"],
                                             needle_cfg=cfg_ranking["needle"])
            if warn:
                warnings.append(f"{lid}: {warn}")
        elif role is not Role.INJECT:
            r["planned_volume_ml"] = math.nan
            r["volume_warning"] = ""
            r["syringe_note"] = ""
        new_rows.append(r)
    res = pd.DataFrame(new_rows, columns=out.columns)
    if "rank" in res.columns:
        res["rank"] = res["rank"].astype("Int64")
    res.attrs["warnings"] = warnings
    return res
