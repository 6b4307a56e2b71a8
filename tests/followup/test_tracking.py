"""The follow-up step (pipeline.followup.tracking) on synthetic tables.

A patient with a baseline and two follow-ups. The patient lies differently at each visit: the
follow-up scanner frame is the baseline frame rotated 8 degrees about z and shifted by
(25, -15, 30) mm, so raw centroids are up to ~35 mm from the baseline ones (more than the 20 mm
matching limit) and only the registration brings them together. Registration is replaced by
that exact transform (its own accuracy is tested in test_registration.py), except in the test
of a missing reference, which runs the real path.

Designed truth (measures in mm; nodes by short axis):

============  ========  ======  =====  =====  ============================================
track         category  t0      t1     t2     notes
============  ========  ======  =====  =====  ============================================
flank         T-I       24      14     0      t2: empty segment, baseline TrackingUID
node          T-I       16 (SA) 9      9      nodal; longest diameter 20 / 12 / 12
liver         T-NI      30      40     NE     t2: not in the segmentation
lung          T-NI      16      16     18     t2: the team injects it -> T-I from t2
nodule        NT-NI     7       7      7
new (t1)      NEW       -       12     12
============  ========  ======  =====  =====  ============================================

Sums: T-I 40 -> 23 (-42.5 %: iPR); T-NI 46 -> 56 (+21.7 % and +10 mm from nadir 46: iUPD);
targets 86 -> 79; a new lesion of 12 mm (>= 5 mm) -> noninjected and overall iUPD at t1.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.followup import tracking
from pipeline.followup.tracking import (
    LESION_TRACKING_COLUMNS,
    Registration,
    read_tracking,
    run_followup,
)
from pipeline.io.tables import write_table

ANG = math.radians(8.0)
R = np.array([[math.cos(ANG), -math.sin(ANG), 0.0], [math.sin(ANG), math.cos(ANG), 0.0],
              [0.0, 0.0, 1.0]])
T = np.array([25.0, -15.0, 30.0])
UIDS = {"flank": "1.2.826.0.1.1", "node": "1.2.826.0.1.2", "liver": "1.2.826.0.1.3",
        "lung": "1.2.826.0.1.4", "nodule": "1.2.826.0.1.5"}
POS = {"flank": (120.0, 60.0, 0.0), "node": (-110.0, 40.0, 100.0), "liver": (-50.0, 10.0, -60.0),
       "lung": (70.0, -30.0, 150.0), "nodule": (20.0, -60.0, 160.0), "new": (0.0, 110.0, 20.0)}
ORGAN = {"flank": "soft_tissue", "node": "lymph_node", "liver": "liver", "lung": "lung",
         "nodule": "lung", "new": "soft_tissue"}


class ExactRegistration:
    """Stands in for FollowupRegistration: the known follow-up -> baseline map."""

    status = "ok"

    def to_baseline(self, p):
        return (np.asarray(p, float) - T) @ R  # inverse of scanner = R @ baseline + T

    def as_dict(self):
        return {"status": "ok", "reason": ""}


def scanner(name):
    return R @ np.array(POS[name]) + T


def _lesion(pid, uid, lid, label, name, ld, sa=None, *, xyz=None, tuid="", empty=False):
    x, y, z = (np.full(3, np.nan) if empty else (POS[name] if xyz is None else xyz))
    return {"patient_id": pid, "study_uid": uid, "lesion_id": lid, "lesion_label": label,
            "organ": ORGAN[name], "longest_diameter_mm": 0.0 if empty else ld,
            "short_axis_mm": 0.0 if empty else (sa if sa is not None else ld * 0.7),
            "volume_ml": 0.0 if empty else 5.0, "voxel_count": 0 if empty else 500,
            "lesion_empty": empty, "centroid_x_mm": x, "centroid_y_mm": y, "centroid_z_mm": z,
            "tracking_uid": tuid}


@pytest.fixture()
def cfg():
    return load_config()


@pytest.fixture()
def setup(tmp_path):
    results = tmp_path / "RESULTS"
    sheet = pd.DataFrame({
        "patient_id": ["P"] * 3, "study_uid": ["1.1", "1.2", "1.3"],
        "study_date": ["20240101", "20240301", "20240501"], "patient_dir": ["P"] * 3,
        "study_dir": ["s1", "s2", "s3"], "lesion_mask_source": ["seg"] * 3})
    dirs = {s: results / "studies" / "P" / s for s in ("s1", "s2", "s3")}
    for d in dirs.values():
        d.mkdir(parents=True)
    base = pd.DataFrame([
        _lesion("P", "1.1", "flank", "Lesion 1", "flank", 24.0, tuid=UIDS["flank"]),
        _lesion("P", "1.1", "node", "Lesion 2", "node", 20.0, 16.0, tuid=UIDS["node"]),
        _lesion("P", "1.1", "liver", "Lesion 3", "liver", 30.0, tuid=UIDS["liver"]),
        _lesion("P", "1.1", "lung", "Lesion 4", "lung", 16.0, tuid=UIDS["lung"]),
        _lesion("P", "1.1", "nodule", "Lesion 5", "nodule", 7.0, tuid=""),
    ])
    ranking = pd.DataFrame({"lesion_id": ["flank", "node", "liver", "lung", "nodule"],
                            "role": ["inject", "inject", "monitor", "monitor", "none"],
                            "measurable": [True, True, True, True, False]})
    # t1: other labels, fresh UIDs (not longitudinal), rows shuffled, repositioned patient
    fu1 = pd.DataFrame([
        _lesion("P", "1.2", "a", "target B", "liver", 40.0, xyz=scanner("liver"), tuid="2.1"),
        _lesion("P", "1.2", "b", "new one", "new", 12.0, xyz=scanner("new"), tuid="2.2"),
        _lesion("P", "1.2", "c", "target A", "flank", 14.0, xyz=scanner("flank"), tuid="2.3"),
        _lesion("P", "1.2", "d", "node R", "node", 12.0, 9.0, xyz=scanner("node"), tuid="2.4"),
        _lesion("P", "1.2", "e", "nod", "nodule", 7.0, xyz=scanner("nodule"), tuid="2.5"),
        _lesion("P", "1.2", "f", "lung", "lung", 16.0, xyz=scanner("lung"), tuid="2.6"),
    ])
    # t2: flank gone (empty segment keeps the baseline UID), liver not segmented
    fu2 = pd.DataFrame([
        _lesion("P", "1.3", "x1", "gone", "flank", 0.0, tuid=UIDS["flank"], empty=True),
        _lesion("P", "1.3", "x2", "n", "node", 12.0, 9.0, xyz=scanner("node"), tuid="3.2"),
        _lesion("P", "1.3", "x3", "l", "lung", 18.0, xyz=scanner("lung"), tuid="3.3"),
        _lesion("P", "1.3", "x4", "t", "nodule", 7.0, xyz=scanner("nodule"), tuid="3.4"),
        _lesion("P", "1.3", "x5", "nn", "new", 12.0, xyz=scanner("new"), tuid="3.5"),
    ])
    for d, df in zip(dirs.values(), (base, fu1, fu2)):
        write_table(df, d / "lesions.csv")
    return results, sheet, dirs, {"s1": base, "s2": fu1, "s3": fu2}, ranking


def _row(sheet, s):
    return sheet[sheet["study_dir"] == s].iloc[0].to_dict()


def _exact(monkeypatch):
    monkeypatch.setattr(tracking, "register_study",
                        lambda b, f, c: Registration(True, "", ExactRegistration()))


def _run(setup, cfg, s, decisions=None):
    results, sheet, dirs, les, ranking = setup
    return run_followup(results, _row(sheet, s), sheet, cfg, dirs[s], lesions=les[s],
                        ranking=ranking if s == "s1" else pd.DataFrame(),
                        decisions=decisions or {})


def _by_track(df, index):
    return {r["track_id"]: r for r in df.to_dict("records") if r["timepoint_index"] == index}


def test_baseline_then_two_followups(setup, cfg, monkeypatch):
    from pipeline.followup.timepoints import TeamDecision

    results, sheet, dirs, _les, _rk = setup
    _exact(monkeypatch)
    r0 = _run(setup, cfg, "s1")
    assert r0.is_baseline and r0.timepoint_index == 0
    t0 = _by_track(r0.current, 0)
    assert {k: v["itrecist_category"] for k, v in t0.items()} == {
        "flank": "T-I", "node": "T-I", "liver": "T-NI", "lung": "T-NI", "nodule": "NT-NI"}
    assert t0["node"]["measure_kind"] == "short_axis" and t0["node"]["measure_mm"] == 16.0
    assert t0["flank"]["injected_since"] == "1.1" and t0["liver"]["injected_since"] == ""
    # the track UID: the segment's TrackingUID, else the one the SR derives (stable)
    assert t0["flank"]["tracking_uid"] == UIDS["flank"]
    from pydicom.uid import generate_uid
    assert t0["nodule"]["tracking_uid"] == generate_uid(entropy_srcs=["1.1", "lesion", "nodule"])

    r1 = _run(setup, cfg, "s2")
    assert r1.timepoint_index == 1 and not r1.info["flagged_for_review"]
    t1 = _by_track(r1.current, 1)
    assert {k: v["lesion_id"] for k, v in t1.items()} == {
        "flank": "c", "node": "d", "liver": "a", "lung": "f", "nodule": "e", "new1-b": "b"}
    assert all(t1[k]["match_method"] == "position" for k in POS if k != "new")
    assert max(t1[k]["match_distance_mm"] for k in POS if k != "new") < 1e-6
    assert t1["new1-b"]["itrecist_category"] == "NEW" and t1["new1-b"]["status"] == "new"
    assert t1["node"]["measure_mm"] == 9.0  # short axis, the baseline method
    assert t1["flank"]["tracking_uid"] == UIDS["flank"]  # the track keeps the baseline UID
    # positions stored in the baseline frame
    np.testing.assert_allclose([t1["liver"][c] for c in ("x_baseline_mm", "y_baseline_mm",
                                                         "z_baseline_mm")], POS["liver"], atol=1e-6)
    resp = pd.read_csv(dirs["s2"] / "followup_response.csv", dtype=str, keep_default_na=False)
    assert list(resp["timepoint_index"]) == ["0", "1"]
    last = resp.iloc[1]
    assert float(last["sod_ti_mm"]) == pytest.approx(23.0)
    assert float(last["sod_tni_mm"]) == pytest.approx(56.0)
    assert float(last["sod_targets_mm"]) == pytest.approx(79.0)
    assert float(last["change_ti_from_baseline_pct"]) == pytest.approx(-42.5, abs=0.01)
    assert (last["response_injected"], last["response_noninjected"],
            last["response_overall"]) == ("iPR", "iUPD", "iUPD")
    assert last["new_lesions"] == "1"

    # t2: the team injects the lung T-NI at this study -> T-I from t2 only
    dec = {("P", "1.3", "x3"): TeamDecision("P", "1.3", "x3", "inject", "", "board", "ana")}
    r2 = _run(setup, cfg, "s3", dec)
    t2 = _by_track(r2.current, 2)
    assert t2["flank"]["status"] == "disappeared" and t2["flank"]["measure_mm"] == 0.0
    assert t2["flank"]["match_method"] == "tracking_uid"
    assert t2["liver"]["status"] == "not_evaluable" and math.isnan(t2["liver"]["measure_mm"])
    assert any("track liver" in w and "not evaluable" in w for w in r2.info["warnings"])
    assert t2["lung"]["itrecist_category"] == "T-I" and t2["lung"]["injected_since"] == "1.3"
    assert t2["new1-b"]["lesion_id"] == "x5"  # the new lesion keeps its track
    hist = read_tracking(dirs["s3"] / "followup_tracking.csv")
    assert list(hist.columns) == LESION_TRACKING_COLUMNS
    assert sorted(set(hist["timepoint_index"])) == [0, 1, 2]
    # earlier rows never change (the lung was T-NI at t0 and t1)
    lung = hist[hist["track_id"] == "lung"].sort_values("timepoint_index")
    assert list(lung["itrecist_category"]) == ["T-NI", "T-NI", "T-I"]
    resp2 = pd.read_csv(dirs["s3"] / "followup_response.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(resp2.iloc[:2], resp)
    t2r = resp2.iloc[2]
    # the reclassified lung joins T-I from t2: T-I = flank 0 + node 9 + lung 18 = 27 mm against
    # its members' baseline 24 + 16 + 16 = 56 mm (-51.8 %: iPR)
    assert float(t2r["sod_ti_mm"]) == pytest.approx(27.0)
    assert float(t2r["change_ti_from_baseline_pct"]) == pytest.approx(-51.79, abs=0.01)
    assert t2r["response_injected"] == "iPR"
    # T-NI is the liver alone, not evaluable: no sum; the new lesion keeps iUPD (unconfirmed)
    assert t2r["sod_tni_mm"] == "" and t2r["response_noninjected"] == "iUPD"
    info = json.loads((dirs["s3"] / "followup.json").read_text())
    assert info["timepoint_index"] == 2 and info["baseline_study_uid"] == "1.1"
    assert info["previous_study_uid"] == "1.2"


def test_failed_registration_flags_the_study_and_matches_by_uid_only(setup, cfg, monkeypatch):
    results, sheet, dirs, les, _rk = setup
    _exact(monkeypatch)
    _run(setup, cfg, "s1")
    # t1 where two lesions kept their baseline UID; the rest must not be matched by raw position
    fu1 = les["s2"].copy()
    fu1.loc[fu1["lesion_id"] == "c", "tracking_uid"] = UIDS["flank"]
    fu1.loc[fu1["lesion_id"] == "d", "tracking_uid"] = UIDS["node"]
    les["s2"] = fu1

    class Failed(ExactRegistration):
        status = "failed"

        def as_dict(self):
            return {"status": "failed", "body_dice": 0.71,
                    "reason": "body Dice 0.710 < min_body_dice 0.9"}

    monkeypatch.setattr(tracking, "register_study", lambda b, f, c: Registration(
        False, "body Dice 0.710 < min_body_dice 0.9", Failed(), "body_dice"))
    r1 = _run(setup, cfg, "s2")
    assert r1.info["flagged_for_review"]
    assert "body Dice 0.710 < min_body_dice 0.9" in r1.info["flag_reason"]
    (fail,) = r1.info["failures"]
    assert fail["severity"] == "warning" and "body_dice" in fail["message"]
    t1 = _by_track(r1.current, 1)
    assert t1["flank"]["lesion_id"] == "c" and t1["flank"]["match_method"] == "tracking_uid"
    assert t1["node"]["lesion_id"] == "d"
    assert t1["liver"]["lesion_id"] == "" and t1["liver"]["match_method"] == "none"
    assert {r["status"] for r in t1.values()} == {"not_evaluable"}
    assert "new1-b" not in t1  # no NEW track from a lesion that cannot be placed
    resp = pd.read_csv(dirs["s2"] / "followup_response.csv", dtype=str, keep_default_na=False)
    last = resp.iloc[1]
    assert (last["response_overall"], last["response_injected"],
            last["response_noninjected"]) == ("NE", "NE", "NE")
    assert last["reasons"].startswith("registration to the baseline failed (body Dice")
    # the cohort step picks the warning up
    from pipeline.followup.tracking import followup_failures
    assert followup_failures(dirs["s2"])[0]["error_class"] == "RegistrationQualityError"


def test_missing_reference_is_a_failed_registration(setup, cfg):
    _run(setup, cfg, "s1")
    r1 = _run(setup, cfg, "s2")  # the real registration path: no registration_ref.npz
    assert r1.info["flagged_for_review"]
    assert "no registration reference of the baseline study" in r1.info["flag_reason"]


def test_excluded_study_repeats_the_history(setup, cfg, monkeypatch):
    results, sheet, dirs, les, _rk = setup
    sheet["timepoint_role"] = ["", "exclude", ""]
    _exact(monkeypatch)
    _run(setup, cfg, "s1")
    r1 = _run(setup, cfg, "s2")
    assert r1.timepoint_index is None and r1.current.empty
    assert (dirs["s2"] / "followup_tracking.csv").read_text() == (
        dirs["s1"] / "followup_tracking.csv").read_text()
    r2 = _run(setup, cfg, "s3")
    assert r2.timepoint_index == 1  # the excluded study is no timepoint
    resp = pd.read_csv(dirs["s3"] / "followup_response.csv", dtype=str, keep_default_na=False)
    assert list(resp["study_uid"]) == ["1.1", "1.3"]


def test_missing_previous_tracks_is_recorded_and_propagates(setup, cfg, monkeypatch):
    from pipeline.errors import FollowupError
    from pipeline.followup.tracking import followup_failures, followup_step

    results, sheet, dirs, les, _rk = setup
    _exact(monkeypatch)
    with pytest.raises(FollowupError, match="previous timepoint's tracks"):
        followup_step(results, _row(sheet, "s2"), sheet, cfg, dirs["s2"], lesions=les["s2"],
                      ranking=pd.DataFrame(), decisions={})
    # the rank job goes on: the error is recorded, the files exist (empty)
    r1 = _run(setup, cfg, "s2")
    assert r1.info["failed"] and r1.timepoint_index is None and r1.current.empty
    (f,) = followup_failures(dirs["s2"])
    assert f["severity"] == "error" and f["error_class"] == "FollowupError"
    assert read_tracking(dirs["s2"] / "followup_tracking.csv").empty
    # the next follow-up names the study whose step failed
    r2 = _run(setup, cfg, "s3")
    assert r2.info["failed"] and "previous study 1.2 failed" in r2.info["error"]


def test_prior_matches_give_the_ranking_growth_along_the_tracks(setup, cfg, monkeypatch):
    from pipeline.followup.tracking import prior_matches
    from pipeline.ranking.longitudinal import add_prior

    results, sheet, dirs, les, _rk = setup
    _exact(monkeypatch)
    _run(setup, cfg, "s1")
    _run(setup, cfg, "s2")
    prior_uid, m = prior_matches(read_tracking(dirs["s2"] / "followup_tracking.csv"), 1)
    assert prior_uid == "1.1"
    assert m == {"a": "liver", "b": "", "c": "flank", "d": "node", "e": "nodule", "f": "lung"}
    # growth along the tracks although raw positions are > 20 mm apart in the scanner frames
    out = add_prior(les["s2"], les["s1"], "1.1", cfg["ranking"], matched=m).set_index("lesion_id")
    assert out.loc["a", "prior_lesion_id"] == "liver" and out.loc["a", "match_method"] == "track"
    assert out.loc["a", "longest_diameter_change_pct"] == pytest.approx(100 * 10 / 30)
    assert out.loc["a", "new_or_growing"] is True  # 30 -> 40 mm
    assert out.loc["c", "new_or_growing"] is False  # 24 -> 14 mm
    assert out.loc["b", "new_or_growing"] is True and out.loc["b", "prior_lesion_id"] == ""
    # without the tracks the raw scanner positions match nothing: every lesion looks new
    raw = add_prior(les["s2"], les["s1"], "1.1", cfg["ranking"]).set_index("lesion_id")
    assert (raw["match_method"] == "none").all()
