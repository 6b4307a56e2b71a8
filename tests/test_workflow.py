"""Whole-workflow tests on phantom archives (marked slow; CI runs them).

One archive holds a good patient, a patient with truncated DICOM files and a patient whose PET
lacks the radiopharmaceutical sequence; the workflow must finish, keep the good patient's results
within the ground-truth tolerances, and report the two bad ones as the acceptance criteria say.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from pipeline.cli import REPO_ROOT
from pipeline.runner import run_workflow
from pipeline.testing.phantom import generate_cohort
from pipeline.testing.validation import truth_checks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Run the workflow once on a 3-patient archive with two damaged patients."""
    root = tmp_path_factory.mktemp("wf")
    archive = root / "archive"
    pats = generate_cohort(archive, n_patients=3, size="small", seed=7)
    good, trunc, nodose = pats
    # patient 2: truncate two CT files in the middle of their pixel data
    ct_files = sorted((trunc / "CT_contrast").glob("*.dcm"))
    truncated = [ct_files[3], ct_files[10]]
    for f in truncated:
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    # patient 3: PET without RadiopharmaceuticalInformationSequence
    for f in (nodose / "PET").glob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.RadiopharmaceuticalInformationSequence
        ds.save_as(f)
    results = root / "results"
    rc = run_workflow(archive, results, config_file=None, cores=2)
    assert rc == 0
    return {"archive": archive, "results": results, "good": good, "trunc": trunc,
            "nodose": nodose, "truncated": truncated}


def _truth(folder: Path) -> dict:
    return json.loads((folder / "truth.json").read_text())


def test_outputs_exist(batch):
    cohort = batch["results"] / "cohort"
    for name in ("lesions.csv", "lesions.parquet", "ranking.csv", "failures.csv", "studies.csv"):
        assert (cohort / name).exists(), name
    les = pd.read_csv(cohort / "lesions.csv")
    required = ["patient_id", "study_uid", "lesion_id", "lesion_label", "mask_source", "organ",
                "volume_ml", "longest_diameter_mm", "short_axis_mm", "max_3d_diameter_mm",
                "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "skin_depth_mm", "suv_max",
                "suv_mean", "suv_peak"]
    assert not set(required) - set(les.columns)
    rk = pd.read_csv(cohort / "ranking.csv")
    assert not {"role", "tier", "rank", "score", "reasons", "explanation"} - set(rk.columns)
    prov = list((batch["results"] / "studies").glob("*/*/provenance.json"))
    assert len(prov) == 3
    p = json.loads(prov[0].read_text())
    assert p["config_hash"] and p["versions"]["pydicom"] and p["stages"]
    assert all("wall_s" in s and "peak_rss_mb" in s for s in p["stages"])


def test_good_patient_matches_truth(batch):
    les = pd.read_csv(batch["results"] / "cohort" / "lesions.csv", dtype={"patient_id": str})
    truth = _truth(batch["good"])
    checks = truth_checks(les, truth)
    bad = [c for c in checks if not c.ok]
    assert not bad, "\n".join(str(c) for c in bad)
    assert len(checks) >= 5 * len(truth["lesions"])


def test_truncated_patient_is_reported_with_file(batch):
    fl = pd.read_csv(batch["results"] / "cohort" / "failures.csv", dtype=str, keep_default_na=False)
    names = {f.name for f in batch["truncated"]}
    hits = fl[fl["file"].apply(lambda p: Path(p).name in names)]
    assert len(hits) >= 2, fl.to_string()
    tid = _truth(batch["trunc"])["patient_id"]
    assert (fl["patient_id"] == tid).any() or hits["file"].str.contains(batch["trunc"].name).all()


def test_patient_without_dose_has_empty_suv_with_reason(batch):
    les = pd.read_csv(batch["results"] / "cohort" / "lesions.csv", dtype={"patient_id": str})
    pid = _truth(batch["nodose"])["patient_id"]
    rows = les[les["patient_id"] == pid]
    assert len(rows) == len(_truth(batch["nodose"])["lesions"])
    assert rows["suv_max"].isna().all() and rows["suv_peak"].isna().all()
    assert rows["suv_reason"].str.contains("RadiopharmaceuticalInformationSequence").all()


def test_ranking_reasons_and_tiers(batch):
    rk = pd.read_csv(batch["results"] / "cohort" / "ranking.csv", keep_default_na=False)
    assert len(rk) > 0
    assert (rk["reasons"].str.len() > 0).all()
    for label in ("liver_subcapsular", "lung_nodule_tiny"):
        sel = rk[rk["lesion_label"] == label]
        assert len(sel) >= 1
        assert (sel["tier"] != "recommended").all(), sel.to_string()


def test_rerun_is_stable(batch, tmp_path):
    """lesion_id is stable across reruns (a second results folder gives the same ids)."""
    results2 = tmp_path / "again"
    sub = tmp_path / "arch"
    sub.mkdir()
    # a copy, not a link: links pointing out of the archive root are not followed (issue 12)
    shutil.copytree(batch["good"], sub / batch["good"].name)
    assert run_workflow(sub, results2, config_file=None, cores=1) == 0
    a = pd.read_csv(batch["results"] / "cohort" / "ranking.csv", dtype=str)
    b = pd.read_csv(results2 / "cohort" / "ranking.csv", dtype=str)
    a = a[a["patient_id"] == _truth(batch["good"])["patient_id"]]
    assert sorted(a["lesion_id"]) == sorted(b["lesion_id"])
    assert (a.set_index("lesion_id")["tier"].sort_index()
            == b.set_index("lesion_id")["tier"].sort_index()).all()


def test_bad_config_rejected_before_any_job(tmp_path):
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO_ROOT / "Snakefile"),
           "--cores", "1", "--config", f"input={tmp_path}", f"output={out}", "bogus_key=1"]
    p = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    assert p.returncode != 0
    assert "bogus_key" in (p.stdout + p.stderr)
    assert not (out / "cohort").exists()
    cli = [sys.executable, "-m", "pipeline.cli", "run", "--input", str(tmp_path), "--output",
           str(out), "--set", "ranking.needle.base_error_mm=abc"]
    p = subprocess.run(cli, cwd=REPO_ROOT, capture_output=True, text=True)
    assert p.returncode == 2
    assert "ranking.needle.base_error_mm" in p.stderr
    assert not (out / "cohort").exists()


def test_slurm_profile_dry_run(tmp_path):
    """The SLURM profile parses and plans one study and one rank job per study (dry run)."""
    archive = tmp_path / "a"
    shutil.copytree(REPO_ROOT / "data_samples" / "archive", archive)
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--input", str(archive), "--output",
           str(tmp_path / "r"), "--profile", "configs/profiles/slurm", "--dry-run"]
    p = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout + p.stderr
    assert re.search(r"\bstudy\s+2\b", out) and re.search(r"\brank\s+2\b", out), out[-3000:]