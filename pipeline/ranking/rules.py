"""Declarative rule engine: the rules of the paper (configs/config.yaml ``ranking.rules``) applied
to the lesion table.

The engine sees only the lesion table and the configuration, never images. Each rule is
``condition on lesion columns -> effect`` with a code, one of the paper's three stages and a
message. Every threshold lives in the configuration; this module holds none.

Conditions
----------
A condition is a leaf ``{column, op, value | values}`` or a combination ``{all: [...]}``,
``{any: [...]}``, ``{not: ...}``, ``{first_known: [...]}``. Leaves use three-valued logic: a
leaf that needs a column that is absent or empty evaluates to *unknown* (None). ``all`` / ``any``
/ ``not`` follow Kleene logic (``any`` is True as soon as one part is True, unknown if no part is
True and one is unknown ...). ``first_known`` returns the first part that is not unknown: it
expresses "use the precise measurement when a producer gave it, else the proxy" (for example
the vessel relation from the needle-path planner, else the surface distance to the vessel).
A rule whose condition is unknown does not fire and is listed in ``rules_not_evaluated`` so that
a reviewer sees what was not checked; it is never silently true or false.

Operators: ``< <= > >= == !=`` (a boolean ``value`` compares the column as a boolean, accepting
true/false/yes/no/1/0), ``in`` / ``not_in`` (``values``), ``startswith`` (``value``),
``contains`` (case-insensitive substring: true when one of ``values`` occurs in the column's
text), ``missing`` / ``present`` (never unknown).

Effects
-------
``penalty`` / ``bonus`` (on the rule's stage score), ``cap_tier`` (tier no better than),
``board`` (no better than board_review), ``exclude`` (not_suitable, never injected), ``info``
(no effect on score or tier; the message is shown). A lesion is *hard-excluded* when a rule with
``exclude`` or ``cap_tier: not_suitable`` fired: a trained ranking model can never bring it back.

Scores
------
Each stage (tumor characterization, visibility and accessibility, procedural safety) starts at
``stage_base_score``; penalties subtract and bonuses add, clipped to [0, 1]. The access stage is
then multiplied by the needle-hit probability (the explicit size-depth model,
:func:`needle_hit_probability`). The final score is the weighted mean of the stages
(``stage_weights``). The tier follows from ``tier_min_score``, then the caps apply.

Size-depth trade-off (SIZE_DEPTH)
---------------------------------
:func:`needle_hit_probability` models the lateral placement error at the target as an isotropic
2D Gaussian whose standard deviation grows linearly with the path length, and returns the
probability that the tip lands inside a disc of half the short axis. A 10 mm nodule at 80 mm
depth has ~0.4 with the defaults; a 25 mm node at 20 mm depth ~1.0. The probability both
multiplies the access score (so deeper lesions need to be larger to score the same) and drives the
SIZE_DEPTH rule (penalty below a configured probability). The short axis (not the longest
diameter) is used because the needle may come in along any in-plane direction.

PET viability relative to the patient (VIABLE_PET, LOW_UPTAKE)
--------------------------------------------------------------
An absolute SUVmax of 2.5 lies below normal liver uptake, so it calls nearly every liver lesion
viable. :func:`pet_viability` compares the lesion's SUVpeak with the PERCIST-style liver
threshold ``liver_mean_factor x liver_reference_suv_mean + liver_sd_factor x
liver_reference_suv_sd`` (``ranking.pet_viability``; the SD term is left out when the table has
no liver SD) and writes ``pet_viability_ratio`` = SUVpeak / threshold (>= 1: viable). The rules
use that ratio first and the absolute SUVmax only when there is no liver reference
(``first_known``). ``pet_uptake_text`` states which measure was used.

Target point (NO_RIM_BIAS)
--------------------------
The paper: viable cells are not more frequent at the periphery, so nothing here prefers the rim;
and the needle must never aim at a necrotic, non-enhancing core.
The target point is the first available source of ``ranking.target_point.sources``: the SUVpeak
sphere centre (``suv_peak_x/y/z_mm``, the most active part, used only when the lesion is avid:
``suv_max >= target_point.avid_min_suv_max``), the viable tissue farthest from the lesion border
and the core when the lesion centre is necrotic (``viable_target_x/y/z_mm``, written by the
feature stage only in that case) or the lesion centroid (``centroid_x/y/z_mm``).
It is written as ``target_x_mm``, ``target_y_mm``, ``target_z_mm`` and ``target_point_source``;
the informational rule NO_RIM_BIAS states it in the explanation.

Deterministic order
-------------------
:func:`rule_sort_key`: tier (best first), score (highest first, rounded to 1e-6), needle-hit
probability (highest first, unknown last), then ``lesion_id``: the order does not depend on the
row order of the table.
"""

