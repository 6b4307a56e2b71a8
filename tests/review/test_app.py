"""Review app through Flask's test client: token, CSRF, path traversal, escaping, slice rendering."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from synthetic import make_results

from pipeline.geometry import Grid
from pipeline.records import LesionMask, MaskSource, Volume
from pipeline.review import store
from pipeline.review.app import HOT, create_app
from pipeline.review.cache import ImageCache, NeedlePlan, write_image_cache

XSS = "<script>alert(1)</script>"
TOKEN = "t0ken-for-tests"
PID, SUID = "P001", "1.2.3.1"
ORIGIN = {"Origin": "http://localhost"}


def _phantom_cache(study_out):
    """CT 10x40x40 (2 mm, 0 HU) with a 60 HU cube z 3..5, y 10..19, x 20..29 = lesion les_a."""
    grid = Grid((10, 40, 40), (2.0, 2.0, 2.0), (-40.0, -40.0, 0.0))
    ct = np.zeros(grid.shape_zyx, np.float32)
    ct[3:6, 10:20, 20:30] = 60.0
    pet_grid = Grid((5, 10, 10), (4.0, 4.0, 4.0), (-39.0, -39.0, 1.0))  # x, y -41 .. -1 mm
    pet = np.ones(pet_grid.shape_zyx, np.float32)
    crop = np.ones((3, 10, 10), bool)
    mask = LesionMask(XSS, MaskSource.SEG, grid, ((3, 6), (10, 20), (20, 30)), crop)
    vols = {"ct": Volume(ct, grid, "HU", "1.9.1"), "pet": Volume(pet, pet_grid, "SUVbw", "1.9.2")}
    target = tuple(grid.zyx_to_lps(np.array([[4.0, 15.0, 25.0]]))[0])
    entry = tuple(grid.zyx_to_lps(np.array([[4.0, 15.0, 39.0]]))[0])
    return write_image_cache(study_out, vols, {"les_a": mask},
                             needles=[NeedlePlan("les_a", target, entry)])


@pytest.fixture
def res(tmp_path):
    r = make_results(tmp_path / "res", n_patients=2, label_override={"les_b": XSS})
    _phantom_cache(r / "studies" / PID / SUID)
    (r / "secret.txt").parent.mkdir(exist_ok=True)
    (tmp_path / "outside.txt").write_text("outside RESULTS")
    return r


@pytest.fixture
def client(res):
    app = create_app(res, reader="dr <b>", token=TOKEN)
    app.testing = True
    return app.test_client()


def _auth(client):
    r = client.get(f"/?token={TOKEN}")
    assert r.status_code == 200
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    return r


def test_token_required(client):
    for path in ("/", f"/study/{PID}/{SUID}", f"/slice/{PID}/{SUID}/ct/4.png", "/files/cohort/studies.csv",
                 f"/api/study/{PID}/{SUID}/viewer.json", "/static/viewer.js"):
        assert client.get(path).status_code == 403, path
        assert client.get(path + ("&" if "?" in path else "?") + "token=wrong").status_code == 403
    assert client.get("/", headers={"X-Review-Token": TOKEN}).status_code == 200
    _auth(client)
    assert client.get(f"/study/{PID}/{SUID}").status_code == 200  # cookie now


def test_security_headers(client):
    r = _auth(client)
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    f = client.get("/files/cohort/studies.csv")
    assert f.headers["Content-Security-Policy"].startswith("sandbox allow-scripts;")
    assert "allow-same-origin" not in f.headers["Content-Security-Policy"]


def test_dotdot_is_404(client, res):
    _auth(client)
    assert client.get("/files/cohort/studies.csv").status_code == 200
    for path in ("/files/../outside.txt", "/files/%2e%2e/outside.txt", "/files/studies/../../outside.txt",
                 "/files/..%2foutside.txt", f"/study/{PID}/..", f"/study/../{SUID}",
                 f"/slice/{PID}/{SUID}/../4.png", f"/slice/{PID}/{SUID}/ct/999.png",
                 f"/study/{PID}/{SUID}%2f..%2f..", "/patient/..", "/files/review/audit.jsonl"):
        assert client.get(path).status_code == 404, path


def test_label_is_escaped(client):
    _auth(client)
    html = client.get(f"/study/{PID}/{SUID}").get_data(as_text=True)
    assert XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "dr &lt;b&gt;" in html and "dr <b>" not in html
    assert "<script>" not in html.replace('<script src="/static/viewer.js"></script>', "")


def _post(client, data, headers=None):
    return client.post(f"/study/{PID}/{SUID}/decision", data=data, headers=headers or {})


def test_csrf(client, res):
    _auth(client)  # the cookie alone must not be enough
    form = {"lesion_id": "les_a", "role": "monitor", "category": "T-NI", "reason": "r"}
    assert _post(client, form, ORIGIN).status_code == 403
    assert _post(client, {**form, "csrf_token": "nope"}, ORIGIN).status_code == 403
    assert _post(client, {**form, "csrf_token": TOKEN}, {"Origin": "http://evil.example"}).status_code == 403
    assert _post(client, {**form, "csrf_token": TOKEN}, {"Referer": "http://evil.example/x"}).status_code == 403
    assert _post(client, {**form, "csrf_token": TOKEN}).status_code == 403  # neither Origin nor Referer
    assert client.get(f"/study/{PID}/{SUID}/decision").status_code == 405
    assert not store.audit_path(res).exists()
    r = _post(client, {**form, "csrf_token": TOKEN}, ORIGIN)
    assert r.status_code == 303 and r.headers["Location"].endswith(f"/study/{PID}/{SUID}")
    r = _post(client, form, {**ORIGIN, "X-Review-Token": TOKEN, "Accept": "application/json"})
    assert r.status_code == 200 and r.get_json() == {"ok": True}
    rows = store.load_state(res).lesions
    assert rows[(PID, SUID, "les_a")].role is store.Role.MONITOR
    assert {e.reader for e in store.read_audit(res)} == {"dr <b>"}


def test_form_volume_ignored_unless_injected(client, res):
    _auth(client)
    # the form still carries the proposal's 2.0 mL when the reader switches to monitor
    r = _post(client, {"csrf_token": TOKEN, "lesion_id": "les_a", "role": "monitor", "category": "T-NI",
                       "planned_volume_ml": "2.0", "reason": "board"}, ORIGIN)
    assert r.status_code == 303
    d = store.load_state(res).lesions[(PID, SUID, "les_a")]
    assert (d.role, d.planned_volume_ml) == (store.Role.MONITOR, None)


def test_reason_error_shown(client, res):
    _auth(client)
    r = _post(client, {"csrf_token": TOKEN, "lesion_id": "les_a", "role": "none", "category": "NT-NI"}, ORIGIN)
    assert r.status_code == 400
    assert "no reason" in r.get_data(as_text=True)
    assert not store.audit_path(res).exists()


def test_signoff(client, res):
    _auth(client)
    r = client.post(f"/study/{PID}/{SUID}/signoff", data={"csrf_token": TOKEN}, headers=ORIGIN,
                    follow_redirects=True)
    assert r.status_code == 200 and "Signed off by dr &lt;b&gt;" in r.get_data(as_text=True)
    assert store.load_state(res).signoffs[(PID, SUID)].reader == "dr <b>"
    assert "dr &lt;b&gt;" in client.get("/").get_data(as_text=True)


def test_slices_windowed(client, res):
    _auth(client)
    png = client.get(f"/slice/{PID}/{SUID}/ct/4.png?window=soft").data
    a = np.asarray(Image.open(io.BytesIO(png)))
    assert a.shape == (40, 40) and a.dtype == np.uint8
    # soft tissue: centre 40, width 400 -> 0 HU = 102, 60 HU = 140 (+-1)
    assert abs(int(a[15, 25]) - 140) <= 1 and abs(int(a[0, 0]) - 102) <= 1
    a = np.asarray(Image.open(io.BytesIO(client.get(f"/slice/{PID}/{SUID}/ct/4.png?window=liver").data)))
    # liver: centre 60, width 150 -> 60 HU = 128, 0 HU = 26
    assert abs(int(a[15, 25]) - 128) <= 1 and abs(int(a[0, 0]) - 26) <= 1
    f = np.asarray(Image.open(io.BytesIO(client.get(f"/fusion/{PID}/{SUID}/ct/4.png").data)).convert("RGBA"))
    assert f.shape == (40, 40, 4)
    # PET 1 SUV inside its field of view (x, y < -1 mm), 0 outside; display 0..10 SUV on 'hot'
    assert tuple(f[5, 5]) == tuple(HOT[round(255 / 10)]) and f[5, 5, 3] > 0
    assert f[39, 39, 3] == 0  # outside the PET field of view: transparent
    assert client.get(f"/slice/{PID}/{SUID}/pet/2.png").status_code == 200
    assert client.get(f"/slice/{PID}/{SUID}/pet/5.png").status_code == 404
    # a study without a cache: page says so, image routes 404
    assert "no-cache" in client.get("/study/P002/1.2.3.2").get_data(as_text=True)
    assert client.get("/slice/P002/1.2.3.2/ct/0.png").status_code == 404


def test_cache_contours_and_needle(res):
    c = ImageCache(res / "studies" / PID / SUID / "review_cache")
    les = c.index["lesions"][0]
    assert les["slices"]["ct"] == [3, 5] and les["centre_slice"]["ct"] in (3, 4, 5)
    polys = c.contours()["ct"]["les_a"]
    assert set(polys) == {"3", "4", "5"}
    pts = np.array(polys["4"][0])
    # the 0.5 iso-line of a 10x10 block x 20..29, y 10..19 lies half a pixel outside its centres
    assert np.allclose([pts[:, 0].min(), pts[:, 0].max(), pts[:, 1].min(), pts[:, 1].max()],
                       [19.5, 29.5, 9.5, 19.5], atol=1e-6)
    n = c.index["needles"][0]
    assert np.allclose(n["target_zyx"]["ct"], [4, 15, 25]) and np.allclose(n["entry_zyx"]["ct"], [4, 15, 39])
    # PET (1 SUV everywhere inside its field) fused onto the CT grid
    fused = c.slice("ct", 4, fusion=True)
    assert abs(float(fused[5, 5]) - 1.0) < 1e-3 and float(fused[39, 39]) == 0.0
    assert np.allclose(c.slice("ct", 4)[15, 25], 60.0)
    data = json.loads(json.dumps(c.index))
    assert data["phases"]["pet"]["units"] == "SUVbw"


def _two_studies_one_patient(res):
    """Re-label the second synthetic study as a follow-up of P001 (with its own cache)."""
    import csv

    p = res / "cohort" / "studies.csv"
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[1]["patient_id"] = PID
    with open(p, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _phantom_cache(res / "studies" / rows[1]["patient_dir"] / rows[1]["study_dir"])
    return rows[1]["study_uid"]


def test_compare_page(client, res):
    follow = _two_studies_one_patient(res)
    _auth(client)
    page = client.get(f"/patient/{PID}").get_data(as_text=True)
    assert 'id="compare-form"' in page
    html = client.get(f"/compare/{PID}?a={SUID}&b={follow}").get_data(as_text=True)
    assert 'id="a-viewer"' in html and 'id="b-viewer"' in html
    assert f"/slice/{PID}/{SUID}/ROLE/0.png" in html and f"/slice/{PID}/{follow}/ROLE/0.png" in html
    assert client.get(f"/compare/{PID}?a={SUID}&b=9.9.9").status_code == 404
    assert client.get(f"/compare/P002?a={SUID}&b={follow}").status_code == 404


def test_two_servers_keep_separate_cookies(res):
    names = set()
    for tok in ("token-one", "token-two"):
        c = create_app(res, reader="r", token=tok).test_client()
        names.add(c.get(f"/?token={tok}").headers["Set-Cookie"].split("=", 1)[0])
    assert len(names) == 2 and all(n.startswith("hitit_review_") for n in names)


def _tracking(res, follow, rows):
    """followup_tracking.csv of the follow-up study: (track_id, study_uid, lesion_id, label, status)."""
    import csv

    p = store.study_dir(res, PID, follow) / "followup_tracking.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "track_id", "study_uid", "timepoint_index", "lesion_id", "lesion_label",
                    "itrecist_category", "status"])
        for tid, suid, lid, label, status in rows:
            w.writerow([PID, tid, suid, 0 if suid == SUID else 1, lid, label, "T-NI", status])
    return p


def test_compare_links_tracks(client, res):
    follow = _two_studies_one_patient(res)
    _auth(client)
    html = client.get(f"/compare/{PID}?a={SUID}&b={follow}").get_data(as_text=True)
    assert 'id="track"' not in html  # no tracking file: no track links
    _tracking(res, follow, [("T1", SUID, "les_a", XSS, "present"), ("T1", follow, "les_x", "flank", "present"),
                            ("T2", follow, "les_new", "new one", "new")])
    html = client.get(f"/compare/{PID}?a={SUID}&b={follow}").get_data(as_text=True)
    assert 'data-a="les_a" data-b="les_x"' in html
    assert 'data-a="" data-b="les_new"' in html and "(new, T-NI)" in html
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_rewritten_cache_is_served_fresh(client, res):
    """A study job re-run rewrites the cache: the running app serves the new images."""
    import time

    _auth(client)
    url = f"/slice/{PID}/{SUID}/ct/0.png?window=soft"
    assert abs(int(np.asarray(Image.open(io.BytesIO(client.get(url).data)))[0, 0]) - 102) <= 1  # 0 HU
    time.sleep(0.01)
    grid = Grid((10, 40, 40), (2.0, 2.0, 2.0), (-40.0, -40.0, 0.0))
    write_image_cache(res / "studies" / PID / SUID,
                      {"ct": Volume(np.full(grid.shape_zyx, 240.0, np.float32), grid, "HU", "1.9.1")}, {})
    assert int(np.asarray(Image.open(io.BytesIO(client.get(url).data)))[0, 0]) == 255  # 240 HU: top of soft
