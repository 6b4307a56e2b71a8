"""Follow-up matching, growth and per-patient ranking (pipeline/ranking/longitudinal.py)."""

import json

import pandas as pd
import pytest
from ranking_rows import PHANTOM001, lesion

from pipeline.ranking.longitudinal import match_lesions, rank_patient


def kw(cfg):
    lc = cfg["longitudinal"]
    return dict(max_distance_mm=lc["max_match_distance_mm"], growth_min_pct=lc["growth_min_pct"],
                growth_min_abs_mm=lc["growth_min_abs_mm"])


def at(lid, x, y=0.0, z=0.0, **extra):
    return lesion(lid, centroid_x_mm=x, centroid_y_mm=y, centroid_z_mm=z, **extra)


def test_match_by_centroid_growth_and_new(cfg):
    prior = pd.DataFrame([at("a", 0, longest_diameter_mm=30, volume_ml=10),
                          at("b", 100, longest_diameter_mm=20, volume_ml=4),
                          at("c", 200, longest_diameter_mm=20)])
    current = pd.DataFrame([at("a2", 3, longest_diameter_mm=37, volume_ml=15),   # +23 %, +7 mm
                            at("b2", 104, longest_diameter_mm=22, volume_ml=4.4),  # +10 %
                            at("new", 300, longest_diameter_mm=12)])
    m = match_lesions(prior, current, **kw(cfg)).set_index("lesion_id")
    assert m.loc["a2", "prior_lesion_id"] == "a" and m.loc["a2", "match_method"] == "centroid"
    assert m.loc["a2", "match_distance_mm"] == pytest.approx(3.0)
    assert m.loc["a2", "longest_diameter_change_pct"] == pytest.approx(100 * 7 / 30)
    assert m.loc["a2", "volume_change_pct"] == pytest.approx(50.0)
    assert m.loc["a2", "new_or_growing"] is True and m.loc["a2", "is_new"] is False
    assert m.loc["b2", "new_or_growing"] is False
    assert m.loc["new", "is_new"] is True and m.loc["new", "new_or_growing"] is True
    assert m.loc["new", "prior_lesion_id"] == ""
    assert m.attrs["disappeared"] == ["c"]


def test_growth_thresholds_come_from_config(cfg):
    prior = pd.DataFrame([at("a", 0, longest_diameter_mm=12)])
    current = pd.DataFrame([at("a", 0, longest_diameter_mm=15)])  # +25 % but only +3 mm
    assert match_lesions(prior, current, **kw(cfg)).loc[0, "new_or_growing"] is False
    cfg["longitudinal"]["growth_min_abs_mm"] = 2.0
    assert match_lesions(prior, current, **kw(cfg)).loc[0, "new_or_growing"] is True
    cfg["longitudinal"]["growth_min_pct"] = 30.0
    assert match_lesions(prior, current, **kw(cfg)).loc[0, "new_or_growing"] is False


def test_match_distance_limit_and_one_to_one(cfg):
    prior = pd.DataFrame([at("a", 0), at("b", 10)])
    current = pd.DataFrame([at("x", 9), at("y", 1), at("far", 60)])
    m = match_lesions(prior, current, **kw(cfg)).set_index("lesion_id")
    assert m.loc["x", "prior_lesion_id"] == "b" and m.loc["y", "prior_lesion_id"] == "a"
    assert m.loc["far", "match_method"] == "none"
    cfg["longitudinal"]["max_match_distance_mm"] = 100.0
    prior1 = pd.DataFrame([at("a", 0)])
    m = match_lesions(prior1, pd.DataFrame([at("far", 60)]), **kw(cfg))
    assert m.loc[0, "prior_lesion_id"] == "a"


def test_match_by_tracking_uid_first(cfg):
    prior = pd.DataFrame([at("a", 0, tracking_uid="1.1"), at("b", 50, tracking_uid="1.2")])
    # lesion "a" moved 40 mm (beyond the distance limit) but keeps its tracking UID; a new lesion
    # with its own UID sits where "b" was but "b" is tracked elsewhere: no positional match
    current = pd.DataFrame([at("a", 40, tracking_uid="1.1"), at("b", 200, tracking_uid="1.2"),
                            at("n", 50, tracking_uid="1.9")])
    m = match_lesions(prior, current, **kw(cfg)).set_index("lesion_id")
    assert m.loc["a", "match_method"] == "tracking_uid" and m.loc["a", "prior_lesion_id"] == "a"
    assert m.loc["b", "prior_lesion_id"] == "b"
    assert m.loc["n", "is_new"] is True
    # UIDs generated per study (none shared): positions decide
    cur2 = pd.DataFrame([at("a", 2, tracking_uid="9.1")])
    m2 = match_lesions(prior, cur2, **kw(cfg))
    assert m2.loc[0, "match_method"] == "centroid" and m2.loc[0, "prior_lesion_id"] == "a"


def test_unplaceable_lesion_is_unknown_not_new(cfg):
    prior = pd.DataFrame([at("a", 0)])
    current = pd.DataFrame([at("x", None)])
    assert match_lesions(prior, current, **kw(cfg)).loc[0, "new_or_growing"] is None


