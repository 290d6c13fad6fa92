// tierwise dashboard: plain JavaScript, no build step, no dependencies. Every value from the server is put into
// the page with textContent or SVG attributes (never innerHTML): principal names and tags are user-controlled.
'use strict';

const KEY_STORE = 'tierwise.adminKey';
const PALETTE = ['#2a6df4', '#f08c00', '#2f9e44', '#d6336c', '#7048e8', '#0c8599', '#e8590c', '#5c940d', '#a61e4d',
  '#495057'];
const SVG = 'http://www.w3.org/2000/svg';
const st = { key: sessionStorage.getItem(KEY_STORE) || '', cfg: null, filters: { window: '1h', tier: '', principal: '' },
  seen: new Set(), summaryTimer: null, liveTimer: null, timelineBy: 'by_model', last: null, failures: 0 };

const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}
function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
function usd(v) {
  if (v === null || v === undefined) return '–';
  const a = Math.abs(v);
  return (v < 0 ? '-$' : '$') + (a >= 100 ? a.toLocaleString('en-US', { maximumFractionDigits: 2 }) :
    a >= 1 ? a.toFixed(2) : a.toFixed(6));
}
function pct(v) { return v === null || v === undefined ? '–' : (v * 100).toFixed(1) + '%'; }
function num(v) { return v === null || v === undefined ? '–' : Number(v).toLocaleString('en-US'); }
function setVal(id, text, raw) { const e = $(id); e.textContent = text; e.dataset.value = String(raw); }

function message(text, kind) {
  const m = $('message');
  if (!text) { m.hidden = true; m.textContent = ''; return; }
  m.hidden = false; m.textContent = text; m.className = 'message' + (kind === 'error' ? ' error' : '');
}

class ApiError extends Error {
  constructor(status, msg, param) { super(msg); this.status = status; this.param = param; }
}

async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v) url.searchParams.set(k, v);
  const headers = { Accept: 'application/json' };
  if (st.key) headers.Authorization = 'Bearer ' + st.key;
  let r;
  try { r = await fetch(url, { headers, cache: 'no-store' }); } catch (e) {
    throw new ApiError(0, 'the gateway cannot be reached (' + e.message + ')', null);
  }
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const err = body && body.error ? body.error : { message: 'HTTP ' + r.status, param: null };
    throw new ApiError(r.status, err.message, err.param);
  }
  return body;
}

function handleError(e) {
  if (e.status === 401) { showLogin(e.message); return; }
  const where = e.param ? ' (' + e.param + ')' : '';
  message(e.message + where, 'error');
  const live = $('live'); live.className = 'live bad'; $('live-text').textContent = 'error';
}

function showLogin(text) {
  stopTimers();
  $('main').hidden = true; $('login').hidden = false;
  message(st.key ? 'The admin key was refused: ' + text : text, st.key ? 'error' : '');
  $('admin-key').focus();
}

// -- filters -----------------------------------------------------------------------------------------------

function readFiltersFromUrl() {
  const q = new URLSearchParams(location.search);
  for (const k of ['window', 'tier', 'principal']) if (q.get(k) !== null) st.filters[k] = q.get(k);
}
function writeFiltersToUrl() {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(st.filters)) if (v) q.set(k, v);
  history.replaceState(null, '', location.pathname + (q.toString() ? '?' + q.toString() : ''));
}
function setupControls(cfg) {
  const w = $('window'); clear(w);
  const windows = cfg.windows.includes(st.filters.window) ? cfg.windows : cfg.windows.concat([st.filters.window]);
  for (const v of windows) { const o = el('option', null, v); o.value = v; w.appendChild(o); }
  w.value = st.filters.window;
  const t = $('tier'); clear(t);
  const all = el('option', null, 'all tiers'); all.value = ''; t.appendChild(all);
  for (const v of cfg.tiers) { const o = el('option', null, v); o.value = v; t.appendChild(o); }
  if (st.filters.tier && !cfg.tiers.includes(st.filters.tier)) {
    const o = el('option', null, st.filters.tier); o.value = st.filters.tier; t.appendChild(o);
  }
  t.value = st.filters.tier;
  $('principal').value = st.filters.principal;
}

