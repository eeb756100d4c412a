// Gotaxy panel: a small single-page app on the REST API under /api/v0.1/.
// No libraries and nothing from the internet.  Live updates: the server's
// events arrive as server-sent events (/api/v0.1/live); each one makes the
// page re-read what it shows.  The overview also samples /status every
// 2 seconds for the throughput chart.
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
  samples: [],
  events: { offset: 0, limit: 50, hasMore: false },
  clients: [],
  webhookSent: null,  // the webhook a test notification was last queued for
  mailSent: null,  // the e-mail address a test message was last queued for
};

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

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

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

const rate = (n) => `${bytes(n)}/s`;

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
function showError(root, error, fallback = "_") {
  clearErrors(root);
  const prefix = t(`error.${error.kind}`);
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
    if (result.error.kind === "locked") {
      result.error.message = t("login.locked", { s: Math.ceil(result.error.retry_after || 1) });
    } else if (result.error.kind === "unauthorized") {
      result.error.message = result.error.field === "code" ? t("login.wrong_code") : t("login.wrong");
    }
    showError(form, result.error);
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

async function logout() {
  await api("POST", "/logout");
  showLogin();
}

// -- pages -------------------------------------------------------------------------

const PAGES = { overview: loadOverview, clients: loadClients, tunnels: loadTunnels, tokens: loadTokens,
  events: loadEvents, notifications: loadNotifications, account: loadAccount };

function route() {
  if (!state.account) return;
  const name = (location.hash || "#overview").slice(1);
  const page = PAGES[name] ? name : "overview";
  state.page = page;
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

async function loadOverview() {
  const result = await api("GET", "/status");
  if (!result.ok) return;
  const s = result.data;
  $("#ov-version").textContent = s.version;
  $("#ov-uptime").textContent = duration(s.uptime);
  $("#ov-clients").textContent = `${s.clients_online} / ${s.clients_total}`;
  $("#ov-tunnels").textContent = `${s.tunnels_up} / ${s.tunnels_total}`;
  $("#ov-in").textContent = bytes(s.bytes_in);
  $("#ov-out").textContent = bytes(s.bytes_out);
  $("#ov-rate-in").textContent = rate(s.rate_in);
  $("#ov-rate-out").textContent = rate(s.rate_out);
  const now = Date.now();
  if (!state.samples.length || now - state.samples[state.samples.length - 1].at > 1500) {
    state.samples.push({ at: now, in: s.rate_in, out: s.rate_out });
    if (state.samples.length > 90) state.samples.shift();
  }
  drawChart();
}

function drawChart() {
  const canvas = $("#chart");
  const width = canvas.clientWidth || 800;
  const height = canvas.clientHeight || 220;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const styles = getComputedStyle(document.documentElement);
  const max = Math.max(1024, ...state.samples.map((s) => Math.max(s.in, s.out)));
  const left = 70, top = 10, bottom = 20, plotW = width - left - 10, plotH = height - top - bottom;
  g.strokeStyle = styles.getPropertyValue("--grid").trim() || "#ddd";
  g.fillStyle = styles.getPropertyValue("--muted").trim() || "#666";
  g.font = "12px system-ui, sans-serif";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - (plotH * i) / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(left + plotW, y); g.stroke();
    g.fillText(rate((max * i) / 4), 4, y + 4);
  }
  g.fillText(t("overview.chart_span"), left, height - 4);
  const series = [["in", styles.getPropertyValue("--in").trim() || "#1f77b4"],
    ["out", styles.getPropertyValue("--out").trim() || "#e67e22"]];
  for (const [key, colour] of series) {
    g.strokeStyle = colour;
    g.lineWidth = 2;
    g.setLineDash(key === "out" ? [6, 4] : []);  // visible even when it equals "in"
    g.beginPath();
    state.samples.forEach((s, i) => {
      const x = left + plotW - ((state.samples.length - 1 - i) * plotW) / 89;
      const y = top + plotH - (s[key] / max) * plotH;
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  }
}

async function loadClients() {
  const result = await api("GET", "/clients");
  if (!result.ok) return;
  state.clients = result.data.clients;
  const body = $("#clients-table tbody");
  body.replaceChildren();
  for (const c of result.data.clients) {
    const row = document.createElement("tr");
    row.dataset.client = c.name;
    row.append(cell(c.name, "name"));
    const status = document.createElement("td");
    status.append(c.online ? badge("up", t("status.online")) : badge("down", t("status.offline")));
    row.append(status, cell(c.address || "–"), cell(c.version || "–"),
      cell(c.online ? when(c.connected_at) : `${t("clients.last_seen")} ${when(c.last_seen_at)}`),
      cell(c.rtt === null ? "–" : `${(c.rtt * 1000).toFixed(1)} ms`), cell(c.tunnels.join(", ") || "–"));
    const actions = document.createElement("td");
    if (c.online) {
      actions.append(button(t("clients.kick"), "secondary", async (e) => {
        if (!confirm(t("clients.kick_confirm", { name: c.name }))) return;
        const r = await api("POST", `/clients/${encodeURIComponent(c.name)}/kick`);
        if (!r.ok) showError($("#page-clients"), r.error, "clients"); else scheduleRefresh();
      }, "kick"));
    }
    row.append(actions);
    body.append(row);
  }
  $("#clients-empty").hidden = result.data.clients.length > 0;
}

function tunnelStatus(tn) {
  if (tn.status === "up") return badge("up", t("status.up"));
  if (tn.status === "disabled") return badge("off", t("status.disabled"));
  if (tn.status === "refused") return badge("error", `${t("status.error")}: ${tn.reason || ""}`, tn.reason);
  return badge("down", t("status.down"), tn.reason || "");
}

async function loadTunnels() {
  const [result, clients] = await Promise.all([api("GET", "/tunnels"), api("GET", "/clients")]);
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
    row.append(name, cell(tn.client), cell(tn.type), cell(tn.local_addr), cell(tn.remote_port || t("tunnels.auto_short")),
      status, cell(String(tn.connections)), cell(`${bytes(tn.bytes_in)} / ${bytes(tn.bytes_out)}`),
      cell(`${rate(tn.rate_in)} / ${rate(tn.rate_out)}`));
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

async function createTunnel(event) {
  event.preventDefault();
  const form = event.target;
  const body = { client: form.client.value, name: form.name.value.trim(), local_addr: form.local_addr.value.trim() };
  if (!body.client) return showError(form, { kind: "invalid", field: "client", message: t("tunnels.no_client") });
  if (form.remote_port.value !== "") {
    const port = Number(form.remote_port.value);
    if (!Number.isInteger(port)) return showError(form, { kind: "invalid", field: "remote_port", message: t("tunnels.bad_port") });
    body.remote_port = port;
  }
  const result = await api("POST", "/tunnels", body);
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  form.name.value = "";
  form.local_addr.value = "";
  form.remote_port.value = "";
  loadTunnels();
}

function openEdit(tn) {
  const form = $("#edit-form");
  form.hidden = false;
  form.dataset.path = `/tunnels/${encodeURIComponent(tn.client)}/${encodeURIComponent(tn.name)}`;
  $("#edit-title").textContent = `${tn.client}/${tn.name}`;
  form.local_addr.value = tn.local_addr;
  form.remote_port.value = tn.remote_port || 0;
  clearErrors(form);
  form.scrollIntoView({ block: "nearest" });
}

async function saveEdit(event) {
  event.preventDefault();
  const form = event.target;
  const port = Number(form.remote_port.value || 0);
  if (!Number.isInteger(port)) return showError(form, { kind: "invalid", field: "remote_port", message: t("tunnels.bad_port") });
  const result = await api("PATCH", form.dataset.path, { local_addr: form.local_addr.value.trim(), remote_port: port });
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
      cell(when(tk.last_used_at)));
    const actions = document.createElement("td");
    if (tk.active) {
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

async function createToken(event) {
  event.preventDefault();
  const form = event.target;
  const body = { name: form.name.value.trim() };
  if (form.expires.value) body.expires_at = new Date(`${form.expires.value}T23:59:59`).getTime() / 1000;
  const result = await api("POST", "/tokens", body);
  if (!result.ok) return showError(form, result.error);
  clearErrors(form);
  form.reset();
  $("#token-secret").hidden = false;
  $("#token-secret-text").textContent = result.data.secret;
  loadTokens();
}

async function loadEvents() {
  const form = $("#events-form");
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
  $("#tunnel-form").addEventListener("submit", createTunnel);
  $("#edit-form").addEventListener("submit", saveEdit);
  $("#edit-cancel").addEventListener("click", () => { $("#edit-form").hidden = true; });
  $("#token-form").addEventListener("submit", createToken);
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
  window.addEventListener("hashchange", route);
  window.addEventListener("resize", () => { if (state.page === "overview") drawChart(); });
  await setLanguage(pickLanguage());
  const account = await api("GET", "/account");
  if (account.ok) enter(account.data); else showLogin();
}

start();
