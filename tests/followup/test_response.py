"""itRECIST / iRECIST response logic (pipeline/followup/response.py), worked examples.

Every expected value is computed by hand in the comments from the published rules: RECIST 1.1
(Eisenhauer 2009), iRECIST (Seymour 2017) and itRECIST (Goldmacher 2020), with the default
thresholds of ``followup.response``: PR at least -30 % from baseline, PD at least +20 % AND at least
+5 mm from nadir, iCPD by a further >= 5 mm (sum of targets, or of new lesions) or an additional new
lesion, node normal below 10 mm short axis, new lesions counted from 5 mm. Sums are exact in binary
floating point or compared with a stated tolerance (1e-9 mm / 1e-9 %).
"""

import copy

import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.followup.response import (
    RESPONSE_COLUMNS,
    Category,
    MeasureKind,
    Observation,
    Response,
    Status,
    TimepointInput,
    assess_patient,
    nontarget_progressed,
)

LD, SA = MeasureKind.LONGEST_DIAMETER, MeasureKind.SHORT_AXIS
TOL = 1e-9


@pytest.fixture(scope="module")
def cfg():
    return load_config()["followup"]["response"]


def ob(track, cat, mm, status=None, kind=LD, ntp=False):
    """One observation; status defaults to present (new for NEW, disappeared for 0 mm)."""
    if status is None:
        status = Status.NEW if cat == "NEW" else Status.DISAPPEARED if mm == 0 else Status.PRESENT
    return Observation(track, Category(cat), kind, mm, status, ntp)


def tp(i, *obs):
    return TimepointInput(i, f"1.2.826.0.1.{i}", f"2026{i + 1:02d}01", tuple(obs))


def resp(rows, group):
    return [getattr(r, f"response_{group}") for r in rows]


# --------------------------------------------------------------------------------------------------
# baseline row and row format

def test_baseline_row_sums_and_row_format(cfg):
    # T-I a 40 + T-I node n 16 (short axis) = 56; T-NI b 100; all targets 156 mm
    rows = assess_patient([tp(0, ob("a", "T-I", 40.0), ob("n", "T-I", 16.0, kind=SA),
                                 ob("b", "T-NI", 100.0), ob("x", "NT-NI", 12.0))], cfg)
    (r,) = rows
    assert (r.sod_ti_mm, r.sod_tni_mm, r.sod_targets_mm) == (56.0, 100.0, 156.0)
    assert r.change_targets_from_baseline_pct == 0.0 and r.change_targets_from_nadir_pct == 0.0
    assert (r.response_overall, r.response_injected, r.response_noninjected, r.best_overall_response) == (
        None, None, None, None)
    row = r.as_row()
    assert list(row) == RESPONSE_COLUMNS[1:]
    assert row["response_overall"] == "" and row["timepoint_index"] == 0 and row["sod_ti_mm"] == 56.0
    assert "T-I sum 56.0 mm (2 targets, 0 non-targets)" in row["reasons"]
    assert "targets sum 156.0 mm (3 targets, 1 non-target)" in row["reasons"]
    rows = assess_patient([tp(0, ob("x", "NT-I", 12.0))], cfg)
    assert rows[0].sod_ti_mm is None and rows[0].change_ti_from_baseline_pct is None
    assert "T-I sum none (0 targets, 1 non-target)" in rows[0].reasons


def test_as_row_writes_enum_values(cfg):
    rows = assess_patient([tp(0, ob("a", "T-I", 40.0)), tp(1, ob("a", "T-I", 20.0))], cfg)
    row = rows[1].as_row()
    # 40 -> 20 mm = -50 % -> iPR; no noninjected lesion -> empty group -> ""
    assert row["response_injected"] == "iPR" and row["response_overall"] == "iPR"
    assert row["response_noninjected"] == "" and row["best_overall_response"] == "iPR"
    assert row["change_ti_from_baseline_pct"] == pytest.approx(-50.0, abs=TOL)


# --------------------------------------------------------------------------------------------------
# iPR / iSD / iUPD boundaries

