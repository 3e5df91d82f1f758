// heartsink's status page: reads the public admin API only, refreshes the visible view every
// 2 s, asks for a token when the API answers 401 (kept in sessionStorage, this tab only), and
// offers admin actions only when GET /v1/whoami says the token is an admin's. Everything from
// the API is put in the page as text (textContent), never as markup.
'use strict';

const REFRESH_MS = 2000;
const SPAN_MS = 15 * 60 * 1000;
const TOKEN_KEY = 'heartsink.token';

const S = {
  token: sessionStorage.getItem(TOKEN_KEY) || '',
  role: null,
  view: null,
  arg: null,
  timer: null,
  busy: false,
  history: [],
  lastSample: 0,
  amphorae: { markers: [], marker: null, next: null, query: '' },
  failovers: { markers: [], marker: null, next: null },
};

class AuthNeeded extends Error {}

// ---- helpers -----------------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const k in attrs || {}) {
    if (k === 'class') n.className = attrs[k];
    else if (k.startsWith('data-')) n.setAttribute(k, attrs[k]);
    else if (k === 'onclick') n.addEventListener('click', attrs[k]);
    else n.setAttribute(k, attrs[k]);
  }
  for (const c of children) if (c != null) n.append(c instanceof Node ? c : String(c));
  return n;
}

function text(v) {
  if (v == null) return '—';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

function num(v, digits) {
  if (v == null) return '—';
  if (typeof v !== 'number') return String(v);
  return digits == null ? v.toLocaleString('en-US') : v.toLocaleString('en-US', { maximumFractionDigits: digits });
}

function statusClass(s) {
  if (s === 'ONLINE' || s === 'alive' || s === 'done' || s === 'ready') return 'ok';
  if (s === 'stale' || s === 'ERROR' || s === 'OFFLINE' || s === 'failed') return 'bad';
  if (s === 'DEGRADED' || s === 'pending' || s === 'in_progress' || s === 'DRAINING') return 'warn';
  return '';
}

function rows(table, headers, data) {
  const out = [];
  if (headers) out.push(el('tr', {}, ...headers.map(h => el('th', {}, h))));
  for (const r of data) out.push(r instanceof Node ? r : el('tr', {}, ...r.map(c => c instanceof Node ? c : el('td', {}, text(c)))));
  table.replaceChildren(...out);
}

function kv(table, pairs) {
  rows(table, null, pairs.map(([k, v]) => el('tr', {}, el('th', {}, k), v instanceof Node ? el('td', {}, v) : el('td', {}, text(v)))));
}

function badge(s) { return el('span', { class: statusClass(s) }, text(s)); }

function age(iso) {
  if (!iso) return '—';
  const s = (Date.now() - Date.parse(iso)) / 1000;
  return s < 0 ? 'now' : s < 120 ? s.toFixed(1) + ' s ago' : s < 7200 ? (s / 60).toFixed(1) + ' min ago' : (s / 3600).toFixed(1) + ' h ago';
}

function say(msg) { $('status-line').textContent = msg || ''; }

// ---- the API -----------------------------------------------------------------------------

async function api(path, method, body) {
  const headers = {};
  if (S.token) headers.Authorization = 'Bearer ' + S.token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method: method || 'GET', headers, cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await r.json(); } catch (_) { data = null; }
  if (r.status === 401) {
    askToken(S.token ? 'The token was refused (' + ((data && data.error) || '401') + '). Enter another one.' : null);
    throw new AuthNeeded();
  }
  if (!r.ok) throw new Error(`${method || 'GET'} ${path}: ${r.status} ${(data && data.error) || r.statusText}`);
  return data;
}

function askToken(why) {
  $('login').hidden = false;
  if (why) $('login-why').textContent = why;
  document.body.dataset.auth = 'needed';
  $('login-token').focus();
}

function useToken() {
  const t = $('login-token').value.trim();
  if (!t) return;
  S.token = t;
  sessionStorage.setItem(TOKEN_KEY, t);
  $('login-token').value = '';
  $('login').hidden = true;
  S.role = null;
  refresh();
}

function forgetToken() {
  S.token = '';
  S.role = null;
  sessionStorage.removeItem(TOKEN_KEY);
  refresh();
}

async function whoami() {
  if (S.role) return;
  const w = await api('/v1/whoami');
  S.role = w.role;
  document.body.dataset.role = w.role;
  $('who-role').textContent = w.auth ? `${w.name} (${w.role})` : 'no tokens configured';
  $('signout').hidden = !S.token;
  const c = await api('/v1/cluster');
  $('nav-cluster').hidden = c.mode === 'single';
  $('login').hidden = true;
  document.body.dataset.auth = 'ok';
}

