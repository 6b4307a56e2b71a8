"""The study job (pipeline.study.run_study) on a phantom whose contrast CT is shifted.

Both CTs share one grid, but the lesion SEGs are drawn on different CTs (``SEG_lesions.dcm`` on
the shifted contrast CT, ``SEG_lesions_noncontrast.dcm`` on the non-contrast CT): the lesion
table's ``mask_referenced_series_uid`` names the CT each mask was drawn on, as truth.json says.
"""

from __future__ import annotations

import json

import pytest

from pipeline.config import load_config
from pipeline.io.index import scan_archive
from pipeline.io.tables import read_table
from pipeline.sheet import build_study_sheet
from pipeline.study import run_study
from pipeline.testing import phantom


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    folder = phantom.generate_patient(root, patient_index=1, size="small", seed=0,
                                      contrast_shift_mm=(6.0, 0.0, 0.0))
    truth = json.loads((folder / "truth.json").read_text())
    index = scan_archive(root)
    sheet = build_study_sheet(index)
    assert len(sheet) == 1
    return root, truth, index, sheet.iloc[0].to_dict()


@pytest.mark.parametrize("seg_file", ["SEG_lesions.dcm", "SEG_lesions_noncontrast.dcm"])
def test_lesion_rows_name_the_ct_the_mask_was_drawn_on(shifted, tmp_path, seg_file):
    root, truth, index, row = shifted
    info = truth["files"][seg_file]
    seg_uid = truth["series"][info["series"]]
    want_ct = truth["series"][info["references_series"]]
    assert {want_ct} <= {row["ct_series_uid"], row["ce_ct_series_uid"]}
    row = dict(row, lesion_mask_source="seg", lesion_mask_ref=seg_uid)
    prov = run_study(row, index.files, root, load_config(), tmp_path / "out")
    assert prov["status"] == "done", prov["failures"]
    assert prov["inputs"]["series"]["lesion_mask"] == seg_uid
    les = read_table(tmp_path / "out" / "lesions.csv")
    assert len(les) == len(truth["lesions"]) == prov["n_lesions"]
    assert set(les["mask_series_uid"]) == {seg_uid}
    assert set(les["mask_referenced_series_uid"]) == {want_ct}
    assert [s["stage"] for s in prov["stages"]] == ["load_images", "load_masks", "prepare",
                                                    "lesions", "key_images", "review_cache"]


def test_implausible_injection_time_refuses_the_suv_with_a_warning_row(shifted, tmp_path):
    """Injection 5 days before the scan: SUV refused (no rule sees it), a warning row in
    failures.csv naming the tag, the study still done, activity concentration still reported."""
    import shutil

    import pydicom

    from pipeline.io.index import scan_archive as rescan

    root, truth, _, _ = shifted
    copy = tmp_path / "archive"
    shutil.copytree(root, copy)
    n = 0
    for p in copy.rglob("*.dcm"):
        ds = pydicom.dcmread(p)
        if ds.Modality != "PT":
            continue
        info = ds.RadiopharmaceuticalInformationSequence[0]
        start = str(info.RadiopharmaceuticalStartDateTime)
        day = int(start[6:8])
        info.RadiopharmaceuticalStartDateTime = f"{start[:6]}{day - 5:02d}{start[8:]}"
        ds.save_as(p)
        n += 1
    assert n > 0
    index = rescan(copy)
    row = build_study_sheet(index).iloc[0].to_dict()
    prov = run_study(row, index.files, copy, load_config(), tmp_path / "out")
    assert prov["status"] == "done"
    les = read_table(tmp_path / "out" / "lesions.csv")
    assert les["suv_max"].isna().all()
    assert les["activity_max_bqml"].notna().all()
    assert les["suv_reason"].str.contains("(0018,1078)", regex=False).all()
    fails = read_table(tmp_path / "out" / "failures.csv")
    assert len(fails) >= 1 and set(fails["severity"]) == {"warning"}
    assert fails["tag"].str.contains("0018,1078").any()
    assert prov["suv_audit"]["severity"] == "warning"
