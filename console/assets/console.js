// Rivulet web console: one ES module, no framework, no build step.
//
// Everything it shows comes from the resource API on the same origin, called with the token
// the user signed in with. The page runs under a strict Content-Security-Policy, so: no inline
// script or style, DOM built with createElement/textContent, and the one place that builds
// markup as a string (the topology SVG) escapes every value it puts in.

const TOKEN_KEY = 'rivulet-token';
const THEME_KEY = 'rivulet-theme';
const NAMESPACE_KEY = 'rivulet-namespace';

/** Outcome names of the journal's `Summary`, in its order. */
const OUTCOMES = ['accepted', 'unmatched', 'delivered', 'dropped-ttl', 'dead-lettered', 'failed', 'refused', 'not-stored'];

const TAP_MAX_ROWS = 500;
const TOPOLOGY_REFRESH_MS = 5000;

const state = {
  token: storageGet(sessionStorage, TOKEN_KEY) || '',
  user: null, // {name, role} from /auth/whoami
  anonymous: false, // the server runs with --api-auth none
  namespace: storageGet(sessionStorage, NAMESPACE_KEY) || '',
  namespaces: new Set(),
  discovery: null, // Promise of every served kind, cached for the session
  groupVersions: new Map(), // "group/version" -> Promise of its APIResourceList
  current: null, // the page on screen: {controller, cleanups}
  zoom: null, // the topology's zoom; null fits it to the width (within limits)
  traceQuery: null, // the last trace search, shown again on #/trace
  selectedEventType: '', // "namespace/name"
  knownKinds: null, // kind -> apiVersion, for links from apply results
};

const $ = (selector, root = document) => root.querySelector(selector);

// ---------------------------------------------------------------------------------------
// Small helpers

function storageGet(storage, key) {
  try { return storage.getItem(key); } catch { return null; }
}

function storageSet(storage, key, value) {
  try {
    if (value === null || value === '') storage.removeItem(key);
    else storage.setItem(key, value);
  } catch { /* storage may be off (private mode); the console works without it */ }
}

/** Builds an element: `h('a', {href, class, text, on: {click}}, ...children)`. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'on') for (const [name, fn] of Object.entries(value)) el.addEventListener(name, fn);
    else if (key === 'value' || key === 'hidden' || key === 'disabled' || key === 'selected' || key === 'checked') el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  add(el, children);
  return el;
}

/** The nodes of `children`: arrays flattened, null/undefined/false left out, the rest as text. */
function nodes(children) {
  return children.flat(Infinity)
    .filter((child) => child !== null && child !== undefined && child !== false)
    .map((child) => (child instanceof Node ? child : document.createTextNode(String(child))));
}

/** Appends children to `el` (see `nodes`). */
function add(el, ...children) {
  el.append(...nodes(children));
  return el;
}

/** Replaces what `el` holds with `children` (see `nodes`). */
function fill(el, ...children) {
  el.replaceChildren(...nodes(children));
  return el;
}

/** Text with line-break chances after `.`, `/`, `-`, `_` and `:`, for long types, sources and ids. */
function breakable(text) {
  const parts = String(text ?? '').split(/(?<=[./\-_:])/);
  return parts.flatMap((part, i) => (i ? [document.createElement('wbr'), part] : [part]));
}

/** Escapes text for the SVG markup string. */
function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

const enc = encodeURIComponent;

