"""HTML templates, CSS and the table script of the review pages (kept in Python so that they
ship with the package without package-data configuration).

The pages are self-contained: CSS and JavaScript inline, images as ``data:`` URLs, no external
request of any kind (no CDN, no web font). The table script is plain ES2015 without libraries:
click (or Enter on) a header to sort, a text box and selects to filter; rows carry ``data-role``
and ``data-tier`` attributes for the selects.
"""

from __future__ import annotations

from functools import lru_cache

CSS = r"""
:root { --ink:#1b1b1b; --muted:#5a5a5a; --line:#d0d0d0; --bg:#ffffff; --soft:#f4f4f4;
  --inject:#D55E00; --monitor:#0072B2; --none:#999999; --recommended:#009E73;
  --acceptable:#56B4E9; --board_review:#E69F00; --not_suitable:#CC79A7; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
  color: var(--ink); background: var(--bg); margin: 0; padding: 0 1.2rem 2rem; line-height: 1.4;
  font-size: 14px; }
header.page { border-bottom: 3px solid var(--ink); margin-bottom: 1rem; padding: .8rem 0 .4rem; }
header.page h1 { margin: 0 0 .2rem; font-size: 1.5rem; }
.disclaimer { color: var(--muted); font-size: .85rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; margin-top: 1.6rem; }
h3 { font-size: 1.05rem; margin: .8rem 0 .3rem; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: .15rem .8rem; margin: .3rem 0; }
dl.kv dt { font-weight: 600; color: var(--muted); }
dl.kv dd { margin: 0; word-break: break-all; }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; margin: .6rem 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .5rem .8rem; min-width: 9rem; background: var(--soft); }
.card .n { font-size: 1.5rem; font-weight: 700; }
table { border-collapse: collapse; width: 100%; margin: .4rem 0 .8rem; font-size: .85rem; }
th, td { border: 1px solid var(--line); padding: .25rem .4rem; text-align: left; vertical-align: top; }
th { background: #e9e9e9; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th::after { content: " \2195"; color: var(--muted); font-size: .75rem; }
table.sortable th[aria-sort="ascending"]::after { content: " \2191"; color: var(--ink); }
table.sortable th[aria-sort="descending"]::after { content: " \2193"; color: var(--ink); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.sum td { font-weight: 700; background: var(--soft); }
.badge { display: inline-block; padding: 0 .45rem; border-radius: 9px; font-size: .78rem;
  font-weight: 600; color: #000; border: 2px solid transparent; white-space: nowrap; }
.role-inject { background: #fbe3d3; border-color: var(--inject); }
.role-monitor { background: #d6e8f5; border-color: var(--monitor); }
.role-none { background: #eeeeee; border-color: var(--none); }
.tier-recommended { background: #cdeee2; border-color: var(--recommended); }
.tier-acceptable { background: #def0fb; border-color: var(--acceptable); }
.tier-board_review { background: #fbecc9; border-color: var(--board_review); }
.tier-not_suitable { background: #f5e1ec; border-color: var(--not_suitable); }
.status-done { background: #cdeee2; border-color: var(--recommended); }
.status-failed, .status-missing, .status-unknown { background: #fbe3d3; border-color: var(--inject); }
.wide { overflow-x: auto; }
.nowrap { white-space: nowrap; }
td.expl > div { min-width: 18rem; max-width: 48rem; white-space: normal; overflow-wrap: anywhere; }
td.expl .codes, td.codes { white-space: normal; overflow-wrap: anywhere; word-break: break-word; }
.codes { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .75rem; color: var(--muted); }
.filters { display: flex; flex-wrap: wrap; gap: .6rem; align-items: center; margin: .3rem 0; }
.filters input, .filters select { font-size: .9rem; padding: .2rem .3rem; }
.count { color: var(--muted); font-size: .85rem; }
.lesions { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 800px), 1fr)); gap: 1rem; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: .5rem; background: var(--soft); }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: .82rem; margin-top: .3rem; }
.warn { border-left: 4px solid var(--board_review); background: #fff7e6; padding: .4rem .6rem; margin: .4rem 0; }
.fail { border-left: 4px solid var(--inject); background: #fdeee5; padding: .4rem .6rem; margin: .4rem 0; }
.plots { display: flex; flex-wrap: wrap; gap: .8rem; }
.plots figure { flex: 0 1 auto; }
details summary { cursor: pointer; color: var(--muted); }
.legend span { margin-right: .8rem; }
.differs { color: #9b1c1c; font-weight: 700; }
.agrees { color: var(--muted); }
@media print { .filters, .noprint { display: none; } body { padding: 0; font-size: 11px; }
  .lesions { grid-template-columns: 1fr; } figure { break-inside: avoid; } }
"""