def test_partial_response_boundary_exactly_minus_30_pct(cfg):
    # RECIST 1.1: PR is "at least a 30 % decrease" -> exactly -30 % IS a PR.
    # injected: T-I a 40 -> 28 mm = -30.0 % -> iPR; 40 -> 28.1 = -29.75 % -> iSD.
    # overall: 40 + 60 = 100 -> 28 + 60 = 88 = -12 % -> iSD.
    base = tp(0, ob("a", "T-I", 40.0), ob("b", "T-NI", 60.0))
    rows = assess_patient([base, tp(1, ob("a", "T-I", 28.0), ob("b", "T-NI", 60.0))], cfg)
    assert rows[1].response_injected == Response.IPR
    assert rows[1].change_ti_from_baseline_pct == pytest.approx(-30.0, abs=TOL)
    assert rows[1].response_overall == Response.ISD
    assert rows[1].change_targets_from_baseline_pct == pytest.approx(-12.0, abs=TOL)
    assert rows[1].response_noninjected == Response.ISD
    rows = assess_patient([base, tp(1, ob("a", "T-I", 28.1), ob("b", "T-NI", 60.0))], cfg)
    assert rows[1].response_injected == Response.ISD
    assert rows[1].change_ti_from_baseline_pct == pytest.approx(-29.75, abs=TOL)


@pytest.mark.parametrize("now_mm, expected", [
    (30.0, Response.IUPD),   # 25 -> 30: +20.0 % and +5.0 mm: RECIST "at least" both -> PD
    (29.9, Response.ISD),    # +19.6 %, +4.9 mm: neither
])
def test_progression_boundary_exactly_20_pct_and_5_mm(cfg, now_mm, expected):
    rows = assess_patient([tp(0, ob("b", "T-NI", 25.0)), tp(1, ob("b", "T-NI", now_mm))], cfg)
    assert rows[1].response_noninjected == expected
    assert rows[1].response_overall == expected
    assert rows[1].response_injected is None  # no injected lesion at baseline: empty, not NE


@pytest.mark.parametrize("now_mm, expected", [
    (60.0, Response.IUPD),   # 50 -> 60: exactly +20 % (and +10 mm): PD
    (59.9, Response.ISD),    # +19.8 % although +9.9 mm
])
def test_progression_boundary_pct_alone(cfg, now_mm, expected):
    rows = assess_patient([tp(0, ob("b", "T-NI", 50.0)), tp(1, ob("b", "T-NI", now_mm))], cfg)
    assert rows[1].response_noninjected == expected


def test_progression_needs_both_pct_and_mm(cfg):
    # 20 -> 24: +20 % but only +4 mm -> iSD; 50 -> 55: +5 mm but only +10 % -> iSD
    for before, after in ((20.0, 24.0), (50.0, 55.0)):
        rows = assess_patient([tp(0, ob("b", "T-NI", before)), tp(1, ob("b", "T-NI", after))], cfg)
        assert rows[1].response_noninjected == Response.ISD, (before, after)


def test_progression_is_from_nadir_not_baseline(cfg):
    # 50 -> 40 (-20 %, iSD, nadir 40) -> 48: +20 % and +8 mm from nadir 40 -> iUPD (while -4 % vs baseline)
    rows = assess_patient([tp(0, ob("b", "T-NI", 50.0)), tp(1, ob("b", "T-NI", 40.0)),
                           tp(2, ob("b", "T-NI", 48.0))], cfg)
    assert resp(rows, "noninjected") == [None, Response.ISD, Response.IUPD]
    assert rows[2].change_targets_from_baseline_pct == pytest.approx(-4.0, abs=TOL)
    assert rows[2].change_targets_from_nadir_pct == pytest.approx(20.0, abs=TOL)
    assert "from nadir 40.0 mm" in rows[2].reasons


# --------------------------------------------------------------------------------------------------
# iCR, nodal iCR

def test_complete_response_non_nodal(cfg):
    rows = assess_patient([tp(0, ob("a", "T-I", 22.0), ob("x", "NT-I", 8.0)),
                           tp(1, ob("a", "T-I", 0.0), ob("x", "NT-I", 0.0))], cfg)
    assert rows[1].response_injected == Response.ICR and rows[1].response_overall == Response.ICR
    assert rows[1].sod_ti_mm == 0.0
    assert rows[1].change_ti_from_baseline_pct == pytest.approx(-100.0, abs=TOL)
    assert rows[1].best_overall_response == Response.ICR


