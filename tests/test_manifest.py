"""pipeline.manifest: the index step writes one input manifest per study, only when it changes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest

from pipeline.config import load_config
from pipeline.manifest import index_step, manifest_path
from pipeline.sheet import read_study_sheet, sheet_path

SAMPLE = Path(__file__).resolve().parent.parent / "data_samples" / "archive"


@pytest.fixture()
def indexed(tmp_path):
    archive = tmp_path / "archive"
    shutil.copytree(SAMPLE, archive)
    results = tmp_path / "results"
    first = index_step(load_config(), archive, results)
    sheet = read_study_sheet(sheet_path(results))
    paths = {r["patient_id"]: manifest_path(results, r["patient_dir"], r["study_dir"])
             for r in sheet.to_dict(orient="records")}
    return archive, results, first, paths


def _mtimes(paths):
    return {k: p.stat().st_mtime_ns for k, p in paths.items()}


def test_manifest_lists_every_input_file_with_size_and_mtime(indexed):
    archive, _, first, paths = indexed
    assert first["studies"] == 2 and first["manifests_written"] == 2
    m = json.loads(paths["PHANTOM001"].read_text())
    row = m["row"]
    for key in ("ct_series_uid", "pet_series_uid"):
        files = m["inputs"][row[key]]
        assert files and all(f["size"] == (archive / f["path"]).stat().st_size for f in files)
        assert all(f["mtime_ns"] == (archive / f["path"]).stat().st_mtime_ns for f in files)
    assert row["lesion_mask_ref"] in m["inputs"] or any(
        k.endswith(row["lesion_mask_ref"]) for k in m["inputs"])
    assert "patient_name" not in row


def test_only_the_changed_studys_manifest_is_rewritten(indexed):
    archive, results, _, paths = indexed
    for p in paths.values():
        os.utime(p, ns=(1, 1))
    again = index_step(load_config(), archive, results)
    assert again["manifests_written"] == 0 and again["manifests_unchanged"] == 2
    assert set(_mtimes(paths).values()) == {1}
    f = sorted((archive / "PHANTOM002").rglob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    ds.InstitutionName = "changed"
    ds.save_as(f)
    third = index_step(load_config(), archive, results)
    assert third["manifests_written"] == 1
    t = _mtimes(paths)
    assert t["PHANTOM001"] == 1 and t["PHANTOM002"] != 1
