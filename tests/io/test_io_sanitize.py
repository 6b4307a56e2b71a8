"""safe_id: output path components from untrusted identifiers."""

from __future__ import annotations

import re
import string

import numpy as np
import pytest

from pipeline.io.sanitize import MAX_LEN, safe_id

SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")


@pytest.mark.parametrize("raw", ["PAT001", "1.2.840.113619.2.55.3", "a_b-c.d", "X" * 64])
def test_safe_ids_unchanged(raw):
    assert safe_id(raw) == raw


@pytest.mark.parametrize("raw", ["../../x", "..", ".", "", "a/b", "a\\b", "Müller, Jörg",
                                 "患者", ".hidden", "x" * 200, " ", "a b", "\x00evil", None])
def test_unsafe_ids_sanitized(raw, tmp_path):
    out = safe_id(raw)
    assert SAFE.match(out), out
    assert 0 < len(out) <= MAX_LEN
    assert out not in {".", ".."}
    assert safe_id(raw) == out  # stable
    # stays inside the results folder
    assert (tmp_path / out).resolve().parent == tmp_path.resolve()


def test_transliteration_keeps_readability():
    assert safe_id("Müller").startswith("Muller-")


def test_no_collisions():
    rng = np.random.default_rng(0)
    alphabet = list(string.ascii_letters + string.digits + "._-/ \\:*?äöüé")
    raws = {"".join(rng.choice(alphabet, size=int(rng.integers(0, 12)))) for _ in range(5000)}
    raws |= {"a b", "a_b", "a/b", "a:b", "a_b-", "..a", ".a", "a"}
    outs = {safe_id(r) for r in raws}
    assert len(outs) == len(raws)


HOSTILE = ["../../x", "../../../etc/passwd", "..\\..\\x", "/abs/path", "Ünïcödé-患者-😀", "",
           "x" * 300, "é" * 100, "CON", "a\nb", "  ", ".", "..", "~root", "$(rm -rf)", "nul\x00"]


