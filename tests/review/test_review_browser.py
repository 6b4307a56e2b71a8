"""The review app in headless Chromium (the project's DevTools-pipe driver): a study opens, the
slices scroll, the lesion contour is drawn where the SEG mask is, a role changed with a reason
persists across a reload with its audit line, two browser contexts' concurrent edits both land,
and a segment label ``<script>alert(1)</script>`` shows as text."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from urllib.parse import quote

import numpy as np
import pytest
from chromium_cdp import Browser, Page
from PIL import Image
from scipy import ndimage

from pipeline.review import store
from pipeline.review.app import serve
from pipeline.review.cache import ImageCache, cache_dir, grid_from_dict

pytestmark = pytest.mark.slow
MAGENTA_TOL = 60


@pytest.fixture
def server(fresh_results):
    srv, url = serve(fresh_results, reader="dr browser")
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield fresh_results, url.split("/?token=")[0], url.split("?token=")[1]
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def browser(chromium):
    with Browser(chromium) as b:
        yield b


def open_url(b: Browser, url: str, context: str | None = None) -> Page:
    """Open ``url`` in a new tab (of browser context ``context`` when given), wait for load."""
    params = {"url": "about:blank"}
    if context:
        params["browserContextId"] = context
    target = b.call("Target.createTarget", params)["targetId"]
    sid = b.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Page", "Network"):
        b.call(f"{domain}.enable", session=sid)
    b.call("Emulation.setDeviceMetricsOverride", {"width": 1400, "height": 1000, "deviceScaleFactor": 1,
                                                  "mobile": False}, session=sid)
    page = Page(b, sid)
    navigate(page, url)
    return page


def navigate(page: Page, url: str | None = None) -> None:
    b, sid = page.b, page.session
    b.events = [e for e in b.events if not (e.get("sessionId") == sid and e["method"] == "Page.loadEventFired")]
    if url is None:
        b.call("Page.reload", {}, session=sid)
    else:
        b.call("Page.navigate", {"url": url}, session=sid)
    b.wait_event("Page.loadEventFired", session=sid, timeout_s=60)


def wait_for(page: Page, expr: str, timeout_s: float = 20.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        v = page.evaluate(expr)
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {expr}")


def wait_drawn(page: Page, prefix: str) -> None:
    wait_for(page, f"(document.getElementById('viewer').dataset.drawn || '').startsWith({json.dumps(prefix)})")


def canvas_rgb(page: Page) -> np.ndarray:
    data = page.evaluate("document.getElementById('view').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("RGB")).astype(int)


def truth_masks_on_ct(results, pid, suid):
    """Lesion masks read from the archive's SEG (independently of the cache) on the ct grid."""
    from pipeline.io import seg

    sheet = {(r["patient_id"], r["study_uid"]): r for r in store.read_study_sheet(results)}
    row = sheet[(pid, suid)]
    idx = json.loads((results / "index" / "index.json").read_text())
    import pandas as pd

    files = pd.read_csv(results / "index" / "files.csv", dtype=str, keep_default_na=False)
    seg_path = files.loc[files["series_uid"] == row["lesion_mask_ref"], "path"].iloc[0]
    c = ImageCache(cache_dir(store.study_dir(results, pid, suid)))
    grids = {c.index["phases"][r]["series_uid"]: grid_from_dict(c.index["phases"][r]) for r in ("ct", "ce_ct")}
    masks = seg.read_seg(f"{idx['root']}/{seg_path}", grids=grids)
    ct_grid = grids[row["ct_series_uid"]]
    union = np.zeros(ct_grid.shape_zyx, bool)
    for m in masks:
        if m.kind.value == "organ":
            continue
        assert m.grid.same_as(ct_grid)  # phantom: both phases on one grid
        union |= m.full()
    return union


def study_url(base, token, pid, suid):
    return f"{base}/study/{quote(pid)}/{quote(suid)}?token={token}"