// -- charts ------------------------------------------------------------------------------------------------

function timelineChart(tl) {
  const box = $('timeline'); clear(box); const legend = $('timeline-legend'); clear(legend);
  const series = tl[st.timelineBy] || {};
  const names = Object.keys(series).sort((a, b) => sum(series[b]) - sum(series[a]));
  const n = tl.starts.length;
  const W = 900, H = 220, L = 60, B = 22, T = 8, R = 8;
  const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img' });
  const stacked = new Array(n).fill(0);
  const layers = names.map((name) => {
    const base = stacked.slice();
    series[name].forEach((v, i) => { stacked[i] += v; });
    return { name, base, top: stacked.slice() };
  });
  const max = Math.max(...stacked, 0) || 1;
  const x = (i) => L + (n <= 1 ? 0 : (i / (n - 1)) * (W - L - R));
  const y = (v) => H - B - (v / max) * (H - B - T);
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    s.appendChild(svg('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: '#e3e6ec' }));
    const lab = svg('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#6b7585' });
    lab.textContent = v === 0 ? '$0' : '$' + (v >= 1 ? v.toFixed(2) : v.toPrecision(2)); s.appendChild(lab);
  }
  for (const k of [0, Math.floor((n - 1) / 2), n - 1]) {
    if (k < 0) continue;
    const lab = svg('text', { x: x(k), y: H - 6, 'text-anchor': k === 0 ? 'start' : k === n - 1 ? 'end' : 'middle',
      'font-size': 11, fill: '#6b7585' });
    lab.textContent = new Date(tl.starts[k] * 1000).toISOString().slice(5, 16).replace('T', ' ');
    s.appendChild(lab);
  }
  layers.forEach((layer, j) => {
    const color = PALETTE[j % PALETTE.length];
    let d = '';
    for (let i = 0; i < n; i++) d += (i ? 'L' : 'M') + x(i).toFixed(1) + ',' + y(layer.top[i]).toFixed(1);
    for (let i = n - 1; i >= 0; i--) d += 'L' + x(i).toFixed(1) + ',' + y(layer.base[i]).toFixed(1);
    const p = svg('path', { d: d + 'Z', fill: color, 'fill-opacity': 0.75, stroke: color, 'stroke-width': 1 });
    const title = svg('title'); title.textContent = layer.name + ': ' + usd(sum(series[layer.name]));
    p.appendChild(title); s.appendChild(p);
    const item = el('span'); const sw = el('i'); sw.style.background = color; item.appendChild(sw);
    item.appendChild(document.createTextNode(layer.name + ' ' + usd(sum(series[layer.name]))));
    legend.appendChild(item);
  });
  box.appendChild(s);
}
function sum(a) { return a.reduce((x, y) => x + y, 0); }

function bars(id, items, fmt) {
  const box = $(id); clear(box);
  if (!items.length) { box.appendChild(el('p', 'empty', 'nothing in this window')); return; }
  const max = Math.max(...items.map((i) => i.value), 0) || 1;
  for (const it of items) {
    const row = el('div', 'row'); row.dataset.name = it.label; row.dataset.value = String(it.value);
    const name = el('span', 'name', it.label); name.title = it.label;
    const track = el('span', 'track'); const fill = el('span', 'fill'); fill.style.display = 'block';
    fill.style.width = ((it.value / max) * 100).toFixed(1) + '%'; track.appendChild(fill);
    row.append(name, track, el('span', 'val', fmt(it)));
    box.appendChild(row);
  }
}

// -- panels ------------------------------------------------------------------------------------------------

