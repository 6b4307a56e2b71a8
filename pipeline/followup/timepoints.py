"""A patient's timepoints: studies in time order, the baseline, categories locked at baseline.

Order
-----
A patient's studies are ordered by :func:`pipeline.sheet.study_order_key` (StudyDate, then
StudyTime when the study sheet has that column, then StudyInstanceUID): the order of
:func:`pipeline.sheet.earlier_studies`, which the rank step's inputs wait for. A study without a
date has no place in time and is never a timepoint.

Baseline and roles
------------------
The optional study-sheet column ``timepoint_role`` (validated by ``configs/studies.schema.yaml``
and :func:`pipeline.sheet.validate_study_sheet`) decides:

* ``baseline``: this study is the baseline (at most one per patient);
* ``follow_up``: a follow-up timepoint (after the baseline);
* ``exclude``: the study is measured and ranked, but left out of the response assessment;
* empty: automatic. Without a ``baseline`` row, the baseline is the first dated study with lesion
  masks (``lesion_mask_source`` filled); every later dated study with lesion masks is a follow-up.

Studies before the baseline, studies without lesion masks and undated studies are not
timepoints either (:class:`StudyTimepoint` says why).

Categories
----------
The itRECIST category of each baseline lesion (T-I / T-NI / NT-I / NT-NI) is fixed at baseline and
never recomputed (:func:`baseline_category`): the team's decision recorded by the review app in
``RESULTS/review/decisions.csv`` (:func:`read_decisions`) when that study has one for the lesion
(its ``category``, else the category its ``role`` implies), else the tool's baseline ranking
(role ``inject`` -> T-I when measurable, NT-I otherwise; ``monitor`` -> T-NI; ``none`` -> NT-NI).
After baseline, a decision with role ``inject`` (or category T-I / NT-I) at a follow-up study
for a non-injected track reclassifies it NI -> I from that timepoint on
(:func:`reclassified_category`).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pandas as pd

from pipeline.errors import ConfigError
from pipeline.followup.response import Category
from pipeline.sheet import study_order_key

log = logging.getLogger(__name__)


class TimepointRole(str, Enum):
    """Role of a study in a patient's follow-up (the study sheet's ``timepoint_role``)."""

    AUTO = ""
    BASELINE = "baseline"
    FOLLOW_UP = "follow_up"
    EXCLUDE = "exclude"


@dataclass(frozen=True)
class StudyTimepoint:
    """One study of a patient and its place in the follow-up.

    Attributes
    ----------
    row : dict
        The study-sheet row (strings).
    index : int or None
        Timepoint index (0 = baseline, 1, 2 ... the follow-ups in time order); None when the
        study is not a timepoint.
    is_baseline : bool
    excluded_reason : str
        Why the study is not a timepoint ("" when it is one).
    """

    row: dict
    index: int | None
    is_baseline: bool
    excluded_reason: str

    @property
    def study_uid(self) -> str:
        return str(self.row.get("study_uid", ""))

    @property
    def study_date(self) -> str:
        return str(self.row.get("study_date", ""))


@dataclass(frozen=True)
class PatientTimepoints:
    """A patient's studies in time order with the baseline chosen.

    Attributes
    ----------
    studies : tuple of StudyTimepoint
        Every study of the patient in the sheet, dated ones in :func:`study_order_key` order,
        then the undated ones (by UID).
    baseline : StudyTimepoint or None
        None when the patient has no dated study with lesion masks.
    """

    studies: tuple[StudyTimepoint, ...]
    baseline: StudyTimepoint | None

    def of(self, study_dir: str) -> StudyTimepoint:
        """The entry of the study folder ``study_dir``."""
        for s in self.studies:
            if str(s.row.get("study_dir", "")) == study_dir:
                return s
        raise ConfigError(f"study folder {study_dir} is not among the patient's studies",
                          tag="study_dir", hint="re-run the index step")

    def previous(self, study_dir: str) -> StudyTimepoint | None:
        """The study just before ``study_dir`` in time (any role), from the baseline on; None
        for the baseline, a study before it, or an undated study."""
        me = self.of(study_dir)
        if self.baseline is None or not me.study_date:
            return None
        dated = [s for s in self.studies if s.study_date]
        i = dated.index(me)
        b = dated.index(self.baseline)
        return dated[i - 1] if i > b else None


def _role(row: dict) -> TimepointRole:
    v = str(row.get("timepoint_role", "") or "").strip()
    try:
        return TimepointRole(v)
    except ValueError as exc:
        raise ConfigError(
            f"study {row.get('study_uid', '?')} of patient {row.get('patient_id', '?')}: "
            f"timepoint_role {v!r} is not one of baseline, follow_up, exclude or empty",
            tag="timepoint_role", hint="fix the cell in the edited study sheet") from exc


def has_lesion_masks(row: dict) -> bool:
    """The study sheet names a lesion segmentation for this study."""
    return bool(str(row.get("lesion_mask_source", "") or "").strip())


def patient_timepoints(sheet: pd.DataFrame, patient_dir: str,
                       has_lesions: Callable[[dict], bool] = has_lesion_masks) -> PatientTimepoints:
    """Order a patient's studies and choose the baseline (see the module docstring).

    Parameters
    ----------
    sheet : DataFrame
        The results study sheet (``patient_dir``, ``study_dir``, ``study_uid``, ``study_date``,
        optional ``study_time`` / ``timepoint_role``).
    patient_dir : str
        The patient's folder name.
    has_lesions : callable, optional
        Whether a study row has lesion masks; default :func:`has_lesion_masks` (the sheet only,
        so the Snakefile and the rank job agree without reading any output).

    Raises
    ------
    ConfigError
        More than one ``baseline`` row, or a ``baseline`` row without a study date.
    """
    rows = [{k: ("" if pd.isna(v) else str(v)) for k, v in r.items()}
            for r in sheet[sheet["patient_dir"] == patient_dir].to_dict(orient="records")]
    dated = sorted((r for r in rows if r.get("study_date", "")), key=study_order_key)
    undated = sorted((r for r in rows if not r.get("study_date", "")),
                     key=lambda r: str(r.get("study_uid", "")))
    marked = [r for r in rows if _role(r) is TimepointRole.BASELINE]
    if len(marked) > 1:
        raise ConfigError(f"patient {marked[0].get('patient_id', patient_dir)} has {len(marked)} "
                          "studies with timepoint_role baseline, expected at most one",
                          tag="timepoint_role", hint="mark one baseline per patient")
    if marked and not marked[0].get("study_date", ""):
        raise ConfigError(f"baseline study {marked[0].get('study_uid')} has no study date: its "
                          "place in time is unknown", tag="study_date",
                          hint="give the study's date (YYYYMMDD) in the edited study sheet")
    if marked:
        base_row = marked[0]
    else:
        base_row = next((r for r in dated if _role(r) is not TimepointRole.EXCLUDE
                         and has_lesions(r)), None)
    out: list[StudyTimepoint] = []
    idx = 0
    seen_base = False
    for r in dated:
        if base_row is not None and r is base_row:
            out.append(StudyTimepoint(r, 0, True, ""))
            seen_base = True
            idx = 1
            continue
        role = _role(r)
        if base_row is None:
            why = "the patient has no baseline (no dated study with lesion masks)"
        elif not seen_base:
            why = "before the baseline study"
        elif role is TimepointRole.EXCLUDE:
            why = "timepoint_role exclude in the study sheet"
        elif not has_lesions(r):
            why = "no lesion segmentation"
        else:
            why = ""
        if why:
            out.append(StudyTimepoint(r, None, False, why))
        else:
            out.append(StudyTimepoint(r, idx, False, ""))
            idx += 1
    for r in undated:
        out.append(StudyTimepoint(r, None, False, "study date unknown: no place in time"))
    base = next((s for s in out if s.is_baseline), None)
    return PatientTimepoints(tuple(out), base)


# ---------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class TeamDecision:
    """The team's decision for one lesion, from ``RESULTS/review/decisions.csv``.

    ``role`` is inject / monitor / none or "" (undecided); ``category`` an itRECIST category
    or "" (undecided); ``signed_off_by`` the reader who signed the study off, or "".
    """

    patient_id: str
    study_uid: str
    lesion_id: str
    role: str
    category: str
    reason: str
    signed_off_by: str


def read_decisions(path: str | Path) -> dict[tuple[str, str, str], TeamDecision]:
    """The team's decisions keyed by (patient_id, study_uid, lesion_id); {} when no file.

    ``decisions.csv`` is written by the review app (:mod:`pipeline.review.store`); this reader
    only needs its header and the columns ``patient_id, study_uid, lesion_id, role, category``
    (``reason``, ``signed_off_by`` optional), so the follow-up never imports the app.

    Raises
    ------
    ConfigError
        The file exists but lacks a needed column, or holds an unknown role / category.
    """
    p = Path(path)
    if not p.is_file():
        return {}
    out: dict[tuple[str, str, str], TeamDecision] = {}
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"patient_id", "study_uid", "lesion_id", "role", "category"}
        missing = sorted(need - set(reader.fieldnames or []))
        if missing:
            raise ConfigError(f"decisions file lacks column(s) {missing}", file=p,
                              hint="rebuild it with the review app (`hitit review RESULTS`)")
        cats = {c.value for c in Category} - {Category.NEW.value}
        for n, r in enumerate(reader, 2):
            role = (r.get("role") or "").strip()
            cat = (r.get("category") or "").strip()
            if role not in ("", "inject", "monitor", "none"):
                raise ConfigError(f"decisions line {n}: unknown role {role!r}", file=p, tag="role",
                                  hint="roles are inject, monitor or none")
            if cat and cat not in cats:
                raise ConfigError(f"decisions line {n}: unknown category {cat!r}", file=p,
                                  tag="category", hint="categories are T-I, T-NI, NT-I, NT-NI")
            key = (r["patient_id"], r["study_uid"], r["lesion_id"])
            out[key] = TeamDecision(*key, role=role, category=cat,
                                    reason=(r.get("reason") or ""),
                                    signed_off_by=(r.get("signed_off_by") or ""))
    return out


def category_of_role(role: str, measurable: bool) -> Category:
    """Category a role implies: inject -> T-I (NT-I when not measurable); monitor -> T-NI;
    none -> NT-NI."""
    if role == "inject":
        return Category.T_I if measurable else Category.NT_I
    if role == "monitor":
        return Category.T_NI
    return Category.NT_NI


def baseline_category(tool_role: str, measurable: bool,
                      decision: TeamDecision | None) -> tuple[Category, str]:
    """Category of a baseline lesion and where it came from ("team decision" / "tool proposal").

    Parameters
    ----------
    tool_role : str
        The lesion's role in the baseline ``ranking.csv``.
    measurable : bool
        RECIST 1.1 measurable (``ranking.csv`` column ``measurable``).
    decision : TeamDecision or None
        The team's decision for this lesion at the baseline study.
    """
    if decision is not None and decision.category:
        return Category(decision.category), "team decision"
    if decision is not None and decision.role:
        return category_of_role(decision.role, measurable), "team decision"
    return category_of_role(tool_role, measurable), "tool proposal"


def reclassified_category(current: Category, decision: TeamDecision | None) -> Category | None:
    """The injected category a follow-up decision switches a non-injected track to, or None.

    A decision with role ``inject`` (or category T-I / NT-I) for a T-NI / NT-NI track makes it
    T-I / NT-I (targets stay targets, non-targets stay non-targets). Injected and NEW tracks
    are never reclassified.
    """
    if decision is None or current not in (Category.T_NI, Category.NT_NI):
        return None
    wants = decision.role == "inject" or decision.category in (Category.T_I.value,
                                                               Category.NT_I.value)
    if not wants:
        return None
    return Category.T_I if current is Category.T_NI else Category.NT_I
