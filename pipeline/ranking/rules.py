"""Declarative rule engine: the rules of the paper (configs/config.yaml ``ranking.rules``) applied
to the lesion table.

The engine sees only the lesion table and the configuration, never images. Each rule is
``condition on lesion columns -> effect`` with a code and a message. Conditions use three-valued
logic: a condition that needs a column that is absent or empty evaluates to *unknown*; the rule then
does not fire and is listed in ``rules_not_evaluated`` so that a reviewer sees what was not checked.

Scores
------
Each of the paper's three stages (tumor characterization, visibility and accessibility,
procedural safety) starts at ``stage_base_score``; penalties subtract and bonuses add, clipped to
[0, 1]. The access stage is multiplied by the needle-hit probability (the explicit size-depth
model, :func:`needle_hit_probability`). The final score is the weighted mean of the stages. The
tier follows from ``tier_min_score``, then caps apply: ``cap_tier`` (no better than), ``board``
(no better than board_review) and ``exclude`` (not_suitable).

NO_RIM_BIAS (paper: viable cells are not more frequent at the periphery) is honoured by design:
no rule or target point prefers the rim; the target point is the SUVpeak sphere centre or the
centroid.
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
_TIERS = list(Tier)


@dataclass(frozen=True)
class RuleOutcome:
    """Result of the rules for one lesion (before set selection)."""

    lesion_id: str
    fired: tuple[str, ...]
    not_evaluated: tuple[str, ...]
    messages: tuple[tuple[str, str, str], ...]  # (code, kind, text): decisive/negative/positive
    stage_scores: dict = field(default_factory=dict)
    needle_hit_probability: float | None = None
    score: float = 0.0
    tier: Tier = Tier.NOT_SUITABLE
    excluded: bool = False


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    if isinstance(v, str) and v == "":
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def evaluate(cond: dict, row: dict) -> bool | None:
    """Evaluate a condition on one lesion row with three-valued logic (None = unknown)."""
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
    if isinstance(target, bool):
        val = _as_bool(val)
        if val is None:
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


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("true", "yes", "1"):
            return True
        if low in ("false", "no", "0"):
            return False
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return bool(v)
    return None


def columns_of(cond: dict) -> set[str]:
    """Lesion-table columns a condition reads."""
    if "all" in cond or "any" in cond:
        return set().union(*(columns_of(c) for c in cond.get("all", cond.get("any", []))))
    if "not" in cond:
        return columns_of(cond["not"])
    return {cond["column"]}


class _SafeFormatter(string.Formatter):
    def format_field(self, value, format_spec):
        if _is_missing(value):
            return "n/a"
        try:
            return super().format_field(value, format_spec)
        except (ValueError, TypeError):
            return str(value)

    def get_value(self, key, args, kwargs):
        return kwargs.get(key)


def format_message(template: str, row: dict) -> str:
    """Fill a rule message with the lesion's values ("n/a" for missing ones)."""
    return _SafeFormatter().format(template, **row)


def needle_hit_probability(
    short_axis_mm: float | None, path_length_mm: float | None, *, base_error_mm: float,
    error_per_mm_depth: float,
) -> float | None:
    """Probability that the needle tip lands inside the lesion (size-depth trade-off).

    The lateral placement error at the target is modelled as an isotropic 2D Gaussian with
    standard deviation ``sigma = base_error_mm + error_per_mm_depth * path_length_mm``; the target
    is a disc of radius ``short_axis_mm / 2`` (the conservative in-plane half-width). The
    probability that a 2D Gaussian error stays within radius r is ``1 - exp(-r^2 / (2 sigma^2))``
    (Rayleigh CDF).

    Returns None when size or path length is unknown.
    """
    if _is_missing(short_axis_mm) or _is_missing(path_length_mm):
        return None
    r = max(float(short_axis_mm), 0.0) / 2.0
    sigma = base_error_mm + error_per_mm_depth * max(float(path_length_mm), 0.0)
    return float(1.0 - math.exp(-(r * r) / (2.0 * sigma * sigma)))


