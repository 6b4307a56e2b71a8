"""Fixtures of the review-app tests.

``phantom_results``: a results folder made once per session from the two committed sample
patients (index, study, rank, cohort steps in-process, as the Snakefile calls them); the study
job writes the viewer's image cache of every study (``review.image_cache`` is true by
default). Shared by pytest-xdist workers through a file lock.
``chromium``: Debian's chromium via the report tests' DevTools driver (skips when unavailable).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_samples" / "archive"
sys.path.insert(0, str(REPO / "tests" / "report"))  # chromium_cdp, the project's DevTools driver


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_phantom_results(root: Path) -> Path:
    """Sample archive -> results (two patients) with review image caches; returns the results path."""
    from pipeline.cli import main

    archive, results = root / "archive", root / "results"
    shutil.copytree(SAMPLES, archive)
    assert main(["index", "--input", str(archive), "--output", str(results)]) == 0
    sheet = pd.read_csv(results / "cohort" / "studies.csv", dtype=str, keep_default_na=False)
    for r in sheet.itertuples():
        args = ["--results", str(results), "--patient-dir", r.patient_dir, "--study-dir", r.study_dir]
        assert main(["study", *args]) == 0
        assert main(["rank", *args]) == 0
    assert main(["cohort", "--results", str(results)]) == 0
    return results


@pytest.fixture(scope="session")
def phantom_results(tmp_path_factory, worker_id) -> Path:
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if worker_id != "master" else base) / "hitit-review-shared"
    with _lock(shared.parent / "hitit-review-shared.lock"):
        done = shared / "done.json"
        if not done.exists():
            if shared.exists():
                shutil.rmtree(shared)
            shared.mkdir(parents=True)
            res = build_phantom_results(shared)
            done.write_text(json.dumps({"results": str(res)}))
    return Path(json.loads(done.read_text())["results"])


@pytest.fixture
def fresh_results(phantom_results, tmp_path) -> Path:
    """A private copy of the phantom results (tests that record decisions)."""
    dst = tmp_path / "results"
    shutil.copytree(phantom_results, dst)
    return dst


@pytest.fixture(scope="session")
def chromium():
    from chromium_cdp import ensure_chromium

    exe, reason = ensure_chromium()
    if exe is None:
        pytest.skip(f"headless Chromium unavailable: {reason}")
    return exe
