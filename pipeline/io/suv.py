"""SUV conversion of PET series to the QIBA vendor-neutral rules and the IBSI SUV manual.

Definitions
-----------
``C`` is the activity concentration in Bq/mL at the decay reference time; 1 g of tissue is taken
as 1 mL (QIBA). Then

    SUVbw = C x weight [g] / decayed dose [Bq]
    SUL   = C x lean body mass [g] / decayed dose [Bq]     (Janmahasatian LBM)
    decayed dose = RadionuclideTotalDose x 2 ** (-(t_ref - t_injection) / half-life)

and the factor that turns the stored (rescaled) pixel values into SUVbw is

    suv_per_stored_unit = bqml_per_unit x suvbw_factor

Only the unit conversion (``bqml_per_unit``) differs between scanners; every audit has the same
fields whatever the vendor (:class:`SUVAudit`).

Rules, in the order they are applied
------------------------------------
1. **Units** (0054,1001) after RescaleSlope / RescaleIntercept (per slice, already applied by
   :func:`pipeline.io.dicom.load_pet_activity`):

   * ``BQML``: Bq/mL, ``bqml_per_unit = 1``.
   * ``CNTS`` (Philips): the private SUV Scale Factor (7053,1000) of the "Philips PET Private
     Group" turns rescaled counts into SUVbw directly and is used as ``suv_per_stored_unit``;
     the Activity Concentration Scale Factor (7053,1009) turns them into Bq/mL
     (``bqml_per_unit``). With only (7053,1009) the BQML rule follows. With both, the header
     computation is compared with the vendor factor (warning beyond 2 %). Neither -> no SUV.
   * ``GML``: the values already are SUV (g/mL). SUVType (0054,1006) absent or ``BW`` -> SUVbw,
     ``suv_per_stored_unit = 1``: never converted a second time. Any other SUVType (LBM,
     LBM_JANMA, BSA, IBW ...) -> reported, no SUVbw.
   * ``CM2ML`` (SUVbsa) and every other unit: reported, no SUVbw (never converted twice).

2. **Reference time** (DecayCorrection START), as QIBA: SeriesDate/SeriesTime, unless it is
   later than the earliest acquisition (series re-created after the scan); then the GE private
   "PET scan_datetime" (0009,xx0D) of GEMS_PETD_01; then the earliest AcquisitionDate/Time;
   then, when that acquisition time precedes the injection (not this injection's scan), the
   time back-computed from a slice's acquisition time, FrameReferenceTime (0054,1300) and
   ActualFrameDuration (0018,1242) (``t_acq - FRT + decay-weighted mid-frame time``).
   When SeriesTime was not usable and the back-computed time differs from the chosen one by
   more than 60 s, a warning says so (vendors differ in what FrameReferenceTime is relative to,
   so it is not compared with a usable SeriesTime).

3. **DecayCorrection** (0054,1102): ``START`` -> decay from injection to the reference time;
   ``ADMIN`` -> the images are corrected to the administration time, decay factor 1, reference
   time = injection; ``NONE`` -> each slice is decayed to its own decay-weighted mid-frame time
   (AcquisitionDateTime + the average count-rate time within ActualFrameDuration), so
   ``slice_factors`` hold one factor per slice.

4. **Injection time**: RadiopharmaceuticalStartDateTime (0018,1078) when present, else
   RadiopharmaceuticalStartTime (0018,1072) on the SeriesDate; an injection later in the day
   than the reference time is taken on the previous day (midnight crossing).

5. **Values**: RadionuclideTotalDose below 1e5 is taken as MBq; PatientWeight above 1000 as
   grams; PatientSize above 3 as centimetres; a missing RadionuclideHalfLife is taken from the
   RadionuclideCodeSequence when the nuclide is known (:data:`HALF_LIVES_S`); any half-life is
   used as given (F-18, Ga-68, Lu-177, Zr-89 ...).

6. **SUL** (Janmahasatian lean body mass) when PatientSex is M or F and PatientSize (height) is
   known: LBM = 9270 W / (6680 + 216 BMI) (male), 9270 W / (8780 + 244 BMI) (female), W in kg,
   BMI = W / height^2 (kg/m^2).

Missing weight, dose, times or half-life: SUV stays empty with the reason (``suv_reason``); the
activity concentration (Bq/mL) is still available when the units allow it
(:func:`to_activity_bqml`). :func:`suv_audit` raises :class:`SUVError` for these (``strict``),
or records them in the audit (``strict=False``, used by ``hitit suv``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np
from pydicom.dataset import Dataset

from pipeline.errors import SUVError
from pipeline.io.dicom import has_value, tag_label
from pipeline.records import Volume

log = logging.getLogger(__name__)

#: A RadionuclideTotalDose below this is taken to be in MBq (no real injection is < 0.1 MBq).
DOSE_MBQ_THRESHOLD = 1e5
#: A PatientWeight above this is taken to be in grams.
WEIGHT_GRAMS_THRESHOLD = 1000.0
#: A PatientSize above this is taken to be in centimetres.
HEIGHT_CM_THRESHOLD = 3.0
#: Relative difference between the Philips SUV scale factor and the header computation that
#: raises a warning.
VENDOR_FACTOR_TOLERANCE = 0.02
#: Difference (s) between the chosen and the back-computed reference time that raises a warning.
BACK_COMPUTE_WARN_S = 60.0
#: Half-lives (s) by SNOMED / DCM code of RadionuclideCodeSequence, used when
#: RadionuclideHalfLife is absent.
HALF_LIVES_S: dict[str, tuple[str, float]] = {
    "77004003": ("F-18", 6586.2), "C-111A1": ("F-18", 6586.2),
    "2334001": ("Ga-68", 4062.6), "C-131A3": ("Ga-68", 4062.6),
    "125165000": ("Lu-177", 574344.0),
    "26041009": ("Zr-89", 282276.0),
    "40072003": ("Cu-64", 45720.0),
    "76730003": ("C-11", 1221.8), "C-105A1": ("C-11", 1221.8),
    "21576001": ("N-13", 597.9), "C-107A1": ("N-13", 597.9),
    "12012000": ("O-15", 122.24), "C-B1038": ("O-15", 122.24),
    "69150006": ("Rb-82", 76.4), "C-128A2": ("Rb-82", 76.4),
    "89999003": ("I-124", 360806.0),
}
PHILIPS_CREATOR = "Philips PET Private Group"
GE_PET_CREATOR = "GEMS_PETD_01"


@dataclass(frozen=True)
class SUVAudit:
    """How the SUV of one PET series was obtained (the same fields for every vendor).

    Attributes
    ----------
    suv_per_stored_unit : float or None
        Multiply the rescaled stored values (``units``) by this to get SUVbw (g/mL); None when
        SUVbw is unavailable (``suv_reason`` says why). For DecayCorrection NONE, the mean of
        ``slice_factors``.
    suvbw_factor : float or None
        weight [g] / decayed dose [Bq]: multiply Bq/mL by this to get SUVbw. None when weight,
        dose, half-life or times are unknown.
    bqml_per_unit : float or None
        Multiply the stored values by this to get Bq/mL (1 for BQML); None when the units do
        not allow it (GML, CNTS without activity scale factor ...).
    units : str
        Units (0054,1001), e.g. ``"BQML"``.
    units_rule : str
        How the units were handled.
    suv_kind : str
        ``"SUVbw"`` normally; for units that already are SUV, the stored kind (``"SUVbw"``,
        ``"SUL"``, ``"SUVbsa"`` ...).
    decay_correction : str
        DecayCorrection (0054,1102): START, ADMIN or NONE.
    reference_time_iso, reference_time_rule : str
        The decay reference time (ISO 8601, no time zone) and the rule that chose it.
    back_computed_time_iso : str
        Scan start back-computed from FrameReferenceTime / ActualFrameDuration ("" if not
        available).
    injection_time_iso, injection_time_rule : str
        Injection start and where it came from.
    half_life_s : float or None
        Radionuclide half-life, s.
    dose_bq : float or None
        Injected activity, Bq (after unit repair).
    weight_kg, height_m : float or None
        Patient weight and height (after unit repair).
    sex : str
        PatientSex ("" if unknown).
    decay_factor : float or None
        Fraction of the injected activity left at the reference time.
    lbm_kg : float or None
        Janmahasatian lean body mass.
    sul_factor : float or None
        LBM [g] / decayed dose [Bq]: multiply Bq/mL by this to get SUL.
    sul_reason : str
        Why SUL is unavailable ("" if available).
    vendor_suv_factor : float or None
        Philips SUV Scale Factor (7053,1000) when present.
    slice_factors : tuple of float
        DecayCorrection NONE: SUVbw per stored unit for each slice (headers order).
    suv_reason : str
        Why SUVbw is unavailable ("" when available).
    warnings : tuple of str
        Repairs and doubtful values.
    series_uid : str
        SeriesInstanceUID of the PET series.
    """

    suv_per_stored_unit: float | None = None
    suvbw_factor: float | None = None
    bqml_per_unit: float | None = None
    units: str = ""
    units_rule: str = ""
    suv_kind: str = "SUVbw"
    decay_correction: str = ""
    reference_time_iso: str = ""
    reference_time_rule: str = ""
    back_computed_time_iso: str = ""
    injection_time_iso: str = ""
    injection_time_rule: str = ""
    half_life_s: float | None = None
    dose_bq: float | None = None
    weight_kg: float | None = None
    height_m: float | None = None
    sex: str = ""
    decay_factor: float | None = None
    lbm_kg: float | None = None
    sul_factor: float | None = None
    sul_reason: str = ""
    vendor_suv_factor: float | None = None
    slice_factors: tuple[float, ...] = ()
    suv_reason: str = ""
    warnings: tuple[str, ...] = ()
    series_uid: str = ""

    @property
    def available(self) -> bool:
        """True when SUVbw can be computed."""
        return self.suv_per_stored_unit is not None

    def as_dict(self) -> dict:
        """Plain dict (JSON-serialisable) for provenance and the ``hitit suv`` audit."""
        d = dict(self.__dict__)
        d["warnings"] = list(self.warnings)
        d["slice_factors"] = list(self.slice_factors)
        return d


# --------------------------------------------------------------------------- parsing helpers
def _err(message: str, keyword: str, file_hint: str, series_uid: str, hint: str) -> SUVError:
    return SUVError(
        message, file=file_hint or None, series_uid=series_uid or None, tag=tag_label(keyword),
        hint=hint,
    )


def _parse_date(value: str) -> datetime:
    v = str(value).strip().replace("-", "").replace(".", "")
    return datetime.strptime(v[:8], "%Y%m%d")


def _parse_time(value: str) -> timedelta:
    """DICOM TM (``HHMMSS.FFFFFF``, also ``HH:MM:SS`` and partial ``HHMM``) as time of day."""
    v = str(value).strip().replace(":", "")
    frac = 0.0
    if "." in v:
        v, f = v.split(".", 1)
        frac = float("0." + f.strip()) if f.strip() else 0.0
    hh = int(v[0:2])
    mm = int(v[2:4]) if len(v) >= 4 else 0
    ss = int(v[4:6]) if len(v) >= 6 else 0
    if not (0 <= hh < 24 and 0 <= mm < 60 and 0 <= ss < 61):
        raise ValueError(f"not a DICOM time: {value!r}")
    return timedelta(hours=hh, minutes=mm, seconds=ss + frac)


def _parse_datetime(value: str) -> tuple[datetime, str]:
    """DICOM DT ``YYYYMMDDHHMMSS.FFFFFF&ZZXX`` -> (naive datetime, timezone suffix or "")."""
    v = str(value).strip()
    tz = ""
    for sign in ("+", "-"):
        if sign in v[8:]:
            cut = v.index(sign, 8)
            v, tz = v[:cut], v[cut:]
            break
    day = _parse_date(v[:8])
    rest = v[8:].strip()
    return (day + _parse_time(rest) if rest else day), tz


def _iso(dt: datetime | None) -> str:
    if dt is None:
        return ""
    return dt.isoformat(timespec="microseconds" if dt.microsecond else "seconds")


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip("\x00 ").strip()
    return str(value).strip()


def _private(ds: Dataset, group: int, offset: int, creator: str):
    """A private element by creator, or by its usual tag (``gggg,10xx``) if the creator is lost."""
    try:
        return ds.get_private_item(group, offset, creator).value
    except (KeyError, ValueError, AttributeError):
        pass
    tag = (group << 16) | 0x1000 | offset
    if tag in ds and ds[tag].value not in (None, b"", ""):
        return ds[tag].value
    return None


def _private_float(ds: Dataset, group: int, offset: int, creator: str) -> float | None:
    v = _private(ds, group, offset, creator)
    if v is None:
        return None
    try:
        f = float(_text(v)) if not isinstance(v, (int, float)) else float(v)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _consistent(headers: list[Dataset], keyword: str, file_hint: str, series_uid: str) -> str:
    """The one value of ``keyword`` shared by all headers (SUVError if it differs)."""
    values = {str(h.get(keyword, "")).strip() for h in headers}
    if len(values) > 1:
        raise _err(
            f"{keyword} differs between slices of one PET series: found {sorted(values)}",
            keyword, file_hint, series_uid,
            "the series mixes reconstructions; split it or re-export one reconstruction",
        )
    return values.pop()


def _positive_float(item: Dataset, keyword: str, what: str, file_hint: str, series_uid: str,
                    hint: str) -> float:
    if not has_value(item, keyword):
        raise _err(f"{what} unknown: {keyword} is absent or empty", keyword, file_hint, series_uid,
                   hint)
    try:
        value = float(item[keyword].value)
    except (TypeError, ValueError) as exc:
        raise _err(f"{what}: {keyword} is not a number ({item[keyword].value!r})", keyword,
                   file_hint, series_uid, hint) from exc
    if not math.isfinite(value) or value <= 0:
        raise _err(f"{what}: expected a positive {keyword}, found {value}", keyword, file_hint,
                   series_uid, hint)
    return value


# --------------------------------------------------------------------------- step 1: units
def _unit_rule(headers: list[Dataset], file_hint: str, series_uid: str, info: dict) -> dict:
    """Units -> bqml_per_unit, vendor factor, kind. Raises SUVError when SUVbw is impossible
    (``info`` gets ``suv_kind`` and ``units_rule`` first, for the audit)."""
    h0 = headers[0]
    if not has_value(h0, "Units"):
        raise _err(
            "PET Units is absent: cannot tell whether values are Bq/mL, counts or SUV",
            "Units", file_hint, series_uid, "re-export the PET series with its Units attribute",
        )
    units = _consistent(headers, "Units", file_hint, series_uid).upper()
    out = {"units": units, "bqml_per_unit": None, "vendor": None, "kind": "SUVbw",
           "already_suv": False, "rule": ""}
    if units == "BQML":
        out.update(bqml_per_unit=1.0, rule="BQML: values are Bq/mL")
        vendor = _philips_factors(headers)[0]
        out["vendor"] = vendor  # Philips also writes its SUV factor for BQML: cross-check only
        return out
    if units == "CNTS":
        suv_f, acsf = _philips_factors(headers)
        out.update(bqml_per_unit=acsf, vendor=suv_f)
        if suv_f is not None:
            out["rule"] = ("CNTS: Philips SUV Scale Factor (7053,1000) gives SUVbw per stored "
                           "unit" + ("; Activity Concentration Scale Factor (7053,1009) gives "
                                     "Bq/mL" if acsf is not None else ""))
            return out
        if acsf is not None:
            out["rule"] = ("CNTS: Philips Activity Concentration Scale Factor (7053,1009) gives "
                           "Bq/mL, then the BQML rule")
            return out
        raise _err(
            "PET Units CNTS (counts) without the Philips SUV Scale Factor (7053,1000) or Activity "
            "Concentration Scale Factor (7053,1009): counts cannot be converted to Bq/mL or SUV",
            "Units", file_hint, series_uid,
            "re-export the PET in Bq/mL (BQML) or with the Philips private group 7053",
        )
    if units == "GML":
        suv_type = str(h0.get("SUVType", "") or "").strip().upper()
        if suv_type in ("", "BW"):
            out.update(already_suv=True, rule="GML: values already are SUVbw (SUVType "
                       f"{suv_type or 'absent'}); not converted again")
            return out
        kind = {"LBM": "SUL", "LBM_JANMA": "SUL", "BSA": "SUVbsa", "IBW": "SUVibw"}.get(
            suv_type, f"SUV {suv_type}")
        info.update(suv_kind=kind, units_rule=f"GML with SUVType {suv_type}: stored {kind}")
        raise _err(
            f"PET values are stored as {kind} (Units GML, SUVType {suv_type}), not SUVbw: "
            "reported as stored, never converted a second time",
            "SUVType", file_hint, series_uid,
            "export the PET in Bq/mL (BQML) or as SUVbw to compare with SUVbw thresholds",
        )
    kind = {"CM2ML": "SUVbsa"}.get(units, "")
    if kind:
        info.update(suv_kind=kind, units_rule=f"{units}: stored {kind}")
        raise _err(
            f"PET values are stored as {kind} (Units {units}), not SUVbw: reported as stored, "
            "never converted a second time",
            "Units", file_hint, series_uid,
            "export the PET in Bq/mL (BQML) or as SUVbw to compare with SUVbw thresholds",
        )
    raise _err(
        f"unsupported PET Units {units!r}: expected BQML, CNTS (Philips) or GML",
        "Units", file_hint, series_uid, "export the PET in Bq/mL (BQML)",
    )


def _philips_factors(headers: list[Dataset]) -> tuple[float | None, float | None]:
    """(SUV scale factor, activity concentration scale factor), each None unless consistent."""
    out = []
    for off in (0x00, 0x09):
        vals = [_private_float(h, 0x7053, off, PHILIPS_CREATOR) for h in headers]
        good = {v for v in vals if v is not None and v > 0}
        out.append(good.pop() if len(good) == 1 and all(v is not None for v in vals) else None)
    return out[0], out[1]


# --------------------------------------------------------------------------- step 2: times
def _acq_datetime(h: Dataset, series_day: datetime | None) -> datetime | None:
    if has_value(h, "AcquisitionDateTime"):
        try:
            return _parse_datetime(h.AcquisitionDateTime)[0]
        except ValueError:
            pass
    if has_value(h, "AcquisitionTime"):
        day = _parse_date(h.AcquisitionDate) if has_value(h, "AcquisitionDate") else series_day
        if day is not None:
            return day + _parse_time(h.AcquisitionTime)
    return None


def _mid_frame_offset_s(duration_s: float, half_life_s: float) -> float:
    """Decay-weighted mid-frame time (QIBA "average count rate time within frame"), s."""
    lam = math.log(2.0) / half_life_s
    x = lam * duration_s
    if x < 1e-9:
        return duration_s / 2.0
    return math.log(x / (1.0 - math.exp(-x))) / lam


def _back_computed(headers: list[Dataset], series_day, half_life_s: float | None
                   ) -> datetime | None:
    """Scan start from AcquisitionTime - FrameReferenceTime + mid-frame time (first slice that
    has them all), or None."""
    if half_life_s is None:
        return None
    for h in headers:
        try:
            frt = float(h.get("FrameReferenceTime", 0) or 0) / 1000.0
            dur = float(h.get("ActualFrameDuration", 0) or 0) / 1000.0
        except (TypeError, ValueError):
            continue
        acq = _acq_datetime(h, series_day)
        if frt > 0 and dur > 0 and acq is not None:
            return acq - timedelta(seconds=frt) + timedelta(
                seconds=_mid_frame_offset_s(dur, half_life_s))
    return None


def _reference_time(headers: list[Dataset], inj: datetime | None, half_life_s: float | None,
                    file_hint: str, series_uid: str) -> tuple[datetime, str, str, list[str]]:
    """(reference time, rule, back-computed ISO, warnings) for DecayCorrection START."""
    h0 = headers[0]
    warnings: list[str] = []
    series_day = _parse_date(h0.SeriesDate) if has_value(h0, "SeriesDate") else None
    series_dt = None
    if series_day is not None and has_value(h0, "SeriesTime"):
        series_dt = series_day + _parse_time(h0.SeriesTime)
    acq = [a for a in (_acq_datetime(h, series_day) for h in headers) if a is not None]
    earliest = min(acq) if acq else None
    back = _back_computed(headers, series_day, half_life_s)
    if series_dt is not None and (earliest is None or series_dt <= earliest):
        ref, rule = series_dt, "SeriesDate/SeriesTime"
    else:
        if series_dt is None:
            warnings.append("SeriesDate/SeriesTime absent")
        else:
            warnings.append(
                f"SeriesTime {_iso(series_dt)} is later than the earliest acquisition "
                f"{_iso(earliest)} (series re-created after the scan)")
        ge = _private(h0, 0x0009, 0x0D, GE_PET_CREATOR)
        ge_dt = None
        if ge is not None:
            try:
                ge_dt = _parse_datetime(_text(ge))[0]
            except ValueError:
                warnings.append(f"GE private PET scan_datetime (0009,100D) {_text(ge)!r} is not a "
                                "DICOM date-time; ignored")
        if ge_dt is not None:
            ref, rule = ge_dt, "GE private PET scan_datetime (0009,100D)"
        elif earliest is not None and (inj is None or earliest >= inj or back is None):
            ref, rule = earliest, "earliest AcquisitionDate/Time"
        elif back is not None:
            ref, rule = back, ("back-computed: AcquisitionTime - FrameReferenceTime + "
                               "decay-weighted mid-frame time")
            warnings.append(f"earliest acquisition {_iso(earliest)} precedes the injection "
                            f"{_iso(inj)}: reference time back-computed from frame timing")
        else:
            missing = "SeriesDate" if series_day is None else "SeriesTime"
            raise _err(
                f"no reference time: {missing} is absent and no AcquisitionDate/Time is present",
                missing, file_hint, series_uid,
                "re-export the PET with SeriesDate/SeriesTime (needed for decay correction)",
            )
        warnings.append(f"decay reference time taken from the {rule}")
    if (back is not None and rule != "SeriesDate/SeriesTime"
            and abs((back - ref).total_seconds()) > BACK_COMPUTE_WARN_S):
        warnings.append(f"reference time {_iso(ref)} ({rule}) differs by "
                        f"{(back - ref).total_seconds():.0f} s from the scan start back-computed "
                        f"from FrameReferenceTime ({_iso(back)})")
    return ref, rule, _iso(back), warnings


def _radiopharm_item(headers: list[Dataset], file_hint: str, series_uid: str) -> Dataset:
    seq = headers[0].get("RadiopharmaceuticalInformationSequence", None)
    if not seq:
        raise _err(
            "RadiopharmaceuticalInformationSequence is absent or empty: injected dose, injection "
            "time and half-life are unknown",
            "RadiopharmaceuticalInformationSequence", file_hint, series_uid,
            "re-export the PET from the scanner with its radiopharmaceutical information; SUV "
            "stays empty and activity concentration is still reported",
        )
    return seq[0]


def _injection_time(item: Dataset, day: datetime | None, ref_hint: datetime | None,
                    file_hint: str, series_uid: str) -> tuple[datetime, str, list[str]]:
    """Injection start. ``day``: the SeriesDate; ``ref_hint``: a time the injection precedes."""
    warnings: list[str] = []
    if has_value(item, "RadiopharmaceuticalStartDateTime"):
        inj, tz = _parse_datetime(item.RadiopharmaceuticalStartDateTime)
        if tz:
            warnings.append(f"time-zone offset {tz} of RadiopharmaceuticalStartDateTime ignored "
                            "(series times carry none)")
        if has_value(item, "RadiopharmaceuticalStartTime"):
            tod = _parse_time(item.RadiopharmaceuticalStartTime)
            if abs((inj - datetime(inj.year, inj.month, inj.day) - tod).total_seconds()) > 1:
                warnings.append("RadiopharmaceuticalStartTime differs from the time of "
                                "RadiopharmaceuticalStartDateTime; the date-time was used")
        return inj, "RadiopharmaceuticalStartDateTime", warnings
    if not has_value(item, "RadiopharmaceuticalStartTime"):
        raise _err(
            "injection time unknown: neither RadiopharmaceuticalStartDateTime (0018,1078) nor "
            "RadiopharmaceuticalStartTime is present",
            "RadiopharmaceuticalStartTime", file_hint, series_uid,
            "re-export the PET with the injection time",
        )
    if day is None:
        day = datetime(ref_hint.year, ref_hint.month, ref_hint.day) if ref_hint else None
    if day is None:
        raise _err("injection date unknown: RadiopharmaceuticalStartTime without any date",
                   "SeriesDate", file_hint, series_uid, "re-export the PET with SeriesDate")
    inj = day + _parse_time(item.RadiopharmaceuticalStartTime)
    rule = "RadiopharmaceuticalStartTime on SeriesDate"
    if ref_hint is not None and inj > ref_hint:
        inj -= timedelta(days=1)
        rule += ", previous day"
        warnings.append(
            "RadiopharmaceuticalStartTime is later in the day than the reference time: "
            "injection taken on the previous day (midnight crossing)"
        )
    return inj, rule, warnings


# --------------------------------------------------------------------------- step 5: values
def _dose_bq(item: Dataset, file_hint: str, series_uid: str) -> tuple[float, list[str]]:
    dose = _positive_float(
        item, "RadionuclideTotalDose", "injected dose", file_hint, series_uid,
        "enter the injected activity (Bq) at the scanner and re-export; SUV stays empty",
    )
    if dose < DOSE_MBQ_THRESHOLD:
        return dose * 1e6, [
            f"RadionuclideTotalDose {dose:g} is below {DOSE_MBQ_THRESHOLD:g}: taken as MBq "
            f"({dose * 1e6:g} Bq)"
        ]
    return dose, []


def _weight_kg(h0: Dataset, file_hint: str, series_uid: str) -> tuple[float, list[str]]:
    weight = _positive_float(
        h0, "PatientWeight", "patient weight", file_hint, series_uid,
        "enter the patient weight (kg) at the scanner and re-export; SUV stays empty",
    )
    if weight > WEIGHT_GRAMS_THRESHOLD:
        return weight / 1000.0, [
            f"PatientWeight {weight:g} is above {WEIGHT_GRAMS_THRESHOLD:g}: taken as grams "
            f"({weight / 1000.0:g} kg)"
        ]
    w = [] if 20.0 <= weight <= 350.0 else [f"PatientWeight {weight:g} kg is implausible for "
                                            "an adult; check it"]
    return weight, w


def _half_life_s(item: Dataset, file_hint: str, series_uid: str) -> tuple[float, list[str]]:
    if not has_value(item, "RadionuclideHalfLife"):
        seq = item.get("RadionuclideCodeSequence", None)
        code = str(seq[0].get("CodeValue", "")) if seq else ""
        if code in HALF_LIVES_S:
            name, hl = HALF_LIVES_S[code]
            return hl, [f"RadionuclideHalfLife absent: {hl:g} s of {name} used from "
                        f"RadionuclideCodeSequence {code}"]
    return _positive_float(
        item, "RadionuclideHalfLife", "radionuclide half-life", file_hint, series_uid,
        "re-export the PET with RadionuclideHalfLife (s), e.g. 6586.2 for F-18",
    ), []


def _height_m(h0: Dataset) -> tuple[float | None, list[str]]:
    if not has_value(h0, "PatientSize"):
        return None, []
    try:
        v = float(h0.PatientSize)
    except (TypeError, ValueError):
        return None, [f"PatientSize {h0.PatientSize!r} is not a number; SUL unavailable"]
    if not (math.isfinite(v) and v > 0):
        return None, []
    if v > HEIGHT_CM_THRESHOLD:
        return v / 100.0, [f"PatientSize {v:g} is above {HEIGHT_CM_THRESHOLD:g}: taken as "
                           f"centimetres ({v / 100.0:g} m)"]
    return v, []


def janmahasatian_lbm_kg(weight_kg: float, height_m: float, sex: str) -> float:
    """Lean body mass (kg) by Janmahasatian et al. 2005, as in the IBSI SUV manual.

    Parameters
    ----------
    weight_kg : float
    height_m : float
    sex : {"M", "F"}

    Returns
    -------
    float
        ``9270 W / (6680 + 216 BMI)`` for males, ``9270 W / (8780 + 244 BMI)`` for females,
        with ``BMI = W / height^2`` (kg/m^2).
    """
    bmi = weight_kg / height_m**2
    s = sex.strip().upper()
    if s == "M":
        return 9270.0 * weight_kg / (6680.0 + 216.0 * bmi)
    if s == "F":
        return 9270.0 * weight_kg / (8780.0 + 244.0 * bmi)
    raise ValueError(f"sex must be M or F, got {sex!r}")


# --------------------------------------------------------------------------- public API
def suv_audit(headers: list[Dataset], *, file_hint: str = "", strict: bool = True) -> SUVAudit:
    """Compute the SUVbw (and SUL) factors of a PET series and record how.

    Parameters
    ----------
    headers : list of Dataset
        Headers of the PET series (all slices, e.g. from
        :func:`pipeline.io.dicom.load_pet_activity`).
    file_hint : str
        File (or folder) named in errors; defaults to the first header's filename.
    strict : bool
        True: raise :class:`SUVError` when SUVbw is unavailable. False: return the audit with
        ``suv_per_stored_unit`` None and the error in ``suv_reason`` (every field that could
        be determined is still filled).

    Returns
    -------
    SUVAudit

    Raises
    ------
    SUVError
        (strict only) Missing RadiopharmaceuticalInformationSequence (0054,0016),
        RadionuclideTotalDose (0018,1074), PatientWeight (0010,1030), RadionuclideHalfLife
        (0018,1075), injection or reference time; Units that are not SUVbw-convertible. The
        error names the tag and the file.
    """
    if not headers:
        raise SUVError("no PET headers given", file=file_hint or None,
                       hint="pass the headers of the PET series")
    h0 = headers[0]
    file_hint = file_hint or str(getattr(h0, "filename", "") or "")
    series_uid = str(h0.get("SeriesInstanceUID", ""))
    info: dict = {"series_uid": series_uid, "units": str(h0.get("Units", "") or "").upper(),
                  "decay_correction": str(h0.get("DecayCorrection", "") or "").upper(),
                  "sex": str(h0.get("PatientSex", "") or "").strip().upper()}
    warnings: list[str] = []
    try:
        _fill(headers, h0, info, warnings, file_hint, series_uid)
    except SUVError as exc:
        info["suv_per_stored_unit"] = None
        info["slice_factors"] = ()
        info["suv_reason"] = str(exc)
        if strict:
            for msg in warnings:
                log.warning("SUV series %s: %s", series_uid, msg)
            raise
    except ValueError as exc:
        err = SUVError(f"unparseable date/time in the PET header: {exc}", file=file_hint or None,
                       series_uid=series_uid or None,
                       tag="SeriesDate/SeriesTime/RadiopharmaceuticalStartDateTime",
                       hint="correct the DICOM DA/TM/DT values")
        info["suv_per_stored_unit"] = None
        info["suv_reason"] = str(err)
        if strict:
            raise err from exc
    for msg in warnings:
        log.warning("SUV series %s: %s", series_uid, msg)
    fields = {k: v for k, v in info.items() if k in SUVAudit.__dataclass_fields__}
    return SUVAudit(warnings=tuple(dict.fromkeys(warnings)), **fields)


def _fill(headers, h0, info: dict, warnings: list[str], file_hint: str, series_uid: str) -> None:
    """Fill ``info`` step by step; raises SUVError at the first step that blocks SUVbw."""
    # values needed by several steps (collected before any can fail)
    try:
        w, ww = _weight_kg(h0, file_hint, series_uid)
        info["weight_kg"] = w
        warnings += ww
    except SUVError:
        pass
    hgt, wh = _height_m(h0)
    info["height_m"] = hgt
    warnings += wh

    u = _unit_rule(headers, file_hint, series_uid, info)
    info.update(units=u["units"], bqml_per_unit=u["bqml_per_unit"], suv_kind=u["kind"],
                vendor_suv_factor=u["vendor"], units_rule=u["rule"])
    ci = {str(c).upper() for h in headers[:1] for c in (h.get("CorrectedImage", []) or [])}
    if ci and "ATTN" not in ci:
        raise _err(
            f"PET not attenuation-corrected (CorrectedImage {sorted(ci)} lacks ATTN): SUV is "
            "not meaningful", "CorrectedImage", file_hint, series_uid,
            "use the attenuation-corrected reconstruction of this PET",
        )
    if u["already_suv"]:
        info["suv_per_stored_unit"] = 1.0
        info["units_rule"] = u["rule"]
        warnings.append(u["rule"])
        return
    if not has_value(h0, "DecayCorrection"):
        raise _err("DecayCorrection is absent: the decay reference of the values is unknown",
                   "DecayCorrection", file_hint, series_uid,
                   "re-export the PET with DecayCorrection")
    dc = _consistent(headers, "DecayCorrection", file_hint, series_uid).upper()
    info["decay_correction"] = dc
    if dc not in ("START", "ADMIN", "NONE"):
        raise _err(f"unsupported DecayCorrection {dc!r}: expected START, ADMIN or NONE",
                   "DecayCorrection", file_hint, series_uid,
                   "re-export the PET decay-corrected to the series start (START)")
    if ci and dc in ("START", "ADMIN") and "DECY" not in ci:
        warnings.append(f"DecayCorrection {dc} but CorrectedImage {sorted(ci)} lacks DECY")

    item = _radiopharm_item(headers, file_hint, series_uid)
    hl, wh = _half_life_s(item, file_hint, series_uid)
    info["half_life_s"] = hl
    warnings += wh
    series_day = _parse_date(h0.SeriesDate) if has_value(h0, "SeriesDate") else None
    # injection first with the series/acquisition time as the "precedes" hint
    hint_time = None
    if series_day is not None and has_value(h0, "SeriesTime"):
        hint_time = series_day + _parse_time(h0.SeriesTime)
    acq = [a for a in (_acq_datetime(h, series_day) for h in headers) if a is not None]
    if acq:
        hint_time = min([hint_time, min(acq)] if hint_time else [min(acq)])
    inj, inj_rule, wi = _injection_time(item, series_day, hint_time, file_hint, series_uid)
    info.update(injection_time_iso=_iso(inj), injection_time_rule=inj_rule)
    warnings += wi
    dose, wd = _dose_bq(item, file_hint, series_uid)
    info["dose_bq"] = dose
    warnings += wd
    if "weight_kg" not in info:
        _weight_kg(h0, file_hint, series_uid)  # raises, naming PatientWeight
    weight = info["weight_kg"]

    if dc == "START":
        ref, rule, back, wr = _reference_time(headers, inj, hl, file_hint, series_uid)
        warnings += wr
        info.update(reference_time_iso=_iso(ref), reference_time_rule=rule,
                    back_computed_time_iso=back)
        if inj > ref:
            raise _err(f"injection {_iso(inj)} is after the reference time {_iso(ref)}",
                       "RadiopharmaceuticalStartDateTime", file_hint, series_uid,
                       "check the injection date/time recorded at the scanner")
        if (ref - inj) > timedelta(hours=24) and hl < 86400:
            warnings.append(f"{(ref - inj).total_seconds() / 3600:.1f} h between injection and "
                            "reference time: check the dates")
        decay = float(2.0 ** (-(ref - inj).total_seconds() / hl))
    elif dc == "ADMIN":
        info.update(reference_time_iso=_iso(inj),
                    reference_time_rule="DecayCorrection ADMIN: images decay-corrected to the "
                    "administration (injection) time")
        decay = 1.0
    else:  # NONE
        factors_t = []
        for h in headers:
            t = _acq_datetime(h, series_day)
            if t is None:
                raise _err("DecayCorrection NONE needs each slice's acquisition time, absent in "
                           f"{getattr(h, 'filename', 'a slice')}", "AcquisitionTime", file_hint,
                           series_uid, "re-export the PET with AcquisitionDate/AcquisitionTime")
            try:
                dur = float(h.get("ActualFrameDuration", 0) or 0) / 1000.0
            except (TypeError, ValueError):
                dur = 0.0
            factors_t.append(t + timedelta(seconds=_mid_frame_offset_s(dur, hl)) if dur > 0
                             else t)
        if not any(float(h.get("ActualFrameDuration", 0) or 0) > 0 for h in headers):
            warnings.append("DecayCorrection NONE without ActualFrameDuration: slices decayed to "
                            "their acquisition start")
        decays = [float(2.0 ** (-(t - inj).total_seconds() / hl)) for t in factors_t]
        info.update(reference_time_iso=_iso(min(factors_t)),
                    reference_time_rule="DecayCorrection NONE: each slice decayed to its own "
                    "decay-weighted mid-frame time (AcquisitionTime + average count-rate time)")
        decay = float(np.mean(decays))
        info["_decays"] = decays
    info["decay_factor"] = decay
    suvbw = weight * 1000.0 / (dose * decay)
    info["suvbw_factor"] = suvbw

    # SUL
    sex = info["sex"]
    if hgt is None or sex not in ("M", "F"):
        info["sul_reason"] = ("SUL needs PatientSex M/F and PatientSize (height): "
                              + ("PatientSize absent" if hgt is None else f"PatientSex {sex!r}"))
    else:
        lbm = janmahasatian_lbm_kg(weight, hgt, sex)
        info.update(lbm_kg=lbm, sul_factor=lbm * 1000.0 / (dose * decay))

    # stored units -> SUVbw
    vendor, bq = u["vendor"], u["bqml_per_unit"]
    if u["units"] == "CNTS" and vendor is not None:
        info["suv_per_stored_unit"] = vendor
        if bq is not None:
            mine = bq * suvbw
            if abs(mine / vendor - 1.0) > VENDOR_FACTOR_TOLERANCE:
                warnings.append(f"Philips SUV Scale Factor {vendor:g} differs by "
                                f"{100 * (mine / vendor - 1):.1f} % from the header computation "
                                f"{mine:.6g} (activity scale factor x weight / decayed dose)")
    else:
        info["suv_per_stored_unit"] = bq * suvbw
        if vendor is not None and u["units"] == "BQML":
            acsf = _philips_factors(headers)[1]
            if acsf:
                mine = suvbw * acsf
                if abs(mine / vendor - 1.0) > VENDOR_FACTOR_TOLERANCE:
                    warnings.append(f"Philips SUV Scale Factor {vendor:g} (per count) differs by "
                                    f"{100 * (mine / vendor - 1):.1f} % from the header "
                                    "computation")
    if dc == "NONE":
        scale = info["suv_per_stored_unit"] / suvbw
        info["slice_factors"] = tuple(scale * weight * 1000.0 / (dose * d)
                                      for d in info.pop("_decays"))


def to_suv(activity: Volume, audit: SUVAudit, *, kind: str = "SUVbw") -> Volume:
    """Convert a PET activity volume to SUVbw (or SUL).

    Parameters
    ----------
    activity : Volume
        From :func:`pipeline.io.dicom.load_pet_activity`, values in ``audit.units``.
    audit : SUVAudit
        From :func:`suv_audit` on the same series.
    kind : {"SUVbw", "SUL"}

    Returns
    -------
    Volume
        float32 (z, y, x) SUVbw or SUL (g/mL), same grid, ``units`` = ``kind``, notes extended.

    Raises
    ------
    SUVError
        The audit has no SUV (reason given), the volume's units or series differ from the
        audit's, or SUL is unavailable.
    """
    if activity.units.upper() != audit.units.upper():
        raise SUVError(
            f"volume units {activity.units!r} differ from the audited units {audit.units!r}",
            series_uid=activity.series_uid, tag=tag_label("Units"),
            hint="convert the activity volume returned by load_pet_activity, not a converted one",
        )
    if audit.series_uid and activity.series_uid and audit.series_uid != activity.series_uid:
        raise SUVError(
            f"audit of series {audit.series_uid} applied to series {activity.series_uid}",
            series_uid=activity.series_uid, tag=tag_label("SeriesInstanceUID"),
            hint="compute the audit from the headers of the same PET series",
        )
    if audit.suv_per_stored_unit is None:
        raise SUVError(f"SUV unavailable: {audit.suv_reason}", series_uid=activity.series_uid,
                       hint="see the SUV audit")
    if kind == "SUVbw":
        scale = audit.suv_per_stored_unit
    elif kind == "SUL":
        if audit.sul_factor is None or audit.suvbw_factor is None:
            raise SUVError(f"SUL unavailable: {audit.sul_reason or 'no SUL factor'}",
                           series_uid=activity.series_uid, tag=tag_label("PatientSize"),
                           hint="record the patient's sex and height at the scanner")
        scale = audit.suv_per_stored_unit * audit.sul_factor / audit.suvbw_factor
    else:
        raise ValueError(f"kind must be SUVbw or SUL, got {kind!r}")
    arr = activity.array.astype(np.float32)
    resampled = any(n.startswith("RESAMPLED") for n in activity.notes)
    if audit.slice_factors and len(set(audit.slice_factors)) > 1:
        f = np.asarray(audit.slice_factors) * (scale / audit.suv_per_stored_unit)
        if len(f) != arr.shape[0] or resampled:
            raise SUVError(
                "per-slice decay factors (DecayCorrection NONE) cannot be applied to a resampled "
                "PET volume", series_uid=activity.series_uid, tag=tag_label("DecayCorrection"),
                hint="export the PET decay-corrected (START)",
            )
        out = (arr * f.astype(np.float32)[:, None, None]).astype(np.float32)
        note = (f"{kind} = {audit.units} x per-slice factor ({f.min():.6g} .. {f.max():.6g}); "
                f"{audit.reference_time_rule}")
    else:
        out = (arr * np.float32(scale)).astype(np.float32)
        note = (f"{kind} = {audit.units} x {scale:.6g} ({audit.units_rule}; reference "
                f"{audit.reference_time_iso or 'n/a'} by {audit.reference_time_rule or 'n/a'})")
    return replace(activity, array=out, units=kind, notes=activity.notes + (note,))


def to_activity_bqml(activity: Volume, audit: SUVAudit) -> Volume | None:
    """The activity concentration in Bq/mL, or None when the units do not allow it.

    Parameters
    ----------
    activity : Volume
        Stored (rescaled) values in ``audit.units``.
    audit : SUVAudit

    Returns
    -------
    Volume or None
        float32 Bq/mL (``units="BQML"``) for BQML, and for CNTS with the Philips activity
        concentration scale factor; None for GML, CM2ML, CNTS without that factor ...
    """
    if audit.bqml_per_unit is None:
        return None
    if audit.bqml_per_unit == 1.0 and activity.units.upper() == "BQML":
        return activity
    arr = (activity.array.astype(np.float32) * np.float32(audit.bqml_per_unit)).astype(np.float32)
    return replace(activity, array=arr, units="BQML", notes=activity.notes + (
        f"Bq/mL = {audit.units} x {audit.bqml_per_unit:g} ({audit.units_rule})",))
