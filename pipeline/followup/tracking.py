"""One study's follow-up step: lesion tracks, responses and the files the rank job writes.

:func:`run_followup` is called by :func:`pipeline.study.run_ranking` (the rank job), which runs
after the patient's earlier studies. What it does depends on the study's place in the patient's
follow-up (:func:`pipeline.followup.timepoints.patient_timepoints`):

* **Baseline** (timepoint 0): one track per non-empty lesion segment; ``track_id`` = the baseline
  ``lesion_id``; the itRECIST category locked from the team's decision or the tool's ranking
  (:func:`~pipeline.followup.timepoints.baseline_category`); the position is the lesion centroid
  (``centroid_x/y/z_mm``, baseline scanner LPS, which *is* the baseline frame).
* **Follow-up** (timepoint i > 0): the study's ``registration_ref.npz`` is registered to the
  baseline's (:func:`pipeline.followup.registration.register_followup`).

  - Registration passed its quality figures: the lesion centroids (this study's scanner LPS) are
    mapped to the baseline frame and matched (:func:`pipeline.followup.matching.match_to_tracks`:
    TrackingUID first, then an optimal assignment on distance within
    ``followup.matching.max_distance_mm``) to the tracks at their last known position (the
    latest timepoint where the track had a centroid, baseline frame).
  - Registration failed (or a reference is missing / unreadable): the study is flagged for
    review (``followup.json`` ``flagged_for_review`` and a failure record of severity
    ``warning`` naming the quality figure), lesions are matched by TrackingUID only (never by
    raw coordinates), and every response of the timepoint is NE with the reason.

  A matched lesion is measured with the track's baseline method (short axis for nodes, organ
  ``lymph_node``; longest axial diameter otherwise); a matched empty segment (``lesion_empty``,
  or ``voxel_count`` 0) means the lesion disappeared: 0 mm. A track that matches nothing is not
  evaluable (NE, with a message; never silently 0). A follow-up lesion that matches no track
  starts a NEW track (``track_id`` ``new<i>-<lesion_id>``). A team decision (role ``inject``) at
  this study for a T-NI / NT-NI track reclassifies it to T-I / NT-I from this timepoint on, with
  ``injected_since`` = this study's UID.
* **Not a timepoint** (before the baseline, ``timepoint_role`` exclude, no lesion masks,
  undated): measured and ranked as usual; its follow-up files repeat the patient's history up
  to the previous study, so the patient's latest study always holds the whole history.

Then the responses of every timepoint so far (:func:`pipeline.followup.response.assess_patient`;
rows of earlier timepoints are taken unchanged from the previous study's file) and three files
in the study folder, each written atomically:

``followup_tracking.csv``
    :data:`LESION_TRACKING_COLUMNS`, every tracking row of the patient up to this timepoint.
``followup_response.csv``
    :data:`~pipeline.followup.response.RESPONSE_COLUMNS`, one row per timepoint up to this one.
``followup.json``
    timepoint index, baseline study, registration (``as_dict``), warnings, ``flagged_for_review``
    and its reason, failure records (the cohort step adds them to ``cohort/failures.csv``).

Track positions are in the baseline frame (baseline scanner LPS, mm). Each track keeps one
TrackingUID (:func:`track_tracking_uid`): the baseline segment's TrackingUID when it is a valid
UID, else the UID the DICOM SR derives from the baseline study and lesion id; the rank job puts
it in ``ranking.csv`` so that the SR of every timepoint names the lesion with the same UID.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import FollowupError, PipelineError
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
from pipeline.followup.timepoints import (
    PatientTimepoints,
    TeamDecision,
    baseline_category,
    patient_timepoints,
    read_decisions,
    reclassified_category,
)

log = logging.getLogger(__name__)

#: Columns of ``followup_tracking.csv`` and ``cohort/lesion_tracking.csv`` (one row per lesion
#: track and timepoint). ``tracking_uid`` is the track's stable TrackingUID
#: (:func:`track_tracking_uid`); positions are baseline-frame LPS mm.
LESION_TRACKING_COLUMNS = [
    "patient_id", "track_id", "study_uid", "timepoint_index", "lesion_id", "lesion_label",
    "itrecist_category", "injected_since", "measure_mm", "measure_kind", "match_method",
    "match_distance_mm", "status", "x_baseline_mm", "y_baseline_mm", "z_baseline_mm",
    "tracking_uid",
]
TRACKING_NAME = "followup_tracking.csv"
RESPONSE_NAME = "followup_response.csv"
INFO_NAME = "followup.json"
_FLOAT_COLS = ("measure_mm", "match_distance_mm", "x_baseline_mm", "y_baseline_mm",
               "z_baseline_mm")
_INJECTED = (Category.T_I, Category.NT_I)
_XYZ = ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm")
_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass(frozen=True)
class FollowupResult:
    """What the rank job needs from the follow-up step (besides the files written).

    Attributes
    ----------
    timepoint_index : int or None
        0 = baseline; None when the study is not a timepoint.
    is_baseline : bool
    current : DataFrame
        This timepoint's tracking rows (:data:`LESION_TRACKING_COLUMNS`); empty when the
        study is not a timepoint.
    info : dict
        The content of ``followup.json``.
    """

    timepoint_index: int | None
    is_baseline: bool
    current: pd.DataFrame
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- helpers
def _f(v) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan
    return x


def _s(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return ""
    return str(v).strip()


def is_empty_segment(row: dict) -> bool:
    """The lesion row is an empty segment (``lesion_empty`` true, or ``voxel_count`` 0)."""
    v = row.get("lesion_empty")
    if isinstance(v, (bool, np.bool_)) and bool(v):
        return True
    if _s(v).lower() in ("true", "1", "yes"):
        return True
    vc = _f(row.get("voxel_count"))
    return vc == 0.0


def measure_kind_of(row: dict) -> MeasureKind:
    """Short axis for lymph nodes (organ ``lymph_node``), longest axial diameter otherwise."""
    return (MeasureKind.SHORT_AXIS if _s(row.get("organ")) == "lymph_node"
            else MeasureKind.LONGEST_DIAMETER)


def measure_of(row: dict, kind: MeasureKind) -> float:
    """The lesion's measure (mm) by ``kind``: 0 for an empty segment, NaN when unknown."""
    if is_empty_segment(row):
        return 0.0
    col = "short_axis_mm" if kind is MeasureKind.SHORT_AXIS else "longest_diameter_mm"
    return _f(row.get(col))


