"""Re-planning at follow-up (pipeline.followup.replan): categories locked at baseline drive roles."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.followup.replan import REPLAN_COLUMNS, replan


@pytest.fixture(scope="module")
def cfg():
    return load_config()["ranking"]


def _ranking(rows):
    """Tool ranking rows: (lesion_id, tool role, tier, rank)."""
    out = []
    for lid, role, tier, rank in rows:
        out.append({"patient_id": "P", "study_uid": "1.2", "lesion_id": lid, "lesion_label": lid,
                    "role": role, "tier": tier, "rank": rank, "score": 0.5,
                    "reasons": "SELECTED_INJECTION" if role == "inject" else "NOT_SELECTED",
                    "explanation": f"tool text for {lid}",
                    "planned_volume_ml": 2.0 if role == "inject" else math.nan,
                    "volume_warning": "", "syringe_note": "x" if role == "inject" else "",
                    "tracking_uid": ""})
    df = pd.DataFrame(out)
    df["rank"] = df["rank"].astype("Int64")
    return df


def _current(rows, index=1):
    """Tracking rows: (track_id, lesion_id, category, injected_since, status)."""
    return pd.DataFrame([{
        "patient_id": "P", "track_id": t, "study_uid": "1.2", "timepoint_index": index,
        "lesion_id": lid, "lesion_label": lid, "itrecist_category": cat, "injected_since": since,
        "measure_mm": 10.0, "measure_kind": "longest_diameter", "match_method": "position",
        "match_distance_mm": 1.0, "status": st, "x_baseline_mm": 0.0, "y_baseline_mm": 0.0,
        "z_baseline_mm": 0.0, "tracking_uid": f"9.{i}"} for i, (t, lid, cat, since, st)
        in enumerate(rows)])


LESIONS = pd.DataFrame({"lesion_id": ["a", "b", "c", "d", "e"],
                        "longest_diameter_mm": [20.0, 30.0, 25.0, 15.0, 22.0],
                        "volume_ml": [4.0, 14.0, 8.0, 2.0, 5.0]})


def _roles(df):
    return dict(zip(df["lesion_id"], df["role"]))


def test_tni_never_proposed_and_injected_keeps_ti(cfg):
    # the tool, with its growth bonus, proposes the growing T-NI "b" for injection and drops
    # the injected "a" to none; the follow-up keeps "a" injected and "b" monitored
    rk = _ranking([("b", "inject", "recommended", 1), ("c", "inject", "recommended", 2),
                   ("a", "none", "acceptable", 3), ("d", "monitor", "acceptable", 4),
                   ("e", "none", "board_review", 5)])
    cur = _current([("A", "a", "T-I", "1.1", "present"), ("B", "b", "T-NI", "", "present"),
                    ("C", "c", "NT-NI", "", "present"), ("D", "d", "T-NI", "", "present"),
                    ("E", "e", "NEW", "", "new")])
    out = replan(rk, cur, LESIONS, cfg, timepoint_index=1)
    assert _roles(out) == {"b": "monitor", "c": "none", "a": "inject", "d": "monitor",
                           "e": "none"}
    a = out.set_index("lesion_id").loc["a"]
    assert "FOLLOWUP_KEEP_INJECTED" in a["reasons"] and a["itrecist_category"] == "T-I"
    assert a["injected_since"] == "1.1" and a["track_id"] == "A" and a["tracking_uid"] == "9.0"
    assert a["planned_volume_ml"] > 0 and a["syringe_note"]  # planned like any injection
    b = out.set_index("lesion_id").loc["b"]
    assert "FOLLOWUP_LOCKED_TNI" in b["reasons"] and "SELECTED_INJECTION" not in b["reasons"]
    assert "never proposed for injection" in b["explanation"]
    assert "the tool alone proposed inject" in b["explanation"]
    assert math.isnan(b["planned_volume_ml"]) and b["syringe_note"] == ""
    # no slot freed: the NT-NI "c" is not proposed although the tool ranked it second
    assert "FOLLOWUP_REPLACEMENT" not in out.set_index("lesion_id").loc["c"]["reasons"]
    assert set(REPLAN_COLUMNS) <= set(out.columns)


def test_reclassification_takes_effect_from_its_timepoint(cfg):
    rk = _ranking([("b", "none", "acceptable", 1), ("a", "inject", "recommended", 2)])
    # t1: "b" still T-NI -> monitored
    t1 = replan(rk, _current([("A", "a", "T-I", "1.1", "present"),
                              ("B", "b", "T-NI", "", "present")]), LESIONS, cfg,
                timepoint_index=1)
    assert _roles(t1) == {"b": "monitor", "a": "inject"}
    # t2: the team's decision at t2 made it T-I since t2 -> injected from t2
    t2 = replan(rk, _current([("A", "a", "T-I", "1.1", "present"),
                              ("B", "b", "T-I", "1.3", "present")], index=2), LESIONS, cfg,
                timepoint_index=2)
    assert _roles(t2) == {"b": "inject", "a": "inject"}
    assert t2.set_index("lesion_id").loc["b", "injected_since"] == "1.3"


def test_next_candidate_when_an_injected_lesion_is_not_injectable(cfg):
    # "a" (T-I) became not_suitable (too small); "b" is T-NI with the best rank (never chosen);
    # "c" (NT-NI, rank 2) is the next candidate; "e" (NEW, rank 3) would be the one after
    rk = _ranking([("b", "inject", "recommended", 1), ("c", "none", "recommended", 2),
                   ("e", "none", "acceptable", 3), ("a", "none", "not_suitable", pd.NA),
                   ("d", "inject", "acceptable", 4)])
    rk.loc[rk["lesion_id"] == "a", "reasons"] = "TOO_SMALL;NOT_SELECTED"
    cur = _current([("A", "a", "T-I", "1.1", "present"), ("B", "b", "T-NI", "", "present"),
                    ("C", "c", "NT-NI", "", "present"), ("D", "d", "T-I", "1.1", "present"),
                    ("E", "e", "NEW", "", "new")])
    out = replan(rk, cur, LESIONS, cfg, timepoint_index=1).set_index("lesion_id")
    assert out["role"].to_dict() == {"b": "monitor", "c": "inject", "e": "none", "a": "none",
                                     "d": "inject"}
    assert "FOLLOWUP_NOT_INJECTABLE" in out.loc["a", "reasons"]
    assert "TOO_SMALL" in out.loc["a", "explanation"] and "replaced by c" in out.loc["a",
                                                                                   "explanation"]
    assert "FOLLOWUP_REPLACEMENT" in out.loc["c", "reasons"]
    assert "in place of an injected lesion: track A (lesion a) is no longer injectable" in \
        out.loc["c", "explanation"]
    assert out.loc["c", "planned_volume_ml"] > 0  # planned from its diameter and volume


def test_disappeared_or_missing_injected_lesion_frees_a_slot_for_a_new_lesion(cfg):
    rk = _ranking([("e", "none", "recommended", 1), ("c", "none", "board_review", 2),
                   ("x", "none", "not_suitable", pd.NA)])
    cur = _current([("A", "x", "T-I", "1.1", "disappeared"), ("D", "", "T-I", "1.1",
                                                             "not_evaluable"),
                    ("C", "c", "NT-NI", "", "present"), ("E", "e", "NEW", "", "new")])
    out = replan(rk, cur, LESIONS, cfg, timepoint_index=1).set_index("lesion_id")
    # two injected tracks lost, one injectable candidate (board_review is not an inject tier)
    assert out["role"].to_dict() == {"e": "inject", "c": "none", "x": "none"}
    assert "disappeared" in out.loc["e", "explanation"]
    assert "FOLLOWUP_NOT_INJECTABLE" in out.loc["x", "reasons"]
    assert "disappeared (empty segment, 0 mm); replaced by e" in out.loc["x", "explanation"]
    assert "was not found in this study" in out.loc["e", "explanation"]


def test_baseline_and_non_timepoint_only_annotate(cfg):
    rk = _ranking([("a", "inject", "recommended", 1), ("b", "monitor", "acceptable", 2)])
    cur = _current([("a", "a", "T-I", "1.2", "present"), ("b", "b", "T-NI", "", "present")],
                   index=0)
    out = replan(rk, cur, LESIONS, cfg, timepoint_index=0)
    assert _roles(out) == {"a": "inject", "b": "monitor"}
    assert list(out["itrecist_category"]) == ["T-I", "T-NI"]
    pd.testing.assert_frame_equal(out.drop(columns=REPLAN_COLUMNS), rk.drop(columns=[
        "tracking_uid"]))
    lesions = LESIONS.assign(tracking_uid=["7.1", "7.2", "", "", ""])
    none = replan(rk, pd.DataFrame(), lesions, cfg, timepoint_index=None)
    assert _roles(none) == {"a": "inject", "b": "monitor"}
    assert list(none["tracking_uid"]) == ["7.1", "7.2"] and set(none["track_id"]) == {""}
