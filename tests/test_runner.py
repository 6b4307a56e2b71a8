"""``pipeline.runner``: one run per RESULTS, signals forwarded, resumable after SIGKILL."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline import runner
from pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data_samples" / "archive"


def _hold_lock(results: str, ready, release) -> None:
    lock = runner.RunLock(Path(results)).acquire()
    ready.set()
    release.wait(30)
    lock.release()


def test_second_run_on_the_same_results_is_refused_and_lock_dies_with_its_holder(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(20)
    with pytest.raises(runner.RunLockedError, match=f"pid {holder.pid}"):
        runner.RunLock(tmp_path).acquire()
    os.kill(holder.pid, signal.SIGKILL)  # a killed run leaves no lock behind
    holder.join(10)
    with runner.RunLock(tmp_path) as lock:
        assert f"pid {os.getpid()}" in lock.path.read_text()


def test_profile_paths_resolve_from_the_users_folder_or_the_bundle(tmp_path, monkeypatch):
    mine = tmp_path / "lab" / "profile"
    mine.mkdir(parents=True)
    (mine / "config.yaml").write_text("jobs: 2\n")
    assert runner.resolve_profile("lab/profile", cwd=tmp_path) == str(mine.resolve())
    bundled = REPO / "configs" / "profiles" / "slurm"
    assert runner.resolve_profile("slurm", cwd=tmp_path) == str(bundled.resolve())
    assert runner.resolve_profile("configs/profiles/slurm", cwd=tmp_path) == str(bundled.resolve())
    with pytest.raises(ConfigError, match="not found"):
        runner.resolve_profile("no/such/profile", cwd=tmp_path)
    assert runner.resolve_profile(None) is None


def test_snakemake_state_under_results_and_verbose_adds_no_target(tmp_path):
    cmd = runner.snakemake_command(tmp_path / "c.yaml", tmp_path, cores=2, profile=None,
                                   dry_run=False, extra=None, verbose=True)
    assert cmd[cmd.index("--directory") + 1] == str(tmp_path)
    assert "rules" not in cmd and "--quiet" not in cmd
    assert "--printshellcmds" in cmd and "--rerun-incomplete" in cmd and "--keep-going" in cmd
    quiet = runner.snakemake_command(tmp_path / "c.yaml", tmp_path, cores=2, profile=None,
                                     dry_run=False, extra=None, verbose=False)
    assert "--printshellcmds" not in quiet


def test_sigterm_reaches_the_whole_process_group(tmp_path):
    """SIGTERM to hitit stops Snakemake *and* its children (here: a shell and its sleep)."""
    pidfile = tmp_path / "child.pid"
    cmd = ["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"]
    timer: list[threading.Timer] = []

    def start():
        t = threading.Timer(1.0, os.kill, args=(os.getpid(), signal.SIGTERM))
        timer.append(t)
        t.start()

    t0 = time.perf_counter()
    rc = runner.run_snakemake(cmd, tmp_path / "smk.log", echo=False, on_start=start)
    assert rc == 128 + signal.SIGTERM
    assert time.perf_counter() - t0 < 20
    child = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the workflow's child process survived SIGTERM")


def test_error_blocks_are_shown_and_everything_is_logged(tmp_path, capsys):
    cmd = [sys.executable, "-c",
           "print('job 1 of 3 done'); print('Error in rule study:'); print('  jobid: 4'); "
           "print(''); print('quiet line')"]
    rc = runner.run_snakemake(cmd, tmp_path / "smk.log", echo=False)
    assert rc == 0
    err = capsys.readouterr().err
    assert "Error in rule study:" in err and "jobid: 4" in err
    assert "quiet line" not in err and "job 1 of 3" not in err
    logged = (tmp_path / "smk.log").read_text()
    assert "quiet line" in logged and "job 1 of 3 done" in logged


# --------------------------------------------------------------------------- whole workflow
def _tables(results: Path) -> dict[str, pd.DataFrame]:
    return {t: pd.read_csv(results / "cohort" / f"{t}.csv") for t in ("lesions", "ranking", "failures")}


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_identical_tables(tmp_path):
    ref = tmp_path / "ref"
    assert runner.run_workflow(SAMPLE, ref, config_file=None, cores=2) == 0
    res = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--input", str(SAMPLE),
                             "--output", str(res), "--cores", "2"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(res.glob("studies/*/*/provenance.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not (res / "cohort" / "ranking.csv").exists(), "the run ended before it was killed"
    time.sleep(2)  # the workflow notices its parent died and stops
    rc = runner.run_workflow(SAMPLE, res, config_file=None, cores=2)
    assert rc == 0
    a, b = _tables(ref), _tables(res)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_like=False)


@pytest.mark.slow
def test_concurrent_second_run_refuses_and_changes_nothing(tmp_path):
    res = tmp_path / "res"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--input", str(SAMPLE),
                             "--output", str(res), "--cores", "1"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (res / "logs" / "run_config.yaml").exists():
        time.sleep(0.1)
    first_cfg = (res / "logs" / "run_config.yaml").read_text()
    second = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--input", str(SAMPLE),
                             "--output", str(res), "--cores", "1", "--set",
                             "ranking.injections_per_session=1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert "another hitit run is using this results folder" in second.stderr
    assert (res / "logs" / "run_config.yaml").read_text() == first_cfg
    assert proc.wait(300) == 0
    ranking = pd.read_csv(res / "cohort" / "ranking.csv", dtype=str)
    # the first run's setting (2 injections per study by default) ranked every study
    per_study = ranking[ranking["role"] == "inject"].groupby("study_uid").size()
    assert (per_study == 2).all(), per_study
    shutil.rmtree(res, ignore_errors=True)
