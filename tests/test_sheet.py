"""The study sheet (pipeline.sheet): building, validation, atomic write, reading, queries."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent / "io"))  # shared synthetic archives
from index_archive import build_messy_archive  # noqa: E402
from io_synth import make_series, write_rtstruct, write_seg  # noqa: E402

from pipeline import sheet as sheetmod  # noqa: E402
from pipeline.errors import ConfigError, PipelineError  # noqa: E402
from pipeline.io.index import scan_archive  # noqa: E402
from pipeline.sheet import (  # noqa: E402
    STUDY_SHEET_COLUMNS,
    build_study_sheet,
    earlier_studies,
    read_study_sheet,
    sheet_for_index,
    study_row,
    validate_study_sheet,
    write_study_sheet,
)

SCHEMA = Path(__file__).resolve().parents[1] / "configs" / "studies.schema.yaml"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """See ``tests/io/index_archive.py``."""
    return build_messy_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def index(archive):
    return scan_archive(archive["root"])


# ------------------------------------------------------------------ building and validation
def test_study_sheet_choices(index, archive):
    sheet = build_study_sheet(index)
    row = sheet[sheet["study_uid"] == archive["study"]].iloc[0]
    assert row["ct_series_uid"] == archive["nc"].series_uid  # most slices among non-contrast
    assert row["ce_ct_series_uid"] == archive["ce"].series_uid
    assert row["pet_series_uid"] == archive["pet"].series_uid
    assert (row["lesion_mask_source"], row["lesion_mask_ref"]) == ("seg", archive["seg_les"])
    assert (row["organ_mask_source"], row["organ_mask_ref"]) == ("seg", archive["seg_org"])
    assert archive["seg_ghost"] in row["notes"] and "skipped" in row["notes"]
    assert "non-attenuation-corrected" in row["notes"]
    rt_first = build_study_sheet(index, mask_source_priority=("rtstruct", "seg", "labelmap"))
    r2 = rt_first[rt_first["study_uid"] == archive["study"]].iloc[0]
    assert (r2["lesion_mask_source"], r2["lesion_mask_ref"]) == ("rtstruct", archive["rt"])
    lm_first = build_study_sheet(index, mask_source_priority=("labelmap",))
    r3 = lm_first[lm_first["study_uid"] == archive["study"]].iloc[0]
    assert (r3["lesion_mask_source"], r3["lesion_mask_ref"]) == ("labelmap", "p1/lm/les.nii.gz")
    validate_study_sheet(sheet, SCHEMA, index=index)


def test_study_sheet_validation_errors(index, archive, tmp_path):
    sheet = build_study_sheet(index)
    i = int(np.flatnonzero(sheet["study_uid"] == archive["study"])[0])
    path = tmp_path / "studies.csv"
    write_study_sheet(sheet, path)
    back = read_study_sheet(path)
    validate_study_sheet(back, SCHEMA, index=index)

    def bad(col, value, match):
        s = back.copy()
        s.loc[i, col] = value
        with pytest.raises(ConfigError, match=match) as ei:
            validate_study_sheet(s, SCHEMA, index=index)
        # the message names the row (1-based, with patient and study) and the column
        assert f"row {i + 1} (patient {back.loc[i, 'patient_id']}, study {archive['study']})" \
            in ei.value.message
        assert col in ei.value.message
        return ei.value

    e = bad("pet_series_uid", "1.2.3.999", "not in the archive index")
    assert e.tag == "pet_series_uid"
    e = bad("ct_series_uid", archive["pet"].series_uid, "modality PT, expected CT")
    assert e.tag == "ct_series_uid"
    e = bad("lesion_mask_source", "nrrd", "lesion_mask_source")
    assert e.tag == "lesion_mask_source"
    e = bad("ce_ct_series_uid", "not-a-uid", "ce_ct_series_uid")
    assert e.tag == "ce_ct_series_uid"
    bad("lesion_mask_ref", "", "must be filled exactly when")
    s = back.copy()
    s["extra_column"] = "x"
    with pytest.raises(ConfigError, match="unknown column"):
        validate_study_sheet(s, SCHEMA)
    with pytest.raises(ConfigError, match="lacks column"):
        validate_study_sheet(back.drop(columns=["pet_series_uid"]), SCHEMA)


def test_edited_results_sheet_with_output_folders_validates(index):
    sheet = build_study_sheet(index)
    sheet["patient_dir"] = sheet["patient_id"]
    sheet["study_dir"] = sheet["study_uid"]
    validate_study_sheet(sheet, SCHEMA, index=index)


def test_pet_only_and_ct_only_studies_get_rows(tmp_path):
    pet_study, ct_study = generate_uid(), generate_uid()
    pet = make_series(tmp_path / "a" / "pet", modality="PT", study_uid=pet_study, n=4,
                      patient_id="PETONLY")
    nac = make_series(tmp_path / "a" / "nac", modality="PT", study_uid=pet_study, n=9,
                      patient_id="PETONLY", description="PET NAC",
                      extra=lambda ds, k: setattr(ds, "CorrectedImage", ["DECY"]))
    mask = np.zeros((4, 8, 10), bool)
    mask[1:3, 2:5, 2:6] = True
    seg_uid = write_seg(tmp_path / "a" / "seg.dcm", ref=pet, masks={1: mask},
                        labels={1: "lesion"})
    ct = make_series(tmp_path / "b" / "ct", study_uid=ct_study, n=5)  # patient P001
    rt = write_rtstruct(tmp_path / "b" / "rt.dcm", ref=ct, rois=[(1, "GTV", [
        np.array([[0, 0, 0], [3, 0, 0], [3, 3, 0]], float) + ct.positions[2]])])
    sheet = build_study_sheet(scan_archive(tmp_path)).set_index("patient_id")
    p = sheet.loc["PETONLY"]
    assert p["pet_series_uid"] == pet.series_uid  # AC preferred over a bigger NAC series
    assert p["ct_series_uid"] == "" and (p["lesion_mask_source"], p["lesion_mask_ref"]) == (
        "seg", seg_uid)
    assert "PET-only study" in p["notes"] and "drawn on pet" in p["notes"]
    assert nac.series_uid not in p.values
    c = sheet.loc["P001"]
    assert c["pet_series_uid"] == "" and c["lesion_mask_ref"] == rt
    assert "CT-only study" in c["notes"]


def test_results_sheet_with_study_date_validates(index):
    sheet = build_study_sheet(index)
    sheet["study_date"] = "20240115"
    validate_study_sheet(sheet, SCHEMA, index=index)
    sheet.loc[0, "study_date"] = "15.01.2024"
    with pytest.raises(ConfigError, match="study_date"):
        validate_study_sheet(sheet, SCHEMA)


def test_truncated_file_noted_in_its_study(index, archive):
    sheet = build_study_sheet(index)
    notes = sheet[sheet["study_uid"] == archive["study"]].iloc[0]["notes"]
    assert "cut_in_pixels.dcm" in notes and "truncated" in notes


def test_empty_index_gives_empty_sheet(tmp_path):
    sheet = build_study_sheet(scan_archive(tmp_path))
    assert sheet.empty and list(sheet.columns) == [*STUDY_SHEET_COLUMNS, "study_date"]


def test_sheet_carries_the_study_date_of_the_index(index, archive):
    sheet = build_study_sheet(index)
    files = index.files[index.files["study_uid"] == archive["study"]]
    expect = files[files["study_date"] != ""]["study_date"].mode().iloc[0]
    assert len(expect) == 8
    assert sheet.set_index("study_uid").loc[archive["study"], "study_date"] == expect


def test_sheet_for_index_automatic_and_user_sheet(index, archive, tmp_path):
    auto, source = sheet_for_index(index)
    assert source == "automatic series choice"
    assert {"study_date", "patient_dir", "study_dir"} <= set(auto.columns)
    row = auto.set_index("study_uid").loc[archive["study"]]
    assert (row["patient_dir"], row["study_dir"]) == ("P001", archive["study"])
    # a user's edited copy without study_date: validated, then dated from the index
    edited = auto.drop(columns=["study_date", "patient_dir", "study_dir"])
    i = int(np.flatnonzero(edited["study_uid"] == archive["study"])[0])
    edited.loc[i, "pet_series_uid"] = ""
    user = tmp_path / "edited.csv"
    write_study_sheet(edited, user)
    mine, source = sheet_for_index(index, user_sheet=user)
    assert source == f"user study sheet {user}"
    assert mine.loc[i, "pet_series_uid"] == "" and mine.loc[i, "study_date"] == row["study_date"]
    assert mine.loc[i, "study_dir"] == archive["study"]
    edited.loc[i, "ct_series_uid"] = "1.2.3.4.5"
    write_study_sheet(edited, user)
    with pytest.raises(ConfigError, match="ct_series_uid"):
        sheet_for_index(index, user_sheet=user)


# ------------------------------------------------------------------ read / write
def test_round_trip_keeps_empty_values_and_strings(tmp_path):
    sheet = pd.DataFrame({
        "patient_id": ["007", "NA", ""], "study_uid": ["1.2.3", "1.2.4", "1.2.5"],
        "pet_series_uid": ["", None, float("nan")],
        "notes": ["a, \"quoted\"; b", "nan", "line1\nline2"],
        "study_date": ["20240101", "", "20230101"],
    })
    path = write_study_sheet(sheet, tmp_path / "cohort" / "studies.csv")
    back = read_study_sheet(path)
    assert list(back.columns) == list(sheet.columns)
    assert back["patient_id"].tolist() == ["007", "NA", ""]  # leading zeros, no NA guessing
    assert back["pet_series_uid"].tolist() == ["", "", ""]  # one empty value: ""
    assert back["notes"].tolist() == ["a, \"quoted\"; b", "nan", "line1\nline2"]
    assert all(isinstance(v, str) for v in back.to_numpy().ravel())
    pd.testing.assert_frame_equal(read_study_sheet(write_study_sheet(back, path)), back)
    assert [p.name for p in path.parent.iterdir()] == ["studies.csv"]  # no temporary left


def test_interrupted_write_leaves_old_sheet_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "studies.csv"
    old = pd.DataFrame({"patient_id": ["P1"], "study_uid": ["1.2.3"]})
    write_study_sheet(old, path)
    before = path.read_bytes()
    new = pd.DataFrame({"patient_id": [f"P{i}" for i in range(2000)],
                        "study_uid": [f"1.2.{i}" for i in range(2000)]})
    import pipeline.io.tables as sheet_module

    def crash(_fd):  # the new sheet reached the temporary file, then the disk failed
        raise OSError("disk full")

    monkeypatch.setattr(sheet_module.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_study_sheet(new, path)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old sheet, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["studies.csv"]  # the partial file is gone
    # interrupted before any sheet existed: no file at all
    fresh = tmp_path / "new" / "studies.csv"
    monkeypatch.setattr(sheet_module.os, "fsync", crash)
    with pytest.raises(OSError):
        write_study_sheet(new, fresh)
    monkeypatch.undo()
    assert list(fresh.parent.iterdir()) == []


def test_interrupted_replace_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "studies.csv"

    def no_replace(src, dst):
        raise KeyboardInterrupt  # interrupted between the fsync and the rename

    import pipeline.io.tables as tables  # the sheet is written by io.tables.write_text_atomic

    monkeypatch.setattr(tables.os, "replace", no_replace)
    with pytest.raises(KeyboardInterrupt):
        write_study_sheet(pd.DataFrame({"patient_id": ["P1"]}), path)
    assert list(tmp_path.iterdir()) == []


def test_read_missing_or_bad_sheet_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_study_sheet(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ConfigError, match="cannot read study sheet"):
        read_study_sheet(tmp_path / "empty.csv")


# ------------------------------------------------------------------ per-study queries
def _results_sheet(rows):
    cols = ["patient_id", "study_uid", "study_date", "patient_dir", "study_dir"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows], columns=cols)


def test_study_row_exactly_once():
    sheet = _results_sheet([("P1", "1.1", "20240101", "P1", "1.1"),
                            ("P1", "1.2", "", "P1", "1.2"), ("P1", "1.2", "", "P1", "1.2")])
    assert study_row(sheet, "P1", "1.1") == {"patient_id": "P1", "study_uid": "1.1",
                                             "study_date": "20240101", "patient_dir": "P1",
                                             "study_dir": "1.1"}
    with pytest.raises(ConfigError, match="found 0 times"):
        study_row(sheet, "P1", "9.9")
    with pytest.raises(ConfigError, match="found 2 times"):
        study_row(sheet, "P1", "1.2")


def test_earlier_studies_order():
    sheet = _results_sheet([
        ("P1", "1.5", "20240301", "P1", "1.5"),
        ("P1", "1.9", "20240101", "P1", "1.9"),
        ("P1", "1.3", "20240201", "P1", "1.3"),
        ("P1", "1.4", "20240201", "P1", "1.4"),  # same day as 1.3: after it by UID
        ("P1", "1.1", "", "P1", "1.1"),  # undated: never earlier, has no earlier
        ("P2", "2.1", "20200101", "P2", "2.1"),  # another patient
    ])
    uids = lambda pd_, sd: [r["study_uid"] for r in earlier_studies(sheet, pd_, sd)]  # noqa: E731
    assert uids("P1", "1.5") == ["1.9", "1.3", "1.4"]  # oldest first
    assert uids("P1", "1.4") == ["1.9", "1.3"]
    assert uids("P1", "1.3") == ["1.9"]
    assert uids("P1", "1.9") == []
    assert uids("P1", "1.1") == []
    assert uids("P2", "2.1") == []
    # deterministic: the sheet's row order does not matter
    shuffled = sheet.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert [r["study_uid"] for r in earlier_studies(shuffled, "P1", "1.5")] == ["1.9", "1.3", "1.4"]
    # every query agrees with one total order of the dated studies
    dated = sorted((r for r in sheet.to_dict(orient="records") if r["study_date"]
                    and r["patient_dir"] == "P1"), key=lambda r: (r["study_date"], r["study_uid"]))
    for k, r in enumerate(dated):
        assert uids("P1", r["study_dir"]) == [d["study_uid"] for d in dated[:k]]


def test_output_dir_outside_results_is_pipeline_error(tmp_path):
    from pipeline.cohort import OutputPathError, study_output_dir

    assert study_output_dir(tmp_path, {"patient_dir": "P1", "study_dir": "1.2"}) == (
        tmp_path.resolve() / "studies" / "P1" / "1.2")
    with pytest.raises(OutputPathError, match="refusing to write outside the results folder") as ei:
        study_output_dir(tmp_path, {"patient_dir": "..", "study_dir": "cohort"})
    assert isinstance(ei.value, PipelineError) and ei.value.hint


def test_unchanged_sheet_is_not_rewritten(tmp_path):
    """The workflow's cohort step reruns on the sheet's modification time: same content, same file."""
    import os

    path = tmp_path / "studies.csv"
    sheet = pd.DataFrame({"patient_id": ["P1"], "study_uid": ["1.2.3"], "notes": [""]})
    write_study_sheet(sheet, path)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    write_study_sheet(sheet.copy(), path)
    assert path.stat().st_mtime_ns == 1_000_000_000
    write_study_sheet(sheet.assign(notes=["edited"]), path)
    assert path.stat().st_mtime_ns != 1_000_000_000
