"""Rule engine (pipeline/ranking/rules.py): every rule of ALGORITHM.md fires, stays silent, and
follows its configured threshold; three-valued logic; scores, tiers, explanations, target point."""

import math

import numpy as np
import pandas as pd
import pytest
from ranking_rows import PHANTOM001, lesion

from pipeline.ranking.rules import (
    apply_rules,
    derive_columns,
    evaluate,
    format_message,
    needle_hit_probability,
    rule_columns,
    rule_frame,
)
from pipeline.ranking.select import rank_study

#: The rule codes of ../shared/ALGORITHM.md (sections 1-3).
ALGORITHM_CODES = [
    "SIZE_SMALL", "SIZE_LARGE", "SIZE_DEPTH", "VIABLE_PET", "VIABLE_ENH", "NECROTIC",
    "NEW_OR_GROWING", "NO_RIM_BIAS", "CRITICAL_COMPRESSION", "NONCONTRAST_CONSPICUITY",
    "US_WINDOW", "PATH", "MOBILITY", "OTHER_ACCESS", "PREFERRED_SITE", "LIVER_SUBCAPSULAR",
    "LUNG_DEPTH", "KIDNEY_SPLEEN", "ADRENAL", "VESSEL_ABUT", "INTRAVASCULAR", "NEEDLE_GAUGE",
    "BRAIN",
]


def outcome(row: dict, cfg: dict):
    df = derive_columns(pd.DataFrame([row]), cfg)
    return apply_rules(df, cfg)[0]


def leaf(cond: dict, column: str):
    """The first leaf condition on ``column`` in a condition tree."""
    if "column" in cond:
        return cond if cond["column"] == column else None
    kids = cond.get("all") or cond.get("any") or cond.get("first_known") or [cond.get("not")]
    for k in kids:
        if k is not None and (found := leaf(k, column)) is not None:
            return found
    return None


def set_leaf(column, **kv):
    """Mutation: set ``value``/``values`` of the rule's leaf on ``column``."""
    def mutate(cfg, code):
        rule = next(r for r in cfg["rules"] if r["code"] == code)
        node = leaf(rule["when"], column)
        assert node is not None, f"{code} has no condition on {column}"
        node.update(kv)
    return mutate


def set_cfg(path, value):
    def mutate(cfg, code):
        node = cfg
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    return mutate


LIVER = dict(organ="liver", site="visceral:liver", liver_capsule_distance_mm=30.0)
NO_PET = dict(suv_max=None, suv_peak=None, suv_peak_x_mm=None, suv_peak_y_mm=None,
              suv_peak_z_mm=None)

