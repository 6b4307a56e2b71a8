"""Templates (Jinja2, autoescaped), CSS and the viewer script of the review app.

Kept in Python so that they ship with the package. No inline script or style: the pages load
``/static/review.css`` and ``/static/viewer.js`` (the Content-Security-Policy forbids inline code).
"""

from __future__ import annotations

CSS = r"""
:root { --ink:#1b1b1b; --muted:#5a5a5a; --line:#d0d0d0; --soft:#f4f4f4;
  --inject:#D55E00; --monitor:#0072B2; --none:#999999; }
* { box-sizing: border-box; }
body { font-family: system-ui, "DejaVu Sans", Arial, sans-serif; color: var(--ink); margin: 0;
  padding: 0 1.2rem 2rem; font-size: 14px; line-height: 1.4; }
header.page { border-bottom: 3px solid var(--ink); margin-bottom: 1rem; padding: .6rem 0 .3rem; }
header.page h1 { margin: 0; font-size: 1.4rem; }
nav.crumbs { color: var(--muted); }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { border: 1px solid var(--line); padding: .25rem .45rem; text-align: left; vertical-align: top; }
th { background: var(--soft); }
.error { background: #fde8e0; border: 1px solid var(--inject); padding: .5rem; margin: .5rem 0; }
.ok { color: #006b4f; font-weight: 600; }
.role-inject { color: var(--inject); font-weight: 600; }
.role-monitor { color: var(--monitor); font-weight: 600; }
.viewer { display: flex; gap: 1rem; flex-wrap: wrap; align-items: flex-start; }
.controls label { display: block; margin: .3rem 0; }
.compare { display: flex; gap: 1.5rem; flex-wrap: wrap; }
.compare .viewer { flex-direction: column; }
canvas#view { background: #000; image-rendering: pixelated; border: 1px solid var(--line); }
form.decision input[type=text] { width: 14rem; }
form.decision input[type=number] { width: 5rem; }
.small { font-size: .85rem; color: var(--muted); }
"""

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{% block title %}HIT-IT review{% endblock %}</title>
<link rel="stylesheet" href="/static/review.css"></head>
<body><header class="page"><h1>{% block h1 %}HIT-IT review{% endblock %}</h1>
<nav class="crumbs">{% block crumbs %}{% endblock %} &middot; reader: <b>{{ reader }}</b></nav></header>
{% block body %}{% endblock %}
<p class="small">Research software; decisions are recorded in RESULTS/review/ (audit log kept).</p>
</body></html>"""

_COHORT = """{% extends "base.html" %}
{% block crumbs %}Cohort{% endblock %}
{% block body %}
<table id="studies"><thead><tr><th>Patient</th><th>Study date</th><th>Study UID</th>
<th>Lesions decided</th><th>Signed off by</th></tr></thead><tbody>
{% for r in rows %}<tr>
<td><a href="{{ url_for('patient', pid=r.patient_id) }}">{{ r.patient_id }}</a></td>
<td>{{ r.study_date }}</td>
<td><a href="{{ url_for('study', pid=r.patient_id, suid=r.study_uid) }}">{{ r.study_uid }}</a></td>
<td>{{ r.n_decided }}</td><td>{{ r.signed_off_by }}</td></tr>
{% endfor %}</tbody></table>
{% endblock %}"""

_PATIENT = """{% extends "base.html" %}
{% block title %}{{ pid }} - HIT-IT review{% endblock %}
{% block h1 %}Patient {{ pid }}{% endblock %}
{% block crumbs %}<a href="{{ url_for('cohort') }}">Cohort</a> &rsaquo; {{ pid }}{% endblock %}
{% block body %}
<table><thead><tr><th>Study date</th><th>Study UID</th><th>Notes</th></tr></thead><tbody>
{% for r in rows %}<tr><td>{{ r.study_date }}</td>
<td><a href="{{ url_for('study', pid=pid, suid=r.study_uid) }}">{{ r.study_uid }}</a></td>
<td class="small">{{ r.notes }}</td></tr>{% endfor %}
</tbody></table>
{% if rows|length > 1 %}
<form method="get" action="{{ url_for('compare', pid=pid) }}" id="compare-form">
Side by side: <select name="a">{% for r in rows %}<option value="{{ r.study_uid }}"{% if loop.first %} selected{% endif %}>{{ r.study_date }}</option>{% endfor %}</select>
and <select name="b">{% for r in rows %}<option value="{{ r.study_uid }}"{% if loop.last %} selected{% endif %}>{{ r.study_date }}</option>{% endfor %}</select>
<button type="submit">Compare</button></form>
{% endif %}
{% endblock %}"""

_VIEWER = """{% macro viewer(pid, suid, idp, windows) -%}
<div class="viewer" id="{{ idp }}viewer" data-api="{{ url_for('viewer_json', pid=pid, suid=suid) }}"
 data-slice-base="{{ url_for('slice_png', pid=pid, suid=suid, role='ROLE', z=0) }}"
 data-fusion-base="{{ url_for('fusion_png', pid=pid, suid=suid, role='ROLE', z=0) }}">