from __future__ import annotations

import logging
import math
import string
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.records import Tier

log = logging.getLogger(__name__)

STAGES = ("characterization", "access", "safety")

#: Columns computed by :func:`derive_columns` (rules may read them; producers do not write them).
DERIVED_COLUMNS = (
    "path_length_mm", "path_length_source", "needle_hit_probability", "is_nodal",
    "target_x_mm", "target_y_mm", "target_z_mm", "target_point_source", "target_point_label",
    "pet_liver_threshold_suv", "pet_viability_ratio", "pet_uptake_text", "vessel_gap_text",
)

#: Lesion-table columns :func:`derive_columns` reads (besides those the rules read).
DERIVATION_INPUTS = (
    "path_length_mm", "skin_depth_mm", "short_axis_mm", "organ", "suv_max",
    "suv_peak", "suv_peak_x_mm", "suv_peak_y_mm", "suv_peak_z_mm",
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "viable_target_x_mm", "viable_target_y_mm", "viable_target_z_mm",
    "liver_reference_suv_mean", "liver_reference_suv_sd", "lesion_to_liver_suvpeak_ratio",
    "vessel_distance_mm", "vessel_abut_basis",
)

_TARGET_LABELS = {
    "suv_peak": "SUVpeak centre (the most active part on PET), not the rim",
    "viable": ("viable tissue farthest from the border and the necrotic core (the lesion centre "
               "is necrotic), never the non-enhancing core"),
    "centroid": "lesion centroid, not the rim",
}
#: Column prefix of each target-point source.
_TARGET_PREFIX = {"suv_peak": "suv_peak", "viable": "viable_target", "centroid": "centroid"}


@dataclass(frozen=True)
class RuleOutcome:
    """Result of the rules for one lesion (before set selection).

    Attributes
    ----------
    lesion_id : str
    fired : tuple of str
        Codes of the rules that fired, in configuration order.
    not_evaluated : tuple of str
        Codes of the rules whose condition was unknown (a needed column absent or empty).
    messages : tuple of (code, kind, text)
        kind is "decisive" (exclude / cap_tier), "negative" (penalty / board), "positive"
        (bonus) or "info".
    stage_scores : dict
        Stage name -> score in [0, 1] (access already multiplied by the needle-hit probability).
    needle_hit_probability : float or None
    score : float
        Weighted mean of the stage scores, rounded to 1e-6.
    tier : Tier
    excluded : bool
        A rule with ``exclude`` fired.
    hard_excluded : bool
        ``excluded`` or a rule capped the tier at not_suitable.
    """

    lesion_id: str
    fired: tuple[str, ...]
    not_evaluated: tuple[str, ...]
    messages: tuple[tuple[str, str, str], ...]
    stage_scores: dict = field(default_factory=dict)
    needle_hit_probability: float | None = None
    score: float = 0.0
    tier: Tier = Tier.NOT_SUITABLE
    excluded: bool = False
    hard_excluded: bool = False


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    if isinstance(v, str) and v.strip() == "":
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def is_missing(v: Any) -> bool:
    """True for None, NaN, pandas NA and blank strings (an unavailable value)."""
    return _is_missing(v)


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("true", "yes", "1", "1.0"):
            return True
        if low in ("false", "no", "0", "0.0"):
            return False
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return bool(v)
    return None


def as_bool(v: Any) -> bool | None:
    """A boolean from bool, number or true/false/yes/no/1/0 text; None if missing or unreadable."""
    return None if _is_missing(v) else _as_bool(v)


