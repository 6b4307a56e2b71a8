"""Injection and monitoring sets, planned volumes, output columns (pipeline/ranking/select.py)."""

import pandas as pd
import pytest
from ranking_rows import lesion

from pipeline.ranking.select import (
    RANKING_COLUMNS,
    planned_volume_ml,
    rank_study,
    syringe_note,
)

CONTRACT = ["patient_id", "study_uid", "lesion_id", "lesion_label", "role", "tier", "rank",
            "score", "reasons", "explanation"]


def good(lid, organ="soft_tissue", **kw):
    site = {"soft_tissue": "superficial_soft_tissue", "lymph_node": "superficial_node"}.get(
        organ, f"visceral:{organ}")
    extra = {"liver_capsule_distance_mm": 30.0} if organ == "liver" else {}
    if organ == "lung":
        extra = {"lung_pleura_distance_mm": 3.0}
    return lesion(lid, organ=organ, site=site, **{"skin_depth_mm": 10.0, **extra, **kw})


def test_output_contract_columns_come_first(cfg):
    r = rank_study(pd.DataFrame([good("a")]), cfg)
    assert list(r.columns) == RANKING_COLUMNS
    assert RANKING_COLUMNS[:10] == CONTRACT
    for c in ("target_x_mm", "target_y_mm", "target_z_mm", "target_point_source", "syringe_note"):
        assert c in r.columns
    empty = rank_study(pd.DataFrame(), cfg)
    assert list(empty.columns) == RANKING_COLUMNS and empty.empty


def test_organ_diversity_in_injection_set(cfg):
    df = pd.DataFrame([good("a1", suv_max=9), good("a2", suv_max=8.5),
                       lesion("b", organ="liver", site="visceral:liver", liver_capsule_distance_mm=30)])
    r = rank_study(df, cfg).set_index("lesion_id")
    assert r.loc["a2", "rank"] < r.loc["b", "rank"]
    assert set(r.index[r.role == "inject"]) == {"a1", "b"}
    cfg["organ_diversity"] = False
    r = rank_study(df, cfg).set_index("lesion_id")
    assert set(r.index[r.role == "inject"]) == {"a1", "a2"}


def test_injection_count_and_trial_limit(cfg):
    df = pd.DataFrame([good(f"l{i}", organ=o) for i, o in
                       enumerate(["soft_tissue", "lymph_node", "liver", "lung"])])
    cfg["injections_per_session"] = 3
    assert (rank_study(df, cfg)["role"] == "inject").sum() == 3
    limited = df.assign(max_injections=pd.array([1, None, None, None], dtype="Int64"))
    r = rank_study(limited, cfg)
    assert (r["role"] == "inject").sum() == 1
    assert any("at most 1 injection" in w for w in r.attrs["warnings"])


def test_only_injectable_tiers_are_injected(cfg):
    df = pd.DataFrame([lesion("board", vessel_distance_mm=0.0, vessel_name="aorta"),
                       lesion("excluded", safe_path_found=False)])
    r = rank_study(df, cfg).set_index("lesion_id")
    assert r.loc["board", "tier"] == "board_review" and r.loc["board", "role"] != "inject"
    assert r.loc["excluded", "tier"] == "not_suitable" and pd.isna(r.loc["excluded", "rank"])
    assert "no lesion is suitable for injection in this study" in rank_study(df, cfg).attrs["warnings"]


def test_monitoring_set_follows_itrecist(cfg):
    rows = [good("inj_soft", suv_max=12), good("inj_node", organ="lymph_node", suv_max=11,
                                               short_axis_mm=18)]
    # many measurable liver lesions (same organ), two lung, one node too small by short axis
    rows += [lesion(f"liver{i}", organ="liver", site="visceral:liver", liver_capsule_distance_mm=2,
                    longest_diameter_mm=20 + i) for i in range(4)]
    rows += [lesion(f"lung{i}", organ="lung", site="visceral:lung", lung_pleura_distance_mm=30,
                    longest_diameter_mm=15 + i) for i in range(2)]
    rows += [lesion("small_node", organ="lymph_node", site="deep_node", longest_diameter_mm=25,
                    short_axis_mm=12)]
    rows += [lesion("tiny", longest_diameter_mm=8, short_axis_mm=7)]
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    inj = set(r.index[r.role == "inject"])
    mon = list(r.index[r.role == "monitor"])
    assert inj == {"inj_soft", "inj_node"}
    assert 1 <= len(mon) <= cfg["monitoring"]["max_noninjected"]
    assert len(mon) + len(inj) <= cfg["monitoring"]["max_total_targets"]
    assert inj.isdisjoint(mon)
    assert r.loc[mon, "measurable"].all()
    assert r.loc[mon, "organ"].value_counts().max() <= cfg["monitoring"]["max_per_organ"]
    assert not r.loc["small_node", "measurable"]  # node measured by short axis (< 15 mm)
    assert not r.loc["tiny", "measurable"]
    # other organs than the injected ones are used first; largest liver lesions preferred
    assert set(r.loc[mon, "organ"]) == {"liver", "lung"}
    assert {"liver3", "liver2"} <= set(mon)
    assert "NOT_MEASURABLE" in r.loc["tiny", "reasons"]