<canvas class="view" id="{{ idp }}view" width="512" height="512"></canvas>
<div class="controls">
<label>Series <select class="phase" id="{{ idp }}phase"></select></label>
<label>Window <select class="window" id="{{ idp }}window">{% for w in windows %}<option value="{{ w }}">{{ w }}</option>{% endfor %}</select></label>
<label>Slice <input type="range" class="slice" id="{{ idp }}slice" min="0" max="0" value="0"> <span class="slice-label" id="{{ idp }}slice-label"></span></label>
<label>PET opacity <input type="range" class="opacity" id="{{ idp }}opacity" min="0" max="100" value="40"></label>
<label><input type="checkbox" class="show-contours" id="{{ idp }}show-contours" checked> lesion contours</label>
<label><input type="checkbox" class="show-needle" id="{{ idp }}show-needle" checked> needle path and entry</label>
<label>Jump to lesion <select class="jump" id="{{ idp }}jump"><option value="">-</option></select></label>
<p class="small">Mouse wheel or arrow keys scroll slices. Magenta: lesion contours; cyan: planned
needle (square: skin entry, circle: target).</p>
</div></div>
{%- endmacro %}"""

_STUDY = """{% extends "base.html" %}
{% from "viewer.html" import viewer %}
{% block title %}{{ pid }} {{ row.study_date }} - HIT-IT review{% endblock %}
{% block h1 %}Patient {{ pid }}, study {{ row.study_date }}{% endblock %}
{% block crumbs %}<a href="{{ url_for('cohort') }}">Cohort</a> &rsaquo;
<a href="{{ url_for('patient', pid=pid) }}">{{ pid }}</a> &rsaquo; {{ suid }}{% endblock %}
{% block body %}
{% if error %}<div class="error" id="error">{{ error }}</div>{% endif %}
<section id="signoff">
{% if signoff %}<p class="ok" id="signed">Signed off by {{ signoff.reader }} at {{ signoff.signed_off_utc }}</p>{% endif %}
<form method="post" action="{{ url_for('signoff', pid=pid, suid=suid) }}">
<input type="hidden" name="csrf_token" value="{{ token }}">
<button type="submit" id="signoff-button">Sign off as {{ reader }}</button>
<span class="small">(lesions without a decision take the tool's proposal)</span></form>
{% if worksheet %}<p><a href="/files/{{ worksheet_rel }}">Worksheet of this study</a></p>{% endif %}
</section>
<h2>Images</h2>
{% if has_cache %}
{{ viewer(pid, suid, '', windows) }}
{% else %}
<p id="no-cache">No image cache for this study (the study job writes it; older results:
<code>hitit review RESULTS --backfill-cache</code>).</p>
{% endif %}
<h2>Tool proposal and team decision</h2>
<table id="lesions"><thead><tr><th>Lesion</th><th>Tool: role / tier / rank</th><th>Tool: plan</th>
<th>Reasons</th><th>Team decision</th></tr></thead><tbody>
{% for l in lesions %}<tr data-lesion="{{ l.p.lesion_id }}">
<td class="label">{{ l.p.lesion_label }}<br><span class="small">{{ l.p.lesion_id }}</span></td>
<td><span class="role-{{ l.p.role.value }}">{{ l.p.role.value }}</span> ({{ l.p.category.value }}) /
 {{ l.p.tier }} / {{ l.p.rank }}</td>
<td>{% if l.p.planned_volume_ml %}{{ '%.1f' % l.p.planned_volume_ml }} mL{% endif %}</td>
<td class="small">{{ l.p.reasons }}<br>{{ l.p.explanation }}</td>
<td><form class="decision" method="post" action="{{ url_for('decision', pid=pid, suid=suid) }}">
<input type="hidden" name="csrf_token" value="{{ token }}">
<input type="hidden" name="lesion_id" value="{{ l.p.lesion_id }}">
<select name="role">{% for r in roles %}<option value="{{ r }}"{% if r == l.role %} selected{% endif %}>{{ r }}</option>{% endfor %}</select>
<select name="category">{% for c in categories %}<option value="{{ c }}"{% if c == l.category %} selected{% endif %}>{{ c }}</option>{% endfor %}</select>
<input type="number" name="planned_volume_ml" step="0.1" min="0" placeholder="mL"
 value="{% if l.volume %}{{ l.volume }}{% endif %}">
<input type="text" name="reason" placeholder="reason (required if not as proposed)" value="">
<button type="submit">Save</button>
{% if l.d %}<div class="small decided">decided: {{ l.d.role.value if l.d.role else '' }}
 {{ l.d.category.value if l.d.category else '' }} by {{ l.d.reader }} ({{ l.d.reason }})</div>{% endif %}
</form></td></tr>{% endfor %}
</tbody></table>
<script src="/static/viewer.js"></script>
{% endblock %}"""

_ERROR = """{% extends "base.html" %}
{% block crumbs %}<a href="/">Cohort</a>{% endblock %}
{% block body %}<div class="error">{{ error }}</div>{% endblock %}"""

_COMPARE = """{% extends "base.html" %}
{% from "viewer.html" import viewer %}
{% block title %}{{ pid }} side by side - HIT-IT review{% endblock %}
{% block h1 %}Patient {{ pid }}: {{ a.study_date }} and {{ b.study_date }} side by side{% endblock %}
{% block crumbs %}<a href="{{ url_for('cohort') }}">Cohort</a> &rsaquo;
<a href="{{ url_for('patient', pid=pid) }}">{{ pid }}</a> &rsaquo; side by side{% endblock %}
{% block body %}
{% if tracks %}<section id="tracks">
<label>Same lesion at both timepoints <select id="track"><option value="">-</option>
{% for t in tracks %}<option value="{{ t.track_id }}" data-a="{{ t.lesion_a }}" data-b="{{ t.lesion_b }}">{{ t.track_id }}: {{ t.label_a or '(none)' }} &harr; {{ t.label_b or '(none)' }}{% if t.status_b %} ({{ t.status_b }}{% if t.category %}, {{ t.category }}{% endif %}){% endif %}</option>{% endfor %}
</select></label>
<span class="small">(follow-up tracks: both viewers jump to the track's lesion)</span>
</section>{% endif %}
<div class="compare">
{% for s, idp, has in ((a, 'a-', has_a), (b, 'b-', has_b)) %}<section class="side">
<h2><a href="{{ url_for('study', pid=pid, suid=s.study_uid) }}">{{ s.study_date }}</a></h2>
{% if has %}{{ viewer(pid, s.study_uid, idp, windows) }}{% else %}<p class="no-cache">No image cache for this study.</p>{% endif %}
</section>{% endfor %}
</div>
<script src="/static/viewer.js"></script>
{% endblock %}"""

TEMPLATES = {"base.html": _BASE, "viewer.html": _VIEWER, "compare.html": _COMPARE, "cohort.html": _COHORT, "patient.html": _PATIENT,
             "study.html": _STUDY, "error.html": _ERROR}

VIEWER_JS = r"""
"use strict";
let activeViewer = null;
function initViewer(v) {
  const el = (name) => v.querySelector("." + name);
  const canvas = el("view");
  const ctx = canvas.getContext("2d");
  let data = null, role = null, z = 0, k = 1, seq = 0;
  const url = (base, r, zz) => base.replace("/ROLE/", "/" + encodeURIComponent(r) + "/").replace(/\/0\.png$/, "/" + zz + ".png");
  const load = (src) => new Promise((res, rej) => { const i = new Image(); i.onload = () => res(i); i.onerror = () => rej(new Error("image " + src)); i.src = src; });
  function meta() { return data.index.phases[role]; }
  function setRole(r) {
    role = r;
    const m = meta();
    const [nz, ny, nx] = m.shape_zyx;
    k = Math.max(1, Math.floor(512 / Math.max(nx, ny)));
    canvas.width = nx * k; canvas.height = ny * k;
    el("slice").max = String(nz - 1);
    if (z > nz - 1) z = nz - 1;
    el("window").disabled = m.kind !== "ct";
    el("phase").value = r;
  }
  function drawOverlays() {
    if (meta().kind !== "ct") return;
    if (el("show-contours").checked) {
      ctx.strokeStyle = "rgb(255,0,255)"; ctx.lineWidth = 2;
      const byLesion = data.contours[role] || {};
      for (const lid of Object.keys(byLesion)) {
        for (const poly of (byLesion[lid][String(z)] || [])) {
          ctx.beginPath();
          poly.forEach(([x, y], i) => { const px = (x + 0.5) * k, py = (y + 0.5) * k; if (i) ctx.lineTo(px, py); else ctx.moveTo(px, py); });
          ctx.closePath(); ctx.stroke();
        }
      }
    }
    if (el("show-needle").checked) {
      ctx.strokeStyle = "rgb(0,255,255)"; ctx.fillStyle = "rgb(0,255,255)"; ctx.lineWidth = 2;
      for (const n of data.index.needles) {
        const t = n.target_zyx[role], e = n.entry_zyx[role];
        if (!t) continue;
        const zt = Math.round(t[0]);
        const ze = e ? Math.round(e[0]) : zt;
        if (z < Math.min(zt, ze) || z > Math.max(zt, ze)) continue;
        const tx = (t[2] + 0.5) * k, ty = (t[1] + 0.5) * k;
        if (e) {
          const ex = (e[2] + 0.5) * k, ey = (e[1] + 0.5) * k;
          ctx.setLineDash(z === zt ? [] : [4, 4]);
          ctx.beginPath(); ctx.moveTo(ex, ey); ctx.lineTo(tx, ty); ctx.stroke(); ctx.setLineDash([]);
          if (z === ze) ctx.fillRect(ex - 4, ey - 4, 8, 8);
        }
        if (z === zt) { ctx.beginPath(); ctx.arc(tx, ty, 5, 0, 2 * Math.PI); ctx.stroke(); }
      }
    }
  }
  async function draw() {
    const my = ++seq, r = role, zz = z;
    el("slice").value = String(z);
    el("slice-label").textContent = (z + 1) + " / " + meta().shape_zyx[0];
    const op = Number(el("opacity").value) / 100;
    const wantFusion = meta().kind === "ct" && data.index.fusion[r] && op > 0;
    try {
      const [base, fus] = await Promise.all([
        load(url(v.dataset.sliceBase, r, zz) + "?window=" + encodeURIComponent(el("window").value)),
        wantFusion ? load(url(v.dataset.fusionBase, r, zz)) : Promise.resolve(null)]);
      if (my !== seq) return;
      ctx.imageSmoothingEnabled = false;
      ctx.globalAlpha = 1;
      ctx.drawImage(base, 0, 0, canvas.width, canvas.height);
      if (fus) { ctx.globalAlpha = op; ctx.drawImage(fus, 0, 0, canvas.width, canvas.height); ctx.globalAlpha = 1; }
      drawOverlays();
      v.dataset.drawn = r + ":" + zz + ":" + el("window").value + ":" + op;
    } catch (err) { console.error(String(err)); }
  }
  function step(d) { const nz = meta().shape_zyx[0]; z = Math.min(nz - 1, Math.max(0, z + d)); draw(); }
  async function init() {
    const resp = await fetch(v.dataset.api, { credentials: "same-origin" });
    data = await resp.json();
    const roles = Object.keys(data.index.phases);
    for (const r of roles) { const o = document.createElement("option"); o.value = r; o.textContent = r + " (" + data.index.phases[r].units + ")"; el("phase").appendChild(o); }
    for (const l of data.index.lesions) { const o = document.createElement("option"); o.value = l.lesion_id; o.textContent = l.label; el("jump").appendChild(o); }
    const cts = roles.filter((r) => data.index.phases[r].kind === "ct");
    setRole(cts.includes("ct") ? "ct" : roles[0]);
    const first = data.index.lesions.find((l) => l.centre_slice[role] !== undefined);
    z = first ? first.centre_slice[role] : Math.floor(meta().shape_zyx[0] / 2);
    el("phase").addEventListener("change", () => { setRole(el("phase").value); draw(); });
    el("window").addEventListener("change", draw);
    el("opacity").addEventListener("input", draw);
    el("show-contours").addEventListener("change", draw);
    el("show-needle").addEventListener("change", draw);
    el("slice").addEventListener("input", () => { z = Number(el("slice").value); draw(); });
    el("jump").addEventListener("change", () => {
      const l = data.index.lesions.find((x) => x.lesion_id === el("jump").value);
      if (!l) return;
      if (l.centre_slice[role] === undefined) { const r = Object.keys(l.centre_slice)[0]; if (!r) return; setRole(r); }
      z = l.centre_slice[role]; draw();
    });
    canvas.addEventListener("wheel", (ev) => { ev.preventDefault(); step(ev.deltaY > 0 ? 1 : -1); }, { passive: false });
    v.addEventListener("mouseenter", () => { activeViewer = v; });
    v.step = step;
    if (!activeViewer) activeViewer = v;
    draw();
  }
  init().catch((err) => console.error(String(err)));
}
document.addEventListener("keydown", (ev) => {
  if (!activeViewer || !activeViewer.step) return;
  if (ev.target && ["INPUT", "SELECT", "TEXTAREA"].includes(ev.target.tagName) && !ev.target.classList.contains("slice")) return;
  if (ev.key === "ArrowUp") { ev.preventDefault(); activeViewer.step(1); }
  if (ev.key === "ArrowDown") { ev.preventDefault(); activeViewer.step(-1); }
});
document.querySelectorAll(".viewer").forEach(initViewer);
const trackSelect = document.getElementById("track");
if (trackSelect) trackSelect.addEventListener("change", () => {
  const o = trackSelect.selectedOptions[0];
  if (!o) return;
  for (const [p, lid] of [["a-", o.dataset.a], ["b-", o.dataset.b]]) {
    const j = document.getElementById(p + "jump");
    if (j && lid && [...j.options].some((x) => x.value === lid)) { j.value = lid; j.dispatchEvent(new Event("change")); }
  }
});
"""
