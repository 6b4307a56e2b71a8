"""A rerun of the workflow steps over a results folder leaves RESULTS/review/ byte for byte alone."""

from __future__ import annotations

import hashlib
import json

import pytest

from pipeline.cli import main
from pipeline.review import store

pytestmark = pytest.mark.slow


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_rerun_keeps_review_folder(fresh_results):
    res = fresh_results
    s = store.read_study_sheet(res)[0]
    store.record_decision(res, reader="dr a", patient_id=s["patient_id"], study_uid=s["study_uid"],
                          lesion_id="liver_deep", role="none", category="NT-NI", reason="keep me")
    store.sign_off(res, reader="dr a", patient_id=s["patient_id"], study_uid=s["study_uid"])
    before = _digest(store.review_dir(res))
    assert {"decisions.csv", "audit.jsonl"} <= set(before)
    root = json.loads((res / "index" / "index.json").read_text())["root"]
    assert main(["index", "--input", root, "--output", str(res)]) == 0
    for r in store.read_study_sheet(res):
        args = ["--results", str(res), "--patient-dir", r["patient_dir"], "--study-dir", r["study_dir"]]
        assert main(["study", *args]) == 0
        assert main(["rank", *args]) == 0
    assert main(["cohort", "--results", str(res)]) == 0
    assert main(["report", "--results", str(res), "--no-sr"]) == 0
    assert _digest(store.review_dir(res)) == before
    assert store.load_state(res).lesions[(s["patient_id"], s["study_uid"], "liver_deep")].reason == "keep me"
