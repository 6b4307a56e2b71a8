"""Follow-up (itRECIST) parts of the worksheet and the dashboard.

The follow-up step of the rank job (:mod:`pipeline.followup.tracking`) writes three files in each
study folder; this module reads them (never DICOM) and builds what the pages show:

``followup_response.csv``
    One row per timepoint up to this study (:data:`pipeline.followup.response.RESPONSE_COLUMNS`).
    When it holds more than the baseline row the study is a follow-up: the worksheet's itRECIST
    section becomes "itRECIST follow-up, timepoint k (date)" (:func:`followup_context`).
``followup_tracking.csv``
    One row per lesion track and timepoint
    (:data:`pipeline.followup.tracking.LESION_TRACKING_COLUMNS`): the lesion table across
    timepoints and the key images of the same lesion at each timepoint.
``followup.json``
    Timepoint index, registration quality, ``flagged_for_review`` and ``flag_reason`` (a red
    banner on the worksheet).

The follow-up section shows: the responses of this timepoint (overall, injected, noninjected,
best overall) with their reasons and the history of every timepoint; the sum-of-diameters
timeline (T-I, T-NI, all targets: a PNG written beside the worksheet as :data:`PLOT_NAME` and
embedded in it); the lesion table across timepoints (track, category, measure per timepoint,
status, change from the first measure); the key images of each track at each timepoint, linked
by relative paths to the PNG files the study jobs wrote in their own study folders
(``<study>/keyimages/<lesion_id>.png``; "no key image" when absent), so the worksheet shows
them when opened inside the results folder; and the next-cycle plan from this study's
``ranking.csv`` (the re-planned inject / monitor roles with their reasons, e.g. why an injected
lesion was replaced).

The dashboard gets each patient's latest responses and best overall response from
``cohort/response.csv`` (:func:`patient_responses`).

All text reaches the pages through the Jinja environment of :mod:`pipeline.report.templates`
(HTML autoescaping on).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from pipeline.report import figures as F

log = logging.getLogger(__name__)

RESPONSE_NAME = "followup_response.csv"
TRACKING_NAME = "followup_tracking.csv"
INFO_NAME = "followup.json"
#: The SOD timeline PNG written in the study folder (beside the worksheet).
PLOT_NAME = "followup_sod_timeline.png"
CATEGORY_ORDER = ["T-I", "T-NI", "NT-I", "NT-NI", "NEW"]
RESPONSE_KEYS = [("response_overall", "Overall"), ("response_injected", "Injected (T-I, NT-I)"),
                 ("response_noninjected", "Noninjected (T-NI, NT-NI, new)"),
                 ("best_overall_response", "Best overall response")]
_PLAN_CODES = ("FOLLOWUP_REPLACEMENT", "FOLLOWUP_NOT_INJECTABLE", "FOLLOWUP_KEEP_INJECTED")


# ------------------------------------------------------------------------------------ reading
def _s(v) -> str:
    return "" if F.is_missing(v) else str(v).strip()


def _int(v) -> int | None:
    f = F.to_float(v)
    return None if f is None else int(f)


def _read_csv(path: Path) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        return pd.DataFrame()
    try:
        return pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError) as exc:
        log.warning("cannot read %s: %s", p, exc)
        return pd.DataFrame()


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def fmt_date(v) -> str:
    """DICOM ``YYYYMMDD`` -> ``YYYY-MM-DD`` (other text unchanged, missing -> "")."""
    s = _s(v).split(".")[0]
    return f"{s[:4]}-{s[4:6]}-{s[6:]}" if len(s) == 8 and s.isdigit() else s


def is_followup(responses: pd.DataFrame) -> bool:
    """True when ``followup_response.csv`` has a row beyond the baseline (timepoint 0)."""
    if responses.empty or "timepoint_index" not in responses.columns:
        return False
    idx = [_int(v) for v in responses["timepoint_index"]]
    return any(i is not None and i > 0 for i in idx)


# ------------------------------------------------------------------------------------ responses
def response_rows(responses: pd.DataFrame) -> list[dict]:
    """``followup_response.csv`` rows as display dicts, in timepoint order.

    Each dict: ``index`` (int), ``date`` (YYYY-MM-DD), ``study_uid``, the SODs (mm, float or
    None), the changes (%, float or None), ``new_lesions`` (int or None), the four responses
    (text, "" at baseline) and ``reasons``.
    """
    out = []
    for r in responses.to_dict(orient="records"):
        i = _int(r.get("timepoint_index"))
        if i is None:
            continue
        row = {"index": i, "date": fmt_date(r.get("study_date")), "study_uid": _s(r.get("study_uid")),
               "new_lesions": _int(r.get("new_lesions")), "reasons": _s(r.get("reasons"))}
        for c in ("sod_ti_mm", "sod_tni_mm", "sod_targets_mm", "change_ti_from_baseline_pct",
                  "change_tni_from_baseline_pct", "change_targets_from_baseline_pct",
                  "change_targets_from_nadir_pct"):
            row[c] = F.to_float(r.get(c))
        for c, _ in RESPONSE_KEYS:
            row[c] = _s(r.get(c))
        out.append(row)
    out.sort(key=lambda r: r["index"])
    return out


def sod_plot(rows: list[dict], current_index: int | None) -> tuple[bytes, str]:
    """The SOD timeline (:func:`pipeline.report.figures.sod_timeline`) of :func:`response_rows`."""
    labels = [f"T{r['index']}" + (f"\n{r['date']}" if r["date"] else "") for r in rows]
    pos = next((k for k, r in enumerate(rows) if r["index"] == current_index), None)
    return F.sod_timeline(labels, [r["sod_ti_mm"] for r in rows], [r["sod_tni_mm"] for r in rows],
                          [r["sod_targets_mm"] for r in rows], current=pos)


# ------------------------------------------------------------------------------------ lesions
def study_folders(patient_folder: Path) -> dict[str, Path]:
    """Study UID -> study folder, for the study folders of one patient (``followup.json`` or
    ``provenance.json`` names each folder's study)."""
    out: dict[str, Path] = {}
    p = Path(patient_folder)
    if not p.is_dir():
        return out
    for d in sorted(x for x in p.iterdir() if x.is_dir()):
        uid = _s(_read_json(d / INFO_NAME).get("study_uid")) or _s(
            _read_json(d / "provenance.json").get("study_uid"))
        if uid and uid not in out:
            out[uid] = d
    return out


def relative_link(target: Path, from_dir: Path) -> str:
    """URL (percent-encoded, ``/`` separators) of ``target`` relative to ``from_dir``."""
    rel = os.path.relpath(Path(target).resolve(), Path(from_dir).resolve())
    return "/".join(quote(part) for part in Path(rel).parts)


def _change_pct(first: float | None, now: float | None) -> float | None:
    if first is None or now is None or first <= 0:
        return None
    return 100.0 * (now - first) / first


def lesion_timeline(tracking: pd.DataFrame, indices: list[int], current_index: int,
                    folders: dict[str, Path], out_dir: Path) -> list[dict]:
    """One display row per lesion track across the timepoints.

    Parameters
    ----------
    tracking : DataFrame
        ``followup_tracking.csv`` (all rows of the patient up to this study, strings).
    indices : list of int
        The timepoint indices shown (columns), in order.
    current_index : int
        The worksheet's own timepoint (category and status are those in force there).
    folders : dict
        Study UID -> study folder (:func:`study_folders`), for the key images.
    out_dir : Path
        Folder of the worksheet file (the key-image links are relative to it).

    Returns
    -------
    list of dict
        ``track_id``, ``label``, ``category`` (in force at ``current_index``, else the latest),
        ``measure_kind``, ``injected_since``, ``cells`` (one per index: ``measure_mm``,
        ``status``, ``lesion_id``, ``lesion_label``, ``key`` (relative link or ""),
        ``key_reason``), ``status``, ``change_pct`` (current measure vs the track's first
        evaluable measure, %; None when that is the current one), ``reclassified`` (the
        category changed over time). Order: T-I, T-NI, NT-I, NT-NI, NEW, then track id; rows
        without a track (a lesion that could not be placed) last.
    """
    from pipeline.report.keyimages import KEYIMAGE_DIR, key_image_name

    if tracking.empty or "track_id" not in tracking.columns:
        return []
    by_track: dict[str, list[dict]] = {}
    for r in tracking.to_dict(orient="records"):
        tid = _s(r.get("track_id"))
        key = tid or f"(lesion {_s(r.get('lesion_id'))} at T{_s(r.get('timepoint_index'))}, not placed)"
        by_track.setdefault(key, []).append(r)
    out = []
    for key, rs in by_track.items():
        at = {}
        for r in rs:
            i = _int(r.get("timepoint_index"))
            if i is not None:
                at[i] = r
        if not at:
            continue
        now = at.get(current_index) or at[max(at)]
        cats = [_s(at[i].get("itrecist_category")) for i in sorted(at)]
        cells, first, first_at = [], None, None
        for i in indices:
            r = at.get(i)
            if r is None:
                cells.append({"index": i, "measure_mm": None, "status": "", "lesion_id": "",
                              "lesion_label": "", "key": "", "key_reason": "no row at this timepoint"})
                continue
            status = _s(r.get("status"))
            m = None if status == "not_evaluable" else F.to_float(r.get("measure_mm"))
            if first is None and m is not None:
                first, first_at = m, i
            lid = _s(r.get("lesion_id"))
            link, why = "", ""
            folder = folders.get(_s(r.get("study_uid")))
            if not lid:
                why = "lesion not found in this study's segmentation"
            elif folder is None:
                why = "study folder not found"
            else:
                png = folder / KEYIMAGE_DIR / f"{key_image_name(lid)}.png"
                if png.is_file():
                    link = relative_link(png, out_dir)
                else:
                    why = "no key image file"
            cells.append({"index": i, "measure_mm": m, "status": status, "lesion_id": lid,
                          "lesion_label": _s(r.get("lesion_label")), "key": link, "key_reason": why,
                          "match_method": _s(r.get("match_method")),
                          "match_distance_mm": F.to_float(r.get("match_distance_mm"))})
        cur_status = _s(now.get("status"))
        cur_m = None if cur_status == "not_evaluable" else F.to_float(now.get("measure_mm"))
        labels = [_s(at[i].get("lesion_label")) for i in sorted(at) if _s(at[i].get("lesion_label"))]
        out.append({
            "track_id": key, "has_track": bool(_s(rs[0].get("track_id"))),
            "label": labels[0] if labels else "", "category": _s(now.get("itrecist_category")),
            "measure_kind": _s(now.get("measure_kind")).replace("_", " "),
            "injected_since": _s(now.get("injected_since")),
            "reclassified": len(set(c for c in cats if c)) > 1,
            "category_history": " → ".join(dict.fromkeys(c for c in cats if c)),
            "cells": cells, "status": cur_status.replace("_", " "),
            "change_pct": None if first_at == current_index else _change_pct(first, cur_m),
        })

    def order(t):
        c = t["category"]
        return (not t["has_track"], CATEGORY_ORDER.index(c) if c in CATEGORY_ORDER else 99,
                t["track_id"])

    out.sort(key=order)
    return out


# ------------------------------------------------------------------------------------ plan
def next_cycle_plan(ranking: pd.DataFrame) -> list[dict]:
    """The re-planned roles of this study (``ranking.csv`` after
    :func:`pipeline.followup.replan.replan`): injection targets, monitored lesions and injected
    lesions no longer injectable, with their reason codes and explanations.

    Order: inject (by rank), then not injectable, then monitor (by track).
    """
    if ranking.empty or "lesion_id" not in ranking.columns:
        return []
    out = []
    for r in ranking.to_dict(orient="records"):
        codes = [c for c in _s(r.get("reasons")).split(";") if c.strip()]
        role = _s(r.get("role")) or "none"
        dropped = "FOLLOWUP_NOT_INJECTABLE" in codes
        if role not in ("inject", "monitor") and not dropped:
            continue
        kind = ("replacement" if "FOLLOWUP_REPLACEMENT" in codes else
                "kept injected" if "FOLLOWUP_KEEP_INJECTED" in codes else
                "no longer injectable" if dropped else
                "monitored (T-NI locked)" if role == "monitor" else role)
        out.append({"role": role, "kind": kind, "lesion_id": _s(r.get("lesion_id")),
                    "lesion_label": _s(r.get("lesion_label")), "track_id": _s(r.get("track_id")),
                    "category": _s(r.get("itrecist_category")), "tier": _s(r.get("tier")),
                    "rank": _int(r.get("rank")), "planned_volume_ml": F.to_float(r.get("planned_volume_ml")),
                    "codes": [c for c in codes if c.startswith("FOLLOWUP_") or c.startswith("SELECTED_")],
                    "explanation": _s(r.get("explanation"))})
    group = {"inject": 0, "none": 1, "monitor": 2}
    out.sort(key=lambda p: (group.get(p["role"], 3), p["rank"] if p["rank"] is not None else 10**9,
                            p["track_id"], p["lesion_id"]))
    return out


# ------------------------------------------------------------------------------------ context
def followup_context(study_dir: Path, out_dir: Path | None = None) -> dict | None:
    """What the worksheet's follow-up section shows, or None for a baseline study (or a study
    without follow-up files): then the worksheet keeps its itRECIST baseline section.

    Parameters
    ----------
    study_dir : Path
        ``RESULTS/studies/<patient>/<study>``.
    out_dir : Path, optional
        Folder of the worksheet file (default ``study_dir``): key-image links are relative to
        it, and the SOD timeline PNG (:data:`PLOT_NAME`) is written there.

    Returns
    -------
    dict or None
        ``title``, ``index`` (this study's timepoint, None when it is not a timepoint),
        ``date``, ``current`` (this timepoint's response row), ``responses`` (all rows),
        ``plot`` (``src`` data URL, ``alt``, ``file`` name), ``indices``, ``tracks``
        (:func:`lesion_timeline`), ``plan`` (:func:`next_cycle_plan`), ``flagged``,
        ``flag_reason``, ``registration`` (display pairs), ``notes``.
    """
    from pipeline.io.tables import read_table_if_present

    study_dir = Path(study_dir)
    out_dir = Path(out_dir) if out_dir is not None else study_dir
    responses = _read_csv(study_dir / RESPONSE_NAME)
    if not is_followup(responses):
        return None
    info = _read_json(study_dir / INFO_NAME)
    rows = response_rows(responses)
    notes = []
    idx = info.get("timepoint_index")
    index = idx if isinstance(idx, int) and not isinstance(idx, bool) else None
    shown = index if index is not None else max(r["index"] for r in rows)
    if index is None:
        why = _s(info.get("not_a_timepoint_reason"))
        notes.append("This study is not a follow-up timepoint" + (f" ({why})" if why else "")
                     + f": the history up to timepoint {shown} is shown, without a response of its own.")
    rows = [r for r in rows if r["index"] <= shown]
    current = next((r for r in rows if r["index"] == shown), rows[-1])
    date = current["date"]
    title = (f"itRECIST follow-up, timepoint {shown} ({date or 'date unknown'})" if index is not None
             else f"itRECIST follow-up history up to timepoint {shown} ({date or 'date unknown'})")
    png, alt = sod_plot(rows, shown)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_path = out_dir / PLOT_NAME
    tmp = plot_path.with_name(plot_path.name + ".tmp")
    tmp.write_bytes(png)
    tmp.replace(plot_path)
    tracking = _read_csv(study_dir / TRACKING_NAME)
    if tracking.empty:
        notes.append(f"No {TRACKING_NAME} in the study folder: no lesion table.")
    indices = [r["index"] for r in rows]
    if not tracking.empty and "timepoint_index" in tracking.columns:
        keep = [_int(v) is not None and _int(v) <= shown for v in tracking["timepoint_index"]]
        tracking = tracking[keep]
    folders = study_folders(study_dir.parent)
    folders.setdefault(_s(info.get("study_uid")) or current["study_uid"], study_dir)
    tracks = lesion_timeline(tracking, indices, shown, folders, out_dir)
    reg = info.get("registration") or {}
    reg_pairs = []
    if isinstance(reg, dict) and reg:
        for k, label, d, unit in (("status", "status", None, ""), ("body_dice", "body Dice", 3, ""),
                                  ("lung_msd_mm", "lung mean surface distance", 1, "mm"),
                                  ("rotation_deg", "rotation", 1, "°"),
                                  ("translation_mm", "translation", 1, "mm")):
            v = reg.get(k)
            if v is None or v == "":
                continue
            reg_pairs.append((label, F.fmt(v, d, unit) if d is not None else _s(v)))
    ranking = read_table_if_present(study_dir / "ranking.csv")
    return {
        "title": title, "index": index, "shown_index": shown, "date": date,
        "current": current, "responses": rows, "response_keys": RESPONSE_KEYS,
        "plot": {"src": F.png_data_url(png), "alt": alt, "file": PLOT_NAME},
        "indices": indices, "tracks": tracks, "plan": next_cycle_plan(ranking),
        "flagged": bool(info.get("flagged_for_review")),
        "flag_reason": _s(info.get("flag_reason")) or (
            "flagged for review" if info.get("flagged_for_review") else ""),
        "registration": reg_pairs, "baseline_study_uid": _s(info.get("baseline_study_uid")),
        "notes": notes,
    }


# ------------------------------------------------------------------------------------ dashboard
def patient_responses(results: Path, patient_dir_of: dict[str, str] | None = None,
                      worksheet_of: dict[str, str] | None = None) -> list[dict]:
    """Each patient's latest responses and best overall response, from ``cohort/response.csv``.

    Parameters
    ----------
    results : Path
        The results folder.
    patient_dir_of : dict, optional
        Patient ID -> sanitized folder name (the dashboard shows folder names, never raw IDs);
        an ID without an entry is shown through :func:`pipeline.io.sanitize.safe_id`.
    worksheet_of : dict, optional
        Study UID -> link of its worksheet (relative to the dashboard): the latest study's
        worksheet is linked.

    Returns
    -------
    list of dict
        ``patient``, ``timepoint_index``, ``n_timepoints``, ``date``, the four responses (""
        when none, e.g. a patient with only a baseline), ``reasons``, ``worksheet`` (link or
        ""); sorted by patient. [] when the file is absent.
    """
    from pipeline.io.sanitize import safe_id

    df = _read_csv(Path(results) / "cohort" / "response.csv")
    if df.empty or "patient_id" not in df.columns:
        return []
    names, links = patient_dir_of or {}, worksheet_of or {}
    out = []
    for pid, g in df.groupby("patient_id", sort=True):
        rows = response_rows(g)
        if not rows:
            continue
        last = rows[-1]
        out.append({"patient": names.get(str(pid)) or safe_id(str(pid)),
                    "timepoint_index": last["index"], "n_timepoints": len(rows), "date": last["date"],
                    **{c: last[c] for c, _ in RESPONSE_KEYS}, "reasons": last["reasons"],
                    "worksheet": links.get(last["study_uid"], "")})
    out.sort(key=lambda r: r["patient"])
    return out


# ------------------------------------------------------------------------------------ templates
#: Worksheet section shown instead of the itRECIST baseline table at a follow-up
#: (``{% include %}`` of :mod:`pipeline.report.templates`; the worksheet's macros are passed in).
FOLLOWUP_SECTION = r"""
{% set fu = followup %}
<section id="itrecist">
<h2>{{ fu.title }}</h2>
{% if fu.flagged %}<div class="flag-banner" role="alert" style="background:#b3001b;color:#ffffff;font-weight:700;padding:.6rem .8rem;border-radius:4px;margin:.4rem 0;">Flagged for review: {{ fu.flag_reason }}</div>{% endif %}
{% for n in fu.notes %}<div class="warn">{{ n }}</div>{% endfor %}
<div class="cards">
{% for key, label in fu.response_keys %}<div class="card" data-response="{{ key }}"><div class="n">{{ fu.current[key] or '–' }}</div>{{ label }}</div>{% endfor %}
</div>
<p><strong>Reasons:</strong> <span class="response-reasons">{{ fu.current.reasons or '–' }}</span></p>
{% if fu.registration %}<p class="codes">Registration to the baseline: {% for k, v in fu.registration %}{{ k }} {{ v }}{% if not loop.last %} · {% endif %}{% endfor %}</p>{% endif %}

<h3>Sums of diameters and responses per timepoint</h3>
<figure style="max-width: 760px"><img src="{{ fu.plot.src }}" alt="{{ fu.plot.alt }}"><figcaption>Sum of diameters (longest diameter; short axis for lymph nodes) of the injected (T-I), noninjected (T-NI) and all target lesions; a break in a line is a timepoint that could not be evaluated. Also saved as <span class="codes">{{ fu.plot.file }}</span>.</figcaption></figure>
<div class="wide"><table id="followup-responses">
<thead><tr><th class="num">Timepoint</th><th>Date</th><th class="num">SOD T-I (mm)</th><th class="num">SOD T-NI (mm)</th><th class="num">SOD targets (mm)</th><th class="num">Δ targets from baseline (%)</th><th class="num">Δ targets from nadir (%)</th><th class="num">New lesions</th><th>Overall</th><th>Injected</th><th>Noninjected</th><th>Best overall</th><th>Reasons</th></tr></thead>
<tbody>
{% for r in fu.responses %}<tr{% if r.index == fu.shown_index %} class="sum"{% endif %}><td class="num">{{ r.index }}</td><td class="nowrap">{{ r.date or '–' }}</td>
<td class="num">{{ fmt(r.sod_ti_mm, 1) }}</td><td class="num">{{ fmt(r.sod_tni_mm, 1) }}</td><td class="num">{{ fmt(r.sod_targets_mm, 1) }}</td>
<td class="num">{{ fmt(r.change_targets_from_baseline_pct, 1) }}</td><td class="num">{{ fmt(r.change_targets_from_nadir_pct, 1) }}</td><td class="num">{{ r.new_lesions if r.new_lesions is not none else '–' }}</td>
<td>{{ r.response_overall or '–' }}</td><td>{{ r.response_injected or '–' }}</td><td>{{ r.response_noninjected or '–' }}</td><td>{{ r.best_overall_response or '–' }}</td><td class="expl"><div>{% if r.reasons|length > 160 %}<details><summary>{{ r.reasons[:120] }}…</summary>{{ r.reasons }}</details>{% else %}{{ r.reasons }}{% endif %}</div></td></tr>{% endfor %}
</tbody></table></div>

<h3>Lesions across timepoints</h3>
{% if fu.tracks %}
<div class="wide"><table id="followup-lesions" class="sortable">
<thead><tr><th>Track</th><th>Category</th><th>Measure</th>{% for i in fu.indices %}<th class="num" data-type="num">T{{ i }} (mm)</th>{% endfor %}<th>Status</th><th class="num" data-type="num">Change from first (%)</th></tr></thead>
<tbody>
{% for t in fu.tracks %}<tr data-track="{{ t.track_id }}">
<td><strong>{{ t.track_id }}</strong>{% if t.label %}<br><span class="codes">{{ t.label }}</span>{% endif %}</td>
<td>{{ t.category or '–' }}{% if t.reclassified %}<br><span class="codes">{{ t.category_history }}{% if t.injected_since %}, injected since {{ t.injected_since }}{% endif %}</span>{% endif %}</td>
<td>{{ t.measure_kind or '–' }}</td>
{% for c in t.cells %}<td class="num" data-sort="{{ c.measure_mm if c.measure_mm is not none else '' }}">{% if c.status == 'not_evaluable' %}NE{% elif c.status == '' %}–{% else %}{{ fmt(c.measure_mm, 1) }}{% if c.status == 'disappeared' %} (gone){% elif c.status == 'new' %} (new){% endif %}{% endif %}</td>{% endfor %}
<td>{{ t.status or '–' }}</td><td class="num" data-sort="{{ t.change_pct if t.change_pct is not none else '' }}">{{ fmt(t.change_pct, 1) }}</td>
</tr>{% endfor %}
</tbody></table></div>

<h3>Key images of each lesion across timepoints</h3>
<p>Images of earlier timepoints are the files in their own study folders, linked by relative path: open this worksheet inside the results folder to see them.</p>
<div class="wide"><table id="followup-keyimages">
<thead><tr><th>Track</th>{% for i in fu.indices %}<th>T{{ i }}</th>{% endfor %}</tr></thead>
<tbody>
{% for t in fu.tracks %}<tr data-track="{{ t.track_id }}"><td><strong>{{ t.track_id }}</strong><br>{{ t.category }}</td>
{% for c in t.cells %}<td>{% if c.key %}<a href="{{ c.key }}"><img class="fu-key" src="{{ c.key }}" alt="Key image of lesion {{ c.lesion_label or c.lesion_id }} at timepoint {{ c.index }}" style="max-width:220px;height:auto"></a><br><span class="codes">{{ c.lesion_label or c.lesion_id }}</span>{% else %}<span class="no-key">no key image</span>{% if c.key_reason %}<br><span class="codes">{{ c.key_reason }}</span>{% endif %}{% endif %}</td>{% endfor %}
</tr>{% endfor %}
</tbody></table></div>
{% else %}<p>No lesion track.</p>{% endif %}

<h3>Next-cycle plan</h3>
{% if fu.plan %}
<table id="followup-plan">
<thead><tr><th>Role</th><th>Lesion</th><th>Track</th><th>Category</th><th>Tier</th><th class="num">Planned volume (mL)</th><th>Reason</th></tr></thead>
<tbody>
{% for p in fu.plan %}<tr data-role="{{ p.role }}"><td>{{ badge('role', p.role) }}<br><em>{{ p.kind }}</em></td>
<td>{{ p.lesion_label or p.lesion_id }}<br><span class="codes">{{ p.lesion_id }}</span></td><td>{{ p.track_id or '–' }}</td><td>{{ p.category or '–' }}</td>
<td>{{ badge('tier', p.tier) }}</td><td class="num">{{ fmt(p.planned_volume_ml, 1) }}</td>
<td class="expl"><div>{{ p.explanation }}<br><span class="codes">{{ p.codes|join(' · ') }}</span></div></td></tr>{% endfor %}
</tbody></table>
{% else %}<p>No lesion is planned for injection or monitoring at this timepoint.</p>{% endif %}
</section>
"""

#: Dashboard section: each patient's latest responses (only when ``cohort/response.csv`` exists).
DASHBOARD_RESPONSES = r"""
{% if responses %}
<section id="responses">
<h2>itRECIST responses</h2>
<table id="responses-table" class="sortable">
<thead><tr><th>Patient</th><th class="num" data-type="num">Latest timepoint</th><th>Date</th><th>Worksheet</th><th>Overall</th><th>Injected</th><th>Noninjected</th><th>Best overall</th><th>Reasons</th></tr></thead>
<tbody>
{% for r in responses %}<tr data-patient="{{ r.patient }}"><td>{{ r.patient }}</td><td class="num">{{ r.timepoint_index }}</td><td class="nowrap">{{ r.date or '–' }}</td>
<td>{% if r.worksheet %}<a href="{{ r.worksheet }}">worksheet</a>{% else %}–{% endif %}</td>
<td>{{ r.response_overall or '–' }}</td><td>{{ r.response_injected or '–' }}</td><td>{{ r.response_noninjected or '–' }}</td><td>{{ r.best_overall_response or '–' }}</td>
<td class="expl"><div>{% if r.reasons|length > 160 %}<details><summary>{{ r.reasons[:120] }}…</summary>{{ r.reasons }}</details>{% else %}{{ r.reasons or '–' }}{% endif %}</div></td></tr>{% endfor %}
</tbody></table>
</section>
{% endif %}
"""
