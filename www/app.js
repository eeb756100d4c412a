// Gotaxy panel: a small single-page app on the REST API under /api/v0.1/.
// No libraries and nothing from the internet.  Live updates: the server's
// events arrive as server-sent events (/api/v0.1/live); each one makes the
// page re-read what it shows.  The throughput chart is drawn (inline SVG)
// from the server's recorded samples (/throughput), re-read when a new one
// is due, with the current rate from /status as its last point; a client's
// stability comes from /clients/{name}/stability.
"use strict";

const API = "/api/v0.1";
const LANGUAGES = ["en", "zh-CN"];
const state = {
  lang: "en",
  strings: {},
  account: null,
  page: null,
  live: null,
  timer: null,
  refreshTimer: null,
  throughput: null,  // the last /throughput answer
  current: null,  // the current rates: { at, in, out }
  detail: null,  // the client whose stability is shown (#clients/NAME)
  events: { offset: 0, limit: 50, hasMore: false },
  clients: [],
  types: null,  // the proxy types with their fields (/proxy-types), read once
  webhookSent: null,  // the webhook a test notification was last queued for
  mailSent: null,  // the e-mail address a test message was last queued for
};

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) el.setAttribute(name, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

// On a narrow screen tables become stacked cards: each cell shows its column's name.
function labelCells(table) {
  const names = $$("thead th", table).map((th) => th.textContent.trim());
  for (const row of $$("tbody tr", table)) {
    Array.from(row.children).forEach((td, i) => { if (names[i]) td.dataset.label = names[i]; });
  }
}

// -- i18n ----------------------------------------------------------------------

function pickLanguage() {
  const saved = localStorage.getItem("gotaxy.lang");
  if (LANGUAGES.includes(saved)) return saved;
  for (const lang of navigator.languages || [navigator.language || "en"]) {
    if (lang.toLowerCase().startsWith("zh")) return "zh-CN";
    if (lang.toLowerCase().startsWith("en")) return "en";
  }
  return "en";
}

async function setLanguage(lang) {
  const response = await fetch(`i18n/${lang}.json`, { cache: "no-cache" });
  state.strings = await response.json();
  state.lang = lang;
  document.documentElement.lang = lang;
  $("#language").value = lang;
  for (const el of $$("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of $$("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of $$("[data-i18n-title]")) el.title = t(el.dataset.i18nTitle);
  for (const el of $$("[data-i18n-aria]")) el.setAttribute("aria-label", t(el.dataset.i18nAria));
  for (const el of $$("[data-i18n-alt]")) el.alt = t(el.dataset.i18nAlt);
  document.title = "Gotaxy";
  if (state.page) refresh();
}

function t(key, vars = {}) {
  let text = state.strings[key];
  if (text === undefined) text = key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (vars[name] === undefined ? "" : String(vars[name])));
}

// -- formatting ------------------------------------------------------------------

// Byte counts and rates: formatBytes and formatRate, from units.js; a
// type's settings as form texts: specFromTexts, textOf, addressText, from fields.js.

function when(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  return new Date(seconds * 1000).toLocaleString(state.lang);
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return t("time.dh", { d, h });
  if (h) return t("time.hm", { h, m });
  if (m) return t("time.ms", { m, s: s % 60 });
  return t("time.s", { s });
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// A tunnel's public address: a website's URLs as links, anything else as text.
function addressCell(address) {
  const links = addressLinks(address);
  if (!links.length) return cell(addressText(address, location.hostname) || t("tunnels.auto_short"), "address");
  const td = document.createElement("td");
  td.className = "address";
  links.forEach((item, i) => {
    if (i) td.append(", ");
    if (!item.link) { td.append(item.url); return; }
    const a = document.createElement("a");
    a.href = item.url;
    a.textContent = item.url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    td.append(a);
  });
  return td;
}

function badge(kind, text, title) {
  const span = document.createElement("span");
  span.className = `badge ${kind}`;
  span.textContent = text;
  if (title) span.title = title;
  return span;
}

function button(label, className, onClick, testName) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = className || "secondary";
  if (testName) b.dataset.action = testName;
  b.addEventListener("click", onClick);
  return b;
}

// -- API -------------------------------------------------------------------------

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.account && state.account.csrf_token) headers["X-CSRF-Token"] = state.account.csrf_token;
  let response;
  try {
    response = await fetch(API + path, {
      method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    return { ok: false, status: 0, error: { kind: "network", message: t("error.network"), field: null } };
  }
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch (e) { data = null; }
  }
  if (response.status === 401 && state.account && path !== "/login") {
    showLogin();
  }
  if (!response.ok) {
    const error = (data && data.error) || { kind: "invalid", message: response.statusText, field: null };
    return { ok: false, status: response.status, error };
  }
  return { ok: true, status: response.status, data };
}

// Show an error next to what caused it: the field it names, or the form's own line.
// `withKind`: put the kind ("Not logged in", ...) in front; off where the
// message already says it all (the log-in form's own texts).
function showError(root, error, fallback = "_", withKind = true) {
  clearErrors(root);
  const prefix = withKind ? t(`error.${error.kind}`) : "";
  const message = `${prefix}${prefix && error.message ? ": " : ""}${error.message || ""}`;
  const target = (error.field && $(`[data-error="${error.field}"]`, root)) || $(`[data-error="${fallback}"]`, root);
  if (target) target.textContent = message;
  const input = error.field && $(`[name="${error.field}"]`, root);
  if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
}

function clearErrors(root) {
  for (const el of $$("[data-error]", root)) el.textContent = "";
  for (const el of $$("[aria-invalid]", root)) el.removeAttribute("aria-invalid");
}

// -- log-in ------------------------------------------------------------------------

function showLogin() {
  state.account = null;
  stopLive();
  $("#loading").hidden = true;
  $("#nav").hidden = true;
  $("#logout").hidden = true;
  for (const page of $$(".page")) page.hidden = true;
  $("#login").hidden = false;
  $('#login-form [name="password"]').value = "";
  $('#login-form [name="password"]').focus();
}

async function login(event) {
  event.preventDefault();
  const form = event.target;
  const body = { username: form.username.value, password: form.password.value };
  if (!$("#login-code").hidden && form.code.value) body.code = form.code.value;
  const result = await api("POST", "/login", body);
  if (!result.ok) {
    if (result.error.totp_required) {
      $("#login-code").hidden = false;
      clearErrors(form);
      $('[data-error="code"]', form).textContent = t("login.need_code");
      form.code.focus();
      return;
    }
    let own = true;
    if (result.error.kind === "locked") {
      result.error.message = t("login.locked", { s: Math.ceil(result.error.retry_after || 1) });
    } else if (result.error.kind === "unauthorized") {
      result.error.message = result.error.field === "code" ? t("login.wrong_code") : t("login.wrong");
    } else {
      own = false;
    }
    showError(form, result.error, "_", !own);
    return;
  }
  form.password.value = "";
  form.code.value = "";
  $("#login-code").hidden = true;
  clearErrors(form);
  enter(result.data);
}

function enter(account) {
  state.account = account;
  $("#loading").hidden = true;
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#logout").hidden = account.via !== "session";
  startLive();
  route();
}

