"""SUVs that never lie: plausibility refusals, stored SUV kinds, re-created series (issue 12).

Default synthetic PET (tests/io/io_synth.py): 75 kg, 370 MBq F-18 (half-life 6586.2 s)
injected 2024-01-15 10:00:00, series 11:00:00 -> 3600 s of decay,
SUVbw factor 75000 g / (370e6 Bq x 2 ** (-3600 / 6586.2)) = 2.96075016126e-4.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import datetime

import numpy as np
import pytest
from io_synth import make_series, pet_headers

from pipeline.config import load_config
from pipeline.errors import SUVError
from pipeline.io.dicom import load_pet_activity
from pipeline.io.suv import (
    DEFAULT_PLAUSIBILITY,
    SUVPlausibility,
    audit_failure_records,
    check_suv_bound,
    devine_ibw_kg,
    dubois_bsa_m2,
    james_lbm_kg,
    janmahasatian_lbm_kg,
    suv_audit,
    to_activity_bqml,
    to_suv,
)
from pipeline.io.tables import FAILURE_COLUMNS

EXPECTED_FACTOR = 0.0002960750161260463
REL = 1e-9
NOW = datetime(2026, 12, 5, 12, 0, 0)  # fixed "now" for the future-date rule


def _audit(mutate=None, **kw):
    hs = pet_headers()
    for h in hs:
        if mutate:
            mutate(h)
    return suv_audit(hs, strict=False, now=NOW, file_hint="PET/0001.dcm", **kw)


def _item(h):
    return h.RadiopharmaceuticalInformationSequence[0]


def _refused(a, field, tag):
    assert not a.available and not a.suv_is_bw and a.suv_per_stored_unit is None
    assert a.severity == "warning"
    (r,) = [r for r in a.plausibility_refusals if r.field == field and r.tag == tag]
    assert r.tag == tag and r.severity == "warning" and r.message.endswith("SUV refused")
    assert r.message in a.suv_reason and tag in a.suv_reason
    json.dumps(a.as_dict())
    return r


# ------------------------------------------------------------------ config
def test_limits_from_config_are_the_defaults_and_can_be_overridden():
    assert SUVPlausibility.from_config(load_config()) == DEFAULT_PLAUSIBILITY
    cfg = load_config(overrides={"suv": {"max_suv": 50.0, "dose_range_mbq": {"F-18": [100, 200]}}})
    lim = SUVPlausibility.from_config(cfg)
    assert lim.max_suv == 50.0 and lim.dose_range_for("F-18")[:2] == (100.0, 200.0)
    assert lim.dose_range_for("Ga-68")[:2] == (20.0, 500.0)  # untouched defaults stay


# ------------------------------------------------------------------ item 1: refusals
def test_dose_outside_the_f18_range_is_refused():
    """RadionuclideTotalDose 5000 (< 1e5: read as 5000 MBq) > 1110 MBq (F-18 maximum)."""
    a = _audit(lambda h: setattr(_item(h), "RadionuclideTotalDose", "5000"))
    r = _refused(a, "dose", "RadionuclideTotalDose (0018,1074)")
    assert r.value == "5000" and r.limit == "37-1110 MBq"
    assert r.message == ("RadionuclideTotalDose (0018,1074) 5000 (5000 MBq) is outside "
                         "37-1110 MBq for F-18: SUV refused")
    # the factor is still in the audit (for the record) but SUVbw is not available:
    # 75000 / (5e9 x 0.684632919572) = 2.19095e-5
    assert a.suvbw_factor == pytest.approx(75000 / (5e9 * 0.6846329195720021), rel=REL)


def test_dose_range_per_nuclide_and_generic():
    """Ga-68 (half-life 4062.6 s, range 20-500 MBq): 370 MBq passes, 600 MBq is refused; a
    nuclide of half-life 100000 s is unknown: only the generic 1-20000 MBq applies."""
    def ga68(dose):
        def m(h):
            _item(h).RadionuclideHalfLife = "4062.6"
            _item(h).RadionuclideTotalDose = dose
        return m
    assert _audit(ga68("370000000")).available
    r = _refused(_audit(ga68("600000000")), "dose", "RadionuclideTotalDose (0018,1074)")
    assert r.limit == "20-500 MBq" and "for Ga-68" in r.message

    def unknown(dose):
        def m(h):
            _item(h).RadionuclideHalfLife = "100000"
            _item(h).RadionuclideTotalDose = dose
        return m
    assert _audit(unknown("5000000000")).available  # 5000 MBq: within 1-20000
    r = _refused(_audit(unknown("25000000000")), "dose", "RadionuclideTotalDose (0018,1074)")
    assert r.limit == "1-20000 MBq" and "any radionuclide (unknown nuclide)" in r.message


@pytest.mark.parametrize("weight, limit, text", [
    # 9999 > 1000 -> as grams 9.999 kg, below the 20 kg accepted for a gram repair; as kg > 350
    ("9999", "20 kg minimum for a gram repair", "as grams 9.999 kg"),
    # 15000 g = 15 kg < 20 kg: also ambiguous
    ("15000", "20 kg minimum for a gram repair", "as grams 15 kg"),
    ("400", "2-350 kg", "400 kg is outside 2-350 kg"),
    ("1.5", "2-350 kg", "1.5 kg is outside 2-350 kg"),
])
def test_weight_refused(weight, limit, text):
    a = _audit(lambda h: setattr(h, "PatientWeight", weight))
    r = _refused(a, "weight", "PatientWeight (0010,1030)")
    assert r.value == weight and r.limit == limit and text in r.message


def test_weight_in_grams_still_repaired():
    """75000 g -> 75 kg (>= 20 kg): repaired, not refused."""
    a = _audit(lambda h: setattr(h, "PatientWeight", "75000"))
    assert a.available and a.suv_per_stored_unit == pytest.approx(EXPECTED_FACTOR, rel=REL)


def test_five_half_lives_boundary():
    """5 x 6586.2 s = 32931 s = 9 h 08 min 51 s before 11:00:00 is 01:51:09.

    Injection 01:51:09: exactly 5 half-lives -> accepted, decay 2**-5 = 1/32, factor
    75000 x 32 / 370e6 = 6.486486486e-3. Injection 01:51:08: 32932 s = 9.1 h > 5 half-lives ->
    refused, with the half-life printed as 6586.2 / 60 = 109.8 min.
    """
    a = _audit(lambda h: setattr(_item(h), "RadiopharmaceuticalStartDateTime", "20240115015109"))
    assert a.available and a.decay_factor == pytest.approx(1 / 32, rel=REL)
    assert a.suv_per_stored_unit == pytest.approx(75000 * 32 / 370e6, rel=REL)
    a = _audit(lambda h: setattr(_item(h), "RadiopharmaceuticalStartDateTime", "20240115015108"))
    r = _refused(a, "uptake_time", "RadiopharmaceuticalStartDateTime (0018,1078)")
    assert r.message == ("RadiopharmaceuticalStartDateTime (0018,1078) 20240115015108 is 9.1 h "
                         "before the reference time, more than 5 half-lives of F-18 (109.8 min): "
                         "SUV refused")


def test_injection_five_days_before_is_refused_not_warned():
    """Issue example: 5 days (120 h = 65.6 half-lives) gave SUVmax 1.6e20; now refused."""
    a = _audit(lambda h: setattr(_item(h), "RadiopharmaceuticalStartDateTime", "20240110110000"))
    r = _refused(a, "uptake_time", "RadiopharmaceuticalStartDateTime (0018,1078)")
    assert "120.0 h before the reference time, more than 5 half-lives" in r.message
    # 2 ** (432000 / 6586.2) = 6.1e19: the factor that would have been used
    assert a.suvbw_factor == pytest.approx(75000 / 370e6 * 2 ** (432000 / 6586.2), rel=1e-9)


def test_lu177_a_day_later_is_within_five_half_lives():
    """Lu-177 half-life 574344 s: 86400 s is 0.15 half-lives -> accepted (generic dose range)."""
    def m(h):
        _item(h).RadionuclideHalfLife = "574344"
        _item(h).RadiopharmaceuticalStartDateTime = "20240114110000"
    assert _audit(m).available


def test_negative_uptake_is_refused():
    """Injection 12:00, reference 11:00: 60 min after the reference time."""
    a = _audit(lambda h: setattr(_item(h), "RadiopharmaceuticalStartDateTime", "20240115120000"))
    r = _refused(a, "uptake_time", "RadiopharmaceuticalStartDateTime (0018,1078)")
    assert "is 60.0 min after the reference time 2024-01-15T11:00:00" in r.message
    hs = pet_headers()
    for h in hs:
        _item(h).RadiopharmaceuticalStartDateTime = "20240115120000"
    with pytest.raises(SUVError, match="after the reference time"):  # strict: raised
        suv_audit(hs, now=NOW)


def test_date_in_2099_is_refused():
    def m(h):
        h.SeriesDate = h.AcquisitionDate = h.StudyDate = "20990115"
        _item(h).RadiopharmaceuticalStartDateTime = "20990115100000"
    a = _audit(m)
    r = _refused(a, "date", "SeriesDate (0008,0021)")
    assert r.value == "20990115" and "is in the future (now 2026-12-05T12:00:00)" in r.message
    assert any(x.tag == "RadiopharmaceuticalStartDateTime (0018,1078)"
               for x in a.plausibility_refusals)


def test_date_before_1990_and_after_file_creation_are_refused():
    def old(h):
        h.SeriesDate = h.AcquisitionDate = "19890115"
        _item(h).RadiopharmaceuticalStartDateTime = "19890115100000"
    r = _refused(_audit(old), "date", "SeriesDate (0008,0021)")
    assert r.message == "SeriesDate (0008,0021) 19890115 is before 1990-01-01: SUV refused"

    def created_before(h):  # file created 5 days before its own acquisition (> 24 h)
        h.InstanceCreationDate, h.InstanceCreationTime = "20240110", "120000"
        _item(h).RadiopharmaceuticalStartDateTime = "20240115100000"
    a = _audit(created_before)
    assert any("after the file's creation" in r.message for r in a.plausibility_refusals)

    def created_after(h):  # file created 2 h after the scan: fine
        h.InstanceCreationDate, h.InstanceCreationTime = "20240115", "130000"
    assert _audit(created_after).available


def test_decay_correction_none_negative_uptake_is_refused(tmp_path):
    """DecayCorrection NONE: injection 11:01 after the first slice's mid-frame 11:00:59.9."""
    def m(h):
        h.DecayCorrection = "NONE"
        h.ActualFrameDuration = 120000
        _item(h).RadiopharmaceuticalStartDateTime = "20240115110100"
    a = _audit(m)
    _refused(a, "uptake_time", "RadiopharmaceuticalStartDateTime (0018,1078)")
    assert a.slice_factors == ()


