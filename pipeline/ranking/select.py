"""Injection and monitoring sets for one study, and the ranking table.

* **Rank**: lesions whose tier is not ``not_suitable`` are ranked 1..n by
  :func:`~pipeline.ranking.rules.rule_sort_key` (tier, score, needle-hit probability, lesion_id:
  deterministic, independent of row order). With a trained model (``ranking.model``) the same
  lesions are ranked by the model's score instead (ties by lesion_id): hard exclusions and the
  rules' tiers still apply, the model only orders the eligible lesions; ``score`` is then the
  model's probability that the lesion is the team's first choice among the eligible lesions of
  the study, and ``rule_score`` keeps the rules' score.
* **Injection set**: up to ``injections_per_session`` lesions (fewer when the clinical sidecar
  gives a per-trial ``max_injections`` for the patient) from ``inject_tiers`` in rank order. With
  ``organ_diversity`` a lesion in a site not yet chosen is preferred (the paper: injecting
  several organs may induce a broader immune response), but only when its rule score is within
  ``diversity_max_score_drop`` of the best remaining candidate: diversity never picks a much
  weaker lesion. The site (:func:`diversity_site`) is the organ, and for lymph nodes (all one
  organ ``lymph_node``) the nodal station named in the lesion label (axillary, inguinal ...,
  :func:`pipeline.anatomy.site.nodal_station`) when known.
* **Monitoring set** (itRECIST / RECIST 1.1): measurable (:func:`recist_measurability`:
  non-nodal longest diameter >= max(``nonnodal_min_longest_mm``, ``nonnodal_min_slice_multiple``
  x slice thickness); nodal short axis >= ``nodal_min_short_axis_mm``; nodes of
  ``nodal_pathological_min_short_axis_mm`` up to that are pathological non-targets), not injected,
  not previously treated locally (``exclude_prior_locoregional``), at most ``max_per_organ``
  per organ, up to ``max_noninjected`` and ``max_total_targets`` minus the injected ones; lesions
  in an organ without an injected target come first, then the larger ones, then lesion_id. A
  monitoring lesion's explanation says why it was chosen to monitor (measurable, organ, size
  order), not the injection tier's wording.
* **Session limits** (``ranking.session``, :func:`session_limits`): the injection set's total
  planned volume and the number of organs punctured for visceral targets stay within the
  configured caps; a lesion left out by a cap gets ``SESSION_LIMIT`` and a message saying which
  cap, and the next fitting lesion in rank order takes its place.
* **Planned injection volume**: from the longest-diameter bands of the configuration (T-VEC-like
  bands), clipped to the paper's 0.5-10 mL; a warning when the lesion is smaller than the planned
  volume (in particular when it is too small for the 0.5 mL minimum). A syringe note follows the
  paper: Luer-lock syringes of at most ``syringe_max_ml`` on a 22G needle (a coaxial 17-18G
  needle when a biopsy is required).

Warnings for the study (no monitoring lesion, volume warnings, sidecar rows that matched no
lesion) are in ``result.attrs["warnings"]``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from pipeline.anatomy.site import nodal_station
from pipeline.ranking.rules import (
    RuleOutcome,
    add_rule_columns,
    apply_rules,
    as_bool,
    derive_columns,
    explanation,
    is_missing,
    rule_sort_key,
)
from pipeline.records import Role, Tier

log = logging.getLogger(__name__)

#: Output columns of ``ranking.csv``; the first ten are the output contract of issue 2.
RANKING_COLUMNS = [
    "patient_id", "study_uid", "lesion_id", "lesion_label", "role", "tier", "rank", "score",
    "reasons", "explanation", "organ", "rule_score", "score_source", "score_characterization",
    "score_access", "score_safety", "needle_hit_probability", "path_length_mm",
    "path_length_source", "target_x_mm", "target_y_mm", "target_z_mm", "target_point_source",
    "measurable", "planned_volume_ml", "volume_warning", "syringe_note", "new_or_growing",
    "prior_study_uid", "prior_lesion_id", "longest_diameter_change_pct", "rules_not_evaluated",
    "recist_category", "measurable_min_mm", "diversity_site",
    # filled by the follow-up step (pipeline.followup.replan); empty straight from rank_study
    "tracking_uid", "track_id", "itrecist_category", "injected_since",
]

#: Lesion-table columns giving the CT slice thickness (mm) for RECIST measurability, first known
#: wins: the DICOM SliceThickness of the CT series, else the CT grid's slice spacing.
SLICE_THICKNESS_COLUMNS = ("ct_slice_spacing_mm",)


def recist_measurability(row: dict, mon: dict) -> tuple[str, float | None, str]:
    """RECIST 1.1 category of a lesion row.

    Non-nodal lesions: measurable (``target``) when the longest diameter is at least
    max(``nonnodal_min_longest_mm``, ``nonnodal_min_slice_multiple`` x slice thickness), the
    slice thickness from the first known of :data:`SLICE_THICKNESS_COLUMNS` (mm; without it the
    fixed minimum applies). Lymph nodes by short axis: >= ``nodal_min_short_axis_mm`` target;
    >= ``nodal_pathological_min_short_axis_mm`` pathological non-target; below, not pathological.

    Returns
    -------
    (category, minimum_mm, text)
        category in ``target``, ``non_target`` (non-measurable lesion), ``pathological_node``
        (nodal non-target), ``normal_node``, ``unknown`` (diameter missing); the minimum
        diameter (mm) that applied; a sentence for the explanation.
    """
    if row.get("organ") == "lymph_node":
        sa = row.get("short_axis_mm")
        tmin = float(mon["nodal_min_short_axis_mm"])
        pmin = float(mon["nodal_pathological_min_short_axis_mm"])
        if is_missing(sa):
            return "unknown", tmin, "node short axis unknown: measurability not assessed"
        sa = float(sa)
        if sa >= tmin:
            return "target", tmin, f"node short axis {sa:.1f} mm >= {tmin:g} mm (RECIST 1.1 target)"
        if sa >= pmin:
            return ("pathological_node", tmin, f"pathological node, short axis {sa:.1f} mm "
                    f"({pmin:g}-{tmin:g} mm): RECIST 1.1 non-target")
        return "normal_node", tmin, f"node short axis {sa:.1f} mm < {pmin:g} mm: not pathological"
    fixed = float(mon["nonnodal_min_longest_mm"])
    thick = next((float(row[c]) for c in SLICE_THICKNESS_COLUMNS
                  if c in row and not is_missing(row[c]) and float(row[c]) > 0), None)
    mult = float(mon["nonnodal_min_slice_multiple"])
    if thick is None:
        tmin, how = fixed, f"minimum {fixed:g} mm; slice thickness unknown"
    else:
        tmin = max(fixed, mult * thick)
        how = f"minimum = max of {fixed:g} mm and {mult:g} x {thick:g} mm slice thickness"
    ld = row.get("longest_diameter_mm")
    if is_missing(ld):
        return "unknown", tmin, "longest diameter unknown: measurability not assessed"
    ld = float(ld)
    if ld >= tmin:
        return "target", tmin, f"longest diameter {ld:.1f} mm >= {tmin:g} mm ({how})"
    return ("non_target", tmin, f"not measurable: longest diameter {ld:.1f} mm < {tmin:g} mm "
            f"({how})")


def is_measurable(row: dict, mon: dict) -> bool:
    """RECIST 1.1 measurability of a lesion row (:func:`recist_measurability` is ``target``)."""
    return recist_measurability(row, mon)[0] == "target"


def planned_volume_ml(longest_diameter_mm: float, volume_ml: float | None,
                      vol_cfg: dict) -> tuple[float, str]:
    """Planned injection volume (mL) and a warning ("" if none).

    Parameters
    ----------
    longest_diameter_mm : float
        Selects the band of ``vol_cfg["bands"]`` (first band whose ``max_diameter_mm`` is >= it).
    volume_ml : float or None
        Lesion volume; a warning when it is smaller than the planned volume.
    vol_cfg : dict
        ``ranking.volume`` (``min_ml``, ``max_ml``, ``bands``).
    """
    bands = sorted(vol_cfg["bands"], key=lambda b: b["max_diameter_mm"])
    planned = bands[-1]["volume_ml"]
    for band in bands:
        if longest_diameter_mm <= band["max_diameter_mm"]:
            planned = band["volume_ml"]
            break
    planned = float(np.clip(planned, vol_cfg["min_ml"], vol_cfg["max_ml"]))
    warning = ""
    if not is_missing(volume_ml) and float(volume_ml) < planned:
        if float(volume_ml) < vol_cfg["min_ml"]:
            warning = (
                f"lesion volume {float(volume_ml):.2f} mL is too small for the minimum "
                f"{vol_cfg['min_ml']:g} mL injection; delivered amount will vary and leakage is likely"
            )
        else:
            warning = (
                f"lesion volume {float(volume_ml):.2f} mL is smaller than the planned "
                f"{planned:g} mL; leakage outside the tumor is likely"
            )
    return planned, warning


def syringe_note(planned_ml: float, *, biopsy: bool, vol_cfg: dict, needle_cfg: dict) -> str:
    """Syringe and needle note for a planned volume (paper: <= 5 mL Luer-lock syringe, 22G)."""
    n = max(1, math.ceil(planned_ml / vol_cfg["syringe_max_ml"] - 1e-9))
    syr = (f"one Luer-lock syringe of at most {vol_cfg['syringe_max_ml']:g} mL" if n == 1 else
           f"{n} Luer-lock syringes of at most {vol_cfg['syringe_max_ml']:g} mL each")
    needle = (f"{needle_cfg['biopsy_gauge']} needle (biopsy first, then injection through it)"
              if biopsy else f"{needle_cfg['injection_gauge']} needle")
    return f"{planned_ml:g} mL: {syr} on a {needle}"


def _patient_max_injections(df: pd.DataFrame) -> int | None:
    if "max_injections" not in df.columns:
        return None
    vals = pd.to_numeric(df["max_injections"], errors="coerce").dropna()
    return int(vals.min()) if len(vals) else None


def diversity_site(row: dict) -> str:
    """Site of a lesion for injection diversity: the organ; for lymph nodes
    ``lymph_node:<station>`` when the label (else the lesion id) names a station, else
    ``lymph_node``."""
    organ = "" if is_missing(row.get("organ")) else str(row.get("organ"))
    if organ != "lymph_node":
        return organ
    for key in ("lesion_label", "lesion_id"):
        v = row.get(key)
        if not is_missing(v) and (st := nodal_station(str(v))):
            return f"lymph_node:{st}"
    return "lymph_node"


def _choose_injection(candidates: list[str], organ_of: dict, n: int, diversity: bool,
                      limits=None, score_of: dict | None = None,
                      max_drop: float = math.inf) -> tuple[list[str], dict[str, str]]:
    """Injection set in rank order with site diversity and the session limits.

    ``organ_of`` maps a lesion to its diversity site. ``limits(chosen, lid)`` returns "" when
    ``lid`` may join ``chosen``, else why not (a session limit). With ``diversity`` a lesion in
    a new site is preferred when its score (``score_of``) is at least the best fitting
    candidate's minus ``max_drop``. Returns the chosen lesion ids and, for candidates left out by
    a limit, the reason.
    """
    chosen: list[str] = []
    refused: dict[str, str] = {}
    used: set = set()
    pool = list(candidates)
    while pool and len(chosen) < n:
        fitting = []
        for lid in pool:
            why = limits(chosen, lid) if limits is not None else ""
            if why:
                refused[lid] = why
            else:
                fitting.append(lid)
        if not fitting:
            break
        pick = fitting[0]
        if diversity:
            floor = (score_of[pick] - max_drop) if score_of is not None else -math.inf
            pick = next((lid for lid in fitting if organ_of[lid] not in used
                         and (score_of is None or score_of[lid] >= floor - 1e-9)), fitting[0])
        chosen.append(pick)
        refused.pop(pick, None)
        used.add(organ_of[pick])
        pool.remove(pick)
    return chosen, {lid: why for lid, why in refused.items() if lid not in chosen}


def session_limits(by_id: dict, planned_ml: dict, cfg_session: dict):
    """The per-session limits of ``ranking.session`` as a check for :func:`_choose_injection`.

    * ``max_total_volume_ml``: the planned volumes (mL) of the injected lesions add up to at most
      this (null: no limit);
    * ``max_organs_punctured``: distinct organs punctured for visceral targets (site
      ``visceral:<organ>``) at most this (null: no limit). Superficial soft tissue and nodes
      puncture no organ.
    """
    vmax = cfg_session.get("max_total_volume_ml")
    omax = cfg_session.get("max_organs_punctured")

    def punctured(lid: str) -> str | None:
        site = str(by_id[lid].get("site") or "")
        return by_id[lid].get("organ") or site.split(":", 1)[1] if site.startswith("visceral:") else None

    def check(chosen: list[str], lid: str) -> str:
        if vmax is not None:
            total = sum(planned_ml[c] for c in chosen) + planned_ml[lid]
            if total > float(vmax) + 1e-9:
                return (f"session volume limit: planned {planned_ml[lid]:g} mL would bring the "
                        f"session to {total:g} mL, over the {float(vmax):g} mL per session")
        if omax is not None and (organ := punctured(lid)) is not None:
            organs = {o for o in (punctured(c) for c in chosen) if o is not None}
            if organ not in organs and len(organs) + 1 > int(omax):
                return (f"session organ limit: a puncture of the {organ} would make "
                        f"{len(organs) + 1} organs punctured, over the {int(omax)} per session "
                        f"({', '.join(sorted(organs))} already)")
        return ""

    return check


def _choose_monitoring(by_id: dict, measurable: dict, injected: list[str], mon: dict) -> list[str]:
    organs_inj = {by_id[lid].get("organ") for lid in injected}

    def usable(lid: str) -> bool:
        if not measurable[lid] or lid in injected:
            return False
        if mon["exclude_prior_locoregional"] and as_bool(by_id[lid].get("prior_locoregional_therapy")):
            return False
        return True

    cands = sorted(
        (lid for lid in by_id if usable(lid)),
        key=lambda lid: (
            by_id[lid].get("organ") in organs_inj,
            -float(by_id[lid].get("longest_diameter_mm") or 0.0),
            lid,
        ),
    )
    budget = min(int(mon["max_noninjected"]), int(mon["max_total_targets"]) - len(injected))
    per_organ: dict = {}
    chosen: list[str] = []
    for lid in cands:
        if len(chosen) >= budget:
            break
        organ = by_id[lid].get("organ")
        if per_organ.get(organ, 0) >= int(mon["max_per_organ"]):
            continue
        chosen.append(lid)
        per_organ[organ] = per_organ.get(organ, 0) + 1
    return chosen


def monitoring_explanation(lid: str, by_id: dict, injected: list[str], monitored: list[str],
                           recist_text: str, outcome: RuleOutcome, session_note: str = "") -> str:
    """Why a lesion was chosen to monitor (itRECIST non-injected target), in one sentence.

    Says that it is measurable (with the RECIST 1.1 measure), whether its organ has an injected
    lesion, its place by size among the monitoring lesions of its organ, and what kept it from
    injection (the rules' decisive and negative messages, else the session's slots being taken);
    no injection-tier wording.
    """
    row = by_id[lid]
    organ = row.get("organ") or "unknown organ"
    organs_inj = {by_id[i].get("organ") for i in injected}
    parts = [f"measurable, {recist_text}"]
    if organ in organs_inj:
        parts.append(f"{organ} also has an injected lesion; no other usable measurable lesion "
                     f"in an organ without an injected target")
    else:
        parts.append(f"{organ} has no injected lesion, so its response is seen without a "
                     f"direct injection effect")
    same = [m for m in monitored if by_id[m].get("organ") == row.get("organ")]
    if len(same) > 1:
        parts.append(f"#{same.index(lid) + 1} of {len(same)} in this organ by size")
    against = [m for want in ("decisive", "negative") for _, kind, m in outcome.messages
               if kind == want]
    if session_note:
        parts.append(f"not injected this session; {session_note}")
    if against:
        parts.append(("ranking lowered by: " if session_note else "not injected: ")
                     + "; ".join(against))
    elif not session_note:
        parts.append("not injected: the session's injection slots went to higher-ranked lesions")
    text = "; ".join(parts).rstrip(".")
    return f"Monitoring (itRECIST non-injected target): {text}."


def _model_scores(model, df: pd.DataFrame, outcomes: dict, cfg_ranking: dict) -> dict[str, float]:
    """Softmax of the model's utilities over the eligible lesions (lesion_id -> probability)."""
    elig = [lid for lid, o in outcomes.items() if o.tier is not Tier.NOT_SUITABLE]
    if not elig:
        return {}
    feats = add_rule_columns(df, [outcomes[str(lid)] for lid in df["lesion_id"].astype(str)])
    feats = feats[feats["lesion_id"].astype(str).isin(elig)].copy()
    order = sorted(elig, key=lambda lid: rule_sort_key(outcomes[lid]))
    feats["rule_rank"] = feats["lesion_id"].astype(str).map({lid: i + 1 for i, lid in enumerate(order)})
    u = np.asarray(model.decision_function(feats), dtype=float)
    e = np.exp(u - u.max())
    p = e / e.sum()
    return {str(lid): float(round(v, 6)) for lid, v in zip(feats["lesion_id"].astype(str), p)}


