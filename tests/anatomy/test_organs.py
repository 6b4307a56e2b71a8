"""Organ mask sources (DICOM SEG, RTSTRUCT, TotalSegmentator folder) -> one structure vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from anatomy_phantom import mask_of

from pipeline.anatomy import organs as O
from pipeline.anatomy import stage
from pipeline.anatomy.site import organ_term
from pipeline.config import load_config
from pipeline.geometry import Grid
from pipeline.records import SegmentKind, Volume
from pipeline.testing import phantom as P


@pytest.mark.parametrize("name,structure", [
    ("Liver", "liver"), ("Lung_L", "lung_left"), ("Lt Lung", "lung_left"),
    ("left lung", "lung_left"), ("LUNG-R", "lung_right"), ("Rt. Lung", "lung_right"),
    ("lung_upper_lobe_left", "lung_left"), ("lung_middle_lobe_right", "lung_right"),
    ("Lungs", "lung"), ("Spine", "vertebral_column"), ("vertebrae_L1", "vertebral_column"),
    ("vertebrae_T12", "vertebral_column"), ("rib_left_3", "ribs"), ("SpinalCord", "spinal_cord"),
    ("Spinal Cord", "spinal_cord"), ("Kidney_L", "kidney_left"), ("kidney_cyst_right",
                                                                   "kidney_right"),
    ("heart_ventricle_left", "heart"), ("IVC", "inferior_vena_cava"), ("Aorta", "aorta"),
    ("Esophagus", "esophagus"), ("Bowel_Bag", "bowel"), ("BODY", "body"),
    ("External", "body"), ("Ureter L", "ureter_left"), ("CBD", "bile_duct"),
    ("mystery organ", "mystery_organ"),
])
def test_structure_names(name, structure):
    assert O.structure_name(name) == structure


def test_codes_decide_and_modifiers_give_the_side():
    # TotalSegmentator DICOM SEG: "Upper lobe of lung" + Left modifier
    assert O.structure_name("Segment_3", code="45653009", laterality_code="7771000") == "lung_left"
    assert O.structure_name("Segment_4", code="64033007", laterality_code="24028007") == (
        "kidney_right")
    assert O.structure_name("L1", code="66794005") == "vertebral_column"
    assert O.structure_name("whatever", code="10200004") == "liver"
    assert O.structure_name("lung_left", code="44029006") == "lung_left"
    assert O.structure_name("Lung_R", code="99999999") == "lung_right"  # unknown code: the name


def test_organ_terms():
    assert organ_term("lung_left") == "lung"
    assert organ_term("Lt Lung") == "lung"
    assert organ_term("vertebrae_L1") == "bone"
    assert organ_term("iliac_artery_left") == "vessel"
    assert organ_term("renal_artery_right") == "vessel"  # by pattern
    assert organ_term("small_bowel") == "bowel"
    assert organ_term("kidney_left") == "kidney"
    assert organ_term("adrenal_gland_right") == "adrenal"
    assert organ_term("trachea") == "airway"
    assert organ_term("mystery organ") == "mystery_organ"


G = Grid((20, 30, 40), (2.0, 2.0, 3.0), (-40.0, -30.0, -30.0))


def _box(lo, hi) -> np.ndarray:
    m = np.zeros(G.shape_zyx, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def test_canonical_organs_merge_lobes_and_vertebrae():
    masks = [mask_of(_box((0, 5, 5), (10, 15, 15)), G, "lung_upper_lobe_left", SegmentKind.ORGAN),
             mask_of(_box((10, 5, 5), (18, 15, 15)), G, "lung_lower_lobe_left", SegmentKind.ORGAN),
             mask_of(_box((2, 20, 20), (6, 25, 25)), G, "vertebrae_T9", SegmentKind.ORGAN),
             mask_of(_box((6, 20, 20), (9, 25, 25)), G, "vertebrae_T10", SegmentKind.ORGAN)]
    out = O.canonical_organs(masks)
    assert sorted(out) == ["lung_left", "vertebral_column"]
    assert out["lung_left"].voxel_count == 18 * 10 * 10
    np.testing.assert_array_equal(out["vertebral_column"].full(), _box((2, 20, 20), (9, 25, 25)))
    assert out["lung_left"].name == "lung_left" and out["lung_left"].kind == SegmentKind.ORGAN
    by_number = O.canonical_organs({m.name: m for m in masks[:1]},
                                   segment_names={masks[0].segment_number: "lung_right"})
    assert list(by_number) == ["lung_right"]


# --------------------------------------------------------------------------- phantom, 3 sources
@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    folder = P.generate_patient(tmp_path_factory.mktemp("organs"), 1, "small", 0, "extended")
    return folder, json.loads((folder / "truth.json").read_text())


def test_seg_rtstruct_and_totalseg_give_the_same_organs(phantom_files):
    from pipeline.io import rtstruct, seg

    folder, truth = phantom_files
    ct_uid = truth["series"]["ct_noncontrast"]
    g = P.ct_grid("small")
    seg_masks = seg.read_seg(folder / "SEG_organs.dcm", grids={ct_uid: g})
    rt_masks = rtstruct.read_rtstruct(folder / "RTSTRUCT_organs.dcm", grid=g, series_uid=ct_uid)
    assert sorted(m.name for m in rt_masks) == ["Aorta", "Liver", "Lung_L", "Lung_R", "Spine",
                                               "Spleen"]
    sources = {
        "seg": O.canonical_organs(seg_masks,
                                  segment_names=O.seg_structure_names(folder / "SEG_organs.dcm")),
        "rtstruct": O.canonical_organs(rt_masks),
        "totalseg": O.totalseg_organs(folder / "totalseg", grid=g),
    }
    expected = ["aorta", "liver", "lung_left", "lung_right", "spleen", "vertebral_column"]
    for src, organs in sources.items():
        assert sorted(organs) == expected, src
    for s in expected:  # voxel-identical masks
        ref = sources["seg"][s].full()
        for src in ("rtstruct", "totalseg"):
            np.testing.assert_array_equal(sources[src][s].full(), ref, err_msg=f"{src} {s}")
    # and the same organ assignment for every lesion, equal to the designed organ
    arrays = P.phantom_arrays("small", 1, 0, "extended")
    cfg = load_config()
    ct = Volume(arrays.ct_noncontrast_hu, g, "HU", ct_uid)
    assigned = {}
    for src, organs in sources.items():
        ctx = stage.prepare({"noncontrast": ct}, g, organs, cfg)
        assigned[src] = {}
        for k, les in enumerate(arrays.design.lesions, start=1):
            m = mask_of(arrays.lesion_labels == k, g, les.name)
            assigned[src][les.name] = stage.lesion_columns(m, ctx, cfg)["organ"]
    assert assigned["seg"] == assigned["rtstruct"] == assigned["totalseg"]
    for les in arrays.design.lesions:
        assert assigned["seg"][les.name] == les.organ, les.name