// The server re-reads server.toml: one line per setting applied or needing a restart.
async function reloadConfig() {
  const card = $("#reload-config").closest(".card");
  clearErrors(card);
  const list = $("#reload-result");
  list.replaceChildren();
  const result = await api("POST", "/reload");
  if (!result.ok) { showError(card, result.error, "reload"); return; }
  const r = result.data;
  const line = (text) => { const li = document.createElement("li"); li.textContent = text; list.append(li); };
  if (!r.applied.length && !r.restart.length) line(t("overview.reload_nothing"));
  for (const c of r.applied) line(t("overview.reload_applied", { key: c.key, detail: c.detail }));
  for (const c of r.restart) line(t("overview.reload_restart", { key: c.key, reason: c.reason }));
  for (const w of r.warnings) line(t("overview.reload_warning", { warning: w }));
}

async function logout() {
  await api("POST", "/logout");
  showLogin();
}

// -- pages -------------------------------------------------------------------------

const PAGES = { overview: loadOverview, clients: loadClients, tunnels: loadTunnels, tokens: loadTokens, certificates: loadCertificates, access: loadAccess,
  events: loadEvents, notifications: loadNotifications, account: loadAccount };

function route() {
  if (!state.account) return;
  const [name, ...rest] = (location.hash || "#overview").slice(1).split("/");
  const page = PAGES[name] ? name : "overview";
  state.page = page;
  state.detail = page === "clients" && rest.length ? decodeURIComponent(rest.join("/")) : null;
  for (const section of $$(".page")) section.hidden = section.id !== `page-${page}`;
  for (const link of $$("#nav a")) link.classList.toggle("active", link.dataset.page === page);
  clearInterval(state.timer);
  // Rates and round trips change without events: re-read them now and then.
  state.timer = setInterval(refresh, page === "overview" ? 2000 : 5000);
  if (page === "events") state.events.offset = 0;
  refresh();
}

function refresh() {
  if (state.account && state.page && state.page !== "account") PAGES[state.page]();
  else if (state.account && state.page === "account") loadAccount();
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, 250);
}

// A tunnel's rates; held by another node, they are that node's newest sample of it (said on hover).
function rateCell(tn) {
  const td = cell(`${formatRate(tn.rate_in)} / ${formatRate(tn.rate_out)}`);
  if (tn.traffic_at) td.title = t("tunnels.rate_sampled", { node: tn.node, time: new Date(tn.traffic_at * 1000).toLocaleTimeString() });
  return td;
}

async function loadOverview() {
  const result = await api("GET", "/status");
  if (!result.ok) return;
  const s = result.data;
  $("#ov-version").textContent = s.version;
  $("#ov-uptime").textContent = duration(s.uptime);
  $("#ov-clients").textContent = `${s.clients_online} / ${s.clients_total}`;
  $("#ov-tunnels").textContent = `${s.tunnels_up} / ${s.tunnels_total}`;
  $("#ov-in").textContent = formatBytes(s.bytes_in);
  $("#ov-out").textContent = formatBytes(s.bytes_out);
  $("#ov-rate-in").textContent = formatRate(s.rate_in);
  $("#ov-rate-out").textContent = formatRate(s.rate_out);
  // Several nodes on the store: the counts and rates are of every node that is up, the bytes this node's.
  const nodes = s.nodes || [];
  const here = nodes.find((n) => n.here);
  $("#ov-cluster").hidden = nodes.length <= 1;
  $("#ov-cluster").textContent = nodes.length > 1
    ? t("overview.cluster", { up: nodes.filter((n) => n.state === "up").length, node: here ? here.node : "?" }) : "";
  // Server time, so the current point lines up with the samples whatever the browser's clock says.
  state.current = { at: Date.now() / 1000 + (state.clockOffset || 0), in: s.rate_in, out: s.rate_out };
  const last = state.throughput && state.throughput.points.length
    ? state.throughput.points[state.throughput.points.length - 1].at : null;
  const stale = !state.throughput || state.current.at - (last || state.throughput.until) >= state.throughput.interval;
  if (stale && !state.throughputPending) {
    state.throughputPending = true;
    const answer = await api("GET", "/throughput?window=3600");
    state.throughputPending = false;
    if (answer.ok) {
      state.throughput = answer.data;
      state.clockOffset = answer.data.until - Date.now() / 1000;
      state.current.at = answer.data.until;
    }
  }
  drawChart();
  await loadNodes();
}

// The server nodes sharing the store (GET /nodes): up or down by lease, clients, tunnels, traffic.
async function loadNodes() {
  const result = await api("GET", "/nodes");
  if (!result.ok) return;
  const body = $("#nodes-table tbody");
  body.replaceChildren();
  for (const n of result.data.nodes) {
    const row = document.createElement("tr");
    row.dataset.node = n.node;
    row.append(cell(n.here ? `${n.node} (${t("nodes.here")})` : n.node, "name"));
    const status = document.createElement("td");
    status.className = "status";
    status.append(n.state === "up" ? badge("up", t("status.up")) : badge("down", n.state === "down" ? t("nodes.down") : t("nodes.gone")));
    row.append(status, cell(n.clients.length ? `${n.clients.length}: ${n.clients.join(", ")}` : "0"),
      cell(String(n.tunnels_up)), cell(`${formatRate(n.rate_in)} / ${formatRate(n.rate_out)}`, "rate"),
      cell(when(n.lease_until)));
    body.append(row);
  }
}

function niceMax(value) {
  const floor = Math.max(1024, value);
  const step = Math.pow(2, Math.ceil(Math.log2(floor)));
  return step;
}

