"""Follow-up worksheet and dashboard responses, on synthetic study folders.

One patient with three timepoints (T0 baseline, T1, T2), files written as the follow-up step
writes them (columns from :data:`pipeline.followup.response.RESPONSE_COLUMNS` and
:data:`pipeline.followup.tracking.LESION_TRACKING_COLUMNS`):

========  ========  ==========================  ===================================
track     category  T0 / T1 / T2 (mm)           T2 lesion
========  ========  ==========================  ===================================
a1        T-I       30 / 20 / 18                c1 (no longer injectable, replaced)
a2        T-NI      20 / 22 / NE (not found)    none
a3        NT-NI     12 / 12 / 0 (disappeared)   c3
new2-c9   NEW       - / - / 8                   c9 (proposed in place of c1)
========  ========  ==========================  ===================================

Known truth: title "itRECIST follow-up, timepoint 2 (2024-05-10)", one lesion-table row per
track, a1's change from baseline -40.0 % (18 vs 30), key images linked from the studies that
have the PNG file and "no key image" for the others.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from pipeline.followup.response import RESPONSE_COLUMNS
from pipeline.followup.tracking import LESION_TRACKING_COLUMNS
from pipeline.report import dashboard as D
from pipeline.report import figures as F
from pipeline.report import followup_view as V
from pipeline.report import worksheet as W

UIDS = ["1.2.826.0.1.3680043.8.498.100", "1.2.826.0.1.3680043.8.498.101",
        "1.2.826.0.1.3680043.8.498.102"]
DATES = ["20240110", "20240310", "20240510"]
DIRS = ["s0", "s1", "s2"]
EVIL = "<script>alert(1)</script>"


def _png(w: int = 4, h: int = 3) -> bytes:
    """A valid tiny grey PNG."""
    raw = b"".join(b"\x00" + b"\x80" * w for _ in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _trk(i, tid, lid, label, cat, mm, kind, status, since=""):
    return {"patient_id": "P1", "track_id": tid, "study_uid": UIDS[i], "timepoint_index": i,
            "lesion_id": lid, "lesion_label": label, "itrecist_category": cat,
            "injected_since": since, "measure_mm": mm, "measure_kind": kind,
            "match_method": "baseline" if i == 0 else ("position" if lid else "none"),
            "match_distance_mm": "" if i == 0 or not lid else 2.5, "status": status,
            "x_baseline_mm": 1.0, "y_baseline_mm": 2.0, "z_baseline_mm": 3.0,
            "tracking_uid": f"2.25.{abs(hash(tid)) % 10**12}"}


LD, SA = "longest_diameter", "short_axis"
TRACKING = [
    _trk(0, "a1", "a1", "liver seg 1", "T-I", 30.0, LD, "present", UIDS[0]),
    _trk(0, "a2", "a2", "node axilla", "T-NI", 20.0, SA, "present"),
    _trk(0, "a3", "a3", EVIL, "NT-NI", 12.0, LD, "present"),
    _trk(1, "a1", "b1", "liver L1", "T-I", 20.0, LD, "present", UIDS[0]),
    _trk(1, "a2", "b2", "node", "T-NI", 22.0, SA, "present"),
    _trk(1, "a3", "b3", "flank", "NT-NI", 12.0, LD, "present"),
    _trk(2, "a1", "c1", "liver", "T-I", 18.0, LD, "present", UIDS[0]),
    _trk(2, "a2", "", "", "T-NI", "", SA, "not_evaluable"),
    _trk(2, "a3", "c3", "flank", "NT-NI", 0.0, LD, "disappeared"),
    _trk(2, "new2-c9", "c9", "new nodule", "NEW", 8.0, LD, "new"),
]


def _resp(i, ti, tni, tot, ov="", inj="", ninj="", bor="", reasons="", new=0):
    base = 50.0
    return {"patient_id": "P1", "study_uid": UIDS[i], "study_date": DATES[i], "timepoint_index": i,
            "sod_ti_mm": ti, "sod_tni_mm": tni, "sod_targets_mm": tot,
            "change_ti_from_baseline_pct": "", "change_tni_from_baseline_pct": "",
            "change_targets_from_baseline_pct": "" if tot == "" else round(100 * (tot - base) / base, 1),
            "change_targets_from_nadir_pct": "", "new_lesions": new, "response_overall": ov,
            "response_injected": inj, "response_noninjected": ninj, "best_overall_response": bor,
            "reasons": reasons}


RESPONSES = [
    _resp(0, 30.0, 20.0, 50.0, reasons="baseline"),
    _resp(1, 20.0, 22.0, 42.0, "iSD", "iPR", "iSD", "iSD",
          "overall: targets -16.0 % from baseline (50.0 -> 42.0 mm): iSD"),
    _resp(2, 18.0, "", "", "NE", "iPR", "NE", "iSD",
          "overall: target a2 not evaluable: NE " + EVIL, new=1),
]


def _write_study(pdir: Path, i: int, *, flagged: bool = False, keys=()) -> Path:
    d = pdir / DIRS[i]
    (d / "keyimages").mkdir(parents=True, exist_ok=True)
    pd.DataFrame([r for r in TRACKING if r["timepoint_index"] <= i],
                 columns=LESION_TRACKING_COLUMNS).to_csv(d / V.TRACKING_NAME, index=False)
    pd.DataFrame(RESPONSES[: i + 1], columns=RESPONSE_COLUMNS).to_csv(d / V.RESPONSE_NAME, index=False)
    info = {"patient_id": "P1", "study_uid": UIDS[i], "timepoint_index": i, "is_baseline": i == 0,
            "baseline_study_uid": UIDS[0], "registration": None if i == 0 else
            {"ok": not flagged, "status": "failed" if flagged else "ok", "body_dice": 0.62 if flagged else 0.97,
             "lung_msd_mm": 9.5 if flagged else 1.2},
            "flagged_for_review": flagged,
            "flag_reason": ("registration to the baseline failed (body Dice 0.62 < 0.90): lesions "
                            "matched by TrackingUID only, responses not evaluable") if flagged else "",
            "warnings": [], "failures": []}
    (d / V.INFO_NAME).write_text(json.dumps(info))
    (d / "provenance.json").write_text(json.dumps({"study_uid": UIDS[i], "status": "done",
                                                   "patient_id_sanitized": "P1",
                                                   "inputs": {"study_sheet_row": {"study_date": DATES[i]}}}))
    les = [r for r in TRACKING if r["timepoint_index"] == i and r["lesion_id"]]
    pd.DataFrame([{"patient_id": "P1", "study_uid": UIDS[i], "lesion_id": r["lesion_id"],
                   "lesion_label": r["lesion_label"], "organ": "liver",
                   "longest_diameter_mm": r["measure_mm"], "short_axis_mm": r["measure_mm"],
                   "volume_ml": 3.0} for r in les]).to_csv(d / "lesions.csv", index=False)
    if i == 2:
        rk = [{"lesion_id": "c9", "role": "inject", "tier": "recommended", "rank": 1, "score": 0.9,
               "reasons": "SELECTED_INJECTION;FOLLOWUP_REPLACEMENT", "track_id": "new2-c9",
               "itrecist_category": "NEW", "planned_volume_ml": 1.0,
               "explanation": "Follow-up (timepoint 2): proposed for injection in place of an "
                              "injected lesion: track a1 (lesion c1) is no longer injectable"},
              {"lesion_id": "c1", "role": "none", "tier": "not_suitable", "rank": "", "score": 0.2,
               "reasons": "TOO_SMALL;FOLLOWUP_NOT_INJECTABLE", "track_id": "a1",
               "itrecist_category": "T-I", "planned_volume_ml": "",
               "explanation": "injected lesion (itRECIST T-I, track a1) is no longer injectable; "
                              "replaced by c9 " + EVIL},
              {"lesion_id": "c3", "role": "none", "tier": "not_suitable", "rank": "", "score": 0.0,
               "reasons": "LESION_EMPTY;FOLLOWUP_LOCKED", "track_id": "a3",
               "itrecist_category": "NT-NI", "planned_volume_ml": "", "explanation": "gone"}]
    else:
        rk = [{"lesion_id": r["lesion_id"], "role": {"T-I": "inject", "T-NI": "monitor"}.get(
            r["itrecist_category"], "none"), "tier": "recommended", "rank": k + 1, "score": 0.5,
            "reasons": "", "track_id": r["track_id"], "itrecist_category": r["itrecist_category"],
            "explanation": "baseline"} for k, r in enumerate(les)]
    pd.DataFrame(rk).to_csv(d / "ranking.csv", index=False)
    for lid in keys:
        (d / "keyimages" / f"{lid}.png").write_bytes(_png())
    return d


@pytest.fixture
def patient(tmp_path):
    pdir = tmp_path / "results" / "studies" / "P1"
    keys = {0: ("a1", "a2", "a3"), 1: ("b1",), 2: ("c1", "c9")}
    return [_write_study(pdir, i, keys=keys[i]) for i in range(3)]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict]]:
    p = _Tags()
    p.feed(html)
    return p.tags


def _section(html: str, table_id: str) -> str:
    m = re.search(rf'<table id="{table_id}".*?</table>', html, re.S)
    assert m, f"no table {table_id}"
    return m.group(0)


def test_followup_worksheet_three_timepoints(patient):
    d2 = patient[2]
    html = W.write_worksheet(d2).read_text()
    # title and no baseline section
    assert "itRECIST follow-up, timepoint 2 (2024-05-10)" in html
    assert "itRECIST baseline" not in html
    # response cells of this timepoint, with the reasons (escaped)
    for key, want in (("response_overall", "NE"), ("response_injected", "iPR"),
                      ("response_noninjected", "NE"), ("best_overall_response", "iSD")):
        assert re.search(rf'data-response="{key}"><div class="n">{want}</div>', html), key
    assert "target a2 not evaluable: NE &lt;script&gt;" in html
    assert EVIL not in html
    # history table: one row per timepoint
    assert _section(html, "followup-responses").count("<tr") == 1 + 3
    # SOD plot written beside the worksheet and embedded
    png = d2 / V.PLOT_NAME
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    imgs = [a for t, a in _tags(html) if t == "img"]
    plot = [a for a in imgs if a.get("alt", "").startswith("Sum of diameters over 3 timepoint(s)")]
    assert len(plot) == 1 and plot[0]["src"].startswith("data:image/png;base64,")
    assert "T-I 30.0, 20.0, 18.0 mm" in plot[0]["alt"] and "T-NI 20.0, 22.0, NE mm" in plot[0]["alt"]
    # lesion table: one row per track, measures per timepoint, change from baseline
    table = _section(html, "followup-lesions")
    tracks = re.findall(r'<tr data-track="([^"]+)"', table)
    assert tracks == ["a1", "a2", "a3", "new2-c9"]
    row_a1 = re.search(r'<tr data-track="a1">.*?</tr>', table, re.S).group(0)
    assert [c for c in re.findall(r'<td class="num"[^>]*>([^<]*)</td>', row_a1)] == \
        ["30.0", "20.0", "18.0", "-40.0"]
    row_a2 = re.search(r'<tr data-track="a2">.*?</tr>', table, re.S).group(0)
    assert ">NE</td>" in row_a2 and "not evaluable" in row_a2
    row_a3 = re.search(r'<tr data-track="a3">.*?</tr>', table, re.S).group(0)
    assert "0.0 (gone)" in row_a3 and "-100.0" in row_a3
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in row_a3  # the track's first label, escaped
    row_new = re.search(r'<tr data-track="new2-c9">.*?</tr>', table, re.S).group(0)
    assert [c for c in re.findall(r'<td class="num"[^>]*>([^<]*)</td>', row_new)] == \
        ["–", "–", "8.0 (new)", "–"]  # no change for a lesion first seen now
    # key images: relative links that exist, "no key image" where absent
    keys = _section(html, "followup-keyimages")
    links = [a["src"] for t, a in _tags(keys) if t == "img"]
    assert sorted(links) == sorted(["../s0/keyimages/a1.png", "../s0/keyimages/a2.png",
                                    "../s0/keyimages/a3.png", "../s1/keyimages/b1.png",
                                    "keyimages/c1.png", "keyimages/c9.png"])
    for src in links:
        assert (d2 / src).resolve().is_file(), src
    assert keys.count('<span class="no-key">no key image</span>') == 6  # b2, b3, a2@T2 (not found), c3, new2-c9@T0/T1
    assert "lesion not found in this study&#39;s segmentation" in keys
    # next-cycle plan: the replacement and why, the dropped injected lesion
    plan = _section(html, "followup-plan")
    assert plan.index('data-role="inject"') < plan.index('data-role="none"')
    assert "replacement" in plan and "no longer injectable" in plan
    assert "FOLLOWUP_REPLACEMENT" in plan and "c9" in plan
    assert "replaced by c9 &lt;script&gt;" in plan
    # the locked NT-NI lesion (neither injected nor monitored) is not part of the plan
    assert re.findall(r'<span class="codes">(c\d)</span>', plan) == ["c9", "c1"]
    # no banner when not flagged
    assert "flag-banner" not in html


def test_followup_worksheet_banner_when_flagged(tmp_path):
    pdir = tmp_path / "studies" / "P1"
    for i in range(2):
        _write_study(pdir, i)
    d2 = _write_study(pdir, 2, flagged=True)
    html = W.write_worksheet(d2).read_text()
    m = re.search(r'<div class="flag-banner" role="alert"[^>]*>(.*?)</div>', html, re.S)
    assert m, "no banner"
    assert "background:#b3001b" in m.group(0)
    assert "Flagged for review: registration to the baseline failed (body Dice 0.62 &lt; 0.90)" in m.group(1)
    assert "body Dice 0.620" in html
    # without any key image file every cell says so
    keys = _section(html, "followup-keyimages")
    assert not [a for t, a in _tags(keys) if t == "img"]
    assert keys.count('<span class="no-key">no key image</span>') == 4 * 3


def test_baseline_worksheet_unchanged(patient, tmp_path):
    d0 = patient[0]
    with_fu = W.write_worksheet(d0, tmp_path / "a.html").read_text()
    for n in (V.TRACKING_NAME, V.RESPONSE_NAME, V.INFO_NAME):
        (d0 / n).unlink()
    without = W.write_worksheet(d0, tmp_path / "b.html").read_text()
    strip = re.compile(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC")
    assert strip.sub("", with_fu) == strip.sub("", without)
    assert "itRECIST baseline" in with_fu and "itRECIST follow-up" not in with_fu
    assert not (d0 / V.PLOT_NAME).exists()
    assert W.worksheet_context(d0)["followup"] is None


def test_earlier_timepoint_worksheet_shows_its_own_timepoint(patient):
    ctx = V.followup_context(patient[1])
    assert ctx["title"] == "itRECIST follow-up, timepoint 1 (2024-03-10)"
    assert [r["index"] for r in ctx["responses"]] == [0, 1]
    assert ctx["current"]["response_overall"] == "iSD"
    assert [t["track_id"] for t in ctx["tracks"]] == ["a1", "a2", "a3"]
    a2 = ctx["tracks"][1]
    assert a2["change_pct"] == pytest.approx(10.0, abs=1e-9)  # 20 -> 22 mm


def test_worksheet_written_elsewhere_links_relative_to_its_folder(patient, tmp_path):
    out = tmp_path / "elsewhere" / "deep" / "w.html"
    html = W.write_worksheet(patient[2], out).read_text()
    keys = _section(html, "followup-keyimages")
    links = [a["src"] for t, a in _tags(keys) if t == "img"]
    assert len(links) == 6
    for src in links:
        assert (out.parent / src).resolve().is_file(), src
    assert (out.parent / V.PLOT_NAME).is_file()


def test_reclassified_track_shows_its_history(tmp_path):
    rows = [_trk(0, "t", "x", "l", "T-NI", 20.0, LD, "present"),
            _trk(1, "t", "y", "l", "T-I", 15.0, LD, "present", UIDS[1])]
    df = pd.DataFrame(rows, columns=LESION_TRACKING_COLUMNS).astype(str)
    (t,) = V.lesion_timeline(df, [0, 1], 1, {}, tmp_path)
    assert t["category"] == "T-I" and t["reclassified"] and t["category_history"] == "T-NI → T-I"
    assert t["injected_since"] == UIDS[1]
    assert t["change_pct"] == pytest.approx(-25.0)
    assert [c["key_reason"] for c in t["cells"]] == ["study folder not found"] * 2


def test_sod_timeline_plot_breaks_at_not_evaluable():
    png, alt = F.sod_timeline(["T0", "T1", "T2"], [30, 20, None], [20, 22, 25], [50, 42, None],
                              current=2)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert alt == ("Sum of diameters over 3 timepoint(s): T-I 30.0, 20.0, NE mm; "
                   "T-NI 20.0, 22.0, 25.0 mm; all targets 50.0, 42.0, NE mm.")
    with pytest.raises(ValueError, match="2 values for 3 timepoints"):
        F.sod_timeline(["a", "b", "c"], [1, 2], [1, 2, 3], [1, 2, 3])


def test_is_followup_needs_more_than_the_baseline_row():
    assert not V.is_followup(pd.DataFrame())
    assert not V.is_followup(pd.DataFrame([RESPONSES[0]]).astype(str))
    assert V.is_followup(pd.DataFrame(RESPONSES[:2]).astype(str))


# ------------------------------------------------------------------------------------ dashboard
def _cohort(results: Path, rows: list[dict]) -> None:
    (results / "cohort").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=RESPONSE_COLUMNS).to_csv(results / "cohort" / "response.csv", index=False)


def test_dashboard_shows_latest_and_best_response_per_patient(tmp_path):
    results = tmp_path / "results"
    other = [dict(r, patient_id="P/2 <x>") for r in RESPONSES[:2]]
    other[1].update(response_overall="iPR", best_overall_response="iPR")
    _cohort(results, [RESPONSES[2], RESPONSES[0], RESPONSES[1]] + other)
    want = [("P1_dir", 2, "2024-05-10", "NE", "iPR", "NE", "iSD"),
            ("P_2_x-336f4b8f", 1, "2024-03-10", "iPR", "iPR", "iSD", "iPR")]
    got = V.patient_responses(results, {"P1": "P1_dir"})
    assert [(r["patient"], r["timepoint_index"], r["date"], r["response_overall"],
             r["response_injected"], r["response_noninjected"], r["best_overall_response"])
            for r in got] == want
    assert [r["n_timepoints"] for r in got] == [3, 2]
    # the page (no study sheet here: patients shown by their sanitized ID)
    html = D.write_dashboard(results).read_text()
    table = _section(html, "responses-table")
    assert re.findall(r'<tr data-patient="([^"]+)"', table) == ["P1", "P_2_x-336f4b8f"]
    row = re.search(r'<tr data-patient="P1">.*?</tr>', table, re.S).group(0)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert cells[:8] == ["P1", "2", "2024-05-10", "–", "NE", "iPR", "NE", "iSD"]  # no worksheet
    assert "target a2 not evaluable: NE &lt;script&gt;" in row and EVIL not in html
    for h in ("Overall", "Injected", "Noninjected", "Best overall"):
        assert f"<th>{h}</th>" in table


def test_dashboard_names_patients_by_their_folder(tmp_path):
    results = tmp_path / "results"
    _cohort(results, RESPONSES)
    sheet = pd.DataFrame([{"patient_id": "P1", "patient_dir": "P1_folder", "study_uid": u,
                           "study_dir": d, "study_date": t} for u, d, t in zip(UIDS, DIRS, DATES)])
    sheet.to_csv(results / "cohort" / "studies.csv", index=False)
    ws = results / "studies" / "P1_folder" / DIRS[2] / "worksheet.html"
    ws.parent.mkdir(parents=True)
    ws.write_text("x")
    ctx = D.dashboard_context(results)
    assert [(r["patient"], r["response_overall"], r["worksheet"]) for r in ctx["responses"]] == [
        ("P1_folder", "NE", f"../studies/P1_folder/{DIRS[2]}/worksheet.html")]
    html = D.write_dashboard(results).read_text()
    assert f'<a href="../studies/P1_folder/{DIRS[2]}/worksheet.html">worksheet</a>' in \
        _section(html, "responses-table")


def test_dashboard_without_response_file_has_no_response_section(tmp_path):
    results = tmp_path / "results"
    (results / "cohort").mkdir(parents=True)
    assert V.patient_responses(results) == []
    html = D.write_dashboard(results).read_text()
    assert 'id="responses"' not in html


def test_long_reasons_fold_in_the_history_table(patient):
    long = "overall NE: target not evaluable (" + ", ".join(f"lesion_{k}" for k in range(40)) + ")"
    df = pd.read_csv(patient[2] / V.RESPONSE_NAME, dtype=str, keep_default_na=False)
    df.loc[1, "reasons"] = long
    df.to_csv(patient[2] / V.RESPONSE_NAME, index=False)
    table = _section(W.write_worksheet(patient[2]).read_text(), "followup-responses")
    folded = re.findall(r"<details><summary>(.*?)…</summary>(.*?)</details>", table, re.S)
    assert folded == [(long[:120], long)]


def test_dashboard_folds_long_reasons(tmp_path):
    results = tmp_path / "results"
    long = "overall NE: " + "x" * 300
    _cohort(results, [RESPONSES[0], dict(RESPONSES[1], reasons=long)])
    table = _section(D.write_dashboard(results).read_text(), "responses-table")
    assert re.findall(r"<details><summary>(.*?)…</summary>(.*?)</details>", table, re.S) == \
        [(long[:120], long)]