def test_suv_max_bound(tmp_path):
    """A converted volume whose maximum is 301 g/mL (> 300) is refused; 299.5 passes."""
    s = make_series(tmp_path / "pt", modality="PT", n=3)
    act, headers = load_pet_activity(s.paths, series_uid=s.series_uid)
    a = suv_audit(headers, now=NOW)
    vol = to_suv(act, a)
    arr = np.zeros_like(vol.array)
    arr[1, 2, 3] = 299.5
    same, r = check_suv_bound(replace(vol, array=arr), a, DEFAULT_PLAUSIBILITY)
    assert r is None and same is a
    arr[1, 2, 3] = 301.0
    refused, r = check_suv_bound(replace(vol, array=arr), a, load_config())
    assert r.field == "suv_max" and r.value == "301" and r.limit == "300 g/mL"
    assert not refused.available and refused.plausibility_refusals == (r,)
    assert "SUVmax 301 (SUVbw) of the PET volume is above the physical bound 300" in \
        refused.suv_reason
    with pytest.raises(SUVError, match="SUV unavailable"):
        to_suv(act, refused)
    np.testing.assert_allclose(to_activity_bqml(act, refused).array, s.values, rtol=1e-6)
    rows = audit_failure_records(refused, "P001", "1.2.3")
    assert len(rows) == 1 and set(rows[0]) == set(FAILURE_COLUMNS) | {"severity"}
    assert rows[0]["severity"] == "warning" and rows[0]["stage"] == "suv"
    assert rows[0]["series_uid"] == s.series_uid and rows[0]["tag"] == "SUVmax"


