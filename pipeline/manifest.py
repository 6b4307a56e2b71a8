"""The index step of a run, and the per-study input manifests that make reruns exact.

``hitit run`` calls :func:`index_step` before Snakemake (under the run lock), so that the index
always runs on the archive as it is now, and Snakemake sees its results as plain source files:

* ``RESULTS/index/`` and ``RESULTS/cohort/studies.csv`` (the sheet is rewritten only when it
  changes: its modification time tells the cohort step that the set of studies changed);
* one manifest per study, ``RESULTS/studies/<patient_dir>/<study_dir>/inputs.json``: the study's
  sheet row (the chosen series and masks) and every input file with its size and modification
  time. It is rewritten only when its content changes, and the study rule depends on it alone,
  so a study reruns exactly when one of its own files, or its choice of series, changed; an
  added study is processed and the others are left alone.

Manifests hold paths relative to the archive root (no patient name).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipeline.io import index as idx
from pipeline.io.labelmap import sidecar_path
from pipeline.io.tables import write_text_atomic
from pipeline.sheet import read_study_sheet, sheet_for_index, sheet_path, write_study_sheet

log = logging.getLogger(__name__)

MANIFEST_NAME = "inputs.json"
MANIFEST_VERSION = 1
#: Sheet columns naming a series of the archive (by SeriesInstanceUID).
SERIES_KEYS = ("ct_series_uid", "ce_ct_series_uid", "pet_series_uid")
#: (source column, reference column) of the masks.
MASK_KEYS = (("lesion_mask_source", "lesion_mask_ref"), ("organ_mask_source", "organ_mask_ref"))
#: Sheet columns kept out of manifests.
PRIVATE_COLUMNS = ("patient_name",)


def manifest_path(results: str | Path, patient_dir: str, study_dir: str) -> Path:
    """``RESULTS/studies/<patient_dir>/<study_dir>/inputs.json``."""
    return Path(results) / "studies" / patient_dir / study_dir / MANIFEST_NAME


def _stat(root: Path, rel: str) -> dict:
    try:
        st = os.stat(root / rel)
    except OSError:
        return {"path": rel, "size": None, "mtime_ns": None}
    return {"path": rel, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def study_manifest(row: dict, files: pd.DataFrame, root: Path) -> dict:
    """The inputs of one study: its sheet row and each input file's size and mtime.

    Parameters
    ----------
    row : one row of the study sheet (strings).
    files : the index's file table (``path`` relative to ``root``, ``series_uid``).
    root : the archive root.
    """
    root = Path(root)
    by_series = files.groupby("series_uid")["path"].apply(sorted).to_dict() if len(files) else {}
    inputs: dict[str, list[dict]] = {}
    uids = [row.get(k, "") for k in SERIES_KEYS]
    for src_key, ref_key in MASK_KEYS:
        src, ref = row.get(src_key, ""), row.get(ref_key, "")
        if src in ("seg", "rtstruct"):
            uids.append(ref)
        elif src == "labelmap" and ref:
            side = str(sidecar_path(ref))
            inputs[f"labelmap:{ref}"] = [_stat(root, p) for p in sorted({ref, side})]
        elif src == "totalseg" and ref:
            folder = root / ref
            names = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            inputs[f"totalseg:{ref}"] = [_stat(root, f"{ref}/{n}") for n in names]
    for uid in dict.fromkeys(u for u in uids if u):
        inputs[uid] = [_stat(root, p) for p in by_series.get(uid, [])]
    return {
        "version": MANIFEST_VERSION,
        "row": {k: v for k, v in sorted(row.items()) if k not in PRIVATE_COLUMNS},
        "inputs": inputs,
    }


def write_manifests(sheet: pd.DataFrame, files: pd.DataFrame, root: Path,
                    results: Path) -> tuple[int, int]:
    """One manifest per sheet row, each rewritten only when it changed.

    Returns
    -------
    (written, unchanged) counts.
    """
    written = unchanged = 0
    for row in sheet.to_dict(orient="records"):
        m = study_manifest(row, files, root)
        text = json.dumps(m, indent=1, sort_keys=True) + "\n"
        if write_text_atomic(manifest_path(results, row["patient_dir"], row["study_dir"]), text):
            written += 1
        else:
            unchanged += 1
    return written, unchanged


def index_step(cfg: dict, input_dir: Path, results: Path,
               progress: Callable[[int, int], None] | None = None, *,
               use_cache: bool = True) -> dict:
    """Index the archive, write the index tables, the study sheet and the study manifests.

    The same function serves ``hitit index`` and ``hitit run`` (which calls it before
    Snakemake). The header cache ``RESULTS/index/file_cache.parquet`` (keyed on path, size and
    modification time) makes an unchanged archive cheap to re-index. Returns a summary dict
    (files scanned / read / from the cache, files, series, problems, studies, manifests written /
    unchanged, sheet source, wall times).
    """
    t0 = time.perf_counter()
    input_dir, results = Path(input_dir), Path(results)
    cache = results / "index" / "file_cache.parquet" if use_cache else None
    index = idx.scan_archive(input_dir, progress=progress,
                             lesion_name_patterns=tuple(cfg["index"]["lesion_name_patterns"]),
                             organ_name_patterns=tuple(cfg["index"]["organ_name_patterns"]),
                             cache=cache, max_file_mb=cfg["index"]["max_file_mb"])
    scan_s = time.perf_counter() - t0
    idx.write_index(index, results / "index")
    sheet, source = sheet_for_index(
        index, user_sheet=cfg.get("studies") or None,
        mask_source_priority=tuple(cfg["index"]["mask_source_priority"]))
    path = write_study_sheet(sheet, sheet_path(results))
    sheet = read_study_sheet(path)
    written, unchanged = write_manifests(sheet, index.files, index.root, results)
    return {"scanned": int(index.meta.get("n_scanned", 0)), "read": int(index.meta.get("n_read", 0)),
            "cached": int(index.meta.get("n_cached", 0)), "cache": str(cache) if cache else "",
            "scan_s": scan_s,
            "files": int(len(index.files)), "series": int(index.series.shape[0]),
            "problems": int(len(index.problems)), "studies": int(len(sheet)),
            "manifests_written": written, "manifests_unchanged": unchanged,
            "sheet": str(path), "source": source, "wall_s": time.perf_counter() - t0}