def rank_study(table: pd.DataFrame, cfg_ranking: dict, *, model=None) -> pd.DataFrame:
    """Apply the rules and choose the sets for one study.

    Parameters
    ----------
    table : DataFrame
        Lesion table rows of one study (columns of ``lesions.csv``, plus optional sidecar and
        longitudinal columns: ``new_or_growing``, ``prior_lesion_id`` ...).
    cfg_ranking : dict
        Validated ``ranking`` configuration section.
    model : optional
        A trained :class:`pipeline.ranking.model.PairwiseRanker`. When None and
        ``cfg_ranking["model"]`` is a path, that model is loaded (once per path).

    Returns
    -------
    DataFrame
        :data:`RANKING_COLUMNS`, one row per lesion, ordered by rank (unranked last, then by
        lesion_id); ``attrs["warnings"]`` lists study-level warnings.
    """
    if table.empty:
        out = pd.DataFrame(columns=RANKING_COLUMNS)
        out.attrs["warnings"] = []
        return out
    if model is None and cfg_ranking.get("model"):
        from pipeline.ranking.model import load_model_cached

        model = load_model_cached(cfg_ranking["model"], cfg_ranking)
    warnings: list[str] = list(table.attrs.get("warnings", []))
    df = derive_columns(table, cfg_ranking).reset_index(drop=True)
    df["lesion_id"] = df["lesion_id"].astype(str)
    if df["lesion_id"].duplicated().any():
        dup = sorted(set(df.loc[df["lesion_id"].duplicated(), "lesion_id"]))
        raise ValueError(f"duplicate lesion_id in one study: {dup}")
    outcomes = {o.lesion_id: o for o in apply_rules(df, cfg_ranking)}
    by_id = {r["lesion_id"]: r for r in df.to_dict(orient="records")}

    eligible = [o for o in outcomes.values() if o.tier is not Tier.NOT_SUITABLE]
    model_p: dict[str, float] = {}
    if model is not None:
        model_p = _model_scores(model, df, outcomes, cfg_ranking)
        ranked = sorted(eligible, key=lambda o: (-model_p.get(o.lesion_id, 0.0), o.lesion_id))
        source = f"model:{getattr(model, 'name', 'ranker')}"
    else:
        ranked = sorted(eligible, key=rule_sort_key)
        source = "rules"
    rank_of = {o.lesion_id: i + 1 for i, o in enumerate(ranked)}

    # ---- injection set
    inject_tiers = {Tier(t) for t in cfg_ranking["inject_tiers"]}
    n_inject = int(cfg_ranking["injections_per_session"])
    limit = _patient_max_injections(df)
    if limit is not None and limit < n_inject:
        warnings.append(f"per-trial limit from the clinical sidecar: at most {limit} injection(s)")
        n_inject = max(limit, 0)
    candidates = [o.lesion_id for o in ranked if o.tier in inject_tiers and not o.hard_excluded]
    site_of = {lid: diversity_site(r) for lid, r in by_id.items()}
    planned = {}
    for lid in candidates:
        ld = by_id[lid].get("longest_diameter_mm")
        planned[lid] = planned_volume_ml(0.0 if is_missing(ld) else float(ld),
                                         by_id[lid].get("volume_ml"), cfg_ranking["volume"])[0]
    injected, refused = _choose_injection(
        candidates, site_of, n_inject, bool(cfg_ranking.get("organ_diversity", True)),
        session_limits(by_id, planned, cfg_ranking["session"]),
        score_of={lid: outcomes[lid].score for lid in candidates},
        max_drop=float(cfg_ranking["diversity_max_score_drop"]))
    for lid, why in refused.items():
        warnings.append(f"{lid}: not injected this session; {why}")
    if not injected and n_inject > 0:
        warnings.append("no lesion is suitable for injection in this study")

    # ---- monitoring set
    mon = cfg_ranking["monitoring"]
    recist = {lid: recist_measurability(r, mon) for lid, r in by_id.items()}
    measurable = {lid: rc[0] == "target" for lid, rc in recist.items()}
    monitored = _choose_monitoring(by_id, measurable, injected, mon)
    if not monitored:
        warnings.append("no measurable noninjected lesion for itRECIST monitoring")

    out = []
    for lid, row in by_id.items():
        o: RuleOutcome = outcomes[lid]
        role = Role.INJECT if lid in injected else Role.MONITOR if lid in monitored else Role.NONE
        codes = list(o.fired)
        extra: list[str] = []
        if role is Role.INJECT:
            codes.append("SELECTED_INJECTION")
            extra.append(f"selected for injection (#{injected.index(lid) + 1} of {len(injected)})")
        elif role is Role.MONITOR:
            codes.append("SELECTED_MONITORING")
            if lid in refused:
                codes.append("SESSION_LIMIT")
        elif not measurable[lid]:
            codes.append("NOT_MEASURABLE")
            if recist[lid][0] != "unknown":
                extra.append(recist[lid][2])
        else:
            codes.append("NOT_SELECTED")
        if lid in refused and role is not Role.MONITOR:
            codes.append("SESSION_LIMIT")
            extra.append(f"not injected this session; {refused[lid]}")
        pv, warn, note = None, "", ""
        if role is Role.INJECT:
            ld = row.get("longest_diameter_mm")
            pv, warn = planned_volume_ml(0.0 if is_missing(ld) else float(ld), row.get("volume_ml"),
                                         cfg_ranking["volume"])
            note = syringe_note(pv, biopsy=bool(as_bool(row.get("biopsy_required"))),
                                vol_cfg=cfg_ranking["volume"], needle_cfg=cfg_ranking["needle"])
            extra.append(f"planned {note}")
            if warn:
                codes.append("VOLUME_WARNING")
                extra.append(warn)
                warnings.append(f"{lid}: {warn}")
        if model is not None and lid in rank_of:
            extra.append(f"ordered by the trained model ({model_p.get(lid, 0.0):.2f})")
        score = model_p.get(lid, 0.0) if model is not None else o.score
        ng = as_bool(row.get("new_or_growing"))
        out.append({
            "patient_id": row.get("patient_id", ""),
            "study_uid": row.get("study_uid", ""),
            "lesion_id": lid,
            "lesion_label": row.get("lesion_label", ""),
            "role": role.value,
            "tier": o.tier.value,
            "rank": rank_of.get(lid),
            "score": score if model is None or lid in rank_of else None,
            "reasons": ";".join(codes),
            "explanation": (monitoring_explanation(lid, by_id, injected, monitored, recist[lid][2], o,
                                                   refused.get(lid, ""))
                            if role is Role.MONITOR else explanation(o, extra=extra)),
            "organ": row.get("organ", ""),
            "rule_score": o.score,
            "score_source": source,
            "score_characterization": round(o.stage_scores["characterization"], 6),
            "score_access": round(o.stage_scores["access"], 6),
            "score_safety": round(o.stage_scores["safety"], 6),
            "needle_hit_probability": o.needle_hit_probability,
            "path_length_mm": row.get("path_length_mm"),
            "path_length_source": row.get("path_length_source", ""),
            "target_x_mm": row.get("target_x_mm"),
            "target_y_mm": row.get("target_y_mm"),
            "target_z_mm": row.get("target_z_mm"),
            "target_point_source": row.get("target_point_source", ""),
            "measurable": measurable[lid],
            "planned_volume_ml": pv,
            "volume_warning": warn,
            "syringe_note": note,
            "new_or_growing": ng,
            "prior_study_uid": row.get("prior_study_uid", ""),
            "prior_lesion_id": row.get("prior_lesion_id", ""),
            "longest_diameter_change_pct": row.get("longest_diameter_change_pct"),
            "rules_not_evaluated": ";".join(o.not_evaluated),
            "recist_category": recist[lid][0],
            "measurable_min_mm": recist[lid][1],
            "diversity_site": site_of[lid],
        })
    res = pd.DataFrame(out, columns=RANKING_COLUMNS)
    res["rank"] = res["rank"].astype("Int64")
    res["new_or_growing"] = res["new_or_growing"].astype(object)
    for c in ("prior_study_uid", "prior_lesion_id"):
        res[c] = res[c].map(lambda v: "" if is_missing(v) else str(v))
    order = sorted(range(len(res)), key=lambda i: (
        res.at[i, "rank"] if not pd.isna(res.at[i, "rank"]) else 10**9, res.at[i, "lesion_id"]))
    res = res.iloc[order].reset_index(drop=True)
    res.attrs["warnings"] = warnings
    return res
