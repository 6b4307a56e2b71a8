"""Safety measurements and skin depth on the analytic phantom (and synthetic masks)."""

from __future__ import annotations

import numpy as np
import pytest
from anatomy_phantom import PhantomStudy, mask_of

from pipeline.anatomy.safety import (
    contact_angle_deg,
    cross_section_caliber_mm,
    exophytic_fraction,
)
from pipeline.geometry import Grid
from pipeline.records import SegmentKind


# --------------------------------------------------------------------------- skin depth
@pytest.mark.parametrize("variant", ["standard", "extended"])
def test_skin_depth_of_every_phantom_lesion(variant, standard, extended):
    """Within 2 mm of the analytic depth for every lesion (2.5 x 2.5 x 3 mm CT); the
    sub-voxel surfaces keep the worst error near 1 mm (face midpoints: 1.8 mm)."""
    s = standard if variant == "standard" else extended
    errors = {n: s.rows[n]["skin_depth_mm"] - s.truth[n]["skin_depth_mm"] for n in s.rows}
    worst = max(abs(e) for e in errors.values())
    assert worst <= 2.0, errors
    assert worst <= 1.2, errors


def test_site_classes(extended):
    r = extended.rows
    assert r["soft_tissue_flank"]["site"] == "superficial_soft_tissue"
    assert r["node_axillary_R"]["site"] == "superficial_node"
    assert r["necrotic_mass"]["site"] == "deep_soft_tissue"
    assert r["node_paraaortic"]["organ"] == "lymph_node"
    assert r["liver_deep"]["site"] == "visceral:liver"
    assert r["lung_deep"]["site"] == "visceral:lung"


# --------------------------------------------------------------------------- vessels
@pytest.fixture(scope="module")
def wide():
    """Extended phantom with a 130 mm search margin: every lesion's aorta distance measured."""
    return PhantomStudy("extended", {"distance_margin_mm": 130.0})


def test_vessel_distance_matches_analytic_aorta_distance(wide):
    checked = 0
    for name, row in wide.rows.items():
        t = wide.truth[name]["aorta_distance_mm"]
        if t > 125.0:
            continue
        assert row["vessel_name"] == "aorta", name
        assert row["vessel_distance_mm"] == pytest.approx(t, abs=1.5), name
        checked += 1
    assert checked >= 9


def _within_analytic_arcs(measured_deg: float, truth: dict, case) -> None:
    """The voxel contact angle lies between the analytic contact arc (surfaces inside or on
    the lesion) and the arc within one in-plane voxel of the lesion, give or take the angular
    size of one wall voxel at each end of the arc: 2 x degrees(voxel / aortic radius)."""
    import math

    from pipeline.testing.phantom import AORTA_RADIUS_MM

    voxel = max(case.grid.spacing_xyz_mm[:2])
    tol = 2.0 * math.degrees(voxel / AORTA_RADIUS_MM)
    lo, hi = truth["aorta_contact_angle_deg"], truth["aorta_contact_angle_deg_within_voxel"]
    assert lo - tol <= measured_deg <= hi + tol, (measured_deg, lo, hi, tol)


def test_encasing_abutting_and_distant_relations(extended):
    r, t = extended.rows, extended.truth
    enc, abut = r["aorta_encasing"], r["node_paraaortic"]
    assert t["aorta_encasing"]["relation_to_aorta"] == "encasing"
    assert enc["vessel_relation"] == "encasing" and enc["vessel_name"] == "aorta"
    _within_analytic_arcs(enc["vessel_contact_angle_deg"], t["aorta_encasing"], extended)
    assert t["node_paraaortic"]["relation_to_aorta"] == "abutting"
    assert abut["vessel_relation"] == "abutting"
    _within_analytic_arcs(abut["vessel_contact_angle_deg"], t["node_paraaortic"], extended)
    assert abut["vessel_distance_mm"] == 0.0 and abut["intravascular_fraction"] == 0.0
    for name in ("soft_tissue_flank", "liver_deep", "lung_deep"):
        assert r[name]["vessel_relation"] == "none", name
        assert r[name]["vessel_distance_mm"] is None and "no vessel within" in r[name][
            "vessel_reason"]
    # the aorta is 24 mm wide
    for name in ("aorta_encasing", "node_paraaortic"):
        assert r[name]["vessel_caliber_mm"] == pytest.approx(24.0, abs=2.0), name


