// sharetunnel inspector: the request list (live, over Server-Sent Events), one request's
// heads and bodies, and replay. Plain DOM code: every value from the traffic goes into
// the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  rows: new Map(), // id -> <tr>, in id order (oldest first)
  summaries: new Map(), // id -> summary
  selected: null, // id
  detail: null, // the full record shown
  capacity: 500,
  filter: [],
};

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function formatTime(unix) {
  const d = new Date(unix * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function formatDuration(ms) {
  if (ms === null || ms === undefined) return "…";
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

function statusLabel(s) {
  if (s.status === null || s.status === undefined) return "…";
  return s.websocket && s.status === 101 ? "101 ws" : String(s.status);
}

function statusClass(s) {
  if (s.status === null || s.status === undefined) return "pending";
  if (s.error) return "failed";
  return `s${String(s.status)[0]}xx`;
}

// -- the list -------------------------------------------------------------------------------

function matches(s) {
  if (!state.filter.length) return true;
  const text = [s.method, s.path, s.status ?? "", s.visitor ?? "", s.replay_of ? "replay" : "",
    s.websocket ? "websocket" : "", s.error ?? ""].join(" ").toLowerCase();
  return state.filter.every((term) => text.includes(term));
}

function upsert(s) {
  state.summaries.set(s.id, s);
  let row = state.rows.get(s.id);
  const fresh = !row;
  if (fresh) {
    row = el("tr", "entry");
    row.dataset.id = String(s.id);
    row.addEventListener("click", () => select(s.id));
    state.rows.set(s.id, row);
  }
  const path = el("td", "path", s.replay_of ? el("span", "badge", `replay of #${s.replay_of}`) : null, s.path);
  path.title = s.error ? `${s.path}\n${s.error}` : s.path;
  row.replaceChildren(
    el("td", "time", formatTime(s.started_at)),
    el("td", "method", s.method),
    path,
    el("td", `status ${statusClass(s)}`, statusLabel(s)),
    el("td", "num", formatDuration(s.duration_ms)),
    el("td", "num", formatBytes(s.request_bytes)),
    el("td", "num", formatBytes(s.response_bytes)),
    el("td", "visitor", s.visitor ?? ""),
  );
  row.classList.toggle("replay", Boolean(s.replay_of));
  row.classList.toggle("selected", state.selected === s.id);
  row.hidden = !matches(s);
  if (fresh) {
    // Ids only grow: a new row is the newest, unless an older one arrives late.
    const newer = [...state.rows.keys()].filter((id) => id > s.id).sort((a, b) => a - b)[0];
    if (newer === undefined) $("rows").prepend(row);
    else state.rows.get(newer).after(row);
  }
  if (s.id === state.selected && state.detail && !state.detail.done) refreshDetail();
}

function trim() {
  // The inspector keeps the newest `capacity` requests; so does the page.
  const ids = [...state.rows.keys()].sort((a, b) => a - b);
  for (const id of ids.slice(0, Math.max(0, ids.length - state.capacity))) {
    state.rows.get(id).remove();
    state.rows.delete(id);
    state.summaries.delete(id);
  }
}

function updateCount() {
  const total = state.rows.size;
  const shown = [...state.rows.values()].filter((row) => !row.hidden).length;
  $("count").textContent = shown === total ? `${total} requests` : `${shown} of ${total} requests`;
  $("empty").hidden = total > 0;
}

function applyFilter() {
  state.filter = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  for (const [id, row] of state.rows) row.hidden = !matches(state.summaries.get(id));
  updateCount();
}

// -- one request ------------------------------------------------------------------------------

let refreshing = null;

async function select(id, record) {
  state.selected = id;
  for (const [rowId, row] of state.rows) row.classList.toggle("selected", rowId === id);
  notice("");
  $("editor").hidden = true;
  if (record) {
    showDetail(record);
    return;
  }
  await refreshDetail();
}

async function refreshDetail() {
  const id = state.selected;
  if (id === null) return;
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const response = await fetch(`/api/requests/${id}`);
      const body = await response.json();
      if (id !== state.selected) return;
      if (!response.ok) {
        notice(body.error || `request #${id} is gone`, true);
        return;
      }
      showDetail(body);
    } catch (error) {
      notice(`cannot reach the inspector: ${error}`, true);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

function showDetail(d) {
  state.detail = d;
  $("detail").hidden = false;
  $("detail-title").textContent = `#${d.id}  ${d.method} ${d.path}`;
  const meta = [formatTime(d.started_at), formatDuration(d.duration_ms)];
  if (d.visitor && !d.replay_of) meta.push(`from ${d.visitor}`);
  if (d.replay_of) meta.push(`replay of #${d.replay_of}`);
  if (d.websocket) meta.push("WebSocket upgrade (messages are not recorded)");
  if (!d.done) meta.push("in progress");
  if (d.error) meta.push(d.error);
  $("detail-meta").textContent = meta.join("  ·  ");
  $("replay").disabled = d.websocket;
  $("edit").disabled = d.websocket;

  $("request-line").textContent = `${d.request.method} ${d.request.target}`;
  showHeaders($("request-headers"), d.request.headers);
  showBody($("request-body"), d.request.body);
  if (d.response) {
    $("response-line").textContent = `${d.response.status}`;
    showHeaders($("response-headers"), d.response.headers);
    showBody($("response-body"), d.response.body);
  } else {
    $("response-line").textContent = d.done ? `no response (${d.status}${d.error ? ": " + d.error : ""})` : "waiting for the local app…";
    $("response-headers").replaceChildren();
    $("response-body").replaceChildren();
  }
}

function showHeaders(table, headers) {
  table.replaceChildren(...headers.map(([name, value]) => el("tr", null, el("th", null, name), el("td", null, value))));
}

function showBody(box, b) {
  const notes = [];
  if (b.size === 0) {
    box.replaceChildren(el("p", "muted", "no body"));
    return;
  }
  notes.push(formatBytes(b.size));
  if (b.kind === "json") notes.push("JSON");
  if (b.kind === "binary") notes.push("binary");
  if (b.content_type) notes.push(b.content_type);
  if (b.content_encoding) notes.push(`${b.content_encoding}-encoded, shown as sent`);
  if (b.dropped) notes.push("body dropped to keep the inspector's memory bounded");
  else if (b.truncated) notes.push(`only the first ${formatBytes(b.captured)} kept (--inspect-body-limit)`);
  const parts = [el("p", "muted body-note", notes.join("  ·  "))];
  if (b.kind === "binary") {
    if (b.base64) parts.push(el("pre", "hex", hexdump(decodeBase64(b.base64))));
  } else if (b.text !== undefined) {
    parts.push(el("pre", b.kind === "json" ? "json" : "text", b.pretty ?? b.text));
  }
  box.replaceChildren(...parts);
}

function decodeBase64(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function hexdump(bytes, max = 1024) {
  const lines = [];
  for (let offset = 0; offset < Math.min(bytes.length, max); offset += 16) {
    const chunk = bytes.slice(offset, offset + 16);
    const hex = Array.from(chunk, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = Array.from(chunk, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  |${ascii}|`);
  }
  if (bytes.length > max) lines.push(`… ${bytes.length - max} more bytes kept`);
  return lines.join("\n");
}

function notice(text, error = false) {
  $("notice").textContent = text;
  $("notice").classList.toggle("error", error);
}

// -- replay -----------------------------------------------------------------------------------

async function replay(id, overrides) {
  notice("Replaying…");
  let response, body;
  try {
    response = await fetch(`/api/requests/${id}/replay`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(overrides || {}),
    });
    body = await response.json();
  } catch (error) {
    notice(`replay failed: ${error}`, true);
    return;
  }
  if (!response.ok) {
    notice(body.error || `replay failed (${response.status})`, true);
    return;
  }
  upsert(body);
  trim();
  updateCount();
  await select(body.id, body);
  notice(response.status === 202 ? `Replay #${body.id} is still running` : `Replayed as #${body.id}: ${statusLabel(body)}`);
}

let editorBody = null; // what the body box was filled with

function openEditor() {
  const d = state.detail;
  if (!d) return;
  $("edit-method").value = d.request.method;
  $("edit-path").value = d.request.target;
  $("edit-headers").value = d.request.headers.map(([n, v]) => `${n}: ${v}`).join("\n");
  const b = d.request.body;
  const box = $("edit-body");
  editorBody = b.kind === "binary" || b.truncated || b.dropped ? "" : (b.text ?? "");
  box.value = editorBody;
  if (b.kind === "binary" && !b.truncated && !b.dropped) {
    $("edit-body-note").textContent = "(binary: sent as captured unless you type a body)";
  } else if (b.truncated || b.dropped) {
    $("edit-body-note").textContent = "(the body was not kept whole: type the body to send)";
  } else {
    $("edit-body-note").textContent = "";
  }
  $("editor").hidden = false;
  $("edit-path").focus();
}

function editedOverrides() {
  const headers = [];
  for (const line of $("edit-headers").value.split("\n")) {
    if (!line.trim()) continue;
    const colon = line.indexOf(":");
    if (colon < 1) throw new Error(`not a header line: ${line}`);
    headers.push([line.slice(0, colon).trim(), line.slice(colon + 1).trim()]);
  }
  const overrides = { method: $("edit-method").value.trim(), path: $("edit-path").value.trim(), headers };
  const body = $("edit-body").value;
  if (body !== editorBody) overrides.body = body;
  return overrides;
}

// -- start ------------------------------------------------------------------------------------

function connect() {
  const events = new EventSource("/api/events");
  events.addEventListener("requests", (event) => {
    for (const s of JSON.parse(event.data)) upsert(s);
    trim();
    updateCount();
  });
  events.addEventListener("open", () => $("live").classList.add("on"));
  events.addEventListener("error", () => $("live").classList.remove("on"));
}

async function start() {
  $("filter").addEventListener("input", applyFilter);
  $("replay").addEventListener("click", () => state.selected !== null && replay(state.selected));
  $("edit").addEventListener("click", openEditor);
  $("cancel").addEventListener("click", () => { $("editor").hidden = true; });
  $("editor").addEventListener("submit", (event) => {
    event.preventDefault();
    let overrides;
    try {
      overrides = editedOverrides();
    } catch (error) {
      notice(error.message, true);
      return;
    }
    $("editor").hidden = true;
    replay(state.selected, overrides);
  });
  try {
    const response = await fetch("/api/requests");
    const list = await response.json();
    state.capacity = list.capacity;
    $("local").textContent = `→ ${list.local}`;
    for (const s of list.requests.slice().reverse()) upsert(s);
  } catch (error) {
    notice(`cannot reach the inspector: ${error}`, true);
  }
  updateCount();
  connect();
}

start();