def test_monitoring_prefers_another_organ_and_respects_limits(cfg):
    rows = [good("inj", suv_max=12), lesion("same_organ", site="deep_soft_tissue",
                                            longest_diameter_mm=40, skin_depth_mm=60,
                                            safe_path_found=False),
            lesion("other_organ", organ="liver", site="visceral:liver", longest_diameter_mm=15,
                   liver_capsule_distance_mm=2)]
    cfg["injections_per_session"] = 1
    cfg["monitoring"]["max_noninjected"] = 1
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    assert r.index[r.role == "monitor"].tolist() == ["other_organ"]


def test_previously_treated_lesions_are_not_monitoring_targets(cfg):
    rows = [good("inj", suv_max=12), lesion("treated", organ="liver", site="visceral:liver",
                                            liver_capsule_distance_mm=2,
                                            prior_locoregional_therapy=True)]
    cfg["injections_per_session"] = 1
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    assert r.loc["treated", "role"] == "none"
    cfg["monitoring"]["exclude_prior_locoregional"] = False
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    assert r.loc["treated", "role"] == "monitor"


def test_planned_volume_bounds_and_warnings(cfg):
    vol = cfg["volume"]
    for ld in (5, 10.5, 15, 20, 30, 45, 80, 200):
        pv, _ = planned_volume_ml(ld, 1000.0, vol)
        assert vol["min_ml"] <= pv <= vol["max_ml"]
    assert planned_volume_ml(12.0, 0.3, vol)[1].startswith("lesion volume 0.30 mL is too small")
    assert "smaller than the planned" in planned_volume_ml(30.0, 1.5, vol)[1]
    assert planned_volume_ml(30.0, 14.0, vol)[1] == ""
    # bands and bounds are configuration
    vol2 = {**vol, "max_ml": 1.5}
    assert planned_volume_ml(80.0, 100.0, vol2)[0] == 1.5


def test_injected_tiny_lesion_gets_volume_warning(cfg):
    cfg["injections_per_session"] = 1
    df = pd.DataFrame([good("small", longest_diameter_mm=10.5, short_axis_mm=9.5, volume_ml=0.4,
                            skin_depth_mm=5)])
    r = rank_study(df, cfg).iloc[0]
    assert r["role"] == "inject"
    assert r["planned_volume_ml"] == 0.5
    assert "too small for the minimum 0.5 mL" in r["volume_warning"]
    assert "VOLUME_WARNING" in r["reasons"] and "too small" in r["explanation"]
    assert any("too small" in w for w in rank_study(df, cfg).attrs["warnings"])


def test_syringe_note(cfg):
    note = syringe_note(2.0, biopsy=False, vol_cfg=cfg["volume"], needle_cfg=cfg["needle"])
    assert note == "2 mL: one Luer-lock syringe of at most 5 mL on a 22G needle"
    note = syringe_note(8.0, biopsy=True, vol_cfg=cfg["volume"], needle_cfg=cfg["needle"])
    assert "2 Luer-lock syringes of at most 5 mL" in note and "17-18G coaxial" in note
    cfg["volume"]["bands"] = [{"max_diameter_mm": 1000.0, "volume_ml": 8.0}]
    r = rank_study(pd.DataFrame([good("big", longest_diameter_mm=45, volume_ml=40)]), cfg)
    assert "2 Luer-lock syringes" in r.loc[0, "syringe_note"]
    assert r.loc[r.role != "inject", "syringe_note"].eq("").all()


def test_worksheet_reasons_column_wraps_instead_of_clipping():
    """The reasons/explanation cell wraps long text (long rule codes included) in the worksheet."""
    import re

    from pipeline.report.templates import CSS

    rules = {m.group(1).strip(): m.group(2) for m in re.finditer(r"([^{}]+)\{([^{}]*)\}", CSS)}
    cell = rules["td.expl > div"]
    assert "white-space: normal" in cell and "overflow-wrap: anywhere" in cell
    assert "nowrap" not in cell and "overflow: hidden" not in cell and "ellipsis" not in cell
    codes = rules["td.expl .codes, td.codes"]
    assert "white-space: normal" in codes and "overflow-wrap: anywhere" in codes


