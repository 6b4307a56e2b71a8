"""Fixtures of the review-output tests.

``results``: a results folder made once per test session (shared by the pytest-xdist workers
through a file lock) from the committed sample archive, with one good patient and one whose
contrast CT has two truncated files (its study fails). The workflow steps are run in-process
through the same ``hitit`` step commands the Snakefile calls, then the review outputs
(:func:`pipeline.report.run.build_reports`: key images, worksheets, SR, dashboard).

``chromium``: Debian's chromium, installed with apt-get when missing (skips with the reason
only when that is impossible). ``dciodvfy``: dicom3tools' DICOM validator, likewise.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "data_samples" / "archive"
GOOD, BAD = "PHANTOM001", "PHANTOM002"


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _shared(tmp_path_factory, worker_id: str) -> Path:
    base = tmp_path_factory.getbasetemp()
    return (base.parent if worker_id != "master" else base) / "hitit-report-shared"


def build_results(root: Path) -> dict:
    """Archive (good + truncated patient) -> index, study, rank, cohort -> review outputs."""
    from pipeline.cli import main
    from pipeline.report.run import build_reports

    archive, results = root / "archive", root / "results"
    for p in (GOOD, BAD):
        shutil.copytree(SAMPLES / p, archive / p)
    cts = sorted((archive / BAD / "CT_contrast").glob("*.dcm"))
    truncated = [cts[3], cts[10]]
    for f in truncated:
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    t0 = time.perf_counter()
    assert main(["index", "--input", str(archive), "--output", str(results)]) == 0
    sheet = pd.read_csv(results / "cohort" / "studies.csv", dtype=str, keep_default_na=False)
    for r in sheet.itertuples():
        args = ["--results", str(results), "--patient-dir", r.patient_dir, "--study-dir", r.study_dir]
        assert main(["study", *args]) == 0
        assert main(["rank", *args]) == 0
    assert main(["cohort", "--results", str(results)]) == 0
    t1 = time.perf_counter()
    out = build_reports(results)
    info = {"archive": str(archive), "results": str(results),
            "truncated": [str(f.relative_to(archive)) for f in truncated],
            "workflow_s": round(t1 - t0, 1), "report_s": round(time.perf_counter() - t1, 1),
            "report": out}
    (root / "info.json").write_text(json.dumps(info, indent=2))
    return info


@pytest.fixture(scope="session")
def results(tmp_path_factory, worker_id):
    """Info dict of the shared results folder (see module docstring)."""
    shared = _shared(tmp_path_factory, worker_id)
    with _lock(shared.parent / "hitit-report-shared.lock"):
        info_path = shared / "info.json"
        if not info_path.exists():
            if shared.exists():
                shutil.rmtree(shared)
            shared.mkdir(parents=True)
            build_results(shared)
        info = json.loads(info_path.read_text())
    info = {k: (Path(v) if k in ("archive", "results") else v) for k, v in info.items()}
    sheet = pd.read_csv(info["results"] / "cohort" / "studies.csv", dtype=str, keep_default_na=False)
    for r in sheet.itertuples():
        key = "good" if r.patient_id == GOOD else "bad"
        info[key] = info["results"] / "studies" / r.patient_dir / r.study_dir
    return info


@pytest.fixture(scope="session")
def chromium():
    """Path of Debian's chromium (installed by apt-get when missing and we are root)."""
    from chromium_cdp import ensure_chromium

    exe, reason = ensure_chromium()
    if exe is None:
        pytest.skip(f"headless Chromium unavailable: {reason}")
    return exe


def ensure_debian_tool(executable: str, package: str, timeout_s: float = 900.0) -> tuple[str | None, str]:
    """Path of a command-line tool, installing its Debian package with apt-get when missing.

    Returns
    -------
    (path, "") or (None, reason) - the reason says why the tool is unavailable (not root, no
    apt-get, the install failed).
    """
    import os
    import subprocess
    import tempfile

    found = shutil.which(executable)
    if found:
        return found, ""
    if os.geteuid() != 0:
        return None, f"{executable} is not installed and the tests are not running as root"
    if not shutil.which("apt-get"):
        return None, f"{executable} is not installed and apt-get is not available"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # pytest-xdist workers may get here together: one installs, the others wait on the lock
    with _lock(Path(tempfile.gettempdir()) / f"hitit-apt-{package}.lock"):
        try:
            if not shutil.which(executable):
                for cmd in (["apt-get", "update"],
                            ["apt-get", "install", "-y", "--no-install-recommends", package]):
                    res = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True,
                                         timeout=timeout_s)
                    if res.returncode != 0:
                        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
                        return None, f"`{' '.join(cmd)}` failed: {' | '.join(tail)}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"installing {package} failed: {exc}"
    found = shutil.which(executable)
    if found:
        return found, ""
    return None, f"apt-get install {package} finished but {executable} is not on PATH"


@pytest.fixture(scope="session")
def dciodvfy():
    """Path of dicom3tools' ``dciodvfy`` (Debian package installed by apt-get when missing)."""
    exe, reason = ensure_debian_tool("dciodvfy", "dicom3tools")
    if exe is None:
        pytest.skip(f"dciodvfy (dicom3tools) unavailable: {reason}")
    return exe