def test_contact_angle_of_an_oblique_vessel_and_caliber():
    """A tube along (1, 0, 1)/sqrt2 half-wrapped by a lesion: about 180 degrees of contact."""
    g = Grid((60, 60, 60), (1.0, 1.0, 1.0), (-30.0, -30.0, -30.0))
    nz, ny, nx = g.shape_zyx
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in (nz, ny, nx)], indexing="ij"), -1)
    p = g.zyx_to_lps(idx.reshape(-1, 3)).reshape(nz, ny, nx, 3)
    a = np.array([1.0, 0.0, 1.0]) / np.sqrt(2)
    along = p @ a
    radial = p - along[..., None] * a
    rho = np.linalg.norm(radial, axis=-1)
    tube = rho <= 6.0
    side = radial[..., 1] < 0  # the half towards -y
    lesion = (rho > 6.0) & (rho <= 11.0) & side & (np.abs(along) < 12)
    v = mask_of(tube, g, "vessel", SegmentKind.ORGAN)
    les = mask_of(lesion, g, "lesion")
    ang = contact_angle_deg(les, v, region_margin_mm=15.0)
    assert ang == pytest.approx(180.0, abs=25.0)
    cal = cross_section_caliber_mm(v, np.array([0.0, -6.0, 0.0]))
    assert cal == pytest.approx(12.0, abs=1.0)
    whole = mask_of((rho > 6.0) & (rho <= 11.0) & (np.abs(along) < 12), g, "lesion")
    assert contact_angle_deg(whole, v, region_margin_mm=15.0) > 300.0


def test_intravascular_fraction_of_a_tumour_thrombus():
    from pipeline.anatomy.safety import vessel_columns
    from pipeline.anatomy.site import lesion_surface

    g = Grid((40, 40, 40), (1.0, 1.0, 1.0), (-20.0, -20.0, -20.0))
    nz, ny, nx = g.shape_zyx
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in (nz, ny, nx)], indexing="ij"), -1)
    p = g.zyx_to_lps(idx.reshape(-1, 3)).reshape(nz, ny, nx, 3)
    vessel = np.hypot(p[..., 0], p[..., 1]) <= 7.0
    lesion = np.linalg.norm(p - [6.0, 0.0, 0.0], axis=-1) <= 5.0
    les = mask_of(lesion, g, "thrombus")
    cols = vessel_columns(les, lesion_surface(les), {"portal_vein": mask_of(
        vessel, g, "portal_vein", SegmentKind.ORGAN)}, None, margin_mm=20.0,
        abut_distance_mm=1.0, encasing_angle_deg=180.0, organ_sigma_mm=1.0)
    frac = np.count_nonzero(lesion & vessel) / np.count_nonzero(lesion)
    assert cols["intravascular_fraction"] == pytest.approx(frac)
    assert 0.3 < frac < 0.9 and cols["vessel_distance_mm"] == 0.0


# --------------------------------------------------------------------------- liver
def test_subcapsular_and_exophytic_liver_lesions_flagged_deep_not(extended):
    r, t = extended.rows, extended.truth
    # the ranking flags capsule distance < 10 mm and exophytic fraction > 0.1
    assert r["liver_subcapsular"]["liver_capsule_distance_mm"] < 10.0
    assert r["liver_exophytic"]["exophytic_fraction"] == pytest.approx(
        t["liver_exophytic"]["exophytic_fraction"], abs=0.01)
    assert r["liver_exophytic"]["exophytic_fraction"] > 0.1
    assert r["liver_exophytic"]["liver_capsule_distance_mm"] == 0.0
    deep = r["liver_deep"]
    assert deep["exophytic_fraction"] == 0.0
    # 45 mm from the capsule: beyond the 30 mm search margin, None with the reason
    assert deep["liver_capsule_distance_mm"] is None
    assert "no liver surface within 30 mm" in deep["anatomy_reason"]
    inv = r["noncontrast_invisible"]
    assert inv["liver_capsule_distance_mm"] == pytest.approx(
        t["noncontrast_invisible"]["liver_capsule_distance_mm"], abs=1.5)
    assert r["soft_tissue_flank"]["exophytic_fraction"] is None


def test_exophytic_fraction_when_the_lesion_is_cut_out_of_the_liver_mask():
    g = Grid((50, 80, 80), (1.5, 1.5, 2.0), (-60.0, -60.0, -50.0))
    nz, ny, nx = g.shape_zyx
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in (nz, ny, nx)], indexing="ij"), -1)
    p = g.zyx_to_lps(idx.reshape(-1, 3)).reshape(nz, ny, nx, 3)
    liver_full = p[..., 0] <= 0.0  # liver surface: the plane x = 0
    ball = np.linalg.norm(p - [-4.0, 0.0, 0.0], axis=-1) <= 10.0  # 30 % outside the plane
    truth = np.count_nonzero(ball & ~liver_full) / np.count_nonzero(ball)
    les = mask_of(ball, g, "lesion")
    inside = mask_of(liver_full, g, "liver", SegmentKind.ORGAN)
    cut = mask_of(liver_full & ~ball, g, "liver", SegmentKind.ORGAN)
    assert exophytic_fraction(les, [inside]) == pytest.approx(truth)
    # cut out: the closing fills the notch except a thin rim under its opening (documented);
    # counting every voxel outside the mask would give 1.0
    assert truth - 0.02 <= exophytic_fraction(les, [cut]) <= truth + 0.12