TABLE_JS = r"""
(function () {
  "use strict";
  function cellKey(td) {
    var v = td.getAttribute("data-sort");
    return v !== null ? v : td.textContent.trim();
  }
  function sortTable(table, col, th) {
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.setAttribute("aria-sort", "none");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var numeric = th.getAttribute("data-type") === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (ra, rb) {
      var a = cellKey(ra.cells[col]), b = cellKey(rb.cells[col]);
      if (numeric) {
        var x = parseFloat(a), y = parseFloat(b);
        var nx = isNaN(x), ny = isNaN(y);
        if (nx && ny) { return 0; }
        if (nx) { return 1; }
        if (ny) { return -1; }
        return asc ? x - y : y - x;
      }
      return asc ? a.localeCompare(b) : b.localeCompare(a);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function applyFilters(id) {
    var table = document.getElementById(id);
    if (!table) { return; }
    var controls = document.querySelectorAll('[data-filter-table="' + id + '"]');
    var rows = table.tBodies[0].rows, shown = 0;
    Array.prototype.forEach.call(rows, function (r) {
      var ok = true;
      Array.prototype.forEach.call(controls, function (c) {
        var v = (c.value || "").trim().toLowerCase();
        if (!v) { return; }
        var col = c.getAttribute("data-filter-col");
        if (col) {
          ok = ok && (r.getAttribute("data-" + col) || "").toLowerCase() === v;
        } else {
          ok = ok && r.textContent.toLowerCase().indexOf(v) >= 0;
        }
      });
      r.hidden = !ok;
      if (ok) { shown += 1; }
    });
    var counter = document.querySelector('[data-count-for="' + id + '"]');
    if (counter) { counter.textContent = shown + " of " + rows.length + " rows shown"; }
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.tabIndex = 0;
      th.setAttribute("aria-sort", "none");
      th.setAttribute("title", "sort by this column");
      th.addEventListener("click", function () { sortTable(table, i, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortTable(table, i, th); }
      });
    });
  });
  var ids = {};
  document.querySelectorAll("[data-filter-table]").forEach(function (c) {
    var id = c.getAttribute("data-filter-table");
    ids[id] = true;
    c.addEventListener("input", function () { applyFilters(id); });
    c.addEventListener("change", function () { applyFilters(id); });
  });
  Object.keys(ids).forEach(applyFilters);
})();
"""