# code, firing row, silent row, config mutation, row checked after the mutation, fires after?
CASES = [
    ("LESION_EMPTY", dict(lesion_empty=True), dict(lesion_empty=False),
     set_leaf("lesion_empty", value=False), "silent", True),
    ("SIZE_SMALL", dict(longest_diameter_mm=8, short_axis_mm=7), dict(longest_diameter_mm=12, short_axis_mm=11),
     set_leaf("longest_diameter_mm", value=15.0), "silent", True),
    ("SIZE_SMALL_DEEP", dict(longest_diameter_mm=8, short_axis_mm=7, skin_depth_mm=80),
     dict(longest_diameter_mm=8, short_axis_mm=7, skin_depth_mm=10, us_window=False),
     set_leaf("needle_hit_probability", value=0.7), "silent", True),
    ("SIZE_LARGE", dict(longest_diameter_mm=60, short_axis_mm=55), dict(longest_diameter_mm=40),
     set_leaf("longest_diameter_mm", value=35.0), "silent", True),
    ("SIZE_DEPTH", dict(short_axis_mm=8, skin_depth_mm=100), dict(short_axis_mm=22, skin_depth_mm=30),
     set_leaf("needle_hit_probability", value=0.999), "silent", True),
    ("VIABLE_PET", dict(suv_max=6), dict(suv_max=2), set_leaf("suv_max", value=1.5), "silent", True),
    ("LOW_UPTAKE", dict(suv_max=2), dict(suv_max=6), set_leaf("suv_max", value=7.0), "silent", True),
    ("PET_NOT_INFORMATIVE", dict(histology_fdg_avid=False), dict(histology_fdg_avid=True),
     set_leaf("histology_fdg_avid", value=True), "silent", True),
    ("VIABLE_ENH", dict(NO_PET, enhancement_hu=40), dict(NO_PET, enhancement_hu=15),
     set_leaf("enhancement_hu", value=10.0), "silent", True),
    ("LOW_ENHANCEMENT", dict(NO_PET, enhancement_hu=5), dict(NO_PET, enhancement_hu=15),
     set_leaf("enhancement_hu", value=20.0), "silent", True),
    ("NECROTIC", dict(necrosis_fraction=0.7), dict(necrosis_fraction=0.3),
     set_leaf("necrosis_fraction", value=0.2), "silent", True),
    ("NECROSIS_PARTIAL", dict(necrosis_fraction=0.26), dict(necrosis_fraction=0.1),
     set_leaf("necrosis_fraction", value=0.05), "silent", True),
    ("NEW_OR_GROWING", dict(new_or_growing=True), dict(new_or_growing=False),
     set_leaf("new_or_growing", value=False), "silent", True),
    ("PRIOR_LOCOREGIONAL", dict(prior_locoregional_therapy=True), dict(prior_locoregional_therapy=False),
     set_leaf("prior_locoregional_therapy", value=False), "silent", True),
    ("CRITICAL_COMPRESSION", dict(critical_compression=True), dict(critical_compression=False),
     set_leaf("critical_compression", value=False), "silent", True),
    # informational: fires whenever a target point exists; the source list is the setting
    ("NO_RIM_BIAS", dict(), dict(centroid_x_mm=None, **NO_PET),
     set_cfg(["target_point", "sources"], ["suv_peak"]), dict(NO_PET), False),
    ("NONCONTRAST_CONSPICUITY", dict(noncontrast_cnr=0.5, us_window=True), dict(noncontrast_cnr=2.0),
     set_leaf("noncontrast_cnr", value=3.0), "silent", True),
    ("NONCONTRAST_NO_WINDOW", dict(noncontrast_cnr=0.5, us_window=False),
     dict(noncontrast_cnr=2.0, us_window=False),
     set_leaf("noncontrast_cnr", value=3.0), "silent", True),
    ("US_WINDOW", dict(us_window=True), dict(us_window=True, path_length_mm=150.0),
     set_leaf("path_length_mm", value=200.0), "silent", True),
    ("PATH", dict(safe_path_found=False), dict(safe_path_found=True),
     set_leaf("safe_path_found", value=True), "silent", True),
    ("MOBILITY", dict(diaphragm_distance_mm=10), dict(diaphragm_distance_mm=30),
     set_leaf("diaphragm_distance_mm", value=40.0), "silent", True),
    ("OTHER_ACCESS", dict(organ="bowel", site="visceral:bowel"), dict(LIVER),
     set_leaf("organ", values=["liver"]), "silent", True),
    ("PREFERRED_SITE", dict(site="superficial_soft_tissue"), dict(site="deep_soft_tissue"),
     set_leaf("site", values=["deep_soft_tissue"]), "silent", True),
    ("DEEP_VISCERAL", dict(LIVER), dict(site="deep_soft_tissue"),
     set_leaf("site", value="deep_"), "silent", True),
    ("LIVER_SUBCAPSULAR", dict(LIVER, liver_capsule_distance_mm=3), dict(LIVER, liver_capsule_distance_mm=20),
     set_leaf("liver_capsule_distance_mm", value=25.0), "silent", True),
    ("LIVER_EXOPHYTIC", dict(LIVER, exophytic_fraction=0.3), dict(LIVER, exophytic_fraction=0.05),
     set_leaf("exophytic_fraction", value=0.01), "silent", True),
    ("LIVER_NO_PARENCHYMA", dict(LIVER, liver_parenchyma_path_mm=4.0), dict(LIVER, liver_parenchyma_path_mm=25.0),
     set_leaf("liver_parenchyma_path_mm", value=30.0), "silent", True),
    ("LUNG_PATH", dict(organ="lung", site="visceral:lung", lung_pleura_distance_mm=15),
     dict(organ="lung", site="visceral:lung", lung_pleura_distance_mm=5),
     set_leaf("lung_pleura_distance_mm", value=2.0), "silent", True),
    ("LUNG_DEPTH", dict(organ="lung", site="visceral:lung", lung_pleura_distance_mm=30),
     dict(organ="lung", site="visceral:lung", lung_pleura_distance_mm=5),
     set_leaf("lung_pleura_distance_mm", value=2.0), "silent", True),
    ("LUNG_SUBPLEURAL", dict(organ="lung", site="visceral:lung", lung_pleura_distance_mm=5),
     dict(organ="lung", site="visceral:lung", lung_pleura_distance_mm=30),
     set_leaf("lung_pleura_distance_mm", value=40.0), "silent", True),
    ("KIDNEY_SPLEEN", dict(organ="kidney", site="visceral:kidney"), dict(LIVER),
     set_leaf("organ", values=["liver"]), "silent", True),
    ("ADRENAL", dict(organ="adrenal", site="visceral:adrenal"), dict(LIVER),
     set_leaf("organ", value="liver"), "silent", True),
    ("VESSEL_ABUT", dict(vessel_distance_mm=0.0, vessel_name="aorta"),
     dict(vessel_distance_mm=5.0, vessel_name="aorta"),
     set_leaf("vessel_distance_mm", value=6.0), "silent", True),
    ("VESSEL_ENCASE", dict(vessel_relation="encasing", vessel_caliber_mm=10.0, vessel_name="carotid"),
     dict(vessel_relation="encasing", vessel_caliber_mm=2.0, vessel_name="small_branch"),
     set_leaf("vessel_caliber_mm", value=1.0), "silent", True),
    ("INTRAVASCULAR", dict(intravascular_fraction=0.2), dict(intravascular_fraction=0.01),
     set_leaf("intravascular_fraction", value=0.0), "silent", True),
    ("NEEDLE_GAUGE", dict(biopsy_required=True), dict(biopsy_required=False),
     set_leaf("biopsy_required", value=False), "silent", True),
    ("BRAIN", dict(organ="brain", site="visceral:brain"), dict(LIVER),
     set_leaf("organ", value="liver"), "silent", True),
    ("ORGAN_UNKNOWN", dict(organ="unknown", site="deep_unknown", organ_reason="no organ masks"),
     dict(LIVER), set_leaf("organ", value="liver"), "silent", True),
]


