"""itRECIST / iRECIST responses of one patient across timepoints (pure logic, no I/O).

Sources: itRECIST (Goldmacher et al., J Clin Oncol 2020;38:2667-2676), built on iRECIST (Seymour
et al., Lancet Oncol 2017;18:e143-52) and RECIST 1.1 (Eisenhauer et al., Eur J Cancer 2009;45:228-47).

Groups
------
Each timepoint after the baseline gets three responses, each with iRECIST logic:

=============  ===============  ==================  ===========
group          targets          non-targets         new lesions
=============  ===============  ==================  ===========
overall        T-I + T-NI       NT-I + NT-NI        counted
injected       T-I              NT-I                not counted
noninjected    T-NI             NT-NI               counted
=============  ===============  ==================  ===========

Membership is by the category *in force at each timepoint* (:attr:`Observation.category`). A group's
baseline and nadir sums are recomputed over its **current** members' earlier measures, so a recorded
NI -> I reclassification takes effect from its timepoint only and earlier rows never change. A group
with no target and no non-target member gives ``None`` (empty), not NE.

Measures and sums (mm)
----------------------
The measure of a lesion is its longest axial diameter, or its short axis for a lymph node
(:class:`MeasureKind`); 0 when it disappeared. The sum of diameters (SOD) of a group is the sum of
its target members' measures. Change from baseline and from nadir are in % of that sum at the
baseline / nadir; the nadir is the smallest SOD of the *same* members at the earlier timepoints
(baseline included) at which all of them were evaluable.

Rules (thresholds from ``followup.response`` of the configuration)
------------------------------------------------------------------
Boundaries are on RECIST's side: PR is "at least a 30 % decrease", PD "at least 20 %" and "at least
5 mm" (comparisons are inclusive, with a 1e-6 mm tolerance for floating-point sums).

* **iUPD**: SOD >= nadir x (1 + ``progression_pct``/100) and SOD - nadir >=
  ``progression_min_abs_mm``; or unequivocal non-target progression of a member
  (:attr:`Observation.nontarget_progression`, decided by the caller, e.g. with
  :func:`nontarget_progressed`); or, in groups that count new lesions, a present new lesion
  measuring >= ``new_lesion_min_mm`` (smaller ones are equivocal: listed in the reasons, not
  progression).
* **iCPD** at the next assessment after an iUPD of the same group (NE assessments in between
  are skipped): the SOD up by >= ``confirm_sod_increase_mm`` since the iUPD timepoint (when the
  iUPD came from the targets); targets newly meeting the iUPD rule (when it came from elsewhere:
  iRECIST's "progression in a category that did not meet iUPD"); further non-target progression
  (a member flagged now that was not flagged at the iUPD timepoint, or a flagged one grown by
  >= ``confirm_sod_increase_mm`` since then); the sum of the new lesions (>= ``new_lesion_min_mm``)
  up by >= ``confirm_new_sum_increase_mm``; an additional new lesion; or an equivocal new lesion of
  the iUPD timepoint now >= ``new_lesion_min_mm`` (iRECIST). iCPD then stays iCPD.
  The reference of the comparisons is the first iUPD of the episode (the timepoint the bar was
  set), recomputed over the current members.
* Not confirmed: iUPD stays while one of its criteria still holds; when none holds any more, the
  category resets to iCR / iPR / iSD by the normal rules and a later iUPD needs a new
  confirmation.
* **iCR**: every target non-nodal lesion 0 mm, every target node <
  ``node_normal_short_axis_mm`` (its measure still counts in the SOD), every non-target gone (nodes
  below the same threshold) and no present new lesion of any size (groups counting new lesions).
* **iPR**: SOD <= baseline x (1 + ``partial_response_pct``/100) (``partial_response_pct`` is
  negative), or every target gone while a non-target persists, is not evaluable, or an equivocal
  new lesion is present (RECIST 1.1 table 1).
* **iSD** otherwise.
* **NE**: a target of the group is not evaluable (measure None or status not_evaluable) and the
  evaluable rest does not already show iUPD / iCPD: the sum of the evaluable targets is a lower
  bound of the SOD, so when it already crosses the progression bar the group is iUPD, never NE.
  A baseline lesion with no observation at a later timepoint is not evaluable there.
* **Non-target-only group**: iCR when all non-targets are gone and no new lesion is present; iUPD
  on non-target progression or a new lesion; NE when a non-target is not evaluable; else iSD
  ("non-CR/non-PD (no target lesion)").

New lesions are observations of category NEW or status new. A track first seen after the baseline
stays a new lesion at every later timepoint, whatever category the caller gives it (iRECIST: new
lesions never become targets or non-targets). ``new_lesions`` counts the present ones of any size
(including the equivocal ones and those of unknown size); only those >= ``new_lesion_min_mm`` are
progression. A new lesion whose measure is unknown is listed as equivocal.

Best overall response is the best overall response so far in the order iCR > iPR > iSD > iUPD >
iCPD > NE. RECIST 1.1's confirmation of CR / PR by a second assessment (single-arm trials) is not
applied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from pipeline.errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

_EPS_MM = 1e-6


class Category(str, Enum):
    """itRECIST category of a lesion track."""

    T_I = "T-I"
    T_NI = "T-NI"
    NT_I = "NT-I"
    NT_NI = "NT-NI"
    NEW = "NEW"


class Status(str, Enum):
    """State of a lesion track at one timepoint."""

    PRESENT = "present"
    DISAPPEARED = "disappeared"
    NOT_EVALUABLE = "not_evaluable"
    NEW = "new"


class Response(str, Enum):
    """iRECIST response category."""

    ICR = "iCR"
    IPR = "iPR"
    ISD = "iSD"
    IUPD = "iUPD"
    ICPD = "iCPD"
    NE = "NE"


class MeasureKind(str, Enum):
    """What ``measure_mm`` is: longest axial diameter, or short axis for lymph nodes."""

    LONGEST_DIAMETER = "longest_diameter"
    SHORT_AXIS = "short_axis"


@dataclass(frozen=True)
class Observation:
    """One lesion track at one timepoint.

    Attributes
    ----------
    track_id : str
        Stable identifier of the lesion across timepoints.
    category : Category
        Category in force at this timepoint (after a recorded NI -> I reclassification: T-I / NT-I).
    measure_kind : MeasureKind
        short_axis for lymph nodes, longest_diameter otherwise (axial plane).
    measure_mm : float or None
        Measure in mm; None when not evaluable, 0.0 when the lesion disappeared.
    status : Status
        present / disappeared / not_evaluable / new.
    nontarget_progression : bool
        Only for NT-*: unequivocal progression of this non-target (the caller decides, e.g. with
        :func:`nontarget_progressed` against the lesion's nadir).
    """

    track_id: str
    category: Category
    measure_kind: MeasureKind
    measure_mm: float | None
    status: Status
    nontarget_progression: bool = False


@dataclass(frozen=True)
class TimepointInput:
    """All lesion observations of one patient at one timepoint.

    Attributes
    ----------
    index : int
        0 = baseline, then 1, 2, ... in date order.
    study_uid : str
        StudyInstanceUID of the timepoint's study.
    study_date : str
        DICOM StudyDate, YYYYMMDD.
    observations : tuple of Observation
        One per track present in the tracking table at this timepoint.
    """

    index: int
    study_uid: str
    study_date: str
    observations: tuple[Observation, ...]


RESPONSE_COLUMNS = [
    "patient_id", "study_uid", "study_date", "timepoint_index", "sod_ti_mm", "sod_tni_mm",
    "sod_targets_mm", "change_ti_from_baseline_pct", "change_tni_from_baseline_pct",
    "change_targets_from_baseline_pct", "change_targets_from_nadir_pct", "new_lesions", "response_overall",
    "response_injected", "response_noninjected", "best_overall_response", "reasons",
]


@dataclass(frozen=True)
class TimepointResponse:
    """One row of ``response.csv`` (without ``patient_id``).

    Sums (``sod_*_mm``) are in mm, changes (``change_*_pct``) in % of the baseline / nadir sum; None
    when the group has no target, a target is not evaluable, or the reference sum is 0 / unknown.
    Responses are None at the baseline and for an empty group.
    """

    timepoint_index: int
    study_uid: str
    study_date: str
    sod_ti_mm: float | None
    sod_tni_mm: float | None
    sod_targets_mm: float | None
    change_ti_from_baseline_pct: float | None
    change_tni_from_baseline_pct: float | None
    change_targets_from_baseline_pct: float | None
    change_targets_from_nadir_pct: float | None
    new_lesions: int
    response_overall: Response | None
    response_injected: Response | None
    response_noninjected: Response | None
    best_overall_response: Response | None
    reasons: str

    def as_row(self) -> dict:
        """Row for ``response.csv``: keys ``RESPONSE_COLUMNS[1:]``, enums as their value, None as ""."""
        row = {}
        for key in RESPONSE_COLUMNS[1:]:
            value = getattr(self, key)
            if value is None:
                value = ""
            elif isinstance(value, Enum):
                value = value.value
            row[key] = value
        return row


# --------------------------------------------------------------------------------------------------
# configuration

_CFG_KEYS = (
    "partial_response_pct", "progression_pct", "progression_min_abs_mm", "confirm_sod_increase_mm",
    "confirm_new_sum_increase_mm", "node_normal_short_axis_mm", "nontarget_progression_pct",
    "new_lesion_min_mm",
)


def _cfg(cfg_response: dict, key: str) -> float:
    try:
        return float(cfg_response[key])
    except (KeyError, TypeError, ValueError):
        found = cfg_response.get(key, "nothing") if isinstance(cfg_response, dict) else type(cfg_response)
        raise ConfigError(
            f"expected a number for followup.response.{key}, found {found!r}",
            hint="pass the validated followup.response section of pipeline.config.load_config()",
        ) from None


def nontarget_progressed(measure_mm: float | None, nadir_mm: float | None, cfg_response: dict) -> bool:
    """Configurable proxy for *unequivocal* progression of one non-target lesion.

    Parameters
    ----------
    measure_mm : float or None
        The non-target's measure now (mm; short axis for nodes, longest diameter otherwise).
    nadir_mm : float or None
        Its smallest measure at the earlier timepoints, baseline included (mm).
    cfg_response : dict
        ``followup.response`` settings; uses ``nontarget_progression_pct``.

    Returns
    -------
    bool
        True when ``measure_mm`` > ``nadir_mm`` and ``measure_mm`` >= ``nadir_mm`` x (1 +
        ``nontarget_progression_pct``/100) (a disappeared non-target that reappears, nadir 0,
        progresses); False when either measure is unknown.
    """
    if measure_mm is None or nadir_mm is None:
        return False
    pct = _cfg(cfg_response, "nontarget_progression_pct")
    return measure_mm > nadir_mm + _EPS_MM and measure_mm >= nadir_mm * (1.0 + pct / 100.0) - _EPS_MM


# --------------------------------------------------------------------------------------------------
# groups

@dataclass(frozen=True)
class _Group:
    name: str                      # overall / injected / noninjected
    targets: frozenset
    nontargets: frozenset
    counts_new: bool
    sum_label: str                 # how the reasons name its sum


_OVERALL = _Group("overall", frozenset({Category.T_I, Category.T_NI}),
                  frozenset({Category.NT_I, Category.NT_NI}), True, "targets")
_INJECTED = _Group("injected", frozenset({Category.T_I}), frozenset({Category.NT_I}), False, "T-I")
_NONINJECTED = _Group("noninjected", frozenset({Category.T_NI}), frozenset({Category.NT_NI}), True, "T-NI")
_GROUPS = (_OVERALL, _INJECTED, _NONINJECTED)

_ALLOWED_CHANGES = {(Category.T_NI, Category.T_I), (Category.NT_NI, Category.NT_I)}

_BEST_ORDER = (Response.ICR, Response.IPR, Response.ISD, Response.IUPD, Response.ICPD, Response.NE)


def _measure(obs: Observation | None) -> float | None:
    """Measure in mm (0 for a disappeared lesion), None when not evaluable or absent."""
    if obs is None or obs.status == Status.NOT_EVALUABLE:
        return None
    if obs.status == Status.DISAPPEARED:
        return 0.0 if obs.measure_mm is None else float(obs.measure_mm)
    return None if obs.measure_mm is None else float(obs.measure_mm)


def _gone(obs: Observation, node_normal_mm: float) -> bool | None:
    """True when the lesion counts as gone (node: short axis below normal), None when unknown."""
    m = _measure(obs)
    if m is None:
        return None
    if obs.measure_kind == MeasureKind.SHORT_AXIS:
        return m < node_normal_mm - _EPS_MM
    return m <= _EPS_MM


def _mm(v: float | None) -> str:
    return "unknown" if v is None else f"{v:.1f} mm"


def _pct(part: float | None, whole: float | None) -> float | None:
    if part is None or whole is None or whole <= _EPS_MM:
        return None
    return 100.0 * (part - whole) / whole


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _spct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f} %"


# --------------------------------------------------------------------------------------------------
# input checks and normalisation

def _normalise(timepoints: Sequence[TimepointInput]) -> list[dict[str, Observation]]:
    """Per timepoint, track_id -> observation; new lesions kept NEW, absent baseline tracks NE."""
    if not timepoints:
        raise PipelineError("expected at least the baseline timepoint (index 0), found no timepoint",
                            hint="pass the patient's timepoints in date order, the baseline first")
    out: list[dict[str, Observation]] = []
    first_seen: dict[str, int] = {}
    last: dict[str, Observation] = {}
    for pos, tp in enumerate(timepoints):
        if tp.index != pos:
            raise PipelineError(
                f"expected timepoint index {pos} at position {pos}, found {tp.index} (study {tp.study_uid})",
                hint="number the timepoints 0 (baseline), 1, 2 ... in date order, without gaps")
        obs_t: dict[str, Observation] = {}
        for ob in tp.observations:
            where = f"track {ob.track_id!r} at timepoint {tp.index} (study {tp.study_uid})"
            if ob.track_id in obs_t:
                raise PipelineError(f"expected one observation per track, found two for {where}",
                                    hint="give each track one observation per timepoint")
            if ob.measure_mm is not None and (not math.isfinite(ob.measure_mm) or ob.measure_mm < 0):
                raise PipelineError(f"expected a finite measure >= 0 mm, found {ob.measure_mm} for {where}",
                                    hint="use None for a lesion that cannot be measured")
            try:
                cat, status, kind = Category(ob.category), Status(ob.status), MeasureKind(ob.measure_kind)
            except ValueError as exc:
                raise PipelineError(
                    f"expected an itRECIST category, status and measure kind for {where}, found {exc}",
                    hint="categories T-I / T-NI / NT-I / NT-NI / NEW; status present / disappeared / "
                         "not_evaluable / new; measure kind longest_diameter / short_axis") from None
            if pos == 0 and (cat == Category.NEW or status == Status.NEW):
                raise PipelineError(f"expected no new lesion at the baseline, found {where}",
                                    hint="categorise baseline lesions as T-I, T-NI, NT-I or NT-NI")
            if ob.track_id not in first_seen:
                first_seen[ob.track_id] = pos
                if pos > 0 and cat != Category.NEW and status != Status.NEW:
                    raise PipelineError(
                        f"expected a track first seen after the baseline to be NEW, found {cat.value} for {where}",
                        hint="target / non-target designations are locked at the baseline; lesions appearing "
                             "later are new lesions")
            if first_seen[ob.track_id] > 0:
                if cat != Category.NEW:
                    log.info("%s was first seen after the baseline: kept as a new lesion (not %s)",
                             where, cat.value)
                cat = Category.NEW
            else:
                prev = last.get(ob.track_id)
                if prev is not None and prev.category != cat and (prev.category, cat) not in _ALLOWED_CHANGES:
                    raise PipelineError(
                        f"expected the category of {where} to stay {prev.category.value} (only T-NI -> T-I "
                        f"and NT-NI -> NT-I may change), found {cat.value}",
                        hint="categories are locked at the baseline; record an injection of a noninjected "
                             "lesion as NI -> I from its timepoint on")
            ob = Observation(ob.track_id, cat, kind, None if ob.measure_mm is None else float(ob.measure_mm),
                             status, bool(ob.nontarget_progression))
            obs_t[ob.track_id] = ob
            last[ob.track_id] = ob
        # a baseline lesion without observation here: not evaluable, never silently dropped
        for tid, prev in last.items():
            if tid not in obs_t and first_seen[tid] == 0:
                log.info("track %r has no observation at timepoint %d (study %s): not evaluable",
                         tid, tp.index, tp.study_uid)
                obs_t[tid] = Observation(tid, prev.category, prev.measure_kind, None, Status.NOT_EVALUABLE)
        out.append(obs_t)
    return out


# --------------------------------------------------------------------------------------------------
# group evaluation

@dataclass
class _State:
    """Running iRECIST state of one group."""

    pending_iupd: int | None = None    # timepoint of the first iUPD of the current episode
    confirmed: int | None = None       # timepoint of the iCPD (stays)


@dataclass
class _Eval:
    response: Response | None
    sod: float | None = None
    change_baseline_pct: float | None = None
    change_nadir_pct: float | None = None
    reason: str = ""
    new_present: int = 0


@dataclass
class _Look:
    """What a group looks like at one timepoint (over its current members)."""

    targets: list[str]
    nontargets: list[str]
    sod: float | None
    partial: float
    ne_targets: list[str]
    baseline: float | None
    nadir: float | None
    target_pd: bool
    nt_pd: list[str]
    new_present: list[str]
    new_counted: list[str]
    new_equivocal: list[str]
    new_sum: float


def _sum_at(members: list[str], obs_s: dict[str, Observation]) -> float | None:
    total = 0.0
    for tid in members:
        m = _measure(obs_s.get(tid))
        if m is None:
            return None
        total += m
    return total


def _new_lesions(obs_t: dict[str, Observation], new_min_mm: float):
    present, counted, equivocal, total = [], [], [], 0.0
    for tid, ob in sorted(obs_t.items()):
        if ob.category != Category.NEW or ob.status in (Status.DISAPPEARED, Status.NOT_EVALUABLE):
            continue
        m = ob.measure_mm
        if m is not None and m <= _EPS_MM:
            continue
        present.append(tid)
        if m is not None and m >= new_min_mm - _EPS_MM:
            counted.append(tid)
            total += m
        else:
            equivocal.append(tid)
    return present, counted, equivocal, total


def _look(group: _Group, t: int, obs: list[dict[str, Observation]], c: dict[str, float]) -> _Look:
    obs_t = obs[t]
    targets = sorted(tid for tid, o in obs_t.items() if o.category in group.targets)
    nontargets = sorted(tid for tid, o in obs_t.items() if o.category in group.nontargets)
    ne_targets = [tid for tid in targets if _measure(obs_t[tid]) is None]
    partial = sum(_measure(obs_t[tid]) or 0.0 for tid in targets)
    sod = None if ne_targets or not targets else partial
    baseline = _sum_at(targets, obs[0]) if targets else None
    earlier = [s for s in (_sum_at(targets, obs[k]) for k in range(t)) if s is not None] if targets else []
    nadir = min(earlier) if earlier else None
    target_pd = False
    if targets and nadir is not None:
        v = partial  # == sod when all evaluable, else a lower bound of it
        target_pd = (v >= nadir * (1.0 + c["progression_pct"] / 100.0) - _EPS_MM
                     and v - nadir >= c["progression_min_abs_mm"] - _EPS_MM)
    nt_pd = [tid for tid in nontargets if obs_t[tid].nontarget_progression]
    if group.counts_new:
        present, counted, equivocal, new_sum = _new_lesions(obs_t, c["new_lesion_min_mm"])
    else:
        present, counted, equivocal, new_sum = [], [], [], 0.0
    return _Look(targets, nontargets, sod, partial, ne_targets, baseline, nadir, target_pd, nt_pd,
                 present, counted, equivocal, new_sum)


def _triggers(lk: _Look, obs_t: dict[str, Observation], c: dict[str, float]) -> list[str]:
    out = []
    if lk.target_pd:
        rise = lk.partial - lk.nadir
        lower = " (evaluable targets only, already)" if lk.ne_targets else ""
        out.append(f"sum{lower} >= +{c['progression_pct']:g} % and >= +{c['progression_min_abs_mm']:g} mm "
                   f"from nadir (+{rise:.1f} mm)")
    for tid in lk.nt_pd:
        out.append(f"unequivocal non-target progression ({tid}, {_mm(_measure(obs_t[tid]))})")
    if lk.new_counted:
        sizes = ", ".join(f"{tid} {_mm(obs_t[tid].measure_mm)}" for tid in lk.new_counted)
        word = "new lesion" if len(lk.new_counted) == 1 else f"{len(lk.new_counted)} new lesions"
        out.append(f"{word} ({sizes})")
    return out


def _confirmations(group: _Group, lk: _Look, k: int, t: int, obs: list[dict[str, Observation]],
                   c: dict[str, float]) -> list[str]:
    """Why the iUPD of timepoint ``k`` is confirmed at ``t`` (empty: not confirmed)."""
    ref = _look(group, k, obs, c)  # the iUPD timepoint, over the CURRENT members
    obs_t, obs_k = obs[t], obs[k]
    out = []
    if lk.targets:
        ref_sod = _sum_at(lk.targets, obs_k)
        if ref.target_pd and ref_sod is not None:
            rise = lk.partial - ref_sod
            if rise >= c["confirm_sod_increase_mm"] - _EPS_MM:
                out.append(f"sum up {rise:.1f} mm since the iUPD at timepoint {k} ({_mm(ref_sod)}), "
                           f">= {c['confirm_sod_increase_mm']:g} mm")
        elif not ref.target_pd and lk.target_pd:
            out.append("targets now meet the iUPD rule (progression in another category than the iUPD's)")
    for tid in lk.nt_pd:
        before = obs_k.get(tid)
        if before is None or not before.nontarget_progression:
            out.append(f"further non-target progression ({tid}, not progressing at timepoint {k})")
            continue
        m_now, m_k = _measure(obs_t[tid]), _measure(before)
        if m_now is not None and m_k is not None and m_now - m_k >= c["confirm_sod_increase_mm"] - _EPS_MM:
            out.append(f"further non-target progression ({tid} {_mm(m_k)} -> {_mm(m_now)})")
    if group.counts_new:
        extra = [tid for tid in lk.new_counted if tid not in ref.new_counted and tid not in ref.new_equivocal]
        if extra:
            out.append("additional new lesion (" + ", ".join(
                f"{tid} {_mm(obs_t[tid].measure_mm)}" for tid in extra) + ")")
        grown = [tid for tid in lk.new_counted if tid in ref.new_equivocal]
        if grown:
            out.append(f"equivocal new lesion now >= {c['new_lesion_min_mm']:g} mm (" + ", ".join(
                f"{tid} {_mm(obs_k[tid].measure_mm)} -> {_mm(obs_t[tid].measure_mm)}" for tid in grown) + ")")
        rise = lk.new_sum - ref.new_sum
        if ref.new_counted and rise >= c["confirm_new_sum_increase_mm"] - _EPS_MM:
            out.append(f"new lesions' sum up {rise:.1f} mm ({ref.new_sum:.1f} -> {lk.new_sum:.1f} mm), "
                       f">= {c['confirm_new_sum_increase_mm']:g} mm")
    return out


def _normal(group: _Group, lk: _Look, obs_t: dict[str, Observation], c: dict[str, float]) -> tuple[Response, str]:
    """iCR / iPR / iSD / NE when no progression rule holds."""
    node = c["node_normal_short_axis_mm"]
    nt_gone = [_gone(obs_t[tid], node) for tid in lk.nontargets]
    nt_ne = [tid for tid, g in zip(lk.nontargets, nt_gone) if g is None]
    all_nt_gone = all(g is True for g in nt_gone)
    no_new = not lk.new_present
    equivocal = ""
    if lk.new_equivocal:
        equivocal = "; equivocal new lesion, not progression (" + ", ".join(
            f"{tid} {_mm(obs_t[tid].measure_mm)} < {c['new_lesion_min_mm']:g} mm"
            if obs_t[tid].measure_mm is not None else f"{tid} size unknown"
            for tid in lk.new_equivocal) + ")"
    if not lk.targets:
        if nt_ne:
            return Response.NE, "non-target not evaluable (" + ", ".join(nt_ne) + ")" + equivocal
        if all_nt_gone and no_new:
            return Response.ICR, "all non-targets gone, no new lesion (no target lesion)"
        return Response.ISD, "non-CR/non-PD (no target lesion)" + equivocal
    if lk.ne_targets:
        return Response.NE, "target not evaluable (" + ", ".join(lk.ne_targets) + "), " \
            f"evaluable targets sum {lk.partial:.1f} mm shows no progression" + equivocal
    if lk.baseline is None:
        return Response.NE, "a target has no baseline measure" + equivocal
    targets_gone = all(_gone(obs_t[tid], node) for tid in lk.targets)
    if targets_gone:
        nodes = [tid for tid in lk.targets if obs_t[tid].measure_kind == MeasureKind.SHORT_AXIS
                 and (_measure(obs_t[tid]) or 0.0) > _EPS_MM]
        node_txt = ""
        if nodes:
            node_txt = " (nodes below " + f"{node:g} mm short axis: " + ", ".join(
                f"{tid} {_mm(_measure(obs_t[tid]))}" for tid in nodes) + ")"
        if all_nt_gone and no_new:
            return Response.ICR, "all targets gone" + node_txt + ", non-targets gone, no new lesion"
        why = ("non-target not evaluable (" + ", ".join(nt_ne) + ")" if nt_ne
               else "a new lesion is present" if not no_new else "a non-target persists")
        return Response.IPR, "all targets gone" + node_txt + ", but " + why + equivocal
    bar = lk.baseline * (1.0 + c["partial_response_pct"] / 100.0)
    if lk.sod <= bar + _EPS_MM:
        return Response.IPR, f"sum at least {-c['partial_response_pct']:g} % below baseline" + equivocal
    return Response.ISD, "neither iPR nor iUPD" + equivocal


def _evaluate(group: _Group, t: int, obs: list[dict[str, Observation]], state: _State,
              c: dict[str, float]) -> _Eval:
    obs_t = obs[t]
    lk = _look(group, t, obs, c)
    if not lk.targets and not lk.nontargets:
        return _Eval(None, reason=f"{group.name}: no lesion in this group", new_present=len(lk.new_present))
    ev = _Eval(None, sod=lk.sod, change_baseline_pct=_pct(lk.sod, lk.baseline),
               change_nadir_pct=_pct(lk.sod, lk.nadir), new_present=len(lk.new_present))
    if lk.targets:
        if lk.sod is None:
            sums = (f"{group.sum_label} sum unknown (evaluable targets {lk.partial:.1f} mm, nadir "
                    f"{_mm(lk.nadir)})")
        else:
            sums = (f"{group.sum_label} sum {lk.sod:.1f} mm, {_spct(ev.change_baseline_pct)} from baseline "
                    f"{_mm(lk.baseline)}, {_spct(ev.change_nadir_pct)} from nadir {_mm(lk.nadir)}")
    else:
        sums = "no target lesion"

    if state.confirmed is not None:
        ev.response = Response.ICPD
        ev.reason = f"{group.name} iCPD: confirmed at timepoint {state.confirmed}, stays iCPD; {sums}"
        return ev
    triggers = _triggers(lk, obs_t, c)
    if state.pending_iupd is not None:
        k = state.pending_iupd
        conf = _confirmations(group, lk, k, t, obs, c)
        if conf:
            state.confirmed = t
            state.pending_iupd = None
            ev.response = Response.ICPD
            ev.reason = f"{group.name} iCPD: iUPD of timepoint {k} confirmed by " + ", ".join(conf) + f"; {sums}"
            return ev
        if triggers:
            ev.response = Response.IUPD
            ev.reason = (f"{group.name} iUPD (stays, not confirmed since timepoint {k}): " + ", ".join(triggers)
                         + f"; {sums}")
            return ev
        resp, why = _normal(group, lk, obs_t, c)
        if resp == Response.NE:
            ev.response = resp
            ev.reason = f"{group.name} NE (iUPD of timepoint {k} still to confirm): {why}; {sums}"
            return ev
        state.pending_iupd = None
        ev.response = resp
        ev.reason = f"{group.name} {resp.value} (iUPD of timepoint {k} reset, no iUPD rule holds): {why}; {sums}"
        return ev
    if triggers:
        state.pending_iupd = t
        ev.response = Response.IUPD
        ev.reason = f"{group.name} iUPD: " + ", ".join(triggers) + f"; {sums}"
        return ev
    resp, why = _normal(group, lk, obs_t, c)
    ev.response = resp
    ev.reason = f"{group.name} {resp.value}: {why}; {sums}"
    return ev


def _best(responses: list[Response]) -> Response | None:
    if not responses:
        return None
    return min(responses, key=_BEST_ORDER.index)


def _baseline_row(tp: TimepointInput, obs0: dict[str, Observation]) -> TimepointResponse:
    sods = {}
    parts = []
    for group in _GROUPS:
        targets = sorted(tid for tid, o in obs0.items() if o.category in group.targets)
        sods[group.name] = _sum_at(targets, obs0) if targets else None
        nt = sum(1 for o in obs0.values() if o.category in group.nontargets)
        total = _mm(sods[group.name]) if targets else "none"
        parts.append(f"{group.sum_label} sum {total} ({_n(len(targets), 'target')}, {_n(nt, 'non-target')})")
    zero = {k: (0.0 if v is not None and v > _EPS_MM else None) for k, v in sods.items()}
    return TimepointResponse(
        timepoint_index=tp.index, study_uid=tp.study_uid, study_date=tp.study_date,
        sod_ti_mm=sods["injected"], sod_tni_mm=sods["noninjected"], sod_targets_mm=sods["overall"],
        change_ti_from_baseline_pct=zero["injected"], change_tni_from_baseline_pct=zero["noninjected"],
        change_targets_from_baseline_pct=zero["overall"], change_targets_from_nadir_pct=zero["overall"],
        new_lesions=0, response_overall=None, response_injected=None, response_noninjected=None,
        best_overall_response=None, reasons="baseline: " + "; ".join(parts) + ".",
    )


def assess_patient(timepoints: Sequence[TimepointInput], cfg_response: dict) -> list[TimepointResponse]:
    """itRECIST responses (overall, injected, noninjected) of one patient at every timepoint.

    Parameters
    ----------
    timepoints : sequence of TimepointInput
        The patient's timepoints in date order, index 0 (baseline), 1, 2 ... Measures in mm.
    cfg_response : dict
        The validated ``followup.response`` section of the configuration.

    Returns
    -------
    list of TimepointResponse
        One per timepoint, in the same order. The row of timepoint t depends only on timepoints
        0..t (adding a later timepoint never changes an earlier row). Responses of the baseline are
        None; see the module docstring for the rules.

    Raises
    ------
    PipelineError
        Timepoints not numbered 0, 1, 2 ...; two observations of one track at a timepoint; a negative
        or non-finite measure; a new lesion at the baseline; a target / non-target first seen after
        the baseline; a category change other than T-NI -> T-I or NT-NI -> NT-I.
    ConfigError
        A threshold missing from ``cfg_response``.
    """
    c = {key: _cfg(cfg_response, key) for key in _CFG_KEYS}
    obs = _normalise(timepoints)
    rows = [_baseline_row(timepoints[0], obs[0])]
    states = {g.name: _State() for g in _GROUPS}
    overall_so_far: list[Response] = []
    for t in range(1, len(timepoints)):
        tp = timepoints[t]
        evs = {g.name: _evaluate(g, t, obs, states[g.name], c) for g in _GROUPS}
        if evs["overall"].response is not None:
            overall_so_far.append(evs["overall"].response)
        reasons = " ".join(ev.reason.rstrip(".") + "." for ev in evs.values())
        rows.append(TimepointResponse(
            timepoint_index=tp.index, study_uid=tp.study_uid, study_date=tp.study_date,
            sod_ti_mm=evs["injected"].sod, sod_tni_mm=evs["noninjected"].sod, sod_targets_mm=evs["overall"].sod,
            change_ti_from_baseline_pct=evs["injected"].change_baseline_pct,
            change_tni_from_baseline_pct=evs["noninjected"].change_baseline_pct,
            change_targets_from_baseline_pct=evs["overall"].change_baseline_pct,
            change_targets_from_nadir_pct=evs["overall"].change_nadir_pct,
            new_lesions=evs["overall"].new_present if evs["overall"].response is not None
            else len(_new_lesions(obs[t], c["new_lesion_min_mm"])[0]),
            response_overall=evs["overall"].response, response_injected=evs["injected"].response,
            response_noninjected=evs["noninjected"].response, best_overall_response=_best(overall_so_far),
            reasons=reasons,
        ))
    return rows