_MACROS = r"""
{% macro badge(kind, value) -%}
<span class="badge {{ kind }}-{{ value }}">{{ (value or '–')|replace('_', ' ') }}</span>
{%- endmacro %}
{% macro team_cell(t) -%}
{% if t and (t.role or t.category) %}{% if t.role %}{{ badge('role', t.role) }}{% endif %} {{ t.category }}{% if t.role_agrees == false or t.category_agrees == false %} <span class="differs">differs</span>{% else %} <span class="agrees">agrees</span>{% endif %}{% if t.planned_volume_ml is not none %}<br>{{ fmt(t.planned_volume_ml, 1) }} mL{% endif %}{% if t.reason %}<br><em>{{ t.reason }}</em>{% endif %}{% if t.reader %}<br><span class="codes">{{ t.reader }}</span>{% endif %}
{%- else %}<span class="codes">undecided</span>{% endif %}
{%- endmacro %}
{% macro team_summary(team) -%}
<dl class="kv">
  <dt>Signed off</dt><dd>{{ team.signed_off or 'not yet' }}</dd>
  <dt>Role agreement</dt><dd>{{ team.role_pct }} ({{ team.a.n_role_agree }} of {{ team.a.n_role_decided }} decided role{{ '' if team.a.n_role_decided == 1 else 's' }}; {{ team.a.n_lesions }} lesion{{ '' if team.a.n_lesions == 1 else 's' }} proposed)</dd>
  <dt>Category agreement</dt><dd>{{ team.category_pct }} ({{ team.a.n_category_agree }} of {{ team.a.n_category_decided }})</dd>
  {% if team.a.changed %}<dt>Role changes</dt><dd>{% for k, n in team.a.changed.items() %}{{ k }}: {{ n }}{% if not loop.last %} · {% endif %}{% endfor %}</dd>{% endif %}
</dl>
<table class="team-categories"><thead><tr><th>itRECIST category</th><th class="num">Tool proposal</th><th class="num">Team decision</th></tr></thead><tbody>
{% for c, v in team.a.categories.items() %}<tr><td>{{ c }}</td><td class="num">{{ v[0] }}</td><td class="num">{{ v[1] }}</td></tr>{% endfor %}
</tbody></table>
{%- endmacro %}
{% macro filters(table_id, roles=True, tiers=True, extra=None) -%}
<div class="filters noprint">
  <label>Filter <input type="search" data-filter-table="{{ table_id }}" placeholder="text in any column" aria-label="filter rows by text"></label>
  {% if roles %}<label>Role <select data-filter-table="{{ table_id }}" data-filter-col="role" aria-label="filter by role">
    <option value="">all</option><option value="inject">inject</option><option value="monitor">monitor</option><option value="none">none</option></select></label>{% endif %}
  {% if tiers %}<label>Tier <select data-filter-table="{{ table_id }}" data-filter-col="tier" aria-label="filter by tier">
    <option value="">all</option><option value="recommended">recommended</option><option value="acceptable">acceptable</option>
    <option value="board_review">board review</option><option value="not_suitable">not suitable</option></select></label>{% endif %}
  {% if extra %}{{ extra }}{% endif %}
  <span class="count" data-count-for="{{ table_id }}" aria-live="polite"></span>
</div>
{%- endmacro %}
"""

WORKSHEET = _MACROS + r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>HIT-IT worksheet – {{ s.patient }} – {{ s.study_short }}</title>
<style>{{ css }}</style>
</head>
<body>
<header class="page">
  <h1>HIT-IT pre-procedure worksheet</h1>
  <div class="disclaimer">Research tool: lesion ranking for intratumoral immunotherapy (Tselikas et al., Clin Cancer Res 2021). It does not replace the multidisciplinary board. Generated {{ generated }}.</div>
</header>

<section id="summary">
<h2>Patient and study</h2>
<dl class="kv">
  <dt>Patient (sanitized ID)</dt><dd>{{ s.patient }}</dd>
  <dt>Study Instance UID</dt><dd>{{ s.study_uid }}</dd>
  <dt>Study date</dt><dd>{{ s.study_date or '–' }}</dd>
  <dt>Status</dt><dd>{{ badge('status', s.status) }}</dd>
  <dt>Lesions</dt><dd>{{ lesions|length + (lesions_rest|default([]))|length }}</dd>
</dl>
<div class="cards">
  <div class="card"><div class="n">{{ plan.inject|length }}</div>injection target(s)</div>
  <div class="card"><div class="n">{{ plan.monitor|length }}</div>monitoring lesion(s)</div>
  <div class="card"><div class="n">{{ fmt(plan.total_volume_ml, 1) }}</div>mL planned in total</div>
  <div class="card"><div class="n">{{ warnings|length }}</div>warning(s)</div>
</div>
{% for f in failures %}<div class="fail"><strong>Failed at {{ f.stage }}</strong> ({{ f.error_class }}): {{ f.message }}{% if f.file %} — file {{ f.file }}{% endif %}{% if f.tag %} — tag {{ f.tag }}{% endif %}{% if f.hint %}<br>Fix: {{ f.hint }}{% endif %}</div>{% endfor %}
{% for w in warnings %}<div class="warn">{{ w }}</div>{% endfor %}
</section>
{% if team %}
<section id="team">
<h2>Team decision and tool proposal</h2>
<p>From the review app's decisions (review/decisions.csv); agreement counts only the lesions the team decided.</p>
{{ team_summary(team) }}
</section>
{% endif %}

