// fabric's web UI: plain JS over the gateway's JSON API. The token lives in sessionStorage (this tab only);
// a `#token=...` fragment (never sent to the server) is taken once and removed from the address bar.
"use strict";

const COLORS = {
  PENDING: "#9ca3af", QUEUED: "#60a5fa", RUNNING: "#2563eb", RETRYING: "#f59e0b", SUCCEEDED: "#16a34a",
  CACHED: "#15803d", FAILED: "#dc2626", TIMED_OUT: "#b91c1c", SKIPPED: "#d1d5db", CANCELLED: "#6b7280",
  PREEMPTED: "#a855f7",
};
const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";
const PAGE_SIZE = 50;
// One poller at most: `view.timer` is the only pending refresh, and a refresh that finds the view changed
// (another submission, the list) or the run ended schedules nothing. So nothing polls after you leave.
let view = { id: null, timer: null, graph: null, status: null, selected: null };
// The list's pages: the cursors that opened each page so far (the first page has none), from the server.
let pages = { cursors: [null], next: null };

function token() { return sessionStorage.getItem("fabric-token"); }

async function api(method, path) {
  const response = await fetch(path, { method, headers: { Authorization: `Bearer ${token()}` } });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) { sessionStorage.removeItem("fabric-token"); route(); throw new Error("sign in again"); }
  if (!response.ok) throw new Error(`${body.title || response.statusText}${body.fix ? " — " + body.fix : ""}`);
  return body;
}

function show(section) {
  for (const id of ["login", "list", "detail"]) $(id).hidden = id !== section;
  $("logout").hidden = section === "login";
}

function stopPolling() {
  clearTimeout(view.timer);
  view.timer = null;
}

