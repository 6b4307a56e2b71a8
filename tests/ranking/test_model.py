"""Retraining (pipeline/ranking/model.py, train_cli.py; pipeline/testing/decisions.py):
acceptance on synthetic decisions, model card, use in rank_study with the safety exclusions
kept. Seeded and fast."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from ranking_rows import PHANTOM001, lesion

from pipeline.errors import ConfigError
from pipeline.ranking import model as rkmodel
from pipeline.ranking.select import rank_study
from pipeline.ranking.train_cli import register
from pipeline.testing.cli import register as register_synthetic
from pipeline.testing.decisions import (
    expert_utility,
    synthetic_decisions,
    synthetic_lesions,
)

N_PATIENTS = 250  # 5-fold GroupKFold: 50 held-out patients per fold


@pytest.fixture(scope="module")
def lesions():
    return synthetic_lesions(N_PATIENTS, seed=11, superficial_depth_mm=30.0)


@pytest.fixture(scope="module")
def expert_run(lesions, base_cfg):
    dec = synthetic_decisions(lesions, base_cfg["ranking"], policy="expert", noise=0.2, seed=12)
    return dec, rkmodel.train(lesions, dec, base_cfg["ranking"])


def test_synthetic_tables_are_realistic_and_labelled(lesions, base_cfg):
    per_patient = lesions.groupby("patient_id").size()
    assert per_patient.min() >= 3 and per_patient.max() <= 10
    assert lesions["synthetic"].all()
    assert lesions["organ"].nunique() >= 8
    assert {"superficial_soft_tissue", "superficial_node", "visceral:liver", "visceral:lung"} <= set(lesions["site"])
    assert 15 < lesions["longest_diameter_mm"].median() < 30
    assert lesions["suv_max"].isna().any() and (lesions["suv_max"] < 2.5).any()
    assert lesions["path_length_mm"].isna().any() and lesions["path_length_mm"].notna().any()
    again = synthetic_lesions(N_PATIENTS, seed=11, superficial_depth_mm=30.0)
    pd.testing.assert_frame_equal(lesions, again)
    dec = synthetic_decisions(lesions.head(40), base_cfg["ranking"], policy="rules")
    assert dec["synthetic"].all() and set(dec["policy"]) == {"rules"}
    assert (dec.groupby("study_uid")["chosen"].sum() <= 1).all()


def test_model_beats_rules_on_a_different_policy(expert_run, lesions, base_cfg):
    dec, (ranker, card, per_study) = expert_run
    m = card["cv"]["mean_of_folds"]
    assert m["model_top1"] >= 0.9
    # close to the ceiling set by the expert's noise: the hidden utility itself, noise-free
    fr = rkmodel.training_table(lesions, dec, base_cfg["ranking"])
    u = expert_utility(fr)
    el, rel, lid = fr["eligible"].to_numpy(), fr["relevance"].to_numpy(), fr["lesion_id"].to_numpy()
    oracle = np.mean([rkmodel.study_metrics(rel[i], rkmodel.ranked_order(el[i], u[i], lid[i], higher_first=True), 3)[0]
                      for i in fr[fr["used"]].groupby("study_key").indices.values()])
    assert m["model_top1"] >= oracle - 0.05
    assert m["model_top1"] > m["rules_top1"]
    assert m["model_ndcg@3"] > m["rules_ndcg@3"]
    assert len(card["cv"]["folds"]) == 5
    # folds are grouped by patient: no patient in two folds
    assert per_study.groupby("patient_id")["fold"].nunique().max() == 1
    # the learnt utility points the way of the hidden one (SUV up, depth down)
    coef = card["coefficients"]
    assert coef["num__suv_max"] > 0 and coef["num__path_length_mm"] < 0


def test_model_matches_rules_on_rule_decisions(lesions, base_cfg):
    dec = synthetic_decisions(lesions, base_cfg["ranking"], policy="rules", seed=13)
    _, card, _ = rkmodel.train(lesions, dec, base_cfg["ranking"])
    m = card["cv"]["mean_of_folds"]
    assert m["rules_top1"] == 1.0
    assert m["model_top1"] >= m["rules_top1"] - 0.05


def test_model_card_contents(expert_run, lesions):
    dec, (ranker, card, _) = expert_run
    assert card["synthetic"] is True and "SYNTHETIC" in card["title"]
    assert "expert" in card["synthetic_note"]
    assert len(card["inputs"]["lesions"]["sha256"]) == 64
    assert len(card["inputs"]["combined_sha256"]) == 64
    assert set(card["versions"]) >= {"python", "scikit-learn", "numpy", "pandas"}
    for f in card["cv"]["folds"]:
        assert set(f) >= {"fold", "n_patients", "model_top1", "rules_top1", "model_ndcg@3", "rules_ndcg@3"}
    assert "suv_max" in card["features"]["numeric"] and "organ" in card["features"]["categorical"]
    assert any(n.startswith("num__missingindicator_") for n in card["features"]["transformed"])
    md = rkmodel.model_card_markdown(card)
    assert md.startswith("# SYNTHETIC") and "| **mean** |" in md


def test_save_load_and_rank_with_model(expert_run, tmp_path, base_cfg):
    _, (ranker, card, per_study) = expert_run
    paths = rkmodel.save_model(ranker, card, tmp_path, per_study)
    assert json.loads(paths["card_json"].read_text())["synthetic"] is True
    assert paths["card_md"].read_text().startswith("# SYNTHETIC")
    loaded = rkmodel.load_model(paths["model"], base_cfg["ranking"])
    df = pd.DataFrame(PHANTOM001)
    np.testing.assert_allclose(loaded.decision_function(df.assign(rule_score=0.5)),
                               ranker.decision_function(df.assign(rule_score=0.5)))
    cfg = dict(base_cfg["ranking"], model=str(paths["model"]))
    # a hot, superficial but subcapsular liver lesion: the SUV-loving model would put it first,
    # the hard exclusion keeps it out of the ranking and the injection set
    tempting = lesion("tempting", organ="liver", site="visceral:liver", skin_depth_mm=5,
                      suv_max=25.0, liver_capsule_distance_mm=1.0)
    table = pd.concat([df, pd.DataFrame([tempting])], ignore_index=True)
    r = rank_study(table, cfg).set_index("lesion_id")
    assert r["score_source"].eq("model:pairwise-logistic").all()
    assert r.loc["tempting", "tier"] == "not_suitable" and pd.isna(r.loc["tempting", "rank"])
    assert r.loc["tempting", "role"] != "inject"
    assert pd.isna(r.loc["tempting", "score"]) and r.loc["tempting", "rule_score"] > 0
    ranked = r.dropna(subset=["rank"])
    assert ranked["score"].sum() == pytest.approx(1.0, abs=1e-4)  # softmax over eligible
    assert (ranked.sort_values("rank")["score"].diff().dropna() <= 1e-9).all()
    assert set(r.index[r.tier == "not_suitable"]) == {"tempting", "liver_subcapsular", "lung_nodule_tiny"}
    # board_review lesions keep their tier: never injected even if the model ranks them high
    assert not r.loc[r.tier == "board_review", "role"].eq("inject").any()


def test_decisions_with_chosen_rank_and_errors(lesions, base_cfg):
    small = lesions[lesions["patient_id"].isin(sorted(lesions["patient_id"].unique())[:30])]
    dec = synthetic_decisions(small, base_cfg["ranking"], policy="expert", n_chosen=3, seed=1)
    assert dec["chosen_rank"].max() == 3
    fr = rkmodel.training_table(small, dec.drop(columns="chosen"), base_cfg["ranking"])
    g = fr[fr["used"]].groupby("study_key")["relevance"].max()
    assert set(g.unique()) <= {1.0, 2.0, 3.0} and g.max() == 3.0
    with pytest.raises(ConfigError, match="chosen"):
        rkmodel.training_table(small, dec.drop(columns=["chosen", "chosen_rank"]), base_cfg["ranking"])
    with pytest.raises(ConfigError, match="lesion_id"):
        rkmodel.training_table(small, dec.drop(columns="lesion_id"), base_cfg["ranking"])


def test_metrics():
    rel = np.array([0.0, 1.0, 0.0])
    assert rkmodel.study_metrics(rel, np.array([1, 0, 2]), 3) == (1.0, 1.0)
    top1, ndcg = rkmodel.study_metrics(rel, np.array([0, 1]), 3)
    assert top1 == 0.0 and ndcg == pytest.approx(1 / np.log2(3))
    # the chosen lesion is not ranked (not eligible): a miss
    assert rkmodel.study_metrics(rel, np.array([0, 2]), 3) == (0.0, 0.0)
    order = rkmodel.ranked_order(np.array([True, True, False]), np.array([1.0, 1.0, 9.0]),
                                 np.array(["b", "a", "c"]), higher_first=True)
    assert order.tolist() == [1, 0]


def test_cli_train_and_synthetic(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="hitit")
    sub = parser.add_subparsers(dest="cmd", required=True)
    register(sub)
    register_synthetic(sub)
    a = parser.parse_args(["synthetic", "--out", str(tmp_path / "syn"), "--patients", "30"])
    assert a.func(a) == 0
    les = pd.read_csv(tmp_path / "syn" / "lesions.csv")
    assert les["synthetic"].all()
    a = parser.parse_args(["train", "--lesions", str(tmp_path / "syn" / "lesions.csv"),
                           "--decisions", str(tmp_path / "syn" / "decisions.csv"),
                           "--out", str(tmp_path / "model")])
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "top-1 agreement" in out
    for f in ("model.joblib", "model_card.json", "model_card.md", "cv_results.csv"):
        assert (tmp_path / "model" / f).is_file()
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    import hashlib
    assert card["inputs"]["lesions"]["sha256"] == hashlib.sha256(
        (tmp_path / "syn" / "lesions.csv").read_bytes()).hexdigest()