<section id="plan">
<h2>Injection plan</h2>
{% if plan.inject %}
<table>
<thead><tr><th class="num">#</th><th>Lesion</th><th>Organ / site</th><th>Tier</th><th class="num">Longest diameter (mm)</th><th class="num">Planned volume (mL)</th><th>Syringe</th><th class="num">Path length (mm)</th><th>Skin entry (LPS mm)</th><th>Safe path</th><th class="num">P(needle in lesion)</th></tr></thead>
<tbody>
{% for r in plan.inject %}<tr>
<td class="num">{{ r.no }}</td><td><strong>{{ r.lesion_label }}</strong><br><span class="codes">{{ r.lesion_id }}</span></td>
<td>{{ r.organ }}{% if r.site %} / {{ r.site }}{% endif %}</td><td>{{ badge('tier', r.tier) }}</td>
<td class="num">{{ fmt(r.longest_diameter_mm, 1) }}</td><td class="num">{{ fmt(r.planned_volume_ml, 1) }}</td>
<td>{{ r.syringe_note or '–' }}{% if r.volume_warning %}<br><em>{{ r.volume_warning }}</em>{% endif %}</td>
<td class="num">{{ fmt(r.path.length_mm, 0) }}{% if r.path.length_source %}<br><span class="codes">{{ r.path.length_source }}</span>{% endif %}</td>
<td>{{ r.path.entry_text }}</td><td>{{ r.path.safe_text }}</td><td class="num">{{ fmt(r.needle_hit_probability, 2) }}</td>
</tr>{% endfor %}
</tbody>
</table>
{% else %}<p>No lesion is selected for injection.</p>{% endif %}
</section>

{% if followup %}{% include "followup.html" %}{% else %}
<section id="itrecist">
<h2>itRECIST baseline</h2>
<p>Target lesions are split into injected (T-I) and noninjected (T-NI) lesions, each with its own sum of diameters (longest diameter; short axis for lymph nodes). Other lesions are non-target lesions (NT-I injected, NT-NI noninjected), followed qualitatively.</p>
<table>
<thead><tr><th>Set</th><th class="num">#</th><th>Lesion</th><th>Organ</th><th>Measure</th><th class="num">Diameter (mm)</th><th class="num">Volume (mL)</th></tr></thead>
<tbody>
{% for grp in recist.groups %}
{% for r in grp.rows %}<tr><td>{{ grp.name }}</td><td class="num">{{ r.no }}</td><td>{{ r.lesion_label }} <span class="codes">{{ r.lesion_id }}</span></td><td>{{ r.organ }}</td><td>{{ r.measure }}</td><td class="num">{{ fmt(r.diameter, 1) }}</td><td class="num">{{ fmt(r.volume_ml, 2) }}</td></tr>{% endfor %}
{% if grp.target %}<tr class="sum"><td colspan="5">Sum of diameters {{ grp.name }} ({{ grp.rows|length }} lesion{{ '' if grp.rows|length == 1 else 's' }})</td><td class="num">{{ fmt(grp.sum, 1) }}</td><td></td></tr>{% endif %}
{% endfor %}
<tr class="sum"><td colspan="5">Sum of diameters, all target lesions (T-I + T-NI)</td><td class="num">{{ fmt(recist.total, 1) }}</td><td></td></tr>
</tbody>
</table>
{% for w in recist.warnings %}<div class="warn">{{ w }}</div>{% endfor %}
</section>
{% endif %}