def test_nodal_complete_response_node_at_9_mm_counts_as_gone_but_stays_in_sum(cfg):
    # T-I node n 16 -> 9 mm short axis (< 10: normal), T-NI liver l 20 -> 0, NT-NI node m 12 -> 8 (< 10).
    # Overall SOD 36 -> 9 mm (the 9 mm node still counted): -75 %; injected 16 -> 9: -43.75 %.
    rows = assess_patient([
        tp(0, ob("n", "T-I", 16.0, kind=SA), ob("l", "T-NI", 20.0), ob("m", "NT-NI", 12.0, kind=SA)),
        tp(1, ob("n", "T-I", 9.0, kind=SA), ob("l", "T-NI", 0.0), ob("m", "NT-NI", 8.0, kind=SA)),
    ], cfg)
    r = rows[1]
    assert (r.response_overall, r.response_injected, r.response_noninjected) == (Response.ICR,) * 3
    assert r.sod_targets_mm == 9.0 and r.sod_ti_mm == 9.0 and r.sod_tni_mm == 0.0
    assert r.change_targets_from_baseline_pct == pytest.approx(-75.0, abs=TOL)
    assert r.change_ti_from_baseline_pct == pytest.approx(-43.75, abs=TOL)
    assert "n 9.0 mm" in r.reasons


def test_node_at_exactly_10_mm_is_not_normal(cfg):
    # node 16 -> 10 mm: not < 10 -> not gone -> no iCR; -37.5 % -> iPR
    rows = assess_patient([tp(0, ob("n", "T-I", 16.0, kind=SA)), tp(1, ob("n", "T-I", 10.0, kind=SA))], cfg)
    assert rows[1].response_injected == Response.IPR


def test_targets_gone_but_nontarget_persists_is_ipr_even_below_the_pct(cfg):
    # RECIST 1.1 table 1: target CR + non-target non-CR/non-PD -> PR. With partial_response_pct -70
    # node 16 -> 9 (-43.75 %) is not a PR by the sum, but all targets are gone -> iPR; when the
    # non-target is gone too -> iCR.
    c = dict(cfg, partial_response_pct=-70.0)
    base = tp(0, ob("n", "T-I", 16.0, kind=SA), ob("x", "NT-I", 14.0))
    rows = assess_patient([base, tp(1, ob("n", "T-I", 9.0, kind=SA), ob("x", "NT-I", 14.0))], c)
    assert rows[1].response_injected == Response.IPR
    assert "a non-target persists" in rows[1].reasons
    rows = assess_patient([base, tp(1, ob("n", "T-I", 9.0, kind=SA), ob("x", "NT-I", 0.0))], c)
    assert rows[1].response_injected == Response.ICR


# --------------------------------------------------------------------------------------------------
# iUPD -> iCPD

def test_iupd_confirmed_by_sum_then_stays_icpd(cfg):
    # T-NI 50 -> 40 (iSD, -20 %) -> 50 (+25 %, +10 mm from nadir 40: iUPD) -> 55 (+5 mm since the
    # iUPD: iCPD) -> 45 (still iCPD: confirmed progression stays).
    sizes = [50.0, 40.0, 50.0, 55.0, 45.0]
    rows = assess_patient([tp(i, ob("b", "T-NI", s)) for i, s in enumerate(sizes)], cfg)
    assert resp(rows, "noninjected") == [None, Response.ISD, Response.IUPD, Response.ICPD, Response.ICPD]
    assert resp(rows, "overall") == resp(rows, "noninjected")
    assert [r.best_overall_response for r in rows] == [None] + [Response.ISD] * 4
    assert "sum up 5.0 mm since the iUPD at timepoint 2" in rows[3].reasons


def test_iupd_confirmed_by_new_lesion_growth(cfg):
    # targets stable; new lesion N 10 mm at tp1 (>= 5 mm: iUPD in overall and noninjected, not in
    # injected which does not count new lesions); N 15 mm at tp2: new lesions' sum +5 mm -> iCPD.
    base = [ob("a", "T-I", 30.0), ob("b", "T-NI", 40.0)]
    rows = assess_patient([tp(0, *base), tp(1, *base, ob("N", "NEW", 10.0)),
                           tp(2, *base, ob("N", "NEW", 15.0))], cfg)
    assert resp(rows, "overall") == [None, Response.IUPD, Response.ICPD]
    assert resp(rows, "noninjected") == [None, Response.IUPD, Response.ICPD]
    assert resp(rows, "injected") == [None, Response.ISD, Response.ISD]
    assert [r.new_lesions for r in rows] == [0, 1, 1]
    assert "noninjected iUPD: new lesion (N 10.0 mm); T-NI sum 40.0 mm" in rows[1].reasons
    assert "new lesions' sum up 5.0 mm (10.0 -> 15.0 mm)" in rows[2].reasons


