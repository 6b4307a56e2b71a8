"""Decisions store: reason rule, audit log, atomic CSV, file lock across processes, rebuild, cut-off export."""

from __future__ import annotations

import csv
import fcntl
import json
import multiprocessing as mp
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from synthetic import make_results

from pipeline.errors import ConfigError
from pipeline.review import store
from pipeline.review.store import Category, Role


@pytest.fixture
def res(tmp_path):
    return make_results(tmp_path / "res", n_patients=8)


def _csv(p: Path) -> list[dict]:
    with open(p, newline="") as fh:
        return list(csv.DictReader(fh))


def _audit_lines(res: Path) -> list[dict]:
    return [json.loads(x) for x in store.audit_path(res).read_text().splitlines() if x.strip()]


def test_proposal_from_ranking(res):
    props = store.study_proposals(res, "P001", "1.2.3.1")
    assert props["les_a"].role is Role.INJECT and props["les_a"].category is Category.T_I
    assert props["les_a"].planned_volume_ml == 2.0
    assert props["les_b"].category is Category.T_NI and props["les_b"].planned_volume_ml is None
    assert props["les_c"].category is Category.NT_NI


def test_reason_required_when_differing(res):
    kw = dict(reader="dr a", patient_id="P001", study_uid="1.2.3.1", lesion_id="les_a")
    with pytest.raises(ConfigError, match="no reason") as ei:
        store.record_decision(res, role="monitor", **kw)
    assert ei.value.hint
    assert not store.audit_path(res).exists()
    with pytest.raises(ConfigError, match="no reason"):
        store.record_decision(res, planned_volume_ml=3.0, **kw)
    # agreeing with the proposal needs no reason
    d = store.record_decision(res, role="inject", category="T-I", **kw)
    assert (d.role, d.category, d.planned_volume_ml) == (Role.INJECT, Category.T_I, 2.0)
    d = store.record_decision(res, role="monitor", category="T-NI", reason="too close to the aorta", **kw)
    assert (d.role, d.category, d.planned_volume_ml, d.reason) == (Role.MONITOR, Category.T_NI, None,
                                                                   "too close to the aorta")
    with pytest.raises(ConfigError, match="planned volume"):
        store.record_decision(res, planned_volume_ml=1.0, reason="x", **kw)
    with pytest.raises(ConfigError, match="unknown value"):
        store.record_decision(res, role="burn", reason="x", **kw)
    with pytest.raises(ConfigError, match="not in the ranking"):
        store.record_decision(res, reader="dr a", patient_id="P001", study_uid="1.2.3.1", lesion_id="zz",
                              role="none", reason="x")
    with pytest.raises(ConfigError, match="reader"):
        store.record_decision(res, **{**kw, "reader": " "}, role="inject")


def test_audit_lines_and_csv_format(res):
    kw = dict(reader="dr a", patient_id="P001", study_uid="1.2.3.1")
    store.record_decision(res, lesion_id="les_a", role="inject", planned_volume_ml=4.5,
                          reason="larger lesion than planned", **kw)
    store.record_decision(res, lesion_id="les_b", role="inject", category="T-I", planned_volume_ml=1.0,
                          reason="board wants two", **kw)
    lines = _audit_lines(res)
    assert [(x["lesion_id"], x["field"], x["old"], x["new"]) for x in lines] == [
        ("les_a", "role", "", "inject"), ("les_a", "category", "", "T-I"),
        ("les_a", "planned_volume_ml", "", "4.5"),
        ("les_b", "role", "", "inject"), ("les_b", "category", "", "T-I"),
        ("les_b", "planned_volume_ml", "", "1.0")]
    assert all(set(x) == set(store.AUDIT_KEYS) for x in lines)
    assert all(x["reader"] == "dr a" and x["patient_id"] == "P001" for x in lines)
    t = store.parse_utc(lines[0]["time_utc"])
    assert abs((datetime.now(timezone.utc) - t).total_seconds()) < 60
    rows = _csv(store.decisions_path(res))
    assert list(rows[0]) == store.DECISION_COLUMNS
    assert [(r["lesion_id"], r["chosen"], r["role"], r["planned_volume_ml"]) for r in rows] == [
        ("les_a", "1", "inject", "4.5"), ("les_b", "1", "inject", "1.0")]
    # a later change appends; nothing earlier is rewritten
    before = store.audit_path(res).read_bytes()
    store.record_decision(res, lesion_id="les_a", role="none", category="NT-NI", reason="necrotic", **kw)
    after = store.audit_path(res).read_bytes()
    assert after.startswith(before) and len(after) > len(before)
    new = [json.loads(x) for x in after[len(before):].decode().splitlines()]
    assert [(x["field"], x["old"], x["new"], x["reason"]) for x in new] == [
        ("role", "inject", "none", "necrotic"), ("category", "T-I", "NT-NI", "necrotic"),
        ("planned_volume_ml", "4.5", "", "necrotic")]
    # repeating the same decision writes nothing
    store.record_decision(res, lesion_id="les_a", role="none", category="NT-NI", reason="necrotic", **kw)
    assert store.audit_path(res).read_bytes() == after


