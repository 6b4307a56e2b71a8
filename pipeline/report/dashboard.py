"""Cohort dashboard: ``RESULTS/report/index.html``.

One self-contained page (inline CSS, inline vanilla JavaScript, plots as base64 PNG) listing

* every study of the study sheet with its status (done / failed / missing) and, for a study
  that failed, the reason (stage, error class, message, file, hint from ``failures.csv``), a
  link to its worksheet and whether a DICOM SR was written;
* failures that belong to no study (unreadable files found by the index);
* every lesion (cohort ``ranking.csv`` joined with ``lesions.csv``) in a table that sorts by
  any column (click a header) and filters by text, role and tier;
* distributions of volume, longest diameter, SUVmax and skin depth (stacked by role) and the
  tiers per organ;
* per patient the latest itRECIST responses and the best overall response, from
  ``cohort/response.csv`` when present (:func:`pipeline.report.followup_view.patient_responses`).

Patients are shown by their sanitized folder name (``patient_dir``); no name is ever read.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from pipeline.report import figures as F

log = logging.getLogger(__name__)

REPORT_DIR = "report"
INDEX_NAME = "index.html"
NUMERIC = [("rank", 0), ("score", 3), ("volume_ml", 2), ("longest_diameter_mm", 1),
           ("short_axis_mm", 1), ("suv_max", 1), ("skin_depth_mm", 1), ("path_length_mm", 0)]


def _csv(path: Path) -> pd.DataFrame:
    if not Path(path).exists():
        return pd.DataFrame()
    try:
        return pd.read_csv(path, dtype={"patient_id": str, "study_uid": str, "lesion_id": str,
                                        "lesion_label": str, "patient_dir": str, "study_dir": str,
                                        "study_date": str},
                           keep_default_na=True)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _study_sheet(results: Path) -> pd.DataFrame:
    """The study sheet (all strings, "" when empty); empty when the index step has not run."""
    from pipeline.sheet import read_study_sheet, sheet_path

    path = sheet_path(results)
    return read_study_sheet(path) if path.exists() else pd.DataFrame()


def _s(v) -> str:
    return "" if F.is_missing(v) else str(v)


def _study_table(results: Path, sheet: pd.DataFrame, status: pd.DataFrame,
                 failures: pd.DataFrame, ranking: pd.DataFrame, out_dir: Path) -> tuple[list, list]:
    from pipeline.io.sanitize import safe_id

    fails = failures.fillna("").to_dict(orient="records") if not failures.empty else []
    stat = {}
    if not status.empty:
        for r in status.to_dict(orient="records"):
            stat[(_s(r.get("patient_dir")), _s(r.get("study_uid")))] = r
    base = sheet if not sheet.empty else status
    studies, used = [], set()
    for r in (base.to_dict(orient="records") if not base.empty else []):
        pdir = _s(r.get("patient_dir")) or safe_id(_s(r.get("patient_id")))
        uid = _s(r.get("study_uid"))
        sdir = _s(r.get("study_dir")) or safe_id(uid)
        st = stat.get((pdir, uid), {})
        study_dir = Path(results) / "studies" / pdir / sdir
        status_v = _s(st.get("status"))
        if not status_v:
            status_v = "missing" if not (study_dir / "provenance.json").exists() else "unknown"
        mine = [f for i, f in enumerate(fails) if uid and _s(f.get("study_uid")) == uid]
        used.update(i for i, f in enumerate(fails) if uid and _s(f.get("study_uid")) == uid)
        if status_v != "done" and not mine:
            mine = [{"stage": "workflow", "error_class": "MissingOutput" if status_v == "missing" else "Unknown",
                     "message": "the study job produced no results" if status_v == "missing"
                     else f"study status {status_v}", "file": "", "hint": "see the job log in logs/studies/"}]
        rk = ranking[ranking["study_uid"].astype(str) == uid] if not ranking.empty and "study_uid" in ranking else pd.DataFrame()
        ws = study_dir / "worksheet.html"
        link = Path("..") / "studies" / pdir / sdir / "worksheet.html"
        n_les = st.get("n_lesions")
        if F.is_missing(n_les):
            n_les = len(rk)
        studies.append({
            "patient": pdir, "study_uid": uid, "study_short": "…" + uid[-12:] if len(uid) > 14 else uid,
            "date": _fmt_date(r.get("study_date")), "status": status_v, "n_lesions": int(float(n_les or 0)),
            "n_inject": int((rk["role"] == "inject").sum()) if "role" in rk else 0,
            "n_monitor": int((rk["role"] == "monitor").sum()) if "role" in rk else 0,
            "wall_s": F.to_float(st.get("wall_s")), "wall_sort": "" if F.to_float(st.get("wall_s")) is None else F.to_float(st.get("wall_s")),
            "worksheet": link.as_posix() if ws.exists() else "",
            "sr": any(study_dir.glob("*.dcm")) if study_dir.exists() else False,
            "failures": mine, "patient_dir": pdir, "study_dir": sdir, "patient_id": _s(r.get("patient_id")),
        })
    other = [f for i, f in enumerate(fails) if i not in used]
    return studies, other


def _fmt_date(v) -> str:
    s = _s(v).split(".")[0]
    return f"{s[:4]}-{s[4:6]}-{s[6:]}" if len(s) == 8 and s.isdigit() else s


def lesion_table(lesions: pd.DataFrame, ranking: pd.DataFrame) -> pd.DataFrame:
    """Cohort ranking joined with the lesion table on (study_uid, lesion_id); ranking values win."""
    if ranking.empty and lesions.empty:
        return pd.DataFrame()
    if ranking.empty:
        return lesions.copy()
    if lesions.empty:
        return ranking.copy()
    keys = ["study_uid", "lesion_id"]
    extra = [c for c in lesions.columns if c not in ranking.columns or c in keys]
    return ranking.merge(lesions[extra], on=keys, how="outer")


def _team(results: Path, studies: list[dict], rows: list[dict]) -> dict | None:
    """Team decisions beside the tool's proposals (``RESULTS/review/decisions.csv``): per lesion
    row ``team``, per study ``team`` (its :class:`~pipeline.review.agreement.Agreement`) and the
    cohort's figures; None when the file does not exist (read only, never written here)."""
    from pipeline.review import agreement as A

    path = A.decisions_file(results)
    if not path.is_file():
        return None
    dec = A.read_decisions(path)
    by_study: dict[str, list] = {}
    for r in rows:
        r["team"] = A.pair(r, dec.get((r["patient_id"], r["study_uid"], r["lesion_id"])))
        by_study.setdefault(r["study_uid"], []).append(r["team"])
    signoffs = []
    for st in studies:
        so = A.study_signoff(dec, st["patient_id"], st["study_uid"])
        signoffs.append(so)
        st["team"] = A.agreement(by_study.get(st["study_uid"], []), [so] if so else [])
    a = A.agreement([p for ps in by_study.values() for p in ps], signoffs)
    return {"a": a, "signed_off": ", ".join(a.signed_off_by), "role_pct": A.pct_text(a.role_agreement_pct),
            "category_pct": A.pct_text(a.category_agreement_pct)}