def evaluate(cond: dict, row: dict) -> bool | None:
    """Evaluate a condition on one lesion row with three-valued logic (None = unknown).

    Parameters
    ----------
    cond : dict
        A condition as validated by ``$defs/condition`` of configs/config.schema.yaml.
    row : dict
        Column name -> value of one lesion.
    """
    if "all" in cond:
        vals = [evaluate(c, row) for c in cond["all"]]
        if any(v is False for v in vals):
            return False
        return None if any(v is None for v in vals) else True
    if "any" in cond:
        vals = [evaluate(c, row) for c in cond["any"]]
        if any(v is True for v in vals):
            return True
        return None if any(v is None for v in vals) else False
    if "not" in cond:
        v = evaluate(cond["not"], row)
        return None if v is None else not v
    if "first_known" in cond:
        for c in cond["first_known"]:
            v = evaluate(c, row)
            if v is not None:
                return v
        return None
    col, op = cond["column"], cond["op"]
    val = row.get(col)
    if op == "missing":
        return _is_missing(val)
    if op == "present":
        return not _is_missing(val)
    if _is_missing(val):
        return None
    target = cond.get("value")
    if op in ("in", "not_in"):
        inside = val in cond.get("values", [])
        return inside if op == "in" else not inside
    if op == "startswith":
        return str(val).startswith(str(target))
    if op == "contains":
        text = str(val).lower()
        needles = cond.get("values") or ([target] if target is not None else [])
        return any(str(n).lower() in text for n in needles)
    if isinstance(target, bool):
        val = _as_bool(val)
        if val is None:
            return None
    elif isinstance(target, (int, float)) and isinstance(val, str):
        try:
            val = float(val)
        except ValueError:
            return None
    try:
        if op == "<":
            return bool(val < target)
        if op == "<=":
            return bool(val <= target)
        if op == ">":
            return bool(val > target)
        if op == ">=":
            return bool(val >= target)
        if op == "==":
            return bool(val == target)
        if op == "!=":
            return bool(val != target)
    except TypeError:
        return None
    raise ValueError(f"unknown operator {op!r}")


def columns_of(cond: dict) -> set[str]:
    """Lesion-table columns a condition reads."""
    for key in ("all", "any", "first_known"):
        if key in cond:
            return set().union(*(columns_of(c) for c in cond[key]))
    if "not" in cond:
        return columns_of(cond["not"])
    return {cond["column"]}


def message_columns(template: str) -> set[str]:
    """Columns a rule message reads (``{a|b:fmt}`` reads a and b)."""
    out: set[str] = set()
    for _, field_name, _, _ in string.Formatter().parse(template):
        if field_name:
            out |= set(field_name.split("|"))
    return out


def rule_columns(cfg_ranking: dict) -> list[str]:
    """Every lesion-table column the configured rules (conditions and messages) and the
    derivations read (sorted).

    Derived columns (:data:`DERIVED_COLUMNS`) are replaced by their inputs, except
    ``path_length_mm`` which a needle-path planner may provide.
    """
    cols: set[str] = set()
    for rule in cfg_ranking.get("rules", []):
        cols |= columns_of(rule["when"]) | message_columns(rule["message"])
    cols -= set(DERIVED_COLUMNS)
    cols |= set(DERIVATION_INPUTS)
    return sorted(cols)


def undeclared_rule_columns(cfg_ranking: dict) -> list[tuple[str, str, str]]:
    """(rule code, "condition" or "message", column) for each column a configured rule names
    that no producer writes (:func:`pipeline.columns.rule_readable_columns`).

    Such a rule would be "not evaluated" for every lesion (or print "n/a"), silently;
    :mod:`pipeline.config` rejects it.
    """
    from pipeline.columns import rule_readable_columns

    ok = set(rule_readable_columns())
    out = []
    for rule in cfg_ranking.get("rules", []):
        for where, cols in (("condition", columns_of(rule["when"])),
                            ("message", message_columns(rule.get("message", "")))):
            out.extend((rule["code"], where, c) for c in sorted(cols) if c not in ok)
    return out