def test_iupd_confirmed_by_an_additional_new_lesion(cfg):
    # N1 8 mm at tp1 -> iUPD; tp2: N1 unchanged, N2 6 mm appears (>= 5 mm) -> iCPD
    base = [ob("b", "T-NI", 40.0)]
    rows = assess_patient([tp(0, *base), tp(1, *base, ob("N1", "NEW", 8.0)),
                           tp(2, *base, ob("N1", "NEW", 8.0, Status.PRESENT), ob("N2", "NEW", 6.0))], cfg)
    assert resp(rows, "overall") == [None, Response.IUPD, Response.ICPD]
    assert "additional new lesion (N2 6.0 mm)" in rows[2].reasons
    assert rows[2].new_lesions == 2


def test_iupd_confirmed_by_further_nontarget_progression(cfg):
    # NT-NI x flagged (unequivocal progression) at tp1 -> iUPD; tp2 x grown 30 -> 36 mm (+6 >= 5) -> iCPD.
    # Second patient: tp2 x unchanged but NT-NI y now flagged too -> iCPD.
    base = [ob("b", "T-NI", 40.0)]
    t0 = tp(0, *base, ob("x", "NT-NI", 20.0), ob("y", "NT-NI", 20.0))
    t1 = tp(1, *base, ob("x", "NT-NI", 30.0, ntp=True), ob("y", "NT-NI", 20.0))
    rows = assess_patient([t0, t1, tp(2, *base, ob("x", "NT-NI", 36.0, ntp=True), ob("y", "NT-NI", 20.0))], cfg)
    assert resp(rows, "noninjected") == [None, Response.IUPD, Response.ICPD]
    rows = assess_patient([t0, t1, tp(2, *base, ob("x", "NT-NI", 30.0, ntp=True),
                                      ob("y", "NT-NI", 30.0, ntp=True))], cfg)
    assert resp(rows, "noninjected") == [None, Response.IUPD, Response.ICPD]
    # x flagged but only +3 mm, y not flagged: the trigger persists, not confirmed -> iUPD stays
    rows = assess_patient([t0, t1, tp(2, *base, ob("x", "NT-NI", 33.0, ntp=True), ob("y", "NT-NI", 20.0))], cfg)
    assert resp(rows, "noninjected") == [None, Response.IUPD, Response.IUPD]


def test_iupd_by_new_lesion_confirmed_when_targets_then_progress(cfg):
    # iRECIST: progression in a category that did not meet iUPD confirms it. T-NI 40; tp1 new lesion
    # 10 mm -> iUPD; tp2 the new lesion unchanged, T-NI 50 (+25 %, +10 mm from nadir 40) -> iCPD
    rows = assess_patient([tp(0, ob("b", "T-NI", 40.0)),
                           tp(1, ob("b", "T-NI", 40.0), ob("N", "NEW", 10.0)),
                           tp(2, ob("b", "T-NI", 50.0), ob("N", "NEW", 10.0))], cfg)
    assert resp(rows, "noninjected") == [None, Response.IUPD, Response.ICPD]
    assert "targets now meet the iUPD rule" in rows[2].reasons


def test_new_lesion_stays_new_when_later_injected(cfg):
    # a new lesion injected at tp2 (caller gives NT-I) is still a new lesion: it does not join the injected
    # group and keeps the overall iUPD going (not confirmed, not reset)
    base = [ob("a", "T-I", 30.0), ob("b", "T-NI", 40.0)]
    rows = assess_patient([tp(0, *base), tp(1, *base, ob("N", "NEW", 10.0)),
                           tp(2, *base, ob("N", "NT-I", 10.0, Status.PRESENT))], cfg)
    assert resp(rows, "overall") == [None, Response.IUPD, Response.IUPD]
    assert resp(rows, "injected") == [None, Response.ISD, Response.ISD]
    assert rows[2].new_lesions == 1


