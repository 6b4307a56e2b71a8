"""Issue 12 item 10: many lesion segments, linear per-lesion cost and a worksheet that stays small.

A phantom SEG with N small segments (:func:`pipeline.testing.corpus.many_segment_seg`) is read
with every segment in place; the study job excludes other lesions from a lesion's CNR ring only
for the lesions whose box meets its crop (a constant number of neighbours here, not N); the
worksheet shows ``max_lesions`` lesions in full and the rest in one compact table.
scripts/benchmark_many_lesions.py prints the times for 100 / 300 / 1000 segments.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pydicom
import pytest

from pipeline.config import load_config
from pipeline.io import seg as seg_io
from pipeline.io.index import scan_archive
from pipeline.io.study_loader import StudyInputs, load_images
from pipeline.io.tables import read_table, write_table
from pipeline.sheet import build_study_sheet
from pipeline.testing import phantom
from pipeline.testing.corpus import many_segment_seg

N = 40


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    folder = phantom.generate_patient(root, patient_index=1, size="small", seed=0)
    cts = [pydicom.dcmread(p) for p in sorted((folder / "CT_contrast").iterdir())]
    ds, truth = many_segment_seg(pydicom.dcmread(folder / "SEG_lesions.dcm"), cts, N)
    ds.save_as(folder / "SEG_lesions.dcm")
    index = scan_archive(root)
    row = build_study_sheet(index).iloc[0].to_dict()
    return dict(root=root, folder=folder, truth=truth, index=index, row=row)


def test_generated_seg_reads_every_segment_with_its_voxels(many):
    img = load_images(StudyInputs(many["row"], many["index"].files, many["root"]), load_config())
    masks = seg_io.read_seg(many["folder"] / "SEG_lesions.dcm", grids=img.grids_by_series_uid)
    assert [m.segment_number for m in masks] == list(range(1, N + 1))
    for m, t in zip(masks, many["truth"]):
        assert m.name == t["label"] and m.voxel_count == t["voxel_count"] == 18
        assert tuple(b[0] for b in m.bbox_zyx) == tuple(t["index_zyx"])
    assert len({m.tracking_uid for m in masks}) == N


def test_ring_exclusion_visits_only_neighbouring_lesions(many, tmp_path, monkeypatch):
    """The other-lesion loop of the CNR ring must not be N x N."""
    from pipeline.features import ct as ct_mod
    from pipeline.study import run_study

    calls = {"n": 0}
    real = ct_mod.mask_on_grid

    def counting(mask, dst, t=None):
        calls["n"] += 1
        return real(mask, dst, t)

    monkeypatch.setattr(ct_mod, "mask_on_grid", counting)
    prov = run_study(many["row"], many["index"].files, many["root"], load_config(),
                     tmp_path / "out")
    assert prov["status"] == "done", prov["failures"]
    les = read_table(tmp_path / "out" / "lesions.csv")
    assert len(les) == N and not les["lesion_empty"].astype(bool).any()
    assert np.allclose(les["voxel_count"], 18)
    n_organs = 10  # organ masks per lesion ring (phantom organ SEG), an upper bound
    assert calls["n"] < N * (n_organs + 8), calls["n"]  # was N * (organs + N - 1)


def test_boxes_meet_is_an_interval_test():
    from pipeline.features.ct import _boxes_meet

    boxes = np.array([[0, 0, 0, 1, 1, 1], [2, 2, 2, 3, 3, 3], [np.nan] * 6], float)
    assert _boxes_meet(boxes, np.array([0.5, 0.5, 0.5, 2.5, 2.5, 2.5])).tolist() == [
        True, True, False]
    assert _boxes_meet(boxes, np.array([1.5, 1.5, 1.5, 1.8, 1.8, 1.8])).tolist() == [
        False, False, False]
    assert _boxes_meet(boxes[:0], np.zeros(6)).shape == (0,)


def _study_with_ranking(many, out):
    from pipeline.io.provenance import write_json
    from pipeline.ranking.longitudinal import rank_patient
    from pipeline.study import run_study

    cfg = load_config()
    run_study(many["row"], many["index"].files, many["root"], cfg, out)
    les = read_table(out / "lesions.csv")
    uid = many["row"]["study_uid"]
    write_table(rank_patient([(uid, "20240101", les)], cfg["ranking"])[uid], out / "ranking.csv")
    write_json(out / "ranking_provenance.json", {"worksheet_max_lesions": 10})
    return out


def test_worksheet_summarises_beyond_the_limit(many, tmp_path):
    from pipeline.report import worksheet as W

    d = _study_with_ranking(many, tmp_path / "out")
    ctx = W.worksheet_context(d)  # limit 10 from ranking_provenance.json
    full, rest = ctx["lesions"], ctx["lesions_rest"]
    assert ctx["max_lesions"] == 10
    roles = [r["role"] for r in full]
    assert len(full) == 10 + sum(1 for r in full[10:] if r["role"] in ("inject", "monitor"))
    assert len(full) + len(rest) == N
    assert not any(r["role"] in ("inject", "monitor") for r in rest)
    assert sorted(r["no"] for r in full + rest) == list(range(1, N + 1))
    assert [r["no"] for r in full[:10]] == list(range(1, 11))  # the first 10 by rank
    small = W.write_worksheet(d, tmp_path / "small.html").read_text()
    big = W.write_worksheet(d, tmp_path / "big.html", max_lesions=N).read_text()
    assert small.count('<article id="lesion-') == len(full)
    assert big.count('<article id="lesion-') == N
    body = re.search(r'<table id="ranked-rest".*?</table>', small, re.S).group(0)
    assert body.count("<tr>") == len(rest) + 1  # header row + one per lesion
    assert "ranked-rest" not in big
    assert len(small) < 0.5 * len(big)
    assert f"<dd>{N}</dd>" in small  # the lesion count is the whole study's
    assert json.loads((d / "keyimages" / "index.json").read_text())["lesions"]


def test_corpus_case_seg_1000_segments_is_documented():
    from pipeline.testing import corpus

    assert "seg_1000_segments" in corpus.case_names()
    assert "``seg_1000_segments``" in corpus.__doc__


def test_too_many_segments_for_the_body_is_a_clear_error(many):
    cts = [pydicom.dcmread(p) for p in sorted((many["folder"] / "CT_contrast").iterdir())]
    with pytest.raises(ValueError, match="soft-tissue positions"):
        many_segment_seg(pydicom.dcmread(many["folder"] / "SEG_lesions.dcm"), cts, 10**6)
