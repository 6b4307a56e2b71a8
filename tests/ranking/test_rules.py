"""Rule engine and set selection (pipeline/ranking)."""

import copy
import math

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.ranking.rules import evaluate, needle_hit_probability
from pipeline.ranking.select import rank_study


@pytest.fixture(scope="module")
def cfg():
    return load_config()


def lesion(lid, **kw):
    base = dict(patient_id="P1", study_uid="1.2.3", lesion_id=lid, lesion_label=lid,
                organ="soft_tissue", site="deep_soft_tissue", longest_diameter_mm=25.0,
                short_axis_mm=22.0, volume_ml=6.0, skin_depth_mm=30.0, suv_max=6.0)
    base.update(kw)
    return base


# Phantom-like lesion table (the designs of pipeline/phantom.py)
PHANTOM_LIKE = [
    lesion("soft_tissue_flank", site="superficial_soft_tissue", skin_depth_mm=12, suv_max=8),
    lesion("node_axillary_r", organ="lymph_node", site="superficial_node", longest_diameter_mm=20,
           short_axis_mm=16, skin_depth_mm=18, suv_max=7),
    lesion("liver_deep", organ="liver", site="visceral:liver", longest_diameter_mm=30,
           short_axis_mm=30, skin_depth_mm=60, suv_max=6, liver_capsule_distance_mm=40),
    lesion("liver_subcapsular", organ="liver", site="visceral:liver", longest_diameter_mm=20,
           short_axis_mm=20, skin_depth_mm=20, suv_max=6, liver_capsule_distance_mm=0.5),
    lesion("lung_nodule_tiny", organ="lung", site="visceral:lung", longest_diameter_mm=7,
           short_axis_mm=7, volume_ml=0.18, skin_depth_mm=60, suv_max=1.5, lung_pleura_distance_mm=30),
    lesion("necrotic_mass", longest_diameter_mm=60, short_axis_mm=60, volume_ml=113, suv_max=5),
    lesion("node_paraaortic", organ="lymph_node", site="deep_node", skin_depth_mm=80, suv_max=6.5,
           vessel_distance_mm=0.0, vessel_name="aorta"),
    lesion("lung_subpleural", organ="lung", site="visceral:lung", longest_diameter_mm=16,
           short_axis_mm=16, skin_depth_mm=30, suv_max=4, lung_pleura_distance_mm=3),
]


def test_three_valued_logic():
    row = {"a": 5.0, "b": None, "organ": "liver"}
    assert evaluate({"column": "a", "op": "<", "value": 10}, row) is True
    assert evaluate({"column": "b", "op": "<", "value": 10}, row) is None
    assert evaluate({"column": "zz", "op": "<", "value": 10}, row) is None
    assert evaluate({"all": [{"column": "a", "op": ">", "value": 10},
                             {"column": "b", "op": "<", "value": 1}]}, row) is False
    assert evaluate({"any": [{"column": "a", "op": "<", "value": 10},
                             {"column": "b", "op": "<", "value": 1}]}, row) is True
    assert evaluate({"column": "b", "op": "missing"}, row) is True
    assert evaluate({"column": "organ", "op": "in", "values": ["liver", "lung"]}, row) is True
    assert evaluate({"not": {"column": "organ", "op": "==", "value": "liver"}}, row) is False


def test_needle_hit_probability_model():
    # r = 10 mm, sigma = 2 + 0.04*50 = 4 mm -> 1 - exp(-100/32)
    p = needle_hit_probability(20.0, 50.0, base_error_mm=2.0, error_per_mm_depth=0.04)
    assert p == pytest.approx(1 - math.exp(-100 / 32), rel=1e-12)
    deeper = needle_hit_probability(20.0, 150.0, base_error_mm=2.0, error_per_mm_depth=0.04)
    assert deeper < p
    assert needle_hit_probability(None, 50.0, base_error_mm=2, error_per_mm_depth=0.04) is None


