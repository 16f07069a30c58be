"""The feature browser's pages: HTML with inline CSS and JS (no network, opens from file://), and
``write_site``, which writes one run's pages and JSON from its ``RunSite`` (eval/browser_data.py).

Data is embedded as JSON in ``<script type="application/json">`` (index, groups) or loaded as
``features/<i>.js`` files that call ``orthosaeFeature({...})`` (feature page). Text from the data
(token strings, names) is put into the page with ``textContent`` only, never as markup.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from orthosae.common import owned
from orthosae.eval.browser_data import RunSite

CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#20232a;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0}
header a{color:#9ecbff;text-decoration:none}
main{padding:14px 20px;max-width:1400px}
h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff}
th,td{padding:3px 8px;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap}
th{background:#f0f0f0;position:sticky;top:0;cursor:default}
th.sort{cursor:pointer}th.sort:hover{background:#e2e8f0}
td.l,th.l{text-align:left}
a{color:#0b57d0}
.chip{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff}
.g-forget{background:#c2410c}.g-retain{background:#1d4ed8}.g-other{background:#6b7280}
.controls{display:flex;gap:14px;align-items:center;margin:6px 0 10px;flex-wrap:wrap}
.muted{color:#6b7280}
.ctx{font:13px/1.9 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#fff;border:1px solid #e3e3e3;
     border-radius:4px;padding:3px 8px;margin:4px 0;display:flex;gap:12px;align-items:baseline}
.ctx .act{flex:0 0 52px;color:#9a3412;font-weight:600}
.ctx .where{flex:0 0 240px;color:#6b7280;font-size:11px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.ctx .toks{white-space:nowrap;overflow-x:auto}
.tok{white-space:pre;border-radius:2px;padding:1px 0}
.tok-bos{color:#9ca3af;font-style:italic}
.tok-focus{outline:2px solid #9a3412;outline-offset:0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(330px,1fr));gap:18px}
.bar{height:12px;display:inline-block;vertical-align:middle}
.note{font-size:12px;color:#6b7280;max-width:900px}
"""

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title><style>{css}</style></head><body>
"""

COMMON_JS = r"""
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || (k === 'style' && v === '')) continue;
    if (k === 'text') e.textContent = v; else if (k === 'style') e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
function fmt(x, d) { if (x === null || x === undefined) return '–'; if (x === 0) return '0';
  const a = Math.abs(x); return (a >= 1e4 || a < 1e-3) ? x.toExponential(2) : x.toPrecision(d || 3); }
function pct(x) { return x === null || x === undefined ? '–' : (100 * x).toPrecision(3) + ' %'; }
function chipClass(label) { return label.startsWith('forget') ? 'g-forget' : label.startsWith('retain') ? 'g-retain' : 'g-other'; }
function chip(label) { return el('span', {class: 'chip ' + chipClass(label), text: label}); }
function showTok(t) { return t.replace(/\n/g, '\u21b5').replace(/\t/g, '\u21e5'); }
function showTokAlone(t) { return showTok(t).replace(/ /g, '\u2423'); }  // a token on its own: spaces visible
"""


def _page(title: str, body: str, run: str = "", data: dict[str, str] | None = None) -> str:
    """The page: ``body`` with @@RUN@@ (escaped), @@JS@@ and @@DATA:<element id>:<key>@@ filled in."""
    body = body.replace("@@RUN@@", html.escape(run)).replace("@@JS@@", COMMON_JS)
    for key, text in (data or {}).items():
        body = re.sub(rf"@@DATA:(\w+):{key}@@", lambda m: _json_script(m.group(1), text), body)
    return _HEAD.format(title=html.escape(title), css=CSS) + body + "\n</body></html>\n"


def _json_script(element_id: str, text: str) -> str:
    # "</" would end the script element early; "<\/" is the same string to JSON.parse
    safe = text.replace("</", "<\\/")
    return f'<script type="application/json" id="{element_id}">{safe}</script>'


# ---------------------------------------------------------------------------- the index page
# Every feature in a sortable, filterable table, a page of rows at a time.

# the markup, and where the data goes
_INDEX_MARKUP = """<header><h1>orthosae · feature browser · @@RUN@@</h1>
<a href="groups.html">groups</a><a href="../index.html">all runs</a><span id="summary" class="muted"></span></header>
<main>
<div class="controls">
  <label>group <select id="group"><option value="all">all groups</option></select></label>
  <label><input type="checkbox" id="silent"> show features silent on held-out rows</label>
  <label>top token contains <input id="q" size="14"></label>
  <span id="count" class="muted"></span>
  <button id="prev">&larr;</button><span id="page"></span><button id="next">&rarr;</button>
