"""The corpus generator itself (fast): documentation table, UID remapping, a few cases."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from pipeline.testing import corpus
from pipeline.testing.corpus import case_names, write_corpus


def _table_rows() -> dict[str, dict]:
    lines = corpus.__doc__.splitlines()
    seps = [i for i, ln in enumerate(lines) if ln.startswith("====")]
    cols = []
    pos = 0
    for run in lines[seps[0]].split("  "):
        cols.append((pos, pos + len(run)))
        pos += len(run) + 2
    rows = {}
    for ln in lines[seps[1] + 1: seps[2]]:
        cells = [ln[a:b].strip() for a, b in cols]
        rows[cells[0]] = dict(zip(("outcome", "error_class", "message", "where"), cells[1:]))
    return rows


def test_docstring_table_matches_the_cases():
    rows = _table_rows()
    assert list(rows) == case_names() and len(rows) >= 30
    for name, expect, _ in corpus._CASES:
        r = rows[name]
        assert r["outcome"] == expect["outcome"], name
        assert r["error_class"] == expect.get("error_class", ""), name
        assert r["message"] == expect.get("message", ""), name
        assert r["where"] in (expect.get("where", ""), f"({expect.get('expected_lesions')} "
                              "lesions)"), name
        assert f"``{name}``" in corpus.__doc__  # described


@pytest.fixture(scope="module")
def some_cases(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    cases = write_corpus(out, only=["reference", "pet_units_gml", "enhanced_ct",
                                    "unsafe_patient_id_unicode"])
    return out, {c.name: c for c in cases}


def test_cases_are_distinct_studies_with_consistent_references(some_cases):
    out, cases = some_cases
    assert {p.name for p in out.iterdir()} == {c.folder.name for c in cases.values()} | {
        "corpus.json"}
    studies = {c.study_uid for c in cases.values()}
    assert len(studies) == len(cases)
    ref = cases["reference"]
    seg = pydicom.dcmread(ref.folder / "SEG_lesions.dcm", stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ref.series["ct"]
    assert seg.StudyInstanceUID == ref.study_uid and seg.PatientID == "CORPUS01"
    ct = [pydicom.dcmread(p, stop_before_pixels=True)
          for p in sorted((ref.folder / "CT_contrast").iterdir())]
    sops = {str(d.SOPInstanceUID) for d in ct}
    refs = {str(r.ReferencedSOPInstanceUID)
            for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs <= sops and len(sops) == 56
    uni = cases["unsafe_patient_id_unicode"]
    d = pydicom.dcmread(next((uni.folder / "PET").iterdir()), stop_before_pixels=True)
    assert d.PatientID == "Müller/患者 01" and uni.patient_id == d.PatientID
    listed = json.loads((out / "corpus.json").read_text())
    assert [c["name"] for c in listed] == [c for c in case_names() if c in cases]


def test_gml_case_and_enhanced_case_load(some_cases):
    from pipeline.io.dicom import load_ct, load_pet_activity
    from pipeline.io.suv import suv_audit, to_suv

    _, cases = some_cases
    ref, gml = cases["reference"], cases["pet_units_gml"]
    a0, h0 = load_pet_activity(sorted((ref.folder / "PET").iterdir()), series_uid=ref.series["pet"])
    a1, h1 = load_pet_activity(sorted((gml.folder / "PET").iterdir()), series_uid=gml.series["pet"])
    s0 = to_suv(a0, suv_audit(h0))
    s1 = to_suv(a1, suv_audit(h1))
    assert suv_audit(h1).suv_per_stored_unit == 1.0
    np.testing.assert_allclose(s1.array, s0.array, rtol=1e-6, atol=1e-6)
    enh = cases["enhanced_ct"]
    (f,) = [p for p in enh.folder.iterdir() if p.name.startswith("CT_contrast")]
    vol = load_ct([f], series_uid=enh.series["ct"])
    base = load_ct(sorted((ref.folder / "CT_contrast").iterdir()), series_uid=ref.series["ct"])
    assert vol.grid.same_as(base.grid)
    np.testing.assert_array_equal(vol.array, base.array)