def derive_columns(table: pd.DataFrame, cfg_ranking: dict) -> pd.DataFrame:
    """Add the columns the rules read that are computed from other columns.

    * ``path_length_mm``: the planned needle path length when a planner provided it, else the
      skin depth (shortest skin-to-lesion distance), with ``path_length_source`` saying which.
    * ``needle_hit_probability``: :func:`needle_hit_probability`.
    * ``is_nodal``: organ is lymph_node.
    """
    df = table.copy()
    if "path_length_mm" not in df.columns:
        df["path_length_mm"] = np.nan
        df["path_length_source"] = ""
    planned = pd.to_numeric(df["path_length_mm"], errors="coerce")
    skin = pd.to_numeric(df.get("skin_depth_mm", pd.Series(np.nan, index=df.index)), errors="coerce")
    use_skin = planned.isna() & skin.notna()
    df["path_length_mm"] = planned.where(~use_skin, skin)
    src = df.get("path_length_source", pd.Series("", index=df.index)).fillna("").astype(str)
    df["path_length_source"] = np.where(use_skin, "skin_depth", np.where(planned.notna(), src.replace("", "planner"), ""))
    needle = cfg_ranking["needle"]
    df["needle_hit_probability"] = [
        needle_hit_probability(
            sa, pl, base_error_mm=needle["base_error_mm"],
            error_per_mm_depth=needle["error_per_mm_depth"],
        )
        for sa, pl in zip(df.get("short_axis_mm", [None] * len(df)), df["path_length_mm"])
    ]
    df["needle_hit_probability"] = pd.to_numeric(df["needle_hit_probability"], errors="coerce")
    df["is_nodal"] = df.get("organ", pd.Series("", index=df.index)).astype(str).eq("lymph_node")
    return df


def apply_rules(table: pd.DataFrame, cfg_ranking: dict) -> list[RuleOutcome]:
    """Apply every configured rule to every lesion of one study.

    Parameters
    ----------
    table : lesion table (one row per lesion) after :func:`derive_columns`.
    cfg_ranking : the validated ``ranking`` section of the configuration.
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
            else:
                kind = "positive"
            if "cap_tier" in eff:
                cap = max(cap, Tier(eff["cap_tier"]), key=lambda t: t.order)
            if eff.get("board"):
                cap = max(cap, Tier.BOARD_REVIEW, key=lambda t: t.order)
            if eff.get("exclude"):
                excluded = True
            messages.append(
                (rule["code"], kind, format_message(rule["message"], row))
            )
        stage = {s: float(np.clip(base - pen[s] + bon[s], 0.0, 1.0)) for s in STAGES}
        p_hit = row.get("needle_hit_probability")
        if not _is_missing(p_hit):
            stage["access"] *= float(p_hit)
        score = sum(weights[s] * stage[s] for s in STAGES) / wsum
        if score >= thresholds["recommended"]:
            tier = Tier.RECOMMENDED
        elif score >= thresholds["acceptable"]:
            tier = Tier.ACCEPTABLE
        elif score >= thresholds["board_review"]:
            tier = Tier.BOARD_REVIEW
        else:
            tier = Tier.NOT_SUITABLE
        tier = max(tier, cap, key=lambda t: t.order)
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
            )
        )
    return outcomes


def explanation(outcome: RuleOutcome, *, extra: list[str] | None = None) -> str:
    """One plain sentence: the tier, then the reasons that lowered it, then the favourable ones."""
    label = {
        Tier.RECOMMENDED: "Recommended",
        Tier.ACCEPTABLE: "Acceptable",
        Tier.BOARD_REVIEW: "Discuss at board",
        Tier.NOT_SUITABLE: "Not suitable",
    }[outcome.tier]
    parts = [
        m for want in ("decisive", "negative", "positive")
        for _, kind, m in outcome.messages if kind == want
    ] + list(extra or [])
    if not parts:
        parts = [f"no rule fired; score {outcome.score:.2f}"]
    text = "; ".join(parts)
    return f"{label}: {text[0].upper() + text[1:]}."
