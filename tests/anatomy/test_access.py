"""Needle path planner: exact ray traversal, safety rules on synthetic anatomy, phantom acceptance."""

from __future__ import annotations

import math

import numpy as np
import pytest
from anatomy_phantom import PhantomStudy

from pipeline.anatomy.access import (
    AccessSettings,
    band_directions,
    plan_access,
    trace_rays,
)
from pipeline.anatomy.tissue import BONE, build_tissue_map
from pipeline.geometry import Grid, bbox_of
from pipeline.records import LesionMask, MaskSource, SegmentKind
from pipeline.testing import phantom as P

SETTINGS = AccessSettings(
    n_directions=400, max_angle_from_axial_deg=30.0, max_path_length_mm=150.0,
    external_clearance_mm=20.0,
    forbidden_terms=("heart", "bowel", "kidney", "spleen", "gallbladder"),
    max_target_organ_entries=1, length_tolerance_mm=2.0, refine_levels=3,
    us_max_depth_mm=100.0, clearance_cap_mm=50.0,
)


# --------------------------------------------------------------------------- ray tracing
def test_band_directions_respect_angulation():
    d = band_directions(500, 25.0)
    assert d.shape == (500, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    assert np.degrees(np.arcsin(np.abs(d[:, 2]))).max() <= 25.0 + 1e-9
    # evenly spread: every direction has a neighbour within ~2 x the mean spacing
    spacing = math.sqrt(4 * math.pi * math.sin(math.radians(25)) / 500)
    nn = np.sort(np.arccos(np.clip(d @ d.T, -1, 1)), axis=1)[:, 1]
    assert nn.max() < 2.0 * spacing


@pytest.mark.parametrize("seed", range(3))
def test_trace_rays_is_exact_voxel_traversal(seed):
    """Every voxel a densely sampled ray visits is traced, with the same length inside it."""
    rng = np.random.default_rng(seed)
    g = Grid((30, 40, 50), (0.8, 1.1, 2.5), (-20.0, -21.0, -37.0))
    origin = g.zyx_to_lps(rng.uniform(5, 25, (1, 3)))[0]
    dirs = rng.normal(size=(6, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    t_max = 40.0
    tr = trace_rays(g, origin, dirs, t_max)
    for r in range(len(dirs)):
        v = tr.valid[r]
        lengths = (tr.t1[r] - tr.t0[r])[v]
        assert lengths.sum() == pytest.approx(t_max, abs=1e-9)
        traced = {tuple(i) for i in tr.idx[r][v]}
        step = 0.002
        t = np.arange(step / 2, t_max, step)
        dense = np.rint(g.lps_to_zyx(origin + t[:, None] * dirs[r])).astype(int)
        keys, counts = np.unique(dense, axis=0, return_counts=True)
        assert {tuple(k) for k in keys} <= traced
        per_voxel = {}
        for i, ln in zip(tr.idx[r][v], lengths):
            per_voxel[tuple(i)] = per_voxel.get(tuple(i), 0.0) + ln
        for k, c in zip(keys, counts):
            assert per_voxel[tuple(k)] == pytest.approx(c * step, abs=2 * step)


# --------------------------------------------------------------------------- synthetic anatomy
G = Grid((40, 120, 140), (1.0, 1.0, 2.0), (-70.0, -60.0, -40.0))


def _points(grid: Grid) -> np.ndarray:
    nz, ny, nx = grid.shape_zyx
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    return grid.zyx_to_lps(np.column_stack([zz.ravel(), yy.ravel(), xx.ravel()])).reshape(
        nz, ny, nx, 3)


PTS = _points(G)
X, Y, Z = PTS[..., 0], PTS[..., 1], PTS[..., 2]


def _mask(full: np.ndarray, name: str, kind=SegmentKind.ORGAN) -> LesionMask:
    bb = bbox_of(full)
    return LesionMask(name, MaskSource.SEG, G, bb, full[tuple(slice(a, b) for a, b in bb)],
                      kind=kind)


def _study(body, extra_hu=(), organs=None):
    ct = np.where(body, 40.0, -1000.0).astype(np.float32)
    for region, hu in extra_hu:
        ct[region & body] = hu
    organs = organs or {}
    return build_tissue_map(ct, G, body, organs, bone_threshold_hu=300.0,
                            air_threshold_hu=-500.0, vessel_caliber_threshold_mm=3.0,
                            forbidden_terms=SETTINGS.forbidden_terms)


def _lesion(c, r=4.0) -> LesionMask:
    return _mask(np.linalg.norm(PTS - np.asarray(c), axis=-1) <= r, "lesion", SegmentKind.LESION)


def _resample_hits(tmap, entry, target, bit) -> bool:
    t = np.linspace(0.0, 1.0, 4000)[1:-1]
    pts = entry[None, :] + t[:, None] * (target - entry)[None, :]
    idx = np.rint(G.lps_to_zyx(pts)).astype(int) - [b[0] for b in tmap.bbox]
    ok = np.all((idx >= 0) & (idx < tmap.flags.shape), axis=1)
    return bool((tmap.flags[tuple(idx[ok].T)] & bit).any())


def _entry(row):
    return np.array([row["entry_x_mm"], row["entry_y_mm"], row["entry_z_mm"]])


BOX = (np.abs(X) <= 60) & (np.abs(Y) <= 50)  # body: a box, skin at x = +-60, y = +-50


def test_straight_path_in_a_box_is_the_nearest_face():
    tmap = _study(BOX)
    target = np.array([40.0, 0.0, 0.0])
    row = plan_access(tmap, _lesion(target), target, target_term="soft_tissue",
                      settings=SETTINGS)
    assert row["safe_path_found"] is True
    assert row["path_length_mm"] == pytest.approx(20.0, abs=0.6)  # skin face at x = 60.5
    assert row["path_length_to_surface_mm"] == pytest.approx(16.0, abs=1.2)
    np.testing.assert_allclose([row["path_direction_x"], row["path_direction_y"]], [-1, 0],
                               atol=0.02)
    assert row["us_window"] is True and row["aerated_lung_path_mm"] == 0.0


def test_bone_plate_is_avoided_and_a_bone_shell_blocks_everything():
    plate = (X > 45) & (X < 50) & (np.abs(Y) < 30)
    tmap = _study(BOX, [(plate, 700.0)])
    target = np.array([40.0, 0.0, 0.0])
    row = plan_access(tmap, _lesion(target), target, target_term="soft_tissue",
                      settings=SETTINGS)
    assert row["safe_path_found"] is True
    assert row["path_length_mm"] > 21.0
    assert not _resample_hits(tmap, _entry(row), target, BONE)
    shell = np.abs(np.linalg.norm(PTS - target, axis=-1) - 10.0) < 1.5
    tmap = _study(BOX, [(shell, 700.0)])
    row = plan_access(tmap, _lesion(target), target, target_term="soft_tissue",
                      settings=SETTINGS)
    assert row["safe_path_found"] is False
    assert "bone" in row["access_reason"] and row["path_length_mm"] is None


def test_forbidden_structure_blocks_unless_it_is_the_target_organ():
    target = np.array([40.0, 0.0, 0.0])
    kidney = (X > 44) & (X < 56) & (np.abs(Y) < 40)
    organs = {"kidney_left": _mask(kidney, "kidney_left")}
    tmap = _study(BOX, organs=organs)
    row = plan_access(tmap, _lesion(target), target, target_term="soft_tissue",
                      settings=SETTINGS)
    assert row["safe_path_found"] is True and row["path_length_mm"] > 25.0
    row = plan_access(tmap, _lesion(target), target, target_term="kidney", settings=SETTINGS)
    assert row["path_length_mm"] == pytest.approx(20.0, abs=0.6)
    assert row["target_organ_entries"] == 1


def test_second_capsule_crossing_is_unsafe():
    """Target in an organ slab; a second slab of the same organ lies on the short side."""
    body = (X >= -30) & (X <= 60) & (np.abs(Y) <= 55)
    liver = ((X > 0) & (X < 20) | (X > -25) & (X < -15)) & (np.abs(Y) < 54)
    organs = {"liver": _mask(liver & body, "liver")}
    tmap = _study(body, organs=organs)
    target = np.array([10.0, 0.0, 0.0])
    row = plan_access(tmap, _lesion(target, 3.0), target, target_term="liver",
                      settings=SETTINGS)
    assert row["safe_path_found"] is True
    assert row["target_organ_entries"] == 1
    assert row["path_direction_x"] < 0  # comes from +x, the longer side (50 mm vs 40 mm)
    assert row["path_length_mm"] == pytest.approx(50.5, abs=1.0)
    lenient = AccessSettings(**{**SETTINGS.__dict__, "max_target_organ_entries": 2})
    row = plan_access(tmap, _lesion(target, 3.0), target, target_term="liver", settings=lenient)
    assert row["path_length_mm"] == pytest.approx(40.5, abs=1.0)
    assert row["target_organ_entries"] == 2


def test_aerated_lung_blocks_other_targets_and_is_measured_for_lung_targets():
    lung = (X > 20) & (X < 55) & (np.abs(Y) < 45)
    organs = {"lung_left": _mask(lung & BOX, "lung_left")}
    tmap = _study(BOX, [(lung, -850.0)], organs=organs)
    target = np.array([15.0, 0.0, 0.0])  # just medial to the lung
    row = plan_access(tmap, _lesion(target, 3.0), target, target_term="soft_tissue",
                      settings=SETTINGS)
    assert row["safe_path_found"] is True and row["aerated_lung_path_mm"] == 0.0
    # a lung target inside it: the short lateral path crosses lung, measured exactly
    target = np.array([30.0, 0.0, 0.0])
    lung_les = _lesion(target, 3.0)
    row = plan_access(tmap, lung_les, target, target_term="lung", settings=SETTINGS)
    assert row["safe_path_found"] is True
    assert row["path_direction_x"] == pytest.approx(-1.0, abs=0.01)  # from the +x skin
    assert row["aerated_lung_path_mm"] == pytest.approx(55.0 - 33.0, abs=1.2)
    assert row["pleura_crossings"] == 1 and row["us_window"] is False


def test_bowel_gas_blocks_and_target_outside_body():
    gas = (X > 45) & (X < 55) & (np.abs(Y) < 45)
    tmap = _study(BOX, [(gas, -900.0)])
    target = np.array([40.0, 0.0, 0.0])
    row = plan_access(tmap, _lesion(target), target, target_term="soft_tissue",
                      settings=SETTINGS)
    assert row["safe_path_found"] is True and row["path_length_mm"] > 25.0
    out = plan_access(tmap, _lesion(target), np.array([65.0, 0.0, 0.0]),
                      target_term="soft_tissue", settings=SETTINGS)
    assert out["safe_path_found"] is False and "outside the body" in out["access_reason"]


def test_large_vessel_is_not_crossed_and_clearance_reported():
    vessel = (np.hypot(X - 50, Y) < 6.0)
    organs = {"aorta": _mask(vessel & BOX, "aorta")}
    tmap = _study(BOX, organs=organs)
    target = np.array([40.0, 0.0, 0.0])
    row = plan_access(tmap, _lesion(target), target, target_term="soft_tissue",
                      settings=SETTINGS)
    assert row["safe_path_found"] is True
    assert row["vessel_clearance_mm"] is not None and row["vessel_clearance_mm"] > 0.0
    from pipeline.anatomy.tissue import LARGE_VESSEL, VESSEL
    assert not _resample_hits(tmap, _entry(row), target, VESSEL | LARGE_VESSEL)


def test_arm_beside_the_body_blocks_the_lateral_path():
    arm = (np.hypot(X - 66, Y) <= 4.0) & (np.abs(Z) < 100)
    body = BOX | arm
    tmap = _study(body)
    target = np.array([40.0, 0.0, 0.0])
    row = plan_access(tmap, _lesion(target), target, target_term="soft_tissue",
                      settings=SETTINGS)
    assert row["safe_path_found"] is True
    d = np.array([row["path_direction_x"], row["path_direction_y"], row["path_direction_z"]])
    # the straight lateral path (through the air gap into the arm) is not the chosen one
    assert abs(d[1]) > 0.1 or abs(d[2]) > 0.1


# --------------------------------------------------------------------------- phantom
def _tissue_along(arrays, entry, target, step=0.1):
    n = max(2, int(np.linalg.norm(target - entry) / step))
    t = np.linspace(0, 1, n)[1:]
    pts = entry[None, :] + t[:, None] * (target - entry)[None, :]
    idx = np.rint(arrays.ct_grid.lps_to_zyx(pts)).astype(int)
    return arrays.tissue_labels[tuple(idx.T)], arrays.lesion_labels[tuple(idx.T)]


def test_phantom_every_lesion_has_a_path_that_avoids_bone_vessels_and_forbidden(extended):
    bad = {P.Tissue.VERTEBRAL_COLUMN, P.Tissue.AORTA, P.Tissue.SPLEEN, P.Tissue.TABLE}
    for name, row in extended.rows.items():
        assert row["safe_path_found"] is True, (name, row["access_reason"])
        target = np.array([row["target_x_mm"], row["target_y_mm"], row["target_z_mm"]])
        tissue, _ = _tissue_along(extended.arrays, _entry(row), target)
        hit = {P.Tissue(int(v)) for v in np.unique(tissue)}
        assert not (hit & bad), (name, hit)
        if extended.truth[name]["organ"] != "lung":
            assert not (hit & {P.Tissue.LUNG_LEFT, P.Tissue.LUNG_RIGHT}), (name, hit)
        # the entry point is on the skin (the analytic body outline)
        e = _entry(row)
        assert abs(P.body_skin_depth(e[0], e[1])) <= 1.6, name
        assert row["path_length_mm"] <= extended.cfg["anatomy"]["access"]["max_path_length_mm"]


def test_phantom_clear_path_length_matches_analytic(extended):
    """soft_tissue_flank: the shortest straight path to its centre (= voxel centroid)."""
    row, t = extended.rows["soft_tissue_flank"], extended.truth["soft_tissue_flank"]
    assert row["target_point_source"] == "centroid"
    np.testing.assert_allclose([row["target_x_mm"], row["target_y_mm"], row["target_z_mm"]],
                               t["centre_lps_mm"], atol=1e-6)
    assert row["path_length_mm"] == pytest.approx(t["path_length_analytic_mm"], abs=3.0)
    assert row["path_length_to_surface_mm"] == pytest.approx(t["path_length_to_surface_mm"],
                                                             abs=3.0)
    np.testing.assert_allclose(_entry(row), t["path_entry_lps_mm"], atol=4.0)
    d = [row[f"path_direction_{a}"] for a in "xyz"]
    assert np.degrees(np.arccos(np.clip(np.dot(d, t["path_direction_lps"]), -1, 1))) < 10.0


def test_phantom_aerated_lung_on_the_deep_lung_path(extended):
    row, t = extended.rows["lung_deep"], extended.truth["lung_deep"]
    assert row["organ"] == "lung" and row["pleura_crossings"] == 1
    assert row["aerated_lung_path_mm"] == pytest.approx(t["aerated_lung_path_mm_analytic"],
                                                        abs=2.0)
    assert row["path_length_mm"] == pytest.approx(t["path_length_analytic_mm"], abs=3.0)
    assert row["us_window"] is False  # aerated lung on every path
    sub = extended.rows["lung_subpleural"]
    assert sub["aerated_lung_path_mm"] < 10.0


def test_phantom_liver_paths_enter_the_liver_once(extended):
    for name in ("liver_deep", "noncontrast_invisible"):
        row = extended.rows[name]
        assert row["target_organ_entries"] == 1
        assert row["us_window"] is True


def test_without_organ_masks_body_bone_and_lung_still_come_from_hu():
    s = PhantomStudy("extended", organs=False)
    assert any("no organ masks" in n for n in s.ctx.notes)
    for name, row in s.rows.items():
        assert row["organ"] in ("unknown", "lymph_node"), name
        if row["organ"] == "unknown":
            assert row["organ_reason"] == "no organ masks for this study"
    # the deep lung lesion is planned as a lung target (surrounded by gas)
    assert s.rows["lung_deep"]["safe_path_found"] is True
    assert "lung target" in s.rows["lung_deep"]["access_reason"]
    assert s.rows["lung_deep"]["aerated_lung_path_mm"] > 30.0
    # vessels unknown: said so, never 0
    assert s.rows["node_paraaortic"]["vessel_distance_mm"] is None
    assert s.rows["node_paraaortic"]["vessel_reason"] == "no vessel masks for this study"
    # bone from HU still blocks: no path touches the vertebral column
    for name, row in s.rows.items():
        if row["safe_path_found"]:
            target = np.array([row["target_x_mm"], row["target_y_mm"], row["target_z_mm"]])
            tissue, _ = _tissue_along(s.arrays, _entry(row), target)
            assert P.Tissue.VERTEBRAL_COLUMN not in set(tissue.tolist()), name


def test_liver_path_prefers_a_cuff_of_normal_parenchyma():
    """Lesion 3 mm under the capsule (liver x in [-40, 35]); the skin is 5 mm beyond the capsule
    on +x: the shortest path crosses no liver, one with a cuff comes from -y/+y or -x."""
    body = (np.abs(X) <= 50) & (np.abs(Y) <= 50)
    liver = (X > -40) & (X < 35) & (np.abs(Y) < 30)
    organs = {"liver": _mask(liver & body, "liver")}
    tmap = _study(body, organs=organs)
    target = np.array([28.0, 0.0, 0.0])
    les = _lesion(target, 4.0)
    plain = plan_access(tmap, les, target, target_term="liver", settings=SETTINGS)
    assert plain["path_length_mm"] == pytest.approx(22.5, abs=1.0)  # straight to +x skin
    assert plain["liver_parenchyma_path_mm"] == pytest.approx(3.0, abs=1.5)
    cuffed = AccessSettings(**{**SETTINGS.__dict__, "min_parenchyma_mm": 10.0,
                               "parenchyma_length_allowance_mm": 40.0})
    row = plan_access(tmap, les, target, target_term="liver", settings=cuffed)
    assert row["safe_path_found"] is True
    assert row["liver_parenchyma_path_mm"] >= 10.0
    assert row["path_length_mm"] > plain["path_length_mm"]
    assert row["target_organ_entries"] == 1
    # the detour allowance is configuration: too small a detour keeps the direct path
    strict = AccessSettings(**{**cuffed.__dict__, "parenchyma_length_allowance_mm": 5.0})
    row = plan_access(tmap, les, target, target_term="liver", settings=strict)
    assert row["path_length_mm"] == pytest.approx(plain["path_length_mm"], abs=0.5)
    # only reported for liver targets
    assert plan_access(tmap, les, target, target_term="soft_tissue",
                       settings=cuffed)["liver_parenchyma_path_mm"] is None
