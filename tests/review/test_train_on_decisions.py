"""``hitit train`` on decisions recorded through the app's API produces a model and a model card."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.review import store
from pipeline.review.app import create_app

pytestmark = pytest.mark.slow
TOKEN = "train-token"


def test_train_on_api_decisions(fresh_results, tmp_path):
    res = fresh_results
    client = create_app(res, reader="board", token=TOKEN).test_client()
    hdr = {"X-Review-Token": TOKEN, "Origin": "http://localhost", "Accept": "application/json"}
    sheet = store.read_study_sheet(res)
    n_calls = 0
    expected = {}
    for s in sheet:
        props = store.study_proposals(res, s["patient_id"], s["study_uid"])
        assert len(props) >= 5
        for i, (lid, p) in enumerate(sorted(props.items())):
            url = f"/study/{s['patient_id']}/{s['study_uid']}/decision"
            # first: accept the proposal; then the board's change (every other lesion swaps role)
            first = {"lesion_id": lid, "role": p.role.value, "category": p.category.value,
                     "planned_volume_ml": "" if p.planned_volume_ml is None else str(p.planned_volume_ml)}
            r = client.post(url, data=first, headers=hdr)
            assert r.status_code == 200, r.get_data(as_text=True)
            n_calls += 1
            if i % 2 == 0:
                role = "monitor" if p.role.value == "inject" else "inject"
                data = {"lesion_id": lid, "role": role, "category": "T-NI" if role == "monitor" else "T-I",
                        "planned_volume_ml": "1.5" if role == "inject" else "", "reason": f"board case {i}"}
                r = client.post(url, data=data, headers=hdr)
                assert r.status_code == 200, r.get_data(as_text=True)
                n_calls += 1
                expected[(s["patient_id"], s["study_uid"], lid)] = role
            else:
                expected[(s["patient_id"], s["study_uid"], lid)] = p.role.value
        r = client.post(f"/study/{s['patient_id']}/{s['study_uid']}/signoff", headers=hdr)
        assert r.status_code == 200
        n_calls += 1
    assert n_calls >= 24
    dec = pd.read_csv(store.decisions_path(res), dtype=str, keep_default_na=False)
    assert len(dec) == len(expected)
    got = {(r.patient_id, r.study_uid, r.lesion_id): r.role for r in dec.itertuples()}
    assert got == expected
    assert set(dec["chosen"]) == {"0", "1"}
    assert (dec["chosen"] == "1").tolist() == (dec["role"] == "inject").tolist()
    out = tmp_path / "model"
    assert main(["train", "--lesions", str(res / "cohort" / "lesions.csv"),
                 "--decisions", str(store.decisions_path(res)), "--out", str(out)]) == 0
    assert (out / "model.joblib").stat().st_size > 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["data"]["n_studies_used"] == len(sheet)
    assert card["data"]["n_patients_used"] == 2
    assert card["data"]["n_unmatched_decision_rows"] == 0
    assert card["synthetic"] is False
    assert "Inputs sha256" in (out / "model_card.md").read_text()
    # the app's roles: injection and monitoring learnt, compared with the rules on held-out patients
    roles = card["roles"]
    assert roles["n_studies"] == len(sheet) and roles["n_patients"] == 2
    assert sum(roles["team_roles"].values()) == len(expected)
    assert roles["team_roles"].get("monitor", 0) == sum(1 for v in expected.values() if v == "monitor")
    assert (out / "cv_roles.csv").is_file()
    assert card["rules_excluded"]["injection"]["n_team_injected"] == sum(1 for v in expected.values() if v == "inject")
