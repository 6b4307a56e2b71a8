"""Team decision next to tool proposal: per-lesion pairs and agreement figures (pure, tables only).

Read by the worksheet (rank job) and the dashboard (dashboard rule) from
``RESULTS/review/decisions.csv`` when it exists; nothing here writes under ``RESULTS/review/``.

Definitions
-----------
* The **tool proposal** of a lesion is its ``ranking.csv`` row: ``role`` and the itRECIST
  category it implies (:func:`pipeline.review.store.proposed_category`, from ``role`` and
  ``measurable``).
* The **team decision** is the lesion's ``decisions.csv`` row (``role``, ``category``,
  ``planned_volume_ml``, ``reason``, ``reader``, ``signed_off_by``); a field left empty there is
  undecided.
* **Role agreement** = lesions whose team role equals the tool's role / lesions with a team role
  (percent); **category agreement** likewise over lesions with a team category. Lesions without a
  decision count in neither denominator. The ``categories`` table counts, over the lesions with a
  team category, how many the tool put in each category and how many the team did.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.records import Role
from pipeline.review.store import DECISIONS_NAME, REVIEW_DIR, Category, proposed_category

#: Keys of a decision: (patient_id, study_uid, lesion_id).
Key = tuple[str, str, str]


def decisions_file(results: str | Path) -> Path:
    """``RESULTS/review/decisions.csv`` (the review app's; may not exist)."""
    return Path(results) / REVIEW_DIR / DECISIONS_NAME


def read_decisions(path: str | Path) -> dict[Key, dict[str, str]]:
    """Rows of a ``decisions.csv`` by (patient_id, study_uid, lesion_id); {} when absent.

    Only reads (no lock): the app rewrites the file atomically, so a reader sees a whole version.
    """
    p = Path(path)
    if not p.is_file():
        return {}
    with open(p, newline="", encoding="utf-8") as fh:
        return {(r.get("patient_id", ""), r.get("study_uid", ""), r.get("lesion_id", "")): r
                for r in csv.DictReader(fh)}


def _s(v) -> str:
    if v is None:
        return ""
    try:
        if v != v:  # NaN
            return ""
    except TypeError:
        pass
    return str(v).strip()


def tool_category(row: Mapping) -> str:
    """The itRECIST category the tool's role implies for a ranking row ("" without a role)."""
    try:
        role = Role(_s(row.get("role")) or "none")
    except ValueError:
        return ""
    meas = _s(row.get("measurable")).lower() in ("true", "1", "yes", "1.0")
    return proposed_category(role, meas).value


@dataclass(frozen=True)
class TeamDecision:
    """One lesion's team decision beside the tool's proposal.

    Attributes
    ----------
    tool_role, tool_category : str
        The proposal (``inject`` / ``monitor`` / ``none``; ``T-I`` ...).
    role, category : str
        The team's ("" = undecided).
    planned_volume_ml : float or None
        The team's planned volume, mL.
    reason, reader, signed_off_by : str
    role_agrees : bool or None
        None when the team has not decided the role.
    """

    tool_role: str
    tool_category: str
    role: str = ""
    category: str = ""
    planned_volume_ml: float | None = None
    reason: str = ""
    reader: str = ""
    signed_off_by: str = ""
    role_agrees: bool | None = None
    category_agrees: bool | None = None


def pair(tool_row: Mapping, decision: Mapping | None) -> TeamDecision:
    """The proposal of ``tool_row`` (ranking row) beside ``decision`` (decisions.csv row or None)."""
    tr, tc = _s(tool_row.get("role")) or "none", tool_category(tool_row)
    if not decision:
        return TeamDecision(tr, tc)
    role, cat = _s(decision.get("role")), _s(decision.get("category"))
    vol = _s(decision.get("planned_volume_ml"))
    try:
        v = float(vol) if vol else None
    except ValueError:
        v = None
    return TeamDecision(tr, tc, role, cat, v, _s(decision.get("reason")), _s(decision.get("reader")),
                        _s(decision.get("signed_off_by")),
                        (role == tr) if role else None, (cat == tc) if cat else None)


@dataclass(frozen=True)
class Agreement:
    """Agreement of the team with the tool over a set of lesions (a study or the cohort).

    Attributes
    ----------
    n_lesions : int
        Lesions the tool proposed a role for.
    n_role_decided, n_role_agree : int
        Lesions with a team role; of those, the ones equal to the tool's.
    n_category_decided, n_category_agree : int
        Same for the itRECIST category.
    categories : dict str -> (int, int)
        Per category (T-I, T-NI, NT-I, NT-NI): (tool count, team count) over the lesions with a
        team category.
    changed : dict str -> int
        ``"tool -> team"`` role changes and their counts.
    signed_off_by : tuple of str
        Readers who signed off (a study: 0 or 1).
    n_studies_signed_off : int
    """

    n_lesions: int = 0
    n_role_decided: int = 0
    n_role_agree: int = 0
    n_category_decided: int = 0
    n_category_agree: int = 0
    categories: dict[str, tuple[int, int]] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    signed_off_by: tuple[str, ...] = ()
    n_studies_signed_off: int = 0

    @property
    def role_agreement_pct(self) -> float | None:
        """Percent of the team's role decisions equal to the tool's (None: nothing decided)."""
        return 100.0 * self.n_role_agree / self.n_role_decided if self.n_role_decided else None

    @property
    def category_agreement_pct(self) -> float | None:
        """Percent of the team's category decisions equal to the tool's."""
        return 100.0 * self.n_category_agree / self.n_category_decided if self.n_category_decided else None

    @property
    def any(self) -> bool:
        """True when the team decided anything here."""
        return bool(self.n_role_decided or self.n_category_decided or self.n_studies_signed_off)


def agreement(pairs: Iterable[TeamDecision], signoffs: Iterable[str] = ()) -> Agreement:
    """Agreement figures of ``pairs``; ``signoffs`` are the readers of signed-off studies."""
    pairs = list(pairs)
    cats = {c.value: [0, 0] for c in Category}
    changed: dict[str, int] = {}
    for p in pairs:
        if p.category:
            if p.tool_category in cats:
                cats[p.tool_category][0] += 1
            if p.category in cats:
                cats[p.category][1] += 1
        if p.role and p.role != p.tool_role:
            k = f"{p.tool_role} -> {p.role}"
            changed[k] = changed.get(k, 0) + 1
    so = tuple(sorted({s for s in signoffs if s}))
    return Agreement(
        n_lesions=len(pairs),
        n_role_decided=sum(1 for p in pairs if p.role),
        n_role_agree=sum(1 for p in pairs if p.role_agrees),
        n_category_decided=sum(1 for p in pairs if p.category),
        n_category_agree=sum(1 for p in pairs if p.category_agrees),
        categories={k: (v[0], v[1]) for k, v in cats.items()},
        changed=dict(sorted(changed.items())),
        signed_off_by=so, n_studies_signed_off=sum(1 for s in signoffs if s))


def study_signoff(decisions: Mapping[Key, Mapping], patient_id: str, study_uid: str) -> str:
    """Reader who signed the study off ("" when not signed off)."""
    for (pid, suid, _), r in decisions.items():
        if pid == patient_id and suid == study_uid and _s(r.get("signed_off_by")):
            return _s(r.get("signed_off_by"))
    return ""


def pct_text(v: float | None) -> str:
    """``"83 %"`` or ``"–"``."""
    return "–" if v is None else f"{v:.0f} %"