function cut(text, max) {
  text = String(text ?? '');
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

function plural(n, word, many = `${word}s`) {
  return `${n} ${n === 1 ? word : many}`;
}

/** `HH:MM:SS.mmm` in UTC, as the CLI prints journal times. */
function clockUtc(ms) {
  const d = new Date(Number(ms));
  return Number.isNaN(d.getTime()) ? '??:??:??.???' : d.toISOString().slice(11, 23);
}

function dayUtc(ms) {
  const d = new Date(Number(ms));
  return Number.isNaN(d.getTime()) ? '' : d.toISOString().slice(0, 10);
}

function timeEl(ms, text = clockUtc(ms)) {
  const d = new Date(Number(ms));
  return h('time', { class: 'when', datetime: Number.isNaN(d.getTime()) ? null : d.toISOString(), title: Number.isNaN(d.getTime()) ? null : d.toISOString() }, text);
}

/** How long ago a Kubernetes timestamp was: `45s`, `12m`, `3h`, `5d`. */
function age(timestamp) {
  const then = Date.parse(timestamp);
  if (Number.isNaN(then)) return '';
  const s = Math.max(0, Math.round((Date.now() - then) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** Events per second, short: `0`, `0.53`, `1.5`, `12`. */
function formatRate(rate) {
  if (rate === 0) return '0/s';
  if (rate < 0.01) return '<0.01/s';
  if (rate < 100) return `${Math.round(rate * 100) / 100}/s`;
  return `${Math.round(rate)}/s`;
}

function prettyJson(value) {
  return JSON.stringify(value, null, 2);
}

function debounce(fn, ms) {
  let timer = 0;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

function isAbort(error) {
  return error && error.name === 'AbortError';
}

// ---------------------------------------------------------------------------------------
// The API

/** A failed call, with the Kubernetes-style Status the server answered when it did. */
class ApiError extends Error {
  constructor(code, reason, message, body = null) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.reason = reason;
    this.body = body;
  }
}

/** The text shown for any error: the server's message verbatim, then the code. */
function errorText(error) {
  if (error instanceof ApiError) {
    if (!error.code) return error.message;
    return `${error.message} (${error.code}${error.reason ? ` ${error.reason}` : ''})`;
  }
  return String(error?.message || error);
}

async function errorOf(response) {
  const text = await response.text().catch(() => '');
  let body = null;
  try { body = JSON.parse(text); } catch { /* not JSON: the text itself is the message */ }
  const message = (body && typeof body.message === 'string' && body.message)
    || text.trim()
    || response.statusText
    || `the server answered ${response.status}`;
  const reason = (body && body.reason) || response.statusText || '';
  return new ApiError(response.status, reason, message, body);
}

/**
 * Calls the API. `as` says what to return: `json` (default), `text` (with `Accept: yaml` for
 * `yaml`), or the raw `response` (for downloads and streams). Non-2xx answers throw an
 * ApiError; a 401 also signs the user out, since the token no longer works.
 */
async function api(path, { method = 'GET', body, headers = {}, as = 'json', signal, token = state.token, signOutOn401 = true } = {}) {
  const sent = new Headers(headers);
  if (token) sent.set('Authorization', `Bearer ${token}`);
  if (!sent.has('Accept')) {
    if (as === 'json') sent.set('Accept', 'application/json');
    if (as === 'yaml') sent.set('Accept', 'application/yaml');
  }
  let response;
  try {
    response = await fetch(path, { method, body, headers: sent, signal, cache: 'no-store', credentials: 'omit' });
  } catch (error) {
    if (isAbort(error)) throw error;
    throw new ApiError(0, 'NetworkError', `cannot reach the server: ${error.message}`);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && signOutOn401) signOut(`The server refused the token: ${errorText(error)}`);
    throw error;
  }
  if (as === 'response') return response;
  if (as === 'text' || as === 'yaml') return response.text();
  if (response.status === 204) return null;
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    throw new ApiError(response.status, 'BadResponse', `the server answered ${path} with something that is not JSON: ${cut(text, 200)}`);
  }
}

// ---------------------------------------------------------------------------------------
// Kinds: Kubernetes discovery, cached for the session

function resourcesPath(groupVersion) {
  return groupVersion.includes('/') ? `/apis/${groupVersion}` : `/api/${groupVersion}`;
}

function groupVersionResources(groupVersion) {
  let promise = state.groupVersions.get(groupVersion);
  if (!promise) {
    promise = api(resourcesPath(groupVersion));
    promise.catch(() => state.groupVersions.delete(groupVersion));
    state.groupVersions.set(groupVersion, promise);
  }
  return promise;
}

function kindsOf(list, groupVersion) {
  const [group, version] = groupVersion.includes('/') ? groupVersion.split('/') : ['', groupVersion];
  return (list?.resources || [])
    .filter((r) => !r.name.includes('/') && (!Array.isArray(r.verbs) || r.verbs.length === 0 || r.verbs.includes('list')))
    .map((r) => ({ group, version, apiVersion: groupVersion, kind: r.kind, plural: r.name, namespaced: r.namespaced !== false }));
}

/**
 * Every kind the server serves, each once: in its group's preferred version, else the
 * newest version that has it (a group's kinds need not share a version: EventType is
 * v1beta3 where Broker is v1).
 */
function discoverKinds() {
  if (!state.discovery) {
    state.discovery = (async () => {
      const groups = await api('/apis');
      const versionsOf = (g) => {
        const preferred = g.preferredVersion?.groupVersion;
        const rest = (g.versions || []).map((v) => v.groupVersion).filter((gv) => gv && gv !== preferred);
        return preferred ? [preferred, ...rest] : rest;
      };
      const ordered = (groups?.groups || []).flatMap(versionsOf);
      const perVersion = await Promise.all(ordered.map(async (gv) => kindsOf(await groupVersionResources(gv), gv)));
      const seen = new Set();
      const lists = perVersion.map((kinds) => kinds.filter((k) => {
        const key = `${k.group}/${k.kind}`;
        if (seen.has(key)) return false;
        seen.add(key);
        return true;
      }));
      let core = [];
      try {
        core = kindsOf(await groupVersionResources('v1'), 'v1');
      } catch (error) {
        // Core kinds (ConfigMap, Secret) are a bonus; a server without /api/v1 still works.
        if (!(error instanceof ApiError && error.code === 404)) throw error;
      }
      return [...lists.flat(), ...core];
    })();
    state.discovery.catch(() => { state.discovery = null; });
  }
  return state.discovery;
}

async function resolveKind(apiVersion, kind) {
  const list = await groupVersionResources(apiVersion);
  const found = kindsOf(list, apiVersion).find((k) => k.kind === kind);
  if (!found) throw new ApiError(404, 'NotFound', `the server does not serve kind ${kind} in ${apiVersion}`);
  return found;
}

function collectionPath(info, namespace) {
  const base = resourcesPath(info.apiVersion);
  return info.namespaced && namespace ? `${base}/namespaces/${enc(namespace)}/${info.plural}` : `${base}/${info.plural}`;
}

function objectPath(info, namespace, name) {
  return `${collectionPath(info, namespace)}/${enc(name)}`;
}

/** The console route of an object. A cluster-scoped object gets `-` as its namespace. */
function objectHref(apiVersion, kind, namespace, name) {
  return `#/object/${enc(apiVersion.replaceAll('/', '~'))}/${enc(kind)}/${enc(namespace || '-')}/${enc(name)}`;
}

/** The `Ready` condition of an object: {status: 'True'|'False'|'Unknown'|null, reason, message}. */
function readyOf(object) {
  const condition = (object?.status?.conditions || []).find((c) => c.type === 'Ready');
  if (!condition) return { status: null, reason: '', message: '' };
  return { status: condition.status || 'Unknown', reason: condition.reason || '', message: condition.message || '' };
}

function readyBadge(ready) {
  const span = h('span');
  if (ready.status === 'True') add(span, h('span', { class: 'badge', 'data-state': 'ok' }, 'Ready'));
  else if (ready.status === 'False') add(span, h('span', { class: 'badge', 'data-state': 'bad' }, 'Not ready'));
  else if (ready.status === 'Unknown') add(span, h('span', { class: 'badge', 'data-state': 'unknown' }, 'Unknown'));
  else add(span, h('span', { class: 'badge', 'data-state': 'neutral' }, 'No status yet'));
  if (ready.status !== 'True' && (ready.reason || ready.message)) {
    add(span, h('span', { class: 'reason', title: ready.message || null }, ready.reason || cut(ready.message, 120)));
  }
  return span;
}

function outcomeBadge(outcome) {
  const good = outcome === 'delivered';
  const bad = ['failed', 'dead-lettered', 'refused', 'not-stored', 'dropped-ttl'].includes(outcome);
  return h('span', { class: 'badge outcome', 'data-outcome': outcome, 'data-state': good ? 'ok' : bad ? 'bad' : 'neutral' }, outcome || 'unknown');
}

// ---------------------------------------------------------------------------------------
// Status messages (#status is aria-live, so screen readers hear them)

function announce(text, kind = 'info') {
  const box = $('#status');
  const close = h('button', { type: 'button', 'aria-label': 'Dismiss message' }, 'Dismiss');
  const message = h('div', { class: 'message', 'data-kind': kind }, h('span', { text }), close);
  close.addEventListener('click', () => message.remove());
  fill(box, message);
  // Errors stay until dismissed or replaced; other messages go by themselves.
  if (kind !== 'error') setTimeout(() => message.remove(), 6000);
}

function errorBox(error, prefix = '') {
  return h('div', { class: 'error-box', role: 'alert' }, `${prefix}${errorText(error)}`);
}

// ---------------------------------------------------------------------------------------
// Signing in and out

async function whoami(token) {
  return api('/auth/whoami', { token, signOutOn401: false });
}

function showLogin(message = '') {
  leavePage();
  $('#boot').hidden = true;
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-error').textContent = message;
  const input = $('#login-token');
  input.value = '';
  input.setAttribute('aria-invalid', message ? 'true' : 'false');
  input.focus();
}

async function submitLogin(event) {
  event.preventDefault();
  const input = $('#login-token');
  const button = $('#login-submit');
  const errorEl = $('#login-error');
  const token = input.value.trim();
  if (!token) {
    errorEl.textContent = 'Enter a token.';
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    return;
  }
  button.disabled = true;
  errorEl.textContent = '';
  try {
    const user = await whoami(token);
    state.token = token;
    storageSet(sessionStorage, TOKEN_KEY, token);
    enterApp(user, false, true);
  } catch (error) {
    errorEl.textContent = errorText(error);
    input.setAttribute('aria-invalid', 'true');
    input.select();
  } finally {
    button.disabled = false;
  }
}

function signOut(message = '') {
  if ($('#app').hidden && !$('#login').hidden) {
    if (message) $('#login-error').textContent = message;
    return;
  }
  state.token = '';
  state.user = null;
  state.discovery = null;
  state.groupVersions.clear();
  storageSet(sessionStorage, TOKEN_KEY, null);
  showLogin(message);
}

/** Shows the console; `focusPage` moves focus into it (after signing in, when the form goes). */
function enterApp(user, anonymous, focusPage = false) {
  state.user = user;
  state.anonymous = anonymous;
  $('#boot').hidden = true;
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#whoami').textContent = `${user.name} (${user.role})`;
  $('#logout').hidden = anonymous;
  render(focusPage);
  seedNamespaces();
}

/** Finds the namespaces to offer from the brokers (the topology and lists add more). */
async function seedNamespaces() {
  try {
    const brokers = await api('/apis/eventing.knative.dev/v1/brokers');
    noteNamespaces((brokers?.items || []).map((b) => b.metadata?.namespace));
  } catch { /* each page shows its own errors; this is only a head start */ }
}

async function startUp() {
  let refused = '';
  if (state.token) {
    try {
      return enterApp(await whoami(state.token), false);
    } catch (error) {
      if (!(error instanceof ApiError && error.code === 401)) return showLogin(errorText(error));
      state.token = '';
      storageSet(sessionStorage, TOKEN_KEY, null);
      refused = `The saved token was refused: ${errorText(error)}`;
    }
  }
  try {
    // A server started with --api-auth none answers without a token.
    return enterApp(await whoami(''), true);
  } catch (error) {
    showLogin(error instanceof ApiError && error.code === 401 ? refused : errorText(error));
  }
}

// ---------------------------------------------------------------------------------------
// Theme and namespace

function systemTheme() {
  return matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light';
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  const other = theme === 'dark' ? 'light' : 'dark';
  const button = $('#theme-toggle');
  fill(button, h('span', { 'aria-hidden': 'true' }, theme === 'dark' ? '☀' : '☾'), ' ', h('span', { class: 'label' }, theme === 'dark' ? 'Light' : 'Dark'));
  button.setAttribute('aria-label', `Switch to the ${other} theme`);
  button.title = `Switch to the ${other} theme`;
}

function noteNamespaces(names) {
  let added = false;
  for (const name of names) {
    if (name && !state.namespaces.has(name)) {
      state.namespaces.add(name);
      added = true;
    }
  }
  if (added) fillNamespaceSelect();
}

function fillNamespaceSelect() {
  const select = $('#namespace');
  const names = new Set(state.namespaces);
  if (state.namespace) names.add(state.namespace);
  fill(select,
    h('option', { value: '' }, 'all namespaces'),
    ...[...names].sort().map((name) => h('option', { value: name }, name)),
  );
  select.value = state.namespace;
}

// ---------------------------------------------------------------------------------------
// Routing

const ROUTES = {
  topology: { title: 'Topology', nav: 'topology', show: showTopology },
  objects: { title: 'Objects', nav: 'objects', show: showObjects },
  object: { title: 'Object', nav: 'objects', show: showObject },
  apply: { title: 'Apply objects', nav: 'objects', show: showApply },
  eventtypes: { title: 'Event types', nav: 'eventtypes', show: showEventTypes },
  tap: { title: 'Live tap', nav: 'tap', show: showTap },
  trace: { title: 'Event trace', nav: 'trace', show: showTrace },
};

/** Pages the namespace selector applies to. */
const NAMESPACED_PAGES = new Set(['topology', 'objects', 'eventtypes']);

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [name, ...rest] = raw.split('/');
  const params = rest.map((part) => {
    try { return decodeURIComponent(part); } catch { return part; }
  });
  return { name, params, route: ROUTES[name] };
}

function leavePage() {
  const page = state.current;
  state.current = null;
  if (!page) return;
  page.controller.abort();
  for (const cleanup of page.cleanups) {
    try { cleanup(); } catch (error) { console.error(error); }
  }
}

/** Shows the page the hash names; `focus` moves focus to it (on navigation, not refreshes). */
function render(focus) {
  if ($('#app').hidden) return;
  const { name, params, route } = parseHash();
  if (!route) {
    // The default route; replaceState fires no hashchange, so this renders once.
    history.replaceState(null, '', '#/topology');
    render(focus);
    return;
  }
  leavePage();
  // Messages belong to the page they came from; errors stay shown inline there.
  if (focus) fill($('#status'));
  const controller = new AbortController();
  const page = {
    signal: controller.signal,
    controller,
    cleanups: [],
    onLeave(fn) { this.cleanups.push(fn); },
    get active() { return state.current === this; },
  };
  state.current = page;
  for (const link of $('#nav').querySelectorAll('a')) {
    if (link.getAttribute('href') === `#/${route.nav}`) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  document.title = `${route.title} · Rivulet`;
  const main = $('#main');
  fill(main);
  main.dataset.page = name;
  Promise.resolve()
    .then(() => route.show(page, params, main))
    .catch((error) => {
      if (isAbort(error) || !page.active) return;
      add(main, errorBox(error));
      announce(errorText(error), 'error');
    });
  if (focus) main.focus();
}

// ---------------------------------------------------------------------------------------
// Keyboard

function isTyping(target) {
  if (!(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  if (target.tagName === 'TEXTAREA' || target.tagName === 'SELECT') return true;
  if (target.tagName === 'INPUT') return !['button', 'checkbox', 'radio', 'submit', 'reset'].includes(target.type);
  return false;
}

const G_KEYS = { t: 'topology', o: 'objects', e: 'eventtypes', l: 'tap', r: 'trace' };
let gPressedAt = 0;

function onKeydown(event) {
  if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
  if ($('#app').hidden || $('#help').open || isTyping(event.target)) return;
  if (gPressedAt && Date.now() - gPressedAt < 1500) {
    gPressedAt = 0;
    const page = G_KEYS[event.key];
    if (page) {
      event.preventDefault();
      if (location.hash === `#/${page}`) render(true);
      else location.hash = `#/${page}`;
    }
    return;
  }
  gPressedAt = 0;
  if (event.key === 'g') {
    gPressedAt = Date.now();
  } else if (event.key === '/') {
    const box = $('#main [data-search]') || $('#main input:not([type="hidden"])');
    if (box) {
      event.preventDefault();
      box.focus();
      box.select?.();
    }
  } else if (event.key === '?') {
    event.preventDefault();
    $('#help').showModal();
  }
}

// ---------------------------------------------------------------------------------------
// Common page parts

function pageHead(title, ...actions) {
  return h('div', { class: 'page-head' }, h('h1', { text: title }), actions.length ? h('div', { class: 'actions' }, actions) : null);
}

function tableWrap(table, label) {
  return h('div', { class: 'table-wrap', role: 'region', 'aria-label': label, tabindex: '0' }, table);
}

function readOnlyNote() {
  if (state.user?.role !== 'viewer') return null;
  return h('p', { class: 'notice readonly-note' }, 'read-only token: changes will be refused');
}

/** Makes a table row open `href` on click, Enter or Space, besides the link it holds. */
function rowOpens(row, href) {
  row.classList.add('clickable');
  row.addEventListener('click', (event) => {
    if (event.target.closest('a, button, input, select, textarea')) return;
    if (window.getSelection()?.toString()) return; // selecting text is not a click
    location.hash = href;
  });
}

// ---------------------------------------------------------------------------------------
// Topology

const ROLE_COLUMN = { source: 0, broker: 1, channel: 2, trigger: 2, sink: 3, external: 3 };
const COLUMN_TITLES = ['Sources', 'Brokers', 'Channels and triggers', 'Subscribers and sinks'];
const BOX = { w: 206, h: 64, colGap: 168, rowGap: 18, pad: 20, top: 44 };

async function showTopology(page, _params, main) {
  const search = h('input', { id: 'topology-search', type: 'search', placeholder: 'Highlight by kind, name or namespace', 'data-search': '', 'aria-label': 'Highlight objects' });
  const summary = h('p', { id: 'topology-summary', class: 'muted toolbar-note' });
  const errorEl = h('div');
  const empty = h('p', { id: 'topology-empty', class: 'empty', hidden: true });
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.id = 'topology';
  svg.setAttribute('role', 'group');
  svg.setAttribute('aria-label', 'Topology: how events flow between objects');
  const frame = h('div', { class: 'topology-frame' }, svg);
  const reset = h('button', { type: 'button', id: 'zoom-reset', title: 'Fit to the width' });
  const showZoom = () => {
    const percent = Math.round(sizeSvg(svg, frame) * 100);
    reset.textContent = state.zoom ? `${percent}%` : `Fit ${percent}%`;
    reset.setAttribute('aria-label', `Zoom ${percent}%${state.zoom ? '' : ', fitted'}: fit to the width`);
  };
  const zoomBy = (factor) => {
    state.zoom = factor ? Math.min(3, Math.max(0.3, sizeSvg(svg, frame) * factor)) : null;
    showZoom();
  };
  reset.addEventListener('click', () => zoomBy(0));
  const onResize = debounce(() => { if (!state.zoom) showZoom(); }, 100);
  window.addEventListener('resize', onResize);
  page.onLeave(() => window.removeEventListener('resize', onResize));
  const zoom = h('div', { class: 'zoom', role: 'group', 'aria-label': 'Zoom' },
    h('button', { type: 'button', id: 'zoom-out', 'aria-label': 'Zoom out', title: 'Zoom out', on: { click: () => zoomBy(1 / 1.25) } }, '−'),
    reset,
    h('button', { type: 'button', id: 'zoom-in', 'aria-label': 'Zoom in', title: 'Zoom in', on: { click: () => zoomBy(1.25) } }, '+'),
  );
  add(main,
    pageHead('Topology'),
    h('div', { class: 'toolbar' }, h('div', { class: 'field search-field' }, h('label', { for: 'topology-search' }, 'Highlight'), search), zoom, h('p', { class: 'spacer' }), summary),
    errorEl,
    empty,
    frame,
    legend(),
  );

  const open = (node) => {
    const href = node?.getAttribute('data-href');
    if (href) location.hash = href;
  };
  svg.addEventListener('click', (event) => open(event.target.closest('g.node')));
  let layout = null;
  svg.addEventListener('keydown', (event) => {
    const node = event.target.closest('g.node');
    if (!node) return;
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      open(node);
      return;
    }
    // Arrows move between boxes: up and down a column, left and right along the arrows.
    const item = layout?.byId.get(node.getAttribute('data-id'));
    if (!item) return;
    const column = layout.used.find((c) => c.column === item.column)?.list || [];
    const index = column.indexOf(item);
    const nextItem = {
      ArrowUp: column[index - 1],
      ArrowDown: column[index + 1],
      ArrowLeft: topmost(item.preds),
      ArrowRight: topmost(item.succs),
    }[event.key];
    if (!(event.key in { ArrowUp: 1, ArrowDown: 1, ArrowLeft: 1, ArrowRight: 1 })) return;
    event.preventDefault();
    if (!nextItem) return;
    const target = [...svg.querySelectorAll('g.node')].find((n) => n.getAttribute('data-id') === nextItem.id);
    target?.focus();
  });
  search.addEventListener('input', () => highlight(svg, search.value));

  let last = '';
  let busy = false;
  const refresh = async () => {
    if (busy) return;
    busy = true;
    try {
      const path = state.namespace ? `/graph?namespace=${enc(state.namespace)}` : '/graph';
      const graph = await api(path, { signal: page.signal });
      if (!page.active) return;
      fill(errorEl);
      if (!state.namespace) noteNamespaces(graph.nodes.map((n) => n.namespace));
      summary.textContent = `${plural(graph.nodes.length, 'node')}, ${plural(graph.edges.length, 'edge')}; rates are events per second over the last ${graph.rateWindowSeconds ?? 60} s; updated ${new Date().toLocaleTimeString()}.`;
      const text = JSON.stringify(graph);
      if (text === last) return; // nothing changed: keep the drawing, its scroll and focus
      last = text;
      layout = drawTopology(svg, graph, frame);
      showZoom();
      highlight(svg, search.value);
      empty.hidden = graph.nodes.length > 0;
      frame.hidden = graph.nodes.length === 0;
      fill(empty,
        state.namespace ? `No objects in namespace ${state.namespace}. ` : 'No objects yet. ',
        h('a', { href: '#/apply' }, 'Apply a Broker and Triggers'),
        ' to see how events flow.',
      );
    } catch (error) {
      if (isAbort(error) || !page.active) return;
      fill(errorEl, errorBox(error, 'Could not load the graph: '));
    } finally {
      busy = false;
    }
  };
  await refresh();
  const timer = setInterval(() => { if (!document.hidden) refresh(); }, TOPOLOGY_REFRESH_MS);
  page.onLeave(() => clearInterval(timer));
}

function legend() {
  const box = (cls) => `<svg width="22" height="14" aria-hidden="true"><rect class="swatch ${cls}" x="1" y="1" width="20" height="12" rx="3"/></svg>`;
  const line = (cls) => `<svg width="30" height="10" aria-hidden="true"><path class="line ${cls}" d="M1 5 H29"/></svg>`;
  const list = h('ul', { class: 'legend', 'aria-label': 'Legend' });
  // Static, trusted markup: no value from the server goes in here.
  list.innerHTML = [
    `<li>${box('ok')} ✓ Ready</li>`,
    `<li>${box('bad')} ✕ Not ready (with the reason)</li>`,
    `<li>${box('unknown')} ? No status yet</li>`,
    `<li>${box('external')} Outside Rivulet (a URL, a Service)</li>`,
    `<li>${line('')} Events, with their rate</li>`,
    `<li>${line('dead')} To a dead-letter sink</li>`,
  ].join('');
  return list;
}

/** Sizes the drawing for the zoom (fitted to the frame's width when none was chosen); returns the zoom. */
function sizeSvg(svg, frame) {
  const w = Number(svg.dataset.width || 0);
  const hgt = Number(svg.dataset.height || 0);
  let zoom = state.zoom;
  if (!zoom) zoom = w && frame.clientWidth ? Math.min(1, Math.max(0.75, (frame.clientWidth - 2) / w)) : 1;
  svg.setAttribute('width', String(Math.round(w * zoom)));
  svg.setAttribute('height', String(Math.round(hgt * zoom)));
  return zoom;
}

function topmost(items) {
  return items.reduce((best, item) => (!best || item.y < best.y ? item : best), null);
}

/** Dims what does not match the highlight text, and the edges between dimmed nodes. */
function highlight(svg, text) {
  const words = text.trim().toLowerCase();
  const matched = new Set();
  for (const node of svg.querySelectorAll('g.node')) {
    const hit = !words || (node.dataset.search || '').includes(words);
    node.classList.toggle('dimmed', !hit);
    node.classList.toggle('highlight', Boolean(words) && hit);
    if (hit) matched.add(node.dataset.id);
  }
  for (const edge of svg.querySelectorAll('g.edge-group')) {
    const hit = !words || matched.has(edge.dataset.from) || matched.has(edge.dataset.to);
    edge.classList.toggle('dimmed', !hit);
  }
}

/** `name`, or `namespace/name` when the drawing is not of that namespace alone. */
function displayName(node) {
  if (!node.namespace || state.namespace === node.namespace) return node.name;
  return `${node.namespace}/${node.name}`;
}

/** A node's readiness in words, as `rivulet graph` says it. */
function nodeProblem(node) {
  if (node.missing) return 'does not exist';
  if (node.external) return null;
  if (node.ready === true) return null;
  if (node.ready === false) return node.reason || node.message || 'not ready';
  return 'not reconciled yet';
}

function nodeReadyAttr(node) {
  if (node.missing || node.ready === false) return 'false';
  if (node.ready === true) return 'true';
  return 'unknown';
}

/**
 * Places nodes in columns by role, orders each column by where its neighbours are (a few
 * sweeps each way, which keeps crossings down), pulls each node level with its parents, then
 * moves parents beside their children.
 */
function layoutGraph(graph) {
  const items = graph.nodes.map((node, index) => ({ node, id: node.id, index, column: ROLE_COLUMN[node.role] ?? 3, x: 0, y: 0, preds: [], succs: [], outs: [], ins: [] }));
  const byId = new Map(items.map((item) => [item.id, item]));
  const edges = [];
  for (const edge of graph.edges) {
    const from = byId.get(edge.from);
    const to = byId.get(edge.to);
    if (!from || !to) continue;
    const laid = { edge, from, to };
    from.succs.push(to);
    to.preds.push(from);
    from.outs.push(laid);
    to.ins.push(laid);
    edges.push(laid);
  }
  const columns = [[], [], [], []];
  for (const item of items) columns[item.column].push(item);
  const used = columns.map((list, column) => ({ list, column })).filter((c) => c.list.length);
  used.forEach(({ list }, i) => { for (const item of list) item.x = BOX.pad + i * (BOX.w + BOX.colGap); });

  const step = BOX.h + BOX.rowGap;
  const stack = (list) => list.forEach((item, i) => { item.y = BOX.top + i * step; });
  const mean = (list) => list.reduce((sum, item) => sum + item.y, 0) / list.length;
  const reorder = (list, neighbours) => {
    const keyed = list.map((item) => {
      const near = neighbours(item);
      return { item, key: near.length ? mean(near) : item.y };
    });
    keyed.sort((a, b) => a.key - b.key || a.item.index - b.item.index);
    list.splice(0, list.length, ...keyed.map((k) => k.item));
    stack(list);
  };
  const before = (item) => item.preds.filter((p) => p.column < item.column);
  const after = (item) => item.succs.filter((s) => s.column > item.column);
  used.forEach(({ list }) => stack(list));
  for (let pass = 0; pass < 3; pass++) {
    for (let i = 1; i < used.length; i++) reorder(used[i].list, before);
    for (let i = used.length - 2; i >= 0; i--) reorder(used[i].list, after);
  }
  for (let i = 1; i < used.length; i++) reorder(used[i].list, before);
  for (let i = 1; i < used.length; i++) {
    let next = BOX.top;
    for (const item of used[i].list) {
      const parents = before(item);
      item.y = Math.max(next, parents.length ? mean(parents) : next);
      next = item.y + step;
    }
  }
  // Then each node moves down beside the middle of what it feeds (a broker beside its
  // triggers), never above where it is, so the columns stay in order and do not overlap.
  for (let i = used.length - 2; i >= 0; i--) {
    let next = BOX.top;
    for (const item of used[i].list) {
      const children = after(item);
      item.y = Math.max(next, item.y, children.length ? mean(children) : 0);
      next = item.y + step;
    }
  }
  const bottom = items.reduce((max, item) => Math.max(max, item.y + BOX.h), BOX.top);
  const width = BOX.pad * 2 + used.length * BOX.w + Math.max(0, used.length - 1) * BOX.colGap;
  return { items, edges, used, byId, width: Math.max(width, 320), height: bottom + BOX.pad };
}

/** Where an edge leaves and enters: spread along the boxes' sides, in the order of the far ends. */
function assignPorts(items) {
  for (const item of items) {
    item.outs.sort((a, b) => a.to.y - b.to.y || a.to.index - b.to.index);
    item.outs.forEach((laid, i) => { laid.y1 = item.y + (BOX.h * (i + 1)) / (item.outs.length + 1); });
    item.ins.sort((a, b) => a.from.y - b.from.y || a.from.index - b.from.index);
    item.ins.forEach((laid, i) => { laid.y2 = item.y + (BOX.h * (i + 1)) / (item.ins.length + 1); });
  }
}

function edgeMarkup(laid, nodeNames) {
  const { edge, from, to } = laid;
  const x1 = from.x + BOX.w;
  const x2 = to.x;
  const { y1, y2 } = laid;
  const dx = x2 > x1 ? (x2 - x1) / 2 : 90; // backward edges loop out and back in
  const c1 = x1 + dx;
  const c2 = x2 - dx;
  const d = `M${x1.toFixed(1)},${y1.toFixed(1)} C${c1.toFixed(1)},${y1.toFixed(1)} ${c2.toFixed(1)},${y2.toFixed(1)} ${x2.toFixed(1)},${y2.toFixed(1)}`;
  const dead = edge.kind === 'deadLetter';
  const lines = [];
  if (dead) lines.push(['note', 'dead letter']);
  if (edge.label) lines.push(['filter', cut(edge.label, 28)]);
  if (typeof edge.rate === 'number') lines.push(['rate', formatRate(edge.rate)]);
  // Labels go above the end where this edge is alone (a broker's many triggers each have one
  // edge in; a sink's many triggers each one edge out), so they do not pile up mid-gap.
  let lx;
  let ly;
  let anchor;
  if (x2 > x1 && to.ins.length === 1) [lx, ly, anchor] = [x2 - 12, y2 - 6, 'end'];
  else if (x2 > x1 && from.outs.length === 1) [lx, ly, anchor] = [x1 + 10, y1 - 6, 'start'];
  else [lx, ly, anchor] = [(x1 + 3 * c1 + 3 * c2 + x2) / 8, (y1 + y2) / 2 - (lines.length - 1) * 6.5 + 4, 'middle'];
  const first = anchor === 'middle' ? ly : ly - (lines.length - 1) * 13;
  const labels = lines.map(([cls, text], i) => `<text class="${cls}" x="${lx.toFixed(1)}" y="${(first + i * 13).toFixed(1)}" text-anchor="${anchor}">${esc(text)}</text>`).join('');
  const what = { sink: 'sends to', channel: 'stores in', trigger: 'passes to', subscriber: 'delivers to', deadLetter: 'dead-letters to' }[edge.kind] || 'to';
  const title = [
    `${nodeNames.get(from.id)} ${what} ${nodeNames.get(to.id)}`,
    edge.label ? `filter: ${edge.label}` : '',
    typeof edge.rate === 'number' ? `${formatRate(edge.rate)} over the rate window` : 'rate not measured yet',
    typeof edge.count === 'number' ? `${edge.count} events since the server started` : '',
  ].filter(Boolean).join('\n');
  return `<g class="edge-group" data-from="${esc(from.id)}" data-to="${esc(to.id)}" data-kind="${esc(edge.kind)}">`
    + `<path class="edge${dead ? ' dead-letter' : ''}" data-from="${esc(from.id)}" data-to="${esc(to.id)}" data-kind="${esc(edge.kind)}" d="${d}" marker-end="url(#${dead ? 'arrow-dead' : 'arrow'})"><title>${esc(title)}</title></path>`
    + (labels ? `<g class="edge-label" aria-hidden="true">${labels}</g>` : '')
    + '</g>';
}

const MARKS = {
  true: 'M-3.2,0.2 L-1,2.6 L3.4,-2.6',
  false: 'M-2.6,-2.6 L2.6,2.6 M2.6,-2.6 L-2.6,2.6',
  unknown: 'M-2.8,0 H2.8',
};

function nodeMarkup(item) {
  const { node } = item;
  const ready = nodeReadyAttr(node);
  const problem = nodeProblem(node);
  const name = displayName(node);
  const linkable = Boolean(node.apiVersion) && !node.external && node.kind !== 'URL';
  const href = linkable ? objectHref(node.apiVersion, node.kind, node.namespace, node.name) : '';
  let status;
  if (node.external) status = node.kind === 'URL' ? 'address outside Rivulet' : 'external';
  else if (problem) status = `not ready: ${problem}`; // as `rivulet graph` says it
  else status = 'Ready';
  if (typeof node.rate === 'number') status += ` · accepted ${formatRate(node.rate)}`;
  const kindText = node.kind === 'Channel' ? 'Channel' : node.kind;
  const spoken = `${node.kind} ${name}, ${status}`;
  const title = [
    `${node.kind} ${node.namespace ? `${node.namespace}/` : ''}${node.name}`,
    node.external ? 'outside Rivulet' : (problem ? `not ready: ${problem}` : 'Ready'),
    node.message && node.message !== problem ? node.message : '',
    node.address ? `address: ${node.address}` : '',
    node.filter ? `filter: ${node.filter}` : '',
    typeof node.rate === 'number' ? `accepted ${formatRate(node.rate)}` : '',
    linkable ? 'Enter or click to open the object' : '',
  ].filter(Boolean).join('\n');
  const search = `${node.kind} ${node.namespace} ${node.name} ${node.namespace}/${node.name}`.toLowerCase();
  return `<g class="node" data-id="${esc(node.id)}" data-kind="${esc(node.kind)}" data-role="${esc(node.role)}" data-ready="${ready}"`
    + `${node.external ? ' data-external="true"' : ''}${node.missing ? ' data-missing="true"' : ''}`
    + ` data-search="${esc(search)}"${href ? ` data-href="${esc(href)}"` : ''}`
    + ` tabindex="0" role="${linkable ? 'link' : 'img'}" aria-label="${esc(spoken)}" transform="translate(${item.x},${item.y.toFixed(1)})">`
    + `<title>${esc(title)}</title>`
    + `<rect class="focus-ring" x="-4" y="-4" width="${BOX.w + 8}" height="${BOX.h + 8}" rx="9"/>`
    + `<rect class="node-box" width="${BOX.w}" height="${BOX.h}" rx="6"/>`
    + `<g class="mark" transform="translate(17,18)"><circle r="7.5"/><path d="${MARKS[ready]}"/></g>`
    + `<text class="node-kind" x="31" y="22">${esc(cut(kindText, 26))}</text>`
    + `<text class="node-name" x="12" y="41">${esc(cut(name, 25))}</text>`
    + `<text class="node-status" x="12" y="56">${esc(cut(status, 33))}</text>`
    + '</g>';
}

/**
 * Draws the graph as one markup string. The frame keeps its scroll offsets (they belong to
 * it, not to the drawing), and nothing here reads layout, so the browser lays it out once.
 */
function drawTopology(svg, graph, frame) {
  const started = performance.now();
  const focusedId = document.activeElement?.closest?.('#topology g.node')?.getAttribute('data-id');
  const layout = layoutGraph(graph);
  assignPorts(layout.items);
  const names = new Map(layout.items.map((item) => [item.id, `${item.node.kind} ${displayName(item.node)}`]));
  const parts = [
    '<defs>',
    '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path class="arrow" d="M0,0 L10,5 L0,10 z"/></marker>',
    '<marker id="arrow-dead" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path class="arrow-dead" d="M0,0 L10,5 L0,10 z"/></marker>',
    '</defs>',
  ];
  for (const [i, { column }] of layout.used.entries()) {
    parts.push(`<text class="column-title" x="${BOX.pad + i * (BOX.w + BOX.colGap)}" y="24">${esc(COLUMN_TITLES[column])}</text>`);
  }
  parts.push('<g class="edges">');
  for (const laid of layout.edges) parts.push(edgeMarkup(laid, names));
  parts.push('</g><g class="nodes">');
  for (const item of layout.items) parts.push(nodeMarkup(item));
  parts.push('</g>');
  svg.setAttribute('viewBox', `0 0 ${layout.width} ${layout.height}`);
  svg.dataset.width = String(layout.width);
  svg.dataset.height = String(layout.height);
  sizeSvg(svg, frame);
  svg.innerHTML = parts.join('');
  if (focusedId) {
    const again = [...svg.querySelectorAll('g.node')].find((n) => n.getAttribute('data-id') === focusedId);
    again?.focus({ preventScroll: true });
  }
  svg.setAttribute('data-nodes', String(graph.nodes.length));
  svg.setAttribute('data-render-ms', (performance.now() - started).toFixed(1));
  return layout;
}

// ---------------------------------------------------------------------------------------
// Objects

async function showObjects(page, _params, main) {
  const search = h('input', { id: 'objects-search', type: 'search', placeholder: 'Filter by kind, namespace or name', 'data-search': '' });
  const kindSelect = h('select', { id: 'objects-kind' }, h('option', { value: '' }, 'all kinds'));
  const tbody = h('tbody');
  const table = h('table', { id: 'objects' },
    h('caption', { class: 'visually-hidden' }, 'Objects'),
    h('thead', {}, h('tr', {}, ['Kind', 'Namespace', 'Name', 'Ready', 'Age'].map((t) => h('th', { scope: 'col' }, t)))),
    tbody);
  const count = h('p', { class: 'muted', id: 'objects-count', 'aria-live': 'polite' });
  const problems = h('div', { id: 'objects-errors' });
  const reload = h('button', { type: 'button', id: 'objects-reload' }, 'Refresh');
  add(main,
    pageHead('Objects', h('a', { class: 'button primary', href: '#/apply', id: 'objects-apply-link' }, 'Apply new objects'), reload),
    h('div', { class: 'toolbar' },
      h('div', { class: 'field grow' }, h('label', { for: 'objects-search' }, 'Filter'), search),
      h('div', { class: 'field' }, h('label', { for: 'objects-kind' }, 'Kind'), kindSelect)),
    problems,
    count,
    tableWrap(table, 'Objects table'),
  );

  let rows = [];
  const draw = () => {
    const words = search.value.trim().toLowerCase();
    const kind = kindSelect.value;
    const shown = rows.filter((row) => (!state.namespace || row.namespace === state.namespace)
      && (!kind || row.info.kind === kind)
      && (!words || row.search.includes(words)));
    fill(tbody, ...shown.map(objectRow));
    if (!shown.length) {
      add(tbody, h('tr', {}, h('td', { colspan: '5', class: 'empty' }, rows.length ? 'No object matches.' : 'No objects yet.')));
    }
    count.textContent = `${plural(shown.length, 'object')}${shown.length !== rows.length ? ` of ${rows.length}` : ''}${state.namespace ? ` in namespace ${state.namespace}` : ''}`;
  };
  search.addEventListener('input', draw);
  kindSelect.addEventListener('change', draw);

  const load = async () => {
    count.textContent = 'Loading…';
    fill(problems);
    const kinds = await discoverKinds();
    if (!page.active) return;
    const listed = await Promise.allSettled(kinds.map((info) => api(collectionPath(info), { signal: page.signal })));
    if (!page.active) return;
    rows = [];
    const failures = [];
    listed.forEach((result, i) => {
      const info = kinds[i];
      if (result.status === 'rejected') {
        if (!isAbort(result.reason)) failures.push(h('li', {}, `${info.kind} (${info.apiVersion}): ${errorText(result.reason)}`));
        return;
      }
      for (const item of result.value?.items || []) {
        const namespace = item.metadata?.namespace || '';
        const name = item.metadata?.name || '';
        rows.push({ info, item, namespace, name, search: `${info.kind} ${namespace} ${name} ${namespace}/${name}`.toLowerCase() });
      }
    });
    rows.sort((a, b) => a.info.kind.localeCompare(b.info.kind) || a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name));
    if (failures.length) add(problems, h('div', { class: 'error-box', role: 'alert' }, 'Some kinds could not be listed:', h('ul', {}, failures)));
    noteNamespaces(rows.map((r) => r.namespace));
    const chosen = kindSelect.value;
    const kindNames = [...new Set(rows.map((r) => r.info.kind))].sort();
    fill(kindSelect, h('option', { value: '' }, 'all kinds'), ...kindNames.map((k) => h('option', { value: k }, k)));
    kindSelect.value = kindNames.includes(chosen) ? chosen : '';
    draw();
  };
  reload.addEventListener('click', () => {
    state.discovery = null;
    state.groupVersions.clear();
    load().catch((error) => { if (!isAbort(error)) fill(problems, errorBox(error)); });
  });
  await load();
}

function objectRow({ info, item, namespace, name }) {
  const ready = readyOf(item);
  const href = objectHref(info.apiVersion, info.kind, namespace, name);
  const created = item.metadata?.creationTimestamp;
  const row = h('tr', { class: 'object', 'data-kind': info.kind, 'data-namespace': namespace, 'data-name': name, 'data-ready': ready.status === 'True' ? 'true' : ready.status === 'False' ? 'false' : 'unknown' },
    h('td', { class: 'nowrap', title: info.apiVersion }, info.kind),
    h('td', { class: 'nowrap' }, namespace || '—'),
    h('td', { class: 'wrap' }, h('a', { href }, name)),
    h('td', {}, readyBadge(ready)),
    h('td', { class: 'nowrap' }, created ? h('time', { datetime: created, title: created }, age(created)) : ''));
  rowOpens(row, href);
  return row;
}

// ---------------------------------------------------------------------------------------
// One object

async function showObject(page, params, main) {
  const [apiVersionPart = '', kind = '', namespacePart = '', name = ''] = params;
  const apiVersion = apiVersionPart.replaceAll('~', '/');
  const namespace = namespacePart === '-' ? '' : namespacePart;
  document.title = `${kind} ${name} · Rivulet`;
  const summary = h('dl', { id: 'object-summary', class: 'summary' });
  const conditions = h('tbody');
  const spec = h('pre', { id: 'object-spec', class: 'json' });
  const yaml = h('textarea', { id: 'object-yaml', class: 'code', spellcheck: 'false', autocomplete: 'off', autocapitalize: 'off', 'aria-describedby': 'object-yaml-hint' });
  const applyButton = h('button', { type: 'button', id: 'object-apply', class: 'primary' }, 'Apply');
  const reloadButton = h('button', { type: 'button', id: 'object-reload' }, 'Reload');
  const result = h('div', { id: 'object-apply-result', class: 'result', 'aria-live': 'polite' });
  const loadError = h('div');
  const hasFailures = kind === 'Broker' || kind === 'Trigger';
  const failures = h('div', { id: 'object-failures' });
  const editorSlot = h('div', { class: 'editor' });

  add(main,
    h('p', { class: 'breadcrumb' }, h('a', { href: '#/objects' }, 'Objects'), ` / ${kind}`),
    pageHead(`${kind} ${name}`),
    loadError,
    h('h2', {}, 'Summary'),
    summary,
    h('h2', {}, 'Conditions'),
    tableWrap(h('table', { id: 'object-conditions' },
      h('thead', {}, h('tr', {}, ['Type', 'Status', 'Reason', 'Message', 'Last transition'].map((t) => h('th', { scope: 'col' }, t)))),
      conditions), 'Conditions'),
    ...(hasFailures ? [h('h2', {}, 'Recent failures'), failures] : []),
    h('h2', {}, 'Spec'),
    spec,
    editorSlot,
  );
  // Added once the YAML is in, so the editor is never seen (or applied) empty.
  const editor = [
    h('h2', {}, h('label', { for: 'object-yaml' }, 'YAML')),
    h('p', { id: 'object-yaml-hint', class: 'hint' }, 'Edit and apply; Ctrl+Enter applies. The server checks the object and your token’s role.'),
    readOnlyNote(),
    yaml,
    h('div', { class: 'button-row' }, applyButton, reloadButton),
    result,
  ];

  learnKinds();
  let info;
  const load = async () => {
    info = info || await resolveKind(apiVersion, kind);
    const path = objectPath(info, namespace, name);
    const [object, text] = await Promise.all([
      api(path, { signal: page.signal }),
      api(path, { as: 'yaml', signal: page.signal }),
    ]);
    if (!page.active) return;
    fill(loadError);
    fillObject(object, info, { summary, conditions, spec });
    yaml.value = text;
    if (!yaml.isConnected) add(editorSlot, ...editor.filter(Boolean));
    if (hasFailures) loadFailures(page, failures, kind, object);
  };
  const reload = async () => {
    reloadButton.disabled = true;
    try {
      await load();
    } catch (error) {
      if (!isAbort(error) && page.active) {
        const missing = error instanceof ApiError && error.code === 404;
        fill(loadError, errorBox(error, `Could not load ${kind} ${namespace ? `${namespace}/` : ''}${name}: `),
          missing ? h('p', {}, h('a', { href: '#/apply' }, 'Create it on the Apply page')) : null);
        if (hasFailures && !yaml.isConnected) fill(failures, h('p', { class: 'empty' }, 'Shown once the object loads.'));
      }
    } finally {
      reloadButton.disabled = false;
    }
  };
  const applyNow = async () => {
    applyButton.disabled = true;
    try {
      const ok = await applyManifest(yaml.value, result, page.signal);
      if (ok && page.active) await reload();
    } finally {
      applyButton.disabled = false;
    }
  };
  applyButton.addEventListener('click', applyNow);
  reloadButton.addEventListener('click', () => { fill(result); result.removeAttribute('data-outcome'); reload(); });
  yaml.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) { event.preventDefault(); applyNow(); }
  });
  await reload();
}

