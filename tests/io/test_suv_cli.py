"""``hitit suv``: the JSON audit, called through its argparse registration."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pydicom
import pytest
from io_synth import make_series, write_seg

from pipeline.io.suv_cli import cmd_suv, register

phantom = pytest.importorskip("pipeline.testing.phantom", reason="phantom generator not available")

# Default synthetic PET (io_synth): 75 kg, 370 MBq, 1 h of F-18 decay (see test_io_suv.py).
EXPECTED_FACTOR = 0.0002960750161260463


def _run(capsys, *argv) -> tuple[int, dict | None, str]:
    parser = argparse.ArgumentParser(prog="hitit")
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["suv", *map(str, argv)])
    assert args.func is cmd_suv
    rc = args.func(args)
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 else None), err


@pytest.fixture(scope="module")
def pet_only(tmp_path_factory):
    """A phantom patient's PET folder with its lesion SEG, RTSTRUCT and label map, but no CT."""
    root = tmp_path_factory.mktemp("cli")
    folder = phantom.generate_patient(root / "src", patient_index=1, size="small", seed=0)
    pet = root / "pet"
    shutil.copytree(folder / "PET", pet)
    for name in ("SEG_lesions.dcm", "RTSTRUCT_lesions.dcm"):
        shutil.copy(folder / name, root / name)
    shutil.copytree(folder / "labelmap", root / "labelmap")
    return root, json.loads((folder / "truth.json").read_text())


def test_audit_without_mask(capsys, pet_only):
    root, truth = pet_only
    rc, rep, _ = _run(capsys, root / "pet")
    assert rc == 0 and rep["suv_available"]
    a = rep["audit"]
    assert a["suv_per_stored_unit"] == pytest.approx(truth["pet"]["suvbw_factor"], rel=1e-9)
    assert (a["units"], a["decay_correction"]) == ("BQML", "START")
    assert a["reference_time_rule"] == "SeriesDate/SeriesTime"
    assert a["reference_time_iso"] == truth["pet"]["series_time"]
    assert "masks" not in rep


@pytest.mark.parametrize("mask", ["SEG_lesions.dcm", "RTSTRUCT_lesions.dcm",
                                  "labelmap/lesions.nii.gz"])
def test_stats_inside_masks_drawn_on_the_missing_ct(capsys, pet_only, mask):
    """The masks reference the CT, which is absent: read on their own grid, mapped to the PET
    by coverage; SUVmax of the deep liver lesion is its true uptake (6.0) within 1 %."""
    root, truth = pet_only
    les = next(x for x in truth["lesions"] if x["name"] == "liver_deep")
    rc, rep, _ = _run(capsys, root / "pet", "--mask", root / mask, "--label", "liver_deep")
    assert rc == 0
    (m,) = rep["masks"]
    assert m["name"] == "liver_deep" and "coverage" in m["mapping"]
    assert m["suvbw"]["max"] == pytest.approx(les["suv_max_voxelized"], rel=0.01)
    assert m["suvbw"]["min"] <= m["suvbw"]["median"] <= m["suvbw"]["max"]
    assert abs(m["pet_voxels"] - les["pet_voxel_count"]) <= 0.25 * les["pet_voxel_count"]
    assert m["activity_bqml"]["max"] == pytest.approx(
        m["suvbw"]["max"] / truth["pet"]["suvbw_factor"], rel=1e-5)


def test_mask_on_the_pet_grid_exact_and_missing_weight(capsys, tmp_path):
    """A SEG drawn on the PET itself: statistics over exactly its voxels. Without
    PatientWeight the audit still prints (exit 0) with the reason, and activity is reported."""
    s = make_series(tmp_path / "pet", modality="PT", n=4, order="sorted")
    m = np.zeros((4, 8, 10), bool)
    m[1:3, 2:5, 3:7] = True
    write_seg(tmp_path / "seg.dcm", ref=s, masks={1: m}, labels={1: "lesion_a"})
    rc, rep, _ = _run(capsys, tmp_path / "pet", "--mask", tmp_path / "seg.dcm")
    suv = s.values[m] * EXPECTED_FACTOR
    got = rep["masks"][0]
    assert got["pet_voxels"] == int(m.sum()) and got["mapping"] == "drawn on the PET grid"
    for key, ref in (("min", suv.min()), ("mean", suv.mean()), ("median", np.median(suv)),
                     ("max", suv.max())):
        assert got["suvbw"][key] == pytest.approx(ref, rel=1e-6), key
    for p in s.paths:
        ds = pydicom.dcmread(p)
        del ds.PatientWeight
        ds.save_as(p, enforce_file_format=True)
    rc, rep, _ = _run(capsys, tmp_path / "pet", "--mask", tmp_path / "seg.dcm")
    assert rc == 0 and not rep["suv_available"]
    assert "PatientWeight (0010,1030)" in rep["audit"]["suv_reason"]
    got = rep["masks"][0]
    assert got["suvbw"] is None and "PatientWeight" in got["suv_reason"]
    assert got["activity_bqml"]["max"] == pytest.approx(s.values[m].max(), rel=1e-6)


def test_input_errors_exit_2(capsys, tmp_path):
    make_series(tmp_path / "ct", n=2)
    rc, _, err = _run(capsys, tmp_path)
    assert rc == 2 and "no PET series" in err
    make_series(tmp_path / "p1", modality="PT", n=2)
    make_series(tmp_path / "p2", modality="PT", n=2)
    rc, _, err = _run(capsys, tmp_path)
    assert rc == 2 and "2 PET series" in err and "--series" in err
    s = make_series(tmp_path / "only", modality="PT", n=2)
    m = np.zeros((2, 8, 10), bool)
    m[0, 1, 1] = True
    write_seg(tmp_path / "seg.dcm", ref=s, masks={1: m}, labels={1: "a"})
    rc, _, err = _run(capsys, tmp_path / "only", "--mask", tmp_path / "seg.dcm", "--label", "b")
    assert rc == 2 and "no segment named 'b'" in err