</div>
<table id="features"><thead><tr></tr></thead><tbody></tbody></table>
<p class="note" id="note"></p>
</main>
@@DATA:data:index_json@@
"""

# its data, columns and controls
_INDEX_SETUP_JS = """const DATA = JSON.parse(document.getElementById('data').textContent);
const META = DATA.meta, ROWS = DATA.features, PAGE = 250;
const COLS = [
  ['id', 'feature', 'l'], ['group', 'group', 'l'], ['forget_share', 'forget share'],
  ['freq', 'firing freq'], ['freq_forget', 'freq forget'], ['freq_retain', 'freq retain'],
  ['mean_act', 'mean act'], ['max_act', 'max act'], ['max_cos_in_group', 'max cos in group'],
  ['top_token', 'top token', 'l']];
let sortKey = 'forget_share', sortDesc = true, page = 0;
const width = String(META.d_sae - 1).length;
document.getElementById('summary').textContent =
  `${META.d_sae} features · ${META.rows.forget.toLocaleString()} forget + ${META.rows.retain.toLocaleString()} retain held-out rows · groups: ${META.grouping}`;
document.getElementById('note').textContent =
  'Frequencies and activations on held-out rows (' + META.corpora.map(c => c.name).join(', ') +
  '); activations in ' + META.activation_units + '. Forget share = activation mass per forget row / (per forget row + per retain row). Click a column to sort.';