def test_every_algorithm_rule_is_configured_and_tested(cfg):
    codes = [r["code"] for r in cfg["rules"]]
    assert set(ALGORITHM_CODES) <= set(codes)
    assert {c[0] for c in CASES} == set(codes), "every configured rule needs a case in CASES"


@pytest.mark.parametrize("code,fire,silent,mutate,after,fires_after", CASES, ids=[c[0] for c in CASES])
def test_rule_fires_is_silent_and_follows_config(cfg, code, fire, silent, mutate, after, fires_after):
    o_fire = outcome(lesion("a", **fire), cfg)
    assert code in o_fire.fired
    o_silent = outcome(lesion("a", **silent), cfg)
    assert code not in o_silent.fired
    assert code not in o_silent.not_evaluated, "silent means evaluated and false, not unknown"
    row_after = lesion("a", **(silent if after == "silent" else after))
    before = outcome(row_after, cfg)
    mutate(cfg, code)
    o_after = outcome(row_after, cfg)
    assert (code in o_after.fired) is fires_after
    assert (code in before.fired) is not fires_after
    rule = next(r for r in cfg["rules"] if r["code"] == code)
    if rule["effect"].get("info"):
        assert o_after.score == before.score
    else:
        assert (o_after.score, o_after.tier) != (before.score, before.tier), \
            "a rule with an effect changes the score or the tier"


def test_rule_unknown_when_its_column_is_missing(cfg):
    o = outcome(lesion("a"), cfg)
    for code in ("NECROTIC", "PATH", "US_WINDOW", "MOBILITY", "INTRAVASCULAR", "NEEDLE_GAUGE",
                 "NEW_OR_GROWING", "NONCONTRAST_CONSPICUITY", "NONCONTRAST_NO_WINDOW"):
        assert code in o.not_evaluated
        assert code not in o.fired


def test_three_valued_logic():
    row = {"a": 5.0, "b": None, "organ": "liver", "v": "Inferior_Vena_Cava"}
    assert evaluate({"column": "a", "op": "<", "value": 10}, row) is True
    assert evaluate({"column": "b", "op": "<", "value": 10}, row) is None
    assert evaluate({"column": "zz", "op": "<", "value": 10}, row) is None
    assert evaluate({"all": [{"column": "a", "op": ">", "value": 10},
                             {"column": "b", "op": "<", "value": 1}]}, row) is False
    assert evaluate({"all": [{"column": "a", "op": "<", "value": 10},
                             {"column": "b", "op": "<", "value": 1}]}, row) is None
    assert evaluate({"any": [{"column": "a", "op": "<", "value": 10},
                             {"column": "b", "op": "<", "value": 1}]}, row) is True
    assert evaluate({"column": "b", "op": "missing"}, row) is True
    assert evaluate({"column": "organ", "op": "in", "values": ["liver", "lung"]}, row) is True
    assert evaluate({"not": {"column": "organ", "op": "==", "value": "liver"}}, row) is False
    assert evaluate({"column": "v", "op": "contains", "values": ["cava"]}, row) is True
    # first_known: the measurement when present, else the proxy; unknown only if all unknown
    fk = {"first_known": [{"column": "b", "op": ">", "value": 1}, {"column": "a", "op": ">", "value": 1}]}
    assert evaluate(fk, row) is True
    assert evaluate(fk, {**row, "b": 0.0}) is False
    assert evaluate({"first_known": [{"column": "b", "op": ">", "value": 1}]}, row) is None
    assert evaluate({"column": "flag", "op": "==", "value": True}, {"flag": "yes"}) is True
    assert evaluate({"column": "flag", "op": "==", "value": True}, {"flag": "maybe"}) is None


def test_planner_measurements_take_precedence_over_proxies(cfg):
    # vessel relation from the planner beats the surface distance
    o = outcome(lesion("a", vessel_distance_mm=0.0, vessel_name="aorta", vessel_relation="none"), cfg)
    assert "VESSEL_ABUT" not in o.fired
    # encasing is its own rule, not also "abutting"
    o = outcome(lesion("a", vessel_relation="encasing", vessel_name="aorta", vessel_distance_mm=0.0), cfg)
    assert "VESSEL_ENCASE" in o.fired and "VESSEL_ABUT" not in o.fired
    # a measured caliber below the threshold: not a major vessel even if abutting
    o = outcome(lesion("a", vessel_relation="abutting", vessel_caliber_mm=2.0, vessel_name="x"), cfg)
    assert "VESSEL_ABUT" not in o.fired
    # caliber threshold in config (paper: 3-5 mm)
    row = lesion("a", vessel_relation="abutting", vessel_caliber_mm=4.0, vessel_name="x")
    assert "VESSEL_ABUT" in outcome(row, cfg).fired
    set_leaf("vessel_caliber_mm", value=5.0)(cfg, "VESSEL_ABUT")
    assert "VESSEL_ABUT" not in outcome(row, cfg).fired


