"""``hitit review``: export at a cut-off, argument errors, and a server killed with SIGKILL that
loses nothing it acknowledged."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from synthetic import make_results

from pipeline.cli import main
from pipeline.review import store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def res(tmp_path):
    return make_results(tmp_path / "res", n_patients=2)


def test_export_cutoff_cli(res, tmp_path, capsys):
    kw = dict(reader="dr a", patient_id="P001", study_uid="1.2.3.1", lesion_id="les_a")
    store.record_decision(res, role="inject", time_utc="2026-01-10T09:00:00.000000Z", **kw)
    store.record_decision(res, role="none", reason="progressed", time_utc="2026-03-01T09:00:00.000000Z", **kw)
    out = tmp_path / "q1.csv"
    assert main(["review", str(res), "--export", str(out), "--cutoff", "2026-02-01T00:00:00Z"]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["lesion_id"], r["role"], r["chosen"]) for r in rows] == [("les_a", "inject", "1")]
    assert main(["review", str(res), "--export", str(out)]) == 0
    with open(out, newline="") as fh:
        assert [r["role"] for r in csv.DictReader(fh)] == ["none"]
    assert main(["review", str(res), "--export", str(out), "--cutoff", "last tuesday"]) != 0
    assert main(["review", str(res), "--cutoff", "2026-02-01"]) != 0
    assert main(["review", str(tmp_path / "nowhere")]) != 0
    err = capsys.readouterr().err
    assert "ISO 8601" in err and "--export" in err and "not a results folder" in err


def test_killed_server_loses_nothing_acknowledged(res):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "review", str(res), "--port", "0",
                             "--reader", "dr kill"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, text=True)
    try:
        url = None
        t0 = time.monotonic()
        while url is None and time.monotonic() - t0 < 60:
            line = proc.stdout.readline()
            if "http://" in line:
                url = line.strip()
        assert url and url.startswith("http://127.0.0.1:"), url  # bound to loopback by default
        base, token = url.split("/?token=")
        hdr = {"X-Review-Token": token, "Origin": base, "Accept": "application/json"}
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(base + "/")
        assert ei.value.code == 403
        acked = []
        for i, lid in enumerate(["les_a", "les_b", "les_c"]):
            body = urllib.parse.urlencode({"lesion_id": lid, "role": "inject", "category": "T-I",
                                           "planned_volume_ml": str(1.0 + i), "reason": f"r{i}"}).encode()
            req = urllib.request.Request(f"{base}/study/P001/1.2.3.1/decision", data=body, headers=hdr)
            with urllib.request.urlopen(req, timeout=30) as r:
                assert r.status == 200
            acked.append(lid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    state = store.load_state(res)
    for i, lid in enumerate(acked):
        d = state.lesions[("P001", "1.2.3.1", lid)]
        assert (d.role.value, d.planned_volume_ml, d.reader) == ("inject", 1.0 + i, "dr kill")
    with open(store.decisions_path(res), newline="") as fh:
        assert [r["lesion_id"] for r in csv.DictReader(fh)] == acked