function fillObject(object, info, { summary, conditions, spec }) {
  const meta = object.metadata || {};
  const ready = readyOf(object);
  const address = object.status?.address?.url;
  const entries = [
    ['Kind', `${object.kind || info.kind}`],
    ['API version', object.apiVersion || info.apiVersion],
    ['Name', meta.name || ''],
    ['Namespace', meta.namespace || '—'],
    ['Ready', readyBadge(ready)],
    ['Address', address ? h('code', {}, address) : '—'],
  ];
  if (ready.message) entries.push(['Ready message', ready.message]);
  if (info.kind === 'Trigger' && object.spec?.broker) {
    entries.push(['Broker', h('a', { href: objectHref('eventing.knative.dev/v1', 'Broker', meta.namespace, object.spec.broker) }, object.spec.broker)]);
  }
  const target = info.kind === 'Trigger' ? object.spec?.subscriber : object.spec?.sink;
  if (target) entries.push([info.kind === 'Trigger' ? 'Subscriber' : 'Sink', describeDestination(target, meta.namespace)]);
  if (meta.creationTimestamp) entries.push(['Created', `${meta.creationTimestamp} (${age(meta.creationTimestamp)} ago)`]);
  if (meta.generation !== undefined) entries.push(['Generation', `${meta.generation}${object.status?.observedGeneration !== undefined ? `, observed ${object.status.observedGeneration}` : ''}`]);
  fill(summary, ...entries.flatMap(([term, value]) => [h('dt', {}, term), h('dd', { 'data-field': term.toLowerCase().replaceAll(' ', '-') }, value)]));

  const list = object.status?.conditions || [];
  fill(conditions, ...list.map((c) => h('tr', { class: 'condition', 'data-type': c.type || '', 'data-status': c.status || '' },
    h('td', { class: 'nowrap' }, c.type || ''),
    h('td', { class: 'nowrap' }, h('span', { class: 'badge', 'data-state': c.status === 'True' ? 'ok' : c.status === 'False' ? (c.severity && c.severity !== 'Error' ? 'warn' : 'bad') : 'unknown' }, c.status || '')),
    h('td', {}, c.reason || ''),
    h('td', { class: 'wrap' }, c.message || ''),
    h('td', { class: 'nowrap' }, c.lastTransitionTime || ''))));
  if (!list.length) add(conditions, h('tr', {}, h('td', { colspan: '5', class: 'empty' }, 'No conditions yet.')));
  spec.textContent = object.spec === undefined ? '(no spec)' : prettyJson(object.spec);
}