def test_lung_depth_uses_aerated_lung_on_the_path(cfg):
    # a liver dome lesion whose planned path crosses 25 mm of aerated lung
    o = outcome(lesion("a", **LIVER, aerated_lung_path_mm=25.0), cfg)
    assert "LUNG_DEPTH" in o.fired
    assert "25 mm of aerated lung" in dict((c, m) for c, _, m in o.messages)["LUNG_DEPTH"]
    # a lung lesion 30 mm from the pleura whose planned oblique path crosses only 8 mm
    o = outcome(lesion("a", organ="lung", site="visceral:lung", lung_pleura_distance_mm=30.0,
                       aerated_lung_path_mm=8.0), cfg)
    assert "LUNG_DEPTH" not in o.fired and "LUNG_SUBPLEURAL" in o.fired


def test_small_lesion_is_board_review_when_superficial_with_ultrasound_window(cfg):
    # 8 mm nodule 10 mm under the skin with an ultrasound window: penalty and board, injectable
    sup = lesion("a", longest_diameter_mm=8, short_axis_mm=7, skin_depth_mm=10, us_window=True)
    o = outcome(sup, cfg)
    assert "SIZE_SMALL" in o.fired and "SIZE_SMALL_DEEP" not in o.fired
    assert o.tier.value == "board_review" and not o.hard_excluded
    # same nodule 80 mm deep: low hit probability (r 4 mm, sigma 5.2 mm -> 0.26): not suitable,
    # an ultrasound window does not make a deep target superficial
    deep = lesion("b", longest_diameter_mm=8, short_axis_mm=7, skin_depth_mm=80, us_window=True)
    o = outcome(deep, cfg)
    assert o.needle_hit_probability == pytest.approx(1 - math.exp(-3.5**2 / (2 * 5.2**2)), rel=1e-9)
    assert "SIZE_SMALL_DEEP" in o.fired and o.tier.value == "not_suitable" and o.hard_excluded
    # the superficial window exempts it even when the probability threshold is strict ...
    set_leaf("needle_hit_probability", value=0.99)(cfg, "SIZE_SMALL_DEEP")
    assert "SIZE_SMALL_DEEP" not in outcome(sup, cfg).fired
    assert "SIZE_SMALL_DEEP" in outcome(dict(sup, us_window=False), cfg).fired
    assert "SIZE_SMALL_DEEP" in outcome(dict(sup, us_window=None), cfg).fired  # unknown window: no credit
    # ... and the superficial depth is configuration
    set_leaf("skin_depth_mm", value=5.0)(cfg, "SIZE_SMALL_DEEP")
    assert "SIZE_SMALL_DEEP" in outcome(sup, cfg).fired


LIVER_REF = dict(liver_reference_suv_mean=2.0)


def test_pet_viability_is_relative_to_the_liver(cfg):
    # SUVmax 3.5 passes the absolute 2.5, but SUVpeak 2.8 < 1.5 x liver mean 2.0 = 3.0
    row = lesion("a", **LIVER, suv_max=3.5, suv_peak=2.8, **LIVER_REF)
    o = outcome(row, cfg)
    assert "LOW_UPTAKE" in o.fired and "VIABLE_PET" not in o.fired
    msg = dict((c, m) for c, _, m in o.messages)["LOW_UPTAKE"]
    assert "SUVpeak 2.8 = 0.93 x the liver threshold 3.0" in msg
    df = derive_columns(pd.DataFrame([row]), cfg)
    assert df.loc[0, "pet_liver_threshold_suv"] == pytest.approx(3.0, abs=1e-12)
    assert df.loc[0, "pet_viability_ratio"] == pytest.approx(2.8 / 3.0, abs=1e-12)
    # with the liver SD: threshold 1.5 x 2.0 + 2 x 0.3 = 3.6; SUVpeak 3.3 is below it
    o = outcome(dict(row, suv_peak=3.3, liver_reference_suv_sd=0.3), cfg)
    assert "LOW_UPTAKE" in o.fired
    assert "VIABLE_PET" in outcome(dict(row, suv_peak=3.3), cfg).fired  # 3.3 >= 3.0 without SD
    # SUVpeak from the ratio column when suv_peak is empty
    o = outcome(dict(row, suv_peak=None, lesion_to_liver_suvpeak_ratio=2.0), cfg)
    assert "VIABLE_PET" in o.fired
    # without a liver reference the absolute SUVmax decides (3.5 >= 2.5)
    o = outcome(dict(row, liver_reference_suv_mean=None), cfg)
    assert "VIABLE_PET" in o.fired
    assert "SUVmax 3.5, no liver reference" in dict((c, m) for c, _, m in o.messages)["VIABLE_PET"]
    # the factor is configuration
    cfg["pet_viability"]["liver_mean_factor"] = 1.0
    o = outcome(row, cfg)
    assert "VIABLE_PET" in o.fired and "LOW_UPTAKE" not in o.fired