// The throughput of the last hour: the server's samples (the average rate
// over each sample's interval) and, last, the current rate.
function drawChart() {
  const chart = $("#chart");
  const width = Math.max(200, Math.round(chart.getBoundingClientRect().width) || 800);
  const height = 220;
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  chart.replaceChildren();
  const data = state.throughput;
  const points = data ? data.points.map((p) => ({ at: p.at, in: p.rate_in, out: p.rate_out })) : [];
  chart.dataset.points = String(points.length);
  chart.dataset.first = points.length ? String(points[0].at) : "";
  if (data) $("#chart-interval").textContent = t("overview.chart_interval", { s: Math.round(data.interval) });
  if (state.current) points.push(state.current);
  const now = state.current ? state.current.at : Date.now() / 1000;
  // Up to the whole window; less (3 minutes at least) while the samples start later.
  const oldest = points.length ? points[0].at : now;
  const span = Math.min(data ? data.window : 3600, Math.max(180, now - oldest + 10));
  const max = niceMax(Math.max(0, ...points.map((p) => Math.max(p.in, p.out))));
  const left = 76, top = 10, bottom = 22, right = 8;
  const plotW = width - left - right, plotH = height - top - bottom;
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    chart.append(svg("line", { x1: left, x2: left + plotW, y1: y, y2: y, class: "grid" }));
    chart.append(svg("text", { x: 4, y: y + 4, class: "label" }, formatRate((max * i) / 4)));
  }
  const step = [30, 60, 120, 300, 600, 900].find((s) => span / s <= (width < 500 ? 3 : 6)) || 900;
  for (let ago = 0; ago <= span; ago += step) {
    const x = left + plotW - (ago * plotW) / span;
    chart.append(svg("line", { x1: x, x2: x, y1: top, y2: top + plotH, class: "grid" }));
    const text = ago === 0 ? t("stability.now")
      : ago % 60 ? t("overview.seconds_ago", { s: ago }) : t("overview.minutes_ago", { m: ago / 60 });
    chart.append(svg("text", { x, y: height - 6, class: "label", "text-anchor": ago === 0 ? "end" : "middle" }, text));
  }
  const x = (at) => left + plotW - ((now - at) * plotW) / span;
  const y = (value) => top + plotH - (value / max) * plotH;
  for (const key of ["in", "out"]) {
    const shown = points.filter((p) => now - p.at <= span);
    if (!shown.length) continue;
    const d = shown.map((p, i) => `${i ? "L" : "M"}${x(p.at).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
    chart.append(svg("path", { d, class: `series ${key}`, "data-series": key }));
    if (shown.length === 1) chart.append(svg("circle", { cx: x(shown[0].at), cy: y(shown[0][key]), r: 3, class: `dot ${key}` }));
  }
}

function percent(value) {
  return value === null || value === undefined ? "–" : `${value.toFixed(value === 100 ? 0 : 1)} %`;
}

async function loadClients() {
  const [result, stability] = await Promise.all([api("GET", "/clients"), api("GET", "/stability")]);
  if (!result.ok) return;
  state.clients = result.data.clients;
  const uptimes = new Map(stability.ok ? stability.data.clients.map((r) => [r.client, r]) : []);
  const body = $("#clients-table tbody");
  body.replaceChildren();
  for (const c of result.data.clients) {
    const row = document.createElement("tr");
    row.dataset.client = c.name;
    row.append(cell(c.name, "name"));
    const status = document.createElement("td");
    status.className = "status";
    status.append(c.online ? badge("up", t("status.online")) : badge("down", t("status.offline")));
    const s = uptimes.get(c.name);
    row.append(status, cell(c.node || "–", "node"), cell(c.address || "–"), cell(c.version || "–"),
      cell(c.online ? when(c.connected_at) : `${t("clients.last_seen")} ${when(c.last_seen_at)}`),
      cell(c.rtt === null ? "–" : `${(c.rtt * 1000).toFixed(1)} ms`), cell(c.tunnels.join(", ") || "–"),
      uptimeCell(s), cell(s ? `${s.disconnects_24h} / ${s.disconnects_7d}` : "–", "disconnects"));
    const actions = document.createElement("td");
    actions.className = "actions";
    const history = document.createElement("a");
    history.href = `#clients/${encodeURIComponent(c.name)}`;
    history.className = "button secondary";
    history.dataset.action = "history";
    history.textContent = t("clients.history");
    actions.append(history);
    if (c.online) {
      actions.append(button(t("clients.kick"), "secondary", async (e) => {
        if (!confirm(t("clients.kick_confirm", { name: c.name }))) return;
        const r = await api("POST", `/clients/${encodeURIComponent(c.name)}/kick`);
        if (!r.ok) showError($("#page-clients"), r.error, "clients"); else scheduleRefresh();
      }, "kick"));
    }
    row.append(actions);
    row.classList.toggle("selected", c.name === state.detail);
    body.append(row);
  }
  $("#clients-empty").hidden = result.data.clients.length > 0;
  await loadStability();
}

function uptimeCell(s) {
  const td = document.createElement("td");
  td.className = "uptime";
  const day = document.createElement("span"), week = document.createElement("span");
  day.className = "uptime-24h";
  week.className = "uptime-7d";
  day.textContent = s ? percent(s.uptime_24h) : "–";
  week.textContent = s ? percent(s.uptime_7d) : "–";
  td.append(day, " / ", week);
  return td;
}

// One client's stability (#clients/NAME): uptime, disconnects, when it was online, round trips.
async function loadStability() {
  const card = $("#client-detail");
  const name = state.detail;
  if (!name) { card.hidden = true; return; }
  const result = await api("GET", `/clients/${encodeURIComponent(name)}/stability`);
  if (name !== state.detail) return;  // another client was chosen meanwhile
  card.hidden = false;
  $("#cd-name").textContent = name;
  clearErrors(card);
  if (!result.ok) { showError(card, Object.assign({}, result.error, { field: null }), "stability"); return; }
  const r = result.data;
  for (const [id, value] of [["#cd-uptime-24h", r.uptime_24h], ["#cd-uptime-7d", r.uptime_7d]]) {
    $(id).textContent = percent(value);
    $(id).dataset.uptime = value === null ? "" : String(value);
  }
  $("#cd-disc-24h").textContent = String(r.disconnects_24h);
  $("#cd-disc-7d").textContent = String(r.disconnects_7d);
  const now = Date.now() / 1000;
  const end = Math.max(now, ...r.sessions_7d.map((x) => x.ended));  // the server's "now"
  drawTimeline($("#cd-timeline-24h"), r.sessions_7d, r.first_seen, end, 86400);
  drawTimeline($("#cd-timeline-7d"), r.sessions_7d, r.first_seen, end, 7 * 86400);
  drawRtt($("#cd-rtt"), r.rtt_samples_24h, end);
  const reasons = $("#cd-reasons");
  reasons.replaceChildren();
  for (const reason of r.disconnect_reasons_7d) {
    const item = document.createElement("li");
    item.textContent = t("stability.reason", { reason: reason.reason || "–", n: reason.count, last: when(reason.last) });
    reasons.append(item);
  }
  $("#cd-reasons-empty").hidden = r.disconnect_reasons_7d.length > 0;
}

// Online sessions as green bars over the window (offline after it was first
// seen, "not yet seen" before), a red tick where each one ended.
function drawTimeline(chart, sessions, firstSeen, now, span) {
  const width = 800, height = 40;
  const x = (at) => Math.max(0, Math.min(width, width - ((now - at) * width) / span));
  chart.replaceChildren(svg("rect", { x: 0, y: 0, width, height, class: "unknown" }));
  if (firstSeen !== null) {
    const seen = x(firstSeen);
    chart.append(svg("rect", { x: seen, y: 0, width: width - seen, height, class: "offline" }));
  }
  let shown = 0;
  for (const session of sessions) {
    if (session.ended < now - span) continue;
    const a = x(session.started), b = x(session.ended);
    const bar = svg("rect", { x: Math.min(a, width - 2), y: 0, width: Math.max(2, b - a), height, class: "online" });
    bar.append(svg("title", {}, `${when(session.started)} – ${session.open ? t("stability.now") : when(session.ended)}`));
    chart.append(bar);
    if (!session.open) chart.append(svg("rect", { x: Math.max(0, b - 1), y: 0, width: 2, height, class: "drop" }));
    shown++;
  }
  chart.dataset.sessions = String(shown);
}

