"""Issue 12 acceptance: the provenance of a study that fails after its images were loaded still
records the SUV audit (unit repairs, plausibility refusals) and the resampling of its series.

A phantom whose CT has one slice moved 1.2 mm along z (irregular spacing: resampled, a
RESAMPLED note) and whose PET weight is given in grams (75000: a unit repair in the audit);
the study then fails at the masks (a lesion segmentation series without files) or in the
lesion stage (a feature error): provenance.json keeps the loaded series, the audit and the
warnings, and failures.csv the failure.
"""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest

from pipeline.config import load_config
from pipeline.errors import FeatureError
from pipeline.io.index import scan_archive
from pipeline.io.tables import read_table
from pipeline.sheet import build_study_sheet
from pipeline.study import run_study
from pipeline.testing import phantom


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("failprov")
    folder = phantom.generate_patient(root, patient_index=1, size="small", seed=0)
    cts = sorted((folder / "CT_contrast").glob("*.dcm"),
                 key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True)
                                     .ImagePositionPatient[2]))
    p = cts[len(cts) // 2]
    ds = pydicom.dcmread(p)
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 1.2]
    ds.save_as(p)
    for q in (folder / "PET").glob("*.dcm"):
        ds = pydicom.dcmread(q)
        ds.PatientWeight = 75000  # grams: repaired to 75 kg by the SUV audit
        ds.save_as(q)
    index = scan_archive(root)
    row = build_study_sheet(index).iloc[0].to_dict()
    return root, index, row


def _check_kept(prov: dict, row: dict) -> None:
    assert prov["status"] == "failed"
    audit = prov["suv_audit"]
    assert audit is not None, "the SUV audit of the loaded PET is lost"
    text = json.dumps(audit)
    assert "gram" in text.lower() or "75000" in text, text[:500]
    assert any("RESAMPLED" in w for w in prov["warnings"]), prov["warnings"]
    series = prov["inputs"]["series"]
    assert series.get("pet_series_uid") == row["pet_series_uid"]
    assert row["ct_series_uid"] in series.values() or row["ce_ct_series_uid"] in series.values()


def test_failure_at_the_masks_keeps_audit_and_resampling(archive, tmp_path):
    root, index, row = archive
    bad = dict(row, lesion_mask_ref="1.2.3.4.5.6.7.8.9")  # a SEG series without files
    prov = run_study(bad, index.files, root, load_config(), tmp_path / "out")
    _check_kept(prov, row)
    assert prov["failures"][-1]["stage"] == "segmentation"
    assert [s["stage"] for s in prov["stages"]] == ["load_images", "load_masks"]
    fails = read_table(tmp_path / "out" / "failures.csv")
    assert (fails["error_class"] == "SegmentationError").any()
    on_disk = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert on_disk["suv_audit"] == prov["suv_audit"]


def test_failure_in_the_lesion_stage_keeps_audit_and_resampling(archive, tmp_path, monkeypatch):
    from pipeline.features import stage as feature_stage

    root, index, row = archive

    def boom(*a, **k):
        raise FeatureError("synthetic feature failure", hint="test")

    monkeypatch.setattr(feature_stage, "lesion_columns", boom)
    prov = run_study(row, index.files, root, load_config(), tmp_path / "out")
    _check_kept(prov, row)
    assert prov["inputs"]["series"].get("lesion_mask") == row["lesion_mask_ref"]
    assert any(f["error_class"] == "FeatureError" for f in prov["failures"])


def test_done_study_provenance_unchanged(archive, tmp_path):
    root, index, row = archive
    prov = run_study(row, index.files, root, load_config(), tmp_path / "out")
    assert prov["status"] == "done", prov["failures"]
    assert prov["suv_audit"] is not None and prov["features"] is not None
    assert "suv_audit" not in prov["inputs"]["series"]
    assert any("RESAMPLED" in w for w in prov["warnings"])
    shutil.rmtree(tmp_path / "out")