const isAdmin = () => S.role === 'admin';

// An admin action behind a confirmation; refreshes the view after it. True when it was
// confirmed and done.
async function act(question, path, method, body) {
  if (!window.confirm(question)) return false;
  let done = false;
  try {
    await api(path, method, body);
    say('');
    done = true;
  } catch (e) {
    if (!(e instanceof AuthNeeded)) say(String(e.message || e));
  }
  refresh();
  return done;
}

// ---- views -------------------------------------------------------------------------------

async function overview() {
  const [st, fresh] = await Promise.all([
    api('/v1/stats'),
    api('/v1/history' + (S.lastSample ? '?since=' + S.lastSample : '')),
  ]);
  const lv = st.liveness, census = lv.census;
  const ingest = st.rx.reduce((a, r) => a + (r.rate_pps || 0), 0);
  const applied = st.workers.reduce((a, w) => a + (w.accepted_pps || 0), 0);
  const rl = st.latency_us.receive_to_applied;
  const card = (id, k, v, cls) => el('div', { class: 'card', id }, el('div', { class: 'v ' + (cls || '') }, v), el('div', { class: 'k' }, k));
  $('ov-cards').replaceChildren(
    card('ov-tracked', 'amphorae tracked', num(lv.tracked)),
    card('ov-unhealthy', 'unhealthy', num(census.unhealthy), census.unhealthy ? 'warn' : 'ok'),
    card('ov-alive', 'alive', num(census.by_liveness.alive), 'ok'),
    card('ov-stale', 'stale', num(census.by_liveness.stale), census.by_liveness.stale ? 'bad' : ''),
    card('ov-ingest', 'received/s', num(ingest, 0)),
    card('ov-applied', 'applied/s', num(applied, 0)),
    card('ov-p50', 'receive→applied p50 µs', num(rl.p50, 1)),
    card('ov-p99', 'receive→applied p99 µs', num(rl.p99, 1)),
  );
  const byStatus = Object.entries(census.by_status);
  rows($('ov-status'), ['status', 'amphorae'], byStatus.map(([s, n]) =>
    el('tr', { 'data-status': s }, el('td', {}, badge(s)), el('td', { class: 'num' }, num(n)))));
  const drops = Object.entries(st.dropped).filter(([, n]) => n > 0);
  rows($('ov-drops'), null, [
    ['received', num(st.received)], ['accepted', num(st.accepted)], ['dropped', num(st.dropped_total)],
    ...drops.map(([r, n]) => ['  dropped: ' + r, num(n)]),
    ['kernel drops', num(st.kernel_drops)],
  ].map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', { class: 'num' }, v))));
  rows($('ov-failovers'), ['state', 'records'], Object.entries(lv.failovers).map(([s, n]) =>
    el('tr', { 'data-state': s }, el('td', {}, badge(s)), el('td', { class: 'num' }, num(n)))));
  const sus = lv.suspended.map(r => {
    const { reason, ...rest } = r;
    const detail = Object.entries(rest).map(([k, v]) => `${k} ${typeof v === 'number' ? num(v, 2) : text(v)}`).join(', ');
    return el('li', { class: 'warn' }, reason + (detail ? ` (${detail})` : ''));
  });
  $('ov-suspended').replaceChildren(...(sus.length ? sus : [el('li', { class: 'ok' }, 'not suspended')]));
  kv($('ov-control'), [
    ['tick age', num(st.control.tick_age_s, 2) + ' s'],
    ['last round', num(st.control.tick_us_last, 0) + ' µs'],
    ['longest round', num(st.control.tick_us_max, 0) + ' µs'],
    ['generation', num(lv.generation)],
    ['uptime', num(st.uptime_s, 0) + ' s'],
    ['store', lv.store ? (lv.store.healthy ? 'writing' : 'failing: ' + text(lv.store.error)) : 'none'],
  ]);
  $('ov-keys').replaceChildren(...st.keys.fingerprints.map(f => el('li', {}, f)),
    ...(st.keys.insecure_default ? [el('li', { class: 'bad' }, 'insecure default key')] : []));
  for (const s of fresh.samples) S.history.push(s);
  if (fresh.samples.length) S.lastSample = fresh.samples[fresh.samples.length - 1].t_ms;
  const cut = Date.now() - SPAN_MS - 5000;
  while (S.history.length && S.history[0].t_ms < cut) S.history.shift();
  const pts = f => S.history.map(s => [s.t_ms, f(s)]);
  Charts.line($('chart-ingest'), [
    { name: 'received/s', points: pts(s => s.received_per_s) },
    { name: 'accepted/s', points: pts(s => s.accepted_per_s) },
  ], SPAN_MS);
  Charts.line($('chart-drops'), [
    { name: 'dropped/s', points: pts(s => s.dropped_per_s) },
    { name: 'kernel drops/s', points: pts(s => s.kernel_drops_per_s) },
  ], SPAN_MS);
  Charts.line($('chart-p99'), [{ name: 'p99 µs', points: pts(s => s.p99_us) }], SPAN_MS);
}

function amphoraQuery() {
  const q = new URLSearchParams();
  q.set('limit', '50');
  const v = id => $(id).value.trim();
  if (v('f-status')) q.set('status', v('f-status'));
  if (v('f-liveness')) q.set('liveness', v('f-liveness'));
  if (v('f-lb')) q.set('load_balancer', v('f-lb'));
  if (v('f-prefix')) q.set('prefix', v('f-prefix'));
  q.set('unhealthy_first', $('f-unhealthy').checked ? '1' : '0');
  return q;
}

async function amphorae() {
  const A = S.amphorae;
  const q = amphoraQuery();
  const key = q.toString();
  if (key !== A.query) { A.query = key; A.markers = []; A.marker = null; }
  if (A.marker) q.set('marker', A.marker);
  const page = await api('/v1/amphorae?' + q.toString());
  A.next = page.next_marker;
  const link = id => el('a', { href: '#/amphora/' + id, class: 'id' }, id);
  rows($('am-table'), ['id', 'status', 'liveness', 'last refresh', 'load balancer', 'zone', 'failover'],
    page.amphorae.map(a => el('tr', { 'data-id': a.id, 'data-liveness': a.liveness, 'data-status': a.operating_status },
      el('td', { class: 'id' }, link(a.id)), el('td', {}, badge(a.operating_status)), el('td', {}, badge(a.liveness)),
      el('td', {}, age(a.last_refresh)), el('td', { class: 'id' }, text(a.load_balancer)), el('td', {}, text(a.zone)),
      el('td', {}, a.failover ? `#${a.failover.id} ${a.failover.state}` : '—'))));
  const short = page.next_marker && page.amphorae.length < 50;
  $('am-page').textContent = `page ${A.markers.length + 1}, ${page.amphorae.length} shown` +
    (page.next_marker ? (short ? ` (${num(page.scanned)} amphorae searched; Next searches on)` : '') : ' (last page)');
  $('am-next').disabled = !page.next_marker;
  $('am-prev').disabled = A.markers.length === 0;
}

async function amphora(id) {
  const a = await api('/v1/amphorae/' + encodeURIComponent(id));
  $('ad-title').textContent = a.id;
  kv($('ad-summary'), [
    ['operating status', badge(a.operating_status)], ['liveness', badge(a.liveness)],
    ['last seen', `${text(a.last_seen)} (${num(a.last_seen_age_s, 1)} s ago)`], ['first seen', a.first_seen],
    ['seq', a.seq], ['ver', a.ver], ['heartbeats', num(a.heartbeats)], ['reordered', num(a.reordered)],
    ['restarts', a.restarts], ['load balancer', a.load_balancer], ['zone', a.zone],
    ['expected listeners', a.expected_listeners], ['failover', a.failover ? `#${a.failover.id} ${a.failover.state}` : null],
    ...(a.heard_by ? [['heard by', a.heard_by]] : []),
  ]);
  rows($('ad-transitions'), ['when', 'what', 'from → to'], a.recent_transitions.map(t => el('tr', {},
    el('td', {}, age(t.at)), el('td', {}, t.what), el('td', {}, badge(t.from), ' → ', badge(t.to)))));
  if (!a.recent_transitions.length) rows($('ad-transitions'), null, [['no transitions recorded']]);
  const stats = s => s ? Object.entries(s).map(([k, v]) => `${k} ${num(v)}`).join(', ') : '—';
  rows($('ad-listeners'), ['listener', 'status', 'operating status', 'reported', 'stats'], a.listeners.map(l =>
    el('tr', { 'data-listener': l.id }, el('td', { class: 'id' }, l.id), el('td', {}, l.status),
      el('td', {}, badge(l.operating_status)), el('td', {}, l.reported ? 'yes' : 'no'), el('td', {}, stats(l.stats)))));
  const poolRows = [];
  for (const p of a.pools) {
    poolRows.push(el('tr', { 'data-pool': p.id }, el('td', { class: 'id' }, 'pool ' + p.id), el('td', {}, p.status),
      el('td', {}, badge(p.operating_status)), el('td', {}, p.reported ? 'yes' : 'no')));
    for (const m of p.members) poolRows.push(el('tr', { 'data-member': m.id }, el('td', { class: 'id' }, '  member ' + m.id),
      el('td', {}, m.status), el('td', {}, badge(m.operating_status)), el('td', {}, m.reported ? 'yes' : 'no')));
  }
  rows($('ad-pools'), ['pool / member', 'status', 'operating status', 'reported'], poolRows);
  const actions = [];
  if (isAdmin()) {
    actions.push(el('button', { type: 'button', class: 'admin-action', id: 'act-failover', onclick: () =>
      act(`Start a manual failover of amphora ${a.id}?`, `/v1/amphorae/${a.id}/failover`, 'POST') }, 'Fail over…'));
    actions.push(el('button', { type: 'button', class: 'admin-action danger', id: 'act-forget', onclick: async () => {
      if (await act(`Forget amphora ${a.id}? It is new again if it beats.`, `/v1/amphorae/${a.id}`, 'DELETE')) {
        location.hash = '#/amphorae';
      }
    } }, 'Forget…'));
  }
  $('ad-actions').replaceChildren(...actions);
}

async function failovers() {
  const F = S.failovers;
  const page = await api('/v1/failovers?limit=100' + (F.marker != null ? '&marker=' + F.marker : ''));
  F.next = page.next_marker;
  const recs = page.failovers || [];
  const cols = ['id', 'amphora', 'reason', 'state', 'attempts', 'action', 'created', 'updated', 'error'];
  const when = ns => ns ? new Date(ns / 1e6).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z') : null;
  const pick = (r, c) => c === 'created' ? when(r.created_ns) : c === 'updated' ? when(r.updated_ns) : r[c];
  rows($('fo-table'), cols, recs.map(r => el('tr', { 'data-failover': r.id }, ...cols.map(c => c === 'state'
    ? el('td', {}, badge(r.state)) : c === 'amphora' ? el('td', { class: 'id' }, el('a', { href: '#/amphora/' + r.amphora }, r.amphora))
    : el('td', {}, text(pick(r, c)))))));
  if (!recs.length) rows($('fo-table'), null, [['no failover records']]);
  $('fo-next').disabled = F.next == null;
}

async function services() {
  const types = await api('/v1/service-types');
  const blocks = [];
  for (const t of types || []) {
    const list = await api('/v1/services?type=' + encodeURIComponent(t));
    const table = el('table', { class: 'list' });
    const heads = ['addr', 'id', 'score', 'locked', 'tags'];
    if (isAdmin()) heads.push('');
    rows(table, heads, (list || []).map(s => {
      const cells = [el('td', { class: 'id' }, s.addr), el('td', { class: 'id' }, text(s.id)),
        el('td', { class: 'num' }, text(s.score)), el('td', {}, s.locked ? 'locked' : ''), el('td', {}, text(s.tags))];
      if (isAdmin()) {
        cells.push(el('td', {}, s.locked
          ? el('button', { type: 'button', class: 'admin-action', onclick: () =>
            act(`Unlock the score of ${t} ${s.addr}?`, '/v1/services/unlock', 'POST', { type: t, addr: s.addr }) }, 'Unlock…')
          : el('button', { type: 'button', class: 'admin-action', onclick: () => {
            const v = window.prompt(`Lock the score of ${t} ${s.addr} at (0–100):`, String(s.score));
            if (v == null) return;
            const score = Number(v);
            if (!Number.isInteger(score) || score < 0 || score > 100) { say('a score is an integer from 0 to 100'); return; }
            act(`Lock the score of ${t} ${s.addr} at ${score}?`, '/v1/services/lock', 'POST', { type: t, addr: s.addr, score });
          } }, 'Lock…')));
      }
      return el('tr', { 'data-service': s.addr }, ...cells);
    }));
    blocks.push(el('h4', {}, `${t} (${(list || []).length})`), table);
  }
  $('sv-types').replaceChildren(...(blocks.length ? blocks : [el('p', {}, 'no service types configured')]));
  const pools = await api('/v1/pools');
  rows($('sv-pools'), ['pool', 'targets'], Object.entries(pools || {}).map(([n, t]) => [n, t]));
  if (!Object.keys(pools || {}).length) rows($('sv-pools'), null, [['no pools']]);
}

async function volumes() {
  const [vols, st] = await Promise.all([api('/v1/volumes'), api('/v1/stats')]);
  const list = Array.isArray(vols) ? vols : (vols && vols.volumes) || [];
  const cols = list.length ? Object.keys(list[0]) : [];
  rows($('vo-table'), cols, list.map(v => el('tr', { 'data-volume': v.id },
    ...cols.map(c => c === 'state' ? el('td', {}, badge(v[c])) : el('td', {}, text(v[c]))))));
  if (!list.length) rows($('vo-table'), null, [['no volumes']]);
  const p = st.control_plane;
  kv($('vo-sched'), [['volumes known', p.volumes], ['leader lease held', p.leader ? 'yes' : 'no'],
    ...Object.entries(p.scheduler || {}).map(([k, v]) => [k.replace(/_/g, ' '), v])]);
}

async function cluster() {
  const c = await api('/v1/cluster');
  const members = c.members || [];
  const scalar = Object.entries(c).filter(([k]) => k !== 'members');
  kv($('cl-summary'), scalar.map(([k, v]) => [k.replace(/_/g, ' '), v]));
  const cols = members.length ? Object.keys(members[0]) : [];
  rows($('cl-members'), cols, members.map(m => cols.map(k => m[k])));
  if (!members.length) rows($('cl-members'), null, [[c.mode === 'single' ? 'cluster mode is off' : 'no members known']]);
}

const VIEWS = { overview, amphorae, amphora, failovers, services, volumes, cluster };

// ---- routing and refresh -----------------------------------------------------------------

function route() {
  const [view, ...rest] = (location.hash.replace(/^#\/?/, '') || 'overview').split('/');
  S.view = Object.hasOwn(VIEWS, view) ? view : 'overview';
  S.arg = rest.join('/') || null;
  for (const s of document.querySelectorAll('.view')) s.hidden = s.id !== 'view-' + S.view;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === (S.view === 'amphora' ? 'amphorae' : S.view));
  document.body.dataset.view = S.view;
  document.body.dataset.loaded = '0';
  refresh();
}

async function refresh() {
  clearTimeout(S.timer);
  if (S.busy) { S.timer = setTimeout(refresh, 100); return; }
  S.busy = true;
  const view = S.view;
  const started = Date.now();
  try {
    await whoami();
    await VIEWS[view](S.arg);
    if (view === S.view) {
      document.body.dataset.loaded = '1';
      document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
    }
    say('');
    $('refreshed').textContent = 'Last: ' + new Date().toLocaleTimeString();
  } catch (e) {
    if (!(e instanceof AuthNeeded)) say(String(e.message || e));
  } finally {
    S.busy = false;
  }
  // Every REFRESH_MS from the start of the last refresh (at once if it took longer).
  if (document.body.dataset.auth !== 'needed') S.timer = setTimeout(refresh, Math.max(0, REFRESH_MS - (Date.now() - started)));
}

function page(state, dir) {
  if (dir === 'first') { state.markers = []; state.marker = null; }
  else if (dir === 'next' && state.next != null) { state.markers.push(state.marker); state.marker = state.next; }
  else if (dir === 'prev' && state.markers.length) state.marker = state.markers.pop();
  refresh();
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-go').addEventListener('click', useToken);
  $('login-token').addEventListener('keydown', e => { if (e.key === 'Enter') useToken(); });
  $('signout').addEventListener('click', forgetToken);
  $('f-apply').addEventListener('click', () => page(S.amphorae, 'first'));
  for (const id of ['f-lb', 'f-prefix']) $(id).addEventListener('keydown', e => { if (e.key === 'Enter') page(S.amphorae, 'first'); });
  $('am-first').addEventListener('click', () => page(S.amphorae, 'first'));
  $('am-next').addEventListener('click', () => page(S.amphorae, 'next'));
  $('am-prev').addEventListener('click', () => page(S.amphorae, 'prev'));
  $('fo-first').addEventListener('click', () => page(S.failovers, 'first'));
  $('fo-next').addEventListener('click', () => page(S.failovers, 'next'));
  window.addEventListener('hashchange', route);
  route();
});
