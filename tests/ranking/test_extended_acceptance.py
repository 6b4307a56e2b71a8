"""Acceptance of issue 15 ("ranking rules an interventional radiologist would sign off") on the
extended phantom, end to end: DICOM written by the phantom generator, the study job (features,
anatomy, needle paths), then the ranking.

Truth is the phantom design (pipeline/testing/phantom): the necrotic mass's core is a sphere of
radius 20 mm inside a 30 mm sphere; ``nodule_superficial_8mm`` lies 9.7 mm under the skin with a
clear anterior path, ``nodule_deep_8mm`` 61.6 mm deep in the liver; ``node_axillary_L`` and
``node_inguinal_R`` are 16 mm short-axis nodes at two stations; the TotalSegmentator organ
folder splits the lungs into lobes (axial slabs).

Runs (small grid, patient 1, seed 0): extended with PET and TotalSegmentator organs, extended
without PET (the sheet's PET series cleared), extended with the SEG organs (no lobes), and the
standard phantom, whose outcomes must not regress.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.io.index import scan_archive
from pipeline.io.tables import read_table
from pipeline.ranking.rules import apply_rules, derive_columns
from pipeline.ranking.select import rank_study
from pipeline.sheet import build_study_sheet
from pipeline.study import run_study
from pipeline.testing import phantom as P

ACCEPTABLE_OR_BETTER = {"recommended", "acceptable", "board_review"}


def _run(root, out, *, pet=True, totalseg=True):
    index = scan_archive(root)
    row = build_study_sheet(index).iloc[0].to_dict()
    if totalseg:
        row.update(organ_mask_source="totalseg", organ_mask_ref="PHANTOM001/totalseg")
    if not pet:
        row["pet_series_uid"] = ""
    cfg = load_config()
    prov = run_study(row, index.files, root, cfg, out)
    assert prov["status"] == "done", prov["failures"]
    lesions = read_table(out / "lesions.csv")
    ranked = rank_study(lesions, cfg["ranking"]).set_index("lesion_id")
    return lesions.set_index("lesion_label"), ranked


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("accept")
    ext = base / "extended"
    folder = P.generate_patient(ext, 1, "small", 0, variant="extended")
    truth = {t["name"]: t for t in json.loads((folder / "truth.json").read_text())["lesions"]}
    std = base / "standard"
    P.generate_patient(std, 1, "small", 0)
    return {
        "truth": truth,
        "pet": _run(ext, base / "out_pet"),
        "nopet": _run(ext, base / "out_nopet", pet=False),
        "seg": _run(ext, base / "out_seg", totalseg=False),
        "standard": _run(std, base / "out_std", totalseg=False),
    }


def _reasons(ranked, lid) -> set[str]:
    return set(str(ranked.loc[lid, "reasons"]).split(";"))


# --------------------------------------------------------------------------- item 3: necrosis
@pytest.mark.filterwarnings("ignore::pandas.errors.PerformanceWarning")
@pytest.mark.parametrize("run", ["pet", "nopet"])
def test_necrotic_mass_target_point_lies_in_the_viable_rim(runs, run):
    t = runs["truth"]["necrotic_mass"]
    lesions, ranked = runs[run]
    row = lesions.loc["necrotic_mass"]
    p = np.array([row["target_x_mm"], row["target_y_mm"], row["target_z_mm"]], float)
    r = float(np.linalg.norm(p - np.asarray(t["centre_lps_mm"])))
    # distance of the target point to the necrotic core (analytic sphere r = 20 mm) > 0, and
    # inside the lesion (r = 30 mm)
    assert r - t["necrotic_core_radius_mm"] > 0.0, (run, r)
    assert r < t["semi_axes_mm"][0]
    # the ranking uses the same point, and its message says where and why
    rk = ranked.loc["necrotic_mass"]
    assert np.allclose([rk["target_x_mm"], rk["target_y_mm"], rk["target_z_mm"]], p)
    cfg = load_config()["ranking"]
    one = derive_columns(lesions.loc[["necrotic_mass"]].reset_index(), cfg)
    msg = next(t for c, _, t in apply_rules(one, cfg)[0].messages if c == "NO_RIM_BIAS")
    if run == "pet":
        assert row["target_point_source"] == "suv_peak"
        assert "most active part on PET" in msg
    else:
        assert row["target_point_source"] == "viable"
        assert "lesion centre necrotic" in row["target_point_note"]
        assert "(the lesion centre is necrotic), never the non-enhancing core" in msg
    # the needle path was planned to that point
    assert bool(row["safe_path_found"])
    assert row["path_length_mm"] > 0
    # necrosis is named with its grade (20-50 %: partial)
    assert 0.2 <= row["necrosis_fraction"] <= 0.5
    assert "NECROSIS_PARTIAL" in _reasons(ranked, "necrotic_mass")


def test_viable_lesions_keep_their_target_source(runs):
    lesions, _ = runs["nopet"]
    others = lesions.drop(index="necrotic_mass")
    assert (others["target_point_source"] == "centroid").all()
    assert others["viable_target_x_mm"].isna().all()


# --------------------------------------------------------------------------- item 1: small
def test_superficial_8mm_nodule_with_ultrasound_window_is_board_review_or_better(runs):
    lesions, ranked = runs["pet"]
    row = lesions.loc["nodule_superficial_8mm"]
    assert row["longest_diameter_mm"] < 10.0 and row["skin_depth_mm"] <= 20.0
    assert bool(row["us_window"])
    reasons = _reasons(ranked, "nodule_superficial_8mm")
    assert "SIZE_SMALL" in reasons and "SIZE_SMALL_DEEP" not in reasons
    assert ranked.loc["nodule_superficial_8mm", "tier"] in ACCEPTABLE_OR_BETTER


def test_deep_8mm_nodule_stays_not_suitable(runs):
    t = runs["truth"]["nodule_deep_8mm"]
    assert t["skin_depth_mm"] >= 60.0
    lesions, ranked = runs["pet"]
    assert lesions.loc["nodule_deep_8mm", "skin_depth_mm"] >= 55.0
    assert ranked.loc["nodule_deep_8mm", "tier"] == "not_suitable"
    assert "SIZE_SMALL_DEEP" in _reasons(ranked, "nodule_deep_8mm")
    assert ranked.loc["nodule_deep_8mm", "needle_hit_probability"] < 0.5


# --------------------------------------------------------------------------- item 4: visibility
def test_rank_1_target_low_noncontrast_cnr_is_flagged(runs):
    lesions, ranked = runs["pet"]
    top = ranked.index[ranked["rank"] == 1][0]
    assert lesions.loc[ranked.loc[top, "lesion_label"], "noncontrast_cnr"] < 1.0
    assert "NONCONTRAST_CONSPICUITY" in _reasons(ranked, top)
    assert "confirm visibility on ultrasound or non-contrast CT" in ranked.loc[top, "explanation"]
    assert "NONCONTRAST_CONSPICUITY" in _reasons(ranked, "noncontrast_invisible")


def test_key_images_show_both_ct_phases(runs, tmp_path_factory):
    lesions, _ = runs["pet"]
    # the study job wrote key images with a non-contrast panel next to the contrast one
    out = next(p for p in tmp_path_factory.getbasetemp().rglob("out_pet/keyimages/index.json"))
    index = json.loads(out.read_text())
    entries = {e["lesion_label"]: e for e in index["lesions"]}
    assert set(entries) == set(lesions.index)
    for e in entries.values():
        assert e["phases"] == ["contrast", "noncontrast"], e
        assert "non-contrast CT" in e["alt"]


# --------------------------------------------------------------------------- item 5: fissures
def test_fissures_evaluated_only_when_lobes_are_known(runs):
    lesions, ranked = runs["pet"]
    lung = lesions.index[lesions["organ"] == "lung"]
    assert len(lung) == 3
    for name in lung:  # every lung path stays within one lobe slab
        assert bool(lesions.loc[name, "safe_path_found"]), name
        assert lesions.loc[name, "fissure_crossings"] == 0, name
    lid = "lung_deep"
    assert lesions.loc["lung_deep", "fissure_lobes"] == "lung_upper_lobe_right"
    assert "FISSURE_CROSSING" not in str(ranked.loc[lid, "rules_not_evaluated"]).split(";")
    assert "FISSURE_CROSSING" not in _reasons(ranked, lid)
    seg_lesions, seg_ranked = runs["seg"]
    assert seg_lesions["fissure_crossings"].isna().all()
    assert "FISSURE_CROSSING" in str(seg_ranked.loc[lid, "rules_not_evaluated"]).split(";")
    # non-lung lesions away from the lung are not listed as unevaluated
    assert "FISSURE_CROSSING" not in str(seg_ranked.loc["liver_deep", "rules_not_evaluated"])


# --------------------------------------------------------------------------- item 6: sites
def test_axillary_and_inguinal_nodes_are_different_sites(runs):
    lesions, ranked = runs["pet"]
    ax, ing = ranked.loc["node_axillary_l"], ranked.loc["node_inguinal_r"]
    assert ax["organ"] == ing["organ"] == "lymph_node"
    assert ax["diversity_site"] == "lymph_node:axillary"
    assert ing["diversity_site"] == "lymph_node:inguinal"
    for name in ("node_axillary_L", "node_inguinal_R"):
        assert lesions.loc[name, "short_axis_mm"] >= 15.0
        assert ranked.loc[name.lower(), "recist_category"] == "target"
    # one injection per site: the two axillary nodes are not both injected
    inj = ranked.index[ranked["role"] == "inject"]
    sites = ranked.loc[inj, "diversity_site"]
    assert sites.is_unique


# --------------------------------------------------------------------------- no regression
@pytest.mark.parametrize("run", ["pet", "nopet", "standard"])
def test_existing_phantom_outcomes_do_not_regress(runs, run):
    _, r = runs[run]
    assert r.loc["liver_subcapsular", "tier"] == "not_suitable"
    assert "LIVER_SUBCAPSULAR" in _reasons(r, "liver_subcapsular")
    assert r.loc["lung_nodule_tiny", "tier"] == "not_suitable"
    assert r.loc["node_paraaortic", "tier"] == "board_review"
    assert "VESSEL_ABUT" in _reasons(r, "node_paraaortic")
    for sup in ("soft_tissue_flank", "node_axillary_r"):
        assert r.loc[sup, "rank"] < r.loc["liver_deep", "rank"], sup
    for lid in ("liver_subcapsular", "lung_nodule_tiny", "necrotic_mass"):
        assert r.loc[lid, "role"] != "inject", lid


def test_standard_lesions_keep_their_tiers_in_the_extended_phantom(runs):
    _, std = runs["standard"]
    _, ext = runs["seg"]  # same organ source as the standard run
    assert len(std) == 8
    pd.testing.assert_series_equal(std["tier"], ext.loc[std.index, "tier"])


# --------------------------------------------------------------------------- ranking target rule
def test_ranking_target_point_sources_follow_the_configuration():
    """The ranking's target point (derive_columns) agrees with the anatomy stage: SUVpeak centre
    for an avid lesion, else the viable point when the centre is necrotic, else the centroid;
    dropping ``viable`` from the configured sources brings the centroid back."""
    cfg = load_config()["ranking"]
    base = dict(lesion_id="a", centroid_x_mm=0.0, centroid_y_mm=0.0, centroid_z_mm=0.0)
    viable = dict(viable_target_x_mm=25.0, viable_target_y_mm=0.0, viable_target_z_mm=0.0)
    peak = dict(suv_peak=6.0, suv_max=7.0, suv_peak_x_mm=-24.0, suv_peak_y_mm=1.0,
                suv_peak_z_mm=2.0)
    rows = pd.DataFrame([dict(base, lesion_id="necrotic", **viable),
                         dict(base, lesion_id="necrotic_avid", **viable, **peak),
                         dict(base, lesion_id="viable_centre")])
    df = derive_columns(rows, cfg).set_index("lesion_id")
    assert df["target_point_source"].to_dict() == {
        "necrotic": "viable", "necrotic_avid": "suv_peak", "viable_centre": "centroid"}
    assert df.loc["necrotic", "target_x_mm"] == 25.0
    assert "necrotic core" in df.loc["necrotic", "target_point_label"]
    cfg["target_point"]["sources"] = ["suv_peak", "centroid"]
    df = derive_columns(rows, cfg).set_index("lesion_id")
    assert df.loc["necrotic", "target_point_source"] == "centroid"
    assert df.loc["necrotic", "target_x_mm"] == 0.0
