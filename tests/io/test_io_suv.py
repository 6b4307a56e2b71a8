"""SUVbw audit for the common case (BQML, DecayCorrection START)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from io_synth import DATA, make_series, pet_headers

from pipeline.errors import SUVError
from pipeline.io.dicom import load_pet_activity
from pipeline.io.suv import suv_audit, to_suv

# Default synthetic PET: 75 kg, 370 MBq F-18 (half-life 6586.2 s) injected 10:00:00, series
# 11:00:00 -> 3600 s of decay. By hand:
#   decay  = 2 ** (-3600 / 6586.2) = 0.684632919572...
#   factor = 75 kg * 1000 g/kg / (370e6 Bq * decay) = 2.96075016126e-4 g/Bq(/mL)
EXPECTED_DECAY = 0.6846329195720021
EXPECTED_FACTOR = 0.0002960750161260463
REL = 1e-9  # relative tolerance: both sides are double-precision evaluations of one formula


def test_factor_by_hand():
    assert 2 ** (-3600 / 6586.2) == pytest.approx(EXPECTED_DECAY, rel=1e-12)
    a = suv_audit(pet_headers(), file_hint="pet/0001.dcm")
    assert a.suvbw_factor == pytest.approx(EXPECTED_FACTOR, rel=REL)
    assert a.decay_factor == pytest.approx(EXPECTED_DECAY, rel=REL)
    assert a.units == "BQML" and a.decay_correction == "START"
    assert a.reference_time_iso == "2024-01-15T11:00:00"
    assert a.reference_time_rule == "SeriesDate/SeriesTime"
    assert a.injection_time_iso == "2024-01-15T10:00:00"
    assert (a.dose_bq, a.weight_kg, a.half_life_s) == (370e6, 75.0, 6586.2)
    assert a.warnings == ()


def test_dose_in_mbq():
    hs = pet_headers()
    for h in hs:
        h.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose = "370"
    a = suv_audit(hs)
    assert a.dose_bq == pytest.approx(370e6)
    assert a.suvbw_factor == pytest.approx(EXPECTED_FACTOR, rel=REL)
    assert any("MBq" in w for w in a.warnings)


def test_weight_in_grams():
    hs = pet_headers()
    for h in hs:
        h.PatientWeight = "75000"
    a = suv_audit(hs)
    assert a.weight_kg == pytest.approx(75.0)
    assert a.suvbw_factor == pytest.approx(EXPECTED_FACTOR, rel=REL)
    assert any("grams" in w for w in a.warnings)


def test_midnight_crossing_with_start_time_only():
    """Injection 23:30 on the previous day, series 00:30: 3600 s, not -82800 s."""
    hs = pet_headers()
    for h in hs:
        h.SeriesDate = "20240116"
        h.SeriesTime = "003000"
        h.AcquisitionDate = "20240116"
        h.AcquisitionTime = "003000"
        item = h.RadiopharmaceuticalInformationSequence[0]
        del item.RadiopharmaceuticalStartDateTime
        item.RadiopharmaceuticalStartTime = "233000"
    a = suv_audit(hs)
    assert a.injection_time_iso == "2024-01-15T23:30:00"
    assert a.suvbw_factor == pytest.approx(EXPECTED_FACTOR, rel=REL)
    assert any("midnight" in w for w in a.warnings)


def test_start_datetime_preferred_over_start_time():
    hs = pet_headers()
    for h in hs:
        h.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime = "103000"
    a = suv_audit(hs)
    assert a.injection_time_iso == "2024-01-15T10:00:00"


def test_series_time_after_acquisition_uses_earliest_acquisition():
    """Series re-created at 12:00 after a scan starting 11:00: decay to 11:00 (3600 s)."""
    hs = pet_headers()
    for k, h in enumerate(hs):
        h.SeriesTime = "120000"
        h.AcquisitionTime = f"1{1 + k // 2}0000" if k else "110000"
    a = suv_audit(hs)
    assert a.reference_time_iso == "2024-01-15T11:00:00"
    assert a.reference_time_rule == "earliest AcquisitionDate/Time"
    assert a.suvbw_factor == pytest.approx(EXPECTED_FACTOR, rel=REL)
    assert any("later than the earliest acquisition" in w for w in a.warnings)


def test_fractional_seconds_and_other_half_life():
    """Ga-68 (half-life 4062.6 s), injection 10:00:00.5, series 10:45:00."""
    hs = pet_headers()
    for h in hs:
        h.SeriesTime = "104500"
        h.AcquisitionTime = "104500"
        item = h.RadiopharmaceuticalInformationSequence[0]
        item.RadionuclideHalfLife = "4062.6"
        item.RadiopharmaceuticalStartDateTime = "20240115100000.5"
    a = suv_audit(hs)
    expect = 75000 / (370e6 * 2 ** (-2699.5 / 4062.6))
    assert a.suvbw_factor == pytest.approx(expect, rel=REL)


@pytest.mark.parametrize(
    "mutate, tag",
    [
        (lambda h: delattr(h, "PatientWeight"), "PatientWeight (0010,1030)"),
        (lambda h: setattr(h, "PatientWeight", "0"), "PatientWeight (0010,1030)"),
        (lambda h: delattr(h, "RadiopharmaceuticalInformationSequence"),
         "RadiopharmaceuticalInformationSequence (0054,0016)"),
        (lambda h: delattr(h.RadiopharmaceuticalInformationSequence[0], "RadionuclideTotalDose"),
         "RadionuclideTotalDose (0018,1074)"),
        (lambda h: delattr(h.RadiopharmaceuticalInformationSequence[0], "RadionuclideHalfLife"),
         "RadionuclideHalfLife (0018,1075)"),
        (lambda h: setattr(h, "Units", "CNTS"), "Units (0054,1001)"),
        (lambda h: setattr(h, "DecayCorrection", "ADMIN"), "DecayCorrection (0054,1102)"),
    ],
    ids=["no-weight", "zero-weight", "no-radiopharm-seq", "no-dose", "no-half-life", "cnts",
         "admin"],
)
def test_missing_or_unsupported_names_tag_and_file(mutate, tag):
    hs = pet_headers()
    for h in hs:
        mutate(h)
    with pytest.raises(SUVError) as ei:
        suv_audit(hs, file_hint="PET/0001.dcm")
    assert ei.value.tag == tag
    assert ei.value.file == "PET/0001.dcm"
    assert tag in str(ei.value) and "PET/0001.dcm" in str(ei.value)
    assert ei.value.hint


def test_injection_after_reference_is_an_error():
    hs = pet_headers()
    for h in hs:
        h.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime = \
            "20240115120000"
    with pytest.raises(SUVError, match="after the reference time"):
        suv_audit(hs)


def test_to_suv_on_loaded_volume(tmp_path):
    s = make_series(tmp_path / "pt", modality="PT", n=4)
    act, headers = load_pet_activity(s.paths, series_uid=s.series_uid)
    a = suv_audit(headers)
    out = to_suv(act, a)
    assert out.units == "SUVbw" and out.array.dtype == np.float32
    assert out.grid == act.grid
    # float32 storage: relative tolerance 1e-6
    np.testing.assert_allclose(out.array, s.values * EXPECTED_FACTOR, rtol=1e-6)
    assert math.isclose(a.suvbw_factor, EXPECTED_FACTOR, rel_tol=REL)
    with pytest.raises(SUVError):
        to_suv(out, a)  # already converted


# ------------------------------------------------------------------ real vendor headers
VENDOR = DATA / "suv_vendor_headers"
_RADIOPHARM = {"RadionuclideTotalDose", "RadionuclideHalfLife", "RadiopharmaceuticalStartTime",
               "RadiopharmaceuticalStartDateTime"}


def _vendor_headers(case: str) -> list:
    """The JSON instances of one case as pydicom headers (radiopharmaceutical keys -> sequence)."""
    from pydicom.dataset import Dataset

    out = []
    for inst in json.loads((VENDOR / "metadata" / f"{case}-instances.json").read_text()):
        ds, item = Dataset(), Dataset()
        for key, value in inst.items():
            if isinstance(value, dict):  # private groups: issue 3
                continue
            setattr(item if key in _RADIOPHARM else ds, key, value)
        if len(item):
            ds.RadiopharmaceuticalInformationSequence = [item]
        out.append(ds)
    return out


def _vendor_cases() -> list[tuple[str, float]]:
    rows = csv.DictReader((VENDOR / "expected_suvbw_factors.csv").open())
    return [(r["case"], float(r["expected_suvbw_factor_g_per_ml_per_bq_per_ml"])) for r in rows]


@pytest.mark.parametrize("case, expected", _vendor_cases(), ids=[c for c, _ in _vendor_cases()])
def test_vendor_headers_suvbw_factor(case, expected):
    """Real Siemens / GE / Philips headers (cornerstonejs/calculate-suv, MIT), 1e-6 relative.

    Philips CNTS cases need the Philips private scale factors (issue 3): until then they must be
    refused with an error naming Units, never converted wrongly.
    """
    headers = _vendor_headers(case)
    if headers[0].Units != "BQML":
        with pytest.raises(SUVError) as ei:
            suv_audit(headers, file_hint=case)
        assert ei.value.tag == "Units (0054,1001)"
        return
    audit = suv_audit(headers, file_hint=case)
    assert audit.suvbw_factor == pytest.approx(expected, rel=1e-6)
    if "lessThan_S_DT" in case or "AC_DT_-_S_DT" in case:
        assert audit.reference_time_rule == "earliest AcquisitionDate/Time"
