"""Decisions store of the review app: the team's per-lesion decisions and per-study sign-off.

Files (all under ``RESULTS/review/``, which no workflow step writes):

``audit.jsonl``
    Append-only log, one JSON object per changed field: ``time_utc`` (ISO 8601, ``Z``),
    ``reader``, ``patient_id``, ``study_uid``, ``lesion_id`` (empty for a sign-off), ``field``
    (``role``, ``category``, ``planned_volume_ml`` or ``signed_off``), ``old``, ``new`` (strings,
    empty = unset) and ``reason``. Each append is flushed and fsynced before the call returns;
    the file is never rewritten. It is the source of truth.
``decisions.csv``
    The state the audit log replays to (:func:`replay`), one row per decided lesion, in the
    format ``hitit train`` reads (:func:`pipeline.ranking.model.train_files`): the keys
    ``patient_id, study_uid, lesion_id`` and ``chosen`` (1 = the team injects the lesion, else 0),
    plus columns it ignores: ``role``, ``category``, ``planned_volume_ml``, ``reason``,
    ``reader``, ``decided_utc``, ``signed_off_by``, ``signed_off_utc``. Rewritten atomically
    (temporary file, fsync, ``os.replace``) after every change; :func:`rebuild` re-derives it.

Every write takes an exclusive ``fcntl`` lock on ``review/.lock``, replays the audit log, appends
the changed fields and rewrites ``decisions.csv``; two processes writing at once therefore lose
no write, and a process killed after the append loses nothing (the next write or :func:`rebuild`
brings ``decisions.csv`` up to date).

The tool's proposal per lesion comes from the study's ``ranking.csv``: the role, the planned
volume, and an itRECIST category derived from them (:func:`proposed_category`). A decision that
differs from the proposal in any field needs a reason. Signing a study off records, for every
lesion of the proposal with a field still undecided, the proposal's value ("accepted tool
proposal"), so a signed-off study has a full row per lesion in ``decisions.csv``.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.records import Role  # the tool's and the team's role share one enum

log = logging.getLogger(__name__)

REVIEW_DIR = "review"
DECISIONS_NAME = "decisions.csv"
AUDIT_NAME = "audit.jsonl"
LOCK_NAME = ".lock"
#: Columns of ``decisions.csv`` (``hitit train`` reads the first four).
DECISION_COLUMNS = ["patient_id", "study_uid", "lesion_id", "chosen", "role", "category",
                    "planned_volume_ml", "reason", "reader", "decided_utc", "signed_off_by",
                    "signed_off_utc"]
AUDIT_KEYS = ["time_utc", "reader", "patient_id", "study_uid", "lesion_id", "field", "old", "new",
              "reason"]
LESION_FIELDS = ("role", "category", "planned_volume_ml")
SIGNOFF_FIELD = "signed_off"
ACCEPTED_REASON = "accepted tool proposal at sign-off"
#: Two planned volumes closer than this (mL) are the same.
VOLUME_TOL_ML = 1e-6


class Category(str, Enum):
    """itRECIST category: target / non-target, injected / noninjected."""

    T_I = "T-I"
    T_NI = "T-NI"
    NT_I = "NT-I"
    NT_NI = "NT-NI"


@dataclass(frozen=True)
class Proposal:
    """The tool's proposal for one lesion (from the study's ``ranking.csv``)."""

    patient_id: str
    study_uid: str
    lesion_id: str
    lesion_label: str
    role: Role
    category: Category
    planned_volume_ml: float | None
    tier: str
    rank: str
    reasons: str
    explanation: str
    measurable: bool


@dataclass(frozen=True)
class LesionDecision:
    """The team's current decision for one lesion (fields unset until decided: ``None``)."""

    patient_id: str
    study_uid: str
    lesion_id: str
    role: Role | None = None
    category: Category | None = None
    planned_volume_ml: float | None = None
    reason: str = ""
    reader: str = ""
    decided_utc: str = ""


@dataclass(frozen=True)
class SignOff:
    """A study signed off by a reader."""

    patient_id: str
    study_uid: str
    reader: str
    signed_off_utc: str


@dataclass(frozen=True)
class AuditEntry:
    """One line of ``audit.jsonl`` (values as strings; empty = unset)."""

    time_utc: str
    reader: str
    patient_id: str
    study_uid: str
    lesion_id: str
    field: str
    old: str
    new: str
    reason: str


@dataclass(frozen=True)
class ReviewState:
    """Decisions and sign-offs replayed from the audit log."""

    lesions: dict[tuple[str, str, str], LesionDecision]
    signoffs: dict[tuple[str, str], SignOff]


# ---------------------------------------------------------------------------- paths
def review_dir(results: str | Path) -> Path:
    """``RESULTS/review``: the app's folder; the workflow never writes here."""
    return Path(results) / REVIEW_DIR


