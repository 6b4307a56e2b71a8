"""The workflow on a real SLURM through ``configs/profiles/slurm`` (docs/slurm.md).

The slow tests start a private single-node SLURM (``tests/slurm_cluster.py``; skipped with the
reason where it cannot run), write 3 phantom patients with ``hitit phantom``, and run
``hitit run --profile configs/profiles/slurm`` as a user would, next to a local run:

* the cohort tables (lesions, ranking, failures) of the SLURM run are byte-identical to the
  local run's;
* every SLURM job says its rule and study in its comment, its SLURM log goes to
  ``RESULTS/logs/slurm/`` and the rules without a walltime of their own get the profile's;
* one SLURM job per study (study + rank + report grouped);
* a running study job cancelled with ``scancel`` (what a TIMEOUT, OUT_OF_MEMORY or NODE_FAIL looks
  like to Snakemake) is submitted again and the run ends with the same tables.

Accounting is off on the test cluster, so the jobs are read from the controller with
``squeue --states=all --name RUN_ID`` (finished jobs stay listed for MinJobAge, one hour there)
and the studies a job ran from its batch script (``scontrol write batch_script``).
Run with ``-s`` to see the wall times of the SLURM and the local run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from slurm_cluster import slurm_cluster  # noqa: F401  (session fixture: the private cluster)

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "configs" / "profiles" / "slurm"
N_PATIENTS = 3
TABLES = ("lesions", "ranking", "failures")
RUN_TIMEOUT_S = 1800


# --------------------------------------------------------------------------- profile (fast)
def _profile_args() -> dict:
    """The profile as Snakemake reads it (its own parser: keys -> command-line values)."""
    from snakemake.profiles import ProfileConfigFileParser

    with open(PROFILE / "config.yaml", encoding="utf-8") as fh:
        return dict(ProfileConfigFileParser().parse(fh))


def test_profile_settings_are_read_by_the_installed_slurm_plugin():
    """Every ``slurm-*`` key is a setting of the plugin; none is a known no-op."""
    import dataclasses

    from snakemake_executor_plugin_slurm import ExecutorSettings

    fields = {f.name.replace("_", "-") for f in dataclasses.fields(ExecutorSettings)}
    args = _profile_args()
    keys = {k.removeprefix("slurm-") for k in args if k.startswith("slurm-")}
    assert keys <= fields, f"unknown plugin settings: {sorted(keys - fields)}"
    # plugin 2.8.0 declares no_account but never reads it: the account is the slurm_account
    # resource (docs/slurm.md)
    assert "no-account" not in keys
    assert args["executor"] == "slurm" and int(args["retries"]) >= 1
    assert args["slurm-logdir"] == "logs/slurm"  # relative to RESULTS (--directory RESULTS)
    assert 1 <= int(args["slurm-init-seconds-before-status-checks"]) <= 10


def test_profile_default_resources_grow_with_the_attempt():
    """A retried job (attempt 2) asks for twice the default walltime and memory."""
    from snakemake.resources import Resources

    res = Resources.parse(_profile_args()["default-resources"], allow_expressions=True,
                          defaults="full")

    def value(name: str, attempt: int) -> int:
        return res[name].evaluate(wildcards={}, input=[], attempt=attempt, threads=1,
                                  rulename="rank", async_run=None).value

    for name in ("runtime", "mem_mb"):
        assert value(name, 2) == 2 * value(name, 1) > 0, name


# --------------------------------------------------------------------------- helpers
def _hitit(*args: str, cwd: Path, timeout: float = RUN_TIMEOUT_S) -> tuple[int, float, str]:
    """Run the ``hitit`` CLI as a user would; (exit code, wall time s, output)."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=timeout, check=False)
    return res.returncode, time.perf_counter() - t0, res.stdout + res.stderr


def _tables(results: Path) -> dict[str, bytes]:
    return {t: (results / "cohort" / f"{t}.csv").read_bytes() for t in TABLES}


def _assert_same_tables(results: Path, reference: Path) -> None:
    got, ref = _tables(results), _tables(reference)
    for t in TABLES:
        if got[t] != ref[t]:  # show where they differ before failing
            pd.testing.assert_frame_equal(pd.read_csv(results / "cohort" / f"{t}.csv"),
                                          pd.read_csv(reference / "cohort" / f"{t}.csv"))
        assert got[t] == ref[t], f"cohort/{t}.csv differs from the local run's"


def _run_ids(results: Path) -> list[str]:
    """The SLURM run IDs (job names) of every Snakemake run kept in RESULTS/logs/snakemake."""
    ids = []
    for log in sorted((results / "logs" / "snakemake").glob("*.log")):
        ids += re.findall(r"SLURM run ID: (\S+)", log.read_text(errors="replace"))
    return ids


