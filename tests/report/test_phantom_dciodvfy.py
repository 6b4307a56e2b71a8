"""Every DICOM object type the phantom writes passes dicom3tools' ``dciodvfy`` with no error.

CT (both phases), PET, lesion and organ SEG (and the SEG drawn on the non-contrast CT of a
shifted phantom), lesion and organ RTSTRUCT, and the many-segment SEG of the corpus. The PET
used to carry PatientPosition together with PatientOrientationCodeSequence and a
NumberOfTimeSlices of a static series, the RTSTRUCT no Frame of Reference module. ``dciodvfy``
exits 0 even with errors: the lines starting with ``Error`` are read. Skipped with the reason
only when dicom3tools cannot be installed (fixture ``dciodvfy``, tests/report/conftest.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from pipeline.testing import phantom


def _errors(exe: str, path: Path) -> list[str]:
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120,
                         check=False)
    lines = (res.stdout + res.stderr).splitlines()
    assert lines, f"dciodvfy said nothing about {path}"
    return [ln for ln in lines if ln.startswith("Error")]


@pytest.fixture(scope="module")
def patients(tmp_path_factory):
    root = tmp_path_factory.mktemp("dciodvfy")
    ext = phantom.generate_patient(root, patient_index=1, size="small", seed=0,
                                   variant="extended")
    shifted = phantom.generate_patient(root, patient_index=2, size="small", seed=0,
                                       contrast_shift_mm=(6.0, 0.0, 0.0))
    return ext, shifted


def _objects(ext: Path, shifted: Path) -> dict[str, Path]:
    objs = {}
    for folder in (ext, shifted):
        for sub in ("CT_contrast", "CT_noncontrast", "PET"):
            files = sorted((folder / sub).glob("*.dcm"))
            objs[f"{folder.name}/{sub} first"] = files[0]
            objs[f"{folder.name}/{sub} last"] = files[-1]
        for p in sorted(folder.glob("*.dcm")):
            objs[f"{folder.name}/{p.name}"] = p
    return objs


def test_every_phantom_object_type_passes_dciodvfy(patients, dciodvfy):
    ext, shifted = patients
    objs = _objects(ext, shifted)
    modalities = {str(pydicom.dcmread(p, stop_before_pixels=True).Modality) for p in objs.values()}
    assert {"CT", "PT", "SEG", "RTSTRUCT"} <= modalities
    assert any("SEG_lesions_noncontrast" in k for k in objs) and any("RTSTRUCT_organs" in k
                                                                     for k in objs)
    bad = {k: e for k, p in objs.items() if (e := _errors(dciodvfy, p))}
    assert not bad, "\n".join(f"{k}: {e}" for k, e in bad.items())


def test_many_segment_seg_passes_dciodvfy(patients, dciodvfy, tmp_path):
    from pipeline.testing.corpus import many_segment_seg

    ext, _ = patients
    cts = [pydicom.dcmread(p) for p in sorted((ext / "CT_contrast").glob("*.dcm"))]
    ds, _ = many_segment_seg(pydicom.dcmread(ext / "SEG_lesions.dcm"), cts, 25)
    ds.save_as(tmp_path / "many.dcm")
    assert not _errors(dciodvfy, tmp_path / "many.dcm")


def test_the_check_catches_the_old_pet_error(patients, dciodvfy, tmp_path):
    """Control: PatientPosition put back next to PatientOrientationCodeSequence is an error."""
    ext, _ = patients
    ds = pydicom.dcmread(sorted((ext / "PET").glob("*.dcm"))[0])
    ds.PatientPosition = "HFS"
    ds.save_as(tmp_path / "pet.dcm")
    assert any("PatientPosition" in e for e in _errors(dciodvfy, tmp_path / "pet.dcm"))
