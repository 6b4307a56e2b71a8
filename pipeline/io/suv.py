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
     ``suv_per_stored_unit = 1``: never converted a second time.
   * ``GML`` with SUVType ``LBM`` / ``LBM_JAMES128`` / ``LBM_JANMA`` / ``IBW`` / ``BSA``, and
     ``CM2ML`` (SUVbsa, cm2/mL): a stored SUV of another kind (``suv_kind`` "lbm", "ibw",
     "bsa"). Since ``SUVx = C X / D`` for the body-size measure X, ``SUVbw = SUVx W / X``: it
     is converted to SUVbw (``suv_per_stored_unit = W / X``, no decay involved) when the inputs
     of X are in the header -- LBM: PatientSex (0010,0040), PatientSize (0010,1020) and
     PatientWeight (0010,1030), by James 1976 (SUVType LBM_JAMES128) or Janmahasatian 2005
     (LBM_JANMA); plain LBM names no formula: ``suv.lbm_formula_assumed``, default
     Janmahasatian (IBSI-recommended; set ``james`` for a scanner whose SUL used James); IBW:
     Devine 1974 (sex, height); BSA: Du Bois 1916 (weight, height). ``suv_kind_formula`` says
     which. Otherwise SUVbw is unavailable and the stored values are reported as they are
     (``to_suv(..., kind="stored")``, units ``SUVlbm`` / ``SUVibw`` / ``SUVbsa``), never
     compared with SUVbw thresholds (``suv_is_bw`` False).
   * every other unit: no SUV.

2. **Reference time** (DecayCorrection START), as QIBA: SeriesDate/SeriesTime, unless it is
   later than the earliest acquisition (series re-created after the scan); then the GE private
   "PET scan_datetime" (0009,xx0D) of GEMS_PETD_01; then, when a slice has FrameReferenceTime
   (0054,1300) and ActualFrameDuration (0018,1242), the scan start back-computed from them
   (``t_acq - FRT + decay-weighted mid-frame time``); only without them the earliest
   AcquisitionDate/Time. ``decay_reference_source`` says which (:class:`DecayReferenceSource`).
   When the chosen time and the back-computed one differ by more than 60 s, a warning says so
   (vendors differ in what FrameReferenceTime is relative to, so it is not compared with a
   usable SeriesTime).

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