def track_tracking_uid(tracking_uid: str, study_uid: str, lesion_id: str) -> str:
    """The track's TrackingUID: ``tracking_uid`` when it is a valid DICOM UID, else the UID
    the DICOM SR derives from (study UID, "lesion", lesion id) (:mod:`pipeline.report.sr`)."""
    u = _s(tracking_uid)
    if u and _UID_RE.fullmatch(u) and len(u) <= 64:
        return u
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(study_uid), "lesion", str(lesion_id)])


def read_tracking(path: Path) -> pd.DataFrame:
    """Read a ``followup_tracking.csv`` (text columns as str, measures and positions float,
    ``timepoint_index`` int).

    Raises
    ------
    FollowupError
        The file is missing or lacks a column of :data:`LESION_TRACKING_COLUMNS`.
    """
    p = Path(path)
    if not p.is_file():
        raise FollowupError(f"expected the previous timepoint's tracks at {p}, found no file",
                            file=p, hint="run the rank step of the patient's earlier studies "
                            "first (the workflow does this in date order)")
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    missing = [c for c in LESION_TRACKING_COLUMNS if c not in df.columns]
    if missing:
        raise FollowupError(f"tracking table lacks column(s) {missing}", file=p,
                            hint="it was written by an older version: rerun the rank steps of "
                            "this patient")
    return _typed(df)


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reindex(columns=LESION_TRACKING_COLUMNS).copy()
    for c in LESION_TRACKING_COLUMNS:
        if c in _FLOAT_COLS:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
        elif c == "timepoint_index":
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
        else:
            df[c] = df[c].map(_s).astype(object)
    return df