def test_non_avid_histology_lets_enhancement_decide(cfg):
    row = lesion("a", suv_max=1.5, suv_peak=1.2, enhancement_hu=40.0, **LIVER_REF)
    o = outcome(row, cfg)
    assert "LOW_UPTAKE" in o.fired and "VIABLE_ENH" in o.fired
    o2 = outcome(dict(row, histology_fdg_avid=False), cfg)
    assert "LOW_UPTAKE" not in o2.fired and "LOW_UPTAKE" not in o2.not_evaluated
    assert {"VIABLE_ENH", "PET_NOT_INFORMATIVE"} <= set(o2.fired)
    assert o2.stage_scores["characterization"] == pytest.approx(
        o.stage_scores["characterization"] + 0.3, abs=1e-9)
    # an avid uptake does not count either: enhancement decides (little enhancement -> penalty)
    o3 = outcome(dict(row, suv_max=9.0, suv_peak=8.0, enhancement_hu=5.0, histology_fdg_avid=False), cfg)
    assert "VIABLE_PET" not in o3.fired and "LOW_ENHANCEMENT" in o3.fired


def test_lung_rules_are_one_ladder(cfg):
    lung = dict(organ="lung", site="visceral:lung")
    fired = {}
    for d in (2.0, 15.0, 40.0):
        o = outcome(lesion("a", **lung, lung_pleura_distance_mm=d), cfg)
        lung_codes = [c for c in o.fired if c.startswith("LUNG_") or c == "DEEP_VISCERAL"]
        assert len(lung_codes) == 1, (d, lung_codes)  # one rung, never DEEP_VISCERAL too
        fired[d] = (lung_codes[0], o.stage_scores["safety"], o.tier.value)
    assert [fired[d][0] for d in (2.0, 15.0, 40.0)] == ["LUNG_SUBPLEURAL", "LUNG_PATH", "LUNG_DEPTH"]
    # the penalty grows with the aerated lung crossed
    assert fired[2.0][1] > fired[15.0][1] > fired[40.0][1]
    msg = dict((c, m) for c, _, m in outcome(lesion("a", **lung, lung_pleura_distance_mm=2.0), cfg).messages)
    assert "subpleural" in msg["LUNG_SUBPLEURAL"] and "deep visceral" not in " ".join(msg.values())
    # a non-lung lesion without a planned path is not judged by the lung ladder, nor left unevaluated
    o = outcome(lesion("a", **LIVER), cfg)
    assert not {"LUNG_PATH", "LUNG_DEPTH"} & set(o.fired + o.not_evaluated)
    # the rung thresholds are configuration: 15 mm becomes subpleural with a 20 mm limit
    set_leaf("lung_pleura_distance_mm", value=20.0)(cfg, "LUNG_SUBPLEURAL")
    set_leaf("lung_pleura_distance_mm", value=20.0)(cfg, "LUNG_PATH")
    o = outcome(lesion("a", **lung, lung_pleura_distance_mm=15.0), cfg)
    assert "LUNG_SUBPLEURAL" in o.fired and "LUNG_PATH" not in o.fired


def test_necrosis_penalty_is_graded_and_mentioned(cfg):
    pen = {}
    for f in (0.0, 0.26, 0.7):
        o = outcome(lesion("a", necrosis_fraction=f), cfg)
        pen[f] = o.stage_scores["characterization"]
        text = " ".join(m for _, _, m in o.messages)
        if f == 0.26:
            assert "partly necrotic (26% non-viable)" in text and "NECROTIC" not in o.fired
        if f == 0.7:
            assert "NECROTIC" in o.fired and "NECROSIS_PARTIAL" not in o.fired
    assert pen[0.0] > pen[0.26] > pen[0.7]


def test_needle_hit_probability_model():
    # r = 10 mm, sigma = 2 + 0.04*50 = 4 mm -> 1 - exp(-100/32)
    p = needle_hit_probability(20.0, 50.0, base_error_mm=2.0, error_per_mm_depth=0.04)
    assert p == pytest.approx(1 - math.exp(-100 / 32), rel=1e-12)
    assert needle_hit_probability(20.0, 150.0, base_error_mm=2.0, error_per_mm_depth=0.04) < p
    assert needle_hit_probability(None, 50.0, base_error_mm=2, error_per_mm_depth=0.04) is None
    # Monte Carlo check of the Rayleigh formula: isotropic 2D Gaussian error inside the disc
    rng = np.random.default_rng(0)
    sigma = 2.0 + 0.04 * 80.0
    err = rng.normal(0.0, sigma, size=(200_000, 2))
    mc = np.mean(np.hypot(err[:, 0], err[:, 1]) <= 5.0)
    assert needle_hit_probability(10.0, 80.0, base_error_mm=2.0, error_per_mm_depth=0.04) == \
        pytest.approx(mc, abs=0.005)


