"""The review outputs of the workflow (workflow/rules/rank.smk and report.smk): the worksheet and
dashboard are produced by the workflow, run by hand as the Snakefile's header says (`hitit
index`, then snakemake), and `snakemake --report` embeds them with their captions."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Not imported from conftest: with several conftest modules on the path the name is ambiguous.
REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_samples" / "archive"
GOOD = "PHANTOM001"

pytestmark = pytest.mark.slow


def test_workflow_report_rules_and_snakemake_report(tmp_path):
    archive, out = tmp_path / "archive", tmp_path / "results"
    shutil.copytree(SAMPLES / GOOD, archive / GOOD)
    index = subprocess.run([sys.executable, "-m", "pipeline.cli", "index", "--input", str(archive),
                            "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert index.returncode == 0, index.stderr[-3000:]
    base = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
            str(out), "--config", f"input={archive}", f"output={out}"]
    target = str(out / "report" / "index.html")
    run = subprocess.run(base + ["--cores", "2", target],
                         check=False, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    studies = list((out / "studies" / GOOD).iterdir())
    assert len(studies) == 1
    d = studies[0]
    assert (d / "worksheet.html").exists() and (d / "measurements_sr.dcm").exists()
    assert (d / "keyimages" / "index.json").exists()
    html = (d / "worksheet.html").read_text()
    assert html.count("<img") >= 9  # 8 lesions + MIP
    rep = subprocess.run(base + ["--report", str(tmp_path / "report.html"), target],
                         check=False, capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    page = (tmp_path / "report.html").read_text(errors="replace")
    assert '"Worksheets"' in page and '"Cohort"' in page  # the categories
    assert "Pre-procedure worksheet of patient" in page  # the worksheet caption
    assert "Cohort dashboard: every study" in page  # the dashboard caption
    assert (tmp_path / "report.html").stat().st_size > 500_000  # the pages are embedded