def test_viewer_contours_scroll_and_decisions(server, browser):
    results, base, token = server
    sheet = store.read_study_sheet(results)
    pid, suid = sheet[0]["patient_id"], sheet[0]["study_uid"]
    page = open_url(browser, study_url(base, token, pid, suid))
    assert page.evaluate("document.readyState") == "complete"
    wait_drawn(page, "ct:")
    assert not page.console_errors(), page.console_errors()

    # jump to a lesion, then check the contour pixels against the SEG mask of that slice
    cache = ImageCache(cache_dir(store.study_dir(results, pid, suid)))
    les = next(x for x in cache.index["lesions"] if x["lesion_id"] == "soft_tissue_flank")
    z = les["centre_slice"]["ct"]
    page.select("#jump", "soft_tissue_flank")
    wait_drawn(page, f"ct:{z}:")
    img = canvas_rgb(page)
    ny, nx = cache.index["phases"]["ct"]["shape_zyx"][1:]
    k = img.shape[1] // nx
    assert img.shape[:2] == (ny * k, nx * k) and k >= 2
    magenta = (img[..., 0] > 255 - MAGENTA_TOL) & (img[..., 1] < MAGENTA_TOL) & (img[..., 2] > 255 - MAGENTA_TOL)
    assert magenta.sum() > 20
    truth = truth_masks_on_ct(results, pid, suid)
    mask = truth[z]
    edge = mask ^ ndimage.binary_erosion(mask)
    # distance (voxels) of each canvas pixel centre to the nearest voxel edge of the mask
    up = np.kron(edge, np.ones((k, k), bool))
    dist_px = ndimage.distance_transform_edt(~up)
    assert np.percentile(dist_px[magenta], 95) <= 1.0 * k + 1, "contour pixels away from the mask edge"
    # and the mask edge is traced: most edge voxels have a contour pixel within one voxel
    near = ndimage.binary_dilation(magenta, iterations=k + 1)
    ey, ex = np.nonzero(edge)
    hit = near[ey * k + k // 2, ex * k + k // 2]
    assert hit.mean() > 0.9, hit.mean()
    # no contour on a slice without a lesion
    empty = [zz for zz in range(cache.n_slices("ct")) if not truth[zz].any()]
    page.evaluate(f"(() => {{ const s = document.getElementById('slice'); s.value = '{empty[0]}';"
                  " s.dispatchEvent(new Event('input')); })()")
    wait_drawn(page, f"ct:{empty[0]}:")
    img0 = canvas_rgb(page)
    assert not ((img0[..., 0] > 200) & (img0[..., 1] < 60) & (img0[..., 2] > 200)).any()

    # scroll with the mouse wheel: one notch = one slice, timed
    page.select("#jump", "soft_tissue_flank")
    wait_drawn(page, f"ct:{z}:")
    box = page.evaluate("(() => { const r = document.getElementById('view').getBoundingClientRect();"
                        " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    for step in (1, 2, 3):
        t0 = time.perf_counter()
        browser.call("Input.dispatchMouseEvent", {"type": "mouseWheel", "x": box[0], "y": box[1],
                                                  "deltaX": 0, "deltaY": 100}, session=page.session)
        wait_drawn(page, f"ct:{z + step}:")
        assert time.perf_counter() - t0 < 2.0
    assert page.evaluate("document.getElementById('slice-label').textContent").startswith(f"{z + 4} /")
    # window preset and phase change redraw
    page.select("#window", "lung")
    wait_drawn(page, f"ct:{z + 3}:lung")
    page.select("#phase", "ce_ct")
    wait_drawn(page, f"ce_ct:{z + 3}:lung")

    # change a role with a reason; reload; persisted; audit line
    row = "tr[data-lesion='liver_deep'] form"
    page.select(f"{row} select[name=role]", "none")
    page.select(f"{row} select[name=category]", "NT-NI")
    page.type_text(f"{row} input[name=reason]", "vessel too close on the planning CT")
    page.click(f"{row} button[type=submit]")
    page.b.wait_event("Page.loadEventFired", session=page.session, timeout_s=30)
    navigate(page)
    assert page.evaluate(f"document.querySelector(\"{row} select[name=role]\").value") == "none"
    assert "vessel too close" in page.evaluate(f"document.querySelector(\"{row} .decided\").textContent")
    audit = [json.loads(x) for x in store.audit_path(results).read_text().splitlines()]
    roles = [a for a in audit if a["lesion_id"] == "liver_deep" and a["field"] == "role"]
    assert [(a["old"], a["new"], a["reader"], a["reason"]) for a in roles] == [
        ("", "none", "dr browser", "vessel too close on the planning CT")]
    assert not page.console_errors(), page.console_errors()


def test_two_contexts_concurrent_edits(server, browser):
    results, base, token = server
    s = store.read_study_sheet(results)[1]
    url = study_url(base, token, s["patient_id"], s["study_uid"])
    pages = []
    for _ in range(2):
        ctx = browser.call("Target.createBrowserContext", {})["browserContextId"]
        pages.append(open_url(browser, url, context=ctx))
    edits = [("lung_subpleural", "none", "NT-NI", "context A: pneumothorax risk"),
             ("necrotic_mass", "inject", "T-I", "context B: board insists")]
    for page, (lid, role, cat, reason) in zip(pages, edits, strict=True):
        row = f"tr[data-lesion='{lid}'] form"
        page.select(f"{row} select[name=role]", role)
        page.select(f"{row} select[name=category]", cat)
        page.evaluate(f"document.querySelector(\"{row} input[name=reason]\").value = {json.dumps(reason)}")
        if role == "inject":
            page.evaluate(f"document.querySelector(\"{row} input[name=planned_volume_ml]\").value = '2'")
    for page, (lid, *_rest) in zip(pages, edits, strict=True):  # submit both before waiting for either
        page.b._send("Runtime.evaluate", {"expression": f"document.querySelector(\"tr[data-lesion='{lid}'] form\")"
                                          ".requestSubmit()"}, session=page.session)
    for page in pages:
        page.b.wait_event("Page.loadEventFired", session=page.session, timeout_s=30)
    state = store.load_state(results)
    for lid, role, cat, reason in edits:
        d = state.lesions[(s["patient_id"], s["study_uid"], lid)]
        assert (d.role.value, d.category.value, d.reason) == (role, cat, reason)
    csv_text = store.decisions_path(results).read_text()
    assert "lung_subpleural" in csv_text and "necrotic_mass" in csv_text
    for page in pages:
        navigate(page)
    for page, (lid, role, *_r) in zip(pages, edits, strict=True):
        other = edits[1][0] if lid == edits[0][0] else edits[0][0]
        want = edits[1][1] if lid == edits[0][0] else edits[0][1]
        assert page.evaluate(f"document.querySelector(\"tr[data-lesion='{other}'] select[name=role]\").value") == want


def test_script_label_shows_as_text(tmp_path, browser):
    from synthetic import make_results
    from test_app import XSS, _phantom_cache

    res = make_results(tmp_path / "res", n_patients=1, label_override={"les_b": XSS})
    _phantom_cache(res / "studies" / "P001" / "1.2.3.1")
    srv, url = serve(res, reader="dr x")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base, token = url.split("/?token=")
        page = open_url(browser, study_url(base, token, "P001", "1.2.3.1"))
        wait_drawn(page, "ct:")
        text = page.evaluate("document.querySelector(\"tr[data-lesion='les_b'] td.label\").textContent")
        assert XSS in text
        assert page.evaluate("document.querySelectorAll('script').length") == 1
        assert not any(e["method"] == "Page.javascriptDialogOpening" for e in browser.events)
        # the jump list shows the mask label <script>... as text too
        opts = page.evaluate("Array.from(document.querySelectorAll('#jump option')).map(o => o.textContent)")
        assert XSS in opts
        # a request without the token: 403 (fresh context: no cookie)
        ctx = browser.call("Target.createBrowserContext", {})["browserContextId"]
        p2 = open_url(browser, f"{base}/study/P001/1.2.3.1", context=ctx)
        assert "403" in p2.evaluate("document.title + document.body.textContent")
    finally:
        srv.shutdown()
        srv.server_close()


def test_side_by_side(tmp_path, browser):
    from synthetic import make_results
    from test_app import _phantom_cache, _two_studies_one_patient

    res = make_results(tmp_path / "res", n_patients=2)
    _phantom_cache(res / "studies" / "P001" / "1.2.3.1")
    follow = _two_studies_one_patient(res)
    srv, url = serve(res, reader="dr x")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base, token = url.split("/?token=")
        page = open_url(browser, f"{base}/compare/P001?a=1.2.3.1&b={follow}&token={token}")
        for side in ("a", "b"):
            wait_for(page, f"(document.getElementById('{side}-viewer').dataset.drawn || '').startsWith('ct:')")
        za = page.evaluate("document.getElementById('a-viewer').dataset.drawn")
        zb = page.evaluate("document.getElementById('b-viewer').dataset.drawn")
        assert za.split(":")[1] == zb.split(":")[1] == "3"  # both open on the lesion (first slice of the cube)
        box = page.evaluate("(() => { const e = document.getElementById('b-view'); e.scrollIntoView({block: 'center'});"
                            " const r = e.getBoundingClientRect();"
                            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        browser.call("Input.dispatchMouseEvent", {"type": "mouseWheel", "x": box[0], "y": box[1],
                                                  "deltaX": 0, "deltaY": 100}, session=page.session)
        wait_for(page, "document.getElementById('b-viewer').dataset.drawn.startsWith('ct:4:')")
        assert page.evaluate("document.getElementById('a-viewer').dataset.drawn") == za  # only b scrolled
        assert not page.console_errors(), page.console_errors()
    finally:
        srv.shutdown()
        srv.server_close()


def _two_lesion_cache(study_out, lesions):
    """CT 12x40x40 (2 mm, 0 HU) with 60 HU cubes; ``lesions``: lesion_id -> first slice (3 slices)."""
    from pipeline.geometry import Grid
    from pipeline.records import LesionMask, MaskSource, Volume
    from pipeline.review.cache import write_image_cache

    grid = Grid((12, 40, 40), (2.0, 2.0, 2.0), (-40.0, -40.0, 0.0))
    ct = np.zeros(grid.shape_zyx, np.float32)
    masks = {}
    for k, (lid, z0) in enumerate(sorted(lesions.items())):
        y0 = 5 + 15 * k
        ct[z0:z0 + 3, y0:y0 + 10, 20:30] = 60.0
        masks[lid] = LesionMask(lid, MaskSource.SEG, grid, ((z0, z0 + 3), (y0, y0 + 10), (20, 30)),
                                np.ones((3, 10, 10), bool))
    return write_image_cache(study_out, {"ct": Volume(ct, grid, "HU", "1.9.1")}, masks)


def test_side_by_side_follows_a_track(tmp_path, browser):
    """With followup_tracking.csv, choosing a track moves both viewers to that lesion's slices,
    though the lesion has another id and slice at each timepoint."""
    from synthetic import make_results
    from test_app import _tracking, _two_studies_one_patient

    res = make_results(tmp_path / "res", n_patients=2)
    follow = _two_studies_one_patient(res)
    _two_lesion_cache(res / "studies" / "P001" / "1.2.3.1", {"les_a": 1, "les_b": 7})
    _two_lesion_cache(store.study_dir(res, "P001", follow), {"m1": 2, "m2": 8})
    _tracking(res, follow, [("T1", "1.2.3.1", "les_a", "a", "present"), ("T1", follow, "m2", "a", "present"),
                            ("T2", "1.2.3.1", "les_b", "b", "present"), ("T2", follow, "m1", "b", "present")])
    srv, url = serve(res, reader="dr x")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base, token = url.split("/?token=")
        page = open_url(browser, f"{base}/compare/P001?a=1.2.3.1&b={follow}&token={token}")
        for side in ("a", "b"):
            wait_for(page, f"(document.getElementById('{side}-viewer').dataset.drawn || '').startsWith('ct:')")
            wait_for(page, f"document.getElementById('{side}-jump').options.length === 3")
        for track, za, zb in (("T1", 1, 8), ("T2", 7, 2)):  # centre (first fullest) slices: les_a/m2, les_b/m1
            page.evaluate(f"(() => {{ const s = document.getElementById('track'); s.value = '{track}';"
                          " s.dispatchEvent(new Event('change')); })()")
            wait_for(page, f"document.getElementById('a-viewer').dataset.drawn.startsWith('ct:{za}:')")
            wait_for(page, f"document.getElementById('b-viewer').dataset.drawn.startsWith('ct:{zb}:')")
        assert not page.console_errors(), page.console_errors()
    finally:
        srv.shutdown()
        srv.server_close()