/** A Knative destination (`ref` and/or `uri`), linked when it names an object. */
function describeDestination(destination, namespace) {
  const ref = destination.ref;
  if (ref?.kind && ref?.name) {
    const text = `${ref.kind} ${ref.namespace || namespace}/${ref.name}${destination.uri ? ` + ${destination.uri}` : ''}`;
    return ref.apiVersion ? h('a', { href: objectHref(ref.apiVersion, ref.kind, ref.namespace || namespace, ref.name) }, text) : text;
  }
  return destination.uri ? h('code', {}, destination.uri) : '—';
}

/** Recent failed and dead-lettered events of a Broker, or of a Trigger's broker at that trigger. */
async function loadFailures(page, el, kind, object) {
  const namespace = object.metadata?.namespace || 'default';
  const name = object.metadata?.name || '';
  const broker = kind === 'Broker' ? name : object.spec?.broker;
  if (!broker) {
    fill(el, h('p', { class: 'empty' }, 'This trigger names no broker.'));
    return;
  }
  fill(el, h('p', { class: 'muted' }, 'Loading recent failures…'));
  let lists;
  try {
    lists = await Promise.all(['failed', 'dead-lettered'].map((outcome) =>
      api(`/journal/events?broker=${enc(`${namespace}/${broker}`)}&outcome=${outcome}&limit=20`, { signal: page.signal })));
  } catch (error) {
    if (isAbort(error) || !page.active) return;
    if (error instanceof ApiError && error.code === 404) {
      fill(el, h('p', { class: 'notice' }, `The event journal is off: ${errorText(error)}`));
    } else {
      fill(el, errorBox(error, 'Could not read the journal: '));
    }
    return;
  }
  if (!page.active) return;
  const seen = new Map();
  for (const path of lists.flatMap((l) => l?.events || [])) {
    seen.set(`${path.namespace}/${path.broker}\u0000${path.source}\u0000${path.id}`, path);
  }
  const failedHere = (step) => (step.step === 'delivery' && step.outcome !== 'delivered') || step.step === 'dropped';
  let paths = [...seen.values()];
  if (kind === 'Trigger') paths = paths.filter((p) => (p.steps || []).some((s) => s.trigger === name && failedHere(s)));
  paths.sort((a, b) => (b.first_at || 0) - (a.first_at || 0));
  if (!paths.length) {
    fill(el, h('p', { class: 'empty' }, 'no recent failures'));
    return;
  }
  const rows = paths.map((path) => {
    const failing = (path.steps || []).filter((s) => failedHere(s) && (kind !== 'Trigger' || s.trigger === name));
    const what = failing.map((s) => {
      if (s.step === 'dropped') return `trigger ${s.trigger}: dropped (${s.reason})`;
      const lastAttempt = (s.attempts || []).filter((a) => !a.dead_letter).at(-1);
      const why = lastAttempt ? `; last attempt: ${lastAttempt.status ?? 'no answer'}${lastAttempt.error ? `: ${lastAttempt.error}` : ''}` : '';
      return `trigger ${s.trigger}: ${s.outcome} to ${s.subscriber}${why}`;
    }).join('\n');
    const href = `#/trace/${enc(path.id)}`;
    const row = h('tr', { class: 'failure', 'data-id': path.id },
      h('td', { class: 'nowrap' }, timeEl(path.first_at, `${dayUtc(path.first_at)} ${clockUtc(path.first_at)}`)),
      h('td', { class: 'wrap mono' }, h('a', { href }, breakable(path.id))),
      h('td', { class: 'wrap' }, breakable(eventTypeOf(path))),
      h('td', {}, outcomeBadge(path.outcome)),
      h('td', { class: 'wrap' }, what));
    rowOpens(row, href);
    return row;
  });
  fill(el, tableWrap(h('table', { class: 'failures' },
    h('thead', {}, h('tr', {}, ['Arrived (UTC)', 'ID', 'Type', 'Outcome', 'What failed'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, rows)), 'Recent failures'));
}

// ---------------------------------------------------------------------------------------
// Applying YAML

/** Sends a manifest to POST /apply and shows what became of each object; true when all went well. */
async function applyManifest(text, resultEl, signal) {
  // data-outcome is set only with the answer, so whoever watches it sees the final word.
  resultEl.removeAttribute('data-outcome');
  resultEl.setAttribute('aria-busy', 'true');
  fill(resultEl, h('p', {}, 'Applying…'));
  let body = null;
  let failure = null;
  try {
    body = await api('/apply', { method: 'POST', headers: { 'Content-Type': 'application/yaml' }, body: text, signal });
  } catch (error) {
    if (isAbort(error)) {
      resultEl.removeAttribute('aria-busy');
      return false;
    }
    failure = error;
    body = error instanceof ApiError ? error.body : null;
  }
  const results = Array.isArray(body?.results) ? body.results : [];
  const skipped = Array.isArray(body?.skipped) ? body.skipped : [];
  const failed = results.filter((r) => r.outcome === 'failed');
  const ok = !failure && failed.length === 0;
  const counts = {};
  for (const r of results) counts[r.outcome] = (counts[r.outcome] || 0) + 1;
  const countText = Object.entries(counts).map(([outcome, n]) => `${n} ${outcome}`).join(', ');
  let headline;
  if (failure) headline = errorText(failure);
  else if (failed.length) headline = `${failed.length} of ${plural(results.length, 'object')} failed: ${failed.map((r) => r.message || r.outcome).join('; ')}`;
  else headline = results.length ? `Applied: ${countText}` : 'Applied: nothing to change';
  resultEl.removeAttribute('aria-busy');
  fill(resultEl,
    h('p', { class: 'headline' }, headline),
    results.length ? h('ul', { class: 'apply-results' }, results.map((r) => applyResultItem(r, headline))) : null,
    skipped.length ? [h('p', {}, `Skipped ${plural(skipped.length, 'document')}:`), h('ul', { class: 'apply-skipped' }, skipped.map((s) => h('li', {}, describeSkipped(s))))] : null,
  );
  resultEl.dataset.outcome = ok ? 'ok' : 'error';
  announce(ok ? 'Applied' : `Apply failed: ${headline}`, ok ? 'ok' : 'error');
  return ok;
}

function applyResultItem(r, headline) {
  const where = r.namespace ? `${r.namespace}/${r.name}` : r.name;
  const item = h('li', { 'data-outcome': r.outcome || '', 'data-kind': r.kind || '', 'data-name': r.name || '' });
  const known = r.apiVersion || state.knownKinds?.get(r.kind);
  add(item, `${r.kind || '?'} `);
  add(item, known && r.outcome !== 'failed' ? h('a', { href: objectHref(known, r.kind, r.namespace, r.name) }, where) : where);
  const message = r.message && !headline.includes(r.message) ? ` — ${r.message}` : '';
  add(item, `: ${r.outcome}${r.code ? ` (${r.code})` : ''}${message}`);
  return item;
}

function describeSkipped(s) {
  if (typeof s === 'string') return s;
  if (s && typeof s === 'object') {
    const what = [s.kind, s.namespace && s.name ? `${s.namespace}/${s.name}` : s.name].filter(Boolean).join(' ');
    const why = s.reason || s.message || '';
    if (what || why) return `${what}${what && why ? ': ' : ''}${why}`;
  }
  return JSON.stringify(s);
}

/** Remembers kind → apiVersion from discovery, so apply results can link to their objects. */
async function learnKinds() {
  if (state.knownKinds) return;
  try {
    const kinds = await discoverKinds();
    state.knownKinds = new Map(kinds.map((k) => [k.kind, k.apiVersion]));
  } catch { /* links are a convenience; the results show without them */ }
}

const APPLY_EXAMPLE = `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: greetings
  namespace: default
spec:
  broker: default
  filter:
    attributes:
      type: com.example.greeting
  subscriber:
    uri: http://127.0.0.1:8090/
`;

async function showApply(page, _params, main) {
  const yaml = h('textarea', { id: 'apply-yaml', class: 'code', spellcheck: 'false', autocomplete: 'off', autocapitalize: 'off', placeholder: APPLY_EXAMPLE, 'aria-describedby': 'apply-hint', 'data-search': '' });
  const submit = h('button', { type: 'button', id: 'apply-submit', class: 'primary' }, 'Apply');
  const result = h('div', { id: 'apply-result', class: 'result', 'aria-live': 'polite' });
  add(main,
    h('p', { class: 'breadcrumb' }, h('a', { href: '#/objects' }, 'Objects'), ' / Apply'),
    pageHead('Apply objects'),
    h('p', { id: 'apply-hint', class: 'hint' }, 'Paste one or more YAML documents separated by ', h('code', {}, '---'), ' (Knative Brokers, Triggers, sources, sinks, EventTypes, ConfigMaps…). Each is created or updated; Ctrl+Enter applies.'),
    readOnlyNote(),
    h('label', { for: 'apply-yaml', class: 'visually-hidden' }, 'YAML to apply'),
    yaml,
    h('div', { class: 'button-row' }, submit),
    result,
  );
  learnKinds();
  const applyNow = async () => {
    submit.disabled = true;
    try {
      await applyManifest(yaml.value, result, page.signal);
    } finally {
      submit.disabled = false;
    }
  };
  submit.addEventListener('click', applyNow);
  yaml.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) { event.preventDefault(); applyNow(); }
  });
}

