"""Every DICOM SR the project writes passes dicom3tools' ``dciodvfy`` with no error: the SRs of
the review outputs (workflow run on the sample archive), the TID 1501 variant written for
RTSTRUCT / label-map masks, and a study whose lesions were drawn on two CT series. A control
shows that the check does catch the error the SR used to have (a segment reference carrying
frame numbers too).

``dciodvfy`` prints its findings on stderr and exits 0 even with errors, so the test reads the
lines starting with ``Error``. Warnings are allowed (the local coding scheme 99HITIT, declared in
the SR's CodingSchemeIdentificationSequence, is still an "unrecognized defined term" to it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from pipeline.report import sr as S

pytestmark = pytest.mark.slow


def _findings(exe: str, path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of dciodvfy on one file."""
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (res.stdout + res.stderr).splitlines()
    assert any(ln.strip() == "Comprehensive3DSR" for ln in lines), f"{path}: not checked as an SR: {lines[:5]}"
    return ([ln for ln in lines if ln.startswith("Error")],
            [ln for ln in lines if ln.startswith("Warning")])


def _assert_valid(exe: str, path: Path) -> None:
    errors, warnings = _findings(exe, path)
    assert not errors, f"dciodvfy errors in {path}:\n" + "\n".join(errors)
    assert all("99HITIT" in w for w in warnings), "\n".join(w for w in warnings if "99HITIT" not in w)


def test_every_sr_of_the_workflow_passes_dciodvfy(results, dciodvfy):
    srs = sorted(Path(results["results"], "studies").glob(f"*/*/{S.SR_NAME}"))
    assert results["good"] / S.SR_NAME in srs
    for path in srs:
        _assert_valid(dciodvfy, path)


def test_tid1501_sr_and_two_source_series_pass_dciodvfy(results, dciodvfy, tmp_path):
    prov = json.loads((results["good"] / "provenance.json").read_text())
    nc, ce = prov["inputs"]["series"]["ct_series_uid"], prov["inputs"]["series"]["ce_ct_series_uid"]
    for source in ("seg", "rtstruct"):
        d = tmp_path / source / "study"
        shutil.copytree(results["good"], d)
        les = pd.read_csv(d / "lesions.csv", dtype={"lesion_id": str, "tracking_uid": str})
        les["mask_referenced_series_uid"] = [ce if i % 2 else nc for i in range(len(les))]
        les.to_csv(d / "lesions.csv", index=False)
        prov["inputs"]["study_sheet_row"]["lesion_mask_source"] = source
        (d / "provenance.json").write_text(json.dumps(prov))
        out = S.write_sr(d, results["archive"], results["results"] / "index", tmp_path / source / "x.dcm")
        templates = {g["template"] for g in S.read_measurements(out).values()}
        assert templates == ({"1411"} if source == "seg" else {"1501"})
        _assert_valid(dciodvfy, out)


def _segment_image_items(item):
    """Content items (depth first) that reference a segment of a SEG instance."""
    for child in item.get("ContentSequence", []):
        for ref in child.get("ReferencedSOPSequence", []):
            if "ReferencedSegmentNumber" in ref:
                yield ref
        yield from _segment_image_items(child)


def test_dciodvfy_catches_a_segment_reference_with_frame_numbers(results, dciodvfy, tmp_path):
    """Control: the check is not blind. Adding the frame numbers beside the segment number (what
    the SR did before) gives one dciodvfy error per segment reference."""
    ds = pydicom.dcmread(results["good"] / S.SR_NAME)
    refs = list(_segment_image_items(ds))
    assert refs and all("ReferencedFrameNumber" not in r for r in refs)
    for r in refs:
        r.ReferencedFrameNumber = [1]
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)
    errors, _ = _findings(dciodvfy, bad)
    hits = [e for e in errors if "ReferencedSegmentNumber" in e]
    assert len(hits) == len(refs), errors