function renderSummary(d) {
  const t = d.totals;
  setVal('kpi-requests', num(t.requests), t.requests);
  setVal('kpi-cost', usd(t.cost_usd), t.cost_usd);
  setVal('kpi-errors', pct(t.error_rate), t.error_rate);
  setVal('kpi-fallbacks', pct(t.fallback_rate), t.fallback_rate);
  setVal('kpi-escalations', pct(t.escalation_rate), t.escalation_rate);
  const sv = d.savings;
  if (sv.flagship && sv.counterfactual_usd !== undefined) {
    setVal('kpi-savings', usd(sv.savings_usd), sv.savings_usd);
    $('kpi-savings-sub').textContent = sv.savings_pct === null ? 'vs ' + sv.flagship :
      sv.savings_pct.toFixed(1) + '% vs all on ' + sv.flagship;
  } else { setVal('kpi-savings', '–', ''); $('kpi-savings-sub').textContent = 'no flagship model'; }
  $('empty').hidden = !d.empty;
  const f = d.filters; const parts = [];
  if (f.tier) parts.push('tier ' + f.tier);
  if (f.principal) parts.push('principal ' + f.principal);
  $('empty-filters').textContent = parts.length ? ' for ' + parts.join(', ') : '';
  timelineChart(d.timeline);
  for (const c of ['principal', 'customer', 'department']) {
    const a = d.allocation[c];
    const items = a.top.map((r) => ({ label: r.name, value: r.cost_usd, requests: r.requests }));
    if (a.other) items.push({ label: '(others)', value: a.other.cost_usd, requests: a.other.requests });
    bars('alloc-' + c, items, (i) => usd(i.value) + ' · ' + num(i.requests) + ' req');
  }
  const dist = (rows, key) => rows.map((r) => ({ label: r[key], value: r.requests, share: r.share, cost: r.cost_usd }));
  const fmtShare = (i) => num(i.value) + ' · ' + pct(i.share);
  bars('route-tiers', dist(d.routing.tiers, 'tier'), fmtShare);
  bars('route-models', dist(d.routing.models, 'model'), fmtShare);
  bars('route-sources', dist(d.routing.sources, 'tier_source'), fmtShare);
  const tb = $('tiers-table').tBodies[0]; clear(tb);
  for (const r of d.tiers) {
    const tr = el('tr'); tr.dataset.tier = r.tier;
    for (const v of [r.tier, num(r.requests), num(r.escalated), pct(r.escalation_rate), num(r.fell_back),
      pct(r.fallback_rate), num(r.errors), pct(r.error_rate), usd(r.cost_usd)]) tr.appendChild(el('td', null, v));
    tb.appendChild(tr);
  }
  const sb = $('savings'); clear(sb);
  if (sv.flagship && sv.counterfactual_usd !== undefined) {
    const p = sv.price_per_million;
    sb.append(el('div', 'big', usd(sv.savings_usd) + ' saved'),
      el('div', null, 'actual ' + usd(sv.actual_usd) + ' vs ' + usd(sv.counterfactual_usd) + ' if every request had gone to '
        + sv.flagship),
      el('div', 'note', sv.flagship + ' at $' + p.input + ' in / $' + p.output + ' out / $' + p.cache_read
        + ' cache read per 1M tokens'));
  } else sb.appendChild(el('p', 'empty', 'no priced flagship model'));
  $('savings-method').textContent = sv.method;
  const lt = $('latency-table').tBodies[0]; clear(lt);
  for (const [name, key] of [['latency', 'latency_ms'], ['time to first token', 'ttft_ms']]) {
    const v = d.latency[key]; const tr = el('tr'); tr.dataset.metric = key;
    for (const c of [name, v.p50, v.p90, v.p95, v.p99]) tr.appendChild(el('td', null, c === null ? '–' : c));
    tr.appendChild(el('td', null, num(v.count))); lt.appendChild(tr);
  }
  $('latency-note').textContent = 'Percentiles of answered requests, ' + d.latency.precision + '.';
  renderBudgets(d.budgets, d.budget_state || {});
  const an = $('anomalies'); clear(an);
  if (!d.anomalies.length) an.appendChild(el('li', 'empty', 'none in this window'));
  for (const a of d.anomalies.slice().reverse()) {
    an.appendChild(el('li', null, new Date(a.ts * 1000).toISOString().slice(0, 19).replace('T', ' ') + ' ' + a.principal
      + ' on ' + a.model + ': ' + usd(a.bucket_spend_usd) + ' in a bucket (threshold ' + usd(a.threshold_usd) + ', '
      + a.action + ')'));
  }
}