const gsel = document.getElementById('group');
META.group_labels.forEach((l, g) => gsel.append(el('option', {value: g, text: `${g}: ${l}`})));
const head = document.querySelector('#features thead tr');
for (const [k, label, cls] of COLS) {
  const th = el('th', {class: (cls || '') + (k === 'group' || k === 'top_token' ? '' : ' sort'), 'data-key': k, text: label});
  if (th.classList.contains('sort')) th.onclick = () => { sortDesc = sortKey === k ? !sortDesc : k !== 'id'; sortKey = k; page = 0; render(); };
  head.append(th);
}
"""

# the table: filtered, sorted, a page at a time
_INDEX_TABLE_JS = """function filtered() {
  const g = gsel.value, silent = document.getElementById('silent').checked, q = document.getElementById('q').value;
  let rows = ROWS.filter(r => (g === 'all' || r.group === +g) && (silent || !r.silent) &&
                              (!q || (r.top_token || '').includes(q)));
  const s = sortDesc ? -1 : 1;
  rows.sort((a, b) => { const x = a[sortKey], y = b[sortKey];
    if (x === null && y === null) return a.id - b.id; if (x === null) return 1; if (y === null) return -1;
    return x === y ? a.id - b.id : (x < y ? -s : s); });
  return rows;
}
function render() {
  const rows = filtered(), pages = Math.max(1, Math.ceil(rows.length / PAGE));
  page = Math.min(page, pages - 1);
  document.getElementById('count').textContent = `${rows.length} features`;
  document.getElementById('page').textContent = `page ${page + 1} / ${pages}`;
  for (const th of head.children) th.textContent = COLS.find(c => c[0] === th.dataset.key)[1] +
      (th.dataset.key === sortKey ? (sortDesc ? ' \u25bc' : ' \u25b2') : '');
  const body = document.querySelector('#features tbody');
  body.replaceChildren();
  for (const r of rows.slice(page * PAGE, (page + 1) * PAGE)) {
    const tr = el('tr', {class: 'feat', 'data-id': r.id});
    tr.append(el('td', {class: 'l'}, el('a', {href: 'feature.html#' + r.id, text: '#' + String(r.id).padStart(width, '0')})),
              el('td', {class: 'l'}, chip(META.group_labels[r.group])),
              el('td', {}, fmt(r.forget_share)), el('td', {}, pct(r.freq)), el('td', {}, pct(r.freq_forget)),
              el('td', {}, pct(r.freq_retain)), el('td', {}, fmt(r.mean_act)), el('td', {}, fmt(r.max_act)),
              el('td', {}, fmt(r.max_cos_in_group)),
              el('td', {class: 'l'}, el('span', {class: 'tok', text: r.top_token === null ? '' : showTokAlone(r.top_token)})));
    body.append(tr);
  }
}
for (const id of ['group', 'silent', 'q']) document.getElementById(id).oninput = () => { page = 0; render(); };
document.getElementById('prev').onclick = () => { page = Math.max(0, page - 1); render(); };
document.getElementById('next').onclick = () => { page += 1; render(); };
render();
"""


# ---------------------------------------------------------------------------- the feature page
# One page for all features: it loads the data of the one its URL names (feature.html#<i>).

# the markup, and where the data goes
_FEATURE_MARKUP = """<header><h1 id="title">orthosae · @@RUN@@</h1>
<a href="index.html">all features</a><a href="groups.html">groups</a>
<a id="prevf" href="#">&larr; prev</a><a id="nextf" href="#">next &rarr;</a></header>
<main id="main"><p class="muted">loading…</p></main>
@@DATA:meta:meta_json@@
"""

# loads features/<i>.js for the feature in the URL's #
_FEATURE_LOAD_JS = """const META = JSON.parse(document.getElementById('meta').textContent);
const width = String(META.d_sae - 1).length;
function load() {
  const id = parseInt(location.hash.slice(1) || '0', 10);
  document.getElementById('prevf').href = '#' + Math.max(0, id - 1);
  document.getElementById('nextf').href = '#' + Math.min(META.d_sae - 1, id + 1);
  const old = document.getElementById('fdata'); if (old) old.remove();
  const s = el('script', {id: 'fdata', src: 'features/' + String(id).padStart(width, '0') + '.js'});
  s.onerror = () => document.getElementById('main').replaceChildren(
      el('p', {text: `feature ${id}: no data file (features/ missing, or id out of range 0..${META.d_sae - 1})`}));
  document.head.append(s);
}
"""

# the figures table and the forget / retain frequency bars
_FEATURE_STATS_JS = """function statTable(rows) {
  const t = el('table');
  for (const [k, v] of rows) t.append(el('tr', {}, el('th', {class: 'l', text: k}), el('td', {class: 'l'}, v)));
  return t;
}
function freqBars(d) {
  const m = Math.max(d.freq_forget || 0, d.freq_retain || 0, 1e-12), w = 260;
  const row = (label, x, color) => el('div', {}, el('span', {style: 'display:inline-block;width:60px', text: label}),
      el('span', {class: 'bar', style: `width:${Math.max(1, w * (x || 0) / m)}px;background:${color}`}), ' ' + pct(x));
  return el('div', {}, row('forget', d.freq_forget, '#c2410c'), row('retain', d.freq_retain, '#1d4ed8'));
}
"""

# the activation histogram (SVG), forget stacked on retain
_FEATURE_HISTOGRAM_JS = """function histogram(h) {
  const NS = 'http://www.w3.org/2000/svg', W = 440, H = 170, L = 46, B = 28, n = h.forget.length;
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('width', W); svg.setAttribute('height', H); svg.setAttribute('class', 'hist');
  const mk = (tag, a, text) => { const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(a)) e.setAttribute(k, v); if (text !== undefined) e.textContent = text; svg.append(e); return e; };
  if (!n) { mk('text', {x: 10, y: 20}, 'never active on held-out rows'); return svg; }
  const tot = h.forget.map((f, i) => f + h.retain[i]), ymax = Math.max(...tot), bw = (W - L - 6) / n;
  const y = c => (H - B) * (1 - c / ymax);
  for (let i = 0; i < n; i++) {
    const x = L + i * bw, yf = y(h.forget[i]), yt = y(tot[i]);
    mk('rect', {x, y: yt, width: Math.max(bw - 1, 1), height: (H - B) - yt, fill: '#1d4ed8', class: 'hbar'});
    mk('rect', {x, y: yt, width: Math.max(bw - 1, 1), height: (H - B) - yf, fill: '#c2410c'});
  }
  mk('line', {x1: L, x2: W - 6, y1: H - B, y2: H - B, stroke: '#555'});
  for (let i = 0; i <= n; i++) {
    const v = h.log10_lo + i / h.bins_per_decade;
    if (Math.abs(v - Math.round(v)) < 1e-9) mk('text', {x: L + i * bw, y: H - B + 14, 'font-size': 11, 'text-anchor': 'middle'}, '1e' + Math.round(v));
  }
  mk('text', {x: L - 4, y: 10, 'font-size': 11, 'text-anchor': 'end'}, ymax.toLocaleString());
  mk('text', {x: L - 4, y: H - B, 'font-size': 11, 'text-anchor': 'end'}, '0');
  mk('text', {x: (W + L) / 2, y: H - 2, 'font-size': 11, 'text-anchor': 'middle'}, 'activation (log scale) · forget (orange) over retain (blue)');
  return svg;
}
"""

# one top context: its tokens shaded by the activation
_FEATURE_CONTEXT_JS = """function context(ex, maxAct) {
  const toks = el('span', {class: 'toks'});
  ex.tokens.forEach((t, k) => {
    const a = ex.acts[k], bos = ex.bos && k === 0, cls = ['tok'];
    let style = '';
    if (bos) cls.push('tok-bos');
    else if (a > 0) { cls.push('tok-on'); style = `background:rgba(234,88,12,${(0.08 + 0.92 * a / maxAct).toFixed(3)})`; }
    if (k === ex.focus) cls.push('tok-focus');
    toks.append(el('span', {class: cls.join(' '), style, text: showTok(t),
                            title: bos ? 'BOS (not stored, not encoded)' : `act ${fmt(a)} · token ${ex.token_ids[k]}`}));
  });
  return el('div', {class: 'ctx'}, el('span', {class: 'act', text: fmt(ex.act)}),
            el('span', {class: 'where', text: `${ex.corpus} · ctx ${ex.context} · pos ${ex.position}`}), toks);
}
"""

# neighbours, logit effects and roles in the probing evals
_FEATURE_TABLES_JS = """function neighbourTable(list) {
  const t = el('table', {}, el('tr', {}, el('th', {class: 'l', text: 'feature'}), el('th', {text: 'cos'}), el('th', {class: 'l', text: 'group'})));
  for (const n of list) t.append(el('tr', {}, el('td', {class: 'l'}, el('a', {href: '#' + n.id, text: '#' + n.id})),
      el('td', {}, fmt(n.cos)), el('td', {class: 'l'}, chip(META.group_labels[n.group]))));
  return t;
}
function tokenTable(list) {
  const t = el('table', {}, el('tr', {}, el('th', {class: 'l', text: 'token'}), el('th', {text: 'logit effect'})));
  for (const x of list) t.append(el('tr', {}, el('td', {class: 'l'}, el('span', {class: 'tok', text: showTokAlone(x.t)})), el('td', {}, fmt(x.v))));
  return t;
}
function evalRoles(roles) {
  const info = META.eval_roles || {known: false, note: 'roles in pipe eval\u2019s probing evals unknown'};
  if (!info.known) return el('p', {class: 'muted roles-unknown', text: info.note});
  const note = el('p', {class: 'note', text: 'Latents recorded ' + info.note});
  if (!roles.length) return el('div', {}, el('p', {class: 'muted roles-none', text: 'none: not among the latents these evals recorded'}), note);
  return el('div', {}, el('ul', {class: 'roles'}, ...roles.map(r => el('li', {class: 'role', text: r.text}))), note);
}
"""

# the page of the feature whose features/<i>.js just loaded
_FEATURE_RENDER_JS = """function orthosaeFeature(d) {
  document.title = `feature ${d.id} · ${d.run}`;
  document.getElementById('title').textContent = `orthosae · ${d.run} · feature #${d.id}`;
  const main = document.getElementById('main');
  const sel = d.unlearning_selection.length ? d.unlearning_selection.map(s =>
      `rank ${s.rank} at retain threshold ${s.retain_threshold}`).join('; ') : 'not among the selected features';
  const maxAct = d.top.length ? d.top[0].act : 1;
  const logits = d.logits ? el('div', {class: 'grid'},
      el('div', {}, el('h2', {text: 'promoted tokens'}), tokenTable(d.logits.promoted)),
      el('div', {}, el('h2', {text: 'suppressed tokens'}), tokenTable(d.logits.suppressed))) : el('p', {text: 'no unembedding'});
  main.replaceChildren(
    el('h2', {}, `Feature #${d.id} `, chip(d.group_label), d.silent ? el('span', {class: 'muted', text: ' · silent on held-out rows'}) : null),
    el('div', {class: 'grid'},
      el('div', {}, statTable([
        ['forget share', fmt(d.forget_share)], ['firing frequency', pct(d.freq)],
        ['active rows (forget / retain)', `${d.count_forget.toLocaleString()} / ${d.count_retain.toLocaleString()}`],
        ['mass per row (forget / retain)', `${fmt(d.mass_forget_per_row)} / ${fmt(d.mass_retain_per_row)}`],
        ['mean activation (when active)', fmt(d.mean_act)], ['max activation', fmt(d.max_act)],
        ['max decoder cos in group', fmt(d.max_cos_in_group)], ['unlearning selection', sel]]),
        el('h2', {text: 'forget vs retain frequency'}), freqBars(d)),
      el('div', {}, el('h2', {text: 'activation histogram (held-out rows)'}), histogram(d.histogram))),
    el('h2', {text: `top-activating held-out contexts (${d.top.length})`}),
    el('div', {id: 'contexts'}, ...(d.top.length ? d.top.map(ex => context(ex, maxAct)) : [el('p', {class: 'muted', text: 'never active on held-out rows'})])),
    el('p', {class: 'note', text: 'Each line: one held-out context, with the feature\u2019s max activation in it at the outlined token and the tokens around that token, shaded by the feature\u2019s activation (darkest = this feature\u2019s max). BOS is not stored, so never shaded.'}),
    el('h2', {text: 'in pipe eval\u2019s probing evals'}), evalRoles(d.eval_roles || []),
    el('div', {class: 'grid'},
      el('div', {}, el('h2', {text: 'nearest features in its group (decoder cosine)'}), neighbourTable(d.nearest_in_group)),
      el('div', {}, el('h2', {text: 'nearest features in other groups'}), neighbourTable(d.nearest_other_groups))),
    logits,
    el('p', {class: 'note', text: 'Logit effect: ' + META.logit_effect + ' (direct effect of the decoder direction on the logits; the model is not run).'}));
}
window.addEventListener('hashchange', load);
load();
"""


# ---------------------------------------------------------------------------- the groups page

# the markup, and where the data goes
_GROUPS_MARKUP = """<header><h1>orthosae · groups · @@RUN@@</h1>
<a href="index.html">all features</a><a href="../index.html">all runs</a></header>
<main id="main"></main>
@@DATA:data:groups_json@@
"""

# sizes, cross-group overlap, the unlearning selection
_GROUPS_JS = """const G = JSON.parse(document.getElementById('data').textContent);
const main = document.getElementById('main');
const sizes = el('table', {}, el('tr', {}, ...['group', 'features', 'active on held-out rows', 'mean forget share']
    .map((t, i) => el('th', {class: i ? '' : 'l', text: t}))));