// ---------------------------------------------------------------------------------------
// Event types

function attributeOf(eventType, name) {
  return (eventType.spec?.attributes || []).find((a) => a.name === name)?.value || '';
}

function brokerOf(eventType) {
  const ref = eventType.spec?.reference;
  if (!ref?.name) return '';
  return `${ref.namespace || eventType.metadata?.namespace || ''}/${ref.name}`;
}

async function showEventTypes(page, _params, main) {
  const search = h('input', { id: 'eventtypes-search', type: 'search', placeholder: 'Filter by type, source or name', 'data-search': '' });
  const tbody = h('tbody');
  const count = h('p', { class: 'muted', 'aria-live': 'polite' });
  const detail = h('section', { id: 'eventtype-detail', class: 'detail', hidden: true, 'aria-live': 'polite', 'aria-label': 'Selected event type' });
  const problems = h('div');
  add(main,
    pageHead('Event types'),
    h('p', { class: 'hint' }, 'The events each broker carries, learnt from traffic or applied by hand, with the schema inferred from their payloads. Select a row to see its schema and an example, and to download a consumer scaffold.'),
    h('div', { class: 'toolbar' }, h('div', { class: 'field grow' }, h('label', { for: 'eventtypes-search' }, 'Filter'), search)),
    problems,
    count,
    tableWrap(h('table', { id: 'eventtypes' },
      h('thead', {}, h('tr', {}, ['Type', 'Source', 'Broker', 'Namespace', 'Name', 'Schema'].map((t) => h('th', { scope: 'col' }, t)))),
      tbody), 'Event types'),
    detail,
  );

  const listed = await api('/apis/eventing.knative.dev/v1beta3/eventtypes', { signal: page.signal });
  if (!page.active) return;
  const items = (listed?.items || []).map((item) => ({
    item,
    namespace: item.metadata?.namespace || '',
    name: item.metadata?.name || '',
    type: attributeOf(item, 'type'),
    source: attributeOf(item, 'source'),
    broker: brokerOf(item),
  }));
  items.sort((a, b) => a.type.localeCompare(b.type) || a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name));
  noteNamespaces(items.map((i) => i.namespace));

  const select = (entry, focusDetail) => {
    state.selectedEventType = `${entry.namespace}/${entry.name}`;
    for (const row of tbody.querySelectorAll('tr.eventtype')) {
      row.setAttribute('aria-selected', String(row.dataset.namespace === entry.namespace && row.dataset.name === entry.name));
    }
    showEventTypeDetail(detail, entry);
    if (focusDetail) detail.scrollIntoView({ block: 'nearest' });
  };
  const draw = () => {
    const words = search.value.trim().toLowerCase();
    const shown = items.filter((e) => (!state.namespace || e.namespace === state.namespace)
      && (!words || [e.type, e.source, e.name, e.namespace, e.broker].some((t) => t.toLowerCase().includes(words))));
    fill(tbody, ...shown.map((entry) => {
      const selected = state.selectedEventType === `${entry.namespace}/${entry.name}`;
      const row = h('tr', { class: 'eventtype clickable', 'data-name': entry.name, 'data-namespace': entry.namespace, tabindex: '0', 'aria-selected': String(selected) },
        h('td', { class: 'wrap' }, h('strong', {}, entry.type ? breakable(entry.type) : '(no type)')),
        h('td', { class: 'wrap' }, entry.source ? breakable(entry.source) : 'any'),
        h('td', { class: 'nowrap' }, entry.broker || '—'),
        h('td', { class: 'nowrap' }, entry.namespace),
        h('td', { class: 'wrap mono' }, breakable(entry.name)),
        h('td', { class: 'nowrap' }, entry.item.status?.schemaVersion ? `v${entry.item.status.schemaVersion}` : 'none yet'));
      row.addEventListener('click', () => select(entry, true));
      row.addEventListener('keydown', (event) => {
        if (event.target !== row || (event.key !== 'Enter' && event.key !== ' ')) return;
        event.preventDefault();
        select(entry, true);
      });
      return row;
    }));
    if (!shown.length) add(tbody, h('tr', {}, h('td', { colspan: '6', class: 'empty' }, items.length ? 'No event type matches.' : 'No event types yet: they appear as brokers accept events.')));
    count.textContent = `${plural(shown.length, 'event type')}${shown.length !== items.length ? ` of ${items.length}` : ''}`;
    const chosen = shown.find((e) => `${e.namespace}/${e.name}` === state.selectedEventType);
    if (chosen) showEventTypeDetail(detail, chosen);
    else detail.hidden = true;
  };
  search.addEventListener('input', draw);
  draw();
}

