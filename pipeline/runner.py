"""Launch the Snakemake workflow safely: one run per RESULTS folder, signals forwarded, state kept.

What a run guarantees
---------------------
* **One run per RESULTS.** An exclusive ``fcntl`` lock on ``RESULTS/.hitit-run.lock`` is taken
  before anything else is written into RESULTS. A second ``hitit run`` on the same folder is
  refused at once and changes nothing (not the first run's settings, logs or outputs). The lock
  is held by the running process, so a run killed with SIGKILL leaves no lock behind.
* **Stale Snakemake locks are cleared safely.** Snakemake's own lock (``RESULTS/.snakemake/
  locks``) can only belong to an interrupted run once our lock is held: it is removed with
  ``snakemake --unlock`` and the run says so, instead of failing with ``LockException``.
* **Snakemake's state lives under RESULTS** (``--directory RESULTS``): locks, metadata, incomplete
  markers and SLURM logs of different RESULTS never mix, and a read-only install works.
* **Signals reach the whole workflow.** Snakemake runs in its own process group; SIGINT (Ctrl-C)
  and SIGTERM to ``hitit`` are forwarded to that group, and Snakemake is told to stop if
  ``hitit`` itself dies (``PR_SET_PDEATHSIG`` on Linux). An interrupted run prints one line and
  exits 130 (SIGINT) or 143 (SIGTERM); running the same command again resumes it.
* **Nothing partial is an output.** Snakemake marks outputs of interrupted jobs incomplete and the
  run always passes ``--rerun-incomplete``; every table is written atomically.
* **The full Snakemake log is kept** in ``RESULTS/logs/snakemake/<time>.log``; the terminal shows
  progress lines and every error block, and a failed run ends with the log's path.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE = REPO_ROOT / "Snakefile"
PROFILES_DIR = REPO_ROOT / "configs" / "profiles"
LOCK_NAME = ".hitit-run.lock"

#: Snakemake output lines always shown on the terminal (errors, and where to find them)
_SHOW = re.compile(r"(Error|error:|Exception|Traceback|failed|MissingOutput|LockException|"
                   r"Exiting because|Shutting down|Terminating|Cancelling|Will exit after)")


class RunLockedError(PipelineError):
    """Another ``hitit run`` is using the same RESULTS folder."""


class RunLock:
    """Exclusive, process-held lock on a RESULTS folder (released when the process ends).

    Parameters
    ----------
    results : the RESULTS folder (created if missing: the lock file is its first content).
    """

    def __init__(self, results: Path) -> None:
        self.path = Path(results) / LOCK_NAME
        self._fh = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # never truncates another run's record
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown process"
            fh.close()
            raise RunLockedError(
                f"another hitit run is using this results folder ({holder})",
                file=self.path.parent,
                hint="wait for that run to finish, or write to another --output folder; the other "
                     "run's settings and outputs were not touched",
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def resolve_profile(profile: str | None, cwd: Path | None = None) -> str | None:
    """A profile given as a path relative to where the user ran ``hitit``, or a bundled name.

    ``configs/profiles/slurm`` (relative to the current folder or the install) and ``slurm`` (a
    bundled profile name) both work; anything else is a :class:`ConfigError` naming the places
    looked at.
    """
    if not profile:
        return None
    cwd = Path(cwd or Path.cwd())
    p = Path(profile)
    candidates = [p] if p.is_absolute() else [cwd / p, REPO_ROOT / p, PROFILES_DIR / p]
    for c in candidates:
        if c.is_dir() or c.is_file():
            return str(c.resolve())
    raise ConfigError(
        f"Snakemake profile {profile!r} not found", file=profile,
        hint="give the profile folder (holding config.yaml) as a path, e.g. configs/profiles/slurm; "
             f"looked in: {', '.join(str(c) for c in candidates)}",
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to send SIGTERM to Snakemake when ``hitit`` dies (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def snakemake_command(run_cfg: Path, results: Path, *, cores: int, profile: str | None,
                      dry_run: bool, extra: list[str] | None, verbose: bool) -> list[str]:
    """The Snakemake command line of one run (Snakemake's state under ``results``)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
           "--directory", str(results), "--cores", str(cores), "--rerun-incomplete",
           "--keep-going", "--configfile", str(run_cfg)]
    if verbose:
        cmd += ["--printshellcmds"]
    if profile:
        cmd += ["--profile", profile]
    if dry_run:
        cmd += ["--dry-run"]
    return cmd + list(extra or [])


def _clear_stale_snakemake_lock(results: Path) -> bool:
    """Remove Snakemake's lock left by an interrupted run (our run lock is held). True if cleared."""
    locks = results / ".snakemake" / "locks"
    if not locks.is_dir() or not any(locks.iterdir()):
        return False
    for f in locks.iterdir():
        f.unlink(missing_ok=True)
    return True