function drawRtt(chart, samples, now) {
  const width = Math.max(200, Math.round(chart.getBoundingClientRect().width) || 800), height = 120;
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  chart.replaceChildren();
  const points = samples.filter(([, rtt]) => rtt !== null);
  chart.dataset.points = String(points.length);
  $("#cd-rtt-empty").hidden = points.length > 0;
  chart.hidden = points.length === 0;
  $("#cd-rtt-axis").hidden = points.length === 0;
  if (!points.length) return;
  const max = Math.max(0.001, ...points.map(([, rtt]) => rtt)) * 1.1;
  const left = 60, top = 8, bottom = 8, plotW = width - left - 8, plotH = height - top - bottom;
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotH - plotH * fraction;
    chart.append(svg("line", { x1: left, x2: left + plotW, y1: y, y2: y, class: "grid" }));
    chart.append(svg("text", { x: 4, y: y + 4, class: "label" }, `${(max * fraction * 1000).toFixed(1)} ms`));
  }
  // The last 24 h, or less when the samples start later.
  const span = Math.min(86400, Math.max(60, now - points[0][0]));
  $("#cd-rtt-from").textContent = when(now - span);
  const x = (at) => left + plotW - ((now - at) * plotW) / span;
  const y = (rtt) => top + plotH - (rtt / max) * plotH;
  const d = points.map(([at, rtt], i) => `${i ? "L" : "M"}${x(at).toFixed(1)},${y(rtt).toFixed(1)}`).join(" ");
  chart.append(svg("path", { d, class: "series rtt" }));
  if (points.length === 1) chart.append(svg("circle", { cx: x(points[0][0]), cy: y(points[0][1]), r: 3, class: "dot rtt" }));
}

function tunnelStatus(tn) {
  if (tn.status === "up") return badge("up", t("status.up"));
  if (tn.status === "disabled") return badge("off", t("status.disabled"));
  const refused = tn.status === "refused";
  let text = t(refused ? "status.error" : "status.down") + (tn.reason ? `: ${tn.reason}` : "");
  if (tn.retry_in != null) {
    text += "; " + (tn.retry_in >= 1 ? t("status.retrying_in", { seconds: Math.round(tn.retry_in) }) : t("status.retrying_now"));
  }
  return badge(refused ? "error" : "down", text, tn.reason || "");
}

// A proxy type's label ("proxy.tcp" in the strings), or its name for a type without one.
function typeLabel(type) {
  const key = `proxy.${type}`;
  const label = t(key);
  return label === key ? type : label;
}

// Bytes in / out; for a udp tunnel also its datagrams, and its drops with their reasons.
function trafficCell(tn) {
  const td = cell(`${formatBytes(tn.bytes_in)} / ${formatBytes(tn.bytes_out)}`);
  const d = tn.datagrams;
  if (d) {
    const line = document.createElement("div");
    line.className = "datagrams";
    line.textContent = t("tunnels.datagrams", { in: d.datagrams_in, out: d.datagrams_out });
    const dropped = d.too_large + d.queue_full + d.no_slot + (d.bandwidth || 0);
    if (dropped) {
      line.append(" · ", badge("down", t("tunnels.dropped", { n: dropped }),
        t("tunnels.dropped_detail", { large: d.too_large, full: d.queue_full, slot: d.no_slot, limit: d.bandwidth || 0 })));
    }
    // What the client reports it dropped on its side, beside the server's.
    const onClient = (d.client_too_large || 0) + (d.client_queue_full || 0) + (d.client_no_slot || 0)
      + (d.client_bandwidth || 0);
    if (onClient) {
      line.append(" · ", badge("down", t("tunnels.client_dropped", { n: onClient }),
        t("tunnels.client_dropped_detail", { large: d.client_too_large, full: d.client_queue_full,
          slot: d.client_no_slot, limit: d.client_bandwidth || 0 })));
    }
    td.append(line);
  }
  const refused = tn.http_refused ? Object.values(tn.http_refused).reduce((a, b) => a + b, 0) : 0;
  if (refused) {  // an http tunnel's requests answered with an error page, by reason
    const line = document.createElement("div");
    line.className = "http-refused";
    line.append(badge("down", t("tunnels.error_pages", { n: refused }),
      Object.entries(tn.http_refused).map(([reason, n]) => `${reason} ${n}`).join(", ")));
    td.append(line);
  }
  return td;
}

async function loadTunnels() {
  const [result, clients] = await Promise.all([api("GET", "/tunnels"), api("GET", "/clients"), loadProxyTypes()]);
  if (!result.ok) return;
  if (clients.ok) fillClientSelect(clients.data.clients);
  const body = $("#tunnels-table tbody");
  body.replaceChildren();
  for (const tn of result.data.tunnels) {
    const row = document.createElement("tr");
    row.dataset.tunnel = `${tn.client}/${tn.name}`;
    const name = cell(tn.name, "name");
    if (tn.source === "client") name.append(" ", badge("source", t("tunnels.from_client"), t("tunnels.from_client_help")));
    const status = document.createElement("td");
    status.className = "status";
    status.append(tunnelStatus(tn));
    row.append(name, cell(tn.client), cell(typeLabel(tn.type)), cell(tn.local_addr),
      addressCell(tn.address),
      status, cell(tn.node || "–", "node"), cell(String(tn.connections)), trafficCell(tn),
      rateCell(tn));
    const actions = document.createElement("td");
    actions.className = "actions";
    const path = `/tunnels/${encodeURIComponent(tn.client)}/${encodeURIComponent(tn.name)}`;
    const act = async (method, suffix, confirmKey) => {
      if (confirmKey && !confirm(t(confirmKey, { name: tn.name }))) return;
      const r = await api(method, path + suffix);
      if (!r.ok) showError($("#page-tunnels"), Object.assign({}, r.error, { field: null }), "tunnels");
      else { clearErrors($("#page-tunnels")); scheduleRefresh(); }
    };
    if (tn.enabled) actions.append(button(t("tunnels.disable"), "secondary", () => act("POST", "/disable"), "disable"));
    else actions.append(button(t("tunnels.enable"), "secondary", () => act("POST", "/enable"), "enable"));
    if (tn.enabled) actions.append(button(t("tunnels.restart"), "secondary", () => act("POST", "/restart"), "restart"));
    if (tn.source === "server") {
      actions.append(button(t("tunnels.edit_short"), "secondary", () => openEdit(tn), "edit"));
      actions.append(button(t("tunnels.remove"), "danger", () => act("DELETE", "", "tunnels.remove_confirm"), "remove"));
    }
    row.append(actions);
    body.append(row);
  }
  $("#tunnels-empty").hidden = result.data.tunnels.length > 0;
}

function fillClientSelect(clients) {
  const select = $('#tunnel-form [name="client"]');
  const current = select.value;
  select.replaceChildren();
  for (const c of clients) {
    const option = document.createElement("option");
    option.value = c.name;
    option.textContent = c.online ? c.name : `${c.name} (${t("status.offline")})`;
    select.append(option);
  }
  if (clients.some((c) => c.name === current)) select.value = current;
}

// -- the forms of a proxy type's settings ---------------------------------------------
// Each type says which settings its spec has (GET /proxy-types); fields.js
// turns the inputs' texts into frp's keys.  An input is named "spec.KEY", as
// the API names an error about it, so that showError marks it.

