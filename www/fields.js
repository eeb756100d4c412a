// The settings of a proxy type (GET /api/v0.1/proxy-types: each type's
// fields, with frp's key and a kind) as form texts and back.  Pure functions
// with no page in sight, so that node runs them in the fast tests
// (tests/test_panel_fields.py); app.js draws the inputs.
//
// specFromTexts(fields, texts, editing): the texts of a form's inputs (key ->
// text, or true/false for a bool) as frp's keys.  An empty input is left out
// when creating, and null (back to its default) when editing; a secret left
// empty in the edit form is left out (unchanged).  Errors name the key and
// the problem ("integer", "map"); range and meaning are the server's to judge.
"use strict";

function fieldValue(field, text) {
  if (field.kind === "bool") return { value: text === true || text === "true" };
  const trimmed = String(text === undefined || text === null ? "" : text).trim();
  if (trimmed === "") return { empty: true };
  switch (field.kind) {
    case "port":
    case "integer":
      if (!/^-?\d+$/.test(trimmed)) return { error: "integer" };
      return { value: Number(trimmed) };
    case "size":
      return { value: /^\d+$/.test(trimmed) ? Number(trimmed) : trimmed };
    case "list":
      return { value: trimmed.split(",").map((s) => s.trim()).filter((s) => s !== "") };
    case "map": {
      const map = {};
      for (const item of trimmed.split(",").map((s) => s.trim()).filter((s) => s !== "")) {
        const at = item.indexOf("=");
        if (at <= 0) return { error: "map" };
        map[item.slice(0, at).trim()] = item.slice(at + 1).trim();
      }
      return { value: map };
    }
    default:
      return { value: trimmed };
  }
}

function specFromTexts(fields, texts, editing) {
  const spec = {};
  const errors = [];
  for (const field of fields) {
    if (!(field.key in texts)) continue;
    if (editing && !field.editable) continue;
    const result = fieldValue(field, texts[field.key]);
    if (result.error) errors.push({ key: field.key, problem: result.error });
    else if (result.empty) {
      if (editing && field.kind !== "secret") spec[field.key] = null;
    } else spec[field.key] = result.value;
  }
  return { spec, errors };
}

// The form text of a setting's value (the edit form shows the current ones).
function textOf(field, value) {
  if (value === undefined || value === null) return field.kind === "bool" ? false : "";
  if (field.kind === "bool") return value === true;
  if (field.kind === "secret") return "";
  if (field.kind === "list" && Array.isArray(value)) return value.join(", ");
  if (field.kind === "map" && typeof value === "object") {
    return Object.entries(value).map(([k, v]) => `${k}=${v}`).join(", ");
  }
  return String(value);
}

// Where the public reaches a tunnel, for people: "203.0.113.5:16000" (tcp),
// "udp 203.0.113.5:5353", or the host names ("http://wiki.example.com").
// `host` is the server as this page reached it.
function addressText(address, host) {
  if (!address) return null;
  if (address.hosts && address.hosts.length) return address.description;
  const shown = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  return `${address.scheme === "tcp" ? "" : address.scheme + " "}${shown}:${address.port}`;
}

// The URLs of a website's address (http/https host names), to show as links; a wildcard name is no link.
function addressLinks(address) {
  if (!address || !address.hosts || !address.hosts.length) return [];
  const port = address.port ? `:${address.port}` : "";
  const paths = address.paths && address.paths.length ? address.paths : ["/"];
  const links = [];
  for (const host of address.hosts) {
    for (const path of paths) {
      const url = `${address.scheme}://${host}${port}${path}`;
      links.push({ url, link: !host.startsWith("*.") });
    }
  }
  return links;
}

if (typeof module !== "undefined") module.exports = { fieldValue, specFromTexts, textOf, addressText, addressLinks };