def test_iupd_stays_while_trigger_persists_reference_is_first_iupd(cfg):
    # 50 -> 62 (+24 %, +12 mm: iUPD, reference 62) -> 64 (+2 since iUPD, still >= 60 and >= 55: iUPD stays)
    # -> 66.5 (+4.5: stays) -> 67 (+5.0 from the episode's first iUPD 62: iCPD)
    sizes = [50.0, 62.0, 64.0, 66.5, 67.0]
    rows = assess_patient([tp(i, ob("b", "T-NI", s)) for i, s in enumerate(sizes)], cfg)
    assert resp(rows, "noninjected") == [None, Response.IUPD, Response.IUPD, Response.IUPD, Response.ICPD]
    assert "iUPD (stays, not confirmed since timepoint 1)" in rows[2].reasons
    assert [r.best_overall_response for r in rows][1:] == [Response.IUPD] * 4


def test_iupd_resets_to_isd_and_bar_is_reset(cfg):
    # 50 -> 62 (iUPD) -> 52 (+4 % from nadir 50: no iUPD rule holds -> reset, +4 % from baseline -> iSD)
    # -> 62 (+24 % from nadir 50: a NEW iUPD, not iCPD) -> 67 (+5 since that iUPD: iCPD)
    sizes = [50.0, 62.0, 52.0, 62.0, 67.0]
    rows = assess_patient([tp(i, ob("b", "T-NI", s)) for i, s in enumerate(sizes)], cfg)
    assert resp(rows, "noninjected") == [None, Response.IUPD, Response.ISD, Response.IUPD, Response.ICPD]
    assert "iUPD of timepoint 1 reset" in rows[2].reasons
    assert "confirmed by sum up 5.0 mm since the iUPD at timepoint 3" in rows[4].reasons
    assert rows[4].best_overall_response == Response.ISD


def test_iupd_resets_to_ipr_when_new_lesion_resolves(cfg):
    # tp1 new lesion 10 mm -> iUPD; tp2 new lesion gone (0 mm) and target 50 -> 35 (-30 %) -> iPR
    rows = assess_patient([tp(0, ob("b", "T-NI", 50.0)),
                           tp(1, ob("b", "T-NI", 50.0), ob("N", "NEW", 10.0)),
                           tp(2, ob("b", "T-NI", 35.0), ob("N", "NEW", 0.0, Status.DISAPPEARED))], cfg)
    assert resp(rows, "overall") == [None, Response.IUPD, Response.IPR]
    assert [r.new_lesions for r in rows] == [0, 1, 0]
    assert rows[2].best_overall_response == Response.IPR
    assert "reset" in rows[2].reasons


# --------------------------------------------------------------------------------------------------
# NE

def test_missing_target_is_ne_and_absent_track_too(cfg):
    base = [ob("a", "T-I", 30.0), ob("b", "T-NI", 40.0)]
    for t1 in (tp(1, ob("a", "T-I", 30.0), ob("b", "T-NI", None, Status.NOT_EVALUABLE)),
               tp(1, ob("a", "T-I", 30.0))):  # b has no observation at all: not evaluable, never dropped
        rows = assess_patient([tp(0, *base), t1], cfg)
        r = rows[1]
        assert (r.response_overall, r.response_injected, r.response_noninjected) == (
            Response.NE, Response.ISD, Response.NE)
        assert r.sod_tni_mm is None and r.sod_targets_mm is None and r.sod_ti_mm == 30.0
        assert r.change_targets_from_baseline_pct is None
        assert "target not evaluable (b)" in r.reasons
        assert r.best_overall_response == Response.NE


def test_ne_does_not_mask_a_clear_iupd(cfg):
    # T-I a 40; T-NI b 30 + c 20 = 50 (nadir). tp1: b not evaluable, c 60: the evaluable T-NI sum 60 is
    # already +20 % and +10 mm from nadir 50 -> noninjected iUPD (not NE). Overall: nadir 90, evaluable
    # 40 + 60 = 100 = +11.1 % -> could still be anything -> NE.
    rows = assess_patient([tp(0, ob("a", "T-I", 40.0), ob("b", "T-NI", 30.0), ob("c", "T-NI", 20.0)),
                           tp(1, ob("a", "T-I", 40.0), ob("b", "T-NI", None, Status.NOT_EVALUABLE),
                              ob("c", "T-NI", 60.0))], cfg)
    assert rows[1].response_noninjected == Response.IUPD
    assert rows[1].response_overall == Response.NE
    assert rows[1].sod_tni_mm is None
    # a new lesion with a target NE: overall iUPD, not NE
    rows = assess_patient([tp(0, ob("a", "T-I", 40.0), ob("b", "T-NI", 30.0)),
                           tp(1, ob("a", "T-I", 40.0), ob("b", "T-NI", None, Status.NOT_EVALUABLE),
                              ob("N", "NEW", 12.0))], cfg)
    assert rows[1].response_overall == Response.IUPD and rows[1].response_noninjected == Response.IUPD