def test_size_depth_tradeoff_is_explicit(cfg):
    # same lesion deeper: lower access score; a larger lesion at that depth recovers it
    shallow = outcome(lesion("a", short_axis_mm=12, longest_diameter_mm=14, skin_depth_mm=20), cfg)
    deep = outcome(lesion("a", short_axis_mm=12, longest_diameter_mm=14, skin_depth_mm=110), cfg)
    deep_big = outcome(lesion("a", short_axis_mm=30, longest_diameter_mm=32, skin_depth_mm=110), cfg)
    assert deep.stage_scores["access"] < shallow.stage_scores["access"]
    assert deep_big.stage_scores["access"] > deep.stage_scores["access"]
    assert "SIZE_DEPTH" in deep.fired and "SIZE_DEPTH" not in deep_big.fired
    # the error model is configuration: a more accurate operator removes the penalty
    cfg["needle"]["error_per_mm_depth"] = 0.0
    assert "SIZE_DEPTH" not in outcome(lesion("a", short_axis_mm=12, skin_depth_mm=110), cfg).fired


def test_planned_path_length_wins_over_skin_depth(cfg):
    df = derive_columns(pd.DataFrame([lesion("a", skin_depth_mm=20.0, path_length_mm=45.0),
                                      lesion("b", skin_depth_mm=20.0)]), cfg)
    assert df["path_length_mm"].tolist() == [45.0, 20.0]
    assert df["path_length_source"].tolist() == ["planner", "skin_depth"]


def test_target_point_is_suv_peak_centre_or_centroid_never_the_rim(cfg):
    rows = [lesion("pet"), lesion("nonavid", suv_max=1.2), lesion("nopet", **NO_PET),
            lesion("none", centroid_x_mm=None, **NO_PET)]
    df = derive_columns(pd.DataFrame(rows), cfg).set_index("lesion_id")
    assert df.loc["pet", "target_point_source"] == "suv_peak"
    assert df.loc["pet", ["target_x_mm", "target_y_mm", "target_z_mm"]].tolist() == [11.0, 21.0, 29.0]
    assert df.loc["nonavid", "target_point_source"] == "centroid"  # hottest voxel of a cold lesion is noise
    assert df.loc["nopet", "target_point_source"] == "centroid"
    assert df.loc["nopet", ["target_x_mm", "target_y_mm", "target_z_mm"]].tolist() == [10.0, 20.0, 30.0]
    assert df.loc["none", "target_point_source"] == ""
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    assert r.loc["pet", "target_point_source"] == "suv_peak"
    assert "not the rim" in r.loc["pet", "explanation"]
    # no rule rewards a rim location: no configured rule reads a rim/periphery column
    assert not any("rim" in c or "periph" in c for c in rule_columns(cfg))


def test_explanation_is_a_plain_sentence(cfg):
    from pipeline.ranking.rules import explanation

    row = lesion("a", **dict(LIVER, liver_capsule_distance_mm=3.0))
    text = explanation(outcome(row, cfg))
    assert text.startswith(
        "Not suitable: subcapsular liver lesion (3 mm from capsule); rupture, bleeding and "
        "seeding risk;")
    assert text.endswith(".") and ".." not in text
    r = rank_study(pd.DataFrame([row, lesion("b", **dict(LIVER, liver_capsule_distance_mm=3.0),
                                             longest_diameter_mm=8.0, short_axis_mm=7.0)]), cfg)
    r = r.set_index("lesion_id")
    assert "LIVER_SUBCAPSULAR" in r.loc["a", "reasons"].split(";")
    assert r.loc["b", "role"] == "none"
    assert r.loc["b", "explanation"].startswith("Not suitable: ")
    assert "subcapsular liver lesion (3 mm from capsule)" in r.loc["b", "explanation"]
    assert "not measurable: longest diameter 8.0 mm < 10 mm" in r.loc["b", "explanation"]
    assert format_message("{a|b:.0f} mm", {"a": None, "b": 7.2}) == "7 mm"
    assert format_message("{a:.1f}", {"a": None}) == "n/a"


def test_monitoring_explanation_speaks_of_monitoring(cfg):
    row = lesion("a", **dict(LIVER, liver_capsule_distance_mm=3.0))
    r = rank_study(pd.DataFrame([row]), cfg).iloc[0]
    assert r["role"] == "monitor" and r["tier"] == "not_suitable"
    text = r["explanation"]
    assert text.startswith("Monitoring (itRECIST non-injected target): measurable, longest "
                           "diameter 25.0 mm >= 10 mm")
    assert "liver has no injected lesion" in text
    assert "not injected: subcapsular liver lesion (3 mm from capsule)" in text
    assert "Not suitable" not in text and "Recommended" not in text and "Discuss" not in text
    assert text.endswith(".") and ".." not in text
    # an eligible lesion left out only because the session is full says so
    cfg["injections_per_session"] = 1
    rows = [lesion("best", suv_max=12.0), lesion("second", suv_max=6.0)]
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    assert r.loc["second", "role"] == "monitor"
    assert "injection slots went to higher-ranked lesions" in r.loc["second", "explanation"]