def test_sign_off_fills_proposal(res):
    kw = dict(patient_id="P002", study_uid="1.2.3.2")
    store.record_decision(res, reader="dr a", lesion_id="les_b", role="none", category="NT-NI",
                          reason="not measurable on CT", **kw)
    so = store.sign_off(res, reader="dr b", **kw)
    assert so.reader == "dr b"
    rows = {r["lesion_id"]: r for r in _csv(store.decisions_path(res))}
    assert set(rows) == {"les_a", "les_b", "les_c"}
    assert (rows["les_a"]["role"], rows["les_a"]["category"], rows["les_a"]["planned_volume_ml"],
            rows["les_a"]["chosen"]) == ("inject", "T-I", "2.0", "1")
    assert rows["les_a"]["reason"] == store.ACCEPTED_REASON
    assert rows["les_b"]["role"] == "none" and rows["les_b"]["reason"] == "not measurable on CT"
    assert rows["les_c"]["role"] == "none" and rows["les_c"]["category"] == "NT-NI"
    assert all(r["signed_off_by"] == "dr b" for r in rows.values())
    last = _audit_lines(res)[-1]
    assert (last["field"], last["lesion_id"], last["new"]) == ("signed_off", "", "dr b")


def test_atomic_write_and_rebuild(res, monkeypatch):
    kw = dict(reader="dr a", patient_id="P001", study_uid="1.2.3.1", lesion_id="les_a")
    store.record_decision(res, role="inject", **kw)
    good = store.decisions_path(res).read_bytes()

    def boom(*a, **k):
        raise OSError("disk pulled")

    monkeypatch.setattr(store.os, "replace", boom)
    with pytest.raises(OSError):
        store.record_decision(res, role="monitor", reason="killed mid-write", **kw)
    monkeypatch.undo()
    # the visible file is the old complete one; the audit already holds the acknowledged-to-be change
    assert store.decisions_path(res).read_bytes() == good
    assert [(x["field"], x["new"]) for x in _audit_lines(res)[-2:]] == [("role", "monitor"), ("planned_volume_ml", "")]
    store.rebuild(res)
    rows = _csv(store.decisions_path(res))
    assert rows[0]["role"] == "monitor" and rows[0]["chosen"] == "0"
    # rebuild from scratch gives the same bytes as the incremental writes
    store.record_decision(res, reader="dr b", patient_id="P003", study_uid="1.2.3.3", lesion_id="les_c",
                          role="monitor", category="T-NI", reason="visible on CT after all")
    incremental = store.decisions_path(res).read_bytes()
    store.decisions_path(res).unlink()
    store.rebuild(res)
    assert store.decisions_path(res).read_bytes() == incremental


def test_torn_audit_line_is_skipped(res):
    kw = dict(reader="dr a", patient_id="P001", study_uid="1.2.3.1", lesion_id="les_a")
    store.record_decision(res, role="inject", **kw)
    with open(store.audit_path(res), "ab") as fh:
        fh.write(b'{"time_utc": "2026-')  # a writer killed mid-line (never acknowledged)
    store.record_decision(res, role="monitor", reason="r", **kw)
    entries = store.read_audit(res)
    assert [e.new for e in entries if e.field == "role"] == ["inject", "monitor"]
    assert _csv(store.decisions_path(res))[0]["role"] == "monitor"


