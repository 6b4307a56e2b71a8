"""Injection and monitoring sets for one study, and the ranking table.

* Rank: lesions that are not ``not_suitable`` are ranked 1..n by (tier, -score, lesion_id); the
  lesion_id tie-break makes the order deterministic.
* Injection set: up to ``injections_per_session`` lesions from ``inject_tiers`` in rank order,
  preferring a lesion in an organ not yet chosen (the paper: injecting several organs may induce a
  broader immune response); when no other organ is left, the next in rank order.
* Monitoring set (itRECIST / RECIST 1.1): measurable (non-nodal longest diameter >= 10 mm, nodal
  short axis >= 15 mm), not injected, at most ``max_per_organ`` per organ, up to
  ``max_noninjected`` and ``max_total_targets`` including injected targets; lesions in an organ
  without an injected target come first, then larger ones.
* Planned injection volume: from the longest-diameter bands of the configuration, clipped to the
  paper's 0.5-10 mL; a warning when the lesion itself is smaller than the minimum volume.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipeline.ranking.rules import RuleOutcome, apply_rules, derive_columns, explanation
from pipeline.records import Role, Tier

log = logging.getLogger(__name__)

RANKING_COLUMNS = [
    "patient_id", "study_uid", "lesion_id", "lesion_label", "role", "tier", "rank", "score",
    "reasons", "explanation", "organ", "score_characterization", "score_access", "score_safety",
    "needle_hit_probability", "path_length_mm", "path_length_source", "measurable",
    "planned_volume_ml", "volume_warning", "rules_not_evaluated",
]


def is_measurable(row: dict, mon: dict) -> bool:
    """RECIST 1.1 measurability of a lesion row."""
    if row.get("organ") == "lymph_node":
        sa = row.get("short_axis_mm")
        return sa is not None and not pd.isna(sa) and float(sa) >= mon["nodal_min_short_axis_mm"]
    ld = row.get("longest_diameter_mm")
    return ld is not None and not pd.isna(ld) and float(ld) >= mon["nonnodal_min_longest_mm"]


def planned_volume_ml(longest_diameter_mm: float, volume_ml: float, vol_cfg: dict) -> tuple[float, str]:
    """Planned injection volume (mL) and a warning ("" if none)."""
    bands = sorted(vol_cfg["bands"], key=lambda b: b["max_diameter_mm"])
    planned = bands[-1]["volume_ml"]
    for band in bands:
        if longest_diameter_mm <= band["max_diameter_mm"]:
            planned = band["volume_ml"]
            break
    planned = float(np.clip(planned, vol_cfg["min_ml"], vol_cfg["max_ml"]))
    warning = ""
    if volume_ml is not None and not pd.isna(volume_ml) and volume_ml < vol_cfg["min_ml"]:
        warning = (
            f"lesion volume {volume_ml:.2f} mL is below the minimum planned volume "
            f"{vol_cfg['min_ml']} mL; delivered amount will vary and leakage is likely"
        )
    return planned, warning


def rank_study(table: pd.DataFrame, cfg_ranking: dict) -> pd.DataFrame:
    """Apply the rules and choose the sets for one study.

    Parameters
    ----------
    table : lesion table rows of one study (columns of ``lesions.csv``).
    cfg_ranking : validated ``ranking`` configuration section.

    Returns
    -------
    DataFrame with :data:`RANKING_COLUMNS`, one row per lesion, ordered by rank (unranked last).
    """
    if table.empty:
        return pd.DataFrame(columns=RANKING_COLUMNS)
    df = derive_columns(table, cfg_ranking).reset_index(drop=True)
    outcomes = {o.lesion_id: o for o in apply_rules(df, cfg_ranking)}
    rows = df.to_dict(orient="records")
    by_id = {str(r["lesion_id"]): r for r in rows}

    ranked = sorted(
        (o for o in outcomes.values() if o.tier is not Tier.NOT_SUITABLE),
        key=lambda o: (o.tier.order, -o.score, o.lesion_id),
    )
    rank_of = {o.lesion_id: i + 1 for i, o in enumerate(ranked)}

    # injection set
    inject_tiers = [Tier(t) for t in cfg_ranking["inject_tiers"]]
    candidates = [o for o in ranked if o.tier in inject_tiers and not o.excluded]
    n_inject = int(cfg_ranking["injections_per_session"])
    injected: list[str] = []
    organs_used: set[str] = set()
    pool = list(candidates)
    while pool and len(injected) < n_inject:
        pick = next((o for o in pool if by_id[o.lesion_id].get("organ") not in organs_used), pool[0])
        injected.append(pick.lesion_id)
        organs_used.add(by_id[pick.lesion_id].get("organ"))
        pool.remove(pick)

    # monitoring set
    mon = cfg_ranking["monitoring"]
    measurable = {lid: is_measurable(r, mon) for lid, r in by_id.items()}
    mon_candidates = [lid for lid in sorted(by_id) if measurable[lid] and lid not in injected]
    mon_candidates.sort(
        key=lambda lid: (
            by_id[lid].get("organ") in organs_used,
            -float(by_id[lid].get("longest_diameter_mm") or 0.0),
            lid,
        )
    )
    budget = min(int(mon["max_noninjected"]), int(mon["max_total_targets"]) - len(injected))
    per_organ: dict[str, int] = {}
    monitored: list[str] = []
    for lid in mon_candidates:
        if len(monitored) >= budget:
            break
        organ = by_id[lid].get("organ")
        if per_organ.get(organ, 0) >= int(mon["max_per_organ"]):
            continue
        monitored.append(lid)
        per_organ[organ] = per_organ.get(organ, 0) + 1

    out = []
    for lid, row in by_id.items():
        o: RuleOutcome = outcomes[lid]
        role = Role.INJECT if lid in injected else Role.MONITOR if lid in monitored else Role.NONE
        codes = list(o.fired)
        extra = []
        if role is Role.INJECT:
            codes.append("SELECTED_INJECTION")
            extra.append(f"selected for injection (#{injected.index(lid) + 1} of {len(injected)})")
        elif role is Role.MONITOR:
            codes.append("SELECTED_MONITORING")
            extra.append("kept uninjected as a measurable monitoring lesion")
        elif not measurable[lid]:
            codes.append("NOT_MEASURABLE")
        else:
            codes.append("NOT_SELECTED")
        pv, warn = (None, "")
        if role is Role.INJECT:
            pv, warn = planned_volume_ml(
                float(row.get("longest_diameter_mm") or 0.0), row.get("volume_ml"),
                cfg_ranking["volume"],
            )
            if warn:
                codes.append("VOLUME_BELOW_MIN")
        out.append({
            "patient_id": row.get("patient_id", ""),
            "study_uid": row.get("study_uid", ""),
            "lesion_id": lid,
            "lesion_label": row.get("lesion_label", ""),
            "role": role.value,
            "tier": o.tier.value,
            "rank": rank_of.get(lid),
            "score": o.score,
            "reasons": ";".join(codes),
            "explanation": explanation(o, extra=extra),
            "organ": row.get("organ", ""),
            "score_characterization": round(o.stage_scores["characterization"], 6),
            "score_access": round(o.stage_scores["access"], 6),
            "score_safety": round(o.stage_scores["safety"], 6),
            "needle_hit_probability": o.needle_hit_probability,
            "path_length_mm": row.get("path_length_mm"),
            "path_length_source": row.get("path_length_source", ""),
            "measurable": measurable[lid],
            "planned_volume_ml": pv,
            "volume_warning": warn,
            "rules_not_evaluated": ";".join(o.not_evaluated),
        })
    res = pd.DataFrame(out, columns=RANKING_COLUMNS)
    res["rank"] = res["rank"].astype("Int64")
    res = res.sort_values(
        by=["rank", "lesion_id"], key=lambda s: s.fillna(10**9) if s.name == "rank" else s
    ).reset_index(drop=True)
    return res