def test_ne_between_iupd_and_its_confirmation(cfg):
    # 50 -> 62 iUPD -> b not evaluable (NE, episode kept) -> 67 (+5 from 62): iCPD at the next evaluable one
    rows = assess_patient([tp(0, ob("b", "T-NI", 50.0)), tp(1, ob("b", "T-NI", 62.0)),
                           tp(2, ob("b", "T-NI", None, Status.NOT_EVALUABLE)), tp(3, ob("b", "T-NI", 67.0))], cfg)
    assert resp(rows, "noninjected") == [None, Response.IUPD, Response.NE, Response.ICPD]


# --------------------------------------------------------------------------------------------------
# new lesions below the minimum

def test_new_lesion_under_minimum_is_equivocal_not_progression(cfg):
    # new lesion 4 mm < 5 mm: listed as equivocal, no iUPD; but it prevents iCR (all targets gone -> iPR)
    rows = assess_patient([tp(0, ob("b", "T-NI", 40.0)),
                           tp(1, ob("b", "T-NI", 0.0), ob("N", "NEW", 4.0))], cfg)
    assert rows[1].response_overall == Response.IPR and rows[1].response_noninjected == Response.IPR
    assert rows[1].new_lesions == 1
    assert "equivocal new lesion, not progression (N 4.0 mm < 5 mm)" in rows[1].reasons
    # the same lesion at 5.0 mm counts
    rows = assess_patient([tp(0, ob("b", "T-NI", 40.0)),
                           tp(1, ob("b", "T-NI", 0.0), ob("N", "NEW", 5.0))], cfg)
    assert rows[1].response_overall == Response.IUPD


def test_equivocal_new_lesion_grown_confirms_an_iupd(cfg):
    # T-NI 50 -> 62 (+24 %, +12 mm: iUPD) with an equivocal new lesion of 4 mm; tp2 targets 62 (no further
    # growth) but the new lesion is 7 mm (>= 5 mm, now unequivocal): progression in the new-lesion
    # category -> iCPD
    rows = assess_patient([tp(0, ob("b", "T-NI", 50.0)),
                           tp(1, ob("b", "T-NI", 62.0), ob("N", "NEW", 4.0)),
                           tp(2, ob("b", "T-NI", 62.0), ob("N", "NEW", 7.0, Status.PRESENT))], cfg)
    assert resp(rows, "overall") == [None, Response.IUPD, Response.ICPD]
    assert "equivocal new lesion now >= 5 mm (N 4.0 mm -> 7.0 mm)" in rows[2].reasons


# --------------------------------------------------------------------------------------------------
# NI -> I reclassification

def test_reclassification_ni_to_i_takes_effect_from_its_timepoint(cfg):
    # baseline: T-I a 40, T-NI b 30 and c 50. tp1 unchanged (all iSD). At tp2 b is injected (T-I):
    # injected members a + b, baseline recomputed 40 + 30 = 70, now 40 + 20 = 60 -> -14.29 % (iSD);
    # noninjected member c only: baseline 50, now 35 -> -30 % -> iPR. Overall 120 -> 95: -20.8 %, iSD.
    t0 = tp(0, ob("a", "T-I", 40.0), ob("b", "T-NI", 30.0), ob("c", "T-NI", 50.0))
    t1 = tp(1, ob("a", "T-I", 40.0), ob("b", "T-NI", 30.0), ob("c", "T-NI", 50.0))
    t2 = tp(2, ob("a", "T-I", 40.0), ob("b", "T-I", 20.0), ob("c", "T-NI", 35.0))
    rows = assess_patient([t0, t1, t2], cfg)
    assert rows[:2] == assess_patient([t0, t1], cfg)  # earlier rows unchanged
    assert rows[1].sod_ti_mm == 40.0 and rows[1].sod_tni_mm == 80.0
    r = rows[2]
    assert r.sod_ti_mm == 60.0 and r.sod_tni_mm == 35.0 and r.sod_targets_mm == 95.0
    assert r.change_ti_from_baseline_pct == pytest.approx(100 * (60 - 70) / 70, abs=TOL)
    assert r.change_tni_from_baseline_pct == pytest.approx(-30.0, abs=TOL)
    assert r.change_targets_from_baseline_pct == pytest.approx(100 * (95 - 120) / 120, abs=TOL)
    assert (r.response_overall, r.response_injected, r.response_noninjected) == (
        Response.ISD, Response.ISD, Response.IPR)
    assert "from baseline 70.0 mm" in r.reasons


