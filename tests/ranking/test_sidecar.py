"""Clinical sidecar: validation with named lines/columns, merging, effect on the ranking."""

import pandas as pd
import pytest
from ranking_rows import PHANTOM001, lesion

from pipeline import config as cfgmod
from pipeline.errors import ConfigError
from pipeline.ranking.longitudinal import rank_patient
from pipeline.ranking.sidecar import (
    load_sidecar,
    load_sidecar_from_config,
    merge_sidecar,
)


def write(tmp_path, text, name="sidecar.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """patient_id,lesion_label,lesion_id,prior_locoregional_therapy,new_or_growing,biopsy_required,critical_compression,max_injections,notes
P1,Liver_Deep,,yes,,,,,RFA 2023
P1,,node_axillary_r,,TRUE,no,1,,
P1,,,,,,,1,trial X: one injection per session
P2,liver_deep,,true,,,,,other patient
"""


def test_load_valid_sidecar(tmp_path):
    sc = load_sidecar(write(tmp_path, GOOD))
    assert len(sc) == 4
    assert sc.loc[0, "prior_locoregional_therapy"] is True
    assert sc.loc[0, "new_or_growing"] is None
    assert sc.loc[1, "new_or_growing"] is True and sc.loc[1, "biopsy_required"] is False
    assert sc.loc[1, "critical_compression"] is True
    assert sc.loc[2, "max_injections"] == 1
    assert sc["sidecar_line"].tolist() == [2, 3, 4, 5]


@pytest.mark.parametrize("text,needle", [
    ("patient_id,lesion_label,biopsy_requird\nP1,a,true\n", "biopsy_requird"),
    ("patient_id,lesion_label,biopsy_required\nP1,a,maybe\n", "line 2, column 'biopsy_required'"),
    ("patient_id,lesion_label,max_injections\nP1,a,1\nP1,b,two\n", "line 3, column 'max_injections'"),
    ("patient_id,lesion_label,max_injections\nP1,a,-1\n", "line 2, column 'max_injections'"),
    ("patient_id,lesion_label,new_or_growing\nP1,,true\n", "line 2, column 'new_or_growing'"),
    ("patient_id,lesion_label,new_or_growing\n,a,true\n", "line 2, column 'patient_id'"),
    ("lesion_label,new_or_growing\na,true\n", "'patient_id' is required"),
    ("patient_id,notes\nP1,x\n", "'lesion_id' or a 'lesion_label'"),
    ("patient_id,lesion_label,biopsy_required\nP1,a,true\nP1,A,false\n", "lines [2, 3]"),
])
def test_invalid_sidecar_names_line_and_column(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load_sidecar(write(tmp_path, text))
    assert needle in str(err.value)


def test_missing_sidecar_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="clinical sidecar not found"):
        load_sidecar(tmp_path / "nope.csv")


def test_config_key_and_schema(tmp_path, base_cfg):
    assert base_cfg["ranking"]["sidecar"] is None
    assert load_sidecar_from_config(base_cfg["ranking"]) is None
    p = write(tmp_path, GOOD)
    cfg = cfgmod.load_config(overrides={"ranking": {"sidecar": str(p)}})
    assert len(load_sidecar_from_config(cfg["ranking"])) == 4
    with pytest.raises(ConfigError, match="ranking.sidecar"):
        cfgmod.load_config(overrides={"ranking": {"sidecar": 3}})


def test_merge_by_label_id_and_patient(tmp_path):
    sc = load_sidecar(write(tmp_path, GOOD))
    les = pd.DataFrame(PHANTOM001).assign(patient_id="P1")
    m = merge_sidecar(les, sc).set_index("lesion_id")
    assert m.loc["liver_deep", "prior_locoregional_therapy"] is True  # label, case-insensitive
    assert m.loc["liver_deep", "prior_locoregional_therapy_source"] == "sidecar"
    assert m.loc["liver_deep", "sidecar_notes"] == "RFA 2023"
    assert m.loc["node_axillary_r", "new_or_growing"] is True
    assert m.loc["node_axillary_r", "biopsy_required"] is False
    assert m.loc["soft_tissue_flank", "new_or_growing"] is None
    assert (m["max_injections"] == 1).all()  # patient-level row
    assert m.attrs["warnings"] == []


def test_merge_warns_on_unknown_lesion_and_respects_study(tmp_path):
    sc = load_sidecar(write(tmp_path, "patient_id,study_uid,lesion_label,biopsy_required\n"
                                      "P1,,ghost,true\nP1,9.9.9,liver_deep,true\n"))
    les = pd.DataFrame(PHANTOM001).assign(patient_id="P1")
    m = merge_sidecar(les, sc)
    assert any("line 2" in w and "ghost" in w for w in m.attrs["warnings"])
    assert m["biopsy_required"].isna().all()  # the 9.9.9 row is for another study


def test_sidecar_values_reach_the_rules(tmp_path, cfg):
    sc = load_sidecar(write(tmp_path, GOOD))
    les = pd.DataFrame(PHANTOM001).assign(patient_id="P1", study_uid="S1")
    r = rank_patient([("S1", "20240101", les)], cfg, sidecar=sc)["S1"].set_index("lesion_id")
    assert "PRIOR_LOCOREGIONAL" in r.loc["liver_deep", "reasons"]
    assert "CRITICAL_COMPRESSION" in r.loc["node_axillary_r", "reasons"]
    assert "NEW_OR_GROWING" in r.loc["node_axillary_r", "reasons"]
    assert (r["role"] == "inject").sum() == 1  # per-trial limit
    assert r.loc["liver_deep", "role"] != "monitor"  # locally treated: not a monitoring target


def test_biopsy_changes_needle_and_rank(tmp_path, cfg):
    les = pd.DataFrame([lesion("a", site="superficial_soft_tissue", skin_depth_mm=10),
                        lesion("b", site="superficial_soft_tissue", skin_depth_mm=10, suv_max=5.9)])
    sc = load_sidecar(write(tmp_path, "patient_id,lesion_id,biopsy_required\nP1,a,true\n"))
    cfg["injections_per_session"] = 1
    r = rank_patient([("1.2.3", "20240101", les)], cfg, sidecar=sc)["1.2.3"].set_index("lesion_id")
    assert "NEEDLE_GAUGE" in r.loc["a", "reasons"]
    assert r.loc["b", "rank"] == 1


def test_histology_not_fdg_avid_turns_off_the_pet_rules(tmp_path, cfg):
    from pipeline.ranking.select import rank_study

    rows = [lesion("cold_enh", suv_max=1.8, suv_peak=1.5, enhancement_hu=45.0),
            lesion("other", suv_max=1.8, suv_peak=1.5, enhancement_hu=45.0)]
    sc = load_sidecar(write(tmp_path, "patient_id,lesion_id,histology_fdg_avid\n"
                                      "P1,,false\nP1,other,true\n"))
    assert sc["histology_fdg_avid"].tolist() == [False, True]
    merged = merge_sidecar(pd.DataFrame(rows), sc).set_index("lesion_id")
    # the patient row sets every lesion; the lesion row overrides it whatever the CSV order
    assert merged.loc["cold_enh", "histology_fdg_avid"] is False
    assert merged.loc["other", "histology_fdg_avid"] is True
    assert merged.loc["cold_enh", "histology_fdg_avid_source"] == "sidecar"
    r = rank_study(merged.reset_index(), cfg).set_index("lesion_id")
    cold = set(r.loc["cold_enh", "reasons"].split(";"))
    assert "LOW_UPTAKE" not in cold and {"VIABLE_ENH", "PET_NOT_INFORMATIVE"} <= cold
    assert "LOW_UPTAKE" in r.loc["other", "reasons"].split(";")
    assert r.loc["cold_enh", "score"] > r.loc["other", "score"]