async function loadProxyTypes() {
  if (state.types) return state.types;
  const result = await api("GET", "/proxy-types");
  if (!result.ok) return [];
  state.types = result.data.types;
  const select = $('#tunnel-form [name="spec.type"]');
  select.replaceChildren();
  for (const type of state.types) {
    const option = document.createElement("option");
    option.value = type.name;
    option.dataset.i18n = `proxy.${type.name}`;
    option.textContent = typeLabel(type.name);
    select.append(option);
  }
  drawFields($("#tunnel-form"), proxyType(select.value), {}, false);
  return state.types;
}

function proxyType(name) {
  return (state.types || []).find((type) => type.name === name) || { name, fields: [] };
}

// A key of the strings, or `fallback` when the strings have none.
function tOr(key, fallback) {
  const text = t(key);
  return text === key ? fallback : text;
}

function drawFields(form, type, spec, editing) {
  const box = $("[data-fields]", form);
  box.replaceChildren();
  for (const field of type.fields) {
    const label = document.createElement("label");
    const name = document.createElement("span");
    name.dataset.i18n = field.label;
    name.textContent = tOr(field.label, field.key);
    let input;
    if (field.kind === "choice") {
      input = document.createElement("select");
      for (const choice of ["", ...field.choices]) {
        const option = document.createElement("option");
        option.value = choice;
        option.textContent = choice || (field.default !== null ? String(field.default) : "–");
        input.append(option);
      }
    } else {
      input = document.createElement("input");
      input.type = field.kind === "bool" ? "checkbox" : field.kind === "secret" ? "password" : "text";
      if (field.kind === "port" || field.kind === "integer") input.inputMode = "numeric";
      if (field.kind !== "bool") {
        if (field.hint) {
          input.dataset.i18nPlaceholder = field.hint;
          input.placeholder = tOr(field.hint, "");
        } else if (field.default !== null && field.default !== "") {
          input.placeholder = String(field.default);
        }
      }
    }
    input.name = `spec.${field.key}`;
    input.dataset.key = field.key;
    input.title = field.help;
    if (field.required) input.required = true;
    if (editing && !field.editable) input.disabled = true;
    const text = textOf(field, spec[field.key]);
    if (field.kind === "bool") input.checked = text; else if (editing) input.value = text;
    const error = document.createElement("span");
    error.className = "error";
    error.dataset.error = `spec.${field.key}`;
    label.append(name, input, error);
    box.append(label);
  }
}

// The form's settings as frp's keys, or null after showing what is wrong.
function formSpec(form, type, editing) {
  const texts = {};
  for (const input of $$("[data-fields] [data-key]", form)) {
    texts[input.dataset.key] = input.type === "checkbox" ? input.checked : input.value;
  }
  const { spec, errors } = specFromTexts(type.fields, texts, editing);
  if (errors.length) {
    const { key, problem } = errors[0];
    const field = type.fields.find((f) => f.key === key);
    showError(form, { kind: "invalid", field: `spec.${key}`,
      message: t(`field.bad_${problem}`, { label: tOr(field.label, key) }) });
    return null;
  }
  return spec;
}

async function createTunnel(event) {
  event.preventDefault();
  const form = event.target;
  if (!form.client.value) return showError(form, { kind: "invalid", field: "client", message: t("tunnels.no_client") });
  const type = proxyType($('[name="spec.type"]', form).value);
  const spec = formSpec(form, type, false);
  if (spec === null) return;
  const body = { client: form.client.value, name: form.name.value.trim(), spec: { type: type.name, ...spec } };
  const result = await api("POST", "/tunnels", body);
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  form.name.value = "";
  drawFields(form, type, {}, false);
  loadTunnels();
}

async function openEdit(tn) {
  await loadProxyTypes();
  const form = $("#edit-form");
  form.hidden = false;
  form.dataset.path = `/tunnels/${encodeURIComponent(tn.client)}/${encodeURIComponent(tn.name)}`;
  form.dataset.type = tn.type;
  $("#edit-title").textContent = `${tn.client}/${tn.name}`;
  $("#edit-type").textContent = typeLabel(tn.type);
  drawFields(form, proxyType(tn.type), tn.spec || {}, true);
  clearErrors(form);
  form.scrollIntoView({ block: "nearest" });
}

async function saveEdit(event) {
  event.preventDefault();
  const form = event.target;
  const spec = formSpec(form, proxyType(form.dataset.type), true);
  if (spec === null) return;
  const result = await api("PATCH", form.dataset.path, { spec });
  if (!result.ok) return showError(form, result.error);
  form.hidden = true;
  loadTunnels();
}

async function loadTokens() {
  const result = await api("GET", "/tokens");
  if (!result.ok) return;
  const body = $("#tokens-table tbody");
  body.replaceChildren();
  for (const tk of result.data.tokens) {
    const row = document.createElement("tr");
    row.dataset.token = tk.name;
    const status = document.createElement("td");
    status.append(tk.active ? badge("up", t("tokens.active")) : badge("off", tk.revoked_at ? t("tokens.revoked") : t("tokens.expired")));
    row.append(cell(tk.name, "name"), status, cell(when(tk.created_at)), cell(tk.expires_at ? when(tk.expires_at) : t("tokens.never")),
      cell(when(tk.last_used_at)), cell((tk.allow_domains || []).join(", ") || t("tokens.any_domain"), "domains"));
    const actions = document.createElement("td");
    if (tk.active) {
      // The custom domains its client may claim (gotaxy.server.domains): PATCH /tokens/{name}.
      actions.append(button(t("tokens.edit_domains"), "secondary", async () => {
        const text = prompt(t("tokens.domains_prompt", { name: tk.name }), (tk.allow_domains || []).join(", "));
        if (text === null) return;
        const r = await api("PATCH", `/tokens/${encodeURIComponent(tk.name)}`, { allow_domains: domainList(text) });
        if (!r.ok) showError($("#page-tokens"), Object.assign({}, r.error, { field: null }), "tokens"); else loadTokens();
      }, "domains"));
      actions.append(button(t("tokens.revoke"), "danger", async () => {
        if (!confirm(t("tokens.revoke_confirm", { name: tk.name }))) return;
        const r = await api("DELETE", `/tokens/${encodeURIComponent(tk.name)}`);
        if (!r.ok) showError($("#page-tokens"), Object.assign({}, r.error, { field: null }), "tokens"); else loadTokens();
      }, "revoke"));
    }
    row.append(actions);
    body.append(row);
  }
}

// "a.example.com, *.example.com" (commas or spaces) as the list the API takes.
function domainList(text) {
  return text.split(/[\s,]+/).filter((part) => part);
}

async function createToken(event) {
  event.preventDefault();
  const form = event.target;
  const body = { name: form.name.value.trim() };
  if (form.expires.value) body.expires_at = new Date(`${form.expires.value}T23:59:59`).getTime() / 1000;
  if (form.allow_domains.value.trim()) body.allow_domains = domainList(form.allow_domains.value);
  const result = await api("POST", "/tokens", body);
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  form.reset();
  $("#token-secret").hidden = false;
  $("#token-secret-text").textContent = result.data.secret;
  loadTokens();
}