def _read_responses(path: Path) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        return pd.DataFrame(columns=RESPONSE_COLUMNS)
    return pd.read_csv(p, dtype=str, keep_default_na=False).reindex(columns=RESPONSE_COLUMNS)


def _write_outputs(out_dir: Path, tracking: pd.DataFrame, responses: pd.DataFrame,
                   info: dict) -> None:
    from pipeline.io.provenance import write_json
    from pipeline.io.tables import write_text_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    tr = tracking.reindex(columns=LESION_TRACKING_COLUMNS)
    write_text_atomic(out_dir / TRACKING_NAME,
                      tr.to_csv(index=False, lineterminator="\n", float_format="%.4f"),
                      only_if_changed=False)
    write_text_atomic(out_dir / RESPONSE_NAME,
                      responses.reindex(columns=RESPONSE_COLUMNS).to_csv(index=False,
                                                                         lineterminator="\n"),
                      only_if_changed=False)
    write_json(out_dir / INFO_NAME, info)


# ---------------------------------------------------------------------------- baseline
def baseline_rows(lesions: pd.DataFrame, ranking: pd.DataFrame, study_uid: str,
                  patient_id: str,
                  decisions: dict[tuple[str, str, str], TeamDecision]) -> tuple[pd.DataFrame,
                                                                               list[str]]:
    """Timepoint-0 tracking rows of a baseline study, and warnings.

    Parameters
    ----------
    lesions : DataFrame
        The baseline ``lesions.csv`` (``lesion_id``, ``lesion_label``, ``organ``,
        ``longest_diameter_mm``, ``short_axis_mm``, ``centroid_x/y/z_mm`` (baseline scanner
        LPS, mm), ``tracking_uid``, optional ``lesion_empty``).
    ranking : DataFrame
        The baseline ranking (``lesion_id``, ``role``, ``measurable``).
    study_uid, patient_id : str
    decisions : dict
        :func:`~pipeline.followup.timepoints.read_decisions`.
    """
    rk = {str(r["lesion_id"]): r for r in ranking.to_dict(orient="records")} \
        if not ranking.empty and "lesion_id" in ranking.columns else {}
    rows, warnings = [], []
    for r in lesions.to_dict(orient="records"):
        lid = str(r["lesion_id"])
        if is_empty_segment(r):
            warnings.append(f"baseline lesion {lid} ({_s(r.get('lesion_label'))}) has an empty "
                            "segment: no track")
            continue
        rr = rk.get(lid, {})
        measurable = _s(rr.get("measurable")).lower() in ("true", "1", "yes")
        cat, _src = baseline_category(_s(rr.get("role")) or "none", measurable,
                                      decisions.get((patient_id, study_uid, lid)))
        kind = measure_kind_of(r)
        rows.append({
            "patient_id": patient_id, "track_id": lid, "study_uid": study_uid,
            "timepoint_index": 0, "lesion_id": lid, "lesion_label": _s(r.get("lesion_label")),
            "itrecist_category": cat.value,
            "injected_since": study_uid if cat in _INJECTED else "",
            "measure_mm": measure_of(r, kind), "measure_kind": kind.value,
            "match_method": "baseline", "match_distance_mm": math.nan,
            "status": Status.PRESENT.value,
            "x_baseline_mm": _f(r.get(_XYZ[0])), "y_baseline_mm": _f(r.get(_XYZ[1])),
            "z_baseline_mm": _f(r.get(_XYZ[2])),
            "tracking_uid": track_tracking_uid(_s(r.get("tracking_uid")), study_uid, lid),
        })
    return _typed(pd.DataFrame(rows, columns=LESION_TRACKING_COLUMNS)), warnings