def _pump(stream, log_path: Path, echo: bool) -> None:
    """Copy Snakemake's output into its log; show error blocks (and everything when ``echo``)."""
    in_error = False
    with open(log_path, "a", encoding="utf-8", errors="replace") as out:
        for line in iter(stream.readline, ""):
            out.write(line)
            out.flush()
            if line.strip() == "":
                in_error = False
            elif _SHOW.search(line):
                in_error = True
            if echo or in_error:
                sys.stderr.write(line)
                sys.stderr.flush()


def run_snakemake(cmd: list[str], log_path: Path, *, echo: bool, on_start=None) -> int:
    """Run Snakemake in its own process group, forwarding SIGINT/SIGTERM; returns its exit code.

    A SIGINT or SIGTERM received by this process is passed to Snakemake's whole group; the
    returned code is then ``128 + signal`` so that callers can say the run was interrupted.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True,
                            preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)
    got: list[int] = []

    def forward(signum, _frame) -> None:
        got.append(signum)
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    in_main = threading.current_thread() is threading.main_thread()
    old = {}
    if in_main:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, forward)
    pump = threading.Thread(target=_pump, args=(proc.stdout, log_path, echo), daemon=True)
    pump.start()
    if on_start:
        on_start()
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        pump.join(timeout=10)
    if got:
        return 128 + got[0]
    return rc


def clear_lock(results: Path) -> int:
    """``hitit run --unlock``: clear Snakemake's lock of an interrupted run, if no run is active."""
    results = Path(results).resolve()
    with RunLock(results):
        cleared = _clear_stale_snakemake_lock(results)
    print(f"{'cleared the lock of an interrupted run' if cleared else 'no stale lock found'} in "
          f"{results}")
    return 0


def run_workflow(input_dir: Path, output_dir: Path, *, config_file: str | None, cores: int,
                 extra: list[str] | None = None, dry_run: bool = False,
                 profile: str | None = None, overrides: dict | None = None) -> int:
    """Validate the configuration, take the RESULTS lock, then run the workflow.

    Returns Snakemake's exit code (130/143 when interrupted by SIGINT/SIGTERM, 2 on a bad
    configuration or a RESULTS folder in use).
    """
    from pipeline import config as cfgmod

    input_dir = Path(input_dir).resolve()
    output_dir = Path(output_dir).resolve()
    ov = cfgmod.deep_merge(overrides or {}, {"input": str(input_dir), "output": str(output_dir)})
    cfg = cfgmod.load_config(config_file, overrides=ov)  # fail fast, naming the key
    # user-given file paths are relative to the folder hitit was run from
    for section, key in (("ranking", "model"), ("ranking", "sidecar"), (None, "studies")):
        node = cfg[section] if section else cfg
        if node.get(key) and not Path(node[key]).is_absolute():
            node[key] = str((Path.cwd() / node[key]).resolve())
    profile = resolve_profile(profile)
    if not input_dir.is_dir():
        print(f"hitit: error: input archive folder not found: {input_dir}", file=sys.stderr)
        return 2
    try:
        lock = RunLock(output_dir).acquire()
    except RunLockedError as exc:
        print(f"hitit: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run_locked(cfg, input_dir, output_dir, cores=cores, extra=extra,
                           dry_run=dry_run, profile=profile)
    finally:
        lock.release()


def _run_locked(cfg: dict, input_dir: Path, output_dir: Path, *, cores: int,
                extra: list[str] | None, dry_run: bool, profile: str | None) -> int:
    import yaml

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if _clear_stale_snakemake_lock(output_dir):
        print("[hitit] cleared the Snakemake lock left by an interrupted run; resuming",
              file=sys.stderr)
    run_cfg = output_dir / "logs" / "run_config.yaml"
    run_cfg.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_cfg.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=True))
    os.replace(tmp, run_cfg)
    from pipeline.manifest import index_step

    idx = index_step(cfg, input_dir, output_dir, progress=index_progress())
    print(f"[hitit] index: {idx['scanned']} files scanned ({idx['read']} read, {idx['cached']} from "
          f"the cache), {idx['studies']} studies "
          f"({idx['manifests_written']} new or changed, {idx['manifests_unchanged']} unchanged), "
          f"{idx['problems']} problem files, {idx['wall_s']:.1f} s", file=sys.stderr)
    verbose = bool(os.environ.get("HITIT_VERBOSE"))
    cmd = snakemake_command(run_cfg, output_dir, cores=cores, profile=profile, dry_run=dry_run,
                            extra=extra, verbose=verbose)
    smk_log = output_dir / "logs" / "snakemake" / f"{stamp}.log"
    t0 = time.perf_counter()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_progress, args=(output_dir, stop, t0), daemon=True)
    rc = run_snakemake(cmd, smk_log, echo=verbose or dry_run,
                       on_start=None if dry_run else watcher.start)
    stop.set()
    if dry_run:
        return rc
    if rc in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        name = "Ctrl-C" if rc == 128 + signal.SIGINT else "SIGTERM"
        print(f"\n[hitit] interrupted ({name}): the running jobs were stopped; run the same command "
              f"again to resume (finished studies are kept). Snakemake log: {smk_log}",
              file=sys.stderr)
        return rc
    if rc != 0:
        _salvage_cohort(output_dir)
    _print_summary(output_dir, rc, time.perf_counter() - t0, smk_log)
    return rc


