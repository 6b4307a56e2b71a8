"""SUVbw conversion of PET activity with a full audit of how the factor was obtained.

SUVbw = C(t_ref) [Bq/mL] x weight [g] / (injected dose [Bq] decayed from injection to t_ref)
(1 g of tissue taken as 1 mL, QIBA convention), so

    suvbw_factor = weight_kg * 1000 / (dose_bq * 2 ** (-(t_ref - t_inj) / half_life_s))

for DecayCorrection START (images decay-corrected to the series start).

The computation is split in independent steps so that issue 3 can extend each without touching
the others:

1. :func:`_unit_scale` - stored units -> Bq/mL (this version: BQML only; issue 3 adds CNTS with
   the Philips scale factors, GML / other SUV units, GE private tags).
2. :func:`_reference_time` - the time the image activity refers to (SeriesDate/SeriesTime unless
   later than the earliest acquisition; issue 3 adds the GE post-injection time and back-computation
   from frame duration).
3. :func:`_injection_time` - RadiopharmaceuticalStartDateTime, else SeriesDate +
   RadiopharmaceuticalStartTime with midnight crossing.
4. :func:`_dose_bq`, :func:`_weight_kg`, :func:`_half_life_s` - values with unit repairs.
5. :func:`_decay_factor` - START (this version; ADMIN/NONE in issue 3).
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


@dataclass(frozen=True)
class SUVAudit:
    """How the SUVbw factor of one PET series was obtained.

    Attributes
    ----------
    suvbw_factor : float
        Multiply activity concentration in Bq/mL by this to get SUVbw (g/mL).
    units : str
        Units (0054,1001) of the stored (rescaled) pixel values, e.g. ``"BQML"``.
    decay_correction : str
        DecayCorrection (0054,1102), e.g. ``"START"``.
    reference_time_iso : str
        The time the image activity refers to (ISO 8601, no time zone).
    reference_time_rule : str
        Which rule chose it (``"SeriesDate/SeriesTime"``, ``"earliest AcquisitionDate/Time"``).
    injection_time_iso : str
        Injection start time (ISO 8601).
    half_life_s : float
        RadionuclideHalfLife, seconds.
    dose_bq : float
        Injected activity, Bq (after unit repair).
    weight_kg : float
        Patient weight, kg (after unit repair).
    warnings : tuple of str
        Repairs and doubtful values (dose in MBq, weight in grams, reference time moved ...).
    bqml_per_unit : float
        Multiply stored values (``units``) by this to get Bq/mL (1.0 for BQML).
    decay_factor : float
        Fraction of the injected activity left at the reference time.
    series_uid : str
        SeriesInstanceUID of the PET series.
    """

    suvbw_factor: float
    units: str
    decay_correction: str
    reference_time_iso: str
    reference_time_rule: str
    injection_time_iso: str
    half_life_s: float
    dose_bq: float
    weight_kg: float
    warnings: tuple[str, ...] = ()
    bqml_per_unit: float = 1.0
    decay_factor: float = 1.0
    series_uid: str = ""

    def as_dict(self) -> dict:
        """Plain dict (JSON-serialisable) for provenance and the ``hitit suv`` audit."""
        d = dict(self.__dict__)
        d["warnings"] = list(self.warnings)
        return d


# --------------------------------------------------------------------------- helpers
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
        frac = float("0." + f) if f else 0.0
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
    rest = v[8:]
    return (day + _parse_time(rest) if rest else day), tz


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="microseconds" if dt.microsecond else "seconds")


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


# --------------------------------------------------------------------------- step 1: units
def _unit_scale(
    headers: list[Dataset], file_hint: str, series_uid: str
) -> tuple[str, float, list[str]]:
    """Return (units, Bq/mL per stored unit, warnings). Only BQML in this version."""
    if not has_value(headers[0], "Units"):
        raise _err(
            "PET Units is absent: cannot tell whether values are Bq/mL, counts or SUV",
            "Units", file_hint, series_uid, "re-export the PET series with its Units attribute",
        )
    units = _consistent(headers, "Units", file_hint, series_uid).upper()
    if units == "BQML":
        return units, 1.0, []
    raise _err(
        f"unsupported PET Units: expected BQML, found {units!r} (CNTS, GML, CM2ML and other "
        "units are not supported yet)",
        "Units", file_hint, series_uid,
        "export the PET in Bq/mL (BQML); support for other units comes with issue 3",
    )


# --------------------------------------------------------------------------- step 2: reference
def _acquisition_datetimes(headers: list[Dataset], series_day: datetime | None) -> list[datetime]:
    out = []
    for h in headers:
        if has_value(h, "AcquisitionDateTime"):
            try:
                out.append(_parse_datetime(h.AcquisitionDateTime)[0])
                continue
            except ValueError:
                pass
        if has_value(h, "AcquisitionTime"):
            day = _parse_date(h.AcquisitionDate) if has_value(h, "AcquisitionDate") else series_day
            if day is not None:
                out.append(day + _parse_time(h.AcquisitionTime))
    return out


def _reference_time(
    headers: list[Dataset], file_hint: str, series_uid: str
) -> tuple[datetime, str, list[str]]:
    """Reference time of the activity: SeriesDate/SeriesTime unless later than the acquisition."""
    h0 = headers[0]
    warnings: list[str] = []
    series_day = _parse_date(h0.SeriesDate) if has_value(h0, "SeriesDate") else None
    series_dt = None
    if series_day is not None and has_value(h0, "SeriesTime"):
        series_dt = series_day + _parse_time(h0.SeriesTime)
    acq = _acquisition_datetimes(headers, series_day)
    earliest = min(acq) if acq else None
    if series_dt is None:
        if earliest is None:
            missing = "SeriesDate" if series_day is None else "SeriesTime"
            raise _err(
                f"no reference time: {missing} is absent and no AcquisitionDate/Time is present",
                missing, file_hint, series_uid,
                "re-export the PET with SeriesDate/SeriesTime (needed for decay correction)",
            )
        warnings.append(
            "SeriesDate/SeriesTime absent: the earliest AcquisitionDate/Time was used as the "
            "decay reference time"
        )
        return earliest, "earliest AcquisitionDate/Time", warnings
    if earliest is not None and series_dt > earliest:
        warnings.append(
            f"SeriesTime {_iso(series_dt)} is later than the earliest acquisition "
            f"{_iso(earliest)} (series re-created after the scan): the earliest acquisition time "
            "was used as the decay reference time"
        )
        return earliest, "earliest AcquisitionDate/Time", warnings
    return series_dt, "SeriesDate/SeriesTime", warnings


# --------------------------------------------------------------------------- step 3: injection
def _radiopharm_item(headers: list[Dataset], file_hint: str, series_uid: str) -> Dataset:
    h0 = headers[0]
    seq = h0.get("RadiopharmaceuticalInformationSequence", None)
    if not seq:
        raise _err(
            "RadiopharmaceuticalInformationSequence is absent or empty: injected dose, injection "
            "time and half-life are unknown",
            "RadiopharmaceuticalInformationSequence", file_hint, series_uid,
            "re-export the PET from the scanner with its radiopharmaceutical information; SUV "
            "stays empty and activity concentration is still reported",
        )
    return seq[0]


def _injection_time(
    item: Dataset, ref: datetime, series_day: datetime | None, file_hint: str, series_uid: str
) -> tuple[datetime, list[str]]:
    warnings: list[str] = []
    if has_value(item, "RadiopharmaceuticalStartDateTime"):
        inj, tz = _parse_datetime(item.RadiopharmaceuticalStartDateTime)
        if tz:
            warnings.append(
                f"time-zone offset {tz} of RadiopharmaceuticalStartDateTime ignored (series "
                "times carry none)"
            )
        if inj > ref:
            raise _err(
                f"injection {_iso(inj)} is after the reference time {_iso(ref)}",
                "RadiopharmaceuticalStartDateTime", file_hint, series_uid,
                "check the injection date/time recorded at the scanner",
            )
        return inj, warnings
    if not has_value(item, "RadiopharmaceuticalStartTime"):
        raise _err(
            "injection time unknown: neither RadiopharmaceuticalStartDateTime (0018,1078) nor "
            "RadiopharmaceuticalStartTime is present",
            "RadiopharmaceuticalStartTime", file_hint, series_uid,
            "re-export the PET with the injection time",
        )
    day = series_day if series_day is not None else datetime(ref.year, ref.month, ref.day)
    inj = day + _parse_time(item.RadiopharmaceuticalStartTime)
    if inj > ref:
        inj -= timedelta(days=1)
        warnings.append(
            "RadiopharmaceuticalStartTime is later in the day than the reference time: "
            "injection taken on the previous day (midnight crossing)"
        )
    return inj, warnings


# --------------------------------------------------------------------------- step 4: values
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
    return weight, []


def _half_life_s(item: Dataset, file_hint: str, series_uid: str) -> float:
    return _positive_float(
        item, "RadionuclideHalfLife", "radionuclide half-life", file_hint, series_uid,
        "re-export the PET with RadionuclideHalfLife (s), e.g. 6586.2 for F-18",
    )


# --------------------------------------------------------------------------- step 5: decay
def _decay_factor(decay_correction: str, ref: datetime, inj: datetime, half_life_s: float,
                  file_hint: str, series_uid: str) -> float:
    """Fraction of the injected activity left at the reference time."""
    if decay_correction == "START":
        dt = (ref - inj).total_seconds()
        return float(2.0 ** (-dt / half_life_s))
    raise _err(
        f"unsupported DecayCorrection: expected START, found {decay_correction!r} (ADMIN and "
        "NONE are not supported yet)",
        "DecayCorrection", file_hint, series_uid,
        "export the PET decay-corrected to the series start; ADMIN/NONE come with issue 3",
    )


# --------------------------------------------------------------------------- public API
def suv_audit(headers: list[Dataset], *, file_hint: str = "") -> SUVAudit:
    """Compute the SUVbw factor of a PET series and record how.

    Parameters
    ----------
    headers : list of Dataset
        Headers of the PET series (all slices; e.g. from
        :func:`pipeline.io.dicom.load_pet_activity`).
    file_hint : str
        File (or folder) named in errors; defaults to the first header's filename.

    Returns
    -------
    SUVAudit

    Raises
    ------
    SUVError
        Missing RadiopharmaceuticalInformationSequence (0054,0016), RadionuclideTotalDose
        (0018,1074), PatientWeight (0010,1030), RadionuclideHalfLife (0018,1075), injection or
        reference time; unsupported Units or DecayCorrection. The error names the tag and file.
    """
    if not headers:
        raise SUVError("no PET headers given", file=file_hint or None,
                       hint="pass the headers of the PET series")
    h0 = headers[0]
    file_hint = file_hint or str(getattr(h0, "filename", "") or "")
    series_uid = str(h0.get("SeriesInstanceUID", ""))
    warnings: list[str] = []

    units, bqml_per_unit, w = _unit_scale(headers, file_hint, series_uid)
    warnings += w
    if not has_value(h0, "DecayCorrection"):
        raise _err("DecayCorrection is absent: the decay reference of the values is unknown",
                   "DecayCorrection", file_hint, series_uid,
                   "re-export the PET with DecayCorrection")
    decay_correction = _consistent(headers, "DecayCorrection", file_hint, series_uid).upper()

    item = _radiopharm_item(headers, file_hint, series_uid)
    try:
        ref, rule, w = _reference_time(headers, file_hint, series_uid)
        warnings += w
        series_day = _parse_date(h0.SeriesDate) if has_value(h0, "SeriesDate") else None
        inj, w = _injection_time(item, ref, series_day, file_hint, series_uid)
        warnings += w
    except ValueError as exc:
        raise SUVError(f"unparseable date/time in the PET header: {exc}", file=file_hint or None,
                       series_uid=series_uid or None,
                       tag="SeriesDate/SeriesTime/RadiopharmaceuticalStartDateTime",
                       hint="correct the DICOM DA/TM/DT values") from exc
    if (ref - inj) > timedelta(hours=24):
        warnings.append(f"{(ref - inj).total_seconds() / 3600:.1f} h between injection and "
                        "reference time: check the dates")
    dose, w = _dose_bq(item, file_hint, series_uid)
    warnings += w
    weight, w = _weight_kg(h0, file_hint, series_uid)
    warnings += w
    half_life = _half_life_s(item, file_hint, series_uid)
    decay = _decay_factor(decay_correction, ref, inj, half_life, file_hint, series_uid)

    factor = weight * 1000.0 / (dose * decay)
    for msg in warnings:
        log.warning("SUV series %s: %s", series_uid, msg)
    return SUVAudit(
        suvbw_factor=float(factor), units=units, decay_correction=decay_correction,
        reference_time_iso=_iso(ref), reference_time_rule=rule, injection_time_iso=_iso(inj),
        half_life_s=half_life, dose_bq=dose, weight_kg=weight, warnings=tuple(warnings),
        bqml_per_unit=bqml_per_unit, decay_factor=decay, series_uid=series_uid,
    )


def to_suv(activity: Volume, audit: SUVAudit) -> Volume:
    """Convert a PET activity volume to SUVbw.

    Parameters
    ----------
    activity : Volume
        From :func:`pipeline.io.dicom.load_pet_activity`, values in ``audit.units``.
    audit : SUVAudit
        From :func:`suv_audit` on the same series.

    Returns
    -------
    Volume
        float32 (z, y, x) SUVbw (g/mL), same grid, ``units="SUVbw"``, notes extended.

    Raises
    ------
    SUVError
        If the volume's units or series differ from the audit's.
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
    scale = np.float32(audit.bqml_per_unit * audit.suvbw_factor)
    arr = (activity.array.astype(np.float32) * scale).astype(np.float32)
    note = (f"SUVbw = {audit.units} x {audit.bqml_per_unit:g} x {audit.suvbw_factor:.6g} "
            f"(reference {audit.reference_time_iso} by {audit.reference_time_rule})")
    return replace(activity, array=arr, units="SUVbw", notes=activity.notes + (note,))