def decisions_path(results: str | Path) -> Path:
    """``RESULTS/review/decisions.csv``."""
    return review_dir(results) / DECISIONS_NAME


def audit_path(results: str | Path) -> Path:
    """``RESULTS/review/audit.jsonl``."""
    return review_dir(results) / AUDIT_NAME


# ---------------------------------------------------------------------------- study sheet
def read_study_sheet(results: str | Path) -> list[dict[str, str]]:
    """Rows of ``RESULTS/cohort/studies.csv`` as string dicts (through :mod:`pipeline.sheet`).

    Raises
    ------
    ConfigError
        The sheet is missing.
    """
    from pipeline.sheet import read_study_sheet as _read, sheet_path

    p = sheet_path(results)
    if not p.is_file():
        raise ConfigError(f"no study sheet at {p}", file=p,
                          hint="point the review app at a results folder made by `hitit run`")
    return _read(p).to_dict("records")


def study_dir(results: str | Path, patient_id: str, study_uid: str) -> Path:
    """Per-study output folder ``RESULTS/studies/<patient_dir>/<study_dir>`` of a study.

    Raises
    ------
    ConfigError
        The study is not in the sheet.
    """
    for r in read_study_sheet(results):
        if r.get("patient_id") == patient_id and r.get("study_uid") == study_uid:
            return Path(results) / "studies" / r["patient_dir"] / r["study_dir"]
    raise ConfigError(f"study {study_uid} of patient {patient_id} is not in the study sheet",
                      file=Path(results) / "cohort" / "studies.csv",
                      hint="choose a study listed on the cohort page")


# ---------------------------------------------------------------------------- proposal
def proposed_category(role: Role, measurable: bool) -> Category:
    """itRECIST category the tool's role implies.

    ``inject`` -> T-I (NT-I when not measurable), ``monitor`` -> T-NI, ``none`` -> NT-NI.
    """
    if role is Role.INJECT:
        return Category.T_I if measurable else Category.NT_I
    if role is Role.MONITOR:
        return Category.T_NI
    return Category.NT_NI


def _float_or_none(v: str) -> float | None:
    v = (v or "").strip()
    if not v:
        return None
    f = float(v)
    return None if math.isnan(f) else f


def study_proposals(results: str | Path, patient_id: str, study_uid: str) -> dict[str, Proposal]:
    """The tool's proposal per lesion id of one study (empty when the study has no ranking.csv)."""
    p = study_dir(results, patient_id, study_uid) / "ranking.csv"
    if not p.is_file():
        return {}
    out: dict[str, Proposal] = {}
    with open(p, newline="") as fh:
        for r in csv.DictReader(fh):
            try:
                role = Role(r.get("role", "none") or "none")
            except ValueError as e:
                raise ConfigError(f"unknown role {r.get('role')!r} for lesion {r.get('lesion_id')}",
                                  file=p, hint="re-run the rank step of this study") from e
            measurable = str(r.get("measurable", "")).strip().lower() in ("true", "1", "yes")
            out[r["lesion_id"]] = Proposal(
                patient_id=r["patient_id"], study_uid=r["study_uid"], lesion_id=r["lesion_id"],
                lesion_label=r.get("lesion_label", r["lesion_id"]), role=role,
                category=proposed_category(role, measurable),
                planned_volume_ml=_float_or_none(r.get("planned_volume_ml", "")),
                tier=r.get("tier", ""), rank=r.get("rank", ""), reasons=r.get("reasons", ""),
                explanation=r.get("explanation", ""), measurable=measurable)
    return out


# ---------------------------------------------------------------------------- values
def _fmt(field: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, Enum):
        return value.value
    if field == "planned_volume_ml":
        return repr(float(value))
    return str(value)


def _parse(field: str, text: str):
    if text == "":
        return None
    if field == "role":
        return Role(text)
    if field == "category":
        return Category(text)
    if field == "planned_volume_ml":
        return float(text)
    return text


def _same(field: str, a, b) -> bool:
    if field == "planned_volume_ml" and a is not None and b is not None:
        return abs(float(a) - float(b)) <= VOLUME_TOL_ML
    return a == b