def test_refused_audit_keeps_activity_concentration_and_failure_rows(tmp_path):
    s = make_series(tmp_path / "pt", modality="PT", n=3,
                    extra=lambda ds, k: setattr(ds, "PatientWeight", "9999"))
    act, headers = load_pet_activity(s.paths, series_uid=s.series_uid)
    a = suv_audit(headers, strict=False, now=NOW, file_hint="PET/x.dcm")
    assert not a.available
    np.testing.assert_allclose(to_activity_bqml(act, a).array, s.values, rtol=1e-6)
    with pytest.raises(SUVError):
        to_suv(act, a)
    rows = audit_failure_records(a, "P001", "1.2.3")
    assert [r["tag"] for r in rows] == ["PatientWeight (0010,1030)"]
    assert rows[0]["file"] == "PET/x.dcm" and rows[0]["patient_id"] == "P001"
    assert rows[0]["message"].startswith("PatientWeight (0010,1030) 9999 is ambiguous")
    assert audit_failure_records(suv_audit(pet_headers(), now=NOW), "P", "S") == []
    with pytest.raises(SUVError) as ei:  # strict: raised, naming the tag
        suv_audit(headers, now=NOW)
    assert ei.value.tag == "PatientWeight (0010,1030)" and ei.value.hint


# ------------------------------------------------------------------ item 2: stored SUV kinds
# Male, 1.80 m, 75 kg. By hand:
#   BMI = 75 / 1.8^2 = 23.148148; 216 x BMI = 5000 exactly
#   Janmahasatian LBM = 9270 x 75 / (6680 + 5000) = 695250 / 11680 = 59.524829 kg
#   James LBM = 1.10 x 75 - 128 x (75 / 180)^2 = 82.5 - 22.222222 = 60.277778 kg
#   Devine IBW = 50 + 2.3 x (180 / 2.54 - 60) = 50 + 2.3 x 10.866142 = 74.992126 kg
#   Du Bois BSA = 0.007184 x 75^0.425 x 180^0.725 = 0.007184 x 6.264711 x 43.159119
#               = 1.942406 m2 = 19424.06 cm2
# SUVbw = SUVx x W / X:  lbm-Janma 75 / 59.524829 = 1.259978; lbm-James 75 / 60.277778 =
# 1.244240; ibw 75 / 74.992126 = 1.000105; bsa 75000 g / 19424.06 cm2 = 3.861191
def test_body_size_formulas_by_hand():
    assert janmahasatian_lbm_kg(75, 1.8, "M") == pytest.approx(695250 / 11680, rel=1e-12)
    assert 695250 / 11680 == pytest.approx(59.524829, abs=1e-6)
    assert james_lbm_kg(75, 1.8, "M") == pytest.approx(82.5 - 128 * (75 / 180) ** 2, rel=1e-12)
    assert james_lbm_kg(75, 1.8, "M") == pytest.approx(60.277778, abs=1e-6)
    assert james_lbm_kg(75, 1.8, "F") == pytest.approx(1.07 * 75 - 148 * (75 / 180) ** 2)
    assert devine_ibw_kg(1.8, "M") == pytest.approx(74.992126, abs=1e-6)
    assert devine_ibw_kg(1.8, "F") == pytest.approx(74.992126 - 4.5, abs=1e-6)
    assert dubois_bsa_m2(75, 1.8) == pytest.approx(1.942406, abs=1e-6)
    with pytest.raises(SUVError) as ei:
        janmahasatian_lbm_kg(75, 1.8, "O")
    assert ei.value.tag == "PatientSex (0010,0040)" and ei.value.hint
    with pytest.raises(SUVError):
        james_lbm_kg(200, 1.5, "F")  # BMI 89: 214 - 148 x 1.7778 = -49 kg