function showEventTypeDetail(detail, entry) {
  const { item } = entry;
  const status = item.status || {};
  const example = status.sample ?? status.example;
  const result = h('p', { id: 'scaffold-result', class: 'hint', 'aria-live': 'polite' });
  const scaffoldButtons = [['rust', 'Rust'], ['typescript', 'TypeScript'], ['python', 'Python']].map(([lang, label]) => {
    const button = h('button', { type: 'button', class: 'scaffold', 'data-lang': lang, 'aria-label': `Download a ${label} consumer scaffold for ${entry.type || entry.name}` }, `⤓ ${label}`);
    button.addEventListener('click', () => downloadScaffold(entry, lang, button, result));
    return button;
  });
  const facts = [
    ['Name', h('a', { href: objectHref(item.apiVersion || 'eventing.knative.dev/v1beta3', 'EventType', entry.namespace, entry.name) }, `${entry.namespace}/${entry.name}`)],
    ['Broker', entry.broker || '—'],
    ['Source', entry.source || 'any'],
    ['Description', item.spec?.description || '—'],
    ['Content type', status.dataContentType || '—'],
    ['Data schema', status.dataSchema || '—'],
    ['Schema version', status.schemaVersion ? `${status.schemaVersion}${status.schemaVersions?.length ? ` (${plural(status.schemaVersions.length, 'version')} kept)` : ''}` : 'none inferred yet'],
  ];
  detail.hidden = false;
  fill(detail,
    h('h2', {}, entry.type || entry.name),
    h('dl', { class: 'summary' }, facts.flatMap(([t, v]) => [h('dt', {}, t), h('dd', {}, v)])),
    h('div', { class: 'two-columns' },
      h('div', {}, h('h3', {}, 'Inferred schema'), h('pre', { id: 'eventtype-schema', class: 'json', tabindex: '0' }, status.schema ? prettyJson(status.schema) : 'No schema inferred yet: no JSON payload seen.')),
      h('div', {}, h('h3', {}, 'Example event'), h('pre', { id: 'eventtype-example', class: 'json', tabindex: '0' }, example ? prettyJson(example) : 'No example event yet.'))),
    h('h3', {}, 'Consumer scaffold'),
    h('p', { class: 'hint' }, 'A small project that receives this event type, with its payload as a typed structure; downloaded as a .tar.gz.'),
    h('div', { class: 'button-row' }, scaffoldButtons),
    result,
  );
}

/** The file name a Content-Disposition header gives, if any. */
function filenameFrom(disposition) {
  if (!disposition) return '';
  const star = /filename\*\s*=\s*(?:UTF-8|utf-8)''([^;]+)/.exec(disposition);
  if (star) {
    try { return decodeURIComponent(star[1].trim()); } catch { /* fall back to the plain form */ }
  }
  const quoted = /filename\s*=\s*"((?:[^"\\]|\\.)*)"/.exec(disposition);
  if (quoted) return quoted[1].replace(/\\(.)/g, '$1');
  const bare = /filename\s*=\s*([^;\s]+)/.exec(disposition);
  return bare ? bare[1] : '';
}

