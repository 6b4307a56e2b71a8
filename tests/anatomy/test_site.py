"""Lesion site: organ by overlap/adjacency/name, site class, skin depth, capsule/vessel/pleura distances."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.anatomy.body import SkinSurface
from pipeline.anatomy.site import organ_term, site_features
from pipeline.errors import FeatureError
from pipeline.geometry import Grid, bbox_of
from pipeline.records import LesionMask, MaskSource, SegmentKind

G = Grid((60, 300, 300), (0.8, 0.8, 2.5), (-120.0, -120.0, -75.0))
LIVER_C, LIVER_R = np.array([-50.0, 10.0, 0.0]), 55.0
AORTA_XY, AORTA_R = np.array([45.0, 40.0]), 11.0
LUNG_C, LUNG_R = np.array([55.0, -65.0, 0.0]), 45.0


def make_mask(grid: Grid, lo_lps, hi_lps, inside, name: str, kind=SegmentKind.LESION, minus=None) -> LesionMask:
    """Mask of ``inside(points_lps)`` over the LPS box [lo, hi] (axis-aligned grid)."""
    lo = np.maximum(np.floor(grid.lps_to_zyx(np.array([lo_lps]))[0]).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(grid.lps_to_zyx(np.array([hi_lps]))[0]).astype(int) + 2, grid.shape_zyx)
    zz, yy, xx = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
    pts = grid.zyx_to_lps(np.column_stack([zz.ravel(), yy.ravel(), xx.ravel()]))
    m = inside(pts)
    if minus is not None:
        m &= ~minus(pts)
    m = m.reshape(zz.shape)
    bb = bbox_of(m)
    return LesionMask(
        name, MaskSource.SEG, grid,
        tuple((int(a + l), int(b + l)) for (a, b), l in zip(bb, lo)),
        m[tuple(slice(a, b) for a, b in bb)], kind=kind,
    )


def ball(c, r):
    c = np.asarray(c, float)
    return lambda p: np.linalg.norm(p - c, axis=1) <= r


def sphere(c, r, name="lesion", kind=SegmentKind.LESION, minus=None, grid=G) -> LesionMask:
    c = np.asarray(c, float)
    return make_mask(grid, c - r, c + r, ball(c, r), name, kind, minus)


def organs(liver_minus=None) -> dict[str, LesionMask]:
    liver = sphere(LIVER_C, LIVER_R, "liver", SegmentKind.ORGAN, minus=liver_minus)
    aorta = make_mask(
        G, [*(AORTA_XY - AORTA_R), -80], [*(AORTA_XY + AORTA_R), 80],
        lambda p: np.linalg.norm(p[:, :2] - AORTA_XY, axis=1) <= AORTA_R, "aorta", SegmentKind.ORGAN,
    )
    upper = make_mask(
        G, LUNG_C - LUNG_R, LUNG_C + LUNG_R,
        lambda p: ball(LUNG_C, LUNG_R)(p) & (p[:, 2] > 0), "lung_upper_lobe_right", SegmentKind.ORGAN,
    )
    lower = make_mask(
        G, LUNG_C - LUNG_R, LUNG_C + LUNG_R,
        lambda p: ball(LUNG_C, LUNG_R)(p) & (p[:, 2] <= 0), "lung_lower_lobe_right", SegmentKind.ORGAN,
    )
    return {"liver": liver, "aorta": aorta, "lung_upper_lobe_right": upper, "lung_lower_lobe_right": lower}


@pytest.fixture(scope="module")
def org():
    return organs()


@pytest.fixture(scope="module")
def skin():
    """Elliptic-cylinder body filling most of the grid (semi-axes 115 x 110 mm)."""
    ny, nx = G.shape_zyx[1:]
    j, i = np.mgrid[0:ny, 0:nx]
    x, y = G.origin_lps_mm[0] + 0.8 * i, G.origin_lps_mm[1] + 0.8 * j
    body = np.broadcast_to(((x / 115.0) ** 2 + (y / 110.0) ** 2) <= 1.0, G.shape_zyx)
    return SkinSurface.from_body_mask(np.ascontiguousarray(body), G)


def ellipse_distance(px, py, a=115.0, b=110.0):
    t = np.linspace(0, 2 * np.pi, 400_000, endpoint=False)
    return float(np.min(np.hypot(a * np.cos(t) - px, b * np.sin(t) - py)))


def unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------- organ and capsule
@pytest.mark.parametrize("direction,gap", [((-1, 0, 0), 8.0), ((1, -1, 0.4), 6.0), ((0, 1, 0), 3.0), ((0, -1, 1), 12.0)])
def test_liver_lesion_by_overlap_and_capsule_distance(org, skin, direction, gap):
    r = 10.0
    c = LIVER_C + unit(direction) * (LIVER_R - r - gap)
    f = site_features(sphere(c, r), organs=org, skin=skin)
    assert f.organ == "liver" and f.site == "visceral:liver"
    assert f.organ_overlap_fraction == pytest.approx(1.0)
    assert f.liver_capsule_distance_mm == pytest.approx(gap, abs=1.5)
    assert f.lung_pleura_distance_mm is None


def test_subcapsular_exophytic_lesion_capsule_zero(org):
    r = 10.0
    c = LIVER_C + unit((-1, 0.2, 0)) * (LIVER_R - 4.0)
    f = site_features(sphere(c, r), organs=org, skin=None)
    assert f.organ == "liver"
    assert f.liver_capsule_distance_mm == 0.0


def test_lesion_cut_out_of_liver_mask_is_adjacent_and_capsule_still_measured():
    r, gap = 9.0, 7.0
    c = LIVER_C + unit((0, 1, 0)) * (LIVER_R - r - gap)
    o = organs(liver_minus=ball(c, r))
    f = site_features(sphere(c, r), organs=o, skin=None)
    assert f.organ == "liver" and f.organ_reason.startswith("adjacent")
    assert f.liver_capsule_distance_mm == pytest.approx(gap, abs=1.5)


def test_lesion_just_outside_liver_is_adjacent(org):
    r = 8.0
    c = LIVER_C + unit((0, -1, 0)) * (LIVER_R + r + 3.0)
    f = site_features(sphere(c, r), organs=org, skin=None)
    assert f.organ == "liver" and "adjacent" in f.organ_reason
    assert f.organ_overlap_fraction == 0.0


# --------------------------------------------------------------------------- vessels
@pytest.mark.parametrize("gap", [0.0, 2.0, 5.0, 9.0])
def test_vessel_distance(org, gap):
    r = 8.0
    c = np.array([AORTA_XY[0] + AORTA_R + r + gap, AORTA_XY[1], 5.0])
    f = site_features(sphere(c, r, name="mass 1"), organs=org, skin=None)
    assert f.vessel_name == "aorta"
    assert f.vessel_distance_mm == pytest.approx(gap, abs=1.5)
    # next to a vessel only: soft tissue, not "vessel" by adjacency
    assert f.organ == "soft_tissue" and f.organ_reason == "outside all segmented organs"


def test_vessel_diagonal(org):
    r, gap = 7.0, 6.0
    d = unit((1, 1, 0))
    c = np.array([*(AORTA_XY + d[:2] * (AORTA_R + r + gap)), -20.0])
    f = site_features(sphere(c, r), organs=org, skin=None)
    assert f.vessel_distance_mm == pytest.approx(gap, abs=1.5)


def test_no_vessel_within_margin(org):
    f = site_features(sphere([-90.0, -90.0, 20.0], 6.0), organs=org, skin=None, margin_mm=30.0)
    assert f.vessel_distance_mm is None and f.vessel_name == ""
    assert "no vessel within 30 mm" in f.anatomy_reason


# --------------------------------------------------------------------------- lung
@pytest.mark.parametrize("gap", [0.0, 5.0, 10.0])
def test_lung_lesion_across_lobes_and_pleura_distance(org, gap):
    r = 8.0
    c = LUNG_C + unit((1, -0.3, 0)) * (LUNG_R - r - gap)
    f = site_features(sphere(c, r), organs=org, skin=None)
    assert f.organ == "lung" and f.site == "visceral:lung"
    assert f.organ_overlap_fraction == pytest.approx(1.0)  # both lobes together
    assert f.lung_pleura_distance_mm == pytest.approx(gap, abs=1.5)
    assert f.liver_capsule_distance_mm is None


# --------------------------------------------------------------------------- names, unknown
def test_unknown_without_organs():
    f = site_features(sphere([0, 0, 0], 6.0, name="lesion 3"), organs={}, skin=None)
    assert f.organ == "unknown" and f.organ_reason == "no organ masks for this study"
    assert f.organ_overlap_fraction is None
    assert f.site == "unknown" and f.skin_depth_mm is None and f.skin_depth_reason


@pytest.mark.parametrize("name", ["LN_axilla_R", "right inguinal node", "Lymph node 2", "pelvic_LN3"])
def test_node_by_name(name, org, skin):
    les = sphere([-100.0, 60.0, 0.0], 7.0, name=name)
    f = site_features(les, organs={}, skin=skin)
    assert f.organ == "lymph_node" and "from lesion name" in f.organ_reason
    g = site_features(les, organs=org, skin=skin)
    assert g.organ == "lymph_node"
    assert g.site in ("superficial_node", "deep_node")


def test_soft_tissue_superficial_and_deep_with_skin_depth(org, skin):
    r = 8.0
    sup_c = np.array([0.0, -110.0 + 12.0 + r, 10.0])  # 12 mm under the anterior skin
    f = site_features(sphere(sup_c, r), organs=org, skin=skin)
    truth = ellipse_distance(sup_c[0], sup_c[1]) - r
    assert f.skin_depth_mm == pytest.approx(truth, abs=2.0)
    assert f.organ == "soft_tissue" and f.site == "superficial_soft_tissue"
    deep_c = np.array([20.0, 0.0, 0.0])  # > 7 mm from every organ
    g = site_features(sphere(deep_c, r), organs=org, skin=skin)
    assert g.skin_depth_mm == pytest.approx(ellipse_distance(deep_c[0], deep_c[1]) - r, abs=2.0)
    assert g.site == "deep_soft_tissue"
    n = site_features(sphere(sup_c, r, name="LN_1"), organs=org, skin=skin)
    assert n.site == "superficial_node"
    h = site_features(sphere(sup_c, r), organs=org, skin=None)
    assert h.skin_depth_mm is None and h.site == "soft_tissue_depth_unknown"


@pytest.mark.parametrize("c", [(-80.0, 70.0, 0.0), (95.0, 30.0, -30.0), (30.0, 95.0, 20.0)])
def test_skin_depth_various_positions(org, skin, c):
    r = 6.0
    f = site_features(sphere(c, r), organs=org, skin=skin)
    assert f.skin_depth_mm == pytest.approx(max(ellipse_distance(c[0], c[1]) - r, 0.0), abs=2.0)


def test_grid_mismatch_raises(org):
    other = Grid(G.shape_zyx, (0.8, 0.8, 3.0), G.origin_lps_mm)
    les = sphere([0, 0, 0], 5.0, grid=other)
    with pytest.raises(FeatureError, match="another grid"):
        site_features(les, organs=org, skin=None)


def test_lesion_at_grid_border(org):
    """Region growing is clipped to the grid; masks touching the grid edge do not crash."""
    f = site_features(sphere([-116.0, -116.0, -72.0], 6.0), organs=org, skin=None)
    assert f.organ == "soft_tissue"


def test_organ_vocabulary():
    assert organ_term("Lung Left") == "lung"
    assert organ_term("lung_middle_lobe_right") == "lung"
    assert organ_term("vertebrae_L1") == "bone"
    assert organ_term("vertebral_column") == "bone"
    assert organ_term("inferior_vena_cava") == "vessel"
    assert organ_term("kidney_left") == "kidney"
    assert organ_term("Liver") == "liver"
    assert organ_term("mystery organ") == "mystery_organ"


@pytest.mark.parametrize("name,station", [
    ("node_axillary_R", "axillary"), ("LN Axilla left", "axillary"), ("inguinal_node_L", "inguinal"),
    ("Groin-LN", "inguinal"), ("node_paraaortic", "paraaortic"), ("LN_retroperitoneal", "paraaortic"),
    ("supraclavicular_LN_R", "supraclavicular"), ("LN_neck_level2", "cervical"),
    ("LN_subcarinal", "mediastinal"), ("ext_iliac_node", "iliac"), ("node_7", ""), ("lesion1", ""),
])
def test_nodal_station_from_the_name(name, station):
    from pipeline.anatomy.site import nodal_station

    assert nodal_station(name) == station