# ---------------------------------------------------------------------------- follow-up
@dataclass(frozen=True)
class Registration:
    """Outcome of registering a follow-up to the baseline, as the tracking step uses it.

    ``ok`` False means: no positional matching, responses NE, study flagged. ``result`` is the
    :class:`~pipeline.followup.registration.FollowupRegistration` when registration ran.
    """

    ok: bool
    reason: str
    result: object | None = None
    quality_figure: str = ""

    def to_baseline(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """(n, 3) follow-up scanner LPS mm -> (n, 3) baseline LPS mm (only when ``ok``)."""
        return np.asarray(self.result.to_baseline(np.asarray(points_lps_mm, dtype=float)))

    def as_dict(self) -> dict:
        d = {"ok": self.ok, "reason": self.reason}
        if self.result is not None:
            d.update(self.result.as_dict())
        return d


def register_study(baseline_ref: Path, followup_ref: Path, cfg_registration: dict) -> Registration:
    """Register the follow-up reference to the baseline's; a missing or unreadable reference,
    or a failed quality check, gives ``ok`` False with the reason."""
    from pipeline.followup.registration import read_reference, register_followup

    for p, what in ((baseline_ref, "baseline"), (followup_ref, "follow-up")):
        if not Path(p).is_file():
            return Registration(False, f"no registration reference of the {what} study ({p}): "
                                "rerun its study job", quality_figure="reference")
    try:
        reg = register_followup(read_reference(baseline_ref), read_reference(followup_ref),
                                cfg_registration)
    except PipelineError as exc:
        return Registration(False, f"registration could not run: {exc}",
                            quality_figure="reference")
    if reg.status == "failed":
        reason = reg.reason or "registration failed its quality check"
        fig = ("body_dice" if "dice" in reason.lower() else
               "lung_msd_mm" if "lung" in reason.lower() else "quality")
        return Registration(False, reason, reg, fig)
    return Registration(True, "", reg)


def _track_state(history: pd.DataFrame) -> pd.DataFrame:
    """Per track: latest category, injected_since, measure kind, TrackingUID, label of the
    first lesion and last known position (latest row with a finite position)."""
    out = []
    for tid, g in history[history["track_id"] != ""].groupby("track_id", sort=False):
        g = g.sort_values("timepoint_index")
        last = g.iloc[-1]
        pos = g[np.isfinite(g[["x_baseline_mm", "y_baseline_mm", "z_baseline_mm"]]).all(axis=1)]
        xyz = (pos.iloc[-1][["x_baseline_mm", "y_baseline_mm", "z_baseline_mm"]].to_numpy(float)
               if len(pos) else np.full(3, np.nan))
        out.append({"track_id": tid, "itrecist_category": last["itrecist_category"],
                    "injected_since": last["injected_since"], "measure_kind": last["measure_kind"],
                    "tracking_uid": last["tracking_uid"], "first_label": g.iloc[0]["lesion_label"],
                    "x_mm": xyz[0], "y_mm": xyz[1], "z_mm": xyz[2]})
    return pd.DataFrame(out, columns=["track_id", "itrecist_category", "injected_since",
                                      "measure_kind", "tracking_uid", "first_label", "x_mm",
                                      "y_mm", "z_mm"])


def followup_rows(history: pd.DataFrame, lesions: pd.DataFrame, reg: Registration, *,
                  patient_id: str, study_uid: str, index: int, max_distance_mm: float,
                  decisions: dict[tuple[str, str, str], TeamDecision]
                  ) -> tuple[pd.DataFrame, list[str]]:
    """This follow-up timepoint's tracking rows, and warnings (see the module docstring).

    Parameters
    ----------
    history : DataFrame
        Tracking rows of the earlier timepoints (:data:`LESION_TRACKING_COLUMNS`).
    lesions : DataFrame
        This study's ``lesions.csv`` (centroids in this study's scanner LPS, mm).
    reg : Registration
        From :func:`register_study`; when not ``ok``, matching is by TrackingUID only.
    patient_id, study_uid : str
    index : int
        This timepoint's index (> 0).
    max_distance_mm : float
        ``followup.matching.max_distance_mm`` (baseline frame).
    decisions : dict
        The team's decisions (a reclassification NI -> I recorded at this study).
    """
    from pipeline.followup.matching import match_to_tracks

    tracks = _track_state(history)
    les = lesions.reset_index(drop=True) if not lesions.empty else pd.DataFrame(
        columns=["lesion_id", "lesion_label", "tracking_uid", *_XYZ])
    les_rows = {str(r["lesion_id"]): r for r in les.to_dict(orient="records")}
    xyz = np.column_stack([pd.to_numeric(les[c], errors="coerce").to_numpy(float)
                           if c in les.columns else np.full(len(les), np.nan) for c in _XYZ]) \
        if len(les) else np.zeros((0, 3))
    mapped = np.full_like(xyz, np.nan)
    finite = np.isfinite(xyz).all(axis=1)
    if reg.ok and finite.any():
        mapped[finite] = reg.to_baseline(xyz[finite])
    empty = np.array([is_empty_segment(r) for r in les.to_dict(orient="records")], dtype=bool)
    if len(les):
        mapped[empty] = np.nan
    lesion_frame = pd.DataFrame({
        "lesion_id": [str(v) for v in les["lesion_id"]] if len(les) else [],
        "tracking_uid": [_s(v) for v in les["tracking_uid"]] if "tracking_uid" in les else
        [""] * len(les),
        "x_mm": mapped[:, 0], "y_mm": mapped[:, 1], "z_mm": mapped[:, 2]})
    track_frame = tracks[["track_id", "tracking_uid", "x_mm", "y_mm", "z_mm"]].copy()
    if not reg.ok:  # never match by raw coordinates: TrackingUID only
        track_frame[["x_mm", "y_mm", "z_mm"]] = np.nan
    res = match_to_tracks(track_frame, lesion_frame, max_distance_mm=max_distance_mm)
    by_track = tracks.set_index("track_id").to_dict(orient="index")
    mapped_of = {lid: mapped[i] for i, lid in enumerate(lesion_frame["lesion_id"])}
    rows, warnings = [], []
    for m in res.matches:
        t = by_track[m.track_id]
        r = les_rows[m.lesion_id]
        cat = Category(t["itrecist_category"])
        since = t["injected_since"]
        new_cat = reclassified_category(cat, decisions.get((patient_id, study_uid, m.lesion_id)))
        if new_cat is not None:
            warnings.append(f"track {m.track_id}: reclassified {cat.value} -> {new_cat.value} "
                            f"from this timepoint (team decision, lesion {m.lesion_id})")
            cat, since = new_cat, study_uid
        kind = MeasureKind(t["measure_kind"])
        gone = is_empty_segment(r)
        status = (Status.DISAPPEARED if gone else Status.NEW if cat is Category.NEW
                  else Status.PRESENT)
        p = mapped_of[m.lesion_id]
        rows.append({
            "patient_id": patient_id, "track_id": m.track_id, "study_uid": study_uid,
            "timepoint_index": index, "lesion_id": m.lesion_id,
            "lesion_label": _s(r.get("lesion_label")), "itrecist_category": cat.value,
            "injected_since": since, "measure_mm": measure_of(r, kind), "measure_kind": kind.value,
            "match_method": m.method,
            "match_distance_mm": math.nan if m.distance_mm is None else float(m.distance_mm),
            "status": status.value if reg.ok else Status.NOT_EVALUABLE.value,
            "x_baseline_mm": p[0], "y_baseline_mm": p[1], "z_baseline_mm": p[2],
            "tracking_uid": t["tracking_uid"],
        })
    for tid in res.unmatched_tracks:
        t = by_track[tid]
        warnings.append(f"track {tid} ({t['first_label']}, {t['itrecist_category']}) not found in "
                        "this study's segmentation: not evaluable")
        rows.append({
            "patient_id": patient_id, "track_id": tid, "study_uid": study_uid,
            "timepoint_index": index, "lesion_id": "", "lesion_label": "",
            "itrecist_category": t["itrecist_category"], "injected_since": t["injected_since"],
            "measure_mm": math.nan, "measure_kind": t["measure_kind"], "match_method": "none",
            "match_distance_mm": math.nan, "status": Status.NOT_EVALUABLE.value,
            "x_baseline_mm": math.nan, "y_baseline_mm": math.nan, "z_baseline_mm": math.nan,
            "tracking_uid": t["tracking_uid"],
        })
    for lid in res.unmatched_lesions:
        r = les_rows[lid]
        label = _s(r.get("lesion_label"))
        if is_empty_segment(r):
            warnings.append(f"lesion {lid} ({label}) is an empty segment that matches no track: "
                            "ignored")
            continue
        kind = measure_kind_of(r)
        if not reg.ok:
            warnings.append(f"lesion {lid} ({label}) matches no track by TrackingUID and cannot "
                            "be placed (registration failed): not evaluable")
            tid, cat, status = "", "", Status.NOT_EVALUABLE.value
            p = np.full(3, np.nan)
        else:
            tid, cat, status = f"new{index}-{lid}", Category.NEW.value, Status.NEW.value
            p = mapped_of[lid]
            warnings.append(f"lesion {lid} ({label}) matches no track: NEW lesion (track {tid})")
        rows.append({
            "patient_id": patient_id, "track_id": tid, "study_uid": study_uid,
            "timepoint_index": index, "lesion_id": lid, "lesion_label": label,
            "itrecist_category": cat, "injected_since": "", "measure_mm": measure_of(r, kind),
            "measure_kind": kind.value, "match_method": "none", "match_distance_mm": math.nan,
            "status": status, "x_baseline_mm": p[0], "y_baseline_mm": p[1], "z_baseline_mm": p[2],
            "tracking_uid": track_tracking_uid(_s(r.get("tracking_uid")), study_uid, lid) if tid
            else "",
        })
    return _typed(pd.DataFrame(rows, columns=LESION_TRACKING_COLUMNS)), warnings


# ---------------------------------------------------------------------------- responses
def timepoint_inputs(history: pd.DataFrame, dates: dict[str, str], cfg_response: dict,
                     study_of_index: dict[int, str] | None = None) -> list[TimepointInput]:
    """The response module's inputs from the tracking rows (one per timepoint index 0..n, n the
    largest index in ``history`` or ``study_of_index``; a timepoint without a row gets no
    observation).

    A row's measure is None when its status is not_evaluable. A non-target (NT-I / NT-NI) is
    flagged as progressed by :func:`~pipeline.followup.response.nontarget_progressed` from its
    measure and its nadir (the smallest of its earlier evaluable measures). Rows without a track
    (a lesion that could not be placed) are left out.
    """
    out = []
    h = history[history["track_id"] != ""].sort_values(["timepoint_index", "track_id"])
    uids = dict(study_of_index or {})
    for r in history.to_dict(orient="records"):
        uids.setdefault(int(r["timepoint_index"]), str(r["study_uid"]))
    nadir: dict[str, float] = {}
    groups = {int(i): g for i, g in h.groupby("timepoint_index", sort=True)}
    for idx in range(max(uids) + 1 if uids else 0):
        obs = []
        uid = uids.get(idx, "")
        g = groups.get(idx, h.iloc[0:0])
        for r in g.to_dict(orient="records"):
            status = Status(r["status"])
            m = None if status is Status.NOT_EVALUABLE or not math.isfinite(r["measure_mm"]) \
                else float(r["measure_mm"])
            cat = Category(r["itrecist_category"])
            prog = False
            if cat in (Category.NT_I, Category.NT_NI) and m is not None and r["track_id"] in nadir:
                prog = bool(nontarget_progressed(m, nadir[r["track_id"]], cfg_response))
            obs.append(Observation(track_id=r["track_id"], category=cat,
                                   measure_kind=MeasureKind(r["measure_kind"]), measure_mm=m,
                                   status=status, nontarget_progression=prog))
            if m is not None:
                nadir[r["track_id"]] = min(m, nadir.get(r["track_id"], math.inf))
        out.append(TimepointInput(index=int(idx), study_uid=uid, study_date=dates.get(uid, ""),
                                  observations=tuple(obs)))
    return out


def _ne_response(tr, reason: str):
    """``tr`` (a TimepointResponse) with every response NE and ``reason`` first."""
    return replace(tr, response_overall=Response.NE, response_injected=Response.NE,
                   response_noninjected=Response.NE,
                   reasons=f"{reason}; " + (tr.reasons or "") if tr.reasons else reason)


def responses_table(history: pd.DataFrame, patient_id: str, dates: dict[str, str],
                    cfg_response: dict, *, current_index: int,
                    previous: pd.DataFrame | None = None, flag_reason: str = "",
                    study_of_index: dict[int, str] | None = None) -> pd.DataFrame:
    """``followup_response.csv`` rows: earlier timepoints from ``previous`` (unchanged), the
    current one assessed over all tracking rows; with ``flag_reason`` the current timepoint's
    responses are NE with that reason."""
    tps = timepoint_inputs(history, dates, cfg_response, study_of_index)
    assessed = assess_patient(tps, cfg_response) if tps else []
    rows = []
    prev = {} if previous is None or previous.empty else {
        int(r["timepoint_index"]): r for r in previous.to_dict(orient="records")
        if _s(r.get("timepoint_index")).isdigit()}
    for tr in assessed:
        if tr.timepoint_index < current_index and tr.timepoint_index in prev:
            rows.append(prev[tr.timepoint_index])
            continue
        if tr.timepoint_index == current_index and flag_reason:
            tr = _ne_response(tr, flag_reason)
        rows.append({"patient_id": patient_id, **tr.as_row()})
    return pd.DataFrame(rows, columns=RESPONSE_COLUMNS)


# ---------------------------------------------------------------------------- entry point
def _sibling(out_dir: Path, row: dict) -> Path:
    """The folder of another study of the same patient (``out_dir``'s sibling ``study_dir``).

    Raises
    ------
    FollowupError
        When ``study_dir`` is not a plain folder name (it would leave the patient's folder).
    """
    name = str(row.get("study_dir", ""))
    p = (out_dir.parent / name).resolve()
    if not name or p.parent != out_dir.parent.resolve():
        raise FollowupError(f"study folder {name!r} of study {row.get('study_uid', '?')} is not "
                            f"a folder of {out_dir.parent}", tag="study_dir",
                            hint="re-run the index step so that the sheet matches the results "
                            "folder")
    return p


def run_followup(results: Path, row: dict, sheet: pd.DataFrame, cfg: dict, out_dir: Path, *,
                 lesions: pd.DataFrame | None = None, ranking: pd.DataFrame | None = None,
                 decisions: dict[tuple[str, str, str], TeamDecision] | None = None
                 ) -> FollowupResult:
    """The follow-up step of one study (see the module docstring); writes its three files.

    Parameters
    ----------
    results : Path
        RESULTS folder (the previous study's folder and ``review/decisions.csv`` are read).
    row : dict
        This study's study-sheet row.
    sheet : DataFrame
        The whole study sheet (the patient's timepoints).
    cfg : dict
        Validated configuration (``followup`` section).
    out_dir : Path
        ``RESULTS/studies/<patient_dir>/<study_dir>``.
    lesions, ranking : DataFrame, optional
        This study's lesion table and ranking (read from ``out_dir`` when not given).
    decisions : dict, optional
        The team's decisions (read from ``RESULTS/review/decisions.csv`` when not given).
    """
    from pipeline.io.tables import read_table_if_present
    from pipeline.review.store import decisions_path

    results, out_dir = Path(results), Path(out_dir)
    fcfg = cfg["followup"]
    if lesions is None:
        lesions = read_table_if_present(out_dir / "lesions.csv")
    if ranking is None:
        ranking = read_table_if_present(out_dir / "ranking.csv")
    if decisions is None:
        decisions = read_decisions(decisions_path(results))
    tps: PatientTimepoints = patient_timepoints(sheet, str(row["patient_dir"]))
    me = tps.of(str(row["study_dir"]))
    patient_id, study_uid = str(row.get("patient_id", "")), str(row.get("study_uid", ""))
    dates = {s.study_uid: s.study_date for s in tps.studies}
    index_uids = {s.index: s.study_uid for s in tps.studies
                  if s.index is not None and me.index is not None and s.index <= me.index}
    base = tps.baseline
    info: dict = {
        "patient_id": patient_id, "study_uid": study_uid, "timepoint_index": me.index,
        "is_baseline": me.is_baseline, "not_a_timepoint_reason": me.excluded_reason,
        "baseline_study_uid": base.study_uid if base is not None else "",
        "previous_study_uid": "", "registration": None, "flagged_for_review": False,
        "flag_reason": "", "warnings": [], "failures": [],
    }
    empty = _typed(pd.DataFrame(columns=LESION_TRACKING_COLUMNS))
    prev = tps.previous(str(row["study_dir"]))
    prev_dir = _sibling(out_dir, prev.row) if prev is not None else None
    if prev is not None:
        info["previous_study_uid"] = prev.study_uid

    if me.is_baseline:
        les = lesions if not lesions.empty and "lesion_id" in lesions.columns else pd.DataFrame(
            columns=["lesion_id"])
        current, warns = baseline_rows(les, ranking, study_uid, patient_id, decisions)
        info["warnings"] += warns
        if current.empty:
            info["warnings"].append("the baseline study has no lesion: no track")
        history = current
        responses = responses_table(history, patient_id, dates, fcfg["response"],
                                    current_index=0, study_of_index=index_uids)
        info["n_tracks"] = int(len(current))
    elif me.index is None:
        history = read_tracking(prev_dir / TRACKING_NAME) if prev_dir is not None else empty
        responses = (_read_responses(prev_dir / RESPONSE_NAME) if prev_dir is not None
                     else pd.DataFrame(columns=RESPONSE_COLUMNS))
        current = empty
        info["warnings"].append(f"not a follow-up timepoint ({me.excluded_reason}): measured and "
                                "ranked, left out of the response assessment")
    else:
        history = read_tracking(prev_dir / TRACKING_NAME)
        base_dir = _sibling(out_dir, base.row)
        reg = register_study(base_dir / "registration_ref.npz", out_dir / "registration_ref.npz",
                             fcfg["registration"])
        info["registration"] = reg.as_dict()
        les = lesions if not lesions.empty and "lesion_id" in lesions.columns else pd.DataFrame()
        current, warns = followup_rows(
            history, les, reg, patient_id=patient_id, study_uid=study_uid, index=me.index,
            max_distance_mm=float(fcfg["matching"]["max_distance_mm"]), decisions=decisions)
        info["warnings"] += warns
        flag = ""
        if not reg.ok:
            flag = (f"registration to the baseline failed ({reg.reason}): lesions matched by "
                    "TrackingUID only, responses not evaluable")
            info["flagged_for_review"] = True
            info["flag_reason"] = flag
            info["failures"].append({
                "patient_id": patient_id, "study_uid": study_uid, "stage": "followup",
                "error_class": "RegistrationQualityError",
                "message": f"follow-up registration to baseline study {base.study_uid} failed "
                           f"its quality check ({reg.quality_figure}): {reg.reason}; the study is "
                           "flagged for review and its responses are NE",
                "file": str(out_dir / "registration_ref.npz"),
                "series_uid": str(getattr(reg.result, "series_uid", "") or ""), "tag": "",
                "hint": "check the follow-up CT (field of view, patient position) and review "
                        "the study; followup.registration holds the quality thresholds",
                "severity": "warning"})
            log.warning("follow-up %s flagged for review: %s", study_uid, reg.reason)
        history = pd.concat([history, current], ignore_index=True) if len(current) else history
        responses = responses_table(history, patient_id, dates, fcfg["response"],
                                    current_index=me.index,
                                    previous=_read_responses(prev_dir / RESPONSE_NAME),
                                    flag_reason=flag, study_of_index=index_uids)
        info["n_tracks"] = int(current["track_id"].ne("").sum())
    for w in info["warnings"]:
        log.info("follow-up %s: %s", study_uid, w)
    _write_outputs(out_dir, _typed(history), responses, info)
    return FollowupResult(me.index, me.is_baseline, current, info)


def followup_failures(study_dir: Path) -> list[dict]:
    """Failure records of a study's follow-up step (``followup.json``), [] when none."""
    p = Path(study_dir) / INFO_NAME
    if not p.is_file():
        return []
    try:
        return list(json.loads(p.read_text()).get("failures", []))
    except (ValueError, OSError) as exc:
        log.warning("cannot read %s: %s", p, exc)
        return []