// Certificates: client certificates from the server's CA (GET /certificates), issued with POST
// /certificates and revoked with DELETE /certificates/{serial}.  An issued key is in the POST's
// answer only: it is offered as a download from memory (a blob URL), never stored by the panel,
// and dropped when the box is closed or the page left.
async function loadCertificates() {
  const result = await api("GET", "/certificates");
  if (!result.ok) return;
  const settings = result.data.settings;
  let mode = settings.required
    ? t(settings.method === "certificate" ? "certs.required_alone" : "certs.required_token", { ca: settings.trustedCaFile })
    : t("certs.not_required");
  if (settings.required) {
    const refused = Object.entries(settings.refusals).filter(([, n]) => n > 0).map(([why, n]) => `${why} ${n}`);
    mode += " " + (refused.length ? t("certs.refused", { list: refused.join(", ") }) : t("certs.none_refused"));
  }
  $("#certs-mode").textContent = mode;
  const body = $("#certs-table tbody");
  body.replaceChildren();
  if (!result.data.certificates.length) {
    const row = document.createElement("tr");
    const empty = cell(t("certs.empty"));
    empty.colSpan = 6;
    row.append(empty);
    body.append(row);
  }
  for (const c of result.data.certificates) {
    const row = document.createElement("tr");
    row.dataset.serial = c.serial;
    const status = document.createElement("td");
    status.append(c.status === "valid" ? badge("up", t("certs.valid")) : badge("off", t(`certs.${c.status}`), c.revokedBy || ""));
    row.append(cell(c.serial, "serial"), cell(c.name || t("certs.made_elsewhere"), "name"), status,
      cell(when(c.issuedAt)), cell(when(c.notAfter)));
    const actions = document.createElement("td");
    if (c.status !== "revoked") {
      actions.append(button(t("certs.revoke"), "danger", async () => {
        if (!confirm(t("certs.revoke_confirm", { serial: c.serial, name: c.name }))) return;
        const r = await api("DELETE", `/certificates/${encodeURIComponent(c.serial)}`);
        if (!r.ok) showError($("#page-certificates"), Object.assign({}, r.error, { field: null }), "certificates");
        else loadCertificates();
      }, "revoke"));
    }
    row.append(actions);
    body.append(row);
  }
}

function forgetIssuedKey() {
  for (const id of ["#cert-download-cert", "#cert-download-key"]) {
    const link = $(id);
    if (link.href) URL.revokeObjectURL(link.href);
    link.removeAttribute("href");
    link.textContent = "";
  }
  $("#cert-config").textContent = "";
  $("#cert-issued").hidden = true;
}

function offerDownload(id, name, text, label) {
  const link = $(id);
  link.href = URL.createObjectURL(new Blob([text], { type: "application/x-pem-file" }));
  link.download = name;
  link.textContent = label;
}

async function issueCertificate(event) {
  event.preventDefault();
  const form = event.target;
  const body = { name: form.name.value.trim(), days: Number(form.days.value || 365) };
  const result = await api("POST", "/certificates", body);
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  forgetIssuedKey();
  const c = result.data.certificate;
  offerDownload("#cert-download-cert", `${c.name}.pem`, c.certificatePem, t("certs.download_cert", { name: c.name }));
  offerDownload("#cert-download-key", `${c.name}.key`, c.keyPem, t("certs.download_key", { name: c.name }));
  $("#cert-config").textContent = `auth.method = "certificate"\ntransport.tls.certFile = "${c.name}.pem"\n`
    + `transport.tls.keyFile = "${c.name}.key"`;
  $("#cert-issued").hidden = false;
  form.reset();
  loadCertificates();
}

// Access: the address rules in force (GET /access) and the bans (GET /bans), lifted with DELETE /bans/{address}.
async function loadAccess() {
  const [rules, bans] = await Promise.all([api("GET", "/access"), api("GET", "/bans"), loadLimits()]);
  if (!rules.ok || !bans.ok) return;
  const refused = {};
  for (const r of rules.data.refused) refused[r.listener] = (refused[r.listener] || 0) + r.count;
  const rows = Object.entries(rules.data.listeners).map(([name, r]) => [t(`access.listener.${name}`), r, refused[name] || 0]);
  for (const [pattern, r] of Object.entries(rules.data.perTunnel)) rows.push([pattern, r, ""]);
  const body = $("#rules-table tbody");
  body.replaceChildren();
  for (const [name, r, count] of rows) {
    const row = document.createElement("tr");
    row.append(cell(name, "name"), cell(r.allow.join(", ") || t("access.anyone")), cell(r.deny.join(", ") || "-"),
      cell(String(count)));
    body.append(row);
  }
  const list = $("#bans-table tbody");
  list.replaceChildren();
  for (const b of bans.data.bans) {
    const row = document.createElement("tr");
    row.dataset.ban = b.address;
    row.append(cell(b.address, "name"), cell(`${Math.ceil(b.remaining / 60)} min`), cell(when(b.until)),
      cell(String(b.strikes)), cell(b.by), cell(b.reason));
    const actions = document.createElement("td");
    actions.append(button(t("access.lift"), "danger", async () => {
      if (!confirm(t("access.lift_confirm", { address: b.address }))) return;
      const r = await api("DELETE", `/bans/${encodeURIComponent(b.address)}`);
      if (!r.ok) showError($("#page-access"), Object.assign({}, r.error, { field: null }), "bans"); else loadAccess();
    }, "lift"));
    row.append(actions);
    list.append(row);
  }
}

// Limits: the server's (GET /limits), maxBandwidth and maxBandwidthPerClient set live with PATCH /limits
// (null clears a live value), and a client's own bandwidth, set with PATCH /tokens/{name}.
const LIVE_LIMITS = ["maxBandwidth", "maxBandwidthPerClient"];

async function loadLimits() {
  const result = await api("GET", "/limits");
  if (!result.ok) return;
  const l = result.data;
  const rate = (v) => (v ? formatRate(v) : t("limits.none"));
  const count = (v) => (v ? String(v) : t("limits.none"));
  const rows = [
    ["maxBandwidth", rate(l.maxBandwidth)], ["maxBandwidthPerClient", rate(l.maxBandwidthPerClient)],
    ["maxConnectionsPerClient", String(l.maxConnectionsPerClient)], ["tunnelMaxConnections", count(l.tunnelMaxConnections)],
    ["tunnelMaxConnectionsPerIP", count(l.tunnelMaxConnectionsPerIP)],
    ["tunnelConnectionRatePerIP", l.tunnelConnectionRatePerIP ? t("limits.per_minute", { n: l.tunnelConnectionRatePerIP }) : t("limits.none")],
  ];
  const body = $("#limits-table tbody");
  body.replaceChildren();
  for (const [key, value] of rows) {
    const row = document.createElement("tr");
    row.dataset.limit = key;
    const live = l.live[key];
    const from = live
      ? t("limits.live", { by: live.by, at: when(live.at), file: rate(l.file[key]) })
      : "server.toml";
    const actions = document.createElement("td");
    if (live) {
      actions.append(button(t("limits.clear"), "secondary", async () => {
        const r = await api("PATCH", "/limits", { [key]: null });
        if (!r.ok) showError($("#page-access"), Object.assign({}, r.error, { field: null }), "limits"); else loadLimits();
      }, "clear"));
    }
    row.append(cell(key, "name"), cell(value), cell(from), actions);
    body.append(row);
  }
  const clients = $("#client-limits-table tbody");
  clients.replaceChildren();
  for (const c of l.clients) {
    const row = document.createElement("tr");
    row.dataset.client = c.name;
    row.append(cell(c.name, "name"), cell(rate(c.maxBandwidth)), cell(c.own ? t("limits.own") : "maxBandwidthPerClient"));
    clients.append(row);
  }
}