def test_phantom_like_table(cfg):
    r = rank_study(pd.DataFrame(PHANTOM_LIKE), cfg["ranking"]).set_index("lesion_id")
    assert (r["reasons"].str.len() > 0).all()
    for lid in ("liver_subcapsular", "lung_nodule_tiny", "necrotic_mass"):
        assert r.loc[lid, "tier"] != "recommended", lid
    assert r.loc["liver_subcapsular", "tier"] == "not_suitable"
    assert "LIVER_SUBCAPSULAR" in r.loc["liver_subcapsular", "reasons"]
    assert r.loc["liver_subcapsular", "explanation"].startswith("Not suitable: Subcapsular liver lesion")
    assert r.loc["node_paraaortic", "tier"] == "board_review"
    # superficial soft tissue / node above the deep liver lesion at similar uptake
    assert r.loc["soft_tissue_flank", "rank"] < r.loc["liver_deep", "rank"]
    assert r.loc["node_axillary_r", "rank"] < r.loc["liver_deep", "rank"]
    inj = set(r.index[r.role == "inject"])
    mon = set(r.index[r.role == "monitor"])
    assert len(inj) == cfg["ranking"]["injections_per_session"]
    assert inj.isdisjoint(mon) and 1 <= len(mon) <= 5
    assert r.loc[list(mon), "measurable"].all()
    assert r.loc[list(mon), "organ"].value_counts().max() <= 2
    # another organ preferred for monitoring: first monitoring choices are outside injected organs
    inj_organs = set(r.loc[list(inj), "organ"])
    assert any(o not in inj_organs for o in r.loc[list(mon), "organ"])
    # ranks are 1..n without gaps among ranked lesions
    ranks = sorted(r["rank"].dropna().astype(int))
    assert ranks == list(range(1, len(ranks) + 1))


def test_rank_is_deterministic_under_row_order(cfg):
    df = pd.DataFrame(PHANTOM_LIKE)
    a = rank_study(df, cfg["ranking"])
    b = rank_study(df.iloc[::-1].reset_index(drop=True), cfg["ranking"])
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_threshold_in_config_changes_outcome(cfg):
    c = copy.deepcopy(cfg["ranking"])
    rule = next(x for x in c["rules"] if x["code"] == "SIZE_SMALL")
    df = pd.DataFrame([lesion("a", longest_diameter_mm=12, short_axis_mm=12),
                       lesion("b", longest_diameter_mm=30)])
    before = rank_study(df, c).set_index("lesion_id")
    assert "SIZE_SMALL" not in before.loc["a", "reasons"]
    rule["when"]["value"] = 15.0
    after = rank_study(df, c).set_index("lesion_id")
    assert "SIZE_SMALL" in after.loc["a", "reasons"]
    assert after.loc["a", "tier"] == "not_suitable"


def test_missing_inputs_are_reported_not_guessed(cfg):
    df = pd.DataFrame([lesion("a", suv_max=None, organ="unknown", organ_reason="no organ masks")])
    r = rank_study(df, cfg["ranking"]).iloc[0]
    assert "VIABLE_PET" in r["rules_not_evaluated"] and "LOW_UPTAKE" in r["rules_not_evaluated"]
    assert "ORGAN_UNKNOWN" in r["reasons"]
    assert r["tier"] in ("board_review", "not_suitable")


def test_organ_diversity_in_injection_set(cfg):
    df = pd.DataFrame([
        lesion("a1", site="superficial_soft_tissue", skin_depth_mm=10, suv_max=9),
        lesion("a2", site="superficial_soft_tissue", skin_depth_mm=10, suv_max=8.5),
        lesion("b", organ="liver", site="visceral:liver", liver_capsule_distance_mm=30),
    ])
    r = rank_study(df, cfg["ranking"]).set_index("lesion_id")
    assert set(r.index[r.role == "inject"]) == {"a1", "b"}


def test_planned_volume_bounds(cfg):
    df = pd.DataFrame([lesion("big", site="superficial_soft_tissue", longest_diameter_mm=45,
                              short_axis_mm=40, volume_ml=40),
                       lesion("small", site="superficial_soft_tissue", longest_diameter_mm=10.5,
                              short_axis_mm=9.5, volume_ml=0.4, skin_depth_mm=5)])
    r = rank_study(df, cfg["ranking"]).set_index("lesion_id")
    for lid in r.index[r.role == "inject"]:
        assert 0.5 <= r.loc[lid, "planned_volume_ml"] <= 10
    if r.loc["small", "role"] == "inject":
        assert "below the minimum" in r.loc["small", "volume_warning"]