def test_export_cutoff(res, tmp_path):
    kw = dict(reader="dr a", patient_id="P001", study_uid="1.2.3.1", lesion_id="les_a")
    store.record_decision(res, role="inject", time_utc="2026-01-10T09:00:00.000000Z", **kw)
    store.record_decision(res, role="monitor", reason="board 2026-02", time_utc="2026-02-10T09:00:00.000000Z", **kw)
    store.record_decision(res, reader="dr a", patient_id="P002", study_uid="1.2.3.2", lesion_id="les_b",
                          role="monitor", time_utc="2026-02-11T09:00:00.000000Z")
    out = store.export(res, tmp_path / "jan.csv", cutoff=datetime(2026, 1, 31))
    rows = _csv(out)
    assert [(r["patient_id"], r["lesion_id"], r["role"], r["chosen"]) for r in rows] == [
        ("P001", "les_a", "inject", "1")]
    rows = _csv(store.export(res, tmp_path / "feb.csv",
                             cutoff=datetime(2026, 2, 10, 9, 0, tzinfo=timezone.utc)))
    assert [(r["lesion_id"], r["role"]) for r in rows] == [("les_a", "monitor")]
    rows = _csv(store.export(res, tmp_path / "now.csv"))
    assert [(r["patient_id"], r["role"]) for r in rows] == [("P001", "monitor"), ("P002", "monitor")]


def _writer(res: str, worker: int, n: int) -> None:
    pid = f"P{worker + 1:03d}"
    for k in range(n):
        # own lesion: volumes 1.0 .. n
        store.record_decision(res, reader=f"w{worker}", patient_id=pid, study_uid=f"1.2.3.{worker + 1}",
                              lesion_id="les_a", role="inject", planned_volume_ml=float(k + 1),
                              reason=f"w{worker} k{k}")
        # shared lesion: every write a distinct value
        store.record_decision(res, reader=f"w{worker}", patient_id="P008", study_uid="1.2.3.8",
                              lesion_id="les_a", role="inject", planned_volume_ml=100.0 * (worker + 1) + k,
                              reason=f"w{worker} k{k}")


def test_concurrent_processes_lose_no_write(res):
    n_workers, n = 4, 6
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(res), w, n)) for w in range(n_workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    entries = store.read_audit(res)
    shared = [e for e in entries if e.patient_id == "P008" and e.field == "planned_volume_ml"]
    assert sorted(float(e.new) for e in shared) == sorted(100.0 * (w + 1) + k for w in range(n_workers)
                                                          for k in range(n))
    # each shared entry's "old" is the value the previous entry wrote: no interleaving
    assert all(shared[i].old == shared[i - 1].new for i in range(1, len(shared)))
    rows = {(r["patient_id"], r["lesion_id"]): r for r in _csv(store.decisions_path(res))}
    for w in range(n_workers):
        assert float(rows[(f"P{w + 1:03d}", "les_a")]["planned_volume_ml"]) == float(n)
    assert float(rows[("P008", "les_a")]["planned_volume_ml"]) == float(shared[-1].new)
    incremental = store.decisions_path(res).read_bytes()
    store.rebuild(res)
    assert store.decisions_path(res).read_bytes() == incremental


def test_writer_waits_for_the_lock(res):
    store.review_dir(res).mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    with open(store.review_dir(res) / store.LOCK_NAME, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        p = ctx.Process(target=_writer, args=(str(res), 0, 1))
        p.start()
        time.sleep(3.0)
        assert p.is_alive() and not store.audit_path(res).exists()
        fcntl.flock(fh, fcntl.LOCK_UN)
    p.join(60)
    assert p.exitcode == 0 and len(store.read_audit(res)) == 6
    assert not [f for f in os.listdir(store.review_dir(res)) if f.endswith(".tmp")]
