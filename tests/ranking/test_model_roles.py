"""Learning the team's injection AND monitoring choices (decisions with a role column, as the
review app writes them), held-out agreement against the rules' own roles, and the count of team
choices the rules exclude. Synthetic decisions (pipeline/testing/decisions.py), seeded."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.ranking import model as rkmodel
from pipeline.ranking.rules import rule_frame
from pipeline.ranking.train_cli import register, rules_roles
from pipeline.testing.decisions import synthetic_lesions, synthetic_role_decisions

N_PATIENTS = 60


@pytest.fixture(scope="module")
def lesions():
    return synthetic_lesions(N_PATIENTS, seed=21, superficial_depth_mm=30.0)


@pytest.fixture(scope="module")
def expert(lesions, base_cfg):
    dec = synthetic_role_decisions(lesions, base_cfg["ranking"], policy="expert", seed=5)
    return dec, rkmodel.train(lesions, dec, base_cfg["ranking"], rules_roles=rules_roles(lesions, base_cfg["ranking"]))


def test_role_metrics_known_truth():
    team = np.array(["inject", "monitor", "monitor", "none", "none"])
    pred = np.array(["inject", "monitor", "none", "monitor", "none"])
    m = rkmodel.role_metrics(team, pred)
    assert m["role_agreement"] == pytest.approx(3 / 5)
    assert m["inject_jaccard"] == 1.0 and m["monitor_jaccard"] == pytest.approx(1 / 3)
    assert rkmodel.role_metrics(np.array(["none"]), np.array(["none"]))["monitor_jaccard"] == 1.0


def test_two_rankers_beat_the_rules_on_an_expert_team(expert):
    dec, (ranker, card, _) = expert
    roles = card["roles"]
    assert roles["n_studies"] == N_PATIENTS and roles["monitoring_model"]["trained"]
    assert ranker.monitor_ranker is not None and ranker.monitor_ranker.n_pairs_ > 0
    m = roles["cv"]["mean_of_folds"]
    # the expert monitors by SUV and size, the rules by organ diversity then size; the expert
    # injects by SUV and path length: on held-out patients the rankers follow the team better
    assert m["model_role_agreement"] > m["rules_role_agreement"] + 0.05
    assert m["model_inject_jaccard"] > m["rules_inject_jaccard"] + 0.1
    assert m["model_monitor_jaccard"] > m["rules_monitor_jaccard"]
    assert set(roles["team_roles"]) == {"inject", "monitor", "none"}


def test_rules_team_is_matched_exactly_by_the_rules(lesions, base_cfg):
    dec = synthetic_role_decisions(lesions, base_cfg["ranking"], policy="rules")
    _, card, _ = rkmodel.train(lesions, dec, base_cfg["ranking"], rules_roles=rules_roles(lesions, base_cfg["ranking"]))
    m = card["roles"]["cv"]["mean_of_folds"]
    assert m["rules_role_agreement"] == m["rules_inject_jaccard"] == m["rules_monitor_jaccard"] == 1.0
    assert m["model_role_agreement"] >= 0.8
    ex = card["rules_excluded"]
    assert ex["injection"]["n_rules_exclude"] == 0 and ex["monitoring"]["n_not_measurable"] == 0


def test_team_choices_the_rules_exclude_are_counted_per_rule(expert, lesions, base_cfg):
    dec, _ = expert
    cfg = base_cfg["ranking"]
    fr = rule_frame(lesions, cfg)
    excl = rkmodel.exclusion_codes(cfg)
    assert {"BRAIN"} <= excl
    # in 6 studies the team injects a lesion the rules call not_suitable instead of its choice
    bad = fr[~fr["eligible"]].drop_duplicates("study_uid").head(6)
    assert len(bad) == 6
    dec = dec.copy()
    for r in bad.itertuples():
        in_study = dec["study_uid"] == str(r.study_uid)
        dec.loc[in_study & (dec["role"] == "inject"), "role"] = "none"
        dec.loc[in_study & (dec["lesion_id"] == str(r.lesion_id)), "role"] = "inject"
    dec["chosen"] = (dec["role"] == "inject").astype(int)
    _, card, _ = rkmodel.train(lesions, dec, cfg, rules_roles=rules_roles(lesions, cfg))
    ex = card["rules_excluded"]["injection"]
    n_inj = int((dec["role"] == "inject").sum())
    assert ex["n_rules_exclude"] == 6 and ex["n_team_injected"] == n_inj
    assert ex["pct"] == pytest.approx(round(600 / n_inj, 2))
    want: dict = {}
    for f in bad["fired"]:
        codes = [c for c in f.split(";") if c in excl] or ["score below the board_review threshold"]
        for c in codes:
            want[c] = want.get(c, 0) + 1
    assert ex["by_rule"] == want
    assert {(x["study_uid"], x["lesion_id"]) for x in ex["lesions"]} == {
        (str(r.study_uid), str(r.lesion_id)) for r in bad.itertuples()}
    assert card["data"]["n_chosen_not_eligible"] == 6  # the injection CV's own count agrees


def test_cli_writes_role_results_and_says_so(expert, lesions, tmp_path, capsys):
    dec, _ = expert
    lp, dp, out = tmp_path / "lesions.csv", tmp_path / "decisions.csv", tmp_path / "m"
    lesions.to_csv(lp, index=False)
    dec.drop(columns=["synthetic", "policy"]).to_csv(dp, index=False)
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    args = ap.parse_args(["train", "--lesions", str(lp), "--decisions", str(dp), "--out", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "role agreement   model" in text and "monitored set" in text and "lesions the rules exclude" in text
    card = json.loads((out / "model_card.json").read_text())
    assert card["roles"]["cv"]["method"].startswith("GroupKFold by patient")
    md = (out / "model_card.md").read_text()
    assert "## Injection and monitoring choices on held-out patients" in md
    assert "## Team choices the rules exclude" in md
    cv = pd.read_csv(out / "cv_roles.csv", dtype={"patient_id": str})
    # held-out patients: each patient is tested in exactly one fold
    assert cv.groupby("patient_id")["fold"].nunique().max() == 1
    assert cv["patient_id"].nunique() == N_PATIENTS == len(cv)
    m = card["roles"]["cv"]["mean_of_folds"]
    folds = pd.DataFrame(card["roles"]["cv"]["folds"])
    assert m["model_role_agreement"] == pytest.approx(folds["model_role_agreement"].mean(), abs=1e-4)
    ranker = rkmodel.load_model(out / "model.joblib")
    assert ranker.monitor_ranker is not None and not hasattr(ranker, "role_cv_")