# --------------------------------------------------------------------------- mobility, critical
def test_diaphragm_distance_to_a_lung_base():
    """A lung slab above a lesion: the distance to its base, by lung mask and by HU."""
    from pipeline.anatomy import stage
    from pipeline.config import load_config
    from pipeline.records import Volume

    g = Grid((40, 60, 60), (2.0, 2.0, 2.5), (-60.0, -60.0, -50.0))
    nz, ny, nx = g.shape_zyx
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in (nz, ny, nx)], indexing="ij"), -1)
    p = g.zyx_to_lps(idx.reshape(-1, 3)).reshape(nz, ny, nx, 3)
    body = np.hypot(p[..., 0], p[..., 1]) <= 55
    lung = body & (p[..., 2] > 10.0) & (np.hypot(p[..., 0], p[..., 1]) <= 40)
    ct = np.where(body, 40.0, -1000.0).astype(np.float32)
    ct[lung] = -850.0
    lesion = mask_of(np.linalg.norm(p - [0.0, 0.0, -20.0], axis=-1) <= 6.0, g, "lesion")
    cfg = load_config()
    for organs in ({"lung_left": mask_of(lung, g, "lung_left", SegmentKind.ORGAN)}, {}):
        ctx = stage.prepare({"ct": Volume(ct, g, "HU", "x")}, g, organs, cfg)
        row = stage.lesion_columns(lesion, ctx, cfg)
        # lung base faces at z = 11.25 (between slices at 10 and 12.5); lesion top at -14
        assert row["diaphragm_distance_mm"] == pytest.approx(11.25 + 14.0, abs=1.5)


def test_critical_structure_distance(extended):
    row, t = extended.rows["node_paraaortic"], extended.truth["node_paraaortic"]
    assert row["critical_structure_name"] == "vertebral_column"
    assert row["critical_structure_distance_mm"] == pytest.approx(
        t["vertebral_column_distance_mm"], abs=1.5)
    far = extended.rows["soft_tissue_flank"]
    assert far["critical_structure_distance_mm"] is None
    assert "within 30 mm" in far["critical_structure_reason"]


def test_no_value_is_a_zero_stand_in(extended):
    """Every None column has its reason; reasons are empty only when values exist."""
    pairs = {"vessel_distance_mm": "vessel_reason", "exophytic_fraction": "exophytic_reason",
             "critical_structure_distance_mm": "critical_structure_reason",
             "diaphragm_distance_mm": "diaphragm_reason", "path_length_mm": "access_reason"}
    for name, row in extended.rows.items():
        for col, reason in pairs.items():
            if row[col] is None:
                assert row[reason], (name, col)


def test_a_gap_under_one_voxel_is_abutting():
    """A node 1.5 mm from a 25 mm aorta on a 1 x 1 x 2.5 mm grid shows no fat plane: abutting."""
    from pipeline.anatomy.safety import abut_threshold_mm, vessel_columns
    from pipeline.anatomy.site import lesion_surface

    g = Grid((24, 60, 60), (1.0, 1.0, 2.5), (-30.0, -30.0, -30.0))
    nz, ny, nx = g.shape_zyx
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in (nz, ny, nx)], indexing="ij"), -1)
    p = g.zyx_to_lps(idx.reshape(-1, 3)).reshape(nz, ny, nx, 3)
    aorta = np.hypot(p[..., 0] + 12.5, p[..., 1]) <= 12.5          # x in [-25, 0]
    node = np.linalg.norm(p - [9.5, 0.0, 0.0], axis=-1) <= 8.0  # x from 1.5 mm
    vessels = {"aorta": mask_of(aorta, g, "aorta", SegmentKind.ORGAN)}
    les = mask_of(node, g, "node")
    cols = vessel_columns(les, lesion_surface(les), vessels, None, margin_mm=20.0,
                          abut_distance_mm=1.0, encasing_angle_deg=180.0, organ_sigma_mm=1.0)
    diag = float(np.sqrt(1 + 1 + 2.5 ** 2))
    assert 0.5 < cols["vessel_distance_mm"] < diag
    assert cols["vessel_relation"] == "abutting"
    assert cols["vessel_abut_threshold_mm"] == pytest.approx(diag, abs=1e-9)
    assert "voxel diagonal 2.9 mm (voxel 1.00 x 1.00 x 2.50 mm)" in cols["vessel_abut_basis"]
    # a configured fat plane wider than the voxel diagonal takes over; a narrower one does not
    assert abut_threshold_mm(g, 4.0) == (4.0, "under the 4 mm fat plane (voxel 1.00 x 1.00 x 2.50 mm)")
    assert abut_threshold_mm(g, 1.0)[0] == pytest.approx(diag)
    # a 6 mm gap keeps its fat plane
    far = np.linalg.norm(p - [14.0, 0.0, 0.0], axis=-1) <= 8.0
    les2 = mask_of(far, g, "node2")
    cols2 = vessel_columns(les2, lesion_surface(les2), vessels, None, margin_mm=20.0,
                           abut_distance_mm=1.0, encasing_angle_deg=180.0, organ_sigma_mm=1.0)
    assert cols2["vessel_distance_mm"] > diag and cols2["vessel_relation"] == "none"