7. **Plausibility** (:class:`SUVPlausibility`, config ``suv:``): an uptake time (reference -
   injection) negative or above 5 half-lives, a weight outside 2-350 kg after unit repair (or
   a value above 1000 that as grams is below 20 kg: ambiguous, e.g. the placeholder 9999), an
   injected activity outside the nuclide's range (F-18 37-1110 MBq ...; an unknown nuclide
   only the generic range), an acquisition or injection before 1990 or in the future (now, or
   the header's InstanceCreationDate/Time), and an SUVmax above 300 in the converted volume
   (:func:`check_suv_bound`) each refuse the SUV: ``suv_per_stored_unit`` None, the reason
   naming the tag and value, one :class:`PlausibilityRefusal` each (severity "warning";
   :func:`audit_failure_records` turns them into failure-table rows). The activity
   concentration (Bq/mL) stays available.

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
from enum import Enum

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
#: A half-life within this relative difference of a known nuclide's names that nuclide (for the
#: per-nuclide dose range).
HALF_LIFE_MATCH_REL = 0.01


class SUVKind(str, Enum):
    """What the body-size normaliser of an SUV is (DICOM SUVType (0054,1006) / Units)."""

    BW = "bw"     # body weight (g/mL)
    LBM = "lbm"   # lean body mass, SUL (g/mL)
    IBW = "ibw"   # ideal body weight (g/mL)
    BSA = "bsa"   # body surface area (cm2/mL)


class DecayReferenceSource(str, Enum):
    """Which header value gave the decay reference time."""

    SERIES_TIME = "series_time"
    GE_PRIVATE_SCAN_DATETIME = "ge_private_scan_datetime"
    FRAME_REFERENCE_TIME = "frame_reference_time"
    EARLIEST_ACQUISITION_TIME = "earliest_acquisition_time"
    INJECTION_TIME = "injection_time"          # DecayCorrection ADMIN
    PER_SLICE_MID_FRAME = "per_slice_mid_frame"  # DecayCorrection NONE
    NONE = ""                                  # stored SUV, or not determined


#: SUVType (0054,1006) of Units GML -> stored SUV kind. LBM_JAMES128 / LBM_JANMA name the lean
#: body mass formula; plain LBM does not (see ``SUVPlausibility.lbm_formula_assumed``).
STORED_SUV_TYPES: dict[str, SUVKind] = {
    "LBM": SUVKind.LBM, "LBM_JAMES128": SUVKind.LBM, "LBM_JANMA": SUVKind.LBM,
    "IBW": SUVKind.IBW, "BSA": SUVKind.BSA,
}

#: Volume units of each SUV kind (what :func:`to_suv` writes in ``Volume.units``).
SUV_KIND_UNITS = {SUVKind.BW: "SUVbw", SUVKind.LBM: "SUVlbm", SUVKind.IBW: "SUVibw",
                  SUVKind.BSA: "SUVbsa"}

#: Default injected-activity ranges (MBq) per radionuclide; see ``suv.dose_range_mbq`` in
#: configs/config.yaml (the schema holds the same defaults).
DEFAULT_DOSE_RANGE_MBQ: dict[str, tuple[float, float]] = {
    "F-18": (37.0, 1110.0), "Ga-68": (20.0, 500.0), "Zr-89": (10.0, 185.0),
    "C-11": (74.0, 1500.0), "N-13": (100.0, 1500.0), "O-15": (185.0, 3000.0),
    "Cu-64": (37.0, 400.0), "Rb-82": (185.0, 2600.0),
}


@dataclass(frozen=True)
class SUVPlausibility:
    """Plausibility limits beyond which a computed SUV is refused (config ``suv:``).

    Attributes
    ----------
    max_uptake_half_lives : float
        Injection-to-reference time above this many half-lives refuses the SUV (a negative
        uptake time always does).
    weight_min_kg, weight_max_kg : float
        PatientWeight (after unit repair) outside this range refuses the SUV.
    weight_grams_repair_min_kg : float
        A PatientWeight above 1000 is read as grams only when that gives at least this many kg;
        below it the value is ambiguous (e.g. a placeholder 9999) and the SUV is refused.
    dose_range_mbq : tuple of (nuclide, min MBq, max MBq)
        Injected activity range per radionuclide (nuclide named by its half-life).
    dose_generic_range_mbq : (float, float)
        Range for a nuclide without its own range.
    earliest_date : str
        YYYY-MM-DD; an acquisition or injection before it refuses the SUV.
    future_tolerance_h : float
        An acquisition or injection later than now (or than InstanceCreationDate/Time of the
        header) by more than this refuses the SUV.
    max_suv : float
        SUVmax (g/mL) above this in the converted volume refuses the SUV
        (:func:`check_suv_bound`).
    lbm_formula_assumed : {"janmahasatian", "james"}
        Formula assumed for stored SUVType LBM when the header does not name one.
    """

    max_uptake_half_lives: float = 5.0
    weight_min_kg: float = 2.0
    weight_max_kg: float = 350.0
    weight_grams_repair_min_kg: float = 20.0
    dose_range_mbq: tuple[tuple[str, float, float], ...] = tuple(
        (k, lo, hi) for k, (lo, hi) in DEFAULT_DOSE_RANGE_MBQ.items())
    dose_generic_range_mbq: tuple[float, float] = (1.0, 20000.0)
    earliest_date: str = "1990-01-01"
    future_tolerance_h: float = 24.0
    max_suv: float = 300.0
    lbm_formula_assumed: str = "janmahasatian"

    @classmethod
    def from_config(cls, cfg: dict | None) -> SUVPlausibility:
        """Build from the whole config (its ``suv`` section) or the ``suv`` section itself."""
        if not cfg:
            return cls()
        s = cfg.get("suv", cfg) if isinstance(cfg, dict) else {}
        s = dict(s or {})
        d = cls()
        ranges = dict(DEFAULT_DOSE_RANGE_MBQ)
        generic = d.dose_generic_range_mbq
        for k, v in dict(s.get("dose_range_mbq", {}) or {}).items():
            if k == "generic":
                generic = (float(v[0]), float(v[1]))
            else:
                ranges[k] = (float(v[0]), float(v[1]))
        return cls(
            max_uptake_half_lives=float(s.get("max_uptake_half_lives", d.max_uptake_half_lives)),
            weight_min_kg=float(s.get("weight_min_kg", d.weight_min_kg)),
            weight_max_kg=float(s.get("weight_max_kg", d.weight_max_kg)),
            weight_grams_repair_min_kg=float(s.get("weight_grams_repair_min_kg",
                                                   d.weight_grams_repair_min_kg)),
            dose_range_mbq=tuple((k, lo, hi) for k, (lo, hi) in ranges.items()),
            dose_generic_range_mbq=generic,
            earliest_date=str(s.get("earliest_date", d.earliest_date)),
            future_tolerance_h=float(s.get("future_tolerance_h", d.future_tolerance_h)),
            max_suv=float(s.get("max_suv", d.max_suv)),
            lbm_formula_assumed=str(s.get("lbm_formula_assumed", d.lbm_formula_assumed)),
        )

    def dose_range_for(self, nuclide: str) -> tuple[float, float, str]:
        """(min MBq, max MBq, what the range is for) of ``nuclide`` ("" = unknown)."""
        for name, lo, hi in self.dose_range_mbq:
            if name == nuclide:
                return lo, hi, nuclide
        lo, hi = self.dose_generic_range_mbq
        return lo, hi, f"any radionuclide ({nuclide or 'unknown nuclide'})"


#: Limits used when none are given (the config defaults).
DEFAULT_PLAUSIBILITY = SUVPlausibility()


@dataclass(frozen=True)
class PlausibilityRefusal:
    """One implausible header value (or SUV) that made the SUV unavailable.

    Attributes
    ----------
    field : str
        What is implausible: ``"uptake_time"``, ``"weight"``, ``"dose"``, ``"date"``,
        ``"suv_max"``.
    tag : str
        The DICOM attribute at fault, keyword and number, e.g. ``"PatientWeight (0010,1030)"``
        (``"SUVmax"`` for the SUV bound).
    value : str
        The value as found (header text, or the computed SUVmax).
    limit : str
        The limit it breaks, with units.
    message : str
        The full sentence, ending with "SUV refused".
    severity : str
        ``"warning"``: the study goes on without SUV (activity concentration still reported).
    """

    field: str
    tag: str
    value: str
    limit: str
    message: str
    severity: str = "warning"

    def as_dict(self) -> dict:
        """Plain dict (JSON-serialisable)."""
        return dict(self.__dict__)


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
        :class:`SUVKind` value of the stored values when they already are SUV (Units GML:
        SUVType BW / LBM / IBW / BSA; Units CM2ML: ``"bsa"``), else ``"bw"`` (the SUV computed
        from Bq/mL is SUVbw).
    suv_kind_formula : str
        For a stored SUVlbm / SUVibw / SUVbsa: the formula of that kind used to convert it to
        SUVbw (and whether it was assumed), "" otherwise.
    decay_correction : str
        DecayCorrection (0054,1102): START, ADMIN or NONE.
    reference_time_iso, reference_time_rule : str
        The decay reference time (ISO 8601, no time zone) and the rule that chose it.
    decay_reference_source : str
        :class:`DecayReferenceSource` value: which header value gave the reference time.
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
        Janmahasatian lean body mass; for a stored SUVlbm converted to SUVbw, the lean body
        mass of the formula named in ``suv_kind_formula``.
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
    plausibility_refusals : tuple of PlausibilityRefusal
        Header values (or the SUVmax) beyond the limits of :class:`SUVPlausibility`; any one
        makes SUVbw unavailable (the activity concentration stays available). The factors
        computed from the refused values are kept for the audit only.
    warnings : tuple of str
        Repairs and doubtful values.
    series_uid : str
        SeriesInstanceUID of the PET series.
    file : str
        The file (or folder) the audit was computed from (``file_hint``).
    """

    suv_per_stored_unit: float | None = None
    suvbw_factor: float | None = None
    bqml_per_unit: float | None = None
    units: str = ""
    units_rule: str = ""
    suv_kind: str = SUVKind.BW.value
    suv_kind_formula: str = ""
    decay_correction: str = ""
    reference_time_iso: str = ""
    reference_time_rule: str = ""
    decay_reference_source: str = DecayReferenceSource.NONE.value
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
    plausibility_refusals: tuple[PlausibilityRefusal, ...] = ()
    warnings: tuple[str, ...] = ()
    series_uid: str = ""
    file: str = ""

    @property
    def available(self) -> bool:
        """True when SUVbw can be computed."""
        return self.suv_per_stored_unit is not None

    @property
    def suv_is_bw(self) -> bool:
        """True when :func:`to_suv` gives SUVbw, which may be compared with SUVbw thresholds.

        False when SUV is unavailable, including a stored SUVlbm / SUVibw / SUVbsa that cannot
        be converted (:attr:`stored_suv_available`).
        """
        return self.suv_per_stored_unit is not None

    @property
    def stored_suv_available(self) -> bool:
        """True when the stored values already are an SUV of kind ``suv_kind`` that is reported
        as stored (``to_suv(..., kind="stored")``) although it is not (convertible to) SUVbw."""
        return (self.suv_per_stored_unit is None and self.units in ("GML", "CM2ML")
                and self.suv_kind != SUVKind.BW.value and not self.plausibility_refusals)

    @property
    def severity(self) -> str:
        """``"warning"`` when a plausibility limit refused the SUV, else ``""``."""
        return "warning" if self.plausibility_refusals else ""

    def as_dict(self) -> dict:
        """Plain dict (JSON-serialisable) for provenance and the ``hitit suv`` audit."""
        d = dict(self.__dict__)
        d["warnings"] = list(self.warnings)
        d["slice_factors"] = list(self.slice_factors)
        d["plausibility_refusals"] = [r.as_dict() for r in self.plausibility_refusals]
        d["suv_is_bw"] = self.suv_is_bw
        d["severity"] = self.severity
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
        raise SUVError(f"not a DICOM time: {value!r} (expected HHMMSS.FFFFFF)",
                       hint="correct the DICOM TM value (hours 00-23, minutes and seconds 00-59)")
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
    out = {"units": units, "bqml_per_unit": None, "vendor": None, "kind": SUVKind.BW,
           "suv_type": "", "already_suv": False, "rule": ""}
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
        kind = STORED_SUV_TYPES.get(suv_type)
        if kind is None:
            info.update(units_rule=f"GML with SUVType {suv_type}: unknown SUV kind")
            raise _err(
                f"PET values are stored as SUV of unknown SUVType {suv_type!r} (Units GML): "
                "expected BW, LBM, LBM_JAMES128, LBM_JANMA, IBW or BSA",
                "SUVType", file_hint, series_uid,
                "export the PET in Bq/mL (BQML) or as SUVbw to compare with SUVbw thresholds",
            )
        out.update(already_suv=True, kind=kind, suv_type=suv_type,
                   rule=f"GML with SUVType {suv_type}: stored SUV{kind.value}")
        return out
    if units == "CM2ML":
        out.update(already_suv=True, kind=SUVKind.BSA, suv_type="",
                   rule="CM2ML: stored SUVbsa (cm2/mL)")
        return out
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
        except (ValueError, SUVError):
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
                    file_hint: str, series_uid: str
                    ) -> tuple[datetime, str, DecayReferenceSource, str, list[str]]:
    """(reference time, rule, source, back-computed ISO, warnings) for DecayCorrection START.

    SeriesDate/SeriesTime unless later than the earliest acquisition (series re-created after
    the scan); then the GE private scan_datetime; then the scan start back-computed from
    FrameReferenceTime and ActualFrameDuration when a slice has them; then the earliest
    AcquisitionDate/Time.
    """
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
        ref, rule, source = series_dt, "SeriesDate/SeriesTime", DecayReferenceSource.SERIES_TIME
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
            except (ValueError, SUVError):
                warnings.append(f"GE private PET scan_datetime (0009,100D) {_text(ge)!r} is not a "
                                "DICOM date-time; ignored")
        if ge_dt is not None:
            ref, rule = ge_dt, "GE private PET scan_datetime (0009,100D)"
            source = DecayReferenceSource.GE_PRIVATE_SCAN_DATETIME
        elif back is not None:
            ref, rule = back, ("back-computed: AcquisitionTime - FrameReferenceTime + "
                               "decay-weighted mid-frame time")
            source = DecayReferenceSource.FRAME_REFERENCE_TIME
            if earliest is not None and inj is not None and earliest < inj:
                warnings.append(f"earliest acquisition {_iso(earliest)} precedes the injection "
                                f"{_iso(inj)}: reference time back-computed from frame timing")
        elif earliest is not None:
            ref, rule = earliest, "earliest AcquisitionDate/Time"
            source = DecayReferenceSource.EARLIEST_ACQUISITION_TIME
        else:
            missing = "SeriesDate" if series_day is None else "SeriesTime"
            raise _err(
                f"no reference time: {missing} is absent and no AcquisitionDate/Time is present",
                missing, file_hint, series_uid,
                "re-export the PET with SeriesDate/SeriesTime (needed for decay correction)",
            )
        warnings.append(f"decay reference time taken from the {rule}")
    if (back is not None and source in (DecayReferenceSource.GE_PRIVATE_SCAN_DATETIME,
                                        DecayReferenceSource.EARLIEST_ACQUISITION_TIME)
            and abs((back - ref).total_seconds()) > BACK_COMPUTE_WARN_S):
        warnings.append(f"reference time {_iso(ref)} ({rule}) differs by "
                        f"{(back - ref).total_seconds():.0f} s from the scan start back-computed "
                        f"from FrameReferenceTime ({_iso(back)})")
    if (source == DecayReferenceSource.FRAME_REFERENCE_TIME and earliest is not None
            and abs((back - earliest).total_seconds()) > BACK_COMPUTE_WARN_S):
        warnings.append(f"scan start back-computed from FrameReferenceTime ({_iso(back)}) differs "
                        f"by {(back - earliest).total_seconds():.0f} s from the earliest "
                        f"AcquisitionDate/Time ({_iso(earliest)}); the back-computed time is used")
    return ref, rule, source, _iso(back), warnings


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
    raise SUVError(f"Janmahasatian lean body mass needs PatientSex M or F, found {sex!r}",
                   tag=tag_label("PatientSex"),
                   hint="record the patient's sex (M/F) at the scanner; SUL stays empty")


def james_lbm_kg(weight_kg: float, height_m: float, sex: str) -> float:
    """Lean body mass (kg) by James 1976 ("James 128", SUVType LBM_JAMES128).

    ``1.10 W - 128 (W / H)^2`` for males, ``1.07 W - 148 (W / H)^2`` for females, W in kg,
    H in cm. Not positive for very obese patients (then :class:`SUVError`).
    """
    ratio = weight_kg / (height_m * 100.0)
    s = sex.strip().upper()
    if s == "M":
        lbm = 1.10 * weight_kg - 128.0 * ratio**2
    elif s == "F":
        lbm = 1.07 * weight_kg - 148.0 * ratio**2
    else:
        raise SUVError(f"James lean body mass needs PatientSex M or F, found {sex!r}",
                       tag=tag_label("PatientSex"), hint="record the patient's sex (M/F)")
    if not lbm > 0:
        raise SUVError(f"James lean body mass is not positive ({lbm:.1f} kg) for {weight_kg:g} kg "
                       f"and {height_m:g} m", tag=tag_label("PatientWeight"),
                       hint="the James formula fails for BMI above about 40 (F) / 45 (M)")
    return lbm


def devine_ibw_kg(height_m: float, sex: str) -> float:
    """Ideal body weight (kg) by Devine 1974: 50 kg (males) or 45.5 kg (females) + 2.3 kg per
    inch of height above 5 feet (60 in; 1 in = 2.54 cm)."""
    inches = height_m * 100.0 / 2.54
    s = sex.strip().upper()
    if s not in ("M", "F"):
        raise SUVError(f"Devine ideal body weight needs PatientSex M or F, found {sex!r}",
                       tag=tag_label("PatientSex"), hint="record the patient's sex (M/F)")
    ibw = (50.0 if s == "M" else 45.5) + 2.3 * (inches - 60.0)
    if not ibw > 0:
        raise SUVError(f"Devine ideal body weight is not positive ({ibw:.1f} kg) for height "
                       f"{height_m:g} m", tag=tag_label("PatientSize"),
                       hint="check PatientSize (0010,1020), in metres")
    return ibw


def dubois_bsa_m2(weight_kg: float, height_m: float) -> float:
    """Body surface area (m^2) by Du Bois & Du Bois 1916: ``0.007184 W^0.425 H^0.725``, W in kg,
    H in cm."""
    return 0.007184 * weight_kg**0.425 * (height_m * 100.0) ** 0.725


# --------------------------------------------------------------------------- plausibility
def _fmt_duration(seconds: float) -> str:
    a = abs(seconds)
    if a < 120:
        return f"{seconds:.0f} s"
    if a < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _nuclide(item: Dataset | None, half_life_s: float | None) -> str:
    """The nuclide name ("F-18" ...) from RadionuclideCodeSequence or the half-life, or ""."""
    if item is not None:
        seq = item.get("RadionuclideCodeSequence", None)
        code = str(seq[0].get("CodeValue", "")) if seq else ""
        if code in HALF_LIVES_S:
            return HALF_LIVES_S[code][0]
    if half_life_s:
        for name, hl in HALF_LIVES_S.values():
            if abs(half_life_s / hl - 1.0) <= HALF_LIFE_MATCH_REL:
                return name
    return ""


def _refusal(field: str, keyword_or_tag: str, value, limit: str, text: str
             ) -> PlausibilityRefusal:
    tag = tag_label(keyword_or_tag) if " (" not in keyword_or_tag else keyword_or_tag
    return PlausibilityRefusal(field=field, tag=tag, value=str(value), limit=limit,
                               message=f"{tag} {value} {text}: SUV refused")


def _check_weight(h0: Dataset, weight_kg: float, limits: SUVPlausibility
                  ) -> list[PlausibilityRefusal]:
    raw = _text(h0.PatientWeight)
    lo, hi = limits.weight_min_kg, limits.weight_max_kg
    if float(raw) > WEIGHT_GRAMS_THRESHOLD and weight_kg < limits.weight_grams_repair_min_kg:
        return [_refusal(
            "weight", "PatientWeight", raw,
            f"{limits.weight_grams_repair_min_kg:g} kg minimum for a gram repair",
            f"is ambiguous: as kg above {hi:g} kg, as grams {weight_kg:g} kg, below the "
            f"{limits.weight_grams_repair_min_kg:g} kg accepted for a gram repair (placeholder?)")]
    if not lo <= weight_kg <= hi:
        repaired = f"({weight_kg:g} kg after unit repair) " if float(raw) != weight_kg else "kg "
        return [_refusal("weight", "PatientWeight", raw, f"{lo:g}-{hi:g} kg",
                         f"{repaired}is outside {lo:g}-{hi:g} kg")]
    return []


def _check_dose(item: Dataset, dose_bq: float, half_life_s: float | None,
                limits: SUVPlausibility) -> list[PlausibilityRefusal]:
    lo, hi, what = limits.dose_range_for(_nuclide(item, half_life_s))
    mbq = dose_bq / 1e6
    if lo <= mbq <= hi:
        return []
    return [_refusal("dose", "RadionuclideTotalDose", _text(item.RadionuclideTotalDose),
                     f"{lo:g}-{hi:g} MBq",
                     f"({mbq:g} MBq) is outside {lo:g}-{hi:g} MBq for {what}")]


def _check_uptake(inj_keyword: str, inj_raw: str, first: datetime, last: datetime,
                  inj: datetime, half_life_s: float, nuclide: str, what: str,
                  limits: SUVPlausibility) -> list[PlausibilityRefusal]:
    """Uptake time (reference - injection) negative or above ``max_uptake_half_lives``."""
    n = limits.max_uptake_half_lives
    name = nuclide or "the radionuclide"
    if first < inj:
        dt = (inj - first).total_seconds()
        return [_refusal("uptake_time", inj_keyword, inj_raw, "uptake time >= 0",
                         f"is {_fmt_duration(dt)} after the {what} {_iso(first)} (injection "
                         "after the reference time: negative uptake time)")]
    dt = (last - inj).total_seconds()
    if dt > n * half_life_s:
        return [_refusal("uptake_time", inj_keyword, inj_raw,
                         f"{n:g} half-lives ({_fmt_duration(n * half_life_s)})",
                         f"is {_fmt_duration(dt)} before the {what}, more than {n:g} "
                         f"half-lives of {name} ({_fmt_duration(half_life_s)})")]
    return []


def _check_date(keyword_or_tag: str, raw: str, dt: datetime, limits: SUVPlausibility,
                now: datetime, created: datetime | None) -> list[PlausibilityRefusal]:
    earliest = datetime.strptime(limits.earliest_date, "%Y-%m-%d")
    tol = timedelta(hours=limits.future_tolerance_h)
    if dt < earliest:
        return [_refusal("date", keyword_or_tag, raw, f"not before {limits.earliest_date}",
                         f"is before {limits.earliest_date}")]
    if dt > now + tol:
        return [_refusal("date", keyword_or_tag, raw, f"not after now + "
                         f"{limits.future_tolerance_h:g} h",
                         f"is in the future (now {_iso(now.replace(microsecond=0))})")]
    if created is not None and dt > created + tol:
        return [_refusal("date", keyword_or_tag, raw, "not after InstanceCreationDate/Time + "
                         f"{limits.future_tolerance_h:g} h",
                         f"is after the file's creation (InstanceCreationDate/Time "
                         f"{_iso(created)})")]
    return []


def _instance_created(h0: Dataset) -> datetime | None:
    if not has_value(h0, "InstanceCreationDate"):
        return None
    try:
        day = _parse_date(h0.InstanceCreationDate)
        return day + (_parse_time(h0.InstanceCreationTime)
                      if has_value(h0, "InstanceCreationTime") else timedelta(hours=23, minutes=59))
    except (ValueError, SUVError):
        return None


def check_suv_bound(suv_volume: Volume | None, audit: SUVAudit,
                    limits: SUVPlausibility | dict | None = None
                    ) -> tuple[SUVAudit, PlausibilityRefusal | None]:
    """Refuse an SUV volume whose maximum exceeds the physical bound ``limits.max_suv``.

    Parameters
    ----------
    suv_volume : Volume or None
        From :func:`to_suv` (units ``SUVbw``, ``SUL``, ``SUVlbm``, ``SUVibw``; ``SUVbsa``
        values, in cm2/mL, are not checked). None: nothing to check.
    audit : SUVAudit
        The audit the volume was computed with.
    limits : SUVPlausibility, the config dict, or None (config defaults)

    Returns
    -------
    (SUVAudit, PlausibilityRefusal or None)
        Unchanged audit and None when within the bound; otherwise the audit with SUVbw made
        unavailable (``suv_per_stored_unit`` None, ``suv_reason`` the refusal, the refusal
        appended to ``plausibility_refusals``) and the refusal. Drop the volume then.
    """
    if suv_volume is None or suv_volume.units == "SUVbsa":
        return audit, None
    lim = limits if isinstance(limits, SUVPlausibility) else SUVPlausibility.from_config(limits)
    arr = np.asarray(suv_volume.array)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return audit, None
    vmax = float(finite.max())
    if vmax <= lim.max_suv:
        return audit, None
    r = PlausibilityRefusal(
        field="suv_max", tag="SUVmax", value=f"{vmax:.6g}", limit=f"{lim.max_suv:g} g/mL",
        message=(f"SUVmax {vmax:.6g} ({suv_volume.units}) of the PET volume is above the "
                 f"physical bound {lim.max_suv:g} g/mL: SUV refused (check weight, dose and "
                 "dates)"))
    log.warning("SUV series %s: %s", audit.series_uid, r.message)
    new = replace(audit, suv_per_stored_unit=None, slice_factors=(),
                  suv_reason="; ".join(filter(None, [r.message, audit.suv_reason])),
                  plausibility_refusals=audit.plausibility_refusals + (r,))
    return new, r


def audit_failure_records(audit: SUVAudit, patient_id: str, study_uid: str) -> list[dict]:
    """One failure-table row per plausibility refusal of ``audit`` (severity "warning").

    Returns
    -------
    list of dict
        Keys of :data:`pipeline.io.tables.FAILURE_COLUMNS` plus ``"severity"``; empty when
        the SUV was not refused for plausibility.
    """
    rows = []
    for r in audit.plausibility_refusals:
        rows.append({
            "patient_id": patient_id, "study_uid": study_uid, "stage": SUVError.stage,
            "error_class": "SUVPlausibilityWarning", "message": r.message,
            "file": audit.file, "series_uid": audit.series_uid, "tag": r.tag,
            "hint": ("correct the value at the scanner or in the RIS and re-export; SUV columns "
                     "stay empty, activity concentration (Bq/mL) is still reported"),
            "severity": r.severity,
        })
    return rows


# --------------------------------------------------------------------------- public API
def suv_audit(headers: list[Dataset], *, file_hint: str = "", strict: bool = True,
              limits: SUVPlausibility | None = None, now: datetime | None = None) -> SUVAudit:
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
    limits : SUVPlausibility, optional
        Plausibility limits (``SUVPlausibility.from_config(cfg)``); default: the config
        defaults (:data:`DEFAULT_PLAUSIBILITY`).
    now : datetime, optional
        Local (naive) time against which future dates are judged; default the clock.

    Returns
    -------
    SUVAudit

    Raises
    ------
    SUVError
        (strict only) Missing RadiopharmaceuticalInformationSequence (0054,0016),
        RadionuclideTotalDose (0018,1074), PatientWeight (0010,1030), RadionuclideHalfLife
        (0018,1075), injection or reference time; Units that are not SUVbw-convertible; a
        value beyond the plausibility limits. The error names the tag and the file.
    """
    if not headers:
        raise SUVError("no PET headers given", file=file_hint or None,
                       hint="pass the headers of the PET series")
    limits = limits or DEFAULT_PLAUSIBILITY
    now = now or datetime.now()
    h0 = headers[0]
    file_hint = file_hint or str(getattr(h0, "filename", "") or "")
    series_uid = str(h0.get("SeriesInstanceUID", ""))
    info: dict = {"series_uid": series_uid, "file": file_hint,
                  "units": str(h0.get("Units", "") or "").upper(),
                  "decay_correction": str(h0.get("DecayCorrection", "") or "").upper(),
                  "sex": str(h0.get("PatientSex", "") or "").strip().upper()}
    warnings: list[str] = []
    refusals: list[PlausibilityRefusal] = []
    try:
        _fill(headers, h0, info, warnings, file_hint, series_uid, limits, now, refusals)
    except SUVError as exc:
        info["suv_per_stored_unit"] = None
        info["slice_factors"] = ()
        info["suv_reason"] = str(exc)
        info["plausibility_refusals"] = tuple(refusals)
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
        info["plausibility_refusals"] = tuple(refusals)
        if strict:
            raise err from exc
    for msg in warnings:
        log.warning("SUV series %s: %s", series_uid, msg)
    for r in refusals:
        log.warning("SUV series %s: %s", series_uid, r.message)
    fields = {k: v for k, v in info.items() if k in SUVAudit.__dataclass_fields__}
    for k in ("suv_kind", "decay_reference_source"):
        if isinstance(fields.get(k), Enum):
            fields[k] = fields[k].value
    return SUVAudit(warnings=tuple(dict.fromkeys(warnings)), **fields)


def _refuse(refusals: list[PlausibilityRefusal], file_hint: str, series_uid: str) -> None:
    """Raise the SUVError that makes SUVbw unavailable when any plausibility limit is broken."""
    if refusals:
        raise SUVError(
            "; ".join(r.message for r in refusals), file=file_hint or None,
            series_uid=series_uid or None, tag=refusals[0].tag,
            hint="correct the value at the scanner or in the RIS and re-export; the activity "
                 "concentration (Bq/mL) is still reported",
        )


def _series_times(headers: list[Dataset]
                  ) -> tuple[datetime | None, datetime | None, list[datetime]]:
    """(SeriesDate, SeriesDate + SeriesTime, acquisition date-times of the slices)."""
    h0 = headers[0]
    series_day = _parse_date(h0.SeriesDate) if has_value(h0, "SeriesDate") else None
    series_dt = (series_day + _parse_time(h0.SeriesTime)
                 if series_day is not None and has_value(h0, "SeriesTime") else None)
    acq = [a for a in (_acq_datetime(h, series_day) for h in headers) if a is not None]
    return series_day, series_dt, acq


def _stored_to_bw(kind: SUVKind, suv_type: str, weight: float | None, hgt: float | None,
                  sex: str, limits: SUVPlausibility, file_hint: str, series_uid: str
                  ) -> tuple[float, str]:
    """(SUVbw per stored unit, formula text) for a stored SUVlbm / SUVibw / SUVbsa.

    SUVx = C X / D for a body-size measure X, so SUVbw = SUVx W / X (W and X in g; for BSA,
    X in cm2). Raises SUVError naming the missing input.
    """
    needs_sex = kind in (SUVKind.LBM, SUVKind.IBW)
    missing = [k for k, ok in (("PatientWeight", weight is not None),
                               ("PatientSize", hgt is not None),
                               ("PatientSex", not needs_sex or sex in ("M", "F"))) if not ok]
    if missing:
        raise _err(
            f"PET values are stored as SUV{kind.value} (Units {'CM2ML' if not suv_type else 'GML'}"
            f"{', SUVType ' + suv_type if suv_type else ''}), not SUVbw, and cannot be converted: "
            f"{', '.join(missing)} absent or unusable; reported as stored SUV{kind.value}, never "
            "compared with SUVbw thresholds", missing[0], file_hint, series_uid,
            "record the patient's weight, height and sex at the scanner, or export the PET in "
            "Bq/mL (BQML)",
        )
    w_g = weight * 1000.0
    if kind == SUVKind.LBM:
        if suv_type == "LBM_JAMES128":
            formula, assumed = "james", ""
        elif suv_type == "LBM_JANMA":
            formula, assumed = "janmahasatian", ""
        else:
            formula = limits.lbm_formula_assumed
            assumed = (" (assumed: SUVType LBM does not name the formula; config "
                       "suv.lbm_formula_assumed)")
        if formula == "james":
            x_kg = james_lbm_kg(weight, hgt, sex)
            name = "James 1976: 1.10 W - 128 (W/H_cm)^2 (M), 1.07 W - 148 (W/H_cm)^2 (F)"
        else:
            x_kg = janmahasatian_lbm_kg(weight, hgt, sex)
            name = ("Janmahasatian 2005: 9270 W / (6680 + 216 BMI) (M), "
                    "9270 W / (8780 + 244 BMI) (F)")
        text = f"SUVbw = SUVlbm x W / LBM, LBM {x_kg:.2f} kg by {name}{assumed}"
        return w_g / (x_kg * 1000.0), text
    if kind == SUVKind.IBW:
        x_kg = devine_ibw_kg(hgt, sex)
        text = (f"SUVbw = SUVibw x W / IBW, IBW {x_kg:.2f} kg by Devine 1974: 50 (M) / 45.5 (F) "
                "kg + 2.3 kg per inch above 60 in (assumed: DICOM SUVType IBW names no formula)")
        return w_g / (x_kg * 1000.0), text
    bsa = dubois_bsa_m2(weight, hgt)
    text = (f"SUVbw = SUVbsa x W[g] / BSA[cm2], BSA {bsa:.4f} m2 by Du Bois 1916: 0.007184 "
            "W^0.425 H_cm^0.725 (assumed: the header names no BSA formula)")
    return w_g / (bsa * 1e4), text


def _fill(headers, h0, info: dict, warnings: list[str], file_hint: str, series_uid: str,
          limits: SUVPlausibility = DEFAULT_PLAUSIBILITY, now: datetime | None = None,
          refusals: list[PlausibilityRefusal] | None = None) -> None:
    """Fill ``info`` step by step; raises SUVError at the first step that blocks SUVbw, and at
    the end when a plausibility limit is broken (``refusals``)."""
    now = now or datetime.now()
    refusals = [] if refusals is None else refusals
    created = _instance_created(h0)
    # values needed by several steps (collected before any can fail)
    try:
        w, ww = _weight_kg(h0, file_hint, series_uid)
        info["weight_kg"] = w
        warnings += ww
        refusals += _check_weight(h0, w, limits)
    except SUVError:
        pass
    hgt, wh = _height_m(h0)
    info["height_m"] = hgt
    warnings += wh
    try:
        series_day, series_dt, acq = _series_times(headers)
    except (ValueError, SUVError):  # unparseable: reported by the decay steps that need them
        series_day, series_dt, acq = None, None, []
    # acquisition dates: before 1990 or in the future (series, else earliest acquisition)
    if series_day is not None:
        refusals += _check_date("SeriesDate", _text(h0.SeriesDate), series_dt or series_day,
                                limits, now, created)
    if acq and not any(r.field == "date" for r in refusals):
        first = min(acq)
        hf = next(h for h in headers if _acq_datetime(h, series_day) == first)
        if has_value(hf, "AcquisitionDateTime"):
            kw, raw = "AcquisitionDateTime", _text(hf.AcquisitionDateTime)
        else:
            kw = "AcquisitionDate" if has_value(hf, "AcquisitionDate") else "SeriesDate"
            raw = _text(hf.get(kw, ""))
        refusals += _check_date(kw, raw, first, limits, now, created)

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
        warnings.append(u["rule"])
        info["sul_reason"] = (f"SUL is not derived from a stored SUV (Units {u['units']}): it needs "
                              "the activity concentration")
        if u["kind"] == SUVKind.BW:
            factor = 1.0
        else:
            factor, formula = _stored_to_bw(u["kind"], u["suv_type"], info.get("weight_kg"), hgt,
                                            info["sex"], limits, file_hint, series_uid)
            info["suv_kind_formula"] = formula
            info["units_rule"] = f"{u['rule']}; converted: {formula}"
            if u["kind"] == SUVKind.LBM:
                info["lbm_kg"] = info["weight_kg"] / factor
            warnings.append(f"stored SUV{u['kind'].value} converted to SUVbw: {formula}")
        _refuse(refusals, file_hint, series_uid)
        info["suv_per_stored_unit"] = factor
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
    series_day, series_dt, acq = _series_times(headers)  # now strictly (errors reported)
    # injection first with the series/acquisition time as the "precedes" hint
    hint_time = series_dt
    if acq:
        hint_time = min([hint_time, min(acq)] if hint_time else [min(acq)])
    inj, inj_rule, wi = _injection_time(item, series_day, hint_time, file_hint, series_uid)
    info.update(injection_time_iso=_iso(inj), injection_time_rule=inj_rule)
    warnings += wi
    inj_kw = ("RadiopharmaceuticalStartDateTime" if inj_rule.startswith(
        "RadiopharmaceuticalStartDateTime") else "RadiopharmaceuticalStartTime")
    inj_raw = _text(item.get(inj_kw, ""))
    refusals += _check_date(inj_kw, inj_raw, inj, limits, now, created)
    dose, wd = _dose_bq(item, file_hint, series_uid)
    info["dose_bq"] = dose
    warnings += wd
    refusals += _check_dose(item, dose, hl, limits)
    if "weight_kg" not in info:
        _weight_kg(h0, file_hint, series_uid)  # raises, naming PatientWeight
    weight = info["weight_kg"]
    nuclide = _nuclide(item, hl)

    if dc == "START":
        ref, rule, source, back, wr = _reference_time(headers, inj, hl, file_hint, series_uid)
        warnings += wr
        info.update(reference_time_iso=_iso(ref), reference_time_rule=rule,
                    decay_reference_source=source, back_computed_time_iso=back)
        refusals += _check_uptake(inj_kw, inj_raw, ref, ref, inj, hl, nuclide, "reference time",
                                  limits)
        if (ref - inj) > timedelta(hours=24) and hl < 86400:
            warnings.append(f"{(ref - inj).total_seconds() / 3600:.1f} h between injection and "
                            "reference time: check the dates")
        decay = float(2.0 ** (-(ref - inj).total_seconds() / hl))
    elif dc == "ADMIN":
        info.update(reference_time_iso=_iso(inj),
                    reference_time_rule="DecayCorrection ADMIN: images decay-corrected to the "
                    "administration (injection) time",
                    decay_reference_source=DecayReferenceSource.INJECTION_TIME)
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
        refusals += _check_uptake(inj_kw, inj_raw, min(factors_t), max(factors_t), inj, hl,
                                  nuclide, "slice mid-frame time", limits)
        decays = [float(2.0 ** (-(t - inj).total_seconds() / hl)) for t in factors_t]
        info.update(reference_time_iso=_iso(min(factors_t)),
                    reference_time_rule="DecayCorrection NONE: each slice decayed to its own "
                    "decay-weighted mid-frame time (AcquisitionTime + average count-rate time)",
                    decay_reference_source=DecayReferenceSource.PER_SLICE_MID_FRAME)
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
        factor = vendor
        if bq is not None:
            mine = bq * suvbw
            if abs(mine / vendor - 1.0) > VENDOR_FACTOR_TOLERANCE:
                warnings.append(f"Philips SUV Scale Factor {vendor:g} differs by "
                                f"{100 * (mine / vendor - 1):.1f} % from the header computation "
                                f"{mine:.6g} (activity scale factor x weight / decayed dose)")
    else:
        factor = bq * suvbw
        if vendor is not None and u["units"] == "BQML":
            acsf = _philips_factors(headers)[1]
            if acsf:
                mine = suvbw * acsf
                if abs(mine / vendor - 1.0) > VENDOR_FACTOR_TOLERANCE:
                    warnings.append(f"Philips SUV Scale Factor {vendor:g} (per count) differs by "
                                    f"{100 * (mine / vendor - 1):.1f} % from the header "
                                    "computation")
    decays = info.pop("_decays", None)
    _refuse(refusals, file_hint, series_uid)
    info["suv_per_stored_unit"] = factor
    if dc == "NONE":
        scale = factor / suvbw
        info["slice_factors"] = tuple(scale * weight * 1000.0 / (dose * d) for d in decays)


def to_suv(activity: Volume, audit: SUVAudit, *, kind: str = "SUVbw") -> Volume:
    """Convert a PET activity volume to SUVbw (or SUL).

    Parameters
    ----------
    activity : Volume
        From :func:`pipeline.io.dicom.load_pet_activity`, values in ``audit.units``.
    audit : SUVAudit
        From :func:`suv_audit` on the same series.
    kind : {"SUVbw", "SUL", "stored"}
        ``"stored"``: the values as stored when they already are an SUV of another kind that
        cannot be converted to SUVbw (``audit.stored_suv_available``); ``units`` of the result
        is then ``SUVlbm``, ``SUVibw`` or ``SUVbsa`` (:data:`SUV_KIND_UNITS`), never
        ``SUVbw``, so that it is never compared with SUVbw thresholds.

    Returns
    -------
    Volume
        float32 (z, y, x) SUVbw or SUL (g/mL), same grid, ``units`` = ``kind``, notes extended.

    Raises
    ------
    SUVError
        The audit has no SUV (reason given), the volume's units or series differ from the
        audit's, SUL is unavailable, or ``kind`` is unknown.
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
    if kind == "stored":
        if not audit.stored_suv_available:
            raise SUVError(
                f"no stored non-SUVbw SUV to report (Units {audit.units}, kind {audit.suv_kind}, "
                f"SUVbw {'available' if audit.available else 'unavailable'})",
                series_uid=activity.series_uid, tag=tag_label("Units"),
                hint="use kind='SUVbw' when audit.suv_is_bw; kind='stored' only when "
                     "audit.stored_suv_available")
        units = SUV_KIND_UNITS[SUVKind(audit.suv_kind)]
        return replace(activity, array=activity.array.astype(np.float32), units=units,
                       notes=activity.notes + (
                           f"{units} as stored ({audit.units_rule}); not SUVbw: "
                           f"{audit.suv_reason}",))
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
        raise SUVError(f"SUV kind must be SUVbw, SUL or stored, got {kind!r}",
                       series_uid=activity.series_uid,
                       hint="call to_suv with kind='SUVbw', 'SUL' or 'stored'")
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