def test_measurability_follows_recist_and_slice_thickness(cfg):
    from pipeline.ranking.select import recist_measurability

    mon = cfg["monitoring"]
    # 12 mm lesion: measurable on 5 mm slices (min 10 mm), not on 7 mm slices (min 14 mm)
    assert recist_measurability(lesion("a", longest_diameter_mm=12.0, ct_slice_spacing_mm=5.0),
                                mon)[:2] == ("target", 10.0)
    cat, mn, text = recist_measurability(lesion("a", longest_diameter_mm=12.0,
                                                ct_slice_spacing_mm=7.0), mon)
    assert (cat, mn) == ("non_target", 14.0)
    assert "max of 10 mm and 2 x 7 mm slice thickness" in text
    # the CT grid's slice spacing stands in for a missing SliceThickness
    assert recist_measurability(lesion("a", longest_diameter_mm=12.0, ct_slice_spacing_mm=7.0),
                                mon)[0] == "non_target"
    assert "slice thickness unknown" in recist_measurability(lesion("a", longest_diameter_mm=12.0), mon)[2]
    # nodes by short axis: >= 15 target, 10-15 pathological non-target, < 10 normal
    node = dict(organ="lymph_node", site="deep_node")
    assert recist_measurability(lesion("n", short_axis_mm=15.0, **node), mon)[0] == "target"
    assert recist_measurability(lesion("n", short_axis_mm=12.0, **node), mon)[0] == "pathological_node"
    assert recist_measurability(lesion("n", short_axis_mm=9.0, **node), mon)[0] == "normal_node"
    # thresholds are configuration
    mon["nonnodal_min_slice_multiple"] = 1.0
    assert recist_measurability(lesion("a", longest_diameter_mm=12.0, ct_slice_spacing_mm=7.0),
                                mon)[0] == "target"
    mon["nodal_pathological_min_short_axis_mm"] = 13.0
    assert recist_measurability(lesion("n", short_axis_mm=12.0, **node), mon)[0] == "normal_node"
    mon["nonnodal_min_slice_multiple"] = 2.0
    # in the ranking: the 12 mm lesion on 7 mm slices is not a monitoring target
    r = rank_study(pd.DataFrame([lesion("thick", longest_diameter_mm=12.0, short_axis_mm=11.0,
                                        ct_slice_spacing_mm=7.0, **LIVER)]), cfg).iloc[0]
    assert r["recist_category"] == "non_target" and r["measurable_min_mm"] == 14.0
    assert r["role"] != "monitor" and not r["measurable"]


def test_phantom_acceptance(cfg):
    r = rank_study(pd.DataFrame(PHANTOM001), cfg).set_index("lesion_id")
    assert (r["reasons"].str.len() > 0).all()
    for lid in ("liver_subcapsular", "lung_nodule_tiny", "necrotic_mass"):
        assert r.loc[lid, "tier"] != "recommended", lid
        assert r.loc[lid, "role"] != "inject", lid
    assert r.loc["liver_subcapsular", "tier"] == "not_suitable"
    assert r.loc["lung_nodule_tiny", "tier"] == "not_suitable"
    assert {"SIZE_LARGE", "NECROTIC"} <= set(r.loc["necrotic_mass", "reasons"].split(";"))
    assert r.loc["node_paraaortic", "tier"] == "board_review"
    assert "VESSEL_ABUT" in r.loc["node_paraaortic", "reasons"]
    assert r.loc["soft_tissue_flank", "rank"] < r.loc["liver_deep", "rank"]
    assert r.loc["node_axillary_r", "rank"] < r.loc["liver_deep", "rank"]
    inj = set(r.index[r.role == "inject"])
    mon = set(r.index[r.role == "monitor"])
    assert inj == {"soft_tissue_flank", "node_axillary_r"}
    assert inj.isdisjoint(mon) and 1 <= len(mon) <= 5
    assert r.loc[list(mon), "measurable"].all()
    assert r.loc[list(mon), "organ"].value_counts().max() <= 2
    inj_organs = set(r.loc[list(inj), "organ"])
    assert any(o not in inj_organs for o in r.loc[list(mon), "organ"])
    ranks = sorted(r["rank"].dropna().astype(int))
    assert ranks == list(range(1, len(ranks) + 1))
    assert r["rank"].isna().eq(r["tier"].eq("not_suitable")).all()


@pytest.mark.parametrize("organ,site,extra", [
    ("soft_tissue", "superficial_soft_tissue", {}),
    ("lymph_node", "superficial_node", {}),
])
def test_superficial_beats_deep_liver_at_equal_uptake(cfg, organ, site, extra):
    rows = [lesion("superficial", organ=organ, site=site, skin_depth_mm=10.0, suv_max=6.0, **extra),
            lesion("deep_liver", **LIVER, skin_depth_mm=90.0, suv_max=6.0)]
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    assert r.loc["superficial", "rank"] == 1 and r.loc["deep_liver", "rank"] == 2
    assert r.loc["superficial", "score"] > r.loc["deep_liver", "score"]