G.labels.forEach((l, g) => sizes.append(el('tr', {class: 'group'}, el('td', {class: 'l'}, `${g} `, chip(l)),
    el('td', {}, G.sizes[g]), el('td', {}, G.alive_on_heldout[g]), el('td', {}, fmt(G.mean_forget_share[g])))));
const ov = el('table', {}, el('tr', {}, el('th', {class: 'l', text: 'groups'}), el('th', {text: '\u2016W_g\u1d40W_h\u2016_F'}),
    el('th', {text: 'RMS cross-group cos (/ \u221a(n_g n_h))'})));
for (const o of G.overlap) ov.append(el('tr', {}, el('td', {class: 'l', text: `${G.labels[o.groups[0]]} \u00d7 ${G.labels[o.groups[1]]}`}),
    el('td', {}, fmt(o.overlap_fro)), el('td', {}, fmt(o.rms_cross_cos))));
main.append(el('h2', {text: 'group sizes'}), el('p', {class: 'note', text: 'grouping: ' + G.grouping}), sizes,
  el('h2', {text: 'cross-group overlap of unit decoder directions'}), ov,
  el('p', {class: 'note', text: `random unit directions give an RMS cross-group cos of about 1/\u221ad_model = ${fmt(G.random_rms_cross_cos)}`}),
  el('h2', {text: 'features SAEBench\u2019s unlearning selection would clamp'}), el('p', {class: 'note', text: G.unlearning_note}));