<section id="ranking">
<h2>Ranked lesions</h2>
<p class="legend">Tiers: {% for t in tiers %}{{ badge('tier', t) }} {% endfor %} — roles: {% for r in roles %}{{ badge('role', r) }} {% endfor %}</p>
{{ filters('ranked') }}
<div class="wide"><table id="ranked" class="sortable">
<thead><tr><th class="num" data-type="num">#</th><th class="num" data-type="num">Rank</th><th>Lesion</th><th>Organ</th><th>{% if team %}Tool proposal{% else %}Role{% endif %}</th>{% if team %}<th>Team decision</th>{% endif %}<th>Tier</th><th class="num" data-type="num">Score</th><th class="num" data-type="num">Longest (mm)</th><th class="num" data-type="num">Short axis (mm)</th><th class="num" data-type="num">Volume (mL)</th><th class="num" data-type="num">SUVmax</th><th class="num" data-type="num">Skin depth (mm)</th><th>Reasons and explanation</th></tr></thead>
<tbody>
{% for r in lesions %}<tr data-role="{{ r.role }}" data-tier="{{ r.tier }}">
<td class="num">{{ r.no }}</td><td class="num" data-sort="{{ r.rank_sort }}">{{ fmt(r.rank, 0) }}</td>
<td><a href="#lesion-{{ r.anchor }}">{{ r.lesion_label }}</a><br><span class="codes">{{ r.lesion_id }}</span></td>
<td>{{ r.organ }}</td><td>{{ badge('role', r.role) }}</td>{% if team %}<td class="team">{{ team_cell(r.team) }}</td>{% endif %}<td>{{ badge('tier', r.tier) }}</td>
<td class="num" data-sort="{{ r.score_sort }}">{{ fmt(r.score, 3) }}</td>
<td class="num" data-sort="{{ r.sort.longest_diameter_mm }}">{{ fmt(r.longest_diameter_mm, 1) }}</td>
<td class="num" data-sort="{{ r.sort.short_axis_mm }}">{{ fmt(r.short_axis_mm, 1) }}</td>
<td class="num" data-sort="{{ r.sort.volume_ml }}">{{ fmt(r.volume_ml, 2) }}</td>
<td class="num" data-sort="{{ r.sort.suv_max }}">{{ fmt(r.suv_max, 1) }}</td>
<td class="num" data-sort="{{ r.sort.skin_depth_mm }}">{{ fmt(r.skin_depth_mm, 1) }}</td>
<td class="expl"><div>{{ r.explanation }}<br><span class="codes">{{ r.reasons|join(' · ') }}</span>{% if r.rules_not_evaluated %}<br><span class="codes">not evaluated: {{ r.rules_not_evaluated|join(' · ') }}</span>{% endif %}</div></td>
</tr>{% endfor %}
</tbody>
</table></div>
{% if lesions_rest %}<h3 id="ranked-rest-title">Further lesions (compact)</h3>
<p>{{ lesions_rest|length }} lesions beyond the first {{ max_lesions }} by rank, without key images or details (setting ranking.worksheet_max_lesions); every value is in lesions.csv and ranking.csv.</p>
<div class="wide"><table id="ranked-rest" class="sortable"><thead><tr><th class="num" data-type="num">#</th><th>Lesion</th><th>Organ</th><th>Role</th><th>Tier</th><th class="num" data-type="num">Score</th><th class="num" data-type="num">Longest (mm)</th><th class="num" data-type="num">Volume (mL)</th><th class="num" data-type="num">SUVmax</th><th>Reasons</th></tr></thead><tbody>
{% for r in lesions_rest %}<tr><td class="num">{{ r.no }}</td><td>{{ r.lesion_label }}</td><td>{{ r.organ }}</td><td>{{ r.role }}</td><td>{{ r.tier }}</td><td class="num">{{ fmt(r.score, 3) }}</td><td class="num">{{ fmt(r.longest_diameter_mm, 1) }}</td><td class="num">{{ fmt(r.volume_ml, 2) }}</td><td class="num">{{ fmt(r.suv_max, 1) }}</td><td class="codes">{{ r.reasons }}</td></tr>{% endfor %}
</tbody></table></div>{% endif %}
</section>

