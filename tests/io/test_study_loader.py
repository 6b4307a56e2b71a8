"""The study loader (pipeline.io.study_loader) on a phantom patient, against its truth.json.

Every mask source of the phantom (lesions: SEG, RTSTRUCT, label map; organs: SEG, RTSTRUCT,
TotalSegmentator folder) is read through the one dispatcher with the configured name patterns;
``hitit suv`` reads the same masks as the study job; the layering of the packages holds.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import SegmentationError
from pipeline.io import study_loader as L
from pipeline.io.index import scan_archive
from pipeline.records import SegmentKind
from pipeline.sheet import build_study_sheet
from pipeline.testing import phantom


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    folder = phantom.generate_patient(root, patient_index=1, size="small", seed=0,
                                      variant="extended")
    truth = json.loads((folder / "truth.json").read_text())
    index = scan_archive(root)
    sheet = build_study_sheet(index)
    assert len(sheet) == 1
    row = sheet.iloc[0].to_dict()
    cfg = load_config()
    images = L.load_images(L.StudyInputs(row, index.files, index.root), cfg)
    return dict(root=root, folder=folder, truth=truth, index=index, row=row, cfg=cfg,
                images=images)


def _row_with(study, **changes) -> dict:
    row = dict(study["row"])
    row.update(changes)
    return row


def _series_of(index, modality: str, kind: str) -> str:
    s = index.series
    sel = s[(s["modality"] == modality) & (s["segment_kind"] == kind)]
    assert len(sel) == 1, (modality, kind, len(sel))
    return str(sel.iloc[0]["series_uid"])


def _lesion_rows(study) -> dict[str, dict]:
    index, root = study["index"], study["root"]
    lm = index.series[index.series["modality"] == "LABELMAP"].iloc[0]
    return {
        "seg": _row_with(study),
        "rtstruct": _row_with(study, lesion_mask_source="rtstruct",
                              lesion_mask_ref=_series_of(index, "RTSTRUCT", "lesion")),
        "labelmap": _row_with(study, lesion_mask_source="labelmap",
                              lesion_mask_ref=str(lm["first_path"])),
    }


def test_images_loaded_once_with_the_suv_of_truth(study):
    img, row, truth = study["images"], study["row"], study["truth"]
    assert set(img.ct_by_role) == {"noncontrast", "contrast"}
    assert img.ct_by_role["noncontrast"] is img.ct_by_series_uid[row["ct_series_uid"]]
    assert list(img.grids_by_series_uid) == [row["ct_series_uid"], row["ce_ct_series_uid"],
                                             row["pet_series_uid"]]
    assert img.used_series == {k: row[k] for k in ("ct_series_uid", "ce_ct_series_uid",
                                                   "pet_series_uid")}
    assert img.suv_audit.suvbw_factor == pytest.approx(truth["pet"]["suvbw_factor"], rel=1e-6)
    assert img.suv_reason == "" and img.warnings == ()
    # SUV = stored value x factor (BQML phantom: Bq/mL = stored units)
    np.testing.assert_allclose(img.pet_suv.array,
                               img.pet_stored.array * truth["pet"]["suvbw_factor"], rtol=1e-5)


def test_every_lesion_source_gives_the_truth_lesions_on_the_ct(study):
    """SEG equals truth voxel for voxel; RTSTRUCT and label map within 3 % (as in
    test_phantom_ingest); every lesion is recorded on the CT its file references in truth (the
    contrast CT: both CTs share one grid here, the reference decides)."""
    truth, index, cfg, img = study["truth"], study["index"], study["cfg"], study["images"]
    want = {les["name"]: les["voxel_count"] for les in truth["lesions"]}
    files = truth["files"]
    for source, row in _lesion_rows(study).items():
        sm = L.load_study_masks(L.StudyInputs(row, index.files, index.root),
                                img.grids_by_series_uid, cfg)
        got = {m.name: m.voxel_count for m in sm.lesions}
        assert set(got) == set(want), source
        tol = 0 if source == "seg" else 0.03
        for name, n in want.items():
            assert abs(got[name] - n) <= tol * n, (source, name, got[name], n)
        assert all(m.kind is SegmentKind.LESION for m in sm.lesions), source
        key = {"seg": "SEG_lesions.dcm", "rtstruct": "RTSTRUCT_lesions.dcm",
               "labelmap": "labelmap/lesions.nii.gz"}[source]
        ct_uid = truth["series"][files[key]["references_series"]]
        assert ct_uid == study["row"]["ce_ct_series_uid"]
        assert sm.lesion_grid_series_uids == (ct_uid,) * len(sm.lesions), source
        assert sm.used_series["lesion_mask"] == row["lesion_mask_ref"]


def test_organ_sources_read_with_the_configured_name_patterns(study):
    """Organs from SEG, RTSTRUCT and the TotalSegmentator folder; a lesion name pattern that
    matches "Spleen" turns the RTSTRUCT's Spleen ROI (RTROIInterpretedType ORGAN, decided by the
    names first) into a lesion, so the organ masks then lack it: the patterns of the
    configuration are the ones used."""
    index, cfg, img, folder = study["index"], study["cfg"], study["images"], study["folder"]
    grids = img.grids_by_series_uid
    rows = {
        "seg": _row_with(study),
        "rtstruct": _row_with(study, organ_mask_source="rtstruct",
                              organ_mask_ref=_series_of(index, "RTSTRUCT", "organ")),
        "totalseg": _row_with(study, organ_mask_source="totalseg",
                              organ_mask_ref=str((folder / "totalseg").relative_to(index.root))),
    }
    organs = {}
    for source, row in rows.items():
        sm = L.load_study_masks(L.StudyInputs(row, index.files, index.root), grids, cfg)
        assert not sm.warnings, (source, sm.warnings)
        assert sm.organs and all(m.kind is not SegmentKind.LESION for m in sm.organs.values())
        assert (sm.organ_segment_codes is not None) == (source == "seg")
        organs[source] = sm.organs
    assert sorted(organs["rtstruct"]) == ["Aorta", "Liver", "Lung_L", "Lung_R", "Spine",
                                          "Spleen"]
    assert "liver" in organs["totalseg"] and "spleen" in organs["totalseg"]
    # TotalSegmentator files were drawn on the non-contrast CT: no resampling, same voxels
    np.testing.assert_array_equal(organs["totalseg"]["liver"].full(),
                                  organs["rtstruct"]["Liver"].full())

    custom = copy.deepcopy(cfg)
    custom["index"]["lesion_name_patterns"] = [*cfg["index"]["lesion_name_patterns"], "spleen"]
    sm = L.load_study_masks(L.StudyInputs(rows["rtstruct"], index.files, index.root), grids,
                            custom)
    assert sorted(sm.organs) == ["Aorta", "Liver", "Lung_L", "Lung_R", "Spine"]


def test_rtstruct_reference_not_loaded_is_an_error_naming_the_tag(study):
    index, cfg, img = study["index"], study["cfg"], study["images"]
    row = _lesion_rows(study)["rtstruct"]
    pet_only = {study["row"]["pet_series_uid"]: img.grids_by_series_uid[study["row"]["pet_series_uid"]]}
    with pytest.raises(SegmentationError) as ei:
        L.read_masks(L.StudyInputs(row, index.files, index.root), "rtstruct",
                     row["lesion_mask_ref"], pet_only, cfg)
    assert "RTReferencedSeriesSequence (3006,0014)" in str(ei.value) and ei.value.hint
    with pytest.raises(SegmentationError, match="unknown mask source"):
        L.read_masks(L.StudyInputs(row, index.files, index.root), "png", "x", pet_only, cfg)


def test_hitit_suv_reads_the_same_masks_as_the_study_job(study):
    """Given the same loaded series, ``hitit suv``'s reader and the study loader return the same
    masks (names, kinds, grids, voxels) for every lesion source, also with non-default name
    patterns."""
    from pipeline.io.suv_cli import load_masks_for_grid

    index, img = study["index"], study["images"]
    cfg = copy.deepcopy(study["cfg"])
    cfg["index"]["lesion_name_patterns"] = ["liver_deep"]  # GTV / coded lesions stay lesions
    grids = img.grids_by_series_uid
    for source, row in _lesion_rows(study).items():
        inputs = L.StudyInputs(row, index.files, index.root)
        job = L.read_masks(inputs, source, row["lesion_mask_ref"], grids, cfg)
        ref = row["lesion_mask_ref"]
        path = index.root / ref if source == "labelmap" else inputs.paths(ref)[0]
        cli = load_masks_for_grid(path, grids, cfg)
        assert [(m.name, m.kind) for m in cli] == [(m.name, m.kind) for m in job], source
        for a, b in zip(cli, job):
            assert a.grid.same_as(b.grid) and a.bbox_zyx == b.bbox_zyx, (source, a.name)
            np.testing.assert_array_equal(a.crop, b.crop)


def test_hitit_suv_uses_the_configured_patterns(study, tmp_path):
    """A PET folder alone, the organ RTSTRUCT drawn on the (absent) CT: the Spleen ROI is an
    organ with the packaged patterns and a lesion when the configuration says so."""
    import shutil

    from pipeline.io.suv_cli import suv_report

    index, folder = study["index"], study["folder"]
    pet = tmp_path / "pet"
    shutil.copytree(folder / "PET", pet)
    rt = index.series_paths(_series_of(index, "RTSTRUCT", "organ"))[0]
    rep = suv_report(pet, mask=rt, label="Spleen", cfg=study["cfg"])
    (m,) = rep["masks"]
    assert m["kind"] == "organ" and m["pet_voxels"] > 0
    custom = copy.deepcopy(study["cfg"])
    custom["index"]["lesion_name_patterns"] = ["spleen"]
    (m2,) = suv_report(pet, mask=rt, label="Spleen", cfg=custom)["masks"]
    assert m2["kind"] == "lesion" and m2["pet_voxels"] == m["pet_voxels"]


def test_lesion_ids_are_slugs_numbered_in_order():
    assert L.lesion_ids(["Liver deep", "liver_deep", "", "Node #1"]) == [
        "liver_deep", "liver_deep-2", "lesion", "node_1"]