if (!G.unlearning.length) main.append(el('p', {class: 'muted', text: 'needs held-out forget and retain rows'}));
for (const s of G.unlearning) {
  const counts = Object.entries(s.forget_leaning_among_top).map(([n, c]) => `${c} of the top ${n} are in the last (most forget-specific) group`).join('; ');
  main.append(el('h2', {text: `retain threshold ${s.retain_threshold}: ${s.n_eligible} eligible features`}),
              el('p', {class: 'note', text: counts}));
  const t = el('table', {class: 'selection'}, el('tr', {}, ...['rank', 'feature', 'group', 'freq forget', 'freq retain', 'clamped for n =']
      .map(x => el('th', {text: x}))));
  for (const f of s.features) t.append(el('tr', {}, el('td', {}, f.rank), el('td', {}, el('a', {href: 'feature.html#' + f.id, text: '#' + f.id})),
      el('td', {}, chip(G.labels[f.group])), el('td', {}, pct(f.freq_forget)), el('td', {}, pct(f.freq_retain)),
      el('td', {}, s.n_features_list.filter(n => n >= f.rank).join(', ') || '\u2013')));
  main.append(t);
}
"""


# ---------------------------------------------------------------------------- the pages, from their pieces


def _body(markup: str, *scripts: str) -> str:
    """A page's body: its markup, then one script of the common functions (@@JS@@) and ``scripts``."""
    return markup + "<script>@@JS@@\n" + "".join(scripts) + "</script>"


