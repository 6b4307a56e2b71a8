"""A private single-node SLURM for the cluster tests (fixture ``slurm_cluster``).

What it does
------------
* Installs Debian's ``slurm-wlm`` and ``munge`` with ``apt-get`` when ``slurmctld`` is missing
  and we are root (like the browser tests install chromium).
* Writes ``slurm.conf`` and ``cgroup.conf`` into a temporary folder: one node ``localhost`` with
  this machine's CPUs and ``RealMemory`` = MemTotal from ``/proc/meminfo`` minus a margin,
  ``select/cons_tres`` (cores and memory are consumable), ``proctrack/linuxproc``,
  ``task/none``, no accounting, a free private port pair, and every state/spool/pid/log file in
  the temporary folder. ``MinJobAge`` is one hour so that ``squeue --states=all`` still lists the
  finished jobs of a test run (accounting is off, so ``sacct`` knows nothing).
* Starts ``munged`` with a freshly generated key on a private socket, then ``slurmctld`` and
  ``slurmd`` in the foreground (``-D -f CONF``) as our own child processes, sets ``SLURM_CONF``
  in ``os.environ`` and waits until ``sinfo`` shows the node idle.
* Puts an ``srun`` shim first on ``PATH`` that sets ``SLURM_CONF`` again: inside a job,
  snakemake-executor-plugin-slurm-jobstep (0.6.1) removes every ``SLURM_*`` variable but the job
  ids from the environment of its ``srun`` step, so an ``srun`` of a cluster whose
  ``slurm.conf`` is not at the default ``/etc/slurm/slurm.conf`` finds no configuration
  ("fetch_config: DNS SRV lookup failed"). Real clusters keep slurm.conf at the default path.
* At the end of the session cancels every job, stops the daemons (SIGTERM, then SIGKILL), also
  stops any ``slurmstepd`` they left (found by their process-group/session, never by name
  alone), restores ``SLURM_CONF`` and removes the folder.

The fixture skips, with the reason and the daemon log tails, only when SLURM truly cannot run
here: not root, no apt-get or no network to install it, or daemons that do not come up.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
#: memory (MB) left to the system and the Snakemake controller out of MemTotal
MEMORY_MARGIN_MB = 1024
NODE = "localhost"


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be started on this machine (the message says why)."""


def ensure_slurm(timeout_s: float = 900.0) -> str:
    """Install ``slurm-wlm`` and ``munge`` with apt-get when missing; '' or why not possible."""
    if all(shutil.which(d) for d in DAEMONS) and shutil.which("sbatch"):
        return ""
    if os.geteuid() != 0:
        return "SLURM is not installed and the tests are not running as root"
    if not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is not available"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = Path(tempfile.gettempdir()) / "hitit-slurm-install.lock"
    with open(lock, "w") as fh:  # pytest-xdist workers: one installs, the others wait
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if all(shutil.which(d) for d in DAEMONS):
                return ""
            for cmd in (["apt-get", "update"],
                        ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]):
                res = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True,
                                     timeout=timeout_s)
                if res.returncode != 0:
                    tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
                    return f"`{' '.join(cmd)}` failed: {' | '.join(tail)}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"installing SLURM failed: {exc}"
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    missing = [d for d in DAEMONS if not shutil.which(d)]
    return f"apt-get install finished but {', '.join(missing)} missing" if missing else ""


