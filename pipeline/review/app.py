"""The review web app (Flask): cohort -> patient -> study pages, image viewer, decision forms.

Security model (a local, single-team tool):

* bound to 127.0.0.1 by default (:func:`serve`);
* a random token (``secrets.token_urlsafe``) is part of the printed URL; every request needs it,
  as ``?token=`` (first visit; sets an HttpOnly, SameSite=Strict cookie named after the token,
  as cookies are shared by all ports of 127.0.0.1), the cookie, or the
  ``X-Review-Token`` header; anything else gets 403;
* state-changing requests are POST only and need the token in the form (``csrf_token``) or the
  header (a cookie alone is not enough) and an ``Origin`` (or, without it, ``Referer``) of this
  server: cross-site forms are refused with 403;
* studies are looked up in the study sheet (unknown -> 404); files are served only when their
  resolved path lies under RESULTS (``../`` -> 404);
* all user text goes through Jinja2 autoescaping; scripts and styles are static files, so the
  Content-Security-Policy allows no inline script.
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from flask import (Flask, Response, abort, g, jsonify, redirect, render_template, request, send_file,
                   url_for)
from jinja2 import DictLoader
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.review import store
from pipeline.review.cache import ImageCache, cache_dir, has_images
from pipeline.review.templates import CSS, TEMPLATES, VIEWER_JS

log = logging.getLogger(__name__)

COOKIE = "hitit_review"
HEADER = "X-Review-Token"
#: Window presets (centre HU, width HU).
WINDOWS = {"soft": (40.0, 400.0), "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0),
           "liver": (60.0, 150.0)}
#: Upper end of the PET display (SUV) when the PET is in SUV units.
PET_SUV_MAX = 10.0
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
FILES_CSP = ("sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline'; "
             "style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'")


def _hot_lut() -> np.ndarray:
    """(256, 4) uint8 RGBA 'hot' colour map, alpha rising with the value (0 transparent)."""
    t = np.linspace(0.0, 1.0, 256)
    r = np.clip(t * 3.0, 0, 1)
    gch = np.clip(t * 3.0 - 1.0, 0, 1)
    b = np.clip(t * 3.0 - 2.0, 0, 1)
    a = np.clip(t * 4.0, 0, 1)
    return (np.stack([r, gch, b, a], axis=1) * 255).round().astype(np.uint8)


HOT = _hot_lut()


def window_uint8(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Grey levels 0..255 of ``hu`` under a (centre, width) window (both HU)."""
    lo = centre - width / 2.0
    return (np.clip((hu - lo) * (255.0 / width), 0.0, 255.0) + 0.5).astype(np.uint8)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class _Caches:
    """Open :class:`ImageCache` objects by study folder (a small LRU); a cache rewritten since it
    was opened (a re-run study job: new ``index.json``) is opened again."""

    def __init__(self, n: int = 8) -> None:
        self.n = n
        self._d: OrderedDict[Path, tuple[int, ImageCache]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> ImageCache:
        try:
            stamp = (path / "index.json").stat().st_mtime_ns
        except OSError:
            stamp = -1
        with self._lock:
            hit = self._d.get(path)
            if hit is not None and hit[0] == stamp:
                self._d.move_to_end(path)
                return hit[1]
        c = ImageCache(path)
        with self._lock:
            self._d[path] = (stamp, c)
            while len(self._d) > self.n:
                self._d.popitem(last=False)
        return c


def create_app(results: str | Path, *, reader: str, token: str | None = None) -> Flask:
    """The review app over one results folder.

    Parameters
    ----------
    results : path
        Results folder of a ``hitit run``.
    reader : str
        Name recorded with every decision and sign-off made through this server.
    token : str, optional
        Access token (default: a fresh ``secrets.token_urlsafe(24)``); ``app.config["TOKEN"]``.
    """
    results = Path(results).resolve()
    app = Flask(__name__, static_folder=None)
    app.jinja_loader = DictLoader(TEMPLATES)
    app.config.update(RESULTS=results, READER=reader, TOKEN=token or secrets.token_urlsafe(24),
                      MAX_CONTENT_LENGTH=1 << 20)
    caches = _Caches()
    # cookies are not separated by port: one name per server, so two servers do not log each other out
    cookie = f"{COOKIE}_{hashlib.sha256(app.config['TOKEN'].encode()).hexdigest()[:10]}"

    # ------------------------------------------------------------------ access
    def _token_ok(value: str | None) -> bool:
        return bool(value) and secrets.compare_digest(str(value), app.config["TOKEN"])

    @app.before_request
    def _guard():
        q = request.args.get("token")
        g.set_cookie = _token_ok(q)
        if not (g.set_cookie or _token_ok(request.cookies.get(cookie))
                or _token_ok(request.headers.get(HEADER))):
            abort(403)
        if request.method not in ("GET", "HEAD"):
            if request.method != "POST":
                abort(405)
            if not (_token_ok(request.headers.get(HEADER)) or _token_ok(request.form.get("csrf_token"))):
                abort(403)
            src = request.headers.get("Origin") or request.headers.get("Referer")
            if not src:
                abort(403)
            s, h = urlsplit(src), urlsplit(request.host_url)
            if (s.scheme, s.netloc) != (h.scheme, h.netloc):
                abort(403)

    @app.after_request
    def _headers(resp: Response) -> Response:
        if getattr(g, "set_cookie", False):
            resp.set_cookie(cookie, app.config["TOKEN"], httponly=True, samesite="Strict", path="/")
        # result files (self-contained worksheets with inline script and data: images) run in a
        # sandbox: an opaque origin that cannot read the app's pages or send its cookie
        resp.headers["Content-Security-Policy"] = FILES_CSP if request.endpoint == "files" else CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make Chromium send "Origin: null"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.errorhandler(PipelineError)
    def _pipeline_error(e: PipelineError):
        return render_template("error.html", error=str(e)), 400

    # ------------------------------------------------------------------ lookups
    def _sheet() -> list[dict]:
        return store.read_study_sheet(results)

    def _study(pid: str, suid: str) -> tuple[dict, Path]:
        for r in _sheet():
            if r["patient_id"] == pid and r["study_uid"] == suid:
                d = (results / "studies" / r["patient_dir"] / r["study_dir"]).resolve()
                if not d.is_relative_to(results):
                    abort(404)
                return r, d
        abort(404)

    def _cache(pid: str, suid: str) -> ImageCache:
        _, d = _study(pid, suid)
        try:
            return caches.get(cache_dir(d))
        except PipelineError:
            abort(404)

    # ------------------------------------------------------------------ static
    @app.get("/static/review.css")
    def css():
        return Response(CSS, mimetype="text/css")

    @app.get("/static/viewer.js")
    def viewer_js():
        return Response(VIEWER_JS, mimetype="text/javascript")

    @app.get("/favicon.ico")
    def favicon():
        return Response(status=204)

    # ------------------------------------------------------------------ pages
    @app.get("/")
    def cohort():
        state = store.load_state(results)
        rows = []
        for r in _sheet():
            key = (r["patient_id"], r["study_uid"])
            n_dec = sum(1 for k in state.lesions if k[:2] == key)
            so = state.signoffs.get(key)
            rows.append({**r, "n_decided": n_dec, "signed_off_by": so.reader if so else ""})
        return render_template("cohort.html", rows=rows, reader=reader)

    @app.get("/patient/<pid>")
    def patient(pid: str):
        rows = sorted((r for r in _sheet() if r["patient_id"] == pid), key=lambda r: r.get("study_date", ""))
        if not rows:
            abort(404)
        return render_template("patient.html", pid=pid, rows=rows, reader=reader)

    def _study_page(pid: str, suid: str, error: str = "", status: int = 200):
        row, d = _study(pid, suid)
        props = store.study_proposals(results, pid, suid)
        state = store.load_state(results)
        lesions = []
        for lid, p in props.items():
            dec = state.lesions.get((pid, suid, lid))
            lesions.append({"p": p, "d": dec,
                            "role": (dec.role if dec and dec.role else p.role).value,
                            "category": (dec.category if dec and dec.category else p.category).value,
                            "volume": (dec.planned_volume_ml if dec else p.planned_volume_ml)})
        has_cache = has_images(d)
        return render_template(
            "study.html", row=row, pid=pid, suid=suid, lesions=lesions, reader=reader,
            signoff=state.signoffs.get((pid, suid)), token=app.config["TOKEN"], error=error,
            roles=[r.value for r in store.Role], categories=[c.value for c in store.Category],
            has_cache=has_cache, windows=list(WINDOWS), worksheet=(d / "worksheet.html").is_file(),
            worksheet_rel=str((d / "worksheet.html").relative_to(results))), status

    @app.get("/compare/<pid>")
    def compare(pid: str):
        a, da = _study(pid, request.args.get("a", ""))
        b, db = _study(pid, request.args.get("b", ""))
        from pipeline.review.tracks import track_links

        tracks = track_links((da, db), (a["study_uid"], b["study_uid"]))
        return render_template("compare.html", pid=pid, a=a, b=b, reader=reader, windows=list(WINDOWS),
                               has_a=has_images(da), has_b=has_images(db), tracks=tracks)

    @app.get("/study/<pid>/<suid>")
    def study(pid: str, suid: str):
        return _study_page(pid, suid)

    @app.post("/study/<pid>/<suid>/decision")
    def decision(pid: str, suid: str):
        _study(pid, suid)
        f = request.form
        # the form keeps the proposal's volume in its field; it means nothing unless injected
        vol = f.get("planned_volume_ml", "").strip() if f.get("role") in ("", None, "inject") else ""
        try:
            store.record_decision(results, reader=reader, patient_id=pid, study_uid=suid,
                                  lesion_id=f.get("lesion_id", ""), role=f.get("role") or None,
                                  category=f.get("category") or None,
                                  planned_volume_ml=float(vol) if vol else None,
                                  reason=f.get("reason", ""))
        except (PipelineError, ValueError) as e:
            if request.headers.get("Accept", "").startswith("application/json"):
                return jsonify(error=str(e)), 400
            return _study_page(pid, suid, error=str(e), status=400)
        if request.headers.get("Accept", "").startswith("application/json"):
            return jsonify(ok=True)
        return redirect(url_for("study", pid=pid, suid=suid), code=303)  # a reload does not re-post

    @app.post("/study/<pid>/<suid>/signoff")
    def signoff(pid: str, suid: str):
        _study(pid, suid)
        store.sign_off(results, reader=reader, patient_id=pid, study_uid=suid)
        if request.headers.get("Accept", "").startswith("application/json"):
            return jsonify(ok=True)
        return redirect(url_for("study", pid=pid, suid=suid), code=303)

    # ------------------------------------------------------------------ viewer data
    @app.get("/api/study/<pid>/<suid>/viewer.json")
    def viewer_json(pid: str, suid: str):
        c = _cache(pid, suid)
        return jsonify(index=c.index, contours=c.contours(), windows=WINDOWS)

    @app.get("/slice/<pid>/<suid>/<role>/<int:z>.png")
    def slice_png(pid: str, suid: str, role: str, z: int):
        c = _cache(pid, suid)
        meta = c.index["phases"].get(role)
        if meta is None or not 0 <= z < c.n_slices(role):
            abort(404)
        arr = c.slice(role, z)
        if meta["kind"] == "ct":
            centre, width = WINDOWS.get(request.args.get("window", "soft"), WINDOWS["soft"])
            img = Image.fromarray(window_uint8(arr, centre, width), mode="L")
        else:
            vmax = PET_SUV_MAX if meta["units"].upper().startswith("SU") else max(float(arr.max()), 1e-6)
            img = Image.fromarray(255 - window_uint8(arr, vmax / 2.0, vmax), mode="L")
        return Response(_png(img), mimetype="image/png", headers={"Cache-Control": "private, max-age=600"})

    @app.get("/fusion/<pid>/<suid>/<role>/<int:z>.png")
    def fusion_png(pid: str, suid: str, role: str, z: int):
        c = _cache(pid, suid)
        meta = c.index["fusion"].get(role)
        if meta is None or not 0 <= z < c.n_slices(role):
            abort(404)
        arr = c.slice(role, z, fusion=True)
        vmax = PET_SUV_MAX if meta["units"].upper().startswith("SU") else max(meta["max_value"], 1e-6)
        img = Image.fromarray(window_uint8(arr, vmax / 2.0, vmax), mode="P")  # palette PNG: 1 byte/pixel
        img.putpalette(HOT[:, :3].tobytes())
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1, transparency=HOT[:, 3].tobytes())
        return Response(buf.getvalue(), mimetype="image/png", headers={"Cache-Control": "private, max-age=600"})

    # ------------------------------------------------------------------ files under RESULTS
    @app.get("/files/<path:rel>")
    def files(rel: str):
        p = (results / rel).resolve()
        if not p.is_relative_to(results) or not p.is_file() or store.REVIEW_DIR == p.relative_to(results).parts[0]:
            abort(404)
        return send_file(p)

    return app


def serve(results: str | Path, *, reader: str, host: str = "127.0.0.1", port: int = 0,
          token: str | None = None):
    """A werkzeug server (threaded) for the app; returns ``(server, url)`` - call ``serve_forever``.

    ``port=0`` picks a free port. The URL carries the token.
    """
    from werkzeug.serving import make_server

    app = create_app(results, reader=reader, token=token)
    srv = make_server(host, port, app, threaded=True)
    shown = host if ":" not in host else f"[{host}]"
    url = f"http://{shown}:{srv.server_port}/?token={app.config['TOKEN']}"
    return srv, url
