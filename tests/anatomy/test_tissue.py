"""Study-wide tissue map on the phantom: body (table removed), bone, gas, lung, vessels, lung base."""

from __future__ import annotations

import numpy as np

from pipeline.anatomy.tissue import AIR, BODY, BONE, LARGE_VESSEL, LUNG, VESSEL
from pipeline.testing import phantom as P


def _full(tmap, bit):
    out = np.zeros(tmap.grid.shape_zyx, dtype=bool)
    out[tuple(slice(a, b) for a, b in tmap.bbox)] = (tmap.flags & bit) != 0
    return out


def test_flags_match_the_phantom_tissues(extended):
    a, tmap = extended.arrays, extended.ctx.tissue
    tissue = a.tissue_labels
    body_truth = (tissue != P.Tissue.AIR) & (tissue != P.Tissue.TABLE)
    body = _full(tmap, BODY)
    assert not (body & (tissue == P.Tissue.TABLE)).any()  # table removed
    # lesions are inside the body too; the outline may differ at partial voxels only
    assert np.count_nonzero(body ^ (body_truth | (a.lesion_labels > 0))) <= 0.001 * body.sum()
    np.testing.assert_array_equal(_full(tmap, BONE), tissue == P.Tissue.VERTEBRAL_COLUMN)
    lung_truth = np.isin(tissue, [P.Tissue.LUNG_LEFT, P.Tissue.LUNG_RIGHT])
    air = _full(tmap, AIR)
    assert np.array_equal(air, lung_truth & (a.lesion_labels == 0))
    np.testing.assert_array_equal(_full(tmap, LUNG), lung_truth)  # from the lung masks
    aorta = tissue == P.Tissue.AORTA
    np.testing.assert_array_equal(_full(tmap, VESSEL), aorta)
    np.testing.assert_array_equal(_full(tmap, LARGE_VESSEL), aorta)  # 24 mm > 3 mm
    assert tmap.lung_from_masks
    assert set(tmap.structures) == {"aorta", "liver", "lung_left", "lung_right", "spleen",
                                    "vertebral_column"}


def test_lung_base_is_the_inferior_lung_surface(extended):
    """Lung base points: bottom of the lung ellipsoids and the liver / spleen domes."""
    pts = extended.ctx.tissue.lung_base.data
    assert len(pts) > 100
    a = extended.arrays
    # every point is just below a lung voxel and above a non-lung one
    g = a.ct_grid
    above = np.rint(g.lps_to_zyx(pts + [0, 0, 1.5])).astype(int)
    below = np.rint(g.lps_to_zyx(pts - [0, 0, 1.5])).astype(int)
    lung = np.isin(a.tissue_labels, [P.Tissue.LUNG_LEFT, P.Tissue.LUNG_RIGHT])
    assert lung[tuple(above.T)].all() and not lung[tuple(below.T)].any()
    # they face down: none on the upper half of the lungs (centre z = 50 mm)
    assert pts[:, 2].max() < 50.0


def test_empty_body_is_a_user_facing_error_with_a_hint():
    """An all-air CT (no body voxel) is a FeatureError naming the threshold, not an internal bug."""
    import pytest

    from pipeline.anatomy.tissue import build_tissue_map
    from pipeline.errors import FeatureError
    from pipeline.geometry import Grid

    grid = Grid((4, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    ct = np.full(grid.shape_zyx, -1000.0, dtype=np.float32)
    with pytest.raises(FeatureError, match="no body voxel") as exc:
        build_tissue_map(ct, grid, np.zeros(grid.shape_zyx, bool), {}, bone_threshold_hu=300.0,
                         air_threshold_hu=-500.0, vessel_caliber_threshold_mm=8.0)
    assert "body_threshold_hu" in exc.value.hint
