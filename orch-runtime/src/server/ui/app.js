// orch web UI: a small single-page app over the JSON API (/api/v1). No framework, no build
// step, nothing fetched from elsewhere. Every string from the server is inserted as text
// (document.createTextNode / textContent); the only markup taken from the server is the
// process drawing, an SVG document that is parsed, stripped of scripts and scoped.
'use strict';

(() => {
  const API = '/api/v1';
  const STATUSES = ['queued', 'running', 'suspended', 'completed', 'failed', 'cancelled', 'terminated', 'incompatible'];
  const FINAL = new Set(['completed', 'failed', 'cancelled', 'terminated', 'incompatible']);
  const MAJOR_KINDS = new Set(['step', 'sleep', 'deadline', 'signal', 'child']);
  const POLL_MS = 1000;
  const LIST_REFRESH_MS = 4000;

  const main = document.getElementById('o-main');
  const app = { whoami: null, readonly: false, gen: 0, timers: new Set() };

  // ---------------------------------------------------------------- DOM helpers

  function append(el, kids) {
    for (const k of kids.flat(Infinity)) {
      if (k === null || k === undefined || k === false) continue;
      el.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return el;
  }

  function setAttrs(el, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
      else if (k === 'style' && typeof v === 'object') Object.assign(el.style, v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'value') el.value = v;
      else if (k === 'checked' || k === 'selected' || k === 'disabled') el[k] = !!v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }

  /** Creates an HTML element; children that are not nodes are inserted as text. */
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    return append(el, kids);
  }

  /** Creates an SVG element. */
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    setAttrs(el, attrs);
    return append(el, kids);
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- formatting

  function parseTime(iso) {
    if (!iso) return NaN;
    return Date.parse(iso);
  }

  function relTime(iso, now = Date.now()) {
    const t = parseTime(iso);
    if (Number.isNaN(t)) return '—';
    const d = now - t;
    const a = Math.abs(d);
    let text;
    if (a < 5000) return d >= 0 ? 'just now' : 'in a moment';
    if (a < 60e3) text = `${Math.round(a / 1e3)} s`;
    else if (a < 3600e3) text = `${Math.round(a / 60e3)} min`;
    else if (a < 86400e3) text = `${Math.round(a / 3600e3)} h`;
    else if (a < 30 * 86400e3) text = `${Math.round(a / 86400e3)} d`;
    else return new Date(t).toLocaleDateString();
    return d >= 0 ? `${text} ago` : `in ${text}`;
  }

  function exactTime(iso) {
    const t = parseTime(iso);
    if (Number.isNaN(t)) return '';
    const d = new Date(t);
    return `${d.toLocaleString()} (${iso})`;
  }

  /** A relative time ("3 min ago") with the exact time as its tooltip. */
  function timeEl(iso) {
    if (!iso) return h('span', { class: 'o-muted' }, '—');
    return h('time', { datetime: iso, title: exactTime(iso), class: 'o-time' }, relTime(iso));
  }

  function fmtDuration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 10e3) return `${(ms / 1000).toFixed(2)} s`;
    if (ms < 60e3) return `${(ms / 1000).toFixed(1)} s`;
    const m = Math.floor(ms / 60e3);
    if (m < 60) return `${m} min ${Math.round((ms % 60e3) / 1000)} s`;
    const hr = Math.floor(m / 60);
    if (hr < 48) return `${hr} h ${m % 60} min`;
    return `${Math.floor(hr / 24)} d ${hr % 24} h`;
  }

  function shortVersion(v) {
    return v ? String(v).slice(0, 8) : '—';
  }

  function compactJson(v, max = 120) {
    let t;
    if (typeof v === 'string') t = v;
    else {
      try { t = JSON.stringify(v); } catch (e) { t = String(v); }
    }
    if (t === undefined) t = '';
    return t.length > max ? `${t.slice(0, max - 1)}…` : t;
  }

  function plural(n, one, many) {
    return `${n} ${n === 1 ? one : (many || `${one}s`)}`;
  }

  function statusBadge(status, extra) {
    return h('span', Object.assign({
      class: `o-badge o-st-${String(status).replace(/[^a-z_-]/gi, '')}`,
      'data-status': status,
    }, extra || {}), status);
  }

  function stateBadge(state) {
    return h('span', { class: `o-badge o-es-${String(state).replace(/[^a-z_-]/gi, '')}`, 'data-state': state }, state);
  }

  // ---------------------------------------------------------------- JSON view

  /** Pretty, syntax-coloured, collapsible JSON. */
  function jsonView(value, opts = {}) {
    const box = h('div', { class: 'o-json', 'data-testid': opts.testid || null });
    box.append(jsonNode(value, 0, [], [], opts.openDepth === undefined ? 3 : opts.openDepth));
    return box;
  }

  function jsonScalar(v) {
    if (v === null) return h('span', { class: 'o-j-null' }, 'null');
    switch (typeof v) {
      case 'string': return h('span', { class: 'o-j-str' }, JSON.stringify(v));
      case 'number': return h('span', { class: 'o-j-num' }, String(v));
      case 'boolean': return h('span', { class: 'o-j-bool' }, String(v));
      default: return h('span', {}, String(v));
    }
  }

  function jsonNode(v, depth, prefix, suffix, openDepth) {
    const isArr = Array.isArray(v);
    if (v === null || typeof v !== 'object') {
      return h('div', { class: 'o-j-row' }, prefix, jsonScalar(v), suffix);
    }
    const keys = isArr ? v.map((_, i) => i) : Object.keys(v);
    const [open, close] = isArr ? ['[', ']'] : ['{', '}'];
    if (!keys.length) return h('div', { class: 'o-j-row' }, prefix, h('span', { class: 'o-j-p' }, open + close), suffix);
    const body = h('div', { class: 'o-j-body' });
    keys.forEach((k, i) => {
      const pre = isArr ? [] : [h('span', { class: 'o-j-key' }, JSON.stringify(k)), h('span', { class: 'o-j-p' }, ': ')];
      const post = i < keys.length - 1 ? [h('span', { class: 'o-j-p' }, ',')] : [];
      body.append(jsonNode(v[k], depth + 1, pre, post, openDepth));
    });
    const count = isArr ? plural(keys.length, 'item') : plural(keys.length, 'key');
    return h('details', { class: 'o-j-c', open: depth < openDepth },
      h('summary', {}, prefix, h('span', { class: 'o-j-p' }, open),
        h('span', { class: 'o-j-more' }, ` ${count} `, h('span', { class: 'o-j-p' }, close), suffix)),
      body,
      h('div', { class: 'o-j-row o-j-close' }, h('span', { class: 'o-j-p' }, close), suffix));
  }

  /** A value for a table cell: scalars as text, the rest as compact JSON. */
  function valueCell(v) {
    if (v === null) return h('span', { class: 'o-j-null' }, 'null');
    if (typeof v === 'string') return h('span', {}, v);
    if (typeof v === 'number' || typeof v === 'boolean') return h('span', { class: 'o-mono' }, String(v));
    return h('span', { class: 'o-mono', title: compactJson(v, 2000) }, compactJson(v, 160));
  }

  function kvTable(obj, opts = {}) {
    const rows = Object.entries(obj).map(([k, v]) => h('tr', { 'data-key': k },
      h('th', {}, k),
      h('td', {}, opts.link ? opts.link(k, v, valueCell(v)) : valueCell(v))));
    return h('table', { class: 'o-kv', 'data-testid': opts.testid || null }, h('tbody', {}, rows));
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function getToken() {
    try { return localStorage.getItem('orch.token'); } catch (e) { return null; }
  }

  function setToken(t) {
    try {
      if (t) localStorage.setItem('orch.token', t);
      else localStorage.removeItem('orch.token');
    } catch (e) { /* storage disabled: the token lasts for this page only */ }
  }

  async function api(path, opts = {}) {
    const headers = { Accept: opts.text ? 'image/svg+xml, text/plain, */*' : 'application/json' };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    let body;
    if (opts.body !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.body);
    }
    let res;
    try {
      res = await fetch(API + path, { method: opts.method || 'GET', headers, body, cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, 'network', `Cannot reach the orch server (${e.message}).`);
    }
    if (!res.ok) {
      let code = `http_${res.status}`;
      let message = `${res.status} ${res.statusText}`;
      try {
        const j = await res.json();
        if (j && j.error) {
          code = j.error.code || code;
          message = j.error.message || message;
        }
      } catch (e) { /* not JSON: keep the status line */ }
      if (res.status === 401) tokenPrompt(message);
      throw new ApiError(res.status, code, message);
    }
    if (opts.text) return res.text();
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v === null || v === undefined || v === '') continue;
      q.set(k, String(v));
    }
    const t = q.toString();
    return t ? `?${t}` : '';
  }

  // ---------------------------------------------------------------- toasts, dialogs

  function toast(message, kind = 'ok') {
    const box = document.getElementById('o-toasts');
    const el = h('div', { class: `o-toast o-toast-${kind}`, role: kind === 'error' ? 'alert' : 'status', 'data-testid': 'toast' }, message);
    box.append(el);
    setTimeout(() => el.classList.add('o-toast-out'), 4200);
    setTimeout(() => el.remove(), 4700);
  }

  /**
   * A modal form. `fields` are nodes placed in the form; `submit(form)` returns a promise;
   * its rejection's message is shown in the dialog, which stays open.
   */
  function openDialog({ title, intro, fields, submitLabel, danger, testid, submit, valid }) {
    const error = h('div', { class: 'o-dialog-error', role: 'alert', 'data-testid': 'dialog-error', hidden: true });
    const ok = h('button', { type: 'submit', class: `o-btn ${danger ? 'o-btn-danger' : 'o-btn-primary'}`, 'data-testid': 'dialog-submit' }, submitLabel || 'OK');
    const cancel = h('button', { type: 'button', class: 'o-btn', 'data-testid': 'dialog-cancel' }, 'Cancel');
    const form = h('form', { method: 'dialog', class: 'o-dialog-form', novalidate: true },
      h('h2', {}, title),
      intro ? h('p', { class: 'o-dialog-intro' }, intro) : null,
      fields || [],
      error,
      h('div', { class: 'o-dialog-buttons' }, cancel, ok));
    const dlg = h('dialog', { class: 'o-dialog', 'data-testid': testid || 'dialog' }, form);
    const refresh = () => { ok.disabled = valid ? !valid(form) : false; };
    form.addEventListener('input', refresh);
    form.addEventListener('change', refresh);
    cancel.addEventListener('click', () => dlg.close());
    dlg.addEventListener('close', () => dlg.remove());
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (valid && !valid(form)) return;
      ok.disabled = true;
      error.hidden = true;
      const label = ok.textContent;
      ok.textContent = 'Working…';
      try {
        await submit(form);
        dlg.close();
      } catch (e) {
        error.textContent = e.message || String(e);
        error.hidden = false;
        ok.disabled = false;
      } finally {
        ok.textContent = label;
      }
    });
    document.body.append(dlg);
    refresh();
    dlg.showModal();
    const first = form.querySelector('input, textarea, select');
    if (first) first.focus();
    return dlg;
  }

  function field(label, control, hint) {
    return h('label', { class: 'o-field' }, h('span', { class: 'o-field-label' }, label), control,
      hint ? h('span', { class: 'o-field-hint' }, hint) : null);
  }

  /** A textarea that must hold valid JSON; shows the parse error under it. */
  function jsonField(label, name, initial, testid) {
    const area = h('textarea', { name, rows: 6, spellcheck: 'false', class: 'o-mono', 'data-testid': testid }, initial);
    const msg = h('span', { class: 'o-field-hint' }, 'JSON');
    const check = () => {
      try {
        JSON.parse(area.value);
        area.classList.remove('o-invalid');
        msg.textContent = 'Valid JSON';
        msg.classList.remove('o-field-bad');
        return true;
      } catch (e) {
        area.classList.add('o-invalid');
        msg.textContent = `Not valid JSON: ${e.message}`;
        msg.classList.add('o-field-bad');
        return false;
      }
    };
    area.addEventListener('input', check);
    check();
    return { node: h('label', { class: 'o-field' }, h('span', { class: 'o-field-label' }, label), area, msg), valid: check, area };
  }

  // ---------------------------------------------------------------- auth

  let promptOpen = false;

  function tokenPrompt(message) {
    if (promptOpen) return;
    promptOpen = true;
    const input = h('input', { type: 'password', name: 'token', autocomplete: 'off', required: true, 'data-testid': 'token-input', placeholder: 'secret' });
    const dlg = openDialog({
      title: 'Access token needed',
      intro: getToken()
        ? `The server refused the stored token (${message}). Enter another one.`
        : 'This orch server requires a token. Ask its operator for an admin or read-only token; it is kept in this browser only.',
      fields: [field('Token', input)],
      submitLabel: 'Save token',
      testid: 'token-dialog',
      valid: () => input.value.trim().length > 0,
      submit: async () => {
        setToken(input.value.trim());
        await start();
      },
    });
    dlg.addEventListener('close', () => { promptOpen = false; });
  }

  function renderWho() {
    const box = document.getElementById('o-who');
    box.replaceChildren();
    const w = app.whoami;
    if (!w) return;
    box.append(
      h('span', { class: 'o-who-actor', title: 'Signed in as' }, w.actor),
      h('span', { class: `o-who-role ${w.role === 'read' ? 'o-who-read' : ''}`, 'data-testid': 'role' }, w.role === 'read' ? 'read-only' : w.role));
    if (getToken()) {
      box.append(h('button', {
        class: 'o-btn o-btn-ghost o-btn-sm',
        onclick: () => { setToken(null); location.reload(); },
        title: 'Forget the token stored in this browser',
      }, 'Sign out'));
    }
  }

  // ---------------------------------------------------------------- router

  function parseHash() {
    let raw = location.hash.replace(/^#/, '');
    if (!raw) raw = '/';
    const qi = raw.indexOf('?');
    const path = qi < 0 ? raw : raw.slice(0, qi);
    const params = new URLSearchParams(qi < 0 ? '' : raw.slice(qi + 1));
    const parts = path.split('/').filter(Boolean).map((p) => {
      try { return decodeURIComponent(p); } catch (e) { return p; }
    });
    return { parts, params };
  }

  function stopTimers() {
    for (const t of app.timers) clearTimeout(t);
    app.timers.clear();
  }

  /** Context of one rendered page: stale async work checks `alive()` before touching the DOM. */
  function pageContext() {
    const gen = ++app.gen;
    return {
      alive: () => gen === app.gen,
      later(fn, ms) {
        const t = setTimeout(() => { app.timers.delete(t); if (gen === app.gen) fn(); }, ms);
        app.timers.add(t);
      },
    };
  }

  function setNav(which) {
    for (const a of document.querySelectorAll('.o-nav a')) {
      a.classList.toggle('o-active', a.dataset.nav === which);
    }
  }

  async function route() {
    stopTimers();
    const ctx = pageContext();
    const { parts, params } = parseHash();
    const [section, id] = parts;
    try {
      if (!section) {
        setNav('dashboard');
        await dashboardPage(ctx);
      } else if (section === 'definitions' && parts.length === 1) {
        setNav('definitions');
        await definitionsPage(ctx);
      } else if (section === 'definitions' && parts.length === 2) {
        setNav('definitions');
        await definitionPage(ctx, id);
      } else if (section === 'instances' && parts.length === 1) {
        setNav('instances');
        await instancesPage(ctx, params);
      } else if (section === 'instances' && parts.length === 2) {
        setNav('instances');
        await instancePage(ctx, id);
      } else if (section === 'nodes' && parts.length === 1) {
        setNav('nodes');
        await nodesPage(ctx);
      } else if (section === 'queues' && parts.length === 1) {
        setNav('queues');
        await queuesPage(ctx);
      } else {
        setNav('');
        show(ctx, notFound('There is no such page.'));
      }
    } catch (e) {
      if (ctx.alive()) show(ctx, errorCard(e));
    }
  }

  function show(ctx, ...nodes) {
    if (!ctx.alive()) return;
    main.replaceChildren(...nodes);
  }

  function loading(text) {
    return h('div', { class: 'o-loading', 'data-testid': 'loading' }, h('span', { class: 'o-spinner' }), text || 'Loading…');
  }

  function errorCard(e) {
    if (e instanceof ApiError && e.status === 404) return notFound(e.message);
    return h('div', { class: 'o-card o-error-card', 'data-testid': 'page-error' },
      h('h2', {}, e instanceof ApiError && e.status === 401 ? 'Access token needed' : 'Something went wrong'),
      h('p', {}, e.message || String(e)),
      h('button', { class: 'o-btn', onclick: () => route() }, 'Try again'));
  }

  function notFound(message) {
    return h('div', { class: 'o-card o-error-card', 'data-testid': 'not-found' },
      h('h2', {}, 'Not found'), h('p', {}, message), h('a', { href: '#/', class: 'o-btn' }, 'Back to the dashboard'));
  }

  function pageHead(title, sub, right) {
    return h('div', { class: 'o-page-head' },
      h('div', {}, h('h1', {}, title), sub ? h('div', { class: 'o-page-sub' }, sub) : null),
      right ? h('div', { class: 'o-page-actions' }, right) : null);
  }

  function card(title, body, opts = {}) {
    return h('section', { class: `o-card ${opts.class || ''}`, 'data-testid': opts.testid || null },
      title ? h('div', { class: 'o-card-head' }, h('h2', {}, title), opts.right || null) : null,
      body);
  }

  // ---------------------------------------------------------------- dashboard

  function instancesHref(filters) {
    return `#/instances${query(filters)}`;
  }

  async function dashboardPage(ctx) {
    show(ctx, loading());
    const root = h('div', { class: 'o-page', 'data-testid': 'dashboard' });
    let first = true;
    const refresh = async () => {
      const [defs, stats, failures] = await Promise.all([
        api('/definitions'),
        api('/stats?window=24h&bucket=1h').catch((e) => ({ error: e })),
        api('/instances?status=failed&limit=10').catch((e) => ({ error: e })),
      ]);
      if (!ctx.alive()) return;
      if (failures.instances) await failureReasons(failures.instances);
      if (!ctx.alive()) return;
      renderDashboard(root, defs.definitions || [], stats, failures);
      if (first) { show(ctx, root); first = false; }
    };
    const loop = () => refresh().catch(() => {}).finally(() => ctx.later(loop, LIST_REFRESH_MS));
    await refresh();
    ctx.later(loop, LIST_REFRESH_MS);
  }

  function renderDashboard(root, defs, stats, failures) {
    const totals = Object.fromEntries(STATUSES.map((st) => [st, 0]));
    for (const d of defs) for (const st of STATUSES) totals[st] += (d.counts && d.counts[st]) || 0;
    const all = STATUSES.reduce((a, st) => a + totals[st], 0);

    const tiles = h('div', { class: 'o-tiles' },
      h('a', { class: 'o-tile', href: '#/instances', 'data-testid': 'tile-all' },
        h('span', { class: 'o-tile-n' }, String(all)), h('span', { class: 'o-tile-l' }, 'instances')),
      STATUSES.filter((st) => totals[st] > 0 || ['running', 'suspended', 'completed', 'failed'].includes(st)).map((st) =>
        h('a', { class: `o-tile o-tile-${st}`, href: instancesHref({ status: st }), 'data-testid': `tile-${st}` },
          h('span', { class: 'o-tile-n' }, String(totals[st])), h('span', { class: 'o-tile-l' }, st))));

    const failedSteps = new Map();
    if (stats && !stats.error) {
      for (const f of stats.failed_steps || []) {
        if (!failedSteps.has(f.workflow)) failedSteps.set(f.workflow, []);
        failedSteps.get(f.workflow).push(f);
      }
    }

    const rows = defs.map((d) => {
      const counts = d.counts || {};
      const total = STATUSES.reduce((a, st) => a + (counts[st] || 0), 0);
      const fs = (failedSteps.get(d.name) || []).sort((a, b) => b.count - a.count).slice(0, 2);
      return h('tr', { 'data-testid': 'workflow-row', 'data-workflow': d.name },
        h('td', {}, h('a', { href: `#/definitions/${enc(d.name)}`, class: 'o-strong' }, d.name),
          h('div', { class: 'o-muted o-small o-mono', title: d.version }, `v ${shortVersion(d.version)}`)),
        h('td', { class: 'o-num' }, h('a', { href: instancesHref({ workflow: d.name }) }, String(total))),
        h('td', {}, statusBar(counts, total), countPills(counts, d.name)),
        h('td', {}, stats && !stats.error ? sparkline(stats, d.name) : h('span', { class: 'o-muted' }, '—')),
        h('td', {}, fs.length
          ? fs.map((f) => h('div', { class: 'o-small' }, h('span', { class: 'o-mono' }, f.step), h('span', { class: 'o-muted' }, ` × ${f.count}`)))
          : h('span', { class: 'o-muted' }, 'none')));
    });

    const wfTable = defs.length
      ? h('table', { class: 'o-table', 'data-testid': 'workflows-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Workflow'), h('th', { class: 'o-num' }, 'Instances'),
          h('th', {}, 'By status'), h('th', {}, 'Started, last 24 h'), h('th', {}, 'Failing steps (24 h)'))),
        h('tbody', {}, rows))
      : h('div', { class: 'o-empty' }, 'No workflows are registered in this process.');

    let failBody;
    if (failures.error) failBody = h('div', { class: 'o-empty' }, `Could not load failures: ${failures.error.message}`);
    else if (!failures.instances || !failures.instances.length) failBody = h('div', { class: 'o-empty o-good' }, 'No failed instances.');
    else {
      failBody = h('table', { class: 'o-table o-clickable', 'data-testid': 'failures-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Instance'), h('th', {}, 'Workflow'), h('th', {}, 'Failed step'), h('th', {}, 'Error'), h('th', {}, 'When'))),
        h('tbody', {}, failures.instances.map((i) => rowLink(h('tr', { 'data-testid': 'failure-row', 'data-id': i.id },
          h('td', {}, h('a', { href: `#/instances/${enc(i.id)}`, class: 'o-mono o-strong' }, i.id)),
          h('td', {}, i.workflow),
          h('td', {}, i.failed_step ? h('span', { class: 'o-mono o-fail-step' }, i.failed_step) : h('span', { class: 'o-muted' }, '—')),
          h('td', { class: 'o-err-cell', title: errorText(i) }, compactJson(errorText(i), 110)),
          h('td', {}, timeEl(i.updated_at))), `#/instances/${enc(i.id)}`))));
    }

    const activity = stats && !stats.error ? `${fmtTimeShort(stats.from)} – ${fmtTimeShort(stats.to)}` : '';
    root.replaceChildren(
      pageHead('Dashboard', 'Every workflow this server runs, and what needs attention.'),
      tiles,
      card('Workflows', wfTable, { right: activity ? h('span', { class: 'o-muted o-small' }, `activity: ${activity}`) : null }),
      card('Recent failures', failBody, {
        testid: 'recent-failures',
        right: h('a', { href: instancesHref({ status: 'failed' }), class: 'o-small' }, 'All failed instances →'),
      }));
  }

  function fmtTimeShort(iso) {
    const t = parseTime(iso);
    if (Number.isNaN(t)) return '';
    return new Date(t).toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  }

  // Why each failed instance failed: `error` when it ended without an output, else the `Err`
  // of its output (not in search results, so read once per instance version).
  const reasons = new Map();

  async function failureReasons(list) {
    await Promise.all(list.filter((i) => !i.error && !reasons.has(`${i.id}@${i.updated_at}`)).map(async (i) => {
      try {
        const full = await api(`/instances/${enc(i.id)}`);
        reasons.set(`${i.id}@${i.updated_at}`, full.error || errorFromOutput(full.output) || '');
      } catch (e) { /* shown without a reason */ }
    }));
  }

  function errorText(i) {
    return i.error || reasons.get(`${i.id}@${i.updated_at}`) || '';
  }

  function rowLink(tr, href) {
    tr.addEventListener('click', (ev) => {
      if (ev.target.closest('a, button, input, select')) return;
      if (window.getSelection && String(window.getSelection())) return;
      location.hash = href;
    });
    return tr;
  }

  function statusBar(counts, total) {
    const bar = h('div', { class: 'o-sbar', title: STATUSES.filter((st) => counts[st]).map((st) => `${st}: ${counts[st]}`).join(', ') });
    if (!total) return bar;
    for (const st of STATUSES) {
      const n = counts[st] || 0;
      if (!n) continue;
      bar.append(h('span', { class: `o-sbar-seg o-bg-${st}`, style: { width: `${(100 * n) / total}%` } }));
    }
    return bar;
  }

  function countPills(counts, workflow) {
    return h('div', { class: 'o-pills' }, STATUSES.filter((st) => counts[st]).map((st) =>
      h('a', { class: `o-pill o-st-${st}`, href: instancesHref({ workflow, status: st }), 'data-testid': `count-${st}` },
        h('b', {}, String(counts[st])), ` ${st}`)));
  }

  /** Stacked bars per time bucket (completed, failed, other) from stats.series. */
  function sparkline(stats, workflow) {
    const from = parseTime(stats.from);
    const to = parseTime(stats.to);
    const bucket = stats.bucket_ms || 3600e3;
    const n = Math.max(1, Math.min(200, Math.ceil((to - from) / bucket)));
    const buckets = Array.from({ length: n }, () => ({ completed: 0, failed: 0, other: 0 }));
    for (const p of stats.series || []) {
      if (p.workflow !== workflow) continue;
      const i = Math.min(n - 1, Math.max(0, Math.floor((parseTime(p.start) - from) / bucket)));
      const key = p.status === 'completed' || p.status === 'failed' ? p.status : 'other';
      buckets[i][key] += p.count;
    }
    const max = Math.max(1, ...buckets.map((b) => b.completed + b.failed + b.other));
    const W = 168;
    const H = 30;
    const bw = W / n;
    const svg = s('svg', { class: 'o-spark', width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img' });
    const sum = buckets.reduce((a, b) => a + b.completed + b.failed + b.other, 0);
    svg.append(s('title', {}, `${sum} started in the window`));
    svg.append(s('line', { x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5, class: 'o-spark-axis' }));
    buckets.forEach((b, i) => {
      let y = H - 1;
      for (const key of ['completed', 'other', 'failed']) {
        if (!b[key]) continue;
        const hgt = Math.max(1.5, ((H - 2) * b[key]) / max);
        y -= hgt;
        svg.append(s('rect', { x: (i * bw + 0.5).toFixed(1), y: y.toFixed(1), width: Math.max(1, bw - 1).toFixed(1), height: hgt.toFixed(1), class: `o-spark-${key}` }));
      }
    });
    return h('div', { class: 'o-spark-wrap' }, svg, h('span', { class: 'o-small o-muted' }, String(sum)));
  }

  // ---------------------------------------------------------------- graphs

  /** Prefixes every selector of the drawing's own stylesheet, so it styles that drawing only. */
  function scopeCss(css, scope) {
    return css.replace(/(^|\})\s*([^{}@]+)\{/g, (m, close, sel) =>
      `${close}${sel.split(',').map((x) => `${scope} ${x.trim()}`).join(',')}{`);
  }

  const adopted = new Map();
  /** Adds `css` to the document as a constructed stylesheet (allowed by `style-src 'self'`). */
  function adoptCss(css) {
    if (adopted.has(css)) return;
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(css);
    adopted.set(css, sheet);
    document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
  }

  /** Fetches an SVG drawing as text and puts it inline, so its nodes are part of the page. */
  async function loadSvg(path, box) {
    const text = await api(path, { text: true });
    const doc = new DOMParser().parseFromString(text, 'image/svg+xml');
    const svg = doc.documentElement;
    if (!svg || svg.nodeName.toLowerCase() !== 'svg' || doc.getElementsByTagName('parsererror').length) {
      throw new Error('The server sent a drawing that is not SVG.');
    }
    for (const bad of svg.querySelectorAll('script, foreignObject, iframe')) bad.remove();
    for (const el of [svg, ...svg.querySelectorAll('*')]) {
      for (const a of [...el.attributes]) {
        const v = a.value.trim().toLowerCase();
        if (a.name.toLowerCase().startsWith('on') || ((a.name === 'href' || a.name === 'xlink:href') && v.startsWith('javascript:'))) {
          el.removeAttribute(a.name);
        }
      }
    }
    // The page's Content-Security-Policy allows no inline <style>: the drawing's own
    // stylesheet is adopted as a constructed sheet instead (once per distinct text).
    for (const st of svg.querySelectorAll('style')) {
      adoptCss(scopeCss(st.textContent, '.o-graph'));
      st.remove();
    }
    const w = parseFloat(svg.getAttribute('width'));
    const node = document.importNode(svg, true);
    node.setAttribute('class', 'o-graph-svg');
    if (w) node.style.maxWidth = `${w}px`;
    node.removeAttribute('height');
    node.setAttribute('width', '100%');
    box.replaceChildren(node);
    return node;
  }

  // ---------------------------------------------------------------- definitions

  async function definitionsPage(ctx) {
    show(ctx, loading());
    const { definitions } = await api('/definitions');
    const body = definitions.length
      ? h('table', { class: 'o-table o-clickable', 'data-testid': 'definitions-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Workflow'), h('th', {}, 'Input → output'), h('th', {}, 'Steps'), h('th', {}, 'Instances'))),
        h('tbody', {}, definitions.map((d) => rowLink(h('tr', { 'data-testid': 'definition-row', 'data-workflow': d.name },
          h('td', {}, h('a', { href: `#/definitions/${enc(d.name)}`, class: 'o-strong' }, d.name),
            h('div', { class: 'o-muted o-small o-mono', title: d.version }, `v ${shortVersion(d.version)}`)),
          h('td', {}, h('span', { class: 'o-type' }, d.input_type), h('span', { class: 'o-muted' }, ' → '), h('span', { class: 'o-type' }, d.output_type)),
          h('td', {}, h('div', { class: 'o-chips' }, [...new Set(d.steps || [])].map((st) => h('span', { class: 'o-chip o-mono' }, st)))),
          h('td', {}, countPills(d.counts || {}, d.name))), `#/definitions/${enc(d.name)}`))))
      : h('div', { class: 'o-empty' }, 'No workflows are registered in this process.');
    show(ctx, h('div', { class: 'o-page', 'data-testid': 'definitions' },
      pageHead('Definitions', 'The workflows compiled into this server, drawn from their code.'),
      card(null, body)));
  }

  async function definitionPage(ctx, name) {
    show(ctx, loading());
    const d = await api(`/definitions/${enc(name)}`);
    const graphBox = h('div', { class: 'o-graph', 'data-testid': 'definition-graph' }, loading('Drawing…'));
    const counts = d.counts || {};
    const startBtn = app.readonly ? null : h('button', { class: 'o-btn o-btn-primary', 'data-testid': 'action-start', onclick: () => startDialog(d) }, 'Start instance');
    const args = (d.args || []).length
      ? h('table', { class: 'o-kv' }, h('tbody', {}, d.args.map((a) => h('tr', {}, h('th', { class: 'o-mono' }, a.name), h('td', {}, h('span', { class: 'o-type' }, a.type))))))
      : null;
    const side = h('div', { class: 'o-col' },
      card('Types', h('div', {},
        h('table', { class: 'o-kv' }, h('tbody', {},
          h('tr', {}, h('th', {}, 'Input'), h('td', {}, h('span', { class: 'o-type', 'data-testid': 'input-type' }, d.input_type))),
          h('tr', {}, h('th', {}, 'Output'), h('td', {}, h('span', { class: 'o-type', 'data-testid': 'output-type' }, d.output_type))),
          h('tr', {}, h('th', {}, 'Version'), h('td', { class: 'o-mono o-small' }, d.version || '—')))),
        args ? h('h3', {}, 'Arguments') : null, args)),
      card('Instances', h('div', {},
        countPills(counts, d.name),
        h('p', {}, h('a', { href: instancesHref({ workflow: d.name }), 'data-testid': 'definition-instances' }, `All instances of ${d.name} →`)))),
      card('Steps', h('ol', { class: 'o-steps' }, [...new Set(d.steps || [])].map((st) => h('li', { class: 'o-mono' }, st)))),
      d.input_trace ? card(`Input: ${d.input_type}`, schemaView(d.input_trace), { testid: 'input-schema' }) : null,
      d.output_trace ? card(`Output: ${d.output_type}`, schemaView(d.output_trace), { testid: 'output-schema' }) : null);
    show(ctx, h('div', { class: 'o-page', 'data-testid': 'definition-page', 'data-workflow': d.name },
      h('div', { class: 'o-crumbs' }, h('a', { href: '#/definitions' }, 'Definitions'), ' / ', d.name),
      pageHead(d.name, `${d.input_type} → ${d.output_type}`, startBtn),
      h('div', { class: 'o-split' }, card('Process', graphBox, { class: 'o-graph-card' }), side)));
    try {
      await loadSvg(`/definitions/${enc(name)}/graph?format=svg`, graphBox);
    } catch (e) {
      if (ctx.alive()) graphBox.replaceChildren(h('div', { class: 'o-empty' }, `No drawing: ${e.message}`));
    }
  }

  // ---- types, as the server describes them: a registry of named formats
  // ({"root": format, "types": {name: container}}), or else any JSON (shown as it is).

  const SCALARS = {
    STR: 'string', BOOL: 'bool', UNIT: '()', CHAR: 'char', BYTES: 'bytes', F32: 'f32', F64: 'f64',
    I8: 'i8', I16: 'i16', I32: 'i32', I64: 'i64', I128: 'i128', U8: 'u8', U16: 'u16', U32: 'u32', U64: 'u64', U128: 'u128',
  };

  function isRegistry(schema) {
    return schema && typeof schema === 'object' && schema.root && schema.types && typeof schema.types === 'object';
  }

  function fmtFormat(f) {
    if (typeof f === 'string') return SCALARS[f] || f.toLowerCase();
    if (!f || typeof f !== 'object') return compactJson(f, 60);
    if ('TYPENAME' in f) return String(f.TYPENAME);
    if ('SEQ' in f) return `Vec<${fmtFormat(f.SEQ)}>`;
    if ('OPTION' in f) return `Option<${fmtFormat(f.OPTION)}>`;
    if ('MAP' in f) return `Map<${fmtFormat(f.MAP.KEY)}, ${fmtFormat(f.MAP.VALUE)}>`;
    if ('TUPLE' in f) return `(${(f.TUPLE || []).map(fmtFormat).join(', ')})`;
    if ('TUPLEARRAY' in f) return `[${fmtFormat(f.TUPLEARRAY.CONTENT)}; ${f.TUPLEARRAY.SIZE}]`;
    if ('NEWTYPE' in f) return fmtFormat(f.NEWTYPE);
    return compactJson(f, 60);
  }

  function namedFields(list) {
    return (list || []).map((entry) => Object.entries(entry)[0]).filter(Boolean);
  }

  /** One row per field or variant of each named type: a table, not the raw registry. */
  function schemaView(schema) {
    if (!isRegistry(schema)) return jsonView(schema, { openDepth: 1 });
    const rows = [];
    const root = schema.root && schema.root.TYPENAME;
    const named = Object.entries(schema.types).sort(([a], [b]) => (b === root) - (a === root));
    for (const [name, c] of named) {
      const kind = c && typeof c === 'object' ? Object.keys(c)[0] : String(c);
      const body = c && typeof c === 'object' ? c[kind] : null;
      let members = [];
      if (kind === 'STRUCT') members = namedFields(body).map(([k, f]) => [k, fmtFormat(f)]);
      else if (kind === 'NEWTYPESTRUCT') members = [['', fmtFormat(body)]];
      else if (kind === 'TUPLESTRUCT') members = (body || []).map((f, i) => [String(i), fmtFormat(f)]);
      else if (kind === 'ENUM') {
        members = Object.values(body || {}).map((v) => {
          const [variant, vf] = Object.entries(v)[0] || ['?', null];
          let t = '';
          if (vf && typeof vf === 'object') {
            if ('NEWTYPE' in vf) t = `(${fmtFormat(vf.NEWTYPE)})`;
            else if ('TUPLE' in vf) t = `(${(vf.TUPLE || []).map(fmtFormat).join(', ')})`;
            else if ('STRUCT' in vf) t = `{ ${namedFields(vf.STRUCT).map(([k, f]) => `${k}: ${fmtFormat(f)}`).join(', ')} }`;
          }
          return [variant, t];
        });
      }
      const label = { STRUCT: 'struct', ENUM: 'enum', NEWTYPESTRUCT: 'newtype', TUPLESTRUCT: 'tuple struct', UNITSTRUCT: 'unit struct' }[kind] || kind;
      rows.push(h('tr', { class: 'o-schema-type' },
        h('th', { colspan: 2 }, h('span', { class: 'o-type' }, name), ' ', h('span', { class: 'o-muted o-small' }, label))));
      for (const [k, t] of members) {
        rows.push(h('tr', {}, h('td', { class: 'o-mono' }, kind === 'ENUM' ? k : (k || '—')), h('td', { class: 'o-mono o-muted' }, t)));
      }
    }
    return h('table', { class: 'o-table o-table-sm o-schema' }, h('tbody', {}, rows));
  }

  /** A JSON value of the registry's root type with empty fields: a starting point for input. */
  function sampleOf(schema) {
    if (!isRegistry(schema)) return {};
    const types = schema.types;
    const fmt = (f, depth) => {
      if (depth > 6) return null;
      if (typeof f === 'string') {
        if (f === 'STR' || f === 'CHAR') return '';
        if (f === 'BOOL') return false;
        if (f === 'UNIT') return null;
        if (f === 'BYTES') return [];
        return SCALARS[f] ? 0 : null;
      }
      if (!f || typeof f !== 'object') return null;
      if ('TYPENAME' in f) return container(types[f.TYPENAME], depth + 1);
      if ('SEQ' in f) return [fmt(f.SEQ, depth + 1)];
      if ('OPTION' in f) return null;
      if ('MAP' in f) return {};
      if ('TUPLE' in f) return (f.TUPLE || []).map((x) => fmt(x, depth + 1));
      if ('TUPLEARRAY' in f) return Array.from({ length: f.TUPLEARRAY.SIZE || 0 }, () => fmt(f.TUPLEARRAY.CONTENT, depth + 1));
      return null;
    };
    const container = (c, depth) => {
      if (!c || typeof c !== 'object') return null;
      if ('STRUCT' in c) return Object.fromEntries(namedFields(c.STRUCT).map(([k, f]) => [k, fmt(f, depth)]));
      if ('NEWTYPESTRUCT' in c) return fmt(c.NEWTYPESTRUCT, depth);
      if ('TUPLESTRUCT' in c) return (c.TUPLESTRUCT || []).map((f) => fmt(f, depth));
      if ('ENUM' in c) {
        const [variant, vf] = Object.entries(Object.values(c.ENUM || {})[0] || {})[0] || [];
        if (!variant) return null;
        if (vf && typeof vf === 'object' && 'NEWTYPE' in vf) return { [variant]: fmt(vf.NEWTYPE, depth) };
        if (vf && typeof vf === 'object' && 'STRUCT' in vf) return { [variant]: Object.fromEntries(namedFields(vf.STRUCT).map(([k, f]) => [k, fmt(f, depth)])) };
        if (vf && typeof vf === 'object' && 'TUPLE' in vf) return { [variant]: vf.TUPLE.map((f) => fmt(f, depth)) };
        return variant;
      }
      return null;
    };
    return fmt(schema.root, 0);
  }

  function startDialog(d) {
    const id = h('input', { name: 'id', placeholder: 'leave empty for a generated id', 'data-testid': 'start-id', autocomplete: 'off' });
    const input = jsonField('Input (JSON)', 'input', JSON.stringify(sampleOf(d.input_trace), null, 2), 'start-input');
    const queue = h('input', { name: 'queue', placeholder: 'leave empty to start at once', 'data-testid': 'start-queue', autocomplete: 'off' });
    openDialog({
      title: `Start ${d.name}`,
      intro: `The input must deserialize into ${d.input_type}. Starting with an id that exists returns that instance. With a workflow queue, the instance waits (queued) until the queue has room under its limits.`,
      fields: [field('Instance id', id), field('Workflow queue', queue), input.node],
      submitLabel: 'Start',
      testid: 'start-dialog',
      valid: () => input.valid(),
      submit: async () => {
        const body = { workflow: d.name, input: JSON.parse(input.area.value) };
        if (id.value.trim()) body.id = id.value.trim();
        const q = queue.value.trim();
        const r = q
          ? await api(`/queues/${enc(q)}/instances`, { method: 'POST', body })
          : await api('/instances', { method: 'POST', body });
        toast(r.created ? (q ? `Enqueued ${r.id} on ${q}` : `Started ${r.id}`) : `${r.id} existed already`);
        location.hash = `#/instances/${enc(r.id)}`;
      },
    });
  }

  // ---------------------------------------------------------------- instance list

  const FILTER_KEYS = ['workflow', 'status', 'id_prefix', 'created_after', 'created_before'];

  function normalizeTime(v) {
    v = v.trim();
    if (!v || /^\d+\s*[smhdw]$/i.test(v) || /^\d+(ms|s|m|h|d|w)$/i.test(v)) return v.replace(/\s+/g, '');
    if (/^\d{4}-\d{2}-\d{2}$/.test(v)) v += 'T00:00';
    const t = Date.parse(v);
    return Number.isNaN(t) ? v : new Date(t).toISOString();
  }

  async function instancesPage(ctx, params) {
    const filters = {};
    for (const k of FILTER_KEYS) if (params.get(k)) filters[k] = params.get(k);
    const attrs = [];
    for (const [k, v] of params) if (k.startsWith('attr.')) attrs.push([k.slice(5), v]);

    let defs = [];
    try { defs = (await api('/definitions')).definitions || []; } catch (e) { if (e.status === 401) throw e; }
    if (!ctx.alive()) return;

    const go = (next) => {
      const q = new URLSearchParams();
      for (const k of FILTER_KEYS) if (next[k]) q.set(k, next[k]);
      for (const [k, v] of next.attrs) q.append(`attr.${k}`, v);
      const t = q.toString();
      location.hash = `#/instances${t ? `?${t}` : ''}`;
    };
    const current = () => Object.assign({}, filters, { attrs: attrs.slice() });

    // Filter bar.
    const wfSel = h('select', { 'data-testid': 'filter-workflow', onchange: () => go(Object.assign(current(), { workflow: wfSel.value })) },
      h('option', { value: '' }, 'All workflows'),
      defs.map((d) => h('option', { value: d.name, selected: d.name === filters.workflow }, d.name)));
    if (filters.workflow && !defs.some((d) => d.name === filters.workflow)) {
      wfSel.append(h('option', { value: filters.workflow, selected: true }, filters.workflow));
    }
    const chosen = new Set((filters.status || '').split(',').filter(Boolean));
    const chips = h('div', { class: 'o-status-chips', role: 'group', 'aria-label': 'Status' }, STATUSES.map((st) =>
      h('button', {
        type: 'button',
        class: `o-schip o-st-${st} ${chosen.has(st) ? 'o-on' : ''}`,
        'aria-pressed': chosen.has(st) ? 'true' : 'false',
        'data-testid': `filter-status-${st}`,
        onclick: () => {
          const next = new Set(chosen);
          if (next.has(st)) next.delete(st); else next.add(st);
          go(Object.assign(current(), { status: STATUSES.filter((x) => next.has(x)).join(',') }));
        },
      }, st)));
    const idIn = h('input', { type: 'search', placeholder: 'id prefix', value: filters.id_prefix || '', 'data-testid': 'filter-id', class: 'o-mono' });
    const afterIn = h('input', { type: 'text', placeholder: 'e.g. 24h or 2025-03-01', value: filters.created_after || '', 'data-testid': 'filter-after' });
    const beforeIn = h('input', { type: 'text', placeholder: 'e.g. 1h', value: filters.created_before || '', 'data-testid': 'filter-before' });
    const attrIn = h('input', { type: 'text', placeholder: 'key=value, Enter', 'data-testid': 'filter-attr', class: 'o-mono' });
    const apply = () => {
      const next = current();
      next.id_prefix = idIn.value.trim();
      next.created_after = normalizeTime(afterIn.value);
      next.created_before = normalizeTime(beforeIn.value);
      const a = attrIn.value.trim();
      if (a) {
        const eq = a.indexOf('=');
        if (eq > 0) next.attrs.push([a.slice(0, eq).trim(), a.slice(eq + 1).trim()]);
        else { attrIn.classList.add('o-invalid'); toast('Write an attribute filter as key=value', 'error'); return; }
      }
      go(next);
    };
    const onEnter = (ev) => { if (ev.key === 'Enter') { ev.preventDefault(); apply(); } };
    for (const el of [idIn, afterIn, beforeIn, attrIn]) el.addEventListener('keydown', onEnter);
    const attrChips = attrs.map(([k, v], i) => h('span', { class: 'o-chip o-chip-x o-mono', 'data-testid': 'attr-chip' }, `${k}=${v}`,
      h('button', {
        type: 'button', title: 'Remove this filter', 'aria-label': `Remove ${k}=${v}`,
        onclick: () => { const next = current(); next.attrs.splice(i, 1); go(next); },
      }, '×')));
    const anyFilter = FILTER_KEYS.some((k) => filters[k]) || attrs.length;
    const filterBar = h('form', { class: 'o-filters', 'data-testid': 'filters', onsubmit: (ev) => { ev.preventDefault(); apply(); } },
      h('div', { class: 'o-filter-row' },
        field('Workflow', wfSel), field('Id', idIn), field('Created after', afterIn), field('Created before', beforeIn),
        field('Attribute', attrIn),
        h('div', { class: 'o-filter-btns' },
          h('button', { type: 'submit', class: 'o-btn o-btn-primary', 'data-testid': 'filter-apply' }, 'Apply'),
          anyFilter ? h('a', { class: 'o-btn o-btn-ghost', href: '#/instances', 'data-testid': 'filter-clear' }, 'Clear') : null)),
      h('div', { class: 'o-filter-row' }, h('span', { class: 'o-field-label' }, 'Status'), chips, attrChips));

    const apiQuery = new URLSearchParams();
    for (const k of FILTER_KEYS) if (filters[k]) apiQuery.set(k, filters[k]);
    for (const [k, v] of attrs) apiQuery.append(`attr.${k}`, v);

    const tbody = h('tbody', {});
    const table = h('table', { class: 'o-table o-clickable', 'data-testid': 'instances-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Instance'), h('th', {}, 'Workflow'), h('th', {}, 'Status'),
        h('th', {}, 'Custom status'), h('th', {}, 'Failed step'), h('th', {}, 'Node'), h('th', {}, 'Created'), h('th', {}, 'Updated'))),
      tbody);
    const more = h('button', { class: 'o-btn', 'data-testid': 'load-more', hidden: true }, 'Load more');
    const countLine = h('span', { class: 'o-muted o-small', 'data-testid': 'instances-count' });
    const empty = h('div', { class: 'o-empty', hidden: true }, anyFilter ? 'No instance matches these filters.' : 'No instances yet.');
    const listError = h('div', { class: 'o-inline-error', hidden: true, role: 'alert' });

    let rows = [];
    let cursor = null;

    const render = () => {
      tbody.replaceChildren(...rows.map(instanceRow));
      table.hidden = !rows.length;
      empty.hidden = rows.length > 0;
      more.hidden = !cursor;
      countLine.textContent = `${rows.length}${cursor ? '+' : ''} ${rows.length === 1 && !cursor ? 'instance' : 'instances'}`;
    };

    const fetchPage = async (limit, after) => {
      const q = new URLSearchParams(apiQuery);
      q.set('limit', String(limit));
      if (after) q.set('cursor', after);
      return api(`/instances?${q}`);
    };

    more.addEventListener('click', async () => {
      more.disabled = true;
      try {
        const page = await fetchPage(50, cursor);
        if (!ctx.alive()) return;
        rows = rows.concat(page.instances || []);
        cursor = page.next_cursor || null;
        render();
      } catch (e) {
        toast(e.message, 'error');
      } finally {
        more.disabled = false;
      }
    });

    const first = await fetchPage(50);
    if (!ctx.alive()) return;
    rows = first.instances || [];
    cursor = first.next_cursor || null;

    show(ctx, h('div', { class: 'o-page', 'data-testid': 'instances', 'data-query': apiQuery.toString() },
      pageHead('Instances', 'Search every run by workflow, status, id, time or attribute.'),
      card(null, filterBar, { class: 'o-filter-card' }),
      card(null, h('div', {}, h('div', { class: 'o-list-head' }, countLine, listError), table, empty, h('div', { class: 'o-more' }, more)))));
    render();

    // Keep the shown rows fresh (same number of rows, newest first).
    const tick = async () => {
      try {
        const page = await fetchPage(Math.min(500, Math.max(50, rows.length)));
        if (!ctx.alive()) return;
        rows = page.instances || [];
        cursor = page.next_cursor || null;
        listError.hidden = true;
        render();
      } catch (e) {
        listError.textContent = `Could not refresh: ${e.message}`;
        listError.hidden = false;
      }
      ctx.later(tick, LIST_REFRESH_MS);
    };
    ctx.later(tick, LIST_REFRESH_MS);
  }

  function customStatusText(cs) {
    if (cs === null || cs === undefined) return '';
    if (typeof cs === 'string') return cs;
    if (typeof cs === 'object' && !Array.isArray(cs)) {
      return Object.entries(cs).map(([k, v]) => `${k}: ${typeof v === 'string' ? v : compactJson(v, 40)}`).join(' · ');
    }
    return compactJson(cs, 80);
  }

  function instanceRow(i) {
    const href = `#/instances/${enc(i.id)}`;
    const cs = customStatusText(i.custom_status);
    return rowLink(h('tr', { 'data-testid': 'instance-row', 'data-id': i.id, 'data-status': i.status },
      h('td', {}, h('a', { href, class: 'o-mono o-strong', 'data-testid': 'instance-link' }, i.id),
        i.parent ? h('div', { class: 'o-small o-muted' }, 'child of ', h('span', { class: 'o-mono' }, i.parent)) : null),
      h('td', {}, i.workflow),
      h('td', {}, statusBadge(i.status), i.cancel_requested && !FINAL.has(i.status) ? h('span', { class: 'o-small o-muted' }, ' cancelling') : null),
      h('td', { class: 'o-cs-cell', title: cs }, cs ? compactJson(cs, 60) : h('span', { class: 'o-muted' }, '—')),
      h('td', {}, i.failed_step ? h('span', { class: 'o-mono o-fail-step' }, i.failed_step) : h('span', { class: 'o-muted' }, '—')),
      h('td', { 'data-testid': 'instance-row-owner' }, i.owner ? h('span', { class: 'o-mono o-small', title: `epoch ${i.owner.epoch}` }, i.owner.node) : h('span', { class: 'o-muted' }, '—')),
      h('td', {}, timeEl(i.created_at)),
      h('td', {}, timeEl(i.updated_at))), href);
  }

  // ---------------------------------------------------------------- nodes

  const NODE_STATES = {
    live: 'Its lease runs: it heartbeats and drives the instances it owns.',
    stopped: 'It shut down and gave its instances up.',
    expired: 'Its lease ran out without a shutdown (it crashed, stalled or was cut off): other nodes take its instances over.',
  };

  async function nodesPage(ctx) {
    show(ctx, loading());
    const tbody = h('tbody', {});
    const table = h('table', { class: 'o-table', 'data-testid': 'nodes-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Node'), h('th', {}, 'State'), h('th', {}, 'Started'),
        h('th', {}, 'Last heartbeat'), h('th', {}, 'Lease'), h('th', { class: 'o-num' }, 'Instances owned'))),
      tbody);
    const listError = h('div', { class: 'o-inline-error', hidden: true, role: 'alert' });
    const summary = h('span', { class: 'o-muted o-small', 'data-testid': 'nodes-count' });
    const render = (list) => {
      const live = list.nodes.filter((n) => n.state === 'live').length;
      summary.textContent = `${plural(list.nodes.length, 'node')}, ${live} live`;
      tbody.replaceChildren(...list.nodes.map((n) => h('tr', {
        'data-testid': 'node-row', 'data-id': n.id, 'data-state': n.state, 'data-this': n.this_node ? 'true' : 'false',
      },
      h('td', {}, h('span', { class: 'o-mono o-strong' }, n.id),
        n.this_node ? h('span', { class: 'o-small o-muted', 'data-testid': 'this-node' }, ' · this node') : null),
      h('td', {}, h('span', { class: `o-badge o-ns-${n.state.replace(/[^a-z]/g, '')}`, title: NODE_STATES[n.state] || '', 'data-testid': 'node-state' }, n.state)),
      h('td', {}, timeEl(n.started_at)),
      h('td', {}, timeEl(n.heartbeat_at)),
      h('td', {}, n.state === 'stopped' ? h('span', { class: 'o-muted' }, 'released') : [n.state === 'live' ? 'ends ' : 'ended ', timeEl(n.lease_expires_at)]),
      h('td', { class: 'o-num', 'data-testid': 'node-owned' }, String(n.instances_owned)))));
    };
    const first = await api('/nodes');
    if (!ctx.alive()) return;
    show(ctx, h('div', { class: 'o-page', 'data-testid': 'nodes' },
      pageHead('Nodes', 'The runtimes sharing this store. Each drives the instances it owns and renews its lease with a heartbeat; a suspended instance is owned by nobody until it falls due.'),
      card(null, h('div', {}, h('div', { class: 'o-list-head' }, summary, listError), table)),
      compatibilityCard(ctx, first.this_node)));
    render(first);
    const tick = async () => {
      try {
        const list = await api('/nodes');
        if (!ctx.alive()) return;
        listError.hidden = true;
        render(list);
      } catch (e) {
        listError.textContent = `Could not refresh: ${e.message}`;
        listError.hidden = false;
      }
      ctx.later(tick, LIST_REFRESH_MS);
    };
    ctx.later(tick, LIST_REFRESH_MS);
  }

  // ---------------------------------------------------------------- queues

  const QUEUE_KINDS = {
    task: 'Tasks of steps declared #[step(queue = …)], served by workers (in-process, another process, or any language over HTTP).',
  };

  /** A count, or a dash when this kind of queue has none. */
  function countCell(v, testid) {
    return h('td', { class: 'o-num', 'data-testid': testid }, v === null || v === undefined ? '—' : String(v));
  }

  async function queuesPage(ctx) {
    show(ctx, loading());
    const qbody = h('tbody', {});
    const qtable = h('table', { class: 'o-table', 'data-testid': 'queues-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Queue'), h('th', {}, 'Kind'), h('th', { class: 'o-num' }, 'Waiting'),
        h('th', { class: 'o-num' }, 'In flight'), h('th', {}, 'Oldest waiting'), h('th', { class: 'o-num', title: 'Tasks completed or failed in the last minute' }, 'Done / min'),
        h('th', { class: 'o-num' }, 'Completed'), h('th', { class: 'o-num' }, 'Failed'), h('th', { class: 'o-num', title: 'Workers seen in the last 90 s that serve the queue' }, 'Workers'))),
      qbody);
    const wbody = h('tbody', {});
    const wtable = h('table', { class: 'o-table', 'data-testid': 'workers-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Worker'), h('th', {}, 'Queues'), h('th', {}, 'Node'), h('th', {}, 'Last poll'),
        h('th', {}, 'Last heartbeat'), h('th', {}, 'State'))),
      wbody);
    const listError = h('div', { class: 'o-inline-error', hidden: true, role: 'alert' });
    const summary = h('span', { class: 'o-muted o-small', 'data-testid': 'queues-count' });
    const noWorkers = h('p', { class: 'o-muted', 'data-testid': 'no-workers' }, 'No worker polled any node in the last 10 minutes.');
    const render = (list) => {
      const queues = list.queues || [];
      const workers = list.workers || [];
      const waiting = queues.reduce((n, q) => n + (q.waiting || 0), 0);
      summary.textContent = `${plural(queues.length, 'queue')}, ${waiting} waiting`;
      qbody.replaceChildren(...(queues.length ? queues.map((q) => h('tr', {
        'data-testid': 'queue-row', 'data-queue': q.queue, 'data-kind': q.kind,
      },
      h('td', {}, h('span', { class: 'o-mono o-strong' }, q.queue)),
      h('td', {}, h('span', { class: 'o-badge', title: QUEUE_KINDS[q.kind] || '' }, q.kind)),
      countCell(q.waiting, 'queue-waiting'),
      countCell(q.in_flight, 'queue-in-flight'),
      h('td', { 'data-testid': 'queue-oldest' }, timeEl(q.oldest_waiting)),
      countCell(q.finished_last_minute, 'queue-throughput'),
      countCell(q.completed, 'queue-completed'),
      countCell(q.failed, 'queue-failed'),
      countCell(q.workers, 'queue-workers'))) : [h('tr', {}, h('td', { colspan: 9, class: 'o-muted' }, 'No queue holds a task yet.'))]));
      noWorkers.hidden = workers.length > 0;
      wtable.hidden = workers.length === 0;
      wbody.replaceChildren(...workers.map((w) => h('tr', {
        'data-testid': 'worker-row', 'data-id': w.id, 'data-connected': w.connected ? 'true' : 'false',
      },
      h('td', {}, h('span', { class: 'o-mono o-strong' }, w.id)),
      h('td', {}, (w.queues || []).join(', ')),
      h('td', { class: 'o-mono' }, w.node || '—'),
      h('td', {}, timeEl(w.last_poll)),
      h('td', { 'data-testid': 'worker-heartbeat' }, timeEl(w.last_heartbeat)),
      h('td', {}, h('span', { class: `o-badge ${w.connected ? 'o-ns-live' : 'o-ns-expired'}`, title: w.connected ? 'Seen in the last 90 s.' : 'Not seen for over 90 s.' }, w.connected ? 'connected' : 'gone')))));
    };
    const first = await api('/queues');
    if (!ctx.alive()) return;
    show(ctx, h('div', { class: 'o-page', 'data-testid': 'queues' },
      pageHead('Queues', 'Work waiting for a worker: how much waits, how long the oldest has waited, how fast it goes, and who serves it.'),
      card(null, h('div', {}, h('div', { class: 'o-list-head' }, summary, listError), qtable)),
      card('Workers', h('div', {}, noWorkers, wtable), { testid: 'workers-card' })));
    render(first);
    const tick = async () => {
      try {
        const list = await api('/queues');
        if (!ctx.alive()) return;
        listError.hidden = true;
        render(list);
      } catch (e) {
        listError.textContent = `Could not refresh: ${e.message}`;
        listError.hidden = false;
      }
      ctx.later(tick, LIST_REFRESH_MS);
    };
    ctx.later(tick, LIST_REFRESH_MS);
  }

  /** The deploy check: replays every waiting instance against this node's code, page by page. */
  function compatibilityCard(ctx, node) {
    const result = h('div', { 'data-testid': 'compatibility-result' });
    const btn = h('button', { class: 'o-btn o-btn-primary', 'data-testid': 'action-check' }, 'Check waiting instances');
    btn.addEventListener('click', async () => {
      btn.disabled = true;
      const totals = { checked: 0, compatible: 0 };
      const bad = [];
      let cursor = null;
      const progress = h('div', { class: 'o-muted' }, 'Checking…');
      result.replaceChildren(progress);
      try {
        do {
          const page = await api(`/compatibility${query({ limit: 1000, cursor })}`);
          if (!ctx.alive()) return;
          totals.checked += page.checked;
          totals.compatible += page.compatible;
          bad.push(...(page.incompatible || []));
          progress.textContent = `Checking… ${totals.checked} so far`;
          cursor = page.next_cursor && page.next_cursor !== cursor ? page.next_cursor : null;
        } while (cursor);
        const line = h('p', { 'data-testid': 'compatibility-summary', 'data-checked': totals.checked, 'data-incompatible': bad.length, class: bad.length ? '' : 'o-good' },
          `${plural(totals.checked, 'waiting instance')} checked: ${totals.compatible} compatible, ${bad.length} incompatible.`);
        const table = bad.length ? h('table', { class: 'o-table', 'data-testid': 'incompatible-table' },
          h('thead', {}, h('tr', {}, h('th', {}, 'Instance'), h('th', {}, 'Workflow'), h('th', {}, 'Status'), h('th', { class: 'o-num' }, 'Seq'), h('th', {}, 'What differs'))),
          h('tbody', {}, bad.map((i) => h('tr', { 'data-testid': 'incompatible-row', 'data-id': i.id },
            h('td', {}, h('a', { href: `#/instances/${enc(i.id)}`, class: 'o-mono o-strong' }, i.id)),
            h('td', {}, i.workflow),
            h('td', {}, statusBadge(i.status)),
            h('td', { class: 'o-num' }, i.seq === null || i.seq === undefined ? '—' : String(i.seq)),
            h('td', { class: 'o-err-cell', title: i.message }, i.message))))) : null;
        result.replaceChildren(line, table || '');
      } catch (e) {
        if (ctx.alive()) result.replaceChildren(h('div', { class: 'o-inline-error', role: 'alert' }, `The check failed: ${e.message}`));
      } finally {
        btn.disabled = false;
      }
    });
    return card('Deploy check', h('div', {},
      h('p', { class: 'o-muted' },
        `Replays the journal of every waiting (running or suspended) instance against the code of node ${node}, without running any step or changing anything, and lists those this code cannot run. Run it on a node with new code before it takes traffic.`),
      h('div', {}, btn),
      result), { testid: 'compatibility-card' });
  }

  // ---------------------------------------------------------------- instance page

  async function instancePage(ctx, id) {
    show(ctx, loading());
    const view = {
      id,
      inst: null,
      journal: null,
      keys: {},
      expanded: new Set(),
      showAll: false,
      polling: false,
      highlight: null,
    };
    const els = {
      head: h('div', { class: 'o-inst-head' }),
      banner: h('div', {}),
      graph: h('div', { class: 'o-graph', 'data-testid': 'instance-graph' }, loading('Drawing…')),
      summary: h('div', { class: 'o-col' }),
      timeline: h('div', {}),
      io: h('div', { class: 'o-io' }),
      extra: h('div', { class: 'o-col' }),
      live: h('span', { class: 'o-live', 'data-testid': 'live-indicator', hidden: true }, h('span', { class: 'o-live-dot' }), 'live'),
    };
    const root = h('div', { class: 'o-page o-instance', 'data-testid': 'instance-page', 'data-id': id },
      h('div', { class: 'o-crumbs' }, h('a', { href: '#/instances' }, 'Instances'), ' / ', h('span', { class: 'o-mono' }, id), els.live),
      els.head,
      els.banner,
      h('div', { class: 'o-split' },
        card('Process', els.graph, { class: 'o-graph-card', testid: 'graph-card' }),
        h('div', { class: 'o-col' }, els.summary, els.timeline, els.extra)),
      els.io);

    els.graph.addEventListener('click', (ev) => {
      const node = ev.target.closest('g.node[data-name]');
      if (!node) return;
      view.highlight = view.highlight === node.dataset.name ? null : node.dataset.name;
      applyHighlight(root, view.highlight);
    });

    const refresh = async () => {
      const [inst, journal] = await Promise.all([
        api(`/instances/${enc(id)}`),
        api(`/instances/${enc(id)}/journal`),
      ]);
      if (!ctx.alive()) return;
      view.inst = inst;
      view.journal = journal;
      renderInstance(ctx, view, els, root, refreshNow);
      if (!root.isConnected) show(ctx, root);
      const gk = JSON.stringify([inst.status, inst.updated_at, (journal.entries || []).map((e) => [e.seq, e.state, e.attempts])]);
      if (gk !== view.keys.graph) {
        view.keys.graph = gk;
        try {
          await loadSvg(`/instances/${enc(id)}/graph?format=svg`, els.graph);
          if (ctx.alive()) applyHighlight(root, view.highlight);
        } catch (e) {
          if (ctx.alive()) els.graph.replaceChildren(h('div', { class: 'o-empty' }, `No drawing: ${e.message}`));
          view.keys.graph = null;
        }
      }
      if (inst.status) root.dataset.status = inst.status;
    };

    // Poll once a second while the instance can still change; stop when it is final.
    let failing = false;
    const loop = async () => {
      try {
        await refresh();
        failing = false;
      } catch (e) {
        if (!ctx.alive()) return;
        if (!view.inst) throw e;
        // Once per outage, not once a second.
        if (!failing) toast(`Could not refresh: ${e.message}`, 'error');
        failing = true;
      }
      const live = view.inst && !FINAL.has(view.inst.status);
      els.live.hidden = !live;
      view.polling = live;
      if (live) ctx.later(() => loop().catch(() => {}), POLL_MS);
    };
    async function refreshNow() {
      if (view.polling) { await refresh(); return; }
      await loop();
    }
    await loop();
  }

  function applyHighlight(root, name) {
    for (const n of root.querySelectorAll('.o-graph g.node')) n.classList.toggle('o-hl', !!name && n.dataset.name === name);
    for (const r of root.querySelectorAll('.o-tl-entry')) r.classList.toggle('o-hl', !!name && r.dataset.name === name);
    const firstRow = name && root.querySelector(`.o-tl-entry.o-hl`);
    if (firstRow) firstRow.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  }

  function changed(view, key, value) {
    const k = JSON.stringify(value);
    if (view.keys[key] === k) return false;
    view.keys[key] = k;
    return true;
  }

  function renderInstance(ctx, view, els, root, refreshNow) {
    const { inst, journal } = view;
    if (changed(view, 'head', [inst, app.readonly, Math.floor(Date.now() / 30e3)])) {
      els.head.replaceChildren(...instanceHead(view, refreshNow));
      const banner = instanceBanner(inst);
      els.banner.replaceChildren(banner || '');
      els.banner.hidden = !banner;
    }
    if (changed(view, 'summary', [inst.custom_status, inst.attributes, journal.pending_signals])) {
      els.summary.replaceChildren(...instanceSummary(inst, journal));
    }
    if (changed(view, 'timeline', [journal.entries, inst.status, inst.created_at, view.showAll, Math.floor(Date.now() / 5e3)])) {
      els.timeline.replaceChildren(timelineCard(view, () => {
        view.keys.timeline = null;
        renderInstance(ctx, view, els, root, refreshNow);
        applyHighlight(root, view.highlight);
      }));
      applyHighlight(root, view.highlight);
    }
    if (changed(view, 'io', [inst.input, inst.output, inst.error])) {
      els.io.replaceChildren(...ioCards(inst));
    }
    if (changed(view, 'extra', [journal.superseded])) {
      els.extra.replaceChildren(...supersededCards(journal.superseded || []));
    }
  }

  function instanceHead(view, refreshNow) {
    const i = view.inst;
    const meta = [
      ['Workflow', h('a', { href: `#/definitions/${enc(i.workflow)}`, 'data-testid': 'instance-workflow' }, i.workflow)],
      ['Version', h('span', { class: 'o-mono', title: i.version }, shortVersion(i.version))],
      ['Created', timeEl(i.created_at)],
      ['Updated', timeEl(i.updated_at)],
    ];
    if (i.wake_at) meta.push(['Wakes', timeEl(i.wake_at)]);
    if (!FINAL.has(i.status)) meta.push(['Owner', ownerEl(i.owner)]);
    if (i.retries) meta.push(['Retried', h('span', { 'data-testid': 'instance-retries' }, plural(i.retries, 'time'))]);
    if (i.parent) meta.push(['Parent', h('a', { href: `#/instances/${enc(i.parent)}`, class: 'o-mono', 'data-testid': 'instance-parent' }, i.parent)]);
    if (FINAL.has(i.status)) {
      const ms = parseTime(i.updated_at) - parseTime(i.created_at);
      if (!Number.isNaN(ms)) meta.push(['Took', h('span', {}, fmtDuration(ms))]);
    }
    return [
      h('div', { class: 'o-inst-title' },
        h('div', {},
          h('div', { class: 'o-inst-idline' },
            h('h1', { class: 'o-mono', 'data-testid': 'instance-id' }, i.id),
            statusBadge(i.status, { 'data-testid': 'instance-status' }),
            i.cancel_requested && !FINAL.has(i.status) ? h('span', { class: 'o-badge o-st-cancelled o-outline' }, 'cancel requested') : null),
          h('dl', { class: 'o-meta' }, meta.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))))),
        app.readonly ? h('div', { class: 'o-readonly-note o-small o-muted' }, 'read-only access') : h('div', { class: 'o-actions', 'data-testid': 'actions' }, actionButtons(view, refreshNow))),
    ];
  }

  /** The node driving an instance, with its lease; "none" while nobody owns it. */
  function ownerEl(o) {
    if (!o) {
      return h('span', { class: 'o-muted', 'data-testid': 'instance-owner', 'data-node': '', title: 'No node owns it now: a node claims it when it falls due.' }, 'none');
    }
    const lease = o.live ? `lease ends ${relTime(o.lease_expires_at)}` : `lease ended ${relTime(o.lease_expires_at)}: another node takes it over`;
    return h('a', {
      href: '#/nodes',
      class: `o-mono ${o.live ? '' : 'o-warn'}`,
      'data-testid': 'instance-owner',
      'data-node': o.node,
      title: `epoch ${o.epoch}; ${lease}`,
    }, o.node, h('span', { class: 'o-muted o-small' }, ` · epoch ${o.epoch}`));
  }

  function instanceBanner(i) {
    if (i.error) {
      return h('div', { class: 'o-banner o-banner-error', 'data-testid': 'instance-error' },
        h('strong', {}, i.failed_step ? `Failed at ${i.failed_step}` : 'Error'),
        h('div', { class: 'o-banner-msg' }, i.error));
    }
    if (i.status === 'failed' && i.failed_step) {
      return h('div', { class: 'o-banner o-banner-error', 'data-testid': 'instance-error' },
        h('strong', {}, `Failed at ${i.failed_step}`),
        h('div', { class: 'o-banner-msg' }, errorFromOutput(i.output) || 'The workflow returned an error (see output).'));
    }
    return null;
  }

  function errorFromOutput(out) {
    if (out && typeof out === 'object' && !Array.isArray(out) && 'Err' in out) {
      const e = out.Err;
      if (typeof e === 'string') return e;
      if (e && typeof e === 'object') {
        const vals = Object.entries(e);
        if (vals.length === 1 && typeof vals[0][1] === 'string') return `${vals[0][0]}: ${vals[0][1]}`;
      }
      return compactJson(e, 300);
    }
    return null;
  }

  function instanceSummary(i, journal) {
    const out = [];
    const cs = i.custom_status;
    let csBody;
    if (cs === null || cs === undefined) csBody = h('div', { class: 'o-muted' }, 'None set.');
    else if (typeof cs === 'object' && !Array.isArray(cs)) csBody = kvTable(cs, { testid: 'custom-status' });
    else if (typeof cs === 'string') csBody = h('div', { class: 'o-cs-text', 'data-testid': 'custom-status' }, cs);
    else csBody = jsonView(cs, { testid: 'custom-status' });
    const attrs = i.attributes && Object.keys(i.attributes).length
      ? kvTable(i.attributes, {
        testid: 'attributes',
        link: (k, v, cell) => h('a', {
          href: instancesHref({ [`attr.${k}`]: typeof v === 'string' ? v : JSON.stringify(v) }),
          title: `Instances with ${k} = ${compactJson(v, 80)}`,
        }, cell),
      })
      : h('div', { class: 'o-muted' }, 'No attributes.');
    out.push(h('div', { class: 'o-two' },
      card('Custom status', csBody, { testid: 'custom-status-card' }),
      card('Attributes', attrs, { testid: 'attributes-card' })));
    const pending = journal.pending_signals || [];
    if (pending.length) {
      out.push(card('Signals waiting to be read', h('table', { class: 'o-table', 'data-testid': 'pending-signals' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Payload'), h('th', {}, 'Received'))),
        h('tbody', {}, pending.map((p) => h('tr', {}, h('td', { class: 'o-mono' }, p.name), h('td', {}, valueCell(p.payload)), h('td', {}, timeEl(p.received_at))))))));
    }
    return out;
  }

  // -------------------------------------------------------------- timeline

  function entryLabel(e) {
    if (e.name) return e.name;
    switch (e.kind) {
      case 'status': return 'set status';
      case 'sleep': return 'sleep';
      case 'deadline': return 'deadline';
      case 'now': return 'now()';
      case 'random': return 'random()';
      case 'uuid': return 'uuid()';
      case 'patch': return 'patched()';
      default: return e.kind;
    }
  }

  function entryState(e) {
    if (e.state === 'done' && (e.attempts || 1) > 1) return 'retried';
    return e.state || 'done';
  }

  function timelineCard(view, rerender) {
    const { inst, journal } = view;
    const entries = journal.entries || [];
    const shown = view.showAll ? entries : entries.filter((e) => MAJOR_KINDS.has(e.kind));
    const hiddenCount = entries.length - shown.length;
    const times = [];
    for (const e of entries) {
      times.push(parseTime(e.started_at), parseTime(e.finished_at));
      for (const a of e.errors || []) times.push(parseTime(a.started_at), parseTime(a.finished_at));
    }
    const valid = times.filter((t) => !Number.isNaN(t));
    const created = parseTime(inst.created_at);
    let t0 = Math.min(...valid, Number.isNaN(created) ? Infinity : created);
    let t1 = Math.max(...valid, FINAL.has(inst.status) ? -Infinity : Date.now());
    if (!Number.isFinite(t0)) t0 = Date.now();
    if (!Number.isFinite(t1) || t1 <= t0) t1 = t0 + 1;
    const span = t1 - t0;
    const intervals = [];
    for (const e of entries) {
      const a = parseTime(e.started_at);
      const b = parseTime(e.finished_at);
      if (!Number.isNaN(a)) intervals.push([a, Number.isNaN(b) ? a : Math.max(a, b)]);
    }
    const { pos, breaks } = timeScale(intervals, t0, t1);

    const axis = h('div', { class: 'o-tl-axis' },
      (breaks.length ? [0, 1] : [0, 0.5, 1]).map((f) =>
        h('span', { style: { left: `${f * 100}%` }, class: f === 1 ? 'o-tl-tick o-tl-tick-end' : 'o-tl-tick' }, f === 0 ? '0' : `+${fmtDuration(f * span)}`)),
      breaks.map((b) => h('span', {
        class: 'o-tl-tick o-tl-break-label',
        style: { left: `${b.at + b.width / 2}%` },
        title: `${fmtDuration(b.ms)} with nothing running, shortened`,
      }, `⋯ ${fmtDuration(b.ms)}`)));

    const rows = shown.map((e) => {
      const st = entryState(e);
      const start = parseTime(e.started_at);
      const end = parseTime(e.finished_at);
      const bar = h('div', { class: 'o-tl-track' },
        breaks.map((b) => h('span', { class: 'o-tl-gap', style: { left: `${b.at}%`, width: `${b.width}%` } })));
      for (const a of e.errors || []) {
        const as = parseTime(a.started_at);
        const ae = parseTime(a.finished_at);
        if (Number.isNaN(as)) continue;
        bar.append(h('span', {
          class: 'o-tl-bar o-tl-bar-fail',
          title: `attempt ${a.attempt} failed after ${fmtDuration(ae - as)}: ${a.error}`,
          style: { left: `${pos(as)}%`, width: `${Math.max(0, pos(Number.isNaN(ae) ? as : ae) - pos(as))}%` },
        }));
      }
      if (!Number.isNaN(start)) {
        const lastErr = (e.errors || []).reduce((m, a) => Math.max(m, parseTime(a.finished_at) || -Infinity), -Infinity);
        const from = st === 'failed' || !Number.isFinite(lastErr) ? start : Math.max(start, lastErr);
        const to = Number.isNaN(end) ? from : end;
        bar.append(h('span', {
          class: `o-tl-bar o-tl-bar-${st}`,
          title: `${entryLabel(e)}: ${st}, ${fmtDuration(e.duration_ms !== undefined && e.duration_ms !== null ? e.duration_ms : to - start)}`,
          style: { left: `${pos(st === 'failed' ? start : from)}%`, width: `${Math.max(0, pos(to) - pos(st === 'failed' ? start : from))}%` },
        }));
      }
      const errs = e.errors || [];
      const open = view.expanded.has(e.seq);
      const dur = e.duration_ms !== undefined && e.duration_ms !== null ? e.duration_ms : (Number.isNaN(end) || Number.isNaN(start) ? null : end - start);
      const row = h('div', {
        class: `o-tl-entry o-tl-${e.kind} ${open ? 'o-open' : ''}`,
        'data-testid': 'timeline-entry',
        'data-seq': e.seq,
        'data-name': e.name || '',
        'data-kind': e.kind,
        'data-state': e.state,
      },
      h('button', {
        type: 'button',
        class: 'o-tl-row',
        'aria-expanded': open ? 'true' : 'false',
        onclick: () => {
          if (view.expanded.has(e.seq)) view.expanded.delete(e.seq); else view.expanded.add(e.seq);
          rerender();
        },
      },
      h('span', { class: 'o-tl-seq' }, `#${e.seq}`),
      h('span', { class: 'o-tl-name' }, h('span', { class: 'o-tl-kind' }, e.kind), h('span', { class: 'o-mono' }, entryLabel(e))),
      h('span', { class: 'o-tl-bars' }, bar),
      h('span', { class: 'o-tl-dur' }, fmtDuration(dur)),
      h('span', { class: 'o-tl-att', title: 'attempts' }, e.kind === 'step' ? `${e.attempts || 1}×` : ''),
      h('span', { class: 'o-tl-state' }, stateBadge(st))),
      errs.length ? h('ul', { class: 'o-tl-errors', 'data-testid': 'attempt-errors' }, errs.map((a) => h('li', {},
        h('span', { class: 'o-tl-err-att' }, `attempt ${a.attempt}`),
        h('span', { class: 'o-muted' }, ` ${fmtDuration(parseTime(a.finished_at) - parseTime(a.started_at))} · `),
        h('time', { title: exactTime(a.started_at) }, relTime(a.started_at)),
        h('span', { class: 'o-tl-err-msg' }, a.error)))) : null,
      open ? h('div', { class: 'o-tl-detail' },
        h('dl', { class: 'o-meta o-meta-sm' },
          h('div', {}, h('dt', {}, 'Started'), h('dd', {}, h('span', { title: e.started_at || '' }, exactTime(e.started_at) ? new Date(parseTime(e.started_at)).toLocaleTimeString() : '—'))),
          h('div', {}, h('dt', {}, 'Finished'), h('dd', {}, h('span', { title: e.finished_at || '' }, exactTime(e.finished_at) ? new Date(parseTime(e.finished_at)).toLocaleTimeString() : '—'))),
          h('div', {}, h('dt', {}, 'Attempts'), h('dd', {}, String(e.attempts || 1)))),
        h('div', { class: 'o-field-label' }, 'Outcome'),
        jsonView(e.outcome === undefined ? null : e.outcome, { openDepth: 2 })) : null);
      return row;
    });

    const toggle = h('label', { class: 'o-check o-small' },
      h('input', {
        type: 'checkbox', checked: view.showAll, 'data-testid': 'timeline-show-all',
        onchange: (ev) => { view.showAll = ev.target.checked; rerender(); },
      }),
      hiddenCount || view.showAll ? ` show status and other entries${view.showAll ? '' : ` (${hiddenCount})`}` : ' show all entries');
    const total = h('span', { class: 'o-muted o-small' }, `${plural(shown.length, 'entry', 'entries')} · ${fmtDuration(span)}`);
    const body = shown.length
      ? h('div', { class: 'o-tl', 'data-testid': 'timeline' },
        h('div', { class: 'o-tl-head' }, h('span', {}, ''), h('span', {}, 'Operation'), axis, h('span', { class: 'o-tl-num' }, 'Took'), h('span', { class: 'o-tl-num' }, 'Tries'), h('span', {}, '')),
        rows)
      : h('div', { class: 'o-empty', 'data-testid': 'timeline' }, 'Nothing journaled yet.');
    return card('Timeline', body, { testid: 'timeline-card', right: h('div', { class: 'o-card-tools' }, total, toggle) });
  }

  /**
   * Maps times in [t0, t1] to 0–100 %. Stretches with nothing running that take more than a
   * fifth of the span (a retry hours later, a wait for a signal) are drawn as narrow breaks,
   * so the work around them stays readable.
   */
  function timeScale(intervals, t0, t1) {
    const span = t1 - t0;
    const BREAK = 4;
    const merged = [];
    for (const [a, b] of intervals.slice().sort((x, y) => x[0] - y[0])) {
      const last = merged[merged.length - 1];
      if (last && a <= last[1]) last[1] = Math.max(last[1], b);
      else merged.push([a, b]);
    }
    const minGap = Math.max(1000, span / 5);
    const gaps = [];
    let cur = t0;
    for (const [a, b] of merged) {
      if (a - cur > minGap) gaps.push([cur, a]);
      cur = Math.max(cur, b);
    }
    if (t1 - cur > minGap) gaps.push([cur, t1]);
    if (!gaps.length || gaps.length * BREAK >= 60) {
      return { pos: (t) => Math.max(0, Math.min(100, ((t - t0) / span) * 100)), breaks: [] };
    }
    const kept = span - gaps.reduce((n, [a, b]) => n + (b - a), 0) || 1;
    const avail = 100 - BREAK * gaps.length;
    const pos = (t) => {
      let x = 0;
      let from = t0;
      for (const [a, b] of gaps) {
        if (t <= a) break;
        x += ((a - from) / kept) * avail;
        if (t < b) return x + (BREAK * (t - a)) / (b - a);
        x += BREAK;
        from = b;
      }
      return Math.max(0, Math.min(100, x + ((Math.max(t, from) - from) / kept) * avail));
    };
    return { pos, breaks: gaps.map(([a, b]) => ({ at: pos(a), width: BREAK, ms: b - a })) };
  }

  function ioCards(i) {
    let outTag = null;
    if (i.output && typeof i.output === 'object' && !Array.isArray(i.output)) {
      if ('Ok' in i.output) outTag = h('span', { class: 'o-badge o-st-completed' }, 'Ok');
      else if ('Err' in i.output) outTag = h('span', { class: 'o-badge o-st-failed' }, 'Err');
    }
    const copy = (v) => h('button', {
      type: 'button', class: 'o-btn o-btn-ghost o-btn-sm', title: 'Copy as JSON',
      onclick: () => {
        const text = JSON.stringify(v, null, 2);
        if (navigator.clipboard) navigator.clipboard.writeText(text).then(() => toast('Copied'), () => toast('Copy failed', 'error'));
      },
    }, 'Copy');
    const hasOut = i.output !== null && i.output !== undefined;
    return [
      card('Input', jsonView(i.input === undefined ? null : i.input, { testid: 'instance-input' }), { testid: 'input-card', right: copy(i.input) }),
      card('Output', hasOut
        ? jsonView(i.output, { testid: 'instance-output' })
        : h('div', { class: 'o-muted', 'data-testid': 'instance-output' }, FINAL.has(i.status) ? (i.error ? 'No output: the instance ended with an error.' : 'No output.') : 'Not finished yet.'),
      { testid: 'output-card', right: h('span', { class: 'o-card-tools' }, outTag, hasOut ? copy(i.output) : null) }),
    ];
  }

  function supersededWhy(entries) {
    const failed = entries.find((e) => e.state === 'failed');
    if (!failed) return null;
    const n = failed.attempts || 1;
    return h('span', { class: 'o-muted' }, ' · ', h('span', { class: 'o-mono o-fail-step' }, entryLabel(failed)),
      ` had failed${n > 1 ? ` after ${n} attempts` : ''}`);
  }

  function supersededCards(superseded) {
    if (!superseded.length) return [];
    return [card('Replaced by retries', h('div', { 'data-testid': 'superseded' }, superseded.map((r) => h('details', { class: 'o-superseded' },
      h('summary', {}, `Retry ${r.retry}: ${plural((r.entries || []).length, 'entry', 'entries')} replaced`,
        supersededWhy(r.entries || [])),
      h('table', { class: 'o-table o-table-sm' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Seq'), h('th', {}, 'Operation'), h('th', {}, 'State'), h('th', {}, 'Tries'), h('th', {}, 'Finished'), h('th', {}, 'Errors'))),
        h('tbody', {}, (r.entries || []).map((e) => h('tr', {},
          h('td', { class: 'o-mono' }, `#${e.seq}`),
          h('td', {}, h('span', { class: 'o-tl-kind' }, e.kind), ' ', h('span', { class: 'o-mono' }, entryLabel(e))),
          h('td', {}, stateBadge(entryState(e))),
          h('td', {}, String(e.attempts || 1)),
          h('td', {}, timeEl(e.finished_at)),
          h('td', { class: 'o-err-cell' }, (e.errors || []).map((a) => h('div', {}, `#${a.attempt}: ${a.error}`)))))))))),
    { testid: 'superseded-card' })];
  }

  // -------------------------------------------------------------- operations

  function seqOptions(entries, withDefault) {
    const opts = [];
    if (withDefault) opts.push(h('option', { value: '' }, withDefault));
    for (const e of entries) {
      opts.push(h('option', { value: String(e.seq) }, `#${e.seq} · ${e.kind} ${entryLabel(e)}${e.state === 'failed' ? ' (failed)' : ''}`));
    }
    return opts;
  }

  function actionButtons(view, refreshNow) {
    const i = view.inst;
    const id = i.id;
    const entries = (view.journal && view.journal.entries) || [];
    const final = FINAL.has(i.status);
    const retryable = ['failed', 'cancelled', 'terminated'].includes(i.status);
    const path = (op) => `/instances/${enc(id)}/${op}`;
    const btn = (label, testid, cls, onclick) => h('button', { type: 'button', class: `o-btn ${cls || ''}`, 'data-testid': testid, onclick }, label);
    const out = [];

    if (retryable) {
      out.push(btn('Retry', 'action-retry', 'o-btn-primary', () => {
        const sel = h('select', { name: 'from_seq', 'data-testid': 'retry-from' }, seqOptions(entries, i.failed_step ? `the failed step (${i.failed_step})` : 'the failed step'));
        openDialog({
          title: `Retry ${id}`,
          intro: 'Runs the instance again from a step, with the same id. The entries it replaces are kept (see "Replaced by retries").',
          fields: [field('Retry from', sel)],
          submitLabel: 'Retry',
          testid: 'retry-dialog',
          submit: async () => {
            const body = sel.value ? { from_seq: Number(sel.value) } : {};
            const r = await api(path('retry'), { method: 'POST', body });
            toast(`Retrying ${id} from #${r && r.from_seq !== undefined ? r.from_seq : '?'}`);
            await refreshNow();
          },
        });
      }));
    }
    if (!final) {
      out.push(btn('Signal', 'action-signal', '', () => {
        const name = h('input', { name: 'name', required: true, autocomplete: 'off', 'data-testid': 'signal-name', class: 'o-mono', placeholder: 'e.g. approve' });
        const payload = jsonField('Payload (JSON)', 'payload', 'null', 'signal-payload');
        openDialog({
          title: `Send a signal to ${id}`,
          fields: [field('Name', name), payload.node],
          submitLabel: 'Send signal',
          testid: 'signal-dialog',
          valid: () => name.value.trim().length > 0 && payload.valid(),
          submit: async () => {
            const r = await api(path('signal'), { method: 'POST', body: { name: name.value.trim(), payload: JSON.parse(payload.area.value) } });
            toast(`Signal ${name.value.trim()} sent${r && r.signal_id !== undefined ? ` (#${r.signal_id})` : ''}`);
            await refreshNow();
          },
        });
      }));
      out.push(btn('Cancel', 'action-cancel', '', () => {
        const reason = h('input', { name: 'reason', autocomplete: 'off', 'data-testid': 'cancel-reason', placeholder: 'why (recorded in the audit log)' });
        openDialog({
          title: `Cancel ${id}`,
          intro: 'Cooperative: the call the workflow is waiting in returns a cancellation error, so its compensation code runs.',
          fields: [field('Reason', reason)],
          submitLabel: 'Request cancellation',
          danger: true,
          testid: 'cancel-dialog',
          submit: async () => {
            await api(path('cancel'), { method: 'POST', body: reason.value.trim() ? { reason: reason.value.trim() } : {} });
            toast(`Cancellation of ${id} requested`);
            await refreshNow();
          },
        });
      }));
      out.push(btn('Terminate', 'action-terminate', 'o-btn-danger-ghost', () => {
        const reason = h('input', { name: 'reason', autocomplete: 'off', 'data-testid': 'terminate-reason', placeholder: 'recorded as the error' });
        const sure = h('input', { type: 'checkbox', name: 'sure', 'data-testid': 'terminate-confirm' });
        openDialog({
          title: `Terminate ${id}`,
          intro: 'A hard stop: nothing more runs, no compensation. Prefer Cancel when the workflow can clean up.',
          fields: [field('Reason', reason), h('label', { class: 'o-check' }, sure, ' I understand that nothing more runs for this instance.')],
          submitLabel: 'Terminate',
          danger: true,
          testid: 'terminate-dialog',
          valid: () => sure.checked,
          submit: async () => {
            await api(path('terminate'), { method: 'POST', body: reason.value.trim() ? { reason: reason.value.trim() } : {} });
            toast(`${id} terminated`);
            await refreshNow();
          },
        });
      }));
    }
    out.push(btn('Restart', 'action-restart', '', () => {
      openDialog({
        title: `Restart ${id}`,
        intro: `Starts a new instance of ${i.workflow} with the same input. This instance stays as it is.`,
        submitLabel: 'Start new instance',
        testid: 'restart-dialog',
        submit: async () => {
          const r = await api(path('restart'), { method: 'POST', body: {} });
          toast(`Started ${r.id}`);
          location.hash = `#/instances/${enc(r.id)}`;
        },
      });
    }));
    if (entries.length) {
      out.push(btn('Fork', 'action-fork', '', () => {
        const sel = h('select', { name: 'from_seq', 'data-testid': 'fork-from' }, seqOptions(entries, null));
        const failed = entries.find((e) => e.state === 'failed');
        sel.value = String((failed || entries[entries.length - 1]).seq);
        openDialog({
          title: `Fork ${id}`,
          intro: 'Starts a new instance whose journal is a copy of the entries before the chosen one; it runs from there.',
          fields: [field('Run again from', sel)],
          submitLabel: 'Fork',
          testid: 'fork-dialog',
          submit: async () => {
            const r = await api(path('fork'), { method: 'POST', body: { from_seq: Number(sel.value) } });
            toast(`Forked into ${r.id}`);
            location.hash = `#/instances/${enc(r.id)}`;
          },
        });
      }));
    }
    return out;
  }

  // ---------------------------------------------------------------- start

  async function start() {
    try {
      app.whoami = await api('/whoami');
    } catch (e) {
      if (e.status === 401) {
        main.replaceChildren(h('div', { class: 'o-card o-error-card', 'data-testid': 'auth-needed' },
          h('h2', {}, 'Access token needed'), h('p', {}, 'Enter a token to see this server’s workflows.'),
          h('button', { class: 'o-btn o-btn-primary', onclick: () => tokenPrompt(e.message) }, 'Enter token')));
        return;
      }
      app.whoami = null;
    }
    app.readonly = !!app.whoami && app.whoami.role === 'read';
    document.body.classList.toggle('o-readonly', app.readonly);
    renderWho();
    await route();
  }

  // Paths like /ui/instances/x (served with this page) map to the same hash route.
  if (!location.hash && location.pathname.startsWith('/ui/') && location.pathname.length > 4) {
    history.replaceState(null, '', `/#/${location.pathname.slice(4)}${location.search}`);
  }
  window.addEventListener('hashchange', () => route());
  start();
})();