def test_reclassification_fills_an_empty_injected_group(cfg):
    # no injected lesion at baseline: injected None (empty, not NE); b injected at tp2 -> baseline 30, now 15
    t0 = tp(0, ob("b", "T-NI", 30.0), ob("c", "T-NI", 50.0))
    rows = assess_patient([t0, tp(1, ob("b", "T-NI", 30.0), ob("c", "T-NI", 50.0)),
                           tp(2, ob("b", "T-I", 15.0), ob("c", "T-NI", 50.0))], cfg)
    assert resp(rows, "injected") == [None, None, Response.IPR]
    assert rows[2].change_ti_from_baseline_pct == pytest.approx(-50.0, abs=TOL)
    assert rows[1].sod_ti_mm is None


# --------------------------------------------------------------------------------------------------
# non-target-only group

def test_nontarget_only_group(cfg):
    # injected group = NT-I x only. 20 -> 18: non-CR/non-PD -> iSD; -> gone -> iCR; -> back, flagged -> iUPD
    base = [ob("b", "T-NI", 40.0)]
    rows = assess_patient([tp(0, *base, ob("x", "NT-I", 20.0)), tp(1, *base, ob("x", "NT-I", 18.0)),
                           tp(2, *base, ob("x", "NT-I", 0.0)), tp(3, *base, ob("x", "NT-I", 12.0, ntp=True)),
                           tp(4, *base, ob("x", "NT-I", None, Status.NOT_EVALUABLE))], cfg)
    assert resp(rows, "injected") == [None, Response.ISD, Response.ICR, Response.IUPD, Response.NE]
    assert "injected iSD: non-CR/non-PD (no target lesion)" in rows[1].reasons
    assert rows[1].sod_ti_mm is None and rows[1].change_ti_from_baseline_pct is None
    # the overall group holds the T-NI target and x: x's progression makes overall iUPD at tp3
    assert resp(rows, "overall")[3] == Response.IUPD


# --------------------------------------------------------------------------------------------------
# configuration

def test_threshold_change_changes_the_outcome(cfg):
    # 40 -> 31 mm = -22.5 %: iSD with the default -30 %, iPR with partial_response_pct -20
    tps = [tp(0, ob("a", "T-I", 40.0)), tp(1, ob("a", "T-I", 31.0))]
    assert assess_patient(tps, cfg)[1].response_injected == Response.ISD
    assert assess_patient(tps, dict(cfg, partial_response_pct=-20.0))[1].response_injected == Response.IPR
    # 20 -> 24 mm (+20 %, +4 mm): iSD by default, iUPD when progression_min_abs_mm is 4
    tps = [tp(0, ob("a", "T-I", 20.0)), tp(1, ob("a", "T-I", 24.0))]
    assert assess_patient(tps, cfg)[1].response_injected == Response.ISD
    assert assess_patient(tps, dict(cfg, progression_min_abs_mm=4.0))[1].response_injected == Response.IUPD
    # new lesion 4 mm: equivocal by default, progression with new_lesion_min_mm 3
    tps = [tp(0, ob("b", "T-NI", 40.0)), tp(1, ob("b", "T-NI", 40.0), ob("N", "NEW", 4.0))]
    assert assess_patient(tps, cfg)[1].response_overall == Response.ISD
    assert assess_patient(tps, dict(cfg, new_lesion_min_mm=3.0))[1].response_overall == Response.IUPD


def test_missing_threshold_is_a_config_error(cfg):
    bad = copy.deepcopy(cfg)
    del bad["progression_pct"]
    with pytest.raises(ConfigError, match="followup.response.progression_pct"):
        assess_patient([tp(0, ob("a", "T-I", 40.0))], bad)