// A figure as text with its raw value in data-value (what the browser test reads).
function figure(cls, text, raw) {
  const e = el('span', cls, text); e.dataset.value = raw === null || raw === undefined ? '' : String(raw); return e;
}

function renderBudgets(budgets, state) {
  const bb = $('budgets'); clear(bb);
  const src = $('budget-source');
  src.dataset.source = state.source || '';
  src.className = 'note' + (state.error ? ' error' : '');
  src.textContent = state.error ? state.error : 'Live from the ' + (state.backend || '') + ' state, what admission '
    + 'enforces: settled spend, + reserved by requests in flight. The ledger\'s settled spend is shown for comparison.';
  if (!budgets.length) bb.appendChild(el('p', 'empty', 'no budget caps configured (budgets.caps)'));
  for (const b of budgets) {
    const div = el('div', 'budget'); div.dataset.scope = b.scope; div.dataset.step = b.step || '';
    div.dataset.level = String(b.level);
    const head = el('div', 'head');
    head.append(el('strong', null, b.scope), el('span', 'step ' + (b.step || 'none'), b.step ? b.step : 'no step'));
    div.appendChild(head);
    for (const [label, cap, spent, reserved, ledger, key] of [
      ['today', b.daily_usd, b.spent_today_usd, b.reserved_today_usd, b.ledger_today_usd, 'today'],
      ['month', b.monthly_usd, b.spent_month_usd, b.reserved_month_usd, b.ledger_month_usd, 'month']]) {
      const line = el('div', 'period ' + key);
      line.append(el('span', 'label', label + ' '), figure('spent', usd(spent), spent));
      if (reserved) line.append(el('span', null, ' + '), figure('reserved', usd(reserved) + ' reserved', reserved));
      else line.append(figure('reserved', '', reserved));
      line.append(el('span', null, ' of '), figure('cap', cap ? usd(cap) : 'no cap', cap));
      if (cap) line.append(el('span', 'pct', ' (' + pct((spent + reserved) / cap) + ')'));
      line.append(el('span', 'note', ' · ledger '), figure('ledger note', usd(ledger), ledger));
      div.appendChild(line);
    }
    const track = el('div', 'track'); const fill = el('div', 'fill ' + (b.step || ''));
    fill.style.width = Math.min(100, b.level * 100).toFixed(1) + '%'; track.appendChild(fill); div.appendChild(track);
    const proj = el('div', 'note projection');
    if (b.projected_month_usd === null) proj.append(figure('projected', 'projection: too few days of history yet',
      null));
    else proj.append(el('span', null, 'projected month: '), figure('projected', usd(b.projected_month_usd),
      b.projected_month_usd), el('span', null, b.over_projection ? ' — over the cap' : ''));
    div.appendChild(proj);
    if (b.why) div.appendChild(el('div', 'note why', b.why));
    bb.appendChild(div);
  }
}

function reason(r) {
  const parts = [r.tier_source || '–'];
  if (r.requested_model) parts.push('asked ' + r.requested_model);
  if (r.escalations) parts.push(r.escalations + ' escalation' + (r.escalations > 1 ? 's' : ''));
  if (r.fallbacks) parts.push(r.fallbacks + ' fallback' + (r.fallbacks > 1 ? 's' : ''));
  for (const n of r.notes || []) parts.push(n);
  if (r.error) parts.push(r.error);
  return parts.join(' · ');
}