async function downloadScaffold(entry, lang, button, resultEl) {
  button.disabled = true;
  resultEl.textContent = 'Preparing the scaffold…';
  try {
    const response = await api(`/scaffold/${enc(entry.namespace)}/${enc(entry.name)}?lang=${enc(lang)}`, { as: 'response', headers: { Accept: 'application/gzip' } });
    const blob = await response.blob();
    const filename = filenameFrom(response.headers.get('Content-Disposition')) || `${entry.name}-${lang}.tar.gz`;
    const url = URL.createObjectURL(blob);
    const link = h('a', { href: url, download: filename, class: 'visually-hidden', tabindex: '-1' }, filename);
    add(document.body, link);
    link.click();
    link.remove();
    // The browser has started the download; the URL can go once it has read the blob.
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    resultEl.textContent = `Downloaded ${filename} (${blob.size} bytes).`;
    announce(`Downloaded ${filename}`, 'ok');
  } catch (error) {
    resultEl.textContent = `Could not make the scaffold: ${errorText(error)}`;
    announce(`Scaffold failed: ${errorText(error)}`, 'error');
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------
// Live tap

/** Reads server-sent events from a fetch body: calls `onFrame(event, data)` per frame. */
async function readServerSentEvents(body, onFrame) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let event = '';
  let data = [];
  const line = (text) => {
    if (text === '') {
      if (data.length) onFrame(event || 'message', data.join('\n'));
      event = '';
      data = [];
      return;
    }
    if (text.startsWith(':')) return; // a comment: the server's keep-alive
    const colon = text.indexOf(':');
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    for (;;) {
      const end = buffer.search(/[\r\n]/);
      if (end < 0) break;
      // A lone \r at the end may be the first half of \r\n: wait for the next chunk.
      if (buffer[end] === '\r' && end === buffer.length - 1) break;
      const width = buffer[end] === '\r' && buffer[end + 1] === '\n' ? 2 : 1;
      line(buffer.slice(0, end));
      buffer = buffer.slice(end + width);
    }
  }
  buffer += decoder.decode();
  if (buffer) line(buffer);
  line('');
}

async function showTap(page, _params, main) {
  const brokerSelect = h('select', { id: 'tap-broker' });
  const filter = h('input', { id: 'tap-filter', type: 'text', spellcheck: 'false', autocomplete: 'off', placeholder: "type LIKE 'com.example.%'", 'aria-describedby': 'tap-filter-status', 'aria-invalid': 'false', 'data-search': '' });
  const filterStatus = h('p', { id: 'tap-filter-status', class: 'filter-status', 'data-valid': 'true', 'aria-live': 'polite' });
  const start = h('button', { type: 'submit', id: 'tap-start', class: 'primary' }, '▶ Start');
  const stop = h('button', { type: 'button', id: 'tap-stop', disabled: true }, '■ Stop');
  const clear = h('button', { type: 'button', id: 'tap-clear' }, 'Clear');
  const tapState = h('p', { id: 'tap-state', class: 'tap-state', 'data-state': 'stopped', role: 'status' }, 'stopped');
  const counter = h('p', { id: 'tap-count', class: 'muted' });
  const events = h('ul', { id: 'tap-events', class: 'tap-events', 'aria-label': 'Events, newest first' });
  const form = h('form', { id: 'tap-form', class: 'toolbar tap-controls', novalidate: true },
    h('div', { class: 'field' }, h('label', { for: 'tap-broker' }, 'Broker'), brokerSelect),
    h('div', { class: 'field filter' }, h('label', { for: 'tap-filter' }, 'Filter (CloudEvents SQL, optional)'), filter, filterStatus),
    h('div', { class: 'button-row' }, start, stop, clear));
  add(main,
    pageHead('Live tap'),
    h('p', { class: 'hint' }, 'Each event the broker answers, as it arrives (with the status it got), and what each trigger did with it. Times are UTC.'),
    form,
    tapState,
    counter,
    events,
  );

  // Brokers to tap.
  try {
    const brokers = await api('/apis/eventing.knative.dev/v1/brokers', { signal: page.signal });
    if (!page.active) return;
    const names = (brokers?.items || []).map((b) => `${b.metadata?.namespace}/${b.metadata?.name}`).sort();
    noteNamespaces((brokers?.items || []).map((b) => b.metadata?.namespace));
    fill(brokerSelect, ...names.map((n) => h('option', { value: n }, n)));
    const preferred = names.find((n) => state.namespace && n.startsWith(`${state.namespace}/`)) || (names.includes('default/default') ? 'default/default' : names[0]);
    if (preferred) brokerSelect.value = preferred;
    if (!names.length) {
      add(brokerSelect, h('option', { value: '' }, 'no brokers'));
      start.disabled = true;
    }
  } catch (error) {
    if (isAbort(error) || !page.active) return;
    form.after(errorBox(error, 'Could not list the brokers: '));
    start.disabled = true;
  }

  // Filter validation as you type.
  let checkController = null;
  const check = debounce(async () => {
    checkController?.abort();
    const expression = filter.value.trim();
    if (!expression) {
      filterStatus.dataset.valid = 'true';
      filterStatus.textContent = '';
      filter.setAttribute('aria-invalid', 'false');
      return;
    }
    checkController = new AbortController();
    try {
      const answer = await api(`/cesql/check?expression=${enc(expression)}`, { signal: checkController.signal });
      if (filter.value.trim() !== expression) return;
      const valid = answer?.valid === true;
      filterStatus.dataset.valid = String(valid);
      filterStatus.textContent = valid ? 'valid CloudEvents SQL' : (answer?.error || 'not valid CloudEvents SQL');
      filter.setAttribute('aria-invalid', String(!valid));
    } catch (error) {
      if (isAbort(error)) return;
      filterStatus.dataset.valid = 'false';
      filterStatus.textContent = `Could not check the filter: ${errorText(error)}`;
    }
  }, 200);
  filter.addEventListener('input', check);
  page.onLeave(() => { check.cancel(); checkController?.abort(); });

  // The stream.
  const rows = new Map(); // "source\0id" -> row element
  let shown = 0;
  let tapController = null;
  const setState = (text, kind) => {
    tapState.textContent = text;
    tapState.dataset.state = kind;
  };
  const running = (on) => {
    start.disabled = on;
    stop.disabled = !on;
    brokerSelect.disabled = on;
    filter.readOnly = on;
  };
  const updateCount = () => {
    counter.textContent = `${plural(shown, 'event')} shown${rows.size < shown ? `, the newest ${rows.size} kept` : ''}`;
  };
  const onFrame = (kind, text) => {
    let data;
    try { data = JSON.parse(text); } catch { data = { text }; }
    if (kind === 'event') {
      shown += 1;
      addTapEvent(events, rows, data);
      updateCount();
    } else if (kind === 'step') {
      addTapStep(rows, data);
    } else if (kind === 'missed') {
      events.prepend(h('li', { class: 'tap-missed' }, `${data.missed} events missed: this tap read too slowly`));
      trimTap(events, rows);
    }
  };
  const stopTap = () => {
    if (!tapController) return;
    tapController.abort();
    tapController = null;
  };
  const startTap = async () => {
    stopTap();
    const [namespace, ...rest] = brokerSelect.value.split('/');
    const broker = rest.join('/');
    if (!namespace || !broker) return;
    const expression = filter.value.trim();
    const controller = new AbortController();
    tapController = controller;
    running(true);
    setState('connecting…', 'connecting');
    try {
      const path = `/journal/tap/${enc(namespace)}/${enc(broker)}${expression ? `?filter=${enc(expression)}` : ''}`;
      const response = await api(path, { as: 'response', headers: { Accept: 'text/event-stream' }, signal: controller.signal });
      setState('listening', 'listening');
      announce(`Tapping broker ${namespace}/${broker}`);
      await readServerSentEvents(response.body, onFrame);
      if (tapController === controller) setState('stopped: the server closed the tap', 'stopped');
    } catch (error) {
      if (controller.signal.aborted || isAbort(error)) {
        if (tapController === null || tapController === controller) setState('stopped', 'stopped');
      } else {
        setState(errorText(error), 'error');
        announce(`The tap failed: ${errorText(error)}`, 'error');
      }
    } finally {
      if (tapController === controller || tapController === null) {
        tapController = null;
        running(false);
      }
    }
  };
  form.addEventListener('submit', (event) => { event.preventDefault(); startTap(); });
  stop.addEventListener('click', () => { stopTap(); start.focus(); });
  clear.addEventListener('click', () => { fill(events); rows.clear(); shown = 0; updateCount(); });
  page.onLeave(stopTap);
}

function trimTap(list, rows) {
  while (list.children.length > TAP_MAX_ROWS) {
    const last = list.lastElementChild;
    if (last.dataset.key) rows.delete(last.dataset.key);
    last.remove();
  }
}

function tapStatusBadge(status) {
  const code = Number(status);
  const state = code >= 200 && code < 300 ? 'ok' : code >= 500 ? 'warn' : 'bad';
  const word = code >= 200 && code < 300 ? 'stored' : code >= 500 ? 'not stored' : 'refused';
  return h('span', { class: 'badge http-status', 'data-state': state, title: word }, `${status} ${word}`);
}

function addTapEvent(list, rows, data) {
  const event = data.event || {};
  const id = String(event.id ?? data.id ?? '');
  const source = String(event.source ?? data.source ?? '');
  const key = `${source}\u0000${id}`;
  const href = `#/trace/${enc(id)}`;
  const steps = h('ul', { class: 'tap-steps' });
  const row = h('li', { class: 'tap-event fresh', 'data-id': id, 'data-status': String(data.status ?? '') },
    h('div', { class: 'tap-head' },
      timeEl(Date.now(), clockUtc(Date.now())),
      tapStatusBadge(data.status),
      h('span', { class: 'type' }, event.type || '(type not shown)'),
      h('span', { class: 'source' }, source),
      h('a', { class: 'id', href, title: 'Trace this event' }, id)),
    steps);
  row.dataset.key = key;
  if (event.data !== undefined || event.data_base64 !== undefined) {
    const shownData = event.data !== undefined ? event.data : `base64: ${event.data_base64}`;
    add(row, h('details', {}, h('summary', {}, 'data'), h('pre', { class: 'block' }, typeof shownData === 'string' ? shownData : prettyJson(shownData))));
  }
  // A reused key (a sender retrying) replaces the older row.
  rows.get(key)?.remove();
  rows.set(key, row);
  list.prepend(row);
  setTimeout(() => row.classList.remove('fresh'), 1500);
  trimTap(list, rows);
}

/** A step's line in the tap, as `rivulet tap` words it. */
function tapStepText(step) {
  switch (step.step) {
    case 'delivery': {
      const status = (step.attempts || []).at(-1)?.status;
      return `trigger ${step.trigger}: ${step.outcome}${status !== undefined ? ` (${status})` : ''}`;
    }
    case 'refused': return `trigger ${step.trigger}: refused by its ${step.filter} filter`;
    case 'dropped': return `trigger ${step.trigger}: dropped (${step.reason})`;
    default: return `${step.trigger ? `trigger ${step.trigger}: ` : ''}${step.step}`;
  }
}

function addTapStep(rows, data) {
  const row = rows.get(`${data.source ?? ''}\u0000${data.id ?? ''}`);
  const step = data.step || {};
  if (!row) return; // its event scrolled out of the kept rows
  const list = row.querySelector('.tap-steps');
  const outcome = step.step === 'delivery' ? step.outcome : step.step;
  const item = h('li', { class: 'tap-step', 'data-step': step.step || '', 'data-trigger': step.trigger || '', 'data-outcome': outcome || '' }, tapStepText(step));
  const same = [...list.children].find((li) => li.dataset.trigger === (step.trigger || '') && step.trigger);
  if (same) same.replaceWith(item);
  else add(list, item);
}

// ---------------------------------------------------------------------------------------
// Event trace

function eventTypeOf(path) {
  return (path.steps || []).find((s) => s.step === 'arrived')?.type || '';
}

async function showTrace(page, params, main) {
  const id = params[0] || '';
  const field = (fieldId, label, props = {}) => h('div', { class: 'field' }, h('label', { for: fieldId }, label), h('input', { id: fieldId, type: 'text', spellcheck: 'false', autocomplete: 'off', ...props }));
  const outcome = h('select', { id: 'trace-outcome' }, h('option', { value: '' }, 'any'), OUTCOMES.map((o) => h('option', { value: o }, o)));
  const form = h('form', { id: 'trace-form', class: 'trace-form', novalidate: true, 'aria-label': 'Find events' },
    field('trace-id', 'Event ID', { 'data-search': '', placeholder: 'order-1001' }),
    field('trace-type', 'Type', { placeholder: 'com.example.order' }),
    field('trace-source', 'Source', { placeholder: '/shop' }),
    h('div', { class: 'field' }, h('label', { for: 'trace-outcome' }, 'Outcome'), outcome),
    field('trace-since', 'Since', { placeholder: '10m, 1h or RFC 3339' }),
    field('trace-broker', 'Broker', { placeholder: 'namespace/name' }),
    h('div', { class: 'actions' }, h('button', { id: 'trace-search', type: 'submit', class: 'primary' }, 'Search'), h('button', { id: 'trace-reset', type: 'button' }, 'Clear')));
  const output = h('div', { id: 'trace-output' });
  add(main,
    pageHead('Event trace'),
    h('p', { class: 'hint' }, 'Where an event went: its arrival, each trigger’s verdict, every delivery attempt and the outcome. With an ID the other fields are not used. Times are UTC.'),
    form,
    output,
  );
  const inputs = { type: $('#trace-type', form), source: $('#trace-source', form), outcome, since: $('#trace-since', form), broker: $('#trace-broker', form) };
  const query = state.traceQuery || {};
  for (const [key, input] of Object.entries(inputs)) input.value = query[key] || '';
  $('#trace-id', form).value = id;

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const wanted = $('#trace-id', form).value.trim();
    if (wanted) {
      const target = `#/trace/${enc(wanted)}`;
      if (location.hash === target) render(false);
      else location.hash = target;
      return;
    }
    state.traceQuery = Object.fromEntries(Object.entries(inputs).map(([key, input]) => [key, input.value.trim()]));
    if (id) location.hash = '#/trace';
    else searchEvents(page, output, state.traceQuery);
  });
  $('#trace-reset', form).addEventListener('click', () => {
    for (const input of Object.values(inputs)) input.value = '';
    $('#trace-id', form).value = '';
    state.traceQuery = null;
  });

  if (id) await traceEvent(page, output, id);
  else await searchEvents(page, output, state.traceQuery || {});
}