def _two_studies():
    base = pd.DataFrame(PHANTOM001)
    follow = base.copy()
    follow["study_uid"] = "2.2"
    grow = follow["lesion_id"] == "liver_deep"
    follow.loc[grow, "longest_diameter_mm"] = 40.0
    follow.loc[grow, "short_axis_mm"] = 38.0
    new = dict(PHANTOM001[0], lesion_id="new_flank", lesion_label="new_flank",
               centroid_x_mm=-150.0, centroid_y_mm=80.0, centroid_z_mm=100.0, study_uid="2.2")
    return base, pd.concat([follow, pd.DataFrame([new])], ignore_index=True)


def test_rank_patient_uses_the_previous_study(cfg):
    base, follow = _two_studies()
    out = rank_patient([("2.2", "20240301", follow), ("1.2.3", "20240101", base)], cfg, sidecar=None)
    first = out["1.2.3"].set_index("lesion_id")
    second = out["2.2"].set_index("lesion_id")
    assert "NEW_OR_GROWING" in first.loc["liver_deep", "rules_not_evaluated"]
    assert "NEW_OR_GROWING" in second.loc["liver_deep", "reasons"]
    assert second.loc["liver_deep", "prior_lesion_id"] == "liver_deep"
    assert second.loc["liver_deep", "prior_study_uid"] == "1.2.3"
    assert second.loc["liver_deep", "longest_diameter_change_pct"] == pytest.approx(100 * (40 - 30.9) / 30.9)
    assert "NEW_OR_GROWING" in second.loc["new_flank", "reasons"]
    assert second.loc["soft_tissue_flank", "new_or_growing"] is False
    assert second.loc["liver_deep", "score"] > first.loc["liver_deep", "score"]


def test_undated_and_other_frame_studies_are_not_matched_by_position(cfg):
    base, follow = _two_studies()
    out = rank_patient([("1.2.3", "20240101", base), ("2.2", "", follow)], cfg)
    assert out["2.2"]["prior_study_uid"].eq("").all()
    assert any("study date unknown" in w for w in out["2.2"].attrs["warnings"])
    b = base.assign(frame_of_reference_uid="1.9.1")
    f = follow.assign(frame_of_reference_uid="1.9.2", tracking_uid="")
    out = rank_patient([("1.2.3", "20240101", b), ("2.2", "20240301", f)], cfg)
    r = out["2.2"].set_index("lesion_id")
    assert any("frame of reference" in w for w in out["2.2"].attrs["warnings"])
    assert r["prior_lesion_id"].eq("").all()


def _results_tree(tmp_path):
    """A results folder with two dated studies and one empty, undated study of patient P1."""
    base, follow = _two_studies()
    res = tmp_path / "results"
    for uid, df in (("1.2.3", base), ("2.2", follow)):
        d = res / "studies" / "P1" / uid
        d.mkdir(parents=True)
        df.to_csv(d / "lesions.csv", index=False)
    empty = res / "studies" / "P1" / "3.3"
    empty.mkdir()
    (empty / "lesions.csv").write_text("patient_id,study_uid,lesion_id,lesion_label\n")
    sheet = pd.DataFrame({"patient_id": ["P1"] * 3, "study_uid": ["1.2.3", "2.2", "3.3"],
                          "study_date": ["20240101", "20240301", ""],
                          "patient_dir": ["P1"] * 3, "study_dir": ["1.2.3", "2.2", "3.3"]})
    (res / "cohort").mkdir()
    sheet.to_csv(res / "cohort" / "studies.csv", index=False)
    return res, sheet, empty


def test_rank_step_uses_earlier_study_from_results(tmp_path, base_cfg):
    """The workflow's rank step (study.run_ranking) ranks a study with the patient's earlier one."""
    from pipeline.study import run_ranking

    res, sheet, empty = _results_tree(tmp_path)
    rows = {r["study_uid"]: r for r in sheet.to_dict(orient="records")}
    for uid in ("1.2.3", "2.2", "3.3"):
        run_ranking(res, rows[uid], sheet, base_cfg, res / "studies" / "P1" / uid)
    r2 = pd.read_csv(res / "studies" / "P1" / "2.2" / "ranking.csv", dtype={"study_uid": str})
    assert "NEW_OR_GROWING" in r2.set_index("lesion_id").loc["liver_deep", "reasons"]
    prov = json.loads((res / "studies" / "P1" / "2.2" / "ranking_provenance.json").read_text())
    assert prov["score_source"] == "rules" and prov["study_date"] == "20240301"
    assert prov["inputs"]["prior_studies"] == ["1.2.3"]
    r1 = pd.read_csv(res / "studies" / "P1" / "1.2.3" / "ranking.csv")
    assert "NEW_OR_GROWING" in r1.set_index("lesion_id").loc["liver_deep", "rules_not_evaluated"]
    assert pd.read_csv(empty / "ranking.csv").empty


def test_rank_step_cli(tmp_path, base_cfg, capsys):
    from pipeline.cli import main

    res, _, _ = _results_tree(tmp_path)
    assert main(["rank", "--results", str(res), "--patient-dir", "P1", "--study-dir", "2.2"]) == 0
    assert (res / "studies" / "P1" / "2.2" / "ranking.csv").is_file()
    assert "(prior studies: 1)" in capsys.readouterr().err