def index_page(run: str, index_json: str) -> str:
    body = _body(_INDEX_MARKUP, _INDEX_SETUP_JS, _INDEX_TABLE_JS)
    return _page(f"orthosae features · {run}", body, run, {"index_json": index_json})


def feature_page(run: str, meta_json: str) -> str:
    body = _body(
        _FEATURE_MARKUP,
        _FEATURE_LOAD_JS,
        _FEATURE_STATS_JS,
        _FEATURE_HISTOGRAM_JS,
        _FEATURE_CONTEXT_JS,
        _FEATURE_TABLES_JS,
        _FEATURE_RENDER_JS,
    )
    return _page(f"orthosae feature · {run}", body, run, {"meta_json": meta_json})


def groups_page(run: str, groups_json: str) -> str:
    body = _body(_GROUPS_MARKUP, _GROUPS_JS)
    return _page(f"orthosae groups · {run}", body, run, {"groups_json": groups_json})


def runs_page(name: str, runs: list[str]) -> str:
    items = "\n".join(
        f'<li><a href="{html.escape(r)}/index.html">{html.escape(r)}</a> · '
        f'<a href="{html.escape(r)}/groups.html">groups</a></li>'
        for r in runs
    )
    return _page(
        f"orthosae feature browser · {name}",
        f"<header><h1>orthosae · feature browser · {html.escape(name)}</h1></header><main><ul>\n{items}\n</ul></main>",
    )


def _dump(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def write_site(site: RunSite, out: Path) -> Path:
    """Write one run's pages and JSON into ``out`` (replaced whole)."""
    tmp = out.with_name(f".{out.name}.tmp")
    owned.remove(tmp, "pipe inspect")  # a folder of this name the tool did not make stays, one line
    owned.make(tmp)
    (tmp / "features").mkdir()
    index = {"meta": site.meta, "features": site.features}
    (tmp / "index.json").write_text(_dump(index))
    (tmp / "groups.json").write_text(_dump(site.groups))
    (tmp / "index.html").write_text(index_page(site.run, _dump(index)))
    (tmp / "feature.html").write_text(feature_page(site.run, _dump(site.meta)))
    (tmp / "groups.html").write_text(groups_page(site.run, _dump(site.groups)))
    width = len(str(len(site.features) - 1))
    for d in site.details:
        text = _dump(d)
        stem = f"{d['id']:0{width}d}"
        (tmp / "features" / f"{stem}.json").write_text(text)
        # the same JSON, as a script the feature page can load from file:// (fetch cannot)
        (tmp / "features" / f"{stem}.js").write_text(f"orthosaeFeature({text});\n")
    owned.remove(out, "pipe inspect", "index.json", "feature.html")
    tmp.rename(out)
    return out