class _SafeFormatter(string.Formatter):
    def format_field(self, value, format_spec):
        if _is_missing(value):
            return "n/a"
        try:
            return super().format_field(value, format_spec)
        except (ValueError, TypeError):
            try:
                return super().format_field(float(value), format_spec)
            except (ValueError, TypeError):
                return str(value)

    def get_value(self, key, args, kwargs):
        for name in str(key).split("|"):
            v = kwargs.get(name)
            if not _is_missing(v):
                return v
        return None


def format_message(template: str, row: dict) -> str:
    """Fill a rule message with the lesion's values ("n/a" for missing ones).

    ``{a|b:.0f}`` takes column ``a``, else ``b`` (the value a ``first_known`` condition used).
    """
    return _SafeFormatter().format(template, **row)


def needle_hit_probability(
    short_axis_mm: float | None, path_length_mm: float | None, *, base_error_mm: float,
    error_per_mm_depth: float,
) -> float | None:
    """Probability that the needle tip lands inside the lesion (size-depth trade-off).

    The lateral placement error at the target is an isotropic 2D Gaussian (in the plane
    perpendicular to the needle) with standard deviation
    ``sigma = base_error_mm + error_per_mm_depth * path_length_mm``; the target is a disc of
    radius ``r = short_axis_mm / 2`` centred on the aim point. The radial error then follows a
    Rayleigh distribution and ``P(hit) = 1 - exp(-r^2 / (2 sigma^2))``. The error along the
    needle is neglected: the operator sees the tip advance and stops in the lesion.

    Parameters
    ----------
    short_axis_mm : float or None
        Lesion short axis (mm).
    path_length_mm : float or None
        Needle path length from the skin to the target (mm).
    base_error_mm : float
        Placement error (1 SD) at zero depth.
    error_per_mm_depth : float
        Added SD per mm of path.

    Returns
    -------
    float or None
        None when size or path length is unknown.
    """
    if _is_missing(short_axis_mm) or _is_missing(path_length_mm):
        return None
    r = max(float(short_axis_mm), 0.0) / 2.0
    sigma = base_error_mm + error_per_mm_depth * max(float(path_length_mm), 0.0)
    return float(1.0 - math.exp(-(r * r) / (2.0 * sigma * sigma)))


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce")


def target_points(df: pd.DataFrame, cfg_target: dict) -> pd.DataFrame:
    """Target point per lesion: the first usable source of ``cfg_target["sources"]``.

    ``suv_peak`` is usable when SUVpeak and its sphere centre are known and ``suv_max >=
    cfg_target["avid_min_suv_max"]`` (the hottest part of a non-avid lesion is noise);
    ``viable`` when ``viable_target_*_mm`` are known (the lesion centre is necrotic);
    ``centroid`` when the centroid is known. None is a rim preference (NO_RIM_BIAS).

    Returns
    -------
    DataFrame with ``target_x_mm``, ``target_y_mm``, ``target_z_mm`` (LPS mm, NaN if none),
    ``target_point_source`` ("suv_peak", "viable", "centroid" or "") and
    ``target_point_label``.
    """
    out = pd.DataFrame(index=df.index)
    for ax in "xyz":
        out[f"target_{ax}_mm"] = np.nan
    out["target_point_source"] = ""
    todo = pd.Series(True, index=df.index)
    avid = _num(df, "suv_max") >= float(cfg_target["avid_min_suv_max"])
    for src in cfg_target["sources"]:
        prefix = _TARGET_PREFIX[src]
        xyz = [_num(df, f"{prefix}_{ax}_mm") for ax in "xyz"]
        ok = todo & xyz[0].notna() & xyz[1].notna() & xyz[2].notna()
        if src == "suv_peak":
            ok &= avid & _num(df, "suv_peak").notna()
        for ax, s in zip("xyz", xyz):
            out.loc[ok, f"target_{ax}_mm"] = s[ok]
        out.loc[ok, "target_point_source"] = src
        todo &= ~ok
    out["target_point_label"] = out["target_point_source"].map(_TARGET_LABELS).fillna("")
    return out