function route() {
  stopPolling();
  view.id = null;
  const hash = location.hash;
  const fromFragment = hash.match(/token=([^&]+)/);
  if (fromFragment) {
    sessionStorage.setItem("fabric-token", decodeURIComponent(fromFragment[1]));
    history.replaceState(null, "", location.pathname + "#/");
  }
  if (!token()) { show("login"); return; }
  const match = location.hash.match(/^#\/s\/(.+)$/);
  if (match) openSubmission(decodeURIComponent(match[1])); else openList();
}

// -- the list --------------------------------------------------------------------------------------

// Filters, search and paging all happen on the server: the list route gets them as query parameters.
async function openList(page = 0) {
  show("list");
  if (page === 0) pages = { cursors: [null], next: null };
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if ($("f-state").value) query.set("state", $("f-state").value);
  if ($("f-label").value.trim()) query.append("label", $("f-label").value.trim());
  if ($("f-search").value.trim()) query.set("search", $("f-search").value.trim());
  if (pages.cursors[page]) query.set("cursor", pages.cursors[page]);
  try {
    const body = await api("GET", `/api/orch/submissions?${query}`);
    const rows = body.items;
    pages.page = page;
    pages.cursors.length = page + 1;
    if (body.next_cursor) pages.cursors.push(body.next_cursor);
    $("page-first").disabled = $("page-prev").disabled = page === 0;
    $("page-next").disabled = !body.next_cursor;
    $("page-no").textContent = `page ${page + 1}`;
    const tbody = $("submissions").querySelector("tbody");
    tbody.replaceChildren(...rows.map((item) => {
      const tr = document.createElement("tr");
      tr.dataset.submission = item.submission_id;
      const labels = Object.entries(item.labels || {}).map(([k, v]) => `${k}:${v}`).join(" ");
      for (const text of [item.submission_id, item.pipeline_id, item.state,
                          new Date(item.created_at * 1000).toLocaleString(), labels]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tr.children[2].style.color = COLORS[item.state] || "";
      tr.onclick = () => { location.hash = `#/s/${encodeURIComponent(item.submission_id)}`; };
      return tr;
    }));
    $("list-error").textContent = rows.length ? "" : "no submissions match";
  } catch (error) { $("list-error").textContent = error.message; }
}

// -- one submission --------------------------------------------------------------------------------

async function openSubmission(id) {
  show("detail");
  stopPolling();
  view = { id, timer: null, graph: null, status: null, selected: null };
  $("d-title").textContent = id;
  $("log").textContent = "select a node";
  $("log-node").textContent = "";
  await refresh();
}

// Refresh once, then schedule the next one only while this submission is still the one shown and runs.
async function refresh() {
  const id = view.id;
  stopPolling();
  let running = true;
  try {
    const [status, graph] = await Promise.all([
      api("GET", `/api/orch/status/${encodeURIComponent(id)}`), api("GET", `/api/orch/graph/${encodeURIComponent(id)}`)]);
    if (id !== view.id) return;
    view.status = status; view.graph = graph;
    $("d-title").textContent = `${status.pipeline_id} · ${id}`;
    $("d-state").textContent = status.state;
    $("d-state").style.background = COLORS[status.state] || "#6b7280";
    $("d-counts").textContent = Object.entries(status.counts).map(([k, v]) => `${v} ${k.toLowerCase()}`).join(", ");
    $("cancel").disabled = status.state !== "RUNNING";
    const failed = status.nodes.filter((n) => n.state === "FAILED" || n.state === "TIMED_OUT");
    const note = $("d-failed");
    note.replaceChildren();
    if (failed.length) {
      note.append("failed: ");
      for (const node of failed) {
        const link = document.createElement("a");
        link.href = "#"; link.textContent = node.node_id; link.className = "failed-link";
        link.onclick = (event) => { event.preventDefault(); selectNode(node.node_id); };
        note.append(link, " ");
      }
    }
    drawDag(); drawGantt();
    if (view.selected && status.state === "RUNNING") loadLog(view.selected);
    running = status.state === "RUNNING";
    $("detail-error").textContent = "";
  } catch (error) { $("detail-error").textContent = error.message; }
  if (running && id === view.id && view.timer === null) view.timer = setTimeout(refresh, 1000);
}

function nodeState(id) {
  const node = view.status.nodes.find((n) => n.node_id === id);
  return node ? node.state : "PENDING";
}

function el(name, attrs, parent) {
  const node = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

// An SVG drawn in its own units and scaled down to the pane's width (never up).
function fitted(id, width, height) {
  return el("svg", { id, viewBox: `0 0 ${width} ${height}`, width, style: `max-width:100%;height:auto` });
}

// Layers by longest path from a source; inside a layer, order by the parents' mean position (one pass).
function layout(nodes) {
  const depth = {};
  for (const node of nodes) depth[node.id] = Math.max(-1, ...node.upstream.map((u) => depth[u] ?? 0)) + 1;
  const layers = [];
  for (const node of nodes) (layers[depth[node.id]] ||= []).push(node.id);
  const pos = {};
  layers.forEach((layer, x) => {
    if (x > 0) {
      const byId = Object.fromEntries(nodes.map((n) => [n.id, n]));
      const centre = (id) => { const ups = byId[id].upstream; return ups.reduce((s, u) => s + pos[u].y, 0) / (ups.length || 1); };
      layer.sort((a, b) => centre(a) - centre(b));
    }
    layer.forEach((id, y) => { pos[id] = { x, y }; });
  });
  return { pos, layers };
}

function drawDag() {
  const { nodes, critical_path: critical } = view.graph;
  const { pos, layers } = layout(nodes);
  const W = 170, H = 40, GX = 60, GY = 22;
  const rows = Math.max(...layers.map((l) => l.length));
  const svg = fitted("dag-svg", layers.length * (W + GX), rows * (H + GY) + 10);
  const onPath = new Set(critical);
  const xy = (id) => [10 + pos[id].x * (W + GX), 5 + pos[id].y * (H + GY)];
  for (const node of nodes) for (const up of node.upstream) {
    const [x1, y1] = xy(up), [x2, y2] = xy(node.id);
    const hot = onPath.has(up) && onPath.has(node.id);
    el("path", { d: `M${x1 + W},${y1 + H / 2} C${x1 + W + GX / 2},${y1 + H / 2} ${x2 - GX / 2},${y2 + H / 2} ${x2},${y2 + H / 2}`,
                 fill: "none", stroke: hot ? "#d4a017" : "#9ca3af", "stroke-width": hot ? 3 : 1.5 }, svg);
  }
  for (const node of nodes) {
    const [x, y] = xy(node.id);
    const state = nodeState(node.id);
    const g = el("g", { class: `node${view.selected === node.id ? " selected" : ""}`, "data-node": node.id,
                        "data-state": state, transform: `translate(${x},${y})` }, svg);
    el("rect", { width: W, height: H, rx: 6, fill: COLORS[state] || "#9ca3af",
                 stroke: onPath.has(node.id) ? "#d4a017" : "#374151", "stroke-width": onPath.has(node.id) ? 3 : 1 }, g);
    const label = el("text", { x: 8, y: 16, fill: "#fff", "font-weight": 600 }, g);
    label.textContent = node.id.length > 22 ? node.id.slice(0, 21) + "…" : node.id;
    const sub = el("text", { x: 8, y: 32, fill: "#fff" }, g);
    sub.textContent = `${node.kind} · ${state.toLowerCase()}`;
    const title = el("title", {}, g);
    title.textContent = `${node.id} (${state})`;
    g.addEventListener("click", () => selectNode(node.id));
  }
  $("dag").replaceChildren(svg);
}

function drawGantt() {
  const { nodes, attempts, critical_path: critical } = view.graph;
  const start = view.status.created_at;
  const now = Date.now() / 1000;
  let end = view.status.ended_at || now;
  for (const list of Object.values(attempts)) for (const a of list) end = Math.max(end, a.ended_at || 0);
  const span = Math.max(end - start, 0.001);
  const LABEL = 170, WIDTH = 900, ROW = 22;
  const svg = fitted("gantt-svg", LABEL + WIDTH + 20, nodes.length * ROW + 30);
  const x = (t) => LABEL + ((t - start) / span) * WIDTH;
  const onPath = new Set(critical);
  for (let i = 0; i <= 4; i++) {
    const tx = LABEL + (i / 4) * WIDTH;
    el("line", { x1: tx, x2: tx, y1: 0, y2: nodes.length * ROW, stroke: "#e5e7eb" }, svg);
    const label = el("text", { x: tx, y: nodes.length * ROW + 16, "text-anchor": "middle", fill: "#6b7280" }, svg);
    label.textContent = `${((span * i) / 4).toFixed(span < 10 ? 1 : 0)}s`;
  }
  nodes.forEach((node, row) => {
    const y = row * ROW + 3;
    const name = el("text", { x: 4, y: y + 13, fill: onPath.has(node.id) ? "#92700c" : "#1d2330",
                              "font-weight": onPath.has(node.id) ? 700 : 400 }, svg);
    name.textContent = (onPath.has(node.id) ? "★ " : "") + node.id;
    for (const a of attempts[node.id] || []) {
      if (a.queued_at != null && a.started_at != null && a.started_at > a.queued_at) {
        el("rect", { x: x(a.queued_at), y, width: Math.max(x(a.started_at) - x(a.queued_at), 1), height: ROW - 6,
                     fill: "#d1d5db", class: "wait" }, svg);
      }
      if (a.started_at != null) {
        const bar = el("rect", { x: x(a.started_at), y, width: Math.max(x(a.ended_at || now) - x(a.started_at), 2),
                                 height: ROW - 6, fill: COLORS[a.outcome || "RUNNING"] || "#2563eb", class: "run",
                                 stroke: onPath.has(node.id) ? "#d4a017" : "none", "stroke-width": 2 }, svg);
        const tip = el("title", {}, bar);
        const wait = a.queued_at != null ? (a.started_at - a.queued_at).toFixed(2) : "?";
        const ran = ((a.ended_at || now) - a.started_at).toFixed(2);
        tip.textContent = `${node.id} attempt ${a.attempt}: waited ${wait}s, ran ${ran}s → ${a.outcome || "running"}`;
      }
    }
  });
  $("gantt").replaceChildren(svg);
}

function selectNode(id) {
  view.selected = id;
  drawDag();
  loadLog(id);
}

async function loadLog(id) {
  $("log-node").textContent = `· ${id}`;
  try {
    const body = await api("GET", `/api/orch/logs/${encodeURIComponent(view.id)}?node=${encodeURIComponent(id)}&tail=2000`);
    if (view.selected !== id) return;
    const node = view.status.nodes.find((n) => n.node_id === id);
    const error = node && node.error ? `\n--- ${node.error.type}: ${node.error.message}\n${node.error.traceback || ""}` : "";
    $("log").textContent = (body.text || "(no output)") + error;
  } catch (error) { $("log").textContent = error.message; }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem("fabric-token", $("token").value.trim());
  try { await api("GET", "/api/orch/submissions?limit=1"); $("login-error").textContent = ""; route(); }
  catch (error) { $("login-error").textContent = "that token was not accepted"; show("login"); }
});
$("filters").addEventListener("submit", (event) => { event.preventDefault(); openList(0); });
$("page-first").addEventListener("click", () => openList(0));
$("page-prev").addEventListener("click", () => openList(Math.max(pages.page - 1, 0)));
$("page-next").addEventListener("click", () => openList(pages.page + 1));
$("logout").addEventListener("click", () => { sessionStorage.removeItem("fabric-token"); location.hash = "#/"; route(); });
$("cancel").addEventListener("click", async () => {
  if (!confirm(`Cancel ${view.id}?`)) return;
  // refresh() replaces any pending poll and keeps polling only until the cancelled run has ended.
  try { await api("POST", `/api/orch/cancel/${encodeURIComponent(view.id)}`); await refresh(); }
  catch (error) { $("detail-error").textContent = error.message; }
});
window.addEventListener("hashchange", route);
route();