def _stored(units, suv_type=None, sex="M", size="1.80"):
    def m(h):
        h.Units = units
        if suv_type:
            h.SUVType = suv_type
        h.PatientSex = sex
        if size:
            h.PatientSize = size
    return m


@pytest.mark.parametrize("units, suv_type, kind, factor, formula", [
    ("GML", "LBM", "lbm", 75 / 59.524829, "Janmahasatian 2005"),
    ("GML", "LBM_JANMA", "lbm", 75 / 59.524829, "Janmahasatian 2005"),
    ("GML", "LBM_JAMES128", "lbm", 75 / 60.277778, "James 1976"),
    ("GML", "IBW", "ibw", 75 / 74.992126, "Devine 1974"),
    ("GML", "BSA", "bsa", 75000 / 19424.06, "Du Bois 1916"),
    ("CM2ML", None, "bsa", 75000 / 19424.06, "Du Bois 1916"),
    ("GML", "BW", "bw", 1.0, ""),
])
def test_stored_kind_converted_to_suvbw(tmp_path, units, suv_type, kind, factor, formula):
    a = _audit(_stored(units, suv_type))
    assert a.suv_kind == kind and a.available and a.suv_is_bw
    rel = 1e-6  # the by-hand values above carry 7-8 significant digits
    assert a.suv_per_stored_unit == pytest.approx(factor, rel=rel)
    assert formula in a.suv_kind_formula
    assert ("assumed" in a.suv_kind_formula) == (suv_type in ("LBM", "IBW", "BSA", None))
    s = make_series(tmp_path / "pt", modality="PT", n=3,
                    extra=lambda ds, k: _stored(units, suv_type)(ds))
    act, headers = load_pet_activity(s.paths, series_uid=s.series_uid)
    out = to_suv(act, suv_audit(headers, now=NOW))
    assert out.units == "SUVbw"
    np.testing.assert_allclose(out.array, s.values * factor, rtol=rel)


