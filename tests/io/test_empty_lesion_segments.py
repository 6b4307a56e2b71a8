"""Empty lesion segments are kept (issue 13 contract): a row with ``lesion_empty`` true.

A phantom SEG whose lesion segment 2 has every frame zeroed (declared, no voxel) and a phantom
RTSTRUCT whose lesion ROI lost its contours: the readers keep the lesion as an empty mask when
asked (organ segments are still skipped), the study job writes its row with zeros, empty
centroid and the reason, the other lesions are measured as without the empty one, the ranking
gives it tier not_suitable by rule ``LESION_EMPTY`` and no key image is drawn for it.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pack_bits

from pipeline.config import load_config
from pipeline.io import rtstruct, seg
from pipeline.io.index import scan_archive
from pipeline.io.study_loader import EMPTY_SEGMENT_REASON, StudyInputs, load_images
from pipeline.io.tables import read_table
from pipeline.records import SegmentKind
from pipeline.sheet import build_study_sheet
from pipeline.study import run_study
from pipeline.testing import phantom

EMPTIED = 2  # SegmentNumber / lesion index (1-based) emptied in the tests


def _blank(path, numbers=None) -> None:
    """Zero every frame of the given segments (all when None) of the SEG at ``path``."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.copy()
    if arr.ndim == 2:
        arr = arr[None]
    for f, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        n = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if numbers is None or n in numbers:
            arr[f] = 0
    ds.PixelData = pack_bits(arr)
    ds.save_as(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("empty_base")
    folder = phantom.generate_patient(root, patient_index=1, size="small", seed=0)
    truth = json.loads((folder / "truth.json").read_text())
    index = scan_archive(root)
    row = build_study_sheet(index).iloc[0].to_dict()
    out = root.parent / (root.name + "_out")
    prov = run_study(row, index.files, root, load_config(), out)
    assert prov["status"] == "done", prov["failures"]
    return dict(root=root, folder=folder, truth=truth, lesions=read_table(out / "lesions.csv"))


def _copy_with(base, tmp_path, numbers):
    root = tmp_path / "archive"
    shutil.copytree(base["root"], root)
    folder = root / base["folder"].name
    _blank(folder / "SEG_lesions.dcm", numbers)
    index = scan_archive(root)
    row = build_study_sheet(index).iloc[0].to_dict()
    return root, folder, index, row


def test_seg_reader_keeps_an_empty_lesion_segment_only_when_asked(base, tmp_path):
    root, folder, index, row = _copy_with(base, tmp_path, {EMPTIED})
    img = load_images(StudyInputs(row, index.files, root), load_config())
    path = folder / "SEG_lesions.dcm"
    n_truth = len(base["truth"]["lesions"])
    warns: list[str] = []
    default = seg.read_seg(path, grids=img.grids_by_series_uid, warnings=warns)
    assert len(default) == n_truth - 1
    assert EMPTIED not in {m.segment_number for m in default}
    assert any("is empty; skipped" in w for w in warns)
    warns = []
    kept = seg.read_seg(path, grids=img.grids_by_series_uid, warnings=warns,
                        keep_empty_lesions=True)
    assert [m.segment_number for m in kept] == list(range(1, n_truth + 1))  # SEG order kept
    empty = kept[EMPTIED - 1]
    assert empty.voxel_count == 0 and seg.is_empty_mask(empty)
    assert empty.crop.shape == (0, 0, 0) and empty.bbox_zyx == seg.EMPTY_BBOX
    assert empty.kind == SegmentKind.LESION
    assert empty.name == base["truth"]["lesions"][EMPTIED - 1]["name"]
    assert empty.tracking_uid  # the phantom writes a TrackingUID per segment
    assert any("kept as an empty lesion" in w for w in warns)
    assert all(m.voxel_count > 0 for i, m in enumerate(kept) if i != EMPTIED - 1)


def test_empty_organ_segment_is_still_skipped(base, tmp_path):
    root, folder, index, row = _copy_with(base, tmp_path, None)
    organ_seg = folder / "SEG_organs.dcm"
    ds = pydicom.dcmread(organ_seg)
    first = int(ds.SegmentSequence[0].SegmentNumber)
    _blank(organ_seg, {first})
    img = load_images(StudyInputs(row, index.files, root), load_config())
    got = seg.read_seg(organ_seg, grids=img.grids_by_series_uid, keep_empty_lesions=True)
    assert first not in {m.segment_number for m in got}
    assert all(m.voxel_count > 0 for m in got)


def test_rtstruct_lesion_roi_without_contours_is_kept_empty(base, tmp_path):
    root = tmp_path / "archive"
    shutil.copytree(base["root"], root)
    path = root / base["folder"].name / "RTSTRUCT_lesions.dcm"
    ds = pydicom.dcmread(path)
    rc = ds.ROIContourSequence[EMPTIED - 1]
    roi_number = int(rc.ReferencedROINumber)
    del rc.ContourSequence
    ds.save_as(path)
    index = scan_archive(root)
    row = build_study_sheet(index).iloc[0].to_dict()
    inputs = StudyInputs(row, index.files, root)
    img = load_images(inputs, load_config())
    refs, _ = rtstruct.rtstruct_references(ds)
    ref = next(u for u in refs if u in img.grids_by_series_uid)
    grid = img.grids_by_series_uid[ref]
    skipped = rtstruct.read_rtstruct(path, grid=grid, series_uid=ref)
    assert roi_number not in {m.segment_number for m in skipped}
    kept = rtstruct.read_rtstruct(path, grid=grid, series_uid=ref, keep_empty_lesions=True)
    assert len(kept) == len(skipped) + 1
    empty = next(m for m in kept if m.segment_number == roi_number)
    assert empty.voxel_count == 0 and empty.kind == SegmentKind.LESION
    assert empty.grid is grid and empty.referenced_series_uid == ref


def test_study_writes_the_empty_lesion_row_and_the_rest_is_unaffected(base, tmp_path):
    root, _folder, index, row = _copy_with(base, tmp_path, {EMPTIED})
    out = tmp_path / "out"
    prov = run_study(row, index.files, root, load_config(), out)
    assert prov["status"] == "done", prov["failures"]
    assert any("kept as an empty lesion" in w for w in prov["warnings"])
    les = read_table(out / "lesions.csv")
    ref = base["lesions"]
    assert list(les["lesion_id"]) == list(ref["lesion_id"])  # same ids, same order
    assert les["lesion_empty"].tolist() == [i == EMPTIED - 1 for i in range(len(ref))]
    e = les.iloc[EMPTIED - 1]
    assert e["voxel_count"] == 0
    for c in ("volume_ml", "longest_diameter_mm", "short_axis_mm"):
        assert e[c] == 0.0, c
    for c in ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "suv_max", "ct_nc_hu_mean",
              "max_3d_diameter_mm", "skin_depth_mm", "target_x_mm"):
        if c in les.columns:
            assert np.isnan(e[c]), c
    for c in ("suv_reason", "ct_hu_reason", "organ_reason", "access_reason", "radiomics_reason"):
        assert e[c] == EMPTY_SEGMENT_REASON, (c, e[c])
    assert e["tracking_uid"] == ref.iloc[EMPTIED - 1]["tracking_uid"] != ""
    assert e["lesion_label"] == ref.iloc[EMPTIED - 1]["lesion_label"]
    assert e["segment_number"] == EMPTIED
    # the other lesions: shape identical, SUVmax identical (their own voxels only)
    others = les[~les["lesion_empty"].astype(bool)].set_index("lesion_id")
    want = ref.set_index("lesion_id").loc[others.index]
    for c in ("voxel_count", "volume_ml", "longest_diameter_mm", "short_axis_mm",
              "centroid_x_mm", "suv_max", "organ"):
        assert (others[c] == want[c]).all(), c
    assert not others["lesion_empty"].astype(bool).any()
    # key images: every lesion but the empty one
    names = {p.stem for p in (out / "keyimages").glob("*.png")}
    assert e["lesion_id"] not in names
    assert set(others.index) <= names