async function searchEvents(page, output, query) {
  const params = new URLSearchParams();
  for (const key of ['type', 'source', 'outcome', 'since', 'broker']) if (query[key]) params.set(key, query[key]);
  params.set('limit', '100');
  fill(output, h('p', { class: 'muted' }, 'Searching…'));
  let answer;
  try {
    answer = await api(`/journal/events?${params}`, { signal: page.signal });
  } catch (error) {
    if (isAbort(error) || !page.active) return;
    fill(output, errorBox(error));
    return;
  }
  if (!page.active) return;
  const events = answer?.events || [];
  const rows = events.map((path) => {
    const href = `#/trace/${enc(path.id)}`;
    const row = h('tr', { class: 'trace-row', 'data-id': path.id, 'data-outcome': path.outcome },
      h('td', { class: 'nowrap' }, timeEl(path.first_at, `${dayUtc(path.first_at)} ${clockUtc(path.first_at)}`)),
      h('td', { class: 'nowrap' }, `${path.namespace}/${path.broker}`),
      h('td', { class: 'wrap' }, breakable(eventTypeOf(path))),
      h('td', { class: 'wrap' }, breakable(path.source)),
      h('td', { class: 'wrap mono' }, h('a', { href }, breakable(path.id))),
      h('td', {}, outcomeBadge(path.outcome)));
    rowOpens(row, href);
    return row;
  });
  const filters = Object.entries(query).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ');
  fill(output,
    h('h2', {}, filters ? `Events (${filters})` : 'Recent events'),
    h('p', { class: 'muted', 'aria-live': 'polite' }, events.length ? `${plural(events.length, 'event')}, newest first${events.length >= 100 ? ' (the first 100)' : ''}` : 'no events found'),
    tableWrap(h('table', { id: 'trace-results' },
      h('thead', {}, h('tr', {}, ['Arrived (UTC)', 'Broker', 'Type', 'Source', 'ID', 'Outcome'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows)), 'Events found'),
  );
}

async function traceEvent(page, output, id) {
  fill(output, h('p', { class: 'muted' }, `Looking up ${id}…`));
  let last = '';
  // An event some trigger has not finished with is looked up again, for a while.
  for (let round = 0; round < 30 && page.active; round++) {
    let answer;
    try {
      answer = await api(`/journal/events/${enc(id)}`, { signal: page.signal });
    } catch (error) {
      if (isAbort(error) || !page.active) return;
      if (error instanceof ApiError && error.code === 404) {
        fill(output, h('div', { id: 'trace-missing', class: 'notice', role: 'alert' }, h('strong', {}, `${id} is not in the journal. `), errorText(error)));
      } else {
        fill(output, errorBox(error));
      }
      return;
    }
    if (!page.active) return;
    const paths = answer?.events || [];
    const text = JSON.stringify(paths);
    const unfinished = paths.some((p) => p.outcome === 'accepted' || (p.pending || []).length);
    if (text !== last) {
      last = text;
      fill(output,
        h('p', { class: 'breadcrumb' }, h('a', { href: '#/trace' }, 'Back to the search')),
        paths.length > 1 ? h('p', { class: 'muted' }, `${plural(paths.length, 'recorded path')} for this id (one per source and broker).`) : null,
        h('ol', { id: 'trace-timeline', class: 'timeline', 'aria-busy': String(unfinished) }, paths.flatMap(timelineItems)),
        unfinished ? h('p', { class: 'hint' }, 'Not finished yet: this trace updates by itself.') : null,
      );
    }
    if (!unfinished) return;
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function triggerLink(namespace, trigger) {
  return h('a', { href: objectHref('eventing.knative.dev/v1', 'Trigger', namespace, trigger) }, trigger);
}

/** One recorded path as timeline steps, in the words of `rivulet events trace`. */
function timelineItems(path) {
  const type = eventTypeOf(path);
  const items = [h('li', { class: 'step', 'data-kind': 'path', 'data-id': path.id },
    h('h2', {}, `event ${path.id} from ${path.source} (type ${type || 'unknown'}) at broker ${path.namespace}/${path.broker}, ${dayUtc(path.first_at)} UTC`))];
  for (const step of path.steps || []) {
    const li = h('li', { class: 'step', 'data-kind': step.step }, timeEl(step.at));
    if (step.step === 'arrived') {
      const status = Number(step.status);
      const verdict = status === 202 ? 'accepted' : status >= 500 ? `not stored (${status})` : status >= 200 && status < 300 ? `accepted (${status})` : `refused (${status})`;
      li.dataset.status = String(step.status);
      add(li, `arrived: ${verdict}, from ${step.sender}, ${step.size ?? 0} bytes of data`);
      if (step.subject) add(li, h('span', { class: 'detail-line' }, `subject ${step.subject}`));
      if (step.error) add(li, h('span', { class: 'detail-line error-text' }, step.error));
      if (Array.isArray(step.attributes) && step.attributes.length) {
        add(li, h('details', {}, h('summary', {}, 'attributes'), h('dl', { class: 'attributes' }, step.attributes.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))));
      }
    } else if (step.step === 'delivery') {
      const count = step.attempt_count ?? (step.attempts || []).length;
      li.dataset.outcome = step.outcome;
      li.dataset.trigger = step.trigger;
      add(li, 'trigger ', triggerLink(path.namespace, step.trigger), `: ${step.outcome} to ${step.subscriber} (${plural(count, 'attempt')}${step.latency_ms !== undefined ? `, ${step.latency_ms} ms after arrival` : ''})`);
      if ((step.attempts || []).length) {
        add(li, h('ol', { class: 'attempts' }, step.attempts.map((a) => h('li', { class: 'attempt', 'data-status': a.status ?? '', 'data-dead-letter': a.dead_letter ? 'true' : null },
          `${a.dead_letter ? 'dead-letter ' : ''}attempt ${a.attempt}: ${a.status ?? 'no answer'} in ${Number(a.latency_ms ?? 0).toFixed(1)} ms${a.retry_after_s !== undefined ? `, Retry-After ${a.retry_after_s}s` : ''}`,
          a.error ? h('span', { class: 'error-text' }, `: ${a.error}`) : null))));
        if (count > step.attempts.length) add(li, h('span', { class: 'detail-line' }, `(${count - step.attempts.length} attempts in between not kept)`));
      }
      if (step.dead_letter && step.outcome !== 'delivered') add(li, h('span', { class: 'detail-line' }, `dead-letter sink: ${step.dead_letter}`));
      if (step.reply) {
        add(li, h('span', { class: 'detail-line' }, 'reply ', h('a', { href: `#/trace/${enc(step.reply.id)}` }, step.reply.id), ` (type ${step.reply.type}): ${step.reply.outcome}`));
      }
    } else if (step.step === 'dropped') {
      li.dataset.trigger = step.trigger;
      add(li, 'trigger ', triggerLink(path.namespace, step.trigger), `: dropped (${step.reason})`);
    } else if (step.step === 'refused') {
      li.dataset.trigger = step.trigger;
      add(li, 'trigger ', triggerLink(path.namespace, step.trigger), `: refused by its ${step.filter} filter`);
    } else {
      add(li, `${step.step}${step.trigger ? ` at trigger ${step.trigger}` : ''}`);
    }
    items.push(li);
  }
  const refused = path.refused;
  if (refused && refused.count) {
    const byFilter = Object.entries(refused.by_filter || {}).map(([k, n]) => `${k}: ${n}`).join(', ');
    const named = refused.triggers || [];
    const more = refused.count - named.length;
    const li = h('li', { class: 'step', 'data-kind': 'refused' }, `refused by ${plural(refused.count, 'trigger')} (${byFilter}): `);
    named.forEach((t, i) => add(li, i ? ', ' : '', triggerLink(path.namespace, t)));
    if (more > 0) add(li, ` and ${more} more`);
    if (refused.worked_out) add(li, ` (${refused.worked_out} from the current filters: the channel routed the event past them)`);
    items.push(li);
  }
  if ((path.pending || []).length) {
    const li = h('li', { class: 'step', 'data-kind': 'pending' }, 'not finished yet at: ');
    path.pending.forEach((t, i) => add(li, i ? ', ' : '', triggerLink(path.namespace, t)));
    add(li, ' (their filters accept it; see rivulet_trigger_queue_depth)');
    items.push(li);
  }
  items.push(h('li', { class: 'step', 'data-kind': 'outcome', 'data-outcome': path.outcome }, 'outcome: ', outcomeBadge(path.outcome)));
  return items;
}

// ---------------------------------------------------------------------------------------
// Start

function wire() {
  const stored = storageGet(localStorage, THEME_KEY);
  applyTheme(stored === 'dark' || stored === 'light' ? stored : systemTheme());
  matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
    if (!storageGet(localStorage, THEME_KEY)) applyTheme(systemTheme());
  });
  $('#theme-toggle').addEventListener('click', () => {
    const next = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
    storageSet(localStorage, THEME_KEY, next);
    applyTheme(next);
  });

  fillNamespaceSelect();
  $('#namespace').addEventListener('change', (event) => {
    state.namespace = event.target.value;
    storageSet(sessionStorage, NAMESPACE_KEY, state.namespace);
    if (NAMESPACED_PAGES.has(parseHash().name)) render(false);
  });

  $('#login-form').addEventListener('submit', submitLogin);
  $('#logout').addEventListener('click', () => {
    signOut('');
    $('#login-error').textContent = 'Signed out.';
  });
  $('#help-open').addEventListener('click', () => $('#help').showModal());
  $('#help-close').addEventListener('click', (event) => {
    event.preventDefault();
    $('#help').close();
  });
  // The skip link's #main would otherwise be taken for a route.
  $('#skip-link').addEventListener('click', (event) => {
    event.preventDefault();
    $('#main').focus();
  });
  window.addEventListener('hashchange', () => render(true));
  document.addEventListener('keydown', onKeydown);
}

wire();
startUp();