async function setServerLimit(event) {
  event.preventDefault();
  const form = event.target;
  const key = form.key.value;
  const text = form.value.value.trim();
  const value = /^\d+$/.test(text) ? Number(text) : text;
  const result = await api("PATCH", "/limits", { [key]: value });
  if (!result.ok) {
    // The API names the setting as the field; here it is the value's input.
    return showError(form, Object.assign({}, result.error, { field: LIVE_LIMITS.includes(result.error.field) ? "value" : result.error.field }));
  }
  clearErrors(form);
  form.reset();
  loadLimits();
}

async function setClientLimit(event) {
  event.preventDefault();
  const form = event.target;
  const name = form.name.value.trim();
  const text = form.max_bandwidth.value.trim();
  const value = /^\d+$/.test(text) ? Number(text) : text;
  const result = await api("PATCH", `/tokens/${encodeURIComponent(name)}`, { max_bandwidth: value });
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  form.reset();
  loadLimits();
}

async function addBan(event) {
  event.preventDefault();
  const form = event.target;
  const body = { address: form.address.value.trim() };
  if (form.seconds.value) body.seconds = Number(form.seconds.value);
  if (form.reason.value.trim()) body.reason = form.reason.value.trim();
  const result = await api("POST", "/bans", body);
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  form.reset();
  loadAccess();
}

// The type filter offers each family of the server's event catalogue (GET /events/types).
async function fillEventFamilies(select) {
  if (select.options.length > 1) return;
  const result = await api("GET", "/events/types");
  if (!result.ok || select.options.length > 1) return;
  const families = [...new Set(result.data.types.filter((t) => t.recorded).map((t) => t.family))];
  for (const family of families) {
    const option = document.createElement("option");
    option.value = `${family}.`;
    option.textContent = `${family}.*`;
    select.append(option);
  }
}

async function loadEvents() {
  const form = $("#events-form");
  await fillEventFamilies(form.type);
  const params = new URLSearchParams({ limit: state.events.limit, offset: state.events.offset });
  if (form.type.value) params.set("type", form.type.value);
  if (form.client.value.trim()) params.set("client", form.client.value.trim());
  if (form.since.value) params.set("since", new Date(form.since.value).getTime() / 1000);
  if (form.until.value) params.set("until", new Date(form.until.value).getTime() / 1000);
  const result = await api("GET", `/events?${params}`);
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  const body = $("#events-table tbody");
  body.replaceChildren();
  for (const e of result.data.events) {
    const row = document.createElement("tr");
    row.append(cell(when(e.at)), cell(e.type), cell(e.client || ""), cell(e.tunnel || ""), cell(e.address || ""),
      cell(e.detail || "", "detail"));
    body.append(row);
  }
  state.events.hasMore = result.data.has_more;
  $("#events-empty").hidden = result.data.events.length > 0;
  $("#events-prev").disabled = state.events.offset === 0;
  $("#events-next").disabled = !state.events.hasMore;
  $("#events-page").textContent = t("events.page", { n: Math.floor(state.events.offset / state.events.limit) + 1 });
}

// Errors of a table's buttons go on the line under that table ("webhooks" or "mail"), not into the form.
function pageError(error, table = "webhooks") {
  const line = $(`#page-notifications [data-error="${table}"]`);
  if (!error) { line.textContent = ""; return; }
  const prefix = t(`error.${error.kind}`);
  line.textContent = `${prefix}${prefix && error.message ? ": " : ""}${error.message || ""}`;
}

function showSent() {
  const line = $("#webhooks-sent");
  line.hidden = !state.webhookSent;
  line.textContent = state.webhookSent ? t("webhooks.test_sent", { name: state.webhookSent }) : "";
}

async function loadWebhooks() {
  const result = await api("GET", "/webhooks");
  if (!result.ok) return pageError(result.error);
  if (!result.data.webhooks.some((w) => w.name === state.webhookSent)) state.webhookSent = null;
  showSent();
  const body = $("#webhooks-table tbody");
  body.replaceChildren();
  for (const w of result.data.webhooks) {
    const row = document.createElement("tr");
    row.dataset.webhook = w.name;
    const name = cell(w.name, "name");
    name.append(" ", w.source === "config"
      ? badge("source", t("webhooks.from_config"), t("webhooks.from_config_help"))
      : badge("source", t("webhooks.from_operator"), t("webhooks.from_operator_help")));
    const events = w.events.map((e) => (e === "*" ? t("webhooks.all_events") : e)).join(", ");
    row.append(name, cell(w.url), cell(events), cell(t(`webhooks.format_${w.format}`)),
      cell(w.signed ? t("webhooks.signed_yes") : t("webhooks.signed_no")));
    const actions = document.createElement("td");
    actions.className = "actions";
    const path = `/webhooks/${encodeURIComponent(w.name)}`;
    actions.append(button(t("webhooks.test"), "secondary", async () => {
      state.webhookSent = null;
      showSent();
      const r = await api("POST", `${path}/test`);
      if (!r.ok) return pageError(r.error);
      pageError(null);
      state.webhookSent = w.name;
      showSent();
    }, "test"));
    if (w.source === "operator") {
      actions.append(button(t("tunnels.remove"), "danger", async () => {
        if (!confirm(t("webhooks.remove_confirm", { name: w.name }))) return;
        const r = await api("DELETE", path);
        if (!r.ok) return pageError(r.error);
        pageError(null);
        loadWebhooks();
      }, "remove"));
    }
    row.append(actions);
    body.append(row);
  }
  $("#webhooks-empty").hidden = result.data.webhooks.length > 0;
}

async function loadNotifications() {
  await Promise.all([loadWebhooks(), loadMailRecipients()]);
}

async function addWebhook(event) {
  event.preventDefault();
  const form = event.target;
  const body = { name: form.name.value.trim(), url: form.url.value.trim(), format: form.format.value };
  const events = form.events.value.split(",").map((e) => e.trim()).filter((e) => e);
  if (events.length) body.events = events;
  if (form.secret.value) body.secret = form.secret.value;
  const result = await api("POST", "/webhooks", body);
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  form.reset();
  state.webhookSent = null;
  loadWebhooks();
}

function showMailSent() {
  const line = $("#mail-sent");
  line.hidden = !state.mailSent;
  line.textContent = state.mailSent ? t("mail.test_sent", { address: state.mailSent }) : "";
}