def _salvage_cohort(results: Path) -> None:
    """After a failed run (a job lost to the scheduler, a crash), still write the cohort tables
    and the dashboard from the studies that finished; the others are listed as missing."""
    from pipeline.cohort import build_cohort
    from pipeline.io.index import read_index
    from pipeline.report.dashboard import write_dashboard
    from pipeline.sheet import read_study_sheet, sheet_path

    try:
        sheet = read_study_sheet(sheet_path(results))
        summary = build_cohort(results, sheet, read_index(results / "index").problems)
        write_dashboard(results)
    except Exception as exc:  # noqa: BLE001 - the run already failed; say why and go on
        print(f"[hitit] cohort tables could not be written: {exc}", file=sys.stderr)
        return
    import pandas as pd

    status = pd.read_csv(summary["tables"]["status"], dtype=str, keep_default_na=False)
    missing = status[status["status"] != "done"]
    print(f"[hitit] cohort tables written from the {len(status) - len(missing)} finished "
          f"studies; {len(missing)} study(ies) not finished:", file=sys.stderr)
    for r in missing.to_dict(orient="records"):
        log_file = results / "logs" / "studies" / r["patient_dir"] / f"{r['study_dir']}.log"
        print(f"  {r['patient_dir']}/{r['study_dir']}: {r['status']} (job log {log_file})",
              file=sys.stderr)


def index_progress(stream=None):
    """A progress callback printing files indexed, rate and time left (at most every 2 s)."""
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 2.0 or done == total:
            last[0] = now
            rate = done / max(now - t0, 1e-9)
            left = (total - done) / rate if rate > 0 else float("nan")
            print(f"[hitit] indexed {done}/{total} files ({rate:.0f} files/s, ~{left:.0f} s left)",
                  file=stream or sys.stderr, flush=True)

    return progress


def _watch_progress(results: Path, stop: threading.Event, t0: float) -> None:
    """Print studies done / total and an estimate of the time left while Snakemake runs."""
    from pipeline.sheet import read_study_sheet, sheet_path

    sheet = sheet_path(results)
    start = time.time()
    last = -1
    while not stop.wait(3.0):
        if not sheet.exists():
            continue
        try:
            total = len(read_study_sheet(sheet))
        except PipelineError:
            continue
        done = sum(1 for p in (results / "studies").glob("*/*/provenance.json")
                   if p.stat().st_mtime >= start)
        if done != last and total:
            el = time.perf_counter() - t0
            eta = f"~{el / done * (total - done):.0f} s left" if done else "estimating time left"
            print(f"[hitit] studies processed in this run {done} (of {total} in the sheet; "
                  f"unchanged ones are skipped), elapsed {el:.0f} s, {eta}",
                  file=sys.stderr, flush=True)
            last = done


def _print_summary(output_dir: Path, rc: int, wall_s: float, smk_log: Path) -> None:
    summary_path = output_dir / "cohort" / "summary.json"
    if summary_path.exists() and rc == 0:
        s = json.loads(summary_path.read_text())
        print("\n=== HIT-IT run summary ===")
        print(f"studies: {s['studies']} ({s['studies_done']} done, {s['studies_failed']} failed); "
              f"lesions: {s['lesions']}; failure records: {s['failures']}; "
              f"wall time {wall_s:.1f} s")
        for name, path in s["tables"].items():
            print(f"  {name:16s} {path}")
        dash = output_dir / "report" / "index.html"
        if dash.exists():
            print(f"  {'dashboard':16s} {dash}")
        print(f"  {'per study':16s} {output_dir / 'studies'}/<patient>/<study>/ "
              "(worksheet.html, measurements_sr.dcm, tables, provenance.json)")
        print(f"  {'logs':16s} {output_dir / 'logs'} (Snakemake: {smk_log})")
        if s["failures"]:
            print(f"  failures are listed in {s['tables']['failures']}")
    else:
        print(f"[hitit] workflow ended with exit code {rc}"
              f"{'' if summary_path.exists() else '; no cohort summary was written'}. "
              f"Errors are shown above; the full Snakemake log is {smk_log}, job logs are in "
              f"{output_dir / 'logs'}", file=sys.stderr)