def pet_viability(df: pd.DataFrame, cfg_pet: dict) -> pd.DataFrame:
    """Lesion uptake relative to the patient's liver (PERCIST-style threshold).

    Parameters
    ----------
    df : DataFrame
        Lesion rows; reads ``suv_peak``, ``suv_max``, ``liver_reference_suv_mean``,
        ``liver_reference_suv_sd`` (optional) and ``lesion_to_liver_suvpeak_ratio`` (used for
        SUVpeak when ``suv_peak`` itself is empty). SUV in g/mL.
    cfg_pet : dict
        ``ranking.pet_viability`` (``liver_mean_factor``, ``liver_sd_factor``).

    Returns
    -------
    DataFrame with ``pet_liver_threshold_suv`` (g/mL, NaN without a liver reference),
    ``pet_viability_ratio`` (SUVpeak / threshold, NaN without a liver reference or SUVpeak) and
    ``pet_uptake_text`` (the measure used, for messages).
    """
    mean = _num(df, "liver_reference_suv_mean")
    mean = mean.where(mean > 0)
    sd = _num(df, "liver_reference_suv_sd")
    thr = float(cfg_pet["liver_mean_factor"]) * mean + float(cfg_pet["liver_sd_factor"]) * sd.fillna(0.0)
    peak = _num(df, "suv_peak").fillna(_num(df, "lesion_to_liver_suvpeak_ratio") * mean)
    ratio = peak / thr
    out = pd.DataFrame(index=df.index)
    out["pet_liver_threshold_suv"] = thr
    out["pet_viability_ratio"] = ratio
    suv_max = _num(df, "suv_max")
    fm, fs = float(cfg_pet["liver_mean_factor"]), float(cfg_pet["liver_sd_factor"])
    texts = []
    for p, t, r, m, s_, mx in zip(peak, thr, ratio, mean, sd, suv_max):
        if not math.isnan(r):
            how = (f"{fm:g} x liver mean {m:.1f} + {fs:g} SD {s_:.1f}" if not math.isnan(s_)
                   else f"{fm:g} x liver mean {m:.1f}, liver SD unknown")
            texts.append(f"SUVpeak {p:.1f} = {r:.2f} x the liver threshold {t:.1f} ({how})")
        elif not math.isnan(mx):
            texts.append(f"SUVmax {mx:.1f}, no liver reference")
        else:
            texts.append("")
    out["pet_uptake_text"] = texts
    return out


def derive_columns(table: pd.DataFrame, cfg_ranking: dict) -> pd.DataFrame:
    """Add the columns the rules read that are computed from other columns.

    * ``path_length_mm``: the planned needle path length when a planner provided it, else the
      skin depth (shortest skin-to-lesion distance, a lower bound of any path), with
      ``path_length_source`` ("planner" or "skin_depth").
    * ``needle_hit_probability``: :func:`needle_hit_probability` of the short axis and path.
    * ``is_nodal``: organ is lymph_node.
    * target point: :func:`target_points`.
    * PET uptake relative to the liver: :func:`pet_viability`.
    * ``vessel_gap_text``: the measured lesion-vessel gap and, when the anatomy stage gave it,
      the scan resolution that makes it contact (``vessel_abut_basis``), for VESSEL_ABUT.
    """
    df = table.copy()
    planned = _num(df, "path_length_mm")
    skin = _num(df, "skin_depth_mm")
    use_skin = planned.isna() & skin.notna()
    df["path_length_mm"] = planned.where(~use_skin, skin)
    src = (df["path_length_source"] if "path_length_source" in df.columns
           else pd.Series("", index=df.index)).fillna("").astype(str)
    df["path_length_source"] = np.where(
        use_skin, "skin_depth", np.where(planned.notna(), src.replace("", "planner"), "")
    )
    needle = cfg_ranking["needle"]
    sa = _num(df, "short_axis_mm")
    df["needle_hit_probability"] = pd.to_numeric(pd.Series([
        needle_hit_probability(
            a, p, base_error_mm=needle["base_error_mm"],
            error_per_mm_depth=needle["error_per_mm_depth"],
        )
        for a, p in zip(sa, df["path_length_mm"])
    ], index=df.index, dtype=object), errors="coerce")
    organ = df["organ"] if "organ" in df.columns else pd.Series("", index=df.index)
    df["is_nodal"] = organ.astype(str).eq("lymph_node")
    tp = target_points(df, cfg_ranking["target_point"])
    for c in tp.columns:
        df[c] = tp[c]
    pv = pet_viability(df, cfg_ranking["pet_viability"])
    for c in pv.columns:
        df[c] = pv[c]
    gap = _num(df, "vessel_distance_mm")
    basis = (df["vessel_abut_basis"] if "vessel_abut_basis" in df.columns
             else pd.Series("", index=df.index)).map(lambda v: "" if _is_missing(v) else str(v))
    df["vessel_gap_text"] = [
        "" if math.isnan(g) else f"measured gap {g:.1f} mm" + (f", {b}" if b else "")
        for g, b in zip(gap, basis)]
    return df