def _minutes(limit: str) -> int:
    """squeue's %l (``[days-]hours:minutes:seconds`` or ``minutes:seconds``) in minutes."""
    days, _, hms = limit.rpartition("-")
    parts = [int(p) for p in hms.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


def _targets(cluster, job_id: str) -> list[tuple[str, str, str]]:
    """(rule, patient, study) of every Snakemake job a SLURM job runs, read from its batch
    script (``--target-jobs 'rule:patient=P,study=S' ...``); cohort-level rules have no study."""
    res = cluster.run("scontrol", "write", "batch_script", job_id, "-")
    assert res.returncode == 0, res.stderr
    part = res.stdout.partition("--target-jobs")[2].split(" --", 1)[0]
    targets = []
    for rule, wc in re.findall(r"'(\w+):([^']*)'", part):
        kv = dict(item.split("=", 1) for item in wc.split(",") if "=" in item)
        targets.append((rule, kv.get("patient", ""), kv.get("study", "")))
    return targets


def _jobs(cluster, results: Path) -> list[dict]:
    """Every SLURM job of the runs in ``results``: id, comment, state, limit_min, mem, targets."""
    jobs = []
    for run_id in _run_ids(results):
        for jid, comment, state, limit, mem in cluster.squeue("%i|%k|%T|%l|%m", "--name", run_id):
            jobs.append({"id": int(jid), "comment": comment, "state": state,
                         "limit_min": _minutes(limit), "mem": mem,
                         "targets": _targets(cluster, jid)})
    return sorted(jobs, key=lambda j: j["id"])


def _job_studies(job: dict) -> set[tuple[str, str]]:
    """The (patient, study) pairs a SLURM job ran (from its batch script)."""
    return {(p, st) for _, p, st in job["targets"] if st}


def _studies(results: Path) -> list[tuple[str, str]]:
    sheet = pd.read_csv(results / "cohort" / "studies.csv", dtype=str, keep_default_na=False)
    return [(r.patient_dir, r.study_dir) for r in sheet.itertuples()]


def _study_of(comment: str, studies: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The study a job's comment names (``rule_<rule>_wildcards_<patient>_<study>`` or a group
    name holding both), or None for cohort-level jobs."""
    hits = [s for s in studies if re.search(rf"(^|_){re.escape(s[0])}_{re.escape(s[1])}(_|$)",
                                            comment)]
    assert len(hits) <= 1, f"job comment {comment!r} matches several studies: {hits}"
    return hits[0] if hits else None


# --------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slurm-archive") / "archive"
    rc, _, text = _hitit("phantom", str(out), "--patients", str(N_PATIENTS),
                         cwd=out.parent, timeout=900)
    assert rc == 0, text[-2000:]
    return out


@pytest.fixture(scope="module")
def local_run(archive, tmp_path_factory) -> dict:
    user = tmp_path_factory.mktemp("slurm-local")
    rc, wall, text = _hitit("run", "--input", str(archive), "--output", "results",
                            "--cores", "2", cwd=user)
    assert rc == 0, text[-3000:]
    return {"results": user / "results", "wall_s": wall}


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, archive, local_run, tmp_path_factory) -> dict:  # noqa: F811
    user = tmp_path_factory.mktemp("slurm-run")
    rc, wall, text = _hitit("run", "--input", str(archive), "--output", "results",
                            "--profile", "configs/profiles/slurm", cwd=user)
    results = user / "results"
    assert rc == 0, f"{text[-3000:]}\nslurmctld: {slurm_cluster.log_tail('slurmctld')}"
    print(f"\n[slurm] {N_PATIENTS} studies: SLURM run {wall:.1f} s, local run "
          f"{local_run['wall_s']:.1f} s (x{wall / local_run['wall_s']:.2f})")
    return {"results": results, "wall_s": wall, "output": text,
            "jobs": _jobs(slurm_cluster, results)}


@pytest.mark.slow
def test_slurm_run_gives_the_local_tables(slurm_run, local_run):
    _assert_same_tables(slurm_run["results"], local_run["results"])


@pytest.mark.slow
def test_slurm_jobs_say_rule_and_study_and_log_under_results(slurm_run):
    results, jobs = slurm_run["results"], slurm_run["jobs"]
    studies = _studies(results)
    assert len(studies) == N_PATIENTS
    assert jobs and all(j["state"] == "COMPLETED" for j in jobs), jobs
    assert all(j["comment"].startswith("rule_") for j in jobs), jobs
    # SLURM's logs live under RESULTS/logs/slurm (the profile's slurm-logdir), not .snakemake
    assert (results / "logs" / "slurm").is_dir()
    assert not (results / ".snakemake" / "slurm_logs").exists()
    # every job has a walltime: its rule's own or the profile's default (attempt 1)
    default = int(re.match(r"runtime=(\d+)", next(
        r for r in _profile_args()["default-resources"] if r.startswith("runtime="))).group(1))
    assert all(j["limit_min"] >= default for j in jobs), jobs


@pytest.mark.slow
def test_squeue_comment_names_the_study_of_each_job(slurm_run):
    """docs/slurm.md: `squeue -o %k` shows the study (a group must be named after it)."""
    studies = _studies(slurm_run["results"])
    for j in slurm_run["jobs"]:
        assert {_study_of(j["comment"], studies)} - {None} == _job_studies(j), j


@pytest.mark.slow
def test_one_slurm_job_per_study(slurm_run):
    """study, rank and the study's report run as one submission (a Snakemake group)."""
    studies = _studies(slurm_run["results"])
    per_study = {s: [j["id"] for j in slurm_run["jobs"]
                     if any((p, st) == s for _, p, st in j["targets"])] for s in studies}
    assert all(len(ids) == 1 for ids in per_study.values()), per_study
    for j in slurm_run["jobs"]:  # ... and a job never mixes studies
        assert len({(p, st) for _, p, st in j["targets"] if st}) <= 1, j


@pytest.fixture(scope="module")
def cancelled_run(slurm_cluster, archive, slurm_run, tmp_path_factory) -> dict:  # noqa: F811
    """A fresh SLURM run with one running study job cancelled by ``scancel``, then rerun."""
    user = tmp_path_factory.mktemp("slurm-scancel")
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--input", str(archive),
           "--output", "results", "--profile", "configs/profiles/slurm"]
    results = user / "results"
    before = {j[0] for j in slurm_cluster.squeue("%i")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=user, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    cancelled = None
    try:
        deadline = time.monotonic() + 900
        while cancelled is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
            if not (results / "cohort" / "studies.csv").exists():
                continue
            for jid, comment, state in slurm_cluster.squeue("%i|%k|%T"):
                if (jid not in before and state == "RUNNING"
                        and any(r == "study" for r, _, _ in _targets(slurm_cluster, jid))):
                    res = slurm_cluster.run("scancel", jid)
                    assert res.returncode == 0, res.stderr
                    cancelled = {"id": int(jid), "comment": comment}
                    break
        out, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
    rc_first = proc.returncode
    assert cancelled is not None, f"no running study job was seen to cancel:\n{out[-3000:]}"
    rerun_text = ""
    if rc_first != 0:  # the retry was lost too: a plain rerun resumes
        rc, _, rerun_text = _hitit(*cmd[3:], cwd=user)
        assert rc == 0, rerun_text[-3000:]
    wall = time.perf_counter() - t0
    print(f"\n[slurm] scancel of job {cancelled['id']} ({cancelled['comment']}): first run "
          f"exit {rc_first}, recovered in {wall:.1f} s"
          f"{' with a rerun' if rerun_text else ' by the retry'}")
    return {"results": results, "cancelled": cancelled, "rc_first": rc_first,
            "output": out + rerun_text, "jobs": _jobs(slurm_cluster, results)}


def _cancelled_and_retry(run: dict) -> tuple[dict, dict | None]:
    """The cancelled job and its resubmission: the next job that runs the same study."""
    jobs = run["jobs"]
    first = next(j for j in jobs if j["id"] == run["cancelled"]["id"])
    later = [j for j in jobs if j["id"] > first["id"] and _job_studies(j) & _job_studies(first)]
    return first, (later[0] if later else None)


@pytest.mark.slow
def test_cancelled_job_is_resubmitted_and_the_tables_recover(cancelled_run, local_run):
    first, retry = _cancelled_and_retry(cancelled_run)
    assert first["state"] == "CANCELLED", first
    assert retry is not None and retry["state"] == "COMPLETED", cancelled_run["jobs"]
    # the failed job's SLURM log is kept under RESULTS/logs/slurm and ends with SLURM's reason
    # (a one-rule job's error block also gives the SLURM status; a group's error block does not)
    kept = list((cancelled_run["results"] / "logs" / "slurm").rglob(f"{first['id']}.log"))
    assert len(kept) == 1, kept
    assert f"JOB {first['id']} ON" in kept[0].read_text() and "CANCELLED" in kept[0].read_text()
    assert f"{first['id']}.log" in cancelled_run["output"]  # ... and the run names that log
    assert cancelled_run["rc_first"] == 0  # `retries: 1` recovered it within the same run
    _assert_same_tables(cancelled_run["results"], local_run["results"])


@pytest.mark.slow
def test_resubmitted_study_job_asks_for_more_time_and_memory(cancelled_run):
    first, retry = _cancelled_and_retry(cancelled_run)
    assert retry is not None, cancelled_run["jobs"]
    rules = [sorted(r for r, _, _ in j["targets"]) for j in (first, retry)]
    assert rules[0] == rules[1], f"the retry runs other rules than the cancelled job: {rules}"
    assert retry["limit_min"] == 2 * first["limit_min"], (first, retry)
    mem = [int(re.sub(r"\D", "", j["mem"])) for j in (first, retry)]
    assert mem[1] == 2 * mem[0], (first, retry)