def test_rank_is_deterministic_under_row_order_and_ties(cfg):
    df = pd.DataFrame(PHANTOM001)
    a = rank_study(df, cfg)
    b = rank_study(df.iloc[::-1].reset_index(drop=True), cfg)
    pd.testing.assert_frame_equal(a, b)
    # exact ties (same measurements): lesion_id decides, whatever the row order
    twins = pd.DataFrame([lesion("b_twin"), lesion("a_twin")])
    r = rank_study(twins, cfg)
    assert r["lesion_id"].tolist() == ["a_twin", "b_twin"]


def test_missing_inputs_are_reported_not_guessed(cfg):
    df = pd.DataFrame([lesion("a", organ="unknown", site="deep_unknown",
                              organ_reason="no organ masks", **NO_PET)])
    r = rank_study(df, cfg).iloc[0]
    assert "VIABLE_PET" in r["rules_not_evaluated"] and "LOW_UPTAKE" in r["rules_not_evaluated"]
    assert "ORGAN_UNKNOWN" in r["reasons"]
    assert r["tier"] in ("board_review", "not_suitable")


def test_rule_columns_lists_what_producers_must_write(cfg):
    cols = set(rule_columns(cfg))
    expected = {
        "path_length_mm", "safe_path_found", "us_window", "aerated_lung_path_mm",
        "liver_capsule_distance_mm", "exophytic_fraction", "vessel_distance_mm", "vessel_name",
        "vessel_caliber_mm", "vessel_relation", "intravascular_fraction", "diaphragm_distance_mm",
        "lung_pleura_distance_mm", "suv_max", "suv_peak", "enhancement_hu", "necrosis_fraction",
        "noncontrast_cnr", "organ", "site", "new_or_growing", "critical_compression",
        "biopsy_required", "prior_locoregional_therapy", "longest_diameter_mm", "short_axis_mm",
        "skin_depth_mm", "organ_reason", "centroid_x_mm", "suv_peak_x_mm",
    }
    assert expected <= cols
    assert "needle_hit_probability" not in cols and "target_point_source" not in cols


def test_rule_frame_matches_rank_study(cfg):
    df = pd.DataFrame(PHANTOM001)
    fr = rule_frame(df, cfg).set_index("lesion_id")
    r = rank_study(df, cfg).set_index("lesion_id")
    pd.testing.assert_series_equal(fr["rule_rank"].astype("Int64"), r.loc[fr.index, "rank"],
                                   check_names=False)
    assert (fr["rule_score"] == r.loc[fr.index, "score"]).all()


def test_vessel_abut_message_gives_gap_and_voxel(cfg):
    row = lesion("a", organ="lymph_node", site="deep_node", vessel_distance_mm=1.5,
                 vessel_name="aorta", vessel_relation="abutting", vessel_caliber_mm=25.0,
                 vessel_abut_basis="under the voxel diagonal 2.9 mm (voxel 1.00 x 1.00 x 2.50 mm), "
                                   "no fat plane visible")
    o = outcome(row, cfg)
    assert "VESSEL_ABUT" in o.fired and o.tier.value == "board_review"
    msg = dict((c, m) for c, _, m in o.messages)["VESSEL_ABUT"]
    assert msg.startswith("abuts the aorta (measured gap 1.5 mm, under the voxel diagonal 2.9 mm "
                          "(voxel 1.00 x 1.00 x 2.50 mm), no fat plane visible), a major vessel")
    # proxy rows without the basis still read well
    o = outcome(lesion("a", vessel_distance_mm=0.0, vessel_name="aorta"), cfg)
    assert "abuts the aorta (measured gap 0.0 mm), a major vessel" in dict(
        (c, m) for c, _, m in o.messages)["VESSEL_ABUT"]


def test_noncontrast_conspicuity_is_not_switched_off_by_a_ct_ultrasound_window(cfg):
    """us_window is CT geometry (no bone or air on the path), not ultrasound visibility: a lesion
    with non-contrast CNR < 1 is flagged with or without it, and told to confirm visibility."""
    for window in (True, False, None):
        o = outcome(lesion("a", noncontrast_cnr=0.4, us_window=window), cfg)
        assert "NONCONTRAST_CONSPICUITY" in o.fired, window
        msg = dict((c, m) for c, _, m in o.messages)["NONCONTRAST_CONSPICUITY"]
        assert "confirm visibility on ultrasound or non-contrast CT" in msg
        # without a path for ultrasound guidance the board decides as well
        assert ("NONCONTRAST_NO_WINDOW" in o.fired) is (window is not True)
    assert "NONCONTRAST_CONSPICUITY" not in outcome(lesion("a", noncontrast_cnr=1.5), cfg).fired
