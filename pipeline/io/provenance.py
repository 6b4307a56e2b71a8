"""Provenance: package versions, configuration hash, inputs, per-stage wall and CPU time and peak
memory."""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "hitit-pipeline", "numpy", "scipy", "pandas", "SimpleITK", "pydicom", "highdicom", "nibabel",
    "scikit-image", "scikit-learn", "pyradiomics", "snakemake", "pylibjpeg", "python-gdcm",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that can change results."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux ru_maxrss is in KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024.0 if sys.platform != "darwin" else rss / 1024.0 / 1024.0


class StageTimer:
    """Record wall time, CPU time and peak memory of named stages.

    CPU time (``cpu_s``) is the process's user + system time over all its threads
    (:func:`time.process_time`): on a shared machine it is the stage's own work, while the wall
    time also counts the time spent waiting for a core. Peak memory is the process peak
    (ru_maxrss) at the end of each stage, which is monotone: the stage where it jumps is the one
    that needed the memory.
    """

    def __init__(self) -> None:
        self.stages: list[dict] = []
        self._t0 = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        t, c = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.stages.append({
                "stage": name,
                "wall_s": round(time.perf_counter() - t, 4),
                "cpu_s": round(time.process_time() - c, 4),
                "peak_rss_mb": round(peak_rss_mb(), 1),
            })

    def total_s(self) -> float:
        return round(time.perf_counter() - self._t0, 4)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temp file + rename) so a killed job never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
    tmp.replace(path)