@pytest.mark.parametrize("measure, nadir, expected", [
    (30.0, 20.0, True),     # +50 %: at least 50 % -> unequivocal
    (29.9, 20.0, False),    # +49.5 %
    (3.0, 0.0, True),       # reappears after disappearing
    (0.0, 0.0, False),      # still gone
    (None, 20.0, False),    # unknown
])
def test_nontarget_progressed(cfg, measure, nadir, expected):
    assert nontarget_progressed(measure, nadir, cfg) is expected


# --------------------------------------------------------------------------------------------------
# best overall response, input checks, history

def test_best_overall_response_order(cfg):
    # overall: 100 -> 95 (iSD) -> 60 (-40 %: iPR) -> 80 (+33 %, +20 mm from nadir 60: iUPD): best stays iPR
    sizes = [100.0, 95.0, 60.0, 80.0]
    rows = assess_patient([tp(i, ob("b", "T-NI", s)) for i, s in enumerate(sizes)], cfg)
    assert resp(rows, "overall") == [None, Response.ISD, Response.IPR, Response.IUPD]
    assert [r.best_overall_response for r in rows] == [None, Response.ISD, Response.IPR, Response.IPR]
    # NE then iSD: best iSD (NE ranks last)
    rows = assess_patient([tp(0, ob("b", "T-NI", 100.0)), tp(1, ob("b", "T-NI", None, Status.NOT_EVALUABLE)),
                           tp(2, ob("b", "T-NI", 100.0))], cfg)
    assert [r.best_overall_response for r in rows] == [None, Response.NE, Response.ISD]


def test_plain_strings_work_like_enums(cfg):
    # a caller reading the tracking CSV may pass the values as strings
    as_str = [TimepointInput(0, "1.1", "20260101", (Observation("a", "T-I", "short_axis", 16.0, "present"),)),
              TimepointInput(1, "1.2", "20260201", (Observation("a", "T-I", "short_axis", 9.0, "present"),
                                                    Observation("N", "NEW", "longest_diameter", 3.0, "new")))]
    as_enum = [tp(0, ob("a", "T-I", 16.0, kind=SA)), tp(1, ob("a", "T-I", 9.0, kind=SA), ob("N", "NEW", 3.0))]
    got, want = assess_patient(as_str, cfg), assess_patient(as_enum, cfg)
    # node 16 -> 9 mm: gone; injected group ignores the 3 mm new lesion -> iCR; overall: equivocal new
    # lesion present -> no iCR, all targets gone -> iPR
    assert got[1].response_injected == want[1].response_injected == Response.ICR
    assert got[1].response_overall == want[1].response_overall == Response.IPR


def test_later_timepoints_never_change_earlier_rows(cfg):
    sizes = [50.0, 62.0, 52.0, 62.0, 67.0, 20.0]
    tps = [tp(i, ob("a", "T-I", 30.0 - i), ob("b", "T-NI", s)) for i, s in enumerate(sizes)]
    full = assess_patient(tps, cfg)
    for k in range(1, len(tps)):
        assert assess_patient(tps[:k], cfg) == full[:k]


@pytest.mark.parametrize("tps, match", [
    ([tp(0, ob("N", "NEW", 10.0))], "no new lesion at the baseline"),
    ([tp(0, ob("a", "T-I", 10.0)), tp(1, ob("a", "T-NI", 10.0))], "stay T-I"),
    ([tp(0, ob("a", "T-I", 10.0)), tp(1, ob("a", "NT-I", 10.0))], "stay T-I"),
    ([tp(0, ob("a", "T-I", 10.0)), tp(2, ob("a", "T-I", 10.0))], "expected timepoint index 1"),
    ([tp(0, ob("a", "T-I", 10.0)), tp(1, ob("a", "T-I", 10.0), ob("z", "T-NI", 12.0))], "to be NEW"),
    ([tp(0, ob("a", "T-I", -1.0))], "finite measure >= 0"),
    ([tp(0, ob("a", "T-I", 10.0), ob("a", "T-I", 11.0))], "one observation per track"),
    ([], "at least the baseline"),
    ([tp(0, Observation("a", "T-X", LD, 10.0, Status.PRESENT))], "expected an itRECIST category"),
])
def test_bad_input_is_a_pipeline_error(cfg, tps, match):
    with pytest.raises(PipelineError, match=match):
        assess_patient(tps, cfg)