async function loadMailRecipients() {
  const result = await api("GET", "/mail-recipients");
  if (!result.ok) return pageError(result.error, "mail");
  const recipients = result.data.recipients;
  if (!recipients.some((r) => r.address === state.mailSent)) state.mailSent = null;
  showMailSent();
  const body = $("#mail-table tbody");
  body.replaceChildren();
  for (const r of recipients) {
    const row = document.createElement("tr");
    row.dataset.recipient = r.address;
    const address = cell(r.address, "name");
    address.append(" ", r.source === "config"
      ? badge("source", t("webhooks.from_config"), t("mail.from_config_help"))
      : badge("source", t("webhooks.from_operator"), t("webhooks.from_operator_help")));
    const events = r.events.map((e) => (e === "*" ? t("webhooks.all_events") : e)).join(", ");
    row.append(address, cell(events));
    const actions = document.createElement("td");
    actions.className = "actions";
    const path = `/mail-recipients/${encodeURIComponent(r.address)}`;
    actions.append(button(t("webhooks.test"), "secondary", async () => {
      state.mailSent = null;
      showMailSent();
      const answer = await api("POST", `${path}/test`);
      if (!answer.ok) return pageError(answer.error, "mail");
      pageError(null, "mail");
      state.mailSent = r.address;
      showMailSent();
    }, "test"));
    if (r.source === "operator") {
      actions.append(button(t("tunnels.remove"), "danger", async () => {
        if (!confirm(t("mail.remove_confirm", { address: r.address }))) return;
        const answer = await api("DELETE", path);
        if (!answer.ok) return pageError(answer.error, "mail");
        pageError(null, "mail");
        loadMailRecipients();
      }, "remove"));
    }
    row.append(actions);
    body.append(row);
  }
  $("#mail-empty").hidden = recipients.length > 0;
}

async function addMailRecipient(event) {
  event.preventDefault();
  const form = event.target;
  const body = { address: form.address.value.trim() };
  const events = form.events.value.split(",").map((e) => e.trim()).filter((e) => e);
  if (events.length) body.events = events;
  const result = await api("POST", "/mail-recipients", body);
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  form.reset();
  state.mailSent = null;
  loadMailRecipients();
}

async function loadAccount() {
  const result = await api("GET", "/account");
  if (!result.ok) return;
  const on = result.data.totp_enabled;
  $("#totp-on").hidden = !on;
  $("#totp-off").hidden = on;
  $("#totp-setup").hidden = on || !$("#totp-enrol").hidden;
  $("#totp-disable").hidden = !on;
  if (on) $("#totp-enrol").hidden = true;
  const tokens = await api("GET", "/api-tokens");
  if (!tokens.ok) return;
  const body = $("#api-tokens-table tbody");
  body.replaceChildren();
  for (const tk of tokens.data.api_tokens) {
    const row = document.createElement("tr");
    row.append(cell(tk.name, "name"), cell(when(tk.created_at)), cell(when(tk.last_used_at)));
    const actions = document.createElement("td");
    actions.append(button(t("tokens.revoke"), "danger", async () => {
      if (!confirm(t("tokens.revoke_confirm", { name: tk.name }))) return;
      await api("DELETE", `/api-tokens/${encodeURIComponent(tk.name)}`);
      loadAccount();
    }, "revoke"));
    row.append(actions);
    body.append(row);
  }
}

async function changePassword(event) {
  event.preventDefault();
  const form = event.target;
  $('[data-ok="password"]').hidden = true;
  if (form.new_password.value.length < 10) {
    return showError(form, { kind: "invalid", field: "new_password", message: t("account.too_short") });
  }
  const result = await api("POST", "/account/password",
    { old_password: form.old_password.value, new_password: form.new_password.value });
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  form.reset();
  $('[data-ok="password"]').hidden = false;
}

async function beginTotp() {
  const result = await api("POST", "/account/totp");
  if (!result.ok) return showError($("#totp-card"), result.error);
  $("#totp-qr").src = result.data.qr_svg;
  $("#totp-secret").textContent = result.data.secret;
  $("#totp-enrol").hidden = false;
  $("#totp-setup").hidden = true;
}

async function totpCode(event, path) {
  event.preventDefault();
  const form = event.target;
  const result = await api("POST", path, { code: form.code.value.trim() });
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  form.reset();
  $("#totp-enrol").hidden = true;
  loadAccount();
}

async function createApiToken(event) {
  event.preventDefault();
  const form = event.target;
  const result = await api("POST", "/api-tokens", { name: form.name.value.trim() });
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  form.reset();
  $("#api-token-secret").hidden = false;
  $("#api-token-secret-text").textContent = result.data.token;
  loadAccount();
}

// -- live updates --------------------------------------------------------------------

function startLive() {
  stopLive();
  const source = new EventSource(`${API}/live`);
  state.live = source;
  source.addEventListener("open", () => { $("#live-state").className = "live on"; });
  source.addEventListener("error", () => { $("#live-state").className = "live off"; });
  source.addEventListener("change", () => { if (state.page !== "events" || state.events.offset === 0) scheduleRefresh(); });
}

function stopLive() {
  if (state.live) state.live.close();
  state.live = null;
  clearInterval(state.timer);
  $("#live-state").className = "live";
}

// -- start ---------------------------------------------------------------------------

async function start() {
  $("#language").addEventListener("change", (e) => {
    localStorage.setItem("gotaxy.lang", e.target.value);
    setLanguage(e.target.value);
  });
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  $("#reload-config").addEventListener("click", reloadConfig);
  $("#tunnel-form").addEventListener("submit", createTunnel);
  $('#tunnel-form [name="spec.type"]').addEventListener("change", (e) => {
    clearErrors($("#tunnel-form"));
    drawFields($("#tunnel-form"), proxyType(e.target.value), {}, false);
  });
  $("#edit-form").addEventListener("submit", saveEdit);
  $("#edit-cancel").addEventListener("click", () => { $("#edit-form").hidden = true; });
  $("#token-form").addEventListener("submit", createToken);
  $("#cert-form").addEventListener("submit", issueCertificate);
  $("#cert-forget").addEventListener("click", forgetIssuedKey);
  window.addEventListener("hashchange", () => { if (!location.hash.startsWith("#certificates")) forgetIssuedKey(); });
  $("#ban-form").addEventListener("submit", addBan);
  $("#client-limit-form").addEventListener("submit", setClientLimit);
  $("#server-limit-form").addEventListener("submit", setServerLimit);
  $("#webhook-form").addEventListener("submit", addWebhook);
  $("#mail-form").addEventListener("submit", addMailRecipient);
  $("#events-form").addEventListener("submit", (e) => { e.preventDefault(); state.events.offset = 0; loadEvents(); });
  $("#events-prev").addEventListener("click", () => {
    state.events.offset = Math.max(0, state.events.offset - state.events.limit); loadEvents();
  });
  $("#events-next").addEventListener("click", () => { state.events.offset += state.events.limit; loadEvents(); });
  $("#password-form").addEventListener("submit", changePassword);
  $("#totp-setup").addEventListener("click", beginTotp);
  $("#totp-enrol").addEventListener("submit", (e) => totpCode(e, "/account/totp/confirm"));
  $("#totp-disable").addEventListener("submit", (e) => totpCode(e, "/account/totp/disable"));
  $("#api-token-form").addEventListener("submit", createApiToken);
  // Whatever fills a table, its cells get their column's name (for the narrow-screen cards).
  for (const table of $$("table")) {
    new MutationObserver(() => labelCells(table)).observe($("tbody", table), { childList: true });
  }
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => { if (state.page === "overview") drawChart(); });
  await setLanguage(pickLanguage());
  const account = await api("GET", "/account");
  if (account.ok) enter(account.data); else showLogin();
}

start();