def _free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on this machine right now."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _real_memory_mb() -> int:
    """MemTotal of /proc/meminfo in MB, minus :data:`MEMORY_MARGIN_MB` (at least 1024)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return max(int(line.split()[1]) // 1024 - MEMORY_MARGIN_MB, 1024)
    raise SlurmUnavailable("no MemTotal in /proc/meminfo")


def slurm_conf_text(root: Path, *, cpus: int, memory_mb: int, ports: tuple[int, int],
                    munge_socket: Path) -> str:
    """The ``slurm.conf`` of the private single-node cluster living in ``root``."""
    return "\n".join([
        "ClusterName=hitit-test",
        f"SlurmctldHost={NODE}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/run/slurmctld.pid",
        f"SlurmdPidFile={root}/run/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        "ReturnToService=2",
        "MinJobAge=3600",  # finished jobs stay visible to squeue for the test's checks
        "KillWait=5",
        "InactiveLimit=0",
        f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class SlurmCluster:
    """A running private cluster: its folder, ``slurm.conf`` and daemon processes."""

    root: Path
    conf: Path
    cpus: int
    memory_mb: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        """Folder of the ``srun`` shim (put first on ``PATH`` of every workflow run)."""
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` with ``SLURM_CONF`` pointing at this cluster and the shim on PATH."""
        path = os.environ.get("PATH", "")
        if not path.startswith(f"{self.bin}{os.pathsep}"):
            path = f"{self.bin}{os.pathsep}{path}"
        return dict(os.environ, SLURM_CONF=str(self.conf), PATH=path)

    def log(self, daemon: str) -> Path:
        return self.root / "log" / f"{daemon}.log"

    def log_tail(self, daemon: str, n: int = 15) -> str:
        try:
            lines = self.log(daemon).read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:])

    def tails(self) -> str:
        return "; ".join(f"{d} log: {self.log_tail(d, 6)}" for d in self.procs)

    def run(self, *cmd: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def squeue(self, fmt: str = "%i|%k|%T", *extra: str) -> list[list[str]]:
        """All jobs the controller still knows (running and finished), one field list each."""
        res = self.run("squeue", "--states=all", "--noheader", f"--format={fmt}", *extra)
        if res.returncode != 0:
            raise RuntimeError(f"squeue failed: {res.stderr.strip()}")
        return [line.split("|") for line in res.stdout.splitlines() if line.strip()]

    def node_state(self) -> str:
        res = self.run("sinfo", "--noheader", "--Node", "--format=%T")
        return res.stdout.strip() if res.returncode == 0 else f"sinfo failed: {res.stderr.strip()}"

    def _started(self, name: str, cmd: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.stdout", "wb")
        self.procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        out.close()

    def _alive_or_raise(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is not None:
            out = (self.root / "log" / f"{name}.stdout").read_text(errors="replace").strip()
            raise SlurmUnavailable(f"{name} exited with code {p.returncode}: "
                                   f"{' | '.join(out.splitlines()[-6:])}; log: "
                                   f"{self.log_tail(name)}")

    def start(self, timeout_s: float = 60.0) -> "SlurmCluster":
        for sub in ("state", "spool", "run", "log", "munge", "bin"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                               if p != str(self.bin))
        srun = shutil.which("srun", path=path) or "/usr/bin/srun"
        shim = self.bin / "srun"
        shim.write_text(f'#!/bin/sh\nexport SLURM_CONF={shlex.quote(str(self.conf))}\n'
                        f'exec {shlex.quote(srun)} "$@"\n')
        shim.chmod(0o755)
        munge = self.root / "munge"
        munge.chmod(0o700)
        key = munge / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self._started("munged", ["munged", "--foreground", "--force",
                                 f"--socket={munge / 'munge.socket'}", f"--key-file={key}",
                                 f"--pid-file={munge / 'munged.pid'}",
                                 f"--log-file={self.log('munged')}",
                                 f"--seed-file={munge / 'munged.seed'}"])
        deadline = time.monotonic() + timeout_s
        while not (munge / "munge.socket").exists():
            self._alive_or_raise("munged")
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"munged did not open its socket: {self.log_tail('munged')}")
            time.sleep(0.1)
        self._started("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", str(self.conf)])
        time.sleep(1.0)
        self._started("slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
        state = ""
        while time.monotonic() < deadline:
            for name in self.procs:
                self._alive_or_raise(name)
            state = self.node_state()
            if state == "idle":
                return self
            if state.startswith(("down", "drain", "inval")):
                reason = self.run("sinfo", "-R", "--noheader").stdout.strip()
                raise SlurmUnavailable(f"node {NODE} is {state} ({reason})")
            time.sleep(0.5)
        raise SlurmUnavailable(f"node {NODE} not idle after {timeout_s:.0f} s (sinfo: {state})")

    def _stepds(self) -> list[int]:
        """PIDs of slurmstepd processes in our daemons' sessions (jobs they started)."""
        sessions = {p.pid for p in self.procs.values()}
        pids = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                comm = (d / "comm").read_text().strip()
                sid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[4])
            except (OSError, IndexError, ValueError):
                continue
            if comm.startswith("slurmstepd") and sid in sessions:
                pids.append(int(d.name))
        return pids

    def stop(self) -> None:
        """Cancel every job, stop the daemons and any job step they left; no leftovers."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            try:
                self.run("scancel", "--full", "--user=root", timeout=10)
                for _ in range(20):
                    active = [j for j in self.squeue("%i|%T")
                              if j[1] in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING")]
                    if not active:
                        break
                    time.sleep(0.5)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for pid in self._stepds():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_cluster(root: Path, timeout_s: float = 60.0) -> SlurmCluster:
    """Write the configuration into ``root`` and start the daemons (:class:`SlurmUnavailable`)."""
    root.mkdir(parents=True, exist_ok=True)
    cpus = os.cpu_count() or 1
    memory_mb = _real_memory_mb()
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf_text(root, cpus=cpus, memory_mb=memory_mb,
                                    ports=tuple(_free_ports(2)),
                                    munge_socket=root / "munge" / "munge.socket"))
    # slurmd reads cgroup.conf next to slurm.conf; linuxproc + task/none load no cgroup plugin
    (root / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")
    cluster = SlurmCluster(root=root, conf=conf, cpus=cpus, memory_mb=memory_mb)
    try:
        return cluster.start(timeout_s)
    except BaseException:
        cluster.stop()
        raise


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running private single-node SLURM (``SLURM_CONF`` set in ``os.environ``)."""
    reason = ensure_slurm()
    if reason:
        pytest.skip(f"SLURM unavailable: {reason}")
    if os.geteuid() != 0:
        pytest.skip("SLURM unavailable: the private cluster runs its daemons as root "
                    "(SlurmUser=root); run the tests as root")
    root = Path(tempfile.mkdtemp(prefix="hitit-slurm-"))
    root.chmod(0o755)
    old = {k: os.environ.get(k) for k in ("SLURM_CONF", "PATH")}
    try:
        cluster = start_cluster(root)
    except SlurmUnavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"SLURM daemons did not start: {exc}")
    os.environ.update({k: cluster.env[k] for k in old})
    try:
        yield cluster
    finally:
        cluster.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)