def now_utc() -> str:
    """Current time as ISO 8601 UTC with microseconds and ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> datetime:
    """ISO 8601 time (``Z`` or offset; naive = UTC) as an aware datetime."""
    d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------- audit log
def read_audit(results: str | Path) -> list[AuditEntry]:
    """Entries of ``audit.jsonl`` in file order (a torn last line of a killed writer is skipped)."""
    p = audit_path(results)
    if not p.is_file():
        return []
    out = []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                out.append(AuditEntry(**{k: str(d[k]) for k in AUDIT_KEYS}))
            except (ValueError, KeyError, TypeError):
                log.warning("skipping unreadable line %d of %s (a write interrupted before it was "
                            "acknowledged)", n, p)
    return out


def replay(entries: list[AuditEntry], cutoff: datetime | None = None) -> ReviewState:
    """State after the audit entries (those at or before ``cutoff`` when given)."""
    lesions: dict[tuple[str, str, str], LesionDecision] = {}
    signoffs: dict[tuple[str, str], SignOff] = {}
    if cutoff is not None and cutoff.tzinfo is None:
        cutoff = cutoff.replace(tzinfo=UTC)
    for e in entries:
        if cutoff is not None and parse_utc(e.time_utc) > cutoff:
            continue
        if e.field == SIGNOFF_FIELD:
            key2 = (e.patient_id, e.study_uid)
            if e.new:
                signoffs[key2] = SignOff(e.patient_id, e.study_uid, e.new, e.time_utc)
            else:
                signoffs.pop(key2, None)
            continue
        key = (e.patient_id, e.study_uid, e.lesion_id)
        cur = lesions.get(key) or LesionDecision(e.patient_id, e.study_uid, e.lesion_id)
        lesions[key] = replace(cur, **{e.field: _parse(e.field, e.new)}, reason=e.reason,
                               reader=e.reader, decided_utc=e.time_utc)
    return ReviewState(lesions, signoffs)


def load_state(results: str | Path, cutoff: datetime | None = None) -> ReviewState:
    """Current (or cut-off) decisions and sign-offs of a results folder."""
    return replay(read_audit(results), cutoff)


def _append_audit(results: Path, entries: list[AuditEntry]) -> None:
    p = audit_path(results)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        prefix = b""
        if size:  # a torn last line (killed writer) must not swallow the next entry
            with open(p, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    prefix = b"\n"
        data = prefix + b"".join(
            (json.dumps({k: getattr(e, k) for k in AUDIT_KEYS}, ensure_ascii=False) + "\n").encode()
            for e in entries)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- decisions.csv
def _rows(state: ReviewState) -> list[dict[str, str]]:
    rows = []
    for key in sorted(state.lesions):
        d = state.lesions[key]
        so = state.signoffs.get((d.patient_id, d.study_uid))
        rows.append({
            "patient_id": d.patient_id, "study_uid": d.study_uid, "lesion_id": d.lesion_id,
            "chosen": "1" if d.role is Role.INJECT else "0",
            "role": _fmt("role", d.role), "category": _fmt("category", d.category),
            "planned_volume_ml": _fmt("planned_volume_ml", d.planned_volume_ml),
            "reason": d.reason, "reader": d.reader, "decided_utc": d.decided_utc,
            "signed_off_by": so.reader if so else "", "signed_off_utc": so.signed_off_utc if so else ""})
    return rows


def write_decisions(state: ReviewState, out_file: str | Path) -> Path:
    """Write ``state`` as a decisions CSV atomically (temporary file, fsync, ``os.replace``)."""
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=DECISION_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(_rows(state))
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out)
    dfd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return out


@contextmanager
def _locked(results: Path):
    d = review_dir(results)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / LOCK_NAME, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def rebuild(results: str | Path) -> Path:
    """Re-derive ``decisions.csv`` from ``audit.jsonl`` (under the lock)."""
    results = Path(results)
    with _locked(results):
        return write_decisions(load_state(results), decisions_path(results))


def export(results: str | Path, out_file: str | Path, cutoff: datetime | None = None) -> Path:
    """Write the decisions as they stood at ``cutoff`` (UTC; naive = UTC; None = now) to ``out_file``."""
    return write_decisions(load_state(results, cutoff), out_file)


# ---------------------------------------------------------------------------- writes
def _check_reader(reader: str) -> str:
    reader = (reader or "").strip()
    if not reader:
        raise ConfigError("a decision needs the reader's name, found none",
                          hint="start the app with `hitit review RESULTS --reader NAME`")
    return reader


def record_decision(results: str | Path, *, reader: str, patient_id: str, study_uid: str,
                    lesion_id: str, role: Role | str | None = None,
                    category: Category | str | None = None,
                    planned_volume_ml: float | None = None, reason: str = "",
                    time_utc: str | None = None) -> LesionDecision:
    """Record the team's decision for one lesion; return the decision as now stored.

    Parameters
    ----------
    results : path
        Results folder.
    reader : str
        Who decides (written to the audit log).
    patient_id, study_uid, lesion_id : str
        The lesion (as in the study's ``ranking.csv``).
    role, category : str or enum, optional
        New values; ``None`` keeps the current decision (or, when undecided, the tool's proposal).
    planned_volume_ml : float, optional
        Planned injection volume in mL (only for ``role == inject``); ``None`` = none planned
        (for an injected lesion: keep the current decision or the proposal).
    reason : str
        Why; required when the resulting decision differs from the tool's proposal.
    time_utc : str, optional
        Time stamp to record (default: now); for tests of the cut-off export.

    Raises
    ------
    ConfigError
        Unknown lesion, study, role or category; negative volume; a volume for a lesion not
        injected; no reason for a decision that differs from the proposal; no reader.
    """
    results = Path(results)
    reader = _check_reader(reader)
    proposals = study_proposals(results, patient_id, study_uid)
    prop = proposals.get(lesion_id)
    if prop is None:
        raise ConfigError(f"lesion {lesion_id!r} is not in the ranking of study {study_uid}",
                          file=study_dir(results, patient_id, study_uid) / "ranking.csv",
                          hint="decide on a lesion listed on the study page")
    try:
        role = Role(role) if role not in (None, "") else None
        category = Category(category) if category not in (None, "") else None
    except ValueError as e:
        raise ConfigError(f"unknown value: {e}", hint=f"role is one of {[r.value for r in Role]}, "
                          f"category one of {[c.value for c in Category]}") from e
    if planned_volume_ml is not None:
        planned_volume_ml = float(planned_volume_ml)
        if not math.isfinite(planned_volume_ml) or planned_volume_ml <= 0:
            raise ConfigError(f"planned volume must be a positive number of mL, found {planned_volume_ml}",
                              hint="enter the volume in mL, or leave it empty")
    reason = (reason or "").strip()
    with _locked(results):
        state = load_state(results)
        key = (patient_id, study_uid, lesion_id)
        cur = state.lesions.get(key)
        base = {f: (getattr(cur, f) if cur is not None and getattr(cur, f) is not None
                    else getattr(prop, f)) for f in LESION_FIELDS}
        new = {"role": role if role is not None else base["role"],
               "category": category if category is not None else base["category"]}
        if new["role"] is Role.INJECT:
            new["planned_volume_ml"] = (planned_volume_ml if planned_volume_ml is not None
                                        else base["planned_volume_ml"])
        else:
            if planned_volume_ml is not None:
                raise ConfigError(f"a planned volume ({planned_volume_ml} mL) for lesion {lesion_id}, "
                                  f"whose role is {new['role'].value}",
                                  hint="plan a volume only for a lesion the team injects")
            new["planned_volume_ml"] = None
        differs = [f for f in LESION_FIELDS if not _same(f, new[f], getattr(prop, f))]
        if differs and not reason:
            raise ConfigError(f"lesion {lesion_id}: the decision differs from the tool's proposal in "
                              f"{', '.join(differs)} but no reason was given",
                              hint="say why the team decides otherwise (reason field)")
        t = time_utc or now_utc()
        entries = [AuditEntry(t, reader, patient_id, study_uid, lesion_id, f,
                              _fmt(f, getattr(cur, f) if cur is not None else None),
                              _fmt(f, new[f]), reason)
                   for f in LESION_FIELDS
                   if cur is None or not _same(f, getattr(cur, f), new[f])]
        entries = [e for e in entries if e.old != e.new]
        if entries:
            _append_audit(results, entries)
            state = replay(read_audit(results))
        write_decisions(state, decisions_path(results))
        return state.lesions[key]


def sign_off(results: str | Path, *, reader: str, patient_id: str, study_uid: str,
             time_utc: str | None = None) -> SignOff:
    """Sign a study off as ``reader``.

    Lesions of the proposal with a field still undecided get the proposal's value, recorded with
    the reason ``"accepted tool proposal at sign-off"``.
    """
    results = Path(results)
    reader = _check_reader(reader)
    proposals = study_proposals(results, patient_id, study_uid)
    with _locked(results):
        state = load_state(results)
        t = time_utc or now_utc()
        entries = []
        for lid, prop in sorted(proposals.items()):
            cur = state.lesions.get((patient_id, study_uid, lid))
            for f in LESION_FIELDS:
                old = getattr(cur, f) if cur is not None else None
                if cur is None or (old is None and getattr(prop, f) is not None
                                   and (f != "planned_volume_ml" or cur.role is Role.INJECT)):
                    entries.append(AuditEntry(t, reader, patient_id, study_uid, lid, f, _fmt(f, old),
                                              _fmt(f, getattr(prop, f)), ACCEPTED_REASON))
        entries = [e for e in entries if e.old != e.new]
        prev = state.signoffs.get((patient_id, study_uid))
        entries.append(AuditEntry(t, reader, patient_id, study_uid, "", SIGNOFF_FIELD,
                                  prev.reader if prev else "", reader, ""))
        _append_audit(results, entries)
        state = replay(read_audit(results))
        write_decisions(state, decisions_path(results))
        return state.signoffs[(patient_id, study_uid)]