def test_lbm_assumption_is_configurable():
    lim = SUVPlausibility.from_config({"suv": {"lbm_formula_assumed": "james"}})
    a = _audit(_stored("GML", "LBM"), limits=lim)
    assert a.suv_per_stored_unit == pytest.approx(75 / 60.277778, rel=1e-6)
    assert "James 1976" in a.suv_kind_formula and "assumed" in a.suv_kind_formula
    assert a.lbm_kg == pytest.approx(60.277778, rel=1e-6)


def test_stored_kind_without_height_is_reported_never_as_suvbw(tmp_path):
    s = make_series(tmp_path / "pt", modality="PT", n=3,
                    extra=lambda ds, k: _stored("GML", "IBW", size=None)(ds))
    act, headers = load_pet_activity(s.paths, series_uid=s.series_uid)
    a = suv_audit(headers, strict=False, now=NOW)
    assert a.suv_kind == "ibw" and not a.suv_is_bw and a.stored_suv_available
    assert "PatientSize" in a.suv_reason and not a.plausibility_refusals
    with pytest.raises(SUVError):
        to_suv(act, a)  # no SUVbw
    stored = to_suv(act, a, kind="stored")
    assert stored.units == "SUVibw"  # the kind travels with the volume
    np.testing.assert_allclose(stored.array, s.values, rtol=1e-6)
    with pytest.raises(SUVError):
        to_suv(act, suv_audit(pet_headers(), now=NOW), kind="stored")  # BQML: nothing stored
    with pytest.raises(SUVError):
        to_suv(act, a, kind="SUVxyz")


# ------------------------------------------------------------------ item 3: re-created series
# Scan start 11:00:00; the first bed's AcquisitionTime is 11:02:30 (150 s later); the series was
# re-created at 12:00. FrameReferenceTime = 150 s + decay-weighted mid-frame time of a 120 s
# frame (59.93685 s), so AcquisitionTime - FRT + mid-frame = 11:00:00.
#   back-computed reference: 3600 s of decay -> factor 2.96075016126e-4 (EXPECTED_FACTOR)
#   earliest AcquisitionTime: 3750 s -> 75000 / (370e6 x 2 ** (-3750 / 6586.2)), 1.59 % higher
#   (2 ** (150 / 6586.2) = exp(0.693147 x 0.0227749) = exp(0.0157864) = 1.015912)
def _recreated(with_frt):
    lam = math.log(2) / 6586.2
    mid = math.log(lam * 120 / (1 - math.exp(-lam * 120))) / lam

    def m(h):
        h.SeriesTime = "120000"
        h.AcquisitionTime = "110230"
        if with_frt:
            h.FrameReferenceTime = f"{(150 + mid) * 1000:.6f}"
            h.ActualFrameDuration = 120000
    return m