def dashboard_context(results: Path) -> dict:
    """Everything the dashboard template shows."""
    from markupsafe import Markup

    from pipeline.io.sanitize import safe_id
    from pipeline.report.keyimages import key_image_name

    results = Path(results)
    cohort = results / "cohort"
    sheet, status = _study_sheet(results), _csv(cohort / "status.csv")
    failures, lesions, ranking = (_csv(cohort / "failures.csv"), _csv(cohort / "lesions.csv"),
                                  _csv(cohort / "ranking.csv"))
    out_dir = results / REPORT_DIR
    studies, other = _study_table(results, sheet, status, failures, ranking, out_dir)
    table = lesion_table(lesions, ranking)
    if not table.empty:
        order = [c for c in ("patient_id", "study_uid", "rank", "score") if c in table]
        asc = [c != "score" for c in order]
        table = table.sort_values(order, ascending=asc, na_position="last", kind="stable")
    pdir_of = {s["study_uid"]: s for s in studies}
    rows = []
    for r in (table.to_dict(orient="records") if not table.empty else []):
        uid = _s(r.get("study_uid"))
        st = pdir_of.get(uid)
        row = {
            "patient_id": _s(r.get("patient_id")),
            "patient": st["patient"] if st else safe_id(_s(r.get("patient_id"))),
            "study_uid": uid, "study_short": "…" + uid[-12:] if len(uid) > 14 else uid,
            "lesion_id": _s(r.get("lesion_id")), "lesion_label": _s(r.get("lesion_label")) or _s(r.get("lesion_id")),
            "organ": _s(r.get("organ")) or "unknown", "site": _s(r.get("site")),
            "role": _s(r.get("role")) or "none", "tier": _s(r.get("tier")), "measurable": _s(r.get("measurable")),
            "reasons": " ".join(_s(r.get("reasons")).split(";")),
            "link": (st["worksheet"] + "#lesion-" + key_image_name(_s(r.get("lesion_id")))) if st and st["worksheet"] else "",
        }
        row["sort"] = {}
        for c, _ in NUMERIC:
            v = F.to_float(r.get(c))
            row[c] = v
            row["sort"][c] = "" if v is None else v
        rows.append(row)
    team = _team(results, studies, rows)
    plots = []
    for title, png, alt in F.feature_histograms(table if not table.empty else pd.DataFrame({"role": []})):
        plots.append({"title": title, "src": F.png_data_url(png), "alt": alt})
    png, alt = F.tiers_per_organ(table)
    plots.append({"title": "Tiers per organ", "src": F.png_data_url(png), "alt": alt})
    status_select = Markup(
        '<label>Status <select data-filter-table="studies-table" data-filter-col="status" '
        'aria-label="filter by status"><option value="">all</option><option value="done">done'
        '</option><option value="failed">failed</option><option value="missing">missing</option>'
        '</select></label>')
    summary = {"studies": len(studies), "done": sum(s["status"] == "done" for s in studies),
               "failed": sum(s["status"] != "done" for s in studies), "lesions": len(rows),
               "inject": sum(r["role"] == "inject" for r in rows),
               "monitor": sum(r["role"] == "monitor" for r in rows)}
    from pipeline.report.followup_view import patient_responses

    pdir_of_pid = {_s(r.get("patient_id")): _s(r.get("patient_dir"))
                   for r in (sheet.to_dict(orient="records") if not sheet.empty else [])}
    return {"generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "responses": patient_responses(results, pdir_of_pid,
                                           {st["study_uid"]: st["worksheet"] for st in studies}),
            "results_name": results.name, "summary": summary, "studies": studies,
            "other_failures": other, "lesions": rows, "numeric": NUMERIC, "plots": plots,
            "status_select": status_select, "team": team}


def write_dashboard(results: Path) -> Path:
    """Write ``RESULTS/report/index.html``.

    Parameters
    ----------
    results : Path
        The results folder (reads ``cohort/studies.csv``, ``status.csv``, ``failures.csv``,
        ``lesions.csv``, ``ranking.csv``; links the worksheets found under ``studies/``).

    Returns
    -------
    Path
        The page written.
    """
    from pipeline.report.templates import render

    results = Path(results)
    ctx = dashboard_context(results)
    out = results / REPORT_DIR / INDEX_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    html = render("dashboard.html", **ctx)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    log.info("dashboard: %d studies, %d lesions -> %s", len(ctx["studies"]), len(ctx["lesions"]), out)
    return out