def _tier_of(score: float, thresholds: dict) -> Tier:
    if score >= thresholds["recommended"]:
        return Tier.RECOMMENDED
    if score >= thresholds["acceptable"]:
        return Tier.ACCEPTABLE
    if score >= thresholds["board_review"]:
        return Tier.BOARD_REVIEW
    return Tier.NOT_SUITABLE


def _worse(a: Tier, b: Tier) -> Tier:
    return a if a.order >= b.order else b


def apply_rules(table: pd.DataFrame, cfg_ranking: dict) -> list[RuleOutcome]:
    """Apply every configured rule to every lesion.

    Parameters
    ----------
    table : DataFrame
        Lesion table (one row per lesion) after :func:`derive_columns`.
    cfg_ranking : dict
        The validated ``ranking`` section of the configuration.

    Returns
    -------
    list of RuleOutcome, in the row order of ``table``.
    """
    rules = cfg_ranking.get("rules", [])
    base = float(cfg_ranking["stage_base_score"])
    weights = cfg_ranking["stage_weights"]
    wsum = sum(weights.values()) or 1.0
    thresholds = cfg_ranking["tier_min_score"]
    outcomes: list[RuleOutcome] = []
    for row in table.to_dict(orient="records"):
        pen = {s: 0.0 for s in STAGES}
        bon = {s: 0.0 for s in STAGES}
        fired, not_eval, messages = [], [], []
        cap = Tier.RECOMMENDED
        excluded = False
        for rule in rules:
            res = evaluate(rule["when"], row)
            if res is None:
                not_eval.append(rule["code"])
                continue
            if not res:
                continue
            eff = rule["effect"]
            fired.append(rule["code"])
            pen[rule["stage"]] += float(eff.get("penalty", 0.0))
            bon[rule["stage"]] += float(eff.get("bonus", 0.0))
            if eff.get("exclude") or eff.get("cap_tier"):
                kind = "decisive"
            elif eff.get("penalty") or eff.get("board"):
                kind = "negative"
            elif eff.get("bonus"):
                kind = "positive"
            else:
                kind = "info"
            if "cap_tier" in eff:
                cap = _worse(cap, Tier(eff["cap_tier"]))
            if eff.get("board"):
                cap = _worse(cap, Tier.BOARD_REVIEW)
            if eff.get("exclude"):
                excluded = True
            messages.append((rule["code"], kind, format_message(rule["message"], row)))
        stage = {s: float(np.clip(base - pen[s] + bon[s], 0.0, 1.0)) for s in STAGES}
        p_hit = row.get("needle_hit_probability")
        if not _is_missing(p_hit):
            stage["access"] *= float(p_hit)
        score = sum(weights[s] * stage[s] for s in STAGES) / wsum
        tier = _worse(_tier_of(score, thresholds), cap)
        if excluded:
            tier = Tier.NOT_SUITABLE
        outcomes.append(
            RuleOutcome(
                lesion_id=str(row["lesion_id"]),
                fired=tuple(fired),
                not_evaluated=tuple(not_eval),
                messages=tuple(messages),
                stage_scores=stage,
                needle_hit_probability=None if _is_missing(p_hit) else float(p_hit),
                score=round(float(score), 6),
                tier=tier,
                excluded=excluded,
                hard_excluded=excluded or cap is Tier.NOT_SUITABLE,
            )
        )
    return outcomes


