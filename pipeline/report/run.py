"""Build the review outputs of one study or of a whole results folder.

:func:`report_study` is the per-study workflow step (after the study's ranking): the worksheet
(with the key images the study job wrote, or "no key image"), the DICOM SR, and a small
``report.json`` saying what was written. :func:`build_reports` does every study of the study
sheet and then the dashboard. Neither raises for one study: a failed study still gets its
worksheet (showing the failure), and an SR that cannot be made is recorded with the reason.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.report import keyimages as K
from pipeline.report.dashboard import write_dashboard
from pipeline.report.sr import SR_NAME, write_sr
from pipeline.report.worksheet import WORKSHEET_NAME, write_worksheet

log = logging.getLogger(__name__)

STATUS_NAME = "report.json"


def _sheet(results: Path) -> pd.DataFrame:
    from pipeline.sheet import read_study_sheet, sheet_path

    return read_study_sheet(sheet_path(results))


def _index(results: Path):
    from pipeline.io.index import read_index

    p = Path(results) / "index"
    if not (p / "files.csv").exists():
        return None
    try:
        return read_index(p)
    except Exception as exc:  # noqa: BLE001 - the report works without the archive
        log.warning("index not readable (%s): key images and SR need the archive", exc)
        return None


@dataclass(frozen=True)
class SRSources:
    """What the SR needs of the archive index: the archive root and, of the file table, the
    ``path`` (relative to the root) and ``series_uid`` columns (as text)."""

    root: Path
    files: pd.DataFrame


def _sr_sources(results: Path) -> SRSources | None:
    """:class:`SRSources` from ``RESULTS/index``, reading only the two columns the SR uses (not
    the whole typed index); None when there is no readable index."""
    p = Path(results) / "index"
    if not (p / "files.csv").exists():
        return None
    try:
        root = Path(json.loads((p / "index.json").read_text(encoding="utf-8"))["root"])
        files = pd.read_csv(p / "files.csv", dtype=str, keep_default_na=False, na_values=[],
                            usecols=["path", "series_uid"])
    except Exception as exc:  # noqa: BLE001 - the report works without the archive
        log.warning("index not readable (%s): key images and SR need the archive", exc)
        return None
    return SRSources(root=root, files=files)


def report_study(results: Path, patient_dir: str, study_dir: str, *, sr: bool = True,
                 index=None) -> dict:
    """Worksheet (+ SR) of one study; key images are those the study job wrote.

    Parameters
    ----------
    results : Path
        The results folder.
    patient_dir, study_dir : str
        The study's folder names (``RESULTS/studies/<patient_dir>/<study_dir>``).
    sr : bool
        Also write ``measurements_sr.dcm``.
    index : ArchiveIndex or SRSources, optional
        The archive index (its root and file table; when None, the two columns the SR needs
        are read from ``RESULTS/index``).

    Returns
    -------
    dict
        What was written (also saved as ``report.json`` in the study folder).
    """
    from pipeline.cohort import study_output_dir

    results = Path(results)
    d = study_output_dir(results, {"patient_dir": patient_dir, "study_dir": study_dir})
    status: dict = {"patient_dir": patient_dir, "study_dir": study_dir, "worksheet": None,
                    "sr": None, "sr_skipped": "", "keyimages": "from the study job"}
    prov = {}
    if (d / "provenance.json").exists():
        prov = json.loads((d / "provenance.json").read_text())
    done = prov.get("status") == "done"
    if index is None and sr and done:
        index = _sr_sources(results)
    if K.read_index(d) is None:  # key images come only from the study job
        status["keyimages"] = "none"
    if sr:
        if not done:
            status["sr_skipped"] = f"study status is {prov.get('status', 'missing')}"
        elif index is None:
            status["sr_skipped"] = "no archive index (RESULTS/index) to find the source images"
        else:
            try:
                status["sr"] = str(write_sr(d, index.root, index.files, d / SR_NAME))
            except Exception as exc:  # noqa: BLE001 - recorded, never fails the report
                log.warning("SR for %s/%s not written: %s", patient_dir, study_dir, exc)
                status["sr_skipped"] = f"{type(exc).__name__}: {exc}"
    else:
        status["sr_skipped"] = "disabled"
    status["worksheet"] = str(write_worksheet(d, d / WORKSHEET_NAME))
    tmp = d / (STATUS_NAME + ".tmp")
    tmp.write_text(json.dumps(status, indent=2))
    tmp.replace(d / STATUS_NAME)
    return status


def build_reports(results: Path, *, sr: bool = True) -> dict:
    """Every study's worksheet (and SR), then the dashboard.

    Returns
    -------
    dict
        ``{"dashboard": path, "studies": [report_study results]}``
    """
    results = Path(results)
    index = _index(results)
    out = []
    for r in _sheet(results).to_dict(orient="records"):
        try:
            out.append(report_study(results, r["patient_dir"], r["study_dir"], sr=sr, index=index))
        except Exception as exc:
            log.exception("report of %s/%s failed: %s", r.get("patient_dir"), r.get("study_dir"), exc)
            out.append({"patient_dir": r.get("patient_dir"), "study_dir": r.get("study_dir"),
                        "error": f"{type(exc).__name__}: {exc}"})
    dash = write_dashboard(results)
    return {"dashboard": str(dash), "studies": out}