function renderRecent(d) {
  const tb = $('recent').tBodies[0];
  const first = st.seen.size === 0;
  const rows = [];
  for (const r of d.data) {
    const tr = el('tr'); tr.dataset.id = r.id;
    if (!first && !st.seen.has(r.id)) tr.className = 'fresh';
    const tags = el('td');
    for (const [k, v] of Object.entries(r.tags || {})) tags.appendChild(el('span', 'tag', k + '=' + v));
    const status = el('td', 'st-' + r.status, r.status + (r.http_status && r.http_status !== 200 ? ' ' + r.http_status : ''));
    tr.append(el('td', null, new Date(r.ts * 1000).toISOString().slice(11, 19)), el('td', null, r.principal),
      el('td', null, r.tier || '–'), el('td', null, r.model || '–'), el('td', null, reason(r)), status,
      el('td', null, usd(r.cost_usd)), el('td', null, r.latency_ms === null ? '–' : Math.round(r.latency_ms) + ' ms'),
      tags);
    tr.children[4].title = reason(r);
    rows.push(tr);
  }
  clear(tb);
  if (!rows.length) {
    const tr = el('tr'); const td = el('td', 'empty', 'no requests yet in this window'); td.colSpan = 9;
    tr.appendChild(td); tb.appendChild(tr);
  }
  for (const tr of rows) tb.appendChild(tr);
  st.seen = new Set(d.data.map((r) => r.id));
  $('recent-sub').textContent = 'newest first, refreshed every ' + (st.cfg.live_refresh_ms / 1000) + ' s';
}

// -- polling -----------------------------------------------------------------------------------------------

async function refreshSummary() {
  try {
    const d = await api('/dashboard/api/summary', st.filters);
    renderSummary(d); st.last = d.generated_at; message('');
  } catch (e) { handleError(e); }
}
async function refreshRecent() {
  try {
    const d = await api('/dashboard/api/recent', { ...st.filters, limit: '25' });
    renderRecent(d);
    $('live').className = 'live ok';
    $('live-text').textContent = 'live · ' + new Date(d.generated_at * 1000).toISOString().slice(11, 19) + ' UTC';
  } catch (e) { handleError(e); }
}
function stopTimers() {
  clearInterval(st.summaryTimer); clearInterval(st.liveTimer); st.summaryTimer = st.liveTimer = null;
}
function startTimers() {
  stopTimers();
  st.summaryTimer = setInterval(refreshSummary, st.cfg.summary_refresh_ms);
  st.liveTimer = setInterval(refreshRecent, st.cfg.live_refresh_ms);
}
async function reload() {
  writeFiltersToUrl(); st.seen = new Set();
  await Promise.all([refreshSummary(), refreshRecent()]);
  startTimers();
}

async function boot() {
  readFiltersFromUrl();
  try { st.cfg = await api('/dashboard/api/config'); } catch (e) { handleError(e); return; }
  $('login').hidden = true; $('main').hidden = false;
  setupControls(st.cfg);
  await reload();
}

document.addEventListener('DOMContentLoaded', () => {
  $('filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    st.filters = { window: $('window').value, tier: $('tier').value, principal: $('principal').value.trim() };
    if (st.cfg) reload(); else boot();
  });
  $('window').addEventListener('change', () => $('apply').click());
  $('tier').addEventListener('change', () => $('apply').click());
  $('login').addEventListener('submit', (ev) => {
    ev.preventDefault(); st.key = $('admin-key').value.trim(); sessionStorage.setItem(KEY_STORE, st.key);
    $('admin-key').value = ''; message(''); boot();
  });
  for (const [id, by] of [['by-model', 'by_model'], ['by-tier', 'by_tier']]) {
    $(id).addEventListener('click', () => {
      st.timelineBy = by; $('by-model').classList.toggle('on', by === 'by_model');
      $('by-tier').classList.toggle('on', by === 'by_tier'); refreshSummary();
    });
  }
  boot();
});
