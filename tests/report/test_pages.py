"""Worksheet and dashboard content (no browser): self-contained, correct sets and sums, optional
columns, the failed study with its reason, no patient name anywhere."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from pipeline.report import dashboard as D
from pipeline.report import worksheet as W


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


def _assert_self_contained(html: str) -> None:
    tags = _tags(html)
    imgs = [a for t, a in tags if t == "img"]
    assert imgs, "no image"
    for a in imgs:
        assert a.get("src", "").startswith("data:image/png;base64,"), a.get("src", "")[:40]
        assert len(a.get("alt", "")) > 20, "every image needs a real alt text"
    for t, a in tags:
        assert not (t == "script" and a.get("src")), "external script"
        assert not (t == "link" and "stylesheet" in a.get("rel", "")), "external stylesheet"
        for attr in ("src", "href"):
            v = a.get(attr, "")
            assert not re.match(r"^(https?:)?//", v), f"network URL {v}"
    assert "@import" not in html and "url(http" not in html


def _patient_name(archive: Path) -> str:
    f = next((archive / "PHANTOM001" / "CT_contrast").glob("*.dcm"))
    return str(pydicom.dcmread(f, stop_before_pixels=True).PatientName)


def test_worksheet_is_self_contained_and_complete(results):
    html = (results["good"] / "worksheet.html").read_text()
    _assert_self_contained(html)
    les = pd.read_csv(results["good"] / "lesions.csv", dtype={"lesion_id": str})
    prov = json.loads((results["good"] / "provenance.json").read_text())
    assert "PHANTOM001" in html
    for lid in les["lesion_id"]:
        assert f'id="lesion-{lid}"' in html
    assert prov["config_hash"] in html
    for uid in prov["inputs"]["series"].values():
        assert uid in html
    assert "numpy" in html and prov["versions"]["numpy"] in html
    # one key image per lesion, a MIP, and the injection targets' needle sections
    n_img = len([1 for t, a in _tags(html) if t == "img"])
    rk = pd.read_csv(results["good"] / "ranking.csv")
    assert n_img >= len(les) + 1
    assert html.count("Planned needle path") == int((rk["role"] == "inject").sum())


def test_no_patient_name_in_any_output(results):
    name = _patient_name(results["archive"])
    parts = [p for p in re.split(r"[\^ ]", name) if len(p) > 3]
    outputs = [results["results"] / "report" / "index.html"]
    for d in (results["good"], results["bad"]):
        outputs += [p for p in d.rglob("*") if p.is_file()]
    assert any(p.suffix == ".dcm" for p in outputs)
    for p in outputs:
        data = p.read_bytes()
        for part in parts + [name]:
            assert part.encode() not in data, f"{part!r} in {p.name}"


def test_itrecist_sets_and_sums(results):
    ctx = W.worksheet_context(results["good"])
    rk = pd.read_csv(results["good"] / "ranking.csv", dtype={"lesion_id": str})
    les = pd.read_csv(results["good"] / "lesions.csv", dtype={"lesion_id": str}).set_index("lesion_id")
    groups = {g["name"]: g for g in ctx["recist"]["groups"]}

    def diam(lid):
        node = les.loc[lid, "organ"] == "lymph_node"
        return float(les.loc[lid, "short_axis_mm" if node else "longest_diameter_mm"])

    ti = rk[(rk.role == "inject") & rk.measurable.astype(bool)]["lesion_id"].tolist()
    tni = rk[(rk.role == "monitor") & rk.measurable.astype(bool)]["lesion_id"].tolist()
    assert sorted(x["lesion_id"] for x in groups["T-I"]["rows"]) == sorted(ti)
    assert sorted(x["lesion_id"] for x in groups["T-NI"]["rows"]) == sorted(tni)
    assert groups["T-I"]["sum"] == pytest.approx(sum(diam(x) for x in ti))
    assert groups["T-NI"]["sum"] == pytest.approx(sum(diam(x) for x in tni))
    assert ctx["recist"]["total"] == pytest.approx(groups["T-I"]["sum"] + groups["T-NI"]["sum"])
    every = [x["lesion_id"] for g in groups.values() for x in g["rows"]]
    assert sorted(every) == sorted(rk["lesion_id"])  # every lesion in exactly one set
    node = [x for g in groups.values() for x in g["rows"] if les.loc[x["lesion_id"], "organ"] == "lymph_node"]
    assert node and all(x["measure"].startswith("short axis") for x in node)
    # planned volumes of the injection targets add up
    vol = rk.loc[rk.role == "inject", "planned_volume_ml"].sum()
    assert ctx["plan"]["total_volume_ml"] == pytest.approx(vol)


def _with_paths(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    rk = pd.read_csv(dst / "ranking.csv", dtype={"lesion_id": str})
    inj = rk["role"] == "inject"
    rk["entry_x_mm"] = np.where(inj, rk["target_x_mm"] + 30.0, np.nan)
    rk["entry_y_mm"] = np.where(inj, rk["target_y_mm"] - 40.0, np.nan)
    rk["entry_z_mm"] = np.where(inj, rk["target_z_mm"] + 5.0, np.nan)
    d = np.column_stack([rk.target_x_mm - rk.entry_x_mm, rk.target_y_mm - rk.entry_y_mm,
                         rk.target_z_mm - rk.entry_z_mm])
    n = np.linalg.norm(d, axis=1)
    for i, a in enumerate("xyz"):
        rk[f"path_direction_{a}"] = d[:, i] / n
    rk["path_length_mm"] = np.where(inj, n, rk["path_length_mm"])
    rk["safe_path_found"] = np.where(inj, True, None)
    rk.to_csv(dst / "ranking.csv", index=False)
    return dst


def test_worksheet_draws_needle_path_when_entry_columns_exist(results, tmp_path):
    d = _with_paths(results["good"], tmp_path / "study")
    ctx = W.worksheet_context(d)
    inj = [r for r in ctx["lesions"] if r["role"] == "inject"]
    assert inj
    for r in inj:
        assert r["needle_img"] is not None, r["lesion_id"]
        assert "planned needle path" in r["needle_img"]["alt"]
        assert r["path"]["safe_text"] == "yes"
        assert "craniocaudal" in r["path"]["direction_text"]
        assert f"{r['path']['length_mm']:.0f} mm" in r["needle_img"]["alt"]
    for r in ctx["lesions"]:
        if r["role"] != "inject":
            assert r["needle_img"] is None
    out = W.write_worksheet(d, tmp_path / "ws.html")
    html = out.read_text()
    _assert_self_contained(html)
    e = inj[0]["path"]["entry"]
    assert f"({e[0]:.1f}, {e[1]:.1f}, {e[2]:.1f})" in html


def test_worksheet_without_optional_columns(results, tmp_path):
    d = tmp_path / "study"
    shutil.copytree(results["good"], d)
    rk = pd.read_csv(d / "ranking.csv")
    keep = ["patient_id", "study_uid", "lesion_id", "lesion_label", "role", "tier", "rank", "score",
            "reasons", "explanation"]
    rk[keep].to_csv(d / "ranking.csv", index=False)
    shutil.rmtree(d / "keyimages")
    (d / "ranking_provenance.json").unlink()
    ctx = W.worksheet_context(d)
    assert not ctx["keyimages_available"]
    assert all(r["key"] is None for r in ctx["lesions"])
    html = W.write_worksheet(d).read_text()
    assert "Key images are not available" in html
    assert html.count("<tr data-role=") == len(rk)


def test_failed_study_worksheet_shows_the_failure(results):
    html = (results["bad"] / "worksheet.html").read_text()
    assert "Failed at" in html and "GeometryError" in html
    st = json.loads((results["bad"] / "report.json").read_text())
    assert st["sr"] is None and "failed" in st["sr_skipped"]


def test_dashboard_lists_failed_study_with_reason(results):
    ctx = D.dashboard_context(results["results"])
    by_patient = {s["patient"]: s for s in ctx["studies"]}
    assert by_patient["PHANTOM001"]["status"] == "done"
    bad = by_patient["PHANTOM002"]
    assert bad["status"] == "failed"
    reasons = " ".join(f"{f['stage']} {f['error_class']} {f['message']} {f['file']}" for f in bad["failures"])
    assert "GeometryError" in reasons and "missing slices" in reasons
    for f in results["truncated"]:
        assert f in reasons  # the index's truncated files are the failed study's reasons
    html = (results["results"] / "report" / "index.html").read_text()
    _assert_self_contained(html)
    assert "GeometryError" in html and 'data-status="failed"' in html
    assert by_patient["PHANTOM001"]["worksheet"].endswith("worksheet.html")
    target = (results["results"] / "report" / by_patient["PHANTOM001"]["worksheet"]).resolve()
    assert target.exists()
    rk = pd.read_csv(results["results"] / "cohort" / "ranking.csv")
    assert len(ctx["lesions"]) == len(rk)
    assert html.count('<tr data-role=') == len(rk)
    assert len(ctx["plots"]) == 5 and all(len(p["alt"]) > 20 for p in ctx["plots"])


def test_dashboard_with_only_a_study_sheet(tmp_path):
    (tmp_path / "cohort").mkdir()
    pd.DataFrame([{"patient_id": "P1", "study_uid": "1.2.3", "patient_dir": "P1", "study_dir": "1.2.3",
                   "study_date": "20240101"}]).to_csv(tmp_path / "cohort" / "studies.csv", index=False)
    out = D.write_dashboard(tmp_path)
    html = out.read_text()
    assert out == tmp_path / "report" / "index.html"
    assert 'data-status="missing"' in html and "the study job produced no results" in html


def test_cli_entry_points(results, tmp_path):
    from pipeline.cli import main as hitit
    from pipeline.report import cli

    res = tmp_path / "r"
    shutil.copytree(results["results"], res)
    (res / "report" / "index.html").unlink()
    assert hitit(["dashboard", "--results", str(res)]) == 0
    assert (res / "report" / "index.html").exists()
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    cli.register(sub)
    a = p.parse_args(["report-study", "--results", "R", "--patient-dir", "P", "--study-dir", "S", "--no-sr"])
    assert a.func is cli.cmd_study and a.no_sr
    assert p.parse_args(["dashboard", "--results", "R"]).func is cli.cmd_dashboard
    assert p.parse_args(["report", "--results", "R"]).func is cli.cmd_all


def test_control_characters_never_reach_a_page(tmp_path):
    """A PatientID with NUL / escape bytes and a failure message with a bell: the dashboard
    shows the text without any control character; tabs and newlines stay."""
    from pipeline.report.templates import render, shown

    (tmp_path / "cohort").mkdir()
    pid = "P\x001\x1b[31m\x7f\x85"
    pd.DataFrame([{"patient_id": pid, "study_uid": "1.2.3", "patient_dir": "P1",
                   "study_dir": "1.2.3", "study_date": "20240101"}]).to_csv(
        tmp_path / "cohort" / "studies.csv", index=False)
    pd.DataFrame([{"patient_id": pid, "study_uid": "1.2.3", "stage": "study",
                   "error_class": "SegmentationError", "message": "bad\x07 news\x00",
                   "file": "", "series_uid": "", "tag": "", "hint": "", "severity": "error"}]
                 ).to_csv(tmp_path / "cohort" / "failures.csv", index=False)
    html = D.write_dashboard(tmp_path).read_text(encoding="utf-8")
    assert "bad news" in html
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", html)
    assert shown("a\tb\nc\x00") == "a\tb\nc" and shown(3.5) == 3.5
    page = render("dashboard.html", **{**D.dashboard_context(tmp_path),
                                        "results_name": "r\x00es"})
    assert "res" in page and "\x00" not in page