def test_recreated_series_uses_frame_reference_time():
    a = _audit(_recreated(True))
    assert a.decay_reference_source == "frame_reference_time"
    assert a.reference_time_iso.startswith("2024-01-15T11:00:00")
    assert a.suv_per_stored_unit == pytest.approx(EXPECTED_FACTOR, rel=1e-8)
    assert any("differs by -150 s from the earliest" in w for w in a.warnings)


def test_recreated_series_without_frame_timing_uses_earliest_acquisition():
    a = _audit(_recreated(False))
    assert a.decay_reference_source == "earliest_acquisition_time"
    assert a.reference_time_iso == "2024-01-15T11:02:30"
    expect = 75000 / (370e6 * 2 ** (-3750 / 6586.2))
    assert a.suv_per_stored_unit == pytest.approx(expect, rel=REL)
    assert expect / EXPECTED_FACTOR == pytest.approx(1.015912, abs=1e-6)


def test_decay_reference_source_of_the_other_rules():
    assert _audit().decay_reference_source == "series_time"
    assert _audit(lambda h: setattr(h, "DecayCorrection", "ADMIN")
                  ).decay_reference_source == "injection_time"


@pytest.mark.filterwarnings("ignore:Invalid value for VR TM")
def test_bad_time_is_a_suv_error_with_hint():
    """SeriesTime 25:60:00 is not a time: SUVError with a hint (was a bare ValueError)."""
    a = _audit(lambda h: setattr(h, "SeriesTime", "256000"))
    assert not a.available and "not a DICOM time" in a.suv_reason and "Fix:" in a.suv_reason


@pytest.mark.parametrize("units, kind", [("SUVbw", "bw"), ("SUVlbm", "lbm"), ("SUVbsa", "bsa")])
def test_feature_columns_carry_the_kind_and_never_fill_suvbw_from_another_kind(units, kind):
    """A uniform 5 g/mL PET over a 5x5x5-voxel lesion: as SUVbw the columns hold 5; as a stored
    SUVlbm / SUVbsa they stay empty (never compared with SUVbw thresholds) and suv_reason
    reports the stored values with their kind."""
    from pipeline.features.pet import pet_columns
    from pipeline.geometry import Grid
    from pipeline.records import LesionMask, MaskSource, Volume

    grid = Grid((20, 20, 20), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
    vol = Volume(np.full(grid.shape_zyx, 5.0, np.float32), grid, units, "1.2.3")
    mask = LesionMask("lesion", MaskSource.SEG, grid, ((8, 13), (8, 13), (8, 13)),
                      np.ones((5, 5, 5), bool))
    pcfg = {"peak_volume_ml": 1.0, "min_coverage": 0.5, "mtv_fraction_of_max": 0.41,
            "mtv_absolute_suv": 2.5}
    row = pet_columns(mask, vol, pcfg=pcfg, sul_ratio=0.8)
    assert row["suv_kind"] == kind
    if kind == "bw":
        assert row["suv_max"] == pytest.approx(5.0) and row["sul_max"] == pytest.approx(4.0)
        assert row["mtv25_ml"] == pytest.approx(125 * 0.064)  # 125 voxels x 0.064 mL
    else:
        assert all(row[k] is None for k in ("suv_max", "suv_peak", "suv_mean", "mtv25_ml",
                                            "tlg41_g", "sul_max"))
        assert f"PET stored as {units}" in row["suv_reason"]
        assert f"{units}_max 5" in row["suv_reason"]
        assert row["mtv41_ml"] == pytest.approx(125 * 0.064)  # relative threshold: unit-free
    assert pet_columns(mask, None, pcfg=pcfg)["suv_kind"] == ""
