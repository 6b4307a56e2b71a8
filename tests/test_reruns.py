"""Reruns into the same RESULTS pick up every change and nothing else (whole workflow, slow).

After a complete run of two phantom patients: (a) a ranking setting reruns only rank (with the
worksheet), cohort and dashboard and changes ranking.csv; (b) a feature setting reruns the
studies; (c) an added patient is processed and the others are not rerun; (d) a removed patient
disappears from the cohort tables; (e) a modified DICOM file reruns its study only. Which jobs
ran is read from Snakemake's own "Job stats" table in the run's log.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from pipeline.runner import run_workflow
from pipeline.testing.phantom import generate_patient

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _jobs(results: Path) -> dict[str, int]:
    """Jobs of the newest run, by rule, from its Snakemake log ({} when nothing was done)."""
    log = max((results / "logs" / "snakemake").glob("*.log"), key=lambda p: p.stat().st_mtime_ns)
    text = log.read_text()
    if "Nothing to be done" in text:
        return {}
    block = text.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    out = {}
    for line in block.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            out[m.group(1)] = int(m.group(2))
    return out


def _run(archive: Path, results: Path, **sets) -> dict[str, int]:
    ov = {}
    for key, value in sets.items():
        node = ov
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    assert run_workflow(archive, results, config_file=None, cores=2, overrides=ov) == 0
    return _jobs(results)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("reruns")
    archive = root / "archive"
    shutil.copytree(REPO / "data_samples" / "archive", archive)
    results = root / "results"
    first = _run(archive, results)
    assert first["study"] == 2 and first["rank"] == 2
    return root, archive, results


def _injected_per_study(results: Path) -> list[int]:
    rk = pd.read_csv(results / "cohort" / "ranking.csv", dtype=str)
    return rk[rk["role"] == "inject"].groupby("study_uid").size().tolist()


def test_reruns_pick_up_every_change_and_nothing_else(done):
    root, archive, results = done
    assert _run(archive, results) == {}  # nothing changed: nothing runs
    assert _injected_per_study(results) == [2, 2]

    # (a) a ranking setting: rank (+ worksheet), cohort and dashboard only
    jobs = _run(archive, results, ranking__injections_per_session=1)
    assert jobs == {"rank": 2, "cohort": 1, "report_dashboard": 1, "all": 1}
    assert _injected_per_study(results) == [1, 1]

    # (b) a feature setting reruns the studies (and what depends on them)
    jobs = _run(archive, results, ranking__injections_per_session=1,
                features__pet__mtv_absolute_suv=3.0)
    assert jobs.get("study") == 2 and jobs.get("rank") == 2
    keep = dict(ranking__injections_per_session=1, features__pet__mtv_absolute_suv=3.0)

    # (e) one modified DICOM file reruns its study only
    f = sorted((archive / "PHANTOM001").rglob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    ds.InstitutionName = "edited after the first run"
    ds.save_as(f)
    jobs = _run(archive, results, **keep)
    assert jobs.get("study") == 1 and jobs.get("rank") == 1
    prov = pd.read_csv(results / "cohort" / "status.csv", dtype=str)
    assert set(prov["status"]) == {"done"}

    # (c) an added patient is processed, the others are not rerun
    generate_patient(archive, 3, "small", 0)
    jobs = _run(archive, results, **keep)
    assert jobs.get("study") == 1 and jobs.get("rank") == 1
    assert len(set(pd.read_csv(results / "cohort" / "ranking.csv", dtype=str)["patient_id"])) == 3

    # (d) a removed patient leaves the cohort tables; nothing is recomputed for the others
    shutil.rmtree(archive / "PHANTOM002")
    jobs = _run(archive, results, **keep)
    assert "study" not in jobs and "rank" not in jobs
    for table in ("lesions", "ranking"):
        ids = set(pd.read_csv(results / "cohort" / f"{table}.csv", dtype=str)["patient_id"])
        assert "PHANTOM002" not in ids and "PHANTOM001" in ids, table
