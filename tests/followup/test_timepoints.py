"""A patient's timepoints (order, baseline, roles), the team's decisions and the locked categories."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.errors import ConfigError
from pipeline.followup.response import Category
from pipeline.followup.timepoints import (
    TeamDecision,
    baseline_category,
    patient_timepoints,
    read_decisions,
    reclassified_category,
)
from pipeline.sheet import SCHEMA_PATH, earlier_studies, validate_study_sheet

COLS = ["patient_id", "study_uid", "study_date", "patient_dir", "study_dir", "lesion_mask_source"]


def _sheet(rows, extra=None):
    df = pd.DataFrame([dict(zip(COLS, r)) for r in rows], columns=COLS)
    for k, v in (extra or {}).items():
        df[k] = v
    return df


def _order(tps):
    return [(s.study_uid, s.index, s.is_baseline, s.excluded_reason) for s in tps.studies]


def test_order_baseline_first_study_with_masks_and_earlier_studies_agree():
    sheet = _sheet([
        ("P", "1.4", "20240301", "P", "1.4", "seg"),
        ("P", "1.2", "20240101", "P", "1.2", ""),       # oldest, no lesion masks
        ("P", "1.3", "20240201", "P", "1.3", "seg"),    # -> baseline
        ("P", "1.5", "20240301", "P", "1.5", "seg"),    # same day as 1.4: after it by UID
        ("P", "1.1", "", "P", "1.1", "seg"),            # undated
        ("Q", "2.1", "20200101", "Q", "2.1", "seg"),
    ])
    tps = patient_timepoints(sheet, "P")
    assert _order(tps) == [
        ("1.2", None, False, "before the baseline study"),
        ("1.3", 0, True, ""),
        ("1.4", 1, False, ""),
        ("1.5", 2, False, ""),
        ("1.1", None, False, "study date unknown: no place in time"),
    ]
    assert tps.baseline.study_uid == "1.3"
    # the previous study is the last of earlier_studies (what the rank rule waits for)
    for s in ("1.4", "1.5"):
        assert tps.previous(s).study_uid == earlier_studies(sheet, "P", s)[-1]["study_uid"]
    assert tps.previous("1.3") is None and tps.previous("1.2") is None
    assert tps.previous("1.1") is None


def test_study_time_orders_studies_of_one_day_before_the_uid():
    sheet = _sheet([("P", "1.1", "20240101", "P", "1.1", "seg"),
                    ("P", "1.2", "20240101", "P", "1.2", "seg")],
                   {"study_time": ["150000", "090000"]})
    tps = patient_timepoints(sheet, "P")
    assert [s.study_uid for s in tps.studies] == ["1.2", "1.1"]
    assert tps.baseline.study_uid == "1.2"
    assert [r["study_uid"] for r in earlier_studies(sheet, "P", "1.1")] == ["1.2"]


def test_timepoint_role_baseline_and_exclude():
    sheet = _sheet([
        ("P", "1.1", "20240101", "P", "1.1", "seg"),
        ("P", "1.2", "20240201", "P", "1.2", "seg"),
        ("P", "1.3", "20240301", "P", "1.3", "seg"),
        ("P", "1.4", "20240401", "P", "1.4", "seg"),
        ("P", "1.5", "20240501", "P", "1.5", ""),
    ], {"timepoint_role": ["", "baseline", "exclude", "follow_up", ""]})
    tps = patient_timepoints(sheet, "P")
    assert _order(tps) == [
        ("1.1", None, False, "before the baseline study"),
        ("1.2", 0, True, ""),
        ("1.3", None, False, "timepoint_role exclude in the study sheet"),
        ("1.4", 1, False, ""),
        ("1.5", None, False, "no lesion segmentation"),
    ]
    # an excluded study in between: the next follow-up reads the excluded study's files
    # (which repeat the history), so the chain of previous studies has no gap
    assert tps.previous("1.4").study_uid == "1.3"
    assert tps.previous("1.3").study_uid == "1.2"
    assert tps.previous("1.5").study_uid == "1.4"


def test_automatic_baseline_skips_an_excluded_first_study():
    sheet = _sheet([("P", "1.1", "20240101", "P", "1.1", "seg"),
                    ("P", "1.2", "20240201", "P", "1.2", "seg")],
                   {"timepoint_role": ["exclude", ""]})
    assert patient_timepoints(sheet, "P").baseline.study_uid == "1.2"


def test_no_baseline_and_bad_roles():
    tps = patient_timepoints(_sheet([("P", "1.1", "20240101", "P", "1.1", "")]), "P")
    assert tps.baseline is None
    assert tps.studies[0].excluded_reason.startswith("the patient has no baseline")
    two = _sheet([("P", "1.1", "20240101", "P", "1.1", "seg"),
                  ("P", "1.2", "20240201", "P", "1.2", "seg")],
                 {"timepoint_role": ["baseline", "baseline"]})
    with pytest.raises(ConfigError, match="2 studies with timepoint_role baseline"):
        patient_timepoints(two, "P")
    undated = _sheet([("P", "1.1", "", "P", "1.1", "seg")], {"timepoint_role": ["baseline"]})
    with pytest.raises(ConfigError, match="no study date"):
        patient_timepoints(undated, "P")
    odd = _sheet([("P", "1.1", "20240101", "P", "1.1", "seg")], {"timepoint_role": ["later"]})
    with pytest.raises(ConfigError, match="timepoint_role 'later'"):
        patient_timepoints(odd, "P")


def _user_sheet(roles, masks=("seg", "seg")):
    rows = []
    for i, (role, m) in enumerate(zip(roles, masks)):
        rows.append({"patient_id": "P", "study_uid": f"1.2.{i + 1}", "ct_series_uid": "",
                     "ce_ct_series_uid": "", "pet_series_uid": "", "lesion_mask_source": m,
                     "lesion_mask_ref": "1.2.3" if m else "", "organ_mask_source": "",
                     "organ_mask_ref": "", "notes": "", "timepoint_role": role,
                     "study_time": "101500"})
    return pd.DataFrame(rows)


def test_sheet_schema_validates_timepoint_role_and_study_time():
    validate_study_sheet(_user_sheet(["baseline", "follow_up"]), SCHEMA_PATH)
    validate_study_sheet(_user_sheet(["", "exclude"]), SCHEMA_PATH)
    with pytest.raises(ConfigError, match="timepoint_role"):
        validate_study_sheet(_user_sheet(["baseline", "followup"]), SCHEMA_PATH)
    with pytest.raises(ConfigError, match="2 studies with timepoint_role baseline"):
        validate_study_sheet(_user_sheet(["baseline", "baseline"]), SCHEMA_PATH)
    with pytest.raises(ConfigError, match="a baseline needs lesion masks"):
        validate_study_sheet(_user_sheet(["baseline", ""], masks=("", "seg")), SCHEMA_PATH)
    bad_time = _user_sheet(["", ""])
    bad_time.loc[0, "study_time"] = "10:15"
    with pytest.raises(ConfigError, match="study_time"):
        validate_study_sheet(bad_time, SCHEMA_PATH)


def test_read_decisions(tmp_path):
    assert read_decisions(tmp_path / "none.csv") == {}
    p = tmp_path / "decisions.csv"
    p.write_text("patient_id,study_uid,lesion_id,chosen,role,category,planned_volume_ml,reason,"
                 "reader,decided_utc,signed_off_by,signed_off_utc\n"
                 "P,1.1,L1,1,inject,,2.0,,ana,2024-01-01T00:00:00Z,,\n"
                 "P,1.1,L2,0,,T-NI,,board,ana,2024-01-01T00:00:00Z,ana,2024-01-02T00:00:00Z\n")
    d = read_decisions(p)
    assert d[("P", "1.1", "L1")].role == "inject" and d[("P", "1.1", "L1")].category == ""
    assert d[("P", "1.1", "L2")].category == "T-NI" and d[("P", "1.1", "L2")].signed_off_by == "ana"
    p.write_text("patient_id,study_uid,lesion_id,role,category\nP,1.1,L1,cut,\n")
    with pytest.raises(ConfigError, match="unknown role 'cut'"):
        read_decisions(p)
    p.write_text("patient_id,study_uid,lesion_id,role,category\nP,1.1,L1,,NEW\n")
    with pytest.raises(ConfigError, match="unknown category 'NEW'"):
        read_decisions(p)
    p.write_text("patient_id,study_uid,lesion_id,chosen\nP,1.1,L1,1\n")
    with pytest.raises(ConfigError, match="lacks column"):
        read_decisions(p)


def _dec(role="", category=""):
    return TeamDecision("P", "1.1", "L1", role, category, "", "")


def test_baseline_category_team_decision_then_tool_proposal():
    # tool proposal: inject -> T-I if measurable else NT-I; monitor -> T-NI; none -> NT-NI
    assert baseline_category("inject", True, None) == (Category.T_I, "tool proposal")
    assert baseline_category("inject", False, None) == (Category.NT_I, "tool proposal")
    assert baseline_category("monitor", True, None) == (Category.T_NI, "tool proposal")
    assert baseline_category("none", True, None) == (Category.NT_NI, "tool proposal")
    # the team's decision wins: its category, else the category its role implies
    assert baseline_category("inject", True, _dec(category="T-NI")) == (Category.T_NI,
                                                                          "team decision")
    assert baseline_category("none", True, _dec(role="inject")) == (Category.T_I, "team decision")
    assert baseline_category("monitor", True, _dec(role="none")) == (Category.NT_NI,
                                                                      "team decision")
    # an empty decision row (nothing decided) leaves the tool's proposal
    assert baseline_category("monitor", True, _dec()) == (Category.T_NI, "tool proposal")


def test_reclassification_only_ni_to_i():
    assert reclassified_category(Category.T_NI, _dec(role="inject")) is Category.T_I
    assert reclassified_category(Category.NT_NI, _dec(role="inject")) is Category.NT_I
    assert reclassified_category(Category.T_NI, _dec(category="T-I")) is Category.T_I
    assert reclassified_category(Category.T_NI, _dec(role="monitor")) is None
    assert reclassified_category(Category.T_NI, None) is None
    assert reclassified_category(Category.T_I, _dec(role="none")) is None  # injected stays
    assert reclassified_category(Category.NEW, _dec(role="inject")) is None