def test_session_volume_cap_applies_to_the_injection_set(cfg):
    # three superficial lesions; planned volumes by longest diameter: 45 and 40 mm -> 2 mL, 20 -> 1
    rows = [good("big", longest_diameter_mm=45, short_axis_mm=40, volume_ml=40, suv_max=12),
            good("mid", longest_diameter_mm=40, short_axis_mm=35, volume_ml=30, suv_max=11),
            good("small", longest_diameter_mm=20, short_axis_mm=18, volume_ml=4, suv_max=10)]
    cfg["injections_per_session"] = 2
    cfg["session"]["max_total_volume_ml"] = None
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    assert set(r.index[r.role == "inject"]) == {"big", "mid"}
    assert r.loc[r.role == "inject", "planned_volume_ml"].sum() == pytest.approx(4.0)
    # a 3 mL cap: big (2 mL) + mid (2 mL) = 4 mL is too much; the next fitting lesion (1 mL) joins
    cfg["session"]["max_total_volume_ml"] = 3.0
    res = rank_study(pd.DataFrame(rows), cfg)
    r = res.set_index("lesion_id")
    assert set(r.index[r.role == "inject"]) == {"big", "small"}
    assert r.loc[r.role == "inject", "planned_volume_ml"].sum() <= 3.0
    assert "SESSION_LIMIT" in r.loc["mid", "reasons"].split(";")
    msg = "session volume limit: planned 2 mL would bring the session to 4 mL, over the 3 mL per session"
    assert msg in r.loc["mid", "explanation"]
    assert any(w.startswith("mid: not injected this session; session volume limit") for w in res.attrs["warnings"])
    assert "SESSION_LIMIT" not in r.loc["small", "reasons"]


def test_session_organ_cap_counts_visceral_punctures(cfg):
    rows = [good("liver_a", organ="liver", longest_diameter_mm=30, suv_max=12, skin_depth_mm=20),
            good("kidney_a", organ="kidney", longest_diameter_mm=30, suv_max=12, skin_depth_mm=20),
            good("skin_a", longest_diameter_mm=30, suv_max=1.5, skin_depth_mm=20)]
    cfg["injections_per_session"] = 2
    cfg["session"]["max_organs_punctured"] = 2
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    inj = set(r.index[r.role == "inject"])
    assert inj == {"liver_a", "kidney_a"}, r[["role", "tier", "score"]]
    cfg["session"]["max_organs_punctured"] = 1
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    inj = set(r.index[r.role == "inject"])
    # one visceral organ; the (weaker) superficial lesion punctures none and takes the second slot
    assert "skin_a" in inj and len(inj & {"liver_a", "kidney_a"}) == 1
    left = ({"liver_a", "kidney_a"} - inj).pop()
    assert "SESSION_LIMIT" in r.loc[left, "reasons"]
    assert "session organ limit" in r.loc[left, "explanation"]


def test_nodal_stations_are_sites_and_diversity_has_a_score_margin(cfg):
    from pipeline.ranking.select import diversity_site

    node = dict(organ="lymph_node", site="superficial_node", skin_depth_mm=10.0)
    assert diversity_site(lesion("n1", lesion_label="node_axillary_R", **node)) == "lymph_node:axillary"
    assert diversity_site(lesion("n_inguinal_2", lesion_label="", **node)) == "lymph_node:inguinal"
    assert diversity_site(lesion("n7", lesion_label="node 7", **node)) == "lymph_node"
    assert diversity_site(lesion("s", organ="soft_tissue")) == "soft_tissue"
    rows = [lesion("ax1", lesion_label="node_axillary_R", suv_max=12, **node),
            lesion("ax2", lesion_label="node_axillary_L", suv_max=11, **node),
            lesion("ing", lesion_label="node_inguinal_L", suv_max=10, **node)]
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    # a second axillary node would be the next by rank; the inguinal station (same score) wins
    assert set(r.index[r.role == "inject"]) == {"ax1", "ing"}
    assert r.loc["ing", "diversity_site"] == "lymph_node:inguinal"
    # all nodal stations stay one organ for the monitoring limit per organ
    assert set(r["organ"]) == {"lymph_node"}
    # a much weaker lesion in a new site is not preferred over a strong one
    rows = [lesion("ax1", lesion_label="node_axillary_R", suv_max=12, **node),
            lesion("ax2", lesion_label="node_axillary_L", suv_max=11, **node),
            lesion("ing", lesion_label="node_inguinal_L", suv_max=10, necrosis_fraction=0.7,
                   **node)]
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    drop = r.loc["ax2", "score"] - r.loc["ing", "score"]
    assert drop > cfg["diversity_max_score_drop"]
    assert set(r.index[r.role == "inject"]) == {"ax1", "ax2"}
    cfg["diversity_max_score_drop"] = drop + 0.01  # a looser margin lets diversity pick it
    r = rank_study(pd.DataFrame(rows), cfg).set_index("lesion_id")
    assert set(r.index[r.role == "inject"]) == {"ax1", "ing"}
