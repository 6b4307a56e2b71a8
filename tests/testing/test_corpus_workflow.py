"""The malformed-input corpus through the whole workflow (slow: one run, about 2 minutes).

Every case of :mod:`pipeline.testing.corpus` must end in its documented outcome; no case may crash
the batch or lose another study's results. Everything is checked in ONE test function so that
pytest-xdist never runs the workflow twice (module fixtures are per worker); the failures of
all cases are reported together.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from pipeline.testing.corpus import case_names, write_corpus

pytestmark = pytest.mark.slow

SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


def _run_corpus(tmp_path_factory):
    from pipeline.runner import run_workflow

    root = tmp_path_factory.mktemp("corpus")
    cases = write_corpus(root / "archive")
    results = root / "results"
    rc = run_workflow(root / "archive", results, config_file=None, cores=2)
    assert rc == 0
    cohort = results / "cohort"
    return {
        "cases": {c.name: c for c in cases},
        "results": results,
        "failures": pd.read_csv(cohort / "failures.csv", dtype=str, keep_default_na=False),
        "lesions": pd.read_csv(cohort / "lesions.csv", dtype=str, keep_default_na=False),
        "studies": pd.read_csv(cohort / "studies.csv", dtype=str, keep_default_na=False),
        "status": pd.read_csv(cohort / "status.csv", dtype=str, keep_default_na=False),
        "ranking": pd.read_csv(cohort / "ranking.csv", dtype=str, keep_default_na=False),
    }


def _check_documentation(run):
    from pipeline.testing import corpus

    assert len(run["cases"]) >= 30
    for name in run["cases"]:
        assert name in corpus.__doc__, f"case {name} missing from the module docstring table"


def _study_row(run, case) -> pd.Series:
    rows = run["studies"][run["studies"]["study_uid"] == case.study_uid]
    assert len(rows) == 1, f"{case.name}: {len(rows)} study-sheet rows"
    return rows.iloc[0]


def _failures(run, case) -> pd.DataFrame:
    f = run["failures"]
    return f[(f["study_uid"] == case.study_uid) | f["file"].str.contains(case.folder.name,
                                                                       regex=False)]


def _lesions(run, case) -> pd.DataFrame:
    return run["lesions"][run["lesions"]["study_uid"] == case.study_uid]


def _check_case(run, name):
    case = run["cases"][name]
    fails = _failures(run, case)
    if case.outcome == "error":
        hits = fails[fails["error_class"] == case.error_class]
        assert len(hits), f"{name}: no {case.error_class} in\n{fails.to_string()}"
        text = (hits["message"] + " " + hits["file"] + " " + hits["tag"]).str
        assert text.contains(case.message, regex=False).any(), hits.to_string()
        if name.startswith("truncated"):
            assert hits["file"].str.contains(case.folder.name, regex=False).any()
        return
    # load / warning: the study completed with every lesion and no failure record
    assert fails.empty, f"{name}:\n{fails.to_string()}"
    row = _study_row(run, case)
    st = run["status"]
    assert st[st["study_uid"] == case.study_uid]["status"].tolist() == ["done"], name
    les = _lesions(run, case)
    assert len(les) == case.expected_lesions, (name, len(les))
    empty = les["lesion_empty"].str.lower() == "true"
    assert int(empty.sum()) == case.expected_empty, (name, les["lesion_empty"].tolist())
    if empty.any():  # a declared segment without voxel: zeros, reasons, tier not_suitable
        assert (les.loc[empty, "volume_ml"].astype(float) == 0).all()
        assert (les.loc[empty, "suv_max"] == "").all()
        rk = run["ranking"][run["ranking"]["study_uid"] == case.study_uid]
        rk = rk[rk["lesion_id"].isin(les.loc[empty, "lesion_id"])]
        assert len(rk) == int(empty.sum()) and (rk["tier"] == "not_suitable").all(), rk
        assert rk["reasons"].str.contains("LESION_EMPTY").all()
    les = les[~empty]
    if case.where == "suv_reason":
        assert (les["suv_max"] == "").all()
        assert les["suv_reason"].str.contains(case.message, regex=False).all(), \
            les["suv_reason"].iloc[0]
    elif case.where == "notes":
        assert case.message in row["notes"], row["notes"]
    elif case.where == "provenance":
        prov = json.loads((run["results"] / "studies" / row["patient_dir"] / row["study_dir"]
                           / "provenance.json").read_text())
        assert case.message in " ".join(prov["warnings"]), prov["warnings"]
    elif case.where == "volume":
        from pipeline.io.dicom import load_ct
        from pipeline.io.index import read_index

        index = read_index(run["results"] / "index")
        uid = case.series["ct"]
        vol = load_ct(index.series_paths(uid), series_uid=uid)
        assert any(case.message in n for n in vol.notes), vol.notes
    if case.where != "suv_reason" and name not in ("ct_only", "pet_not_attenuation_corrected"):
        assert (les["suv_max"] != "").all(), name
    if case.same_suv_as_reference:
        ref = _lesions(run, run["cases"]["reference"]).set_index("lesion_label")["suv_max"]
        got = les.set_index("lesion_label")["suv_max"]
        rel = (got.astype(float) / ref.loc[got.index].astype(float) - 1).abs()
        assert rel.max() < 1e-4, rel.to_string()


def _check_unsafe_ids(run):
    res = run["results"].resolve()
    for name in ("unsafe_patient_id_dotdot", "unsafe_patient_id_unicode", "empty_patient_id",
                 "invalid_study_uid", "control_characters_in_patient_id"):
        row = _study_row(run, run["cases"][name])
        assert SAFE.match(row["patient_dir"]), row["patient_dir"]
        prov = (res / "studies" / row["patient_dir"] / row["study_dir"] / "provenance.json")
        assert prov.resolve().exists() and res in prov.resolve().parents
    assert not (run["results"].parent / "x").exists()


def _check_outputs_hold_no_hostile_identifier(run):
    """Every DICOM object written has valid UIDs (the invalid StudyInstanceUID was replaced);
    no page holds a control character (the PatientID with ESC / BEL)."""
    import pydicom

    from pipeline.io.sanitize import is_valid_uid

    bad = []
    for p in sorted(run["results"].rglob("*.dcm")):
        ds = pydicom.dcmread(p)

        def cb(_ds, elem, p=p):
            if elem.VR == "UI" and elem.value:
                vals = elem.value if isinstance(elem.value, (list, pydicom.multival.MultiValue)) \
                    else [elem.value]
                bad.extend(f"{p.relative_to(run['results'])}: {elem.keyword} {str(v)[:40]!r}"
                           for v in vals if not is_valid_uid(str(v)))
        ds.walk(cb)
    assert not bad, "\n".join(bad[:10])
    control = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
    pages = sorted(run["results"].rglob("*.html"))
    assert pages
    for p in pages:
        found = control.findall(p.read_text(encoding="utf-8"))
        assert not found, (p.relative_to(run["results"]), found[:5])


def _check_no_study_lost(run):
    """Every study of the sheet has its provenance; good cases are complete."""
    sheet, st = run["studies"], run["status"]
    assert len(sheet) == len(run["cases"])
    assert set(st["status"]) <= {"done", "failed"}
    for case in run["cases"].values():
        status = st[st["study_uid"] == case.study_uid]["status"].tolist()
        assert status == (["failed"] if case.outcome == "error" else ["done"]), case.name


def test_corpus_through_the_workflow(tmp_path_factory):
    run = _run_corpus(tmp_path_factory)
    problems = []
    for name in case_names():
        try:
            _check_case(run, name)
        except AssertionError as exc:
            problems.append(f"{name}: {exc}")
    for check in (_check_documentation, _check_unsafe_ids,
                  _check_outputs_hold_no_hostile_identifier, _check_no_study_lost):
        try:
            check(run)
        except AssertionError as exc:
            problems.append(f"{check.__name__}: {exc}")
    assert not problems, "\n\n".join(problems)