<section id="mip">
<h2>PET maximum-intensity projection</h2>
{% if mip %}<figure style="max-width: 560px"><img src="{{ mip.src }}" alt="{{ mip.alt }}"><figcaption>Numbers are the lesion numbers (#) of the tables; circle colour = role ({% for r in roles %}{{ badge('role', r) }} {% endfor %}).</figcaption></figure>
{% else %}<p>No PET MIP: {{ mip_reason }}</p>{% endif %}
</section>

<section id="keyimages">
<h2>Key images</h2>
{% if not keyimages_available %}<div class="warn">Key images are not available for this study: {{ keyimage_reason }}</div>{% endif %}
<div class="lesions">
{% for r in lesions %}
<article id="lesion-{{ r.anchor }}">
<h3>#{{ r.no }} {{ r.lesion_label }} {{ badge('role', r.role) }} {{ badge('tier', r.tier) }}</h3>
{% if r.key %}<figure><img src="{{ r.key.src }}" alt="{{ r.key.alt }}" width="{{ r.key.w }}" height="{{ r.key.h }}"><figcaption>{{ r.organ }}{% if r.site %} / {{ r.site }}{% endif %} · longest {{ fmt(r.longest_diameter_mm, 1) }} mm · short axis {{ fmt(r.short_axis_mm, 1) }} mm · {{ fmt(r.volume_ml, 2) }} mL · SUVmax {{ fmt(r.suv_max, 1) }} · skin depth {{ fmt(r.skin_depth_mm, 1) }} mm{% for n in r.key.notes %}<br><em>{{ n }}</em>{% endfor %}</figcaption></figure>
{% else %}<p class="warn">No key image for this lesion{% if r.key_reason %}: {{ r.key_reason }}{% endif %}.</p>{% endif %}
{% if r.role == 'inject' %}
<h3>Planned needle path</h3>
{% if r.needle_img %}<figure><img src="{{ r.needle_img.src }}" alt="{{ r.needle_img.alt }}" width="{{ r.needle_img.w }}" height="{{ r.needle_img.h }}"><figcaption>{% for n in r.needle_img.notes %}<em>{{ n }}</em><br>{% endfor %}</figcaption></figure>{% endif %}
<dl class="kv">
  <dt>Skin entry (LPS mm)</dt><dd>{{ r.path.entry_text }}</dd>
  <dt>Target (LPS mm)</dt><dd>{{ r.path.target_text }}{% if r.target_point_source %} ({{ r.target_point_source }}){% endif %}</dd>
  <dt>Length</dt><dd>{{ fmt(r.path.length_mm, 0, 'mm') }}{% if r.path.length_source %} ({{ r.path.length_source }}){% endif %}</dd>
  <dt>Direction</dt><dd>{{ r.path.direction_text }}</dd>
  <dt>Safe path found</dt><dd>{{ r.path.safe_text }}</dd>
  <dt>Planned volume</dt><dd>{{ fmt(r.planned_volume_ml, 1, 'mL') }}{% if r.syringe_note %} — {{ r.syringe_note }}{% endif %}</dd>
</dl>
{% endif %}
<p>{{ r.explanation }}</p>
{% if r.details %}<details><summary>All measurements of this lesion</summary><table><tbody>{% for k, v in r.details %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</tbody></table></details>{% endif %}
</article>
{% endfor %}
</div>
</section>

<section id="provenance">
<h2>Provenance</h2>
<dl class="kv">
  <dt>Configuration hash (study)</dt><dd>{{ prov.config_hash or '–' }}</dd>
  <dt>Configuration hash (ranking)</dt><dd>{{ prov.ranking_config_hash or '–' }}</dd>
  <dt>Ranking model</dt><dd>{{ prov.model or 'rules (no trained model)' }}</dd>
  <dt>Study job finished</dt><dd>{{ prov.finished or '–' }}</dd>
  <dt>Ranking finished</dt><dd>{{ prov.ranking_finished or '–' }}</dd>
  <dt>Prior studies used</dt><dd>{{ prov.prior_studies|join(', ') or 'none' }}</dd>
  {% if prov.sr %}<dt>DICOM SR</dt><dd>{{ prov.sr }}</dd>{% endif %}
</dl>
<h3>Input series</h3>
<table><thead><tr><th>Input</th><th>Series Instance UID / reference</th></tr></thead><tbody>
{% for k, v in prov.series %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}
</tbody></table>
<h3>Versions</h3>
<table><thead><tr><th>Package</th><th>Version</th></tr></thead><tbody>
{% for k, v in prov.versions %}<tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}
</tbody></table>
{% if prov.stages %}<h3>Stage timings</h3>
<table><thead><tr><th>Stage</th><th class="num">Wall time (s)</th><th class="num">Peak memory (MiB)</th></tr></thead><tbody>
{% for st in prov.stages %}<tr><td>{{ st.stage }}</td><td class="num">{{ fmt(st.wall_s, 2) }}</td><td class="num">{{ fmt(st.peak_rss_mb, 0) }}</td></tr>{% endfor %}
</tbody></table>{% endif %}
</section>
<script>{{ js }}</script>
</body>
</html>
"""

DASHBOARD = _MACROS + r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>HIT-IT cohort dashboard</title>
<style>{{ css }}</style>
</head>
<body>
<header class="page">
  <h1>HIT-IT cohort dashboard</h1>
  <div class="disclaimer">Research tool; it does not replace the multidisciplinary board. Generated {{ generated }} from {{ results_name }}.</div>
</header>
<div class="cards">
  <div class="card"><div class="n">{{ summary.studies }}</div>studies</div>
  <div class="card"><div class="n">{{ summary.done }}</div>done</div>
  <div class="card"><div class="n">{{ summary.failed }}</div>failed or missing</div>
  <div class="card"><div class="n">{{ summary.lesions }}</div>lesions</div>
  <div class="card"><div class="n">{{ summary.inject }}</div>injection targets</div>
  <div class="card"><div class="n">{{ summary.monitor }}</div>monitoring lesions</div>
  {% if team %}<div class="card"><div class="n">{{ team.role_pct }}</div>role agreement, team vs tool</div>{% endif %}
</div>
{% if team %}
<section id="team">
<h2>Team decisions and tool proposals (cohort)</h2>
<p>From the review app's decisions (review/decisions.csv): {{ team.a.n_studies_signed_off }} of {{ summary.studies }} studies signed off. Agreement counts only the lesions the team decided.</p>
{{ team_summary(team) }}
</section>
{% endif %}

<section id="studies">
<h2>Studies</h2>
{{ filters('studies-table', roles=False, tiers=False, extra=status_select) }}
<table id="studies-table" class="sortable">
<thead><tr><th>Patient</th><th>Study</th><th>Date</th><th>Status</th><th class="num" data-type="num">Lesions</th><th class="num" data-type="num">Inject</th><th class="num" data-type="num">Monitor</th><th class="num" data-type="num">Wall time (s)</th>{% if team %}<th class="num" data-type="num">Role agreement (%)</th><th>Team</th>{% endif %}<th>Worksheet</th><th>Reason</th></tr></thead>
<tbody>
{% for st in studies %}<tr data-status="{{ st.status }}">
<td>{{ st.patient }}</td><td class="nowrap"><span title="{{ st.study_uid }}">{{ st.study_short }}</span></td><td>{{ st.date or '–' }}</td>
<td>{{ badge('status', st.status) }}</td><td class="num">{{ st.n_lesions }}</td><td class="num">{{ st.n_inject }}</td><td class="num">{{ st.n_monitor }}</td>
<td class="num" data-sort="{{ st.wall_sort }}">{{ fmt(st.wall_s, 1) }}</td>
{% if team %}<td class="num" data-sort="{{ '' if st.team.role_agreement_pct is none else st.team.role_agreement_pct }}">{{ fmt(st.team.role_agreement_pct, 0) }}</td><td>{{ st.team.n_role_agree }} of {{ st.team.n_role_decided }} roles, {{ st.team.n_category_agree }} of {{ st.team.n_category_decided }} categories{% if st.team.signed_off_by %}<br>signed off by {{ st.team.signed_off_by|join(', ') }}{% endif %}</td>{% endif %}
<td>{% if st.worksheet %}<a href="{{ st.worksheet }}">worksheet</a>{% else %}–{% endif %}{% if st.sr %} · <span class="codes">SR</span>{% endif %}</td>
<td>{% for f in st.failures %}<div><strong>{{ f.stage }}</strong> {{ f.error_class }}: {{ f.message }}{% if f.file %} <span class="codes">{{ f.file }}</span>{% endif %}{% if f.hint %}<br><em>{{ f.hint }}</em>{% endif %}</div>{% endfor %}</td>
</tr>{% endfor %}
</tbody>
</table>
{% if other_failures %}
<h3>Other failures (files not assigned to a study)</h3>
<table><thead><tr><th>Stage</th><th>Error</th><th>Message</th><th>File</th><th>Hint</th></tr></thead><tbody>
{% for f in other_failures %}<tr><td>{{ f.stage }}</td><td>{{ f.error_class }}</td><td>{{ f.message }}</td><td class="codes">{{ f.file }}</td><td>{{ f.hint }}</td></tr>{% endfor %}
</tbody></table>
{% endif %}
</section>
{% include "dashboard_responses.html" %}

<section id="lesions">
<h2>Lesions</h2>
{{ filters('lesion-table') }}
<div class="wide"><table id="lesion-table" class="sortable">
<thead><tr><th>Patient</th><th>Study</th><th>Lesion</th><th>Organ</th><th>Site</th><th>{% if team %}Tool proposal{% else %}Role{% endif %}</th>{% if team %}<th>Team decision</th>{% endif %}<th>Tier</th><th class="num" data-type="num">Rank</th><th class="num" data-type="num">Score</th><th class="num" data-type="num">Volume (mL)</th><th class="num" data-type="num">Longest (mm)</th><th class="num" data-type="num">Short axis (mm)</th><th class="num" data-type="num">SUVmax</th><th class="num" data-type="num">Skin depth (mm)</th><th class="num" data-type="num">Path (mm)</th><th>Reasons</th></tr></thead>
<tbody>
{% for r in lesions %}<tr data-role="{{ r.role }}" data-tier="{{ r.tier }}">
<td>{{ r.patient }}</td><td class="nowrap"><span title="{{ r.study_uid }}">{{ r.study_short }}</span></td>
<td>{% if r.link %}<a href="{{ r.link }}">{{ r.lesion_label }}</a>{% else %}{{ r.lesion_label }}{% endif %}<br><span class="codes">{{ r.lesion_id }}</span></td>
<td>{{ r.organ }}</td><td>{{ r.site }}</td><td>{{ badge('role', r.role) }}</td>{% if team %}<td class="team">{{ team_cell(r.team) }}</td>{% endif %}<td>{{ badge('tier', r.tier) }}</td>
{% for c, d in numeric %}<td class="num" data-sort="{{ r.sort[c] }}">{{ fmt(r[c], d) }}</td>{% endfor %}
<td class="codes">{{ r.reasons }}</td>
</tr>{% endfor %}
</tbody>
</table></div>
</section>

<section id="plots">
<h2>Distributions</h2>
<div class="plots">
{% for p in plots %}<figure><img src="{{ p.src }}" alt="{{ p.alt }}"><figcaption>{{ p.title }}</figcaption></figure>{% endfor %}
</div>
</section>
<script>{{ js }}</script>
</body>
</html>
"""


def shown(value):
    """What a ``{{ ... }}`` expression of a page prints: text without control characters.

    The one place where text reaches a page (the environment's ``finalize``, applied to every
    expression before HTML escaping): strings lose NUL, escape and other control characters
    (:func:`pipeline.io.sanitize.clean_text`); markup the code built itself (``Markup``: the
    CSS, the script, macro output whose parts went through here) and non-text values are kept.
    """
    from markupsafe import Markup

    from pipeline.io.sanitize import clean_text

    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return clean_text(value)


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment (HTML autoescaping on; every printed string through
    :func:`shown`)."""
    from jinja2 import DictLoader, Environment, StrictUndefined, select_autoescape

    from pipeline.report.followup_view import DASHBOARD_RESPONSES, FOLLOWUP_SECTION

    env = Environment(loader=DictLoader({"worksheet.html": WORKSHEET, "dashboard.html": DASHBOARD,
                                         "followup.html": FOLLOWUP_SECTION,
                                         "dashboard_responses.html": DASHBOARD_RESPONSES}),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=False, lstrip_blocks=False,
                      finalize=shown)
    from pipeline.report.figures import fmt

    env.globals["fmt"] = fmt
    return env


def render(name: str, **context) -> str:
    """Render template ``name`` with the shared CSS and script."""
    from markupsafe import Markup

    return environment().get_template(name).render(css=Markup(CSS), js=Markup(TABLE_JS), **context)