def rule_sort_key(o: RuleOutcome) -> tuple:
    """Deterministic rule order: tier, score (desc), needle-hit probability (desc), lesion_id."""
    p = -1.0 if o.needle_hit_probability is None else o.needle_hit_probability
    return (o.tier.order, -round(o.score, 6), -round(p, 6), o.lesion_id)


def add_rule_columns(df: pd.DataFrame, outcomes: list[RuleOutcome]) -> pd.DataFrame:
    """The rules' verdict as columns of a derived table (``outcomes`` in its row order).

    Adds ``rule_score``, ``score_characterization``, ``score_access``, ``score_safety``,
    ``tier``, ``tier_order`` (0 best), ``hard_excluded``, ``eligible`` (tier not
    not_suitable), ``rule_utility`` (``3 - tier_order + rule_score``: one number whose order is
    the rule order up to the needle-hit/lesion_id tie-breaks) and ``fired`` (codes joined by ";").
    """
    df = df.copy()
    df["rule_score"] = [o.score for o in outcomes]
    for s in STAGES:
        df[f"score_{s}"] = [o.stage_scores[s] for o in outcomes]
    df["tier"] = [o.tier.value for o in outcomes]
    df["tier_order"] = [o.tier.order for o in outcomes]
    df["hard_excluded"] = [o.hard_excluded for o in outcomes]
    df["eligible"] = [o.tier is not Tier.NOT_SUITABLE for o in outcomes]
    df["rule_utility"] = 3.0 - df["tier_order"] + df["rule_score"]
    df["fired"] = [";".join(o.fired) for o in outcomes]
    return df


def rule_frame(table: pd.DataFrame, cfg_ranking: dict) -> pd.DataFrame:
    """Derived columns plus the rules' verdict (:func:`add_rule_columns`) for a table that may
    hold many studies, and ``rule_rank``: 1..n among the eligible lesions of each
    (patient_id, study_uid) by :func:`rule_sort_key`, NA otherwise. Used by the ranking model
    for features and for the rule baseline.
    """
    df = derive_columns(table, cfg_ranking).reset_index(drop=True)
    outs = apply_rules(df, cfg_ranking)
    df = add_rule_columns(df, outs)
    rank = pd.Series(pd.NA, index=df.index, dtype="Int64")
    group_cols = [c for c in ("patient_id", "study_uid") if c in df.columns]
    groups = df.groupby(group_cols, sort=False).indices if group_cols else {None: df.index}
    for idx in groups.values():
        elig = [int(i) for i in idx if outs[int(i)].tier is not Tier.NOT_SUITABLE]
        for r, i in enumerate(sorted(elig, key=lambda i: rule_sort_key(outs[i])), start=1):
            rank.iat[i] = r
    df["rule_rank"] = rank
    return df


def explanation(outcome: RuleOutcome, *, extra: list[str] | None = None) -> str:
    """One plain sentence: the tier, then the reasons that decided or lowered it, then the
    favourable ones, then information (target point) and ``extra`` (the set decisions).

    Example: ``"Not suitable: subcapsular liver lesion (3 mm from capsule); rupture, bleeding
    and seeding risk."``
    """
    label = {
        Tier.RECOMMENDED: "Recommended",
        Tier.ACCEPTABLE: "Acceptable",
        Tier.BOARD_REVIEW: "Discuss at board",
        Tier.NOT_SUITABLE: "Not suitable",
    }[outcome.tier]
    parts = [
        m for want in ("decisive", "negative", "positive", "info")
        for _, kind, m in outcome.messages if kind == want
    ] + list(extra or [])
    if not parts:
        parts = [f"no rule fired; score {outcome.score:.2f}"]
    text = "; ".join(parts).rstrip(".")
    return f"{label}: {text}."
