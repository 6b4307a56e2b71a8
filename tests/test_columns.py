"""The lesion-table column declaration (pipeline/columns.py) and its users: the study job writes
exactly the declared columns, read_table applies the declared types, the README table is current."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import columns as C
from pipeline.errors import ConfigError, InternalError

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data_samples" / "archive"


# --------------------------------------------------------------------------- the declaration
def test_names_unique_and_fields_valid():
    names = [c.name for c in C.ALL_COLUMNS]
    dup = [n for n, k in collections.Counter(names).items() if k > 1]
    assert not dup
    for c in C.ALL_COLUMNS + C.RADIOMICS_FAMILIES:
        assert c.dtype in C.DTYPES, c
        assert c.producer and c.meaning and "\n" not in c.meaning, c
        assert re.fullmatch(r"[a-z][a-z0-9_]*|[a-z]+_<.*>", c.name), c.name
    assert C.lesion_column_names() == [c.name for c in C.LESION_COLUMNS]
    assert C.lesion_column_names()[:3] == ["patient_id", "study_uid", "lesion_id"]
    assert C.dtype_map()["mask_referenced_series_uid"] == "str"
    assert C.is_declared("ct_original_glcm_Contrast") and C.is_declared("pet_original_shape_Sphericity")
    assert not C.is_declared("vesel_relation") and not C.is_declared("ct_nc_hu_mode")


def test_every_reason_column_is_declared_and_used():
    by_name = {c.name: c for c in C.ALL_COLUMNS}
    referenced = {c.reason_column for c in C.ALL_COLUMNS + C.RADIOMICS_FAMILIES if c.reason_column}
    for r in referenced:
        assert r.endswith("_reason") and r in by_name and by_name[r].dtype == "str", r
    reason_cols = {n for n in by_name if n.endswith("_reason")}
    assert reason_cols - referenced == set(), "a *_reason column no value column points to"
    # a value column and its reason column have the same producer family (features / anatomy)
    for c in C.LESION_COLUMNS:
        if c.reason_column:
            assert by_name[c.reason_column].producer.split(".")[0] == c.producer.split(".")[0], c


def test_units_follow_the_names():
    for c in C.ALL_COLUMNS:
        if c.name.endswith("_mm"):
            assert c.unit == "mm", c
        if c.name.endswith("_ml"):
            assert c.unit == "mL", c
        if c.name.endswith("_deg"):
            assert c.unit == "deg", c
        if c.dtype in ("str", "bool"):
            assert c.unit == "", c


def test_ranking_modules_only_use_declared_columns():
    from pipeline.ranking import longitudinal, rules, select, sidecar

    assert [c for c in select.RANKING_COLUMNS if not C.is_declared(c)] == []
    assert [c for c in rules.DERIVED_COLUMNS if not C.is_declared(c)] == []
    assert [c for c in rules.DERIVATION_INPUTS if not C.is_declared(c)] == []
    merged = sidecar.merged_columns()
    assert "sidecar_notes" in merged and "biopsy_required_source" in merged
    assert [c for c in merged if not C.is_declared(c)] == []
    sidecar.check_declared()
    # the follow-up comparison adds only declared columns
    from pipeline.config import load_config

    cur = pd.DataFrame({"patient_id": ["p"], "study_uid": ["s2"], "lesion_id": ["a"],
                        "lesion_label": ["a"], "tracking_uid": [""], "centroid_x_mm": [0.0],
                        "centroid_y_mm": [0.0], "centroid_z_mm": [0.0],
                        "longest_diameter_mm": [20.0], "volume_ml": [4.0]})
    prior = cur.assign(study_uid="s1", longest_diameter_mm=10.0)
    out = longitudinal.add_prior(cur, prior, "s1", load_config()["ranking"])
    added = set(out.columns) - set(cur.columns)
    assert added >= {"prior_study_uid", "new_or_growing", "longest_diameter_change_pct"}
    assert [c for c in added if not C.is_declared(c)] == []
    assert out["new_or_growing"].iloc[0] is True


def test_sidecar_schema_with_an_undeclared_column_is_rejected():
    from pipeline.ranking import sidecar

    schema = sidecar._schema()
    schema["properties"]["biopsy_requird"] = {"type": "boolean"}
    with pytest.raises(ConfigError, match=r"'biopsy_requird'.*did you mean 'biopsy_required'") as err:
        sidecar.check_declared(schema)
    assert err.value.hint and "SIDECAR_COLUMNS" in err.value.hint


def test_order_lesion_columns_places_radiomics_and_rejects_undeclared():
    produced = ["lesion_id", "pet_original_firstorder_Mean", "patient_id", "radiomics_reason",
                "ct_original_firstorder_Mean", "volume_ml"]
    order = C.order_lesion_columns(produced)
    names = C.lesion_column_names()
    assert [c for c in order if c in names] == names
    i = order.index("radiomics_reason")
    assert order[i - 2:i] == ["pet_original_firstorder_Mean", "ct_original_firstorder_Mean"]
    with pytest.raises(InternalError, match="'vesel_relation'") as err:
        C.order_lesion_columns(produced + ["vesel_relation"])
    assert "LESION_COLUMNS" in err.value.hint


def test_readme_column_table_is_current():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert C.README_START in text and C.README_END in text
    assert C.replace_readme_section(text) == text, \
        "README.md column table is out of date: run python scripts/gen_column_table.py"
    for c in C.ALL_COLUMNS:
        assert f"| `{c.name}` |" in text


def test_gen_column_table_check_flags_a_stale_readme(tmp_path):
    import subprocess
    import sys

    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n{C.README_START}\nold\n{C.README_END}\nrest\n")
    script = REPO / "scripts" / "gen_column_table.py"
    r = subprocess.run([sys.executable, str(script), "--readme", str(stale), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "out of date" in r.stderr
    r = subprocess.run([sys.executable, str(script), "--readme", str(stale)], capture_output=True, text=True)
    assert r.returncode == 0
    new = stale.read_text()
    assert new.startswith("# x\n") and new.endswith(f"{C.README_END}\nrest\n") and "`tracking_uid`" in new
    r = subprocess.run([sys.executable, str(script), "--readme", str(stale), "--check"])
    assert r.returncode == 0


# --------------------------------------------------------------------------- read_table
def test_read_table_uses_declared_types(tmp_path):
    from pipeline.io.tables import read_table

    p = tmp_path / "lesions.csv"
    p.write_text(
        "patient_id,study_uid,lesion_id,tracking_uid,segment_number,volume_ml,us_window,"
        "safe_path_found,suv_reason,pleura_crossings,undeclared\n"
        "007,1.20,01,1.2.30,1,2.5,True,false,,1.0,x\n"
        "007,1.20,02,,2,,,yes,no PET,,y\n")
    df = read_table(p)
    assert df["patient_id"].tolist() == ["007", "007"]      # leading zeros kept
    assert df["study_uid"].tolist() == ["1.20", "1.20"]     # a UID is not a number
    assert df["lesion_id"].tolist() == ["01", "02"]
    assert df["tracking_uid"].iloc[0] == "1.2.30" and pd.isna(df["tracking_uid"].iloc[1])
    assert df["volume_ml"].dtype == np.float64 and np.isnan(df["volume_ml"].iloc[1])
    assert str(df["segment_number"].dtype) == "Int64"
    assert df["pleura_crossings"].iloc[0] == 1 and pd.isna(df["pleura_crossings"].iloc[1])
    assert df["us_window"].tolist() == [True, None]
    assert df["safe_path_found"].tolist() == [False, True]
    assert pd.isna(df["suv_reason"].iloc[0]) and df["suv_reason"].iloc[1] == "no PET"


def test_read_table_rejects_text_in_a_boolean_column(tmp_path):
    from pipeline.io.tables import read_table

    p = tmp_path / "lesions.csv"
    p.write_text("lesion_id,us_window\na,maybe\n")
    with pytest.raises(InternalError, match="us_window"):
        read_table(p)


# --------------------------------------------------------------------------- the study job
@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """One phantom study (sample PHANTOM001) through the same step commands Snakemake calls."""
    import shutil

    from pipeline.cli import main

    root = tmp_path_factory.mktemp("columns")
    archive, results = root / "archive", root / "results"
    shutil.copytree(SAMPLES / "PHANTOM001", archive / "PHANTOM001")
    assert main(["index", "--input", str(archive), "--output", str(results)]) == 0
    sheet = pd.read_csv(results / "cohort" / "studies.csv", dtype=str, keep_default_na=False)
    r = sheet.iloc[0]
    assert main(["study", "--results", str(results), "--patient-dir", r.patient_dir,
                 "--study-dir", r.study_dir]) == 0
    return results / "studies" / r.patient_dir / r.study_dir


def test_phantom_lesions_csv_has_exactly_the_declared_columns(study_dir):
    from pipeline.io.tables import read_table

    header = list(pd.read_csv(study_dir / "lesions.csv", nrows=0).columns)
    names = C.lesion_column_names()
    assert [c for c in header if c in names] == names          # every declared column, in order
    extra = [c for c in header if c not in names]
    assert extra and all(C.family_of(c) is not None for c in extra)  # radiomics (enabled by default)
    i = header.index(C.RADIOMICS_BEFORE)
    assert header[i - len(extra):i] == extra                   # radiomics just before its reason
    les = read_table(study_dir / "lesions.csv")                # the declared types parse
    assert len(les) == 8
    assert les["us_window"].map(lambda v: v in (True, False, None)).all()
    assert les["volume_ml"].dtype == np.float64 and (les["volume_ml"] > 0).all()
    assert les["lesion_id"].map(type).eq(str).all()


def test_failed_study_writes_the_declared_header(tmp_path):
    from pipeline.study import run_study

    prov = run_study({"patient_id": "P", "study_uid": "1.2"}, pd.DataFrame(columns=["series_uid", "path"]),
                     tmp_path, {"index": {"on_irregular": "fail"}}, tmp_path / "out")
    assert prov["status"] == "failed"
    header = list(pd.read_csv(tmp_path / "out" / "lesions.csv", nrows=0).columns)
    assert header == C.lesion_column_names()


def test_undeclared_produced_column_is_an_internal_error(monkeypatch, tmp_path):
    from pipeline import study

    def fake_process(inp, cfg, timer, out_dir, partial=None):
        row = {c: None for c in C.lesion_column_names()}
        row.update(lesion_id="a", vessel_relaton="none")
        return pd.DataFrame([row]), {}, []

    monkeypatch.setattr(study, "_process", fake_process)
    with pytest.raises(InternalError, match="'vessel_relaton'"):
        study.run_study({"patient_id": "P", "study_uid": "1.2"}, pd.DataFrame(), tmp_path, {},
                        tmp_path / "out")
