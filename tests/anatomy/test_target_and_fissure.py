"""Issue 15, items 3 and 5 on the anatomy side: the needle target point lies in viable tissue
(never the necrotic core), and a planned path from one lung lobe into another is flagged when the
lobe masks are known (silent, "not evaluated", without them).

Truth: the phantom's analytic geometry (necrotic_mass: core radius 20 mm, outer radius 30 mm;
the lungs' TotalSegmentator lobes are axial slabs) and hand-built label arrays.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from anatomy_phantom import mask_of

from pipeline.anatomy import stage
from pipeline.anatomy.access import LobeMap, fissure_crossings
from pipeline.features.ct import viable_target_point
from pipeline.geometry import Grid
from pipeline.records import SegmentKind
from pipeline.testing import phantom as P


# --------------------------------------------------------------------------- target point
def _necrotic_mass(extended):
    k = [les.name for les in extended.arrays.design.lesions].index("necrotic_mass") + 1
    les = extended.arrays.design.lesions[k - 1]
    lesion = extended.arrays.lesion_labels == k
    core = extended.arrays.lesion_core & lesion
    return les, lesion, core


def test_viable_target_point_on_the_phantom_necrotic_mass(extended):
    les, lesion, core = _necrotic_mass(extended)
    grid = extended.grid
    p = viable_target_point(lesion, core, grid)
    assert p is not None
    r = float(np.linalg.norm(p - np.asarray(les.centre_lps_mm)))
    # the middle of the 10 mm viable rim (20 < r < 30), within a voxel diagonal (2.5, 2.5, 3 mm)
    diag = float(np.linalg.norm(grid.spacing_xyz_mm))
    assert les.core_radius_mm < r < les.semi_axes_mm[0]
    assert abs(r - 25.0) <= diag / 2 + 0.1
    # distance of the target point to the necrotic core > 0 (analytic core sphere)
    assert r - les.core_radius_mm >= 2.5
    idx = np.rint(grid.lps_to_zyx(p[None, :])[0]).astype(int)
    assert lesion[tuple(idx)] and not core[tuple(idx)]


def test_viable_target_point_is_none_when_the_centre_is_viable():
    g = Grid((21, 21, 21), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    zz, yy, xx = np.indices(g.shape_zyx)
    r = np.sqrt((xx - 10) ** 2 + (yy - 10) ** 2 + (zz - 10) ** 2)
    lesion = r <= 8
    # no necrosis; necrosis only off-centre: the centre is viable, the centroid is a fine target
    assert viable_target_point(lesion, np.zeros_like(lesion), g) is None
    assert viable_target_point(lesion, lesion & (xx > 15), g) is None
    # a necrotic core: the point sits in the middle of the rim (r = 6 between the core's 4 and 8)
    p = viable_target_point(lesion, lesion & (r <= 4), g)
    assert p is not None and abs(np.linalg.norm(p - 10.0) - 6.0) <= 1.0
    # all necrotic: nothing viable to aim at
    assert viable_target_point(lesion, lesion, g) is None


def _features(p_viable=None, suv_peak=None, suv_max=None, centroid=(70.0, -40.0, -50.0),
              necrosis=0.3):
    f = {f"centroid_{a}_mm": v for a, v in zip("xyz", centroid)}
    f["necrosis_fraction"] = necrosis
    if p_viable is not None:
        f.update({f"viable_target_{a}_mm": float(v) for a, v in zip("xyz", p_viable)})
    if suv_peak is not None:
        f.update({f"suv_peak_{a}_mm": float(v) for a, v in zip("xyz", suv_peak)})
        f["suv_peak"], f["suv_max"] = suv_max, suv_max
    return f


def test_stage_target_point_uses_viable_tissue_without_pet(extended):
    les, lesion, core = _necrotic_mass(extended)
    m = mask_of(lesion, extended.grid, "necrotic_mass")
    centre = np.asarray(les.centre_lps_mm)
    pv = viable_target_point(lesion, core, extended.grid)
    # without PET: the viable point, with a note saying where and why
    p, src, note = stage.target_point(m, _features(pv), extended.cfg)
    assert src == "viable" and np.allclose(p, pv)
    assert "necrotic" in note and "viable tissue farthest" in note and "30%" in note
    assert np.linalg.norm(p - centre) - les.core_radius_mm > 0
    # the same lesion without necrosis: the centroid (silent)
    p, src, note = stage.target_point(m, _features(None, necrosis=0.0), extended.cfg)
    assert src == "centroid" and note == ""
    # configuration decides: without the viable source the centroid, inside the core
    cfg = copy.deepcopy(extended.cfg)
    cfg["ranking"]["target_point"]["sources"] = ["suv_peak", "centroid"]
    p, src, _ = stage.target_point(m, _features(pv), cfg)
    assert src == "centroid" and np.linalg.norm(p - centre) < les.core_radius_mm


def test_stage_target_point_prefers_the_pet_peak_in_the_rim(extended):
    les, lesion, core = _necrotic_mass(extended)
    m = mask_of(lesion, extended.grid, "necrotic_mass")
    pv = viable_target_point(lesion, core, extended.grid)
    rim = np.asarray(les.centre_lps_mm) + np.array([0.0, -25.0, 0.0])
    p, src, _ = stage.target_point(m, _features(pv, rim, 5.0), extended.cfg)
    assert src == "suv_peak" and np.allclose(p, rim)
    # a non-avid lesion's hottest voxel is noise: the viable point again
    p, src, _ = stage.target_point(m, _features(pv, rim, 1.0), extended.cfg)
    assert src == "viable"


# --------------------------------------------------------------------------- fissures
def _slab_lobes(gap_vox: int = 0) -> tuple[LobeMap, Grid]:
    """Two lobes on a 1 mm grid: x < 20 lobe A, x >= 20 + gap lobe B (y, z all)."""
    g = Grid((10, 10, 60), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    labels = np.zeros(g.shape_zyx, np.uint8)
    labels[:, :, :20] = 1
    labels[:, :, 20 + gap_vox:] = 2
    return LobeMap(g, labels, ((0, 10), (0, 10), (0, 60)), ("lung_upper_lobe_right",
                                                           "lung_middle_lobe_right")), g


def test_fissure_crossings_counts_lobe_changes_along_the_path():
    lobes, g = _slab_lobes()
    les = mask_of(np.pad(np.ones((3, 3, 3), bool), ((3, 4), (3, 4), (3, 54))), g, "t")
    target = np.array([4.0, 4.0, 4.0])   # in the lesion (lobe A side)
    n, seq = fissure_crossings(lobes, les, np.array([50.0, 4.0, 4.0]), target, max_gap_mm=5.0)
    assert n == 1 and seq == ["lung_upper_lobe_right", "lung_middle_lobe_right"]
    n, seq = fissure_crossings(lobes, les, np.array([15.0, 4.0, 8.0]), target, max_gap_mm=5.0)
    assert n == 0 and seq == ["lung_upper_lobe_right"]
    # an unlabelled 8 mm gap between the lobes: a fissure only when the allowed gap covers it
    gapped, _ = _slab_lobes(gap_vox=8)
    end = np.array([50.0, 4.0, 4.0])
    assert fissure_crossings(gapped, les, end, target, max_gap_mm=5.0)[0] == 0
    assert fissure_crossings(gapped, les, end, target, max_gap_mm=10.0)[0] == 1


def _lobe_masks(extended, split):
    """Organ masks of the phantom with the right lung split into two 'lobes' by ``split``."""
    a = extended.arrays
    organs = {n: mask_of(a.organ_mask(n), extended.grid, n, SegmentKind.ORGAN)
              for n in P.ORGAN_NAMES if n != "lung_right"}
    lung = a.organ_mask("lung_right")
    one = split(lung)
    organs["lung_upper_lobe_right"] = mask_of(lung & one, extended.grid, "lung_upper_lobe_right",
                                              SegmentKind.ORGAN)
    organs["lung_lower_lobe_right"] = mask_of(lung & ~one, extended.grid, "lung_lower_lobe_right",
                                              SegmentKind.ORGAN)
    return organs


@pytest.fixture(scope="module")
def lung_deep_rows(extended):
    """lung_deep through the anatomy stage: lobes unknown, the phantom's axial lobe slabs, and
    a split across the planned path halfway along its aerated part."""
    from pipeline.records import Volume

    ct = Volume(extended.arrays.ct_noncontrast_hu, extended.grid, "HU", "ct")
    m = extended.masks["lung_deep"]
    plain = extended.rows["lung_deep"]
    zs = P.grid_axes(extended.grid)[2]
    slabs = _lobe_masks(extended, lambda lung: np.broadcast_to(
        (zs >= 55.0)[:, None, None], lung.shape))
    entry = np.array([plain[f"entry_{a}_mm"] for a in "xyz"])
    target = np.array([plain[f"target_{a}_mm"] for a in "xyz"])
    d = (entry - target) / np.linalg.norm(entry - target)
    # the middle of the aerated stretch beyond the lesion surface
    s_mid = plain["path_length_mm"] - plain["path_length_to_surface_mm"] + 0.5 * plain[
        "aerated_lung_path_mm"]
    mid = target + d * s_mid
    zyx = np.indices(extended.grid.shape_zyx).reshape(3, -1).T.astype(float)
    pts = extended.grid.zyx_to_lps(zyx)
    side = ((pts - mid) @ d < 0).reshape(extended.grid.shape_zyx)
    across = _lobe_masks(extended, lambda lung: side)
    out = {"unknown": plain}
    for key, organs in (("slabs", slabs), ("across", across)):
        ctx = stage.prepare({"noncontrast": ct}, extended.grid, organs, extended.cfg)
        out[key] = stage.lesion_columns(m, ctx, extended.cfg, features={})
    return out


def test_fissure_columns_on_the_phantom(lung_deep_rows):
    r = lung_deep_rows
    # lobes unknown: not evaluated, with the reason
    assert r["unknown"]["fissure_crossings"] is None
    assert "not evaluated" in r["unknown"]["fissure_reason"]
    assert r["unknown"]["aerated_lung_path_mm"] > 10.0
    # the same path (lobes do not change the planning) ...
    for key in ("slabs", "across"):
        assert r[key]["path_length_mm"] == pytest.approx(r["unknown"]["path_length_mm"])
        assert r[key]["fissure_reason"] == ""
    # ... within the upper-lobe slab (lung_deep lies at z 57.5-77.5, the fissure at z = 55):
    assert r["slabs"]["fissure_crossings"] == 0
    assert r["slabs"]["fissure_lobes"] == "lung_upper_lobe_right"
    # ... and across a lobe boundary cut through the middle of its aerated part
    assert r["across"]["fissure_crossings"] == 1
    assert r["across"]["fissure_lobes"] == "lung_upper_lobe_right > lung_lower_lobe_right"


def test_fissure_rule_fires_only_where_lobes_say_so(lung_deep_rows, extended):
    import pandas as pd

    from pipeline.ranking.rules import apply_rules, derive_columns

    cfg = copy.deepcopy(extended.cfg["ranking"])
    rows = []
    for key, row in lung_deep_rows.items():
        rows.append(dict(row, lesion_id=key, longest_diameter_mm=20.0, short_axis_mm=20.0))
    df = derive_columns(pd.DataFrame(rows), cfg)
    out = {o.lesion_id: o for o in apply_rules(df, cfg)}
    assert "FISSURE_CROSSING" in out["across"].fired
    assert "FISSURE_CROSSING" not in out["slabs"].fired
    assert "FISSURE_CROSSING" not in out["slabs"].not_evaluated
    assert "FISSURE_CROSSING" in out["unknown"].not_evaluated
    msg = next(t for c, _, t in out["across"].messages if c == "FISSURE_CROSSING")
    assert "1 fissure(s) (lung_upper_lobe_right > lung_lower_lobe_right)" in msg