@pytest.mark.parametrize("raw", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_patient_ids_stay_inside_results(raw, tmp_path):
    """Output folders are built as RESULTS/studies/<safe_id(PatientID)>/<safe_id(StudyUID)>."""
    results = tmp_path / "results"
    out = (results / "studies" / safe_id(raw) / safe_id("1.2.3")).resolve()
    assert results.resolve() in out.parents
    assert out.parent.parent == (results / "studies").resolve()
    assert SAFE.match(safe_id(raw)) and len(safe_id(raw)) <= MAX_LEN
    out.mkdir(parents=True)  # a real folder can be made with that name


def test_distinct_hostile_ids_never_share_a_folder():
    outs = [safe_id(r) for r in HOSTILE]
    assert len(set(outs)) == len(HOSTILE)


def test_logs_carry_no_patient_names(tmp_path, caplog):
    """Index, CT/PET assembly, SUV audit and mask reading log series UIDs, never names."""
    import logging

    from io_synth import make_series, write_seg

    from pipeline.io.dicom import load_ct, load_pet_activity
    from pipeline.io.index import scan_archive
    from pipeline.sheet import build_study_sheet
    from pipeline.io.seg import read_seg
    from pipeline.io.suv import suv_audit

    name = "Doe^Jane^Secret"

    def extra(ds, k):
        ds.PatientName = name
        ds.PatientWeight = "75000"  # grams: a repair that is logged
        ds.SeriesTime = "120000"  # later than acquisition: logged

    caplog.set_level(logging.DEBUG, logger="pipeline")
    ct = make_series(tmp_path / "ct", n=4, shear_deg=10.0,
                     extra=lambda ds, k: setattr(ds, "PatientName", name))
    pet = make_series(tmp_path / "pt", modality="PT", n=3, extra=extra, study_uid=ct.study_uid)
    m = np.zeros((4, 8, 10), bool)
    m[1, 1:3, 1:3] = True
    write_seg(tmp_path / "seg.dcm", ref=ct, masks={1: m, 2: np.zeros_like(m)},
              labels={1: "lesion", 2: "empty"})
    build_study_sheet(scan_archive(tmp_path))
    vol = load_ct(ct.paths, series_uid=ct.series_uid)  # resampled (tilt): logged
    act, headers = load_pet_activity(pet.paths, series_uid=pet.series_uid)
    suv_audit(headers)
    from dataclasses import replace

    read_seg(tmp_path / "seg.dcm", grids={ct.series_uid: replace(vol.grid)})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert len(caplog.records) >= 3
    for part in ("Doe", "Jane", "Secret"):
        assert part not in text


# ------------------------------------------------------------------ UIDs and shown text
@pytest.mark.parametrize(("uid", "ok"), [
    ("1.2.840.10008.1.2", True), ("0", True), ("1.0.3", True), ("2.25." + "9" * 39, True),
    ("1." + "2" * 62, True),           # 64 characters
    ("1." + "2" * 63, False),          # 65 characters
    ("1.02.3", False), ("01.2", False), ("1..2", False), (".1.2", False), ("1.2.", False),
    ("", False), ("1.2.3 ", False), (";rm -rf /", False), ("1.2.a", False), ("1" * 10000, False),
    ("١.٢", False),                    # non-ASCII digits
])
def test_is_valid_uid(uid, ok):
    from pipeline.io.sanitize import is_valid_uid

    assert is_valid_uid(uid) is ok


def test_replacement_uid_is_valid_stable_and_distinct():
    from pipeline.io.sanitize import is_valid_uid, replacement_uid

    raw = [";rm -rf /", "1" * 10000, "1.02.3", "1.2.3\x00"]
    new = [replacement_uid(r) for r in raw]
    assert all(is_valid_uid(u) and u.startswith("2.25.") and len(u) <= 44 for u in new)
    assert len(set(new)) == len(raw)
    assert new == [replacement_uid(r) for r in raw]


def test_checked_uid_logs_the_replacement(caplog):
    from pipeline.io.sanitize import checked_uid, replacement_uid

    assert checked_uid("1.2.3", tag="StudyInstanceUID") == "1.2.3"
    assert checked_uid("", tag="StudyInstanceUID") == ""
    with caplog.at_level("WARNING"):
        new = checked_uid(";rm -rf /" + "x" * 10000, tag="StudyInstanceUID", where="a/b.dcm")
        again = checked_uid(";rm -rf /" + "x" * 10000, tag="StudyInstanceUID", where="a/c.dcm")
    assert again == new  # reported once
    assert new == replacement_uid(";rm -rf /" + "x" * 10000)
    [rec] = caplog.records
    msg = rec.getMessage()
    assert "StudyInstanceUID" in msg and "a/b.dcm" in msg and new in msg
    assert "10009 characters" in msg and len(msg) < 400


def test_clean_text_removes_control_characters_only():
    from pipeline.io.sanitize import clean_text

    assert clean_text("a\x00b\x1b[0m\x7fc\x85d\u00e9\t\n\r") == "ab[0mcdé\t\n\r"
    assert clean_text(None) == "" and clean_text(12) == "12"


def test_index_replaces_an_invalid_study_uid(tmp_path):
    """A series whose StudyInstanceUID is not a UID gets one generated replacement for all its
    files; valid UIDs are untouched."""
    from io_synth import make_series

    from pipeline.io.index import scan_archive
    from pipeline.io.sanitize import is_valid_uid, replacement_uid

    bad = ";rm -rf /" + "9" * 200
    make_series(tmp_path / "bad", study_uid=bad, n=3, patient_id="P1")
    good = make_series(tmp_path / "good", n=2, patient_id="P2")
    index = scan_archive(tmp_path)
    studies = dict(zip(index.files["patient_id"], index.files["study_uid"]))
    assert studies == {"P1": replacement_uid(bad), "P2": good.study_uid}
    assert index.files["study_uid"].map(is_valid_uid).all()
