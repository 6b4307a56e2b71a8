"""Per-study HTML worksheet for the pre-procedure review.

:func:`write_worksheet` reads one study folder (``lesions.csv``, ``ranking.csv``,
``provenance.json``, ``ranking_provenance.json``, ``failures.csv``, ``keyimages/``) and writes a
single self-contained HTML file: images embedded as base64, CSS and script inline, nothing
fetched from the network, so it can be opened offline, mailed or printed.

Content: sanitized patient ID and study summary (never the patient name: the tables do not
hold it and PatientName is never read), the injection plan (planned volume, syringe note,
needle path), the itRECIST baseline table (T-I injected and T-NI noninjected target lesions
with their diameters and sums; nodes by short axis), the ranked table with tiers, scores,
reason codes and explanations (sortable and filterable), a PET MIP with numbered lesion labels,
a key image per lesion (and the planned needle path of each injection target), and the
provenance (versions, configuration hashes, input series UIDs, stage timings).
At a follow-up study (``followup_response.csv`` beyond the baseline row) the itRECIST section is
the follow-up view of :mod:`pipeline.report.followup_view` (responses, SOD timeline, lesions
across timepoints with links to the earlier studies' key images, next-cycle plan).

Many lesions: the first ``ranking.worksheet_max_lesions`` lesions by rank (default
:data:`DEFAULT_MAX_LESIONS`, recorded by the ranking in ``ranking_provenance.json``), and every
injection or monitoring lesion, are shown in full (key image, details, MIP label); the others are
listed in one compact table without images, so that a SEG with 1000 segments gives a worksheet
of a few hundred kB instead of 80 MB, and its cost stays linear in the number of lesions.

Optional columns (needle path ``entry_*``, ``path_direction_*``, ``safe_path_found``,
biomarkers, safety) are used when present; nothing fails when they are absent.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io.tables import read_table_if_present
from pipeline.report import figures as F
from pipeline.report import keyimages as K

log = logging.getLogger(__name__)

WORKSHEET_NAME = "worksheet.html"
#: Lesions shown in full when ``ranking.worksheet_max_lesions`` is not recorded.
DEFAULT_MAX_LESIONS = 50
#: Lesion-table columns never listed in the per-lesion details (identifiers, radiomics).
_DETAIL_SKIP_PREFIXES = ("ct_original_", "pet_original_", "ct_wavelet", "pet_wavelet", "ct_log", "pet_log")
_DETAIL_SKIP = {"patient_id", "study_uid", "lesion_id", "lesion_label", "tracking_uid",
                "mask_series_uid"}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _clean(v):
    """Table value -> plain Python (NaN -> None)."""
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if v is None:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def _codes(v) -> list[str]:
    if F.is_missing(v):
        return []
    return [c for c in str(v).split(";") if c.strip()]


def merged_rows(lesions: pd.DataFrame, ranking: pd.DataFrame) -> list[dict]:
    """Ranking rows joined with their lesion rows (ranking values win), in worksheet order.

    Order: by ``rank`` (injection targets first in the ranking's own order), then by descending
    score, then by lesion id; lesions missing from the ranking come last. Each row gets ``no``
    (1..n), the number used in the tables, key images and the MIP.
    """
    les = {str(r["lesion_id"]): {k: _clean(v) for k, v in r.items()}
           for r in (lesions.to_dict(orient="records") if not lesions.empty and "lesion_id" in lesions else [])}
    out = []
    seen = set()
    rk = ranking.to_dict(orient="records") if not ranking.empty and "lesion_id" in ranking else []
    for r in rk:
        lid = str(r["lesion_id"])
        row = dict(les.get(lid, {}))
        row.update({k: _clean(v) for k, v in r.items() if _clean(v) is not None or k not in row})
        out.append(row)
        seen.add(lid)
    for lid, row in les.items():
        if lid not in seen:
            row = dict(row)
            row.setdefault("role", None)
            row.setdefault("tier", None)
            out.append(row)

    def key(r):
        rank = F.to_float(r.get("rank"))
        score = F.to_float(r.get("score"))
        return (rank is None, rank if rank is not None else 0.0, -(score or -1e9), str(r.get("lesion_id")))

    out.sort(key=key)
    for i, r in enumerate(out, start=1):
        r["no"] = i
    return out


def _pt(row: dict, prefix: str) -> np.ndarray | None:
    vals = [F.to_float(row.get(f"{prefix}_{a}_mm")) for a in "xyz"]
    return None if any(v is None for v in vals) else np.array(vals, float)


def _pt_text(p) -> str:
    return "–" if p is None else f"({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f})"


def path_info(row: dict) -> dict:
    """Needle-path fields of a merged row, with display texts (all optional columns)."""
    entry, target = _pt(row, "entry"), K.target_of(row)
    d = [F.to_float(row.get(f"path_direction_{a}")) for a in "xyz"]
    direction = None if any(v is None for v in d) else np.array(d, float)
    if direction is None and entry is not None and target is not None:
        v = target - entry
        n = float(np.linalg.norm(v))
        direction = v / n if n > 0 else None
    length = F.to_float(row.get("path_length_mm"))
    safe = F.to_bool(row.get("safe_path_found"))
    if direction is not None:
        cc = math.degrees(math.asin(max(-1.0, min(1.0, abs(float(direction[2]))))))
        dir_text = (f"({direction[0]:+.2f}, {direction[1]:+.2f}, {direction[2]:+.2f}) LPS, "
                    f"{cc:.0f}° craniocaudal angulation")
    else:
        dir_text = "–"
    return {
        "entry": entry, "target": target, "direction": direction, "length_mm": length,
        "length_source": "" if F.is_missing(row.get("path_length_source")) else str(row.get("path_length_source")),
        "safe": safe, "entry_text": _pt_text(entry), "target_text": _pt_text(target),
        "direction_text": dir_text,
        "safe_text": {True: "yes", False: "NO: " + str(row.get("access_reason") or row.get("no_path_reason") or "see explanation"),
                      None: "not evaluated"}[safe],
    }


def _is_node(row: dict) -> bool:
    organ = str(row.get("organ") or "").lower()
    site = str(row.get("site") or "").lower()
    return organ == "lymph_node" or "node" in site


def itrecist_sets(rows: list[dict]) -> dict:
    """T-I / T-NI target lesions with sums of diameters, and the non-target sets.

    Target lesions are the measurable (``measurable`` column; else RECIST 1.1 by size: nodes
    short axis >= 15 mm, others longest diameter >= 10 mm) injected (T-I) and monitoring (T-NI)
    lesions; the diameter is the short axis for lymph nodes and the longest diameter otherwise.
    """
    groups = {"T-I": [], "T-NI": [], "NT-I": [], "NT-NI": []}
    for r in rows:
        node = _is_node(r)
        diam = F.to_float(r.get("short_axis_mm" if node else "longest_diameter_mm"))
        meas = F.to_bool(r.get("measurable"))
        if meas is None:
            meas = diam is not None and diam >= (15.0 if node else 10.0)
        item = {"no": r["no"], "lesion_id": r.get("lesion_id"), "lesion_label": r.get("lesion_label"),
                "organ": r.get("organ") or "unknown", "diameter": diam, "volume_ml": r.get("volume_ml"),
                "measure": "short axis (node)" if node else "longest diameter"}
        role = r.get("role")
        if role == "inject":
            groups["T-I" if meas else "NT-I"].append(item)
        elif role == "monitor" and meas:
            groups["T-NI"].append(item)
        else:
            groups["NT-NI"].append(item)
    out = []
    for name in ("T-I", "T-NI", "NT-I", "NT-NI"):
        rs = groups[name]
        target = name.startswith("T-")
        vals = [x["diameter"] for x in rs if x["diameter"] is not None]
        s = sum(vals) if target and vals else None
        out.append({"name": name, "rows": rs, "target": target, "sum": s})
    sums = [g["sum"] for g in out if g["target"] and g["sum"] is not None]
    total = sum(sums) if sums else None
    warnings = []
    # itRECIST as ALGORITHM.md states it: 1-5 injected and 1-5 noninjected target lesions,
    # 10 at most, at most 2 noninjected targets per organ.
    n_ti, n_tni = len(groups["T-I"]), len(groups["T-NI"])
    if n_ti > 5 or n_tni > 5 or n_ti + n_tni > 10:
        warnings.append(f"{n_ti} injected and {n_tni} noninjected target lesions: itRECIST allows "
                        "1-5 of each and 10 in total; choose the target lesions before baseline.")
    per_organ = pd.Series([x["organ"] for x in groups["T-NI"]]).value_counts()
    for organ, n in per_organ.items():
        if n > 2:
            warnings.append(f"{n} noninjected target lesions in {organ}: at most 2 per organ.")
    if not groups["T-NI"]:
        warnings.append("No measurable noninjected (T-NI) lesion: the abscopal response cannot be "
                        "assessed by itRECIST.")
    return {"groups": out, "total": total, "warnings": warnings}


def _details(row: dict) -> list[tuple[str, str]]:
    out = []
    for k, v in row.items():
        if k in _DETAIL_SKIP or k.startswith(_DETAIL_SKIP_PREFIXES) or k in ("no",):
            continue
        if v is None or (isinstance(v, str) and not v.strip()):
            continue
        if isinstance(v, float):
            v = f"{v:.4g}"
        out.append((k, str(v)))
    return out


def _img(png: bytes, alt: str, size, notes=()) -> dict:
    return {"src": F.png_data_url(png), "alt": alt, "w": int(size[0]), "h": int(size[1]),
            "notes": list(notes)}


def _png_size(png: bytes) -> tuple[int, int]:
    import struct

    if png[:8] == b"\x89PNG\r\n\x1a\n":
        w, h = struct.unpack(">II", png[16:24])
        return int(w), int(h)
    return 0, 0


def _key_images(study_dir: Path, rows: list[dict], kidx: dict | None) -> tuple[bool, str]:
    """Attach ``key`` / ``needle_img`` images to the rows; return (available, reason)."""
    kdir = Path(study_dir) / K.KEYIMAGE_DIR
    if kidx is None:
        for r in rows:
            r["key"], r["needle_img"], r["key_reason"] = None, None, "not produced by the study job"
        return False, "the study job wrote no keyimages/ folder"
    entries = {str(e["lesion_id"]): e for e in kidx.get("lesions", [])}
    errors = {str(e["lesion_id"]): e["error"] for e in kidx.get("errors", [])}
    for r in rows:
        lid = str(r.get("lesion_id"))
        r["key"], r["needle_img"], r["key_reason"] = None, None, errors.get(lid, "")
        e = entries.get(lid)
        if e is None:
            r["key_reason"] = r["key_reason"] or "no key image saved for this lesion"
            continue
        role, tier = r.get("role") or "unranked", (r.get("tier") or "").replace("_", " ")
        sub = f"#{r['no']} · {role}" + (f" · {tier}" if tier else "")
        crops = None
        npz = kdir / e.get("npz", "")
        if e.get("npz") and npz.exists():
            try:
                crops = K.load_crops(npz)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("unreadable crop %s: %s", npz, exc)
        if crops is not None:
            tgt = K.target_of(r) if r.get("role") == "inject" else None
            img = K.render_key_image(crops, subtitle=sub, target_lps=tgt)
            r["key"] = _img(img.png, img.alt, img.size, list(e.get("notes", [])) + img.notes)
            if r.get("role") == "inject":
                p = r["path"]
                if p["entry"] is not None and p["target"] is not None:
                    nd = K.NeedlePath(tuple(p["entry"]), tuple(p["target"]), p["length_mm"], p["safe"])
                    nimg = K.render_key_image(crops, subtitle=sub + " · planned path", needle=nd)
                    r["needle_img"] = _img(nimg.png, nimg.alt, nimg.size, nimg.notes)
                else:
                    r["needle_img"] = None
                    note = ("no skin entry point in the tables (the path planner did not run or "
                            "found no path)")
                    if p["length_mm"] is not None:
                        note += f"; path length {p['length_mm']:.0f} mm"
                        if p["length_source"]:
                            note += f" from {p['length_source']}"
                    r["key"]["notes"].append(note)
        elif e.get("png") and (kdir / e["png"]).exists():
            png = (kdir / e["png"]).read_bytes()
            r["key"] = _img(png, e.get("alt", f"Key image of lesion {r.get('lesion_label')}"),
                            _png_size(png), e.get("notes", []))
    return True, ""


def _mip(study_dir: Path, rows: list[dict], kidx: dict | None) -> tuple[dict | None, str]:
    if kidx is None:
        return None, "the study job wrote no key images"
    m = kidx.get("mip")
    if not m:
        pet = kidx.get("pet")
        return None, "no PET (SUV) volume for this study" if pet is None else "the MIP could not be made"
    kdir = Path(study_dir) / K.KEYIMAGE_DIR
    npz = kdir / m.get("npz", "")
    if m.get("npz") and npz.exists():
        try:
            mip, saved = K.load_mip(npz)
            pos = {lb.text: lb.lps for lb in saved}
            labels = []
            for r in rows:
                lid = str(r.get("lesion_id"))
                c = _pt(r, "centroid")
                lps = tuple(c) if c is not None else pos.get(lid)
                if lps is None:
                    continue
                ld = F.to_float(r.get("longest_diameter_mm"))
                labels.append(K.MipLabel(str(r["no"]), tuple(float(v) for v in lps),
                                         colour=F.ROLE_COLOURS.get(r.get("role") or "none", F.OKABE_ITO["black"]),
                                         radius_mm=(ld / 2 + 4) if ld else 8.0))
            im = K.render_mip(mip, labels)
            return _img(im.png, im.alt, im.size), ""
        except (OSError, ValueError, KeyError) as exc:
            log.warning("unreadable MIP %s: %s", npz, exc)
    png = kdir / m.get("png", "")
    if m.get("png") and png.exists():
        data = png.read_bytes()
        return _img(data, m.get("alt", "PET MIP"), _png_size(data)), ""
    return None, "MIP files missing"


def team_context(study_dir: Path, rows: list[dict]) -> dict | None:
    """The team's decisions beside the tool's proposal (``r["team"]`` per row) and the study's
    agreement figures, from ``RESULTS/review/decisions.csv``; None when that file does not exist.

    ``study_dir`` is ``RESULTS/studies/<patient>/<study>``. Reads only: nothing under
    ``RESULTS/review/`` is ever written by the report.
    """
    from pipeline.review import agreement as A

    path = A.decisions_file(Path(study_dir).parents[2])
    if not path.is_file():
        return None
    dec = A.read_decisions(path)
    pairs = []
    for r in rows:
        key = (str(r.get("patient_id") or ""), str(r.get("study_uid") or ""), str(r.get("lesion_id") or ""))
        r["team"] = A.pair(r, dec.get(key))
        pairs.append(r["team"])
    pid = next((str(r.get("patient_id")) for r in rows if r.get("patient_id")), "")
    suid = next((str(r.get("study_uid")) for r in rows if r.get("study_uid")), "")
    so = A.study_signoff(dec, pid, suid)
    a = A.agreement(pairs, [so] if so else [])
    return {"a": a, "signed_off": so, "role_pct": A.pct_text(a.role_agreement_pct),
            "category_pct": A.pct_text(a.category_agreement_pct)}


def _compact(r: dict) -> dict:
    """A lesion of the compact table (beyond the lesions shown in full)."""
    out = {c: r.get(c) for c in ("no", "lesion_id", "lesion_label", "role", "tier", "score",
                                 "longest_diameter_mm", "volume_ml", "suv_max")}
    out["organ"] = "unknown" if F.is_missing(r.get("organ")) else r.get("organ")
    for c in ("lesion_label", "role", "tier"):
        out[c] = "" if F.is_missing(out[c]) else out[c]
    out["reasons"] = " · ".join(_codes(r.get("reasons")))
    return out


def split_rows(rows: list[dict], max_lesions: int | None) -> tuple[list[dict], list[dict]]:
    """(rows shown in full, rows of the compact table).

    In full: the first ``max_lesions`` rows (worksheet order, i.e. by rank) and every injection
    or monitoring lesion; the rest, in order, go to the compact table. ``max_lesions`` None:
    every row in full.
    """
    if max_lesions is None or len(rows) <= max_lesions:
        return list(rows), []
    full, rest = [], []
    for i, r in enumerate(rows):
        (full if i < max_lesions or r.get("role") in ("inject", "monitor") else rest).append(r)
    return full, rest


def worksheet_context(study_dir: Path, max_lesions: int | None = None,
                      out_dir: Path | None = None) -> dict:
    """Everything the worksheet template shows, from the study folder's files.

    ``max_lesions``: lesions shown in full (see the module docstring); default the
    ``worksheet_max_lesions`` the ranking recorded, else :data:`DEFAULT_MAX_LESIONS`.
    ``followup``: the follow-up section (:func:`pipeline.report.followup_view.followup_context`,
    None at baseline); ``out_dir`` is the worksheet's folder, default ``study_dir``.
    """
    from pipeline.report.followup_view import followup_context

    study_dir = Path(study_dir)
    prov = _read_json(study_dir / "provenance.json")
    rprov = _read_json(study_dir / "ranking_provenance.json")
    lesions = read_table_if_present(study_dir / "lesions.csv")
    ranking = read_table_if_present(study_dir / "ranking.csv")
    fails = read_table_if_present(study_dir / "failures.csv")
    kidx = K.read_index(study_dir)
    if max_lesions is None:
        max_lesions = int(rprov.get("worksheet_max_lesions") or DEFAULT_MAX_LESIONS)
    all_rows = merged_rows(lesions, ranking)
    rows, rest = split_rows(all_rows, max_lesions)
    for r in rows:
        r["path"] = path_info(r)
        r["reasons"] = _codes(r.get("reasons"))
        r["rules_not_evaluated"] = _codes(r.get("rules_not_evaluated"))
        r["anchor"] = K.key_image_name(str(r.get("lesion_id")))
        r["rank_sort"] = "" if F.to_float(r.get("rank")) is None else F.to_float(r.get("rank"))
        r["score_sort"] = "" if F.to_float(r.get("score")) is None else F.to_float(r.get("score"))
        r["sort"] = {c: ("" if F.to_float(r.get(c)) is None else F.to_float(r.get(c)))
                     for c in ("longest_diameter_mm", "short_axis_mm", "volume_ml", "suv_max", "skin_depth_mm")}
        for c in ("organ", "site", "explanation", "syringe_note", "volume_warning", "target_point_source",
                  "lesion_label", "role", "tier"):
            if F.is_missing(r.get(c)):
                r[c] = "" if c not in ("organ",) else "unknown"
        for c in ("rank", "score", "longest_diameter_mm", "short_axis_mm", "volume_ml", "suv_max",
                  "skin_depth_mm", "planned_volume_ml", "needle_hit_probability"):
            r.setdefault(c, None)
        r["details"] = _details({k: v for k, v in r.items()
                                 if k not in ("path", "reasons", "rules_not_evaluated", "anchor",
                                              "rank_sort", "score_sort", "sort")})
    team = team_context(study_dir, rows)
    available, reason = _key_images(study_dir, rows, kidx)
    mip, mip_reason = _mip(study_dir, rows, kidx)
    recist = itrecist_sets(all_rows)
    inject = [r for r in rows if r.get("role") == "inject"]
    inject.sort(key=lambda r: (F.to_float(r.get("rank")) or 1e9))
    monitor = [r for r in rows if r.get("role") == "monitor"]
    vols = [F.to_float(r.get("planned_volume_ml")) for r in inject]
    total = sum(v for v in vols if v is not None) if any(v is not None for v in vols) else None
    row = prov.get("inputs", {}).get("study_sheet_row", {}) or {}
    warnings = [str(w) for w in prov.get("warnings", [])] + [str(w) for w in rprov.get("warnings", [])]
    if kidx:
        warnings += [f"key image {e['lesion_id'] or ''}: {e['error']}".replace("  ", " ")
                     for e in kidx.get("errors", [])]
    failures = fails.fillna("").to_dict(orient="records") if not fails.empty else []
    if not failures:
        failures = [f for f in prov.get("failures", [])]
    study_uid = str(prov.get("study_uid") or row.get("study_uid") or study_dir.name)
    status = str(prov.get("status") or ("missing" if not prov else "unknown"))
    series = [(k, str(v)) for k, v in (prov.get("inputs", {}).get("series", {}) or {}).items()]
    if kidx and kidx.get("pet"):
        series.append(("key image PET", str(kidx["pet"].get("series_uid", ""))))
    versions = dict(prov.get("versions", {}) or {})
    sr_files = sorted(p.name for p in study_dir.glob("*.dcm"))
    return {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "s": {"patient": str(prov.get("patient_id_sanitized") or study_dir.parent.name),
              "study_uid": study_uid, "study_short": study_uid[-12:],
              "study_date": _fmt_date(row.get("study_date")), "status": status},
        "lesions": rows,
        "lesions_rest": [_compact(r) for r in rest],
        "max_lesions": max_lesions,
        "plan": {"inject": inject, "monitor": monitor, "total_volume_ml": total},
        "recist": recist,
        "followup": followup_context(study_dir, out_dir),
        "warnings": warnings,
        "failures": failures,
        "tiers": F.TIER_ORDER, "roles": F.ROLE_ORDER, "team": team,
        "mip": mip, "mip_reason": mip_reason,
        "keyimages_available": available, "keyimage_reason": reason,
        "prov": {"config_hash": prov.get("config_hash"), "ranking_config_hash": rprov.get("config_hash"),
                 "model": rprov.get("model"), "finished": prov.get("finished"),
                 "ranking_finished": rprov.get("finished"),
                 "prior_studies": [str(p) for p in (rprov.get("inputs", {}) or {}).get("prior_studies", [])],
                 "series": series, "versions": sorted(versions.items()),
                 "stages": prov.get("stages", []) or [],
                 "sr": ", ".join(sr_files)},
    }


def _fmt_date(v) -> str:
    s = "" if F.is_missing(v) else str(v).split(".")[0]
    if len(s) == 8 and s.isdigit():
        return f"{s[:4]}-{s[4:6]}-{s[6:]}"
    return s


def write_worksheet(study_dir: Path, out_html: Path | None = None, *,
                    max_lesions: int | None = None) -> Path:
    """Write the study's self-contained HTML worksheet.

    Parameters
    ----------
    study_dir : Path
        ``RESULTS/studies/<patient>/<study>``.
    out_html : Path, optional
        Output file (default ``study_dir/worksheet.html``).
    max_lesions : int, optional
        Lesions shown in full (see :func:`worksheet_context`).

    Returns
    -------
    Path
        The file written.
    """
    from pipeline.report.templates import render

    study_dir = Path(study_dir)
    out_html = Path(out_html) if out_html is not None else study_dir / WORKSHEET_NAME
    ctx = worksheet_context(study_dir, max_lesions, out_dir=out_html.parent)
    html = render("worksheet.html", **ctx)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_html.with_name(out_html.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out_html)
    log.info("worksheet: %d lesions in full, %d in the compact table -> %s",
             len(ctx["lesions"]), len(ctx["lesions_rest"]), out_html)
    return out_html