def test_ranking_excludes_the_empty_lesion_by_rule_lesion_empty(base, tmp_path):
    from pipeline.ranking.longitudinal import rank_patient

    root, _folder, index, row = _copy_with(base, tmp_path, {EMPTIED})
    out = tmp_path / "out"
    run_study(row, index.files, root, load_config(), out)
    les = read_table(out / "lesions.csv")
    ranked = rank_patient([(row["study_uid"], "20240101", les)], load_config()["ranking"])
    r = ranked[row["study_uid"]].set_index("lesion_id")
    lid = les.iloc[EMPTIED - 1]["lesion_id"]
    assert r.loc[lid, "tier"] == "not_suitable"
    assert "LESION_EMPTY" in r.loc[lid, "reasons"].split(";")
    assert r.loc[lid, "role"] != "inject"
    assert "segment has no voxel" in r.loc[lid, "explanation"]
    assert not r.drop(index=lid)["reasons"].fillna("").str.contains("LESION_EMPTY").any()


def test_every_segment_empty_is_a_done_study_with_a_warning(base, tmp_path):
    root, _folder, index, row = _copy_with(base, tmp_path, None)
    out = tmp_path / "out"
    prov = run_study(row, index.files, root, load_config(), out)
    assert prov["status"] == "done", prov["failures"]
    assert any("is empty (no voxel)" in w for w in prov["warnings"])
    les = read_table(out / "lesions.csv")
    assert len(les) == len(base["truth"]["lesions"])
    assert les["lesion_empty"].astype(bool).all()
    assert (les["volume_ml"] == 0).all()
