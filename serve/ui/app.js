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

async function api(method, path, payload) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers,
                                       body: payload === undefined ? undefined : JSON.stringify(payload) });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) { sessionStorage.removeItem("fabric-token"); route(); throw new Error("sign in again"); }
  if (!response.ok) {
    const named = (body.problems || []).map((p) => `${p.where}: ${p.message}`).join("; ");
    throw new Error(`${body.title || response.statusText}${named ? " — " + named : ""}${body.fix ? " — " + body.fix : ""}`);
  }
  return body;
}

function show(section) {
  for (const id of ["login", "list", "pipelines", "detail"]) $(id).hidden = id !== section;
  $("logout").hidden = $("nav").hidden = section === "login";
  $("nav-runs").className = section === "list" ? "here" : "";
  $("nav-pipelines").className = section === "pipelines" ? "here" : "";
}

// An HTML element whose children are nodes or strings. Strings become text nodes, never markup: names,
// params and labels are tenant input, so nothing here goes through innerHTML.
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "onclick") node.addEventListener("click", v);
    else if (k === "oninput") node.addEventListener("input", v);
    else node.setAttribute(k, v);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

function when(seconds) { return new Date(seconds * 1000).toLocaleString(); }

// A param or metric value as short text (objects as JSON, cut at 300 characters).
function shown(value) {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(4);
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > 300 ? text.slice(0, 299) + "…" : text;
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
  if (match) openSubmission(decodeURIComponent(match[1]));
  else if (location.hash === "#/p") openPipelines();
  else openList();
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

// -- the pipelines page -----------------------------------------------------------------------------

const PIPELINES = "\u0000pipelines";  // view.id while the pipelines page is shown (never a submission id)

async function openPipelines() {
  show("pipelines");
  stopPolling();
  view = { id: PIPELINES, timer: null, graph: null, status: null, selected: null };
  await refreshPipelines();
}

// One request per list, then each pipeline's versions and runs; polls (one poller, as a run page) while a
// run or a backfill is live and this page is the one shown.
async function refreshPipelines() {
  stopPolling();
  let live = false;
  try {
    const [pipes, schedules, backfills] = await Promise.all([
      api("GET", "/api/orch/pipelines"), api("GET", "/api/orch/schedules"), api("GET", "/api/orch/backfills")]);
    const details = await Promise.all(pipes.items.map((p) => {
      const id = encodeURIComponent(p.pipeline_id);
      return Promise.all([api("GET", `/api/orch/pipelines/${id}/versions`),
                          api("GET", `/api/orch/pipelines/${id}/runs?limit=40`)]);
    }));
    if (view.id !== PIPELINES) return;
    $("pipeline-cards").replaceChildren(...pipes.items.map((p, i) => pipelineCard(
      p, details[i][0].items, details[i][1].items,
      schedules.items.filter((s) => s.pipeline_id === p.pipeline_id),
      backfills.items.filter((b) => b.pipeline_id === p.pipeline_id))));
    live = details.some(([, runs]) => runs.items.some((r) => r.state === "RUNNING"))
      || backfills.items.some((b) => b.state === "RUNNING");
    $("pipelines-error").textContent = pipes.items.length ? "" : "no registered pipelines (fabric register dag.yaml)";
  } catch (error) { $("pipelines-error").textContent = error.message; }
  if (live && view.id === PIPELINES && view.timer === null) view.timer = setTimeout(refreshPipelines, 2000);
}

function paramsText(params) {
  return Object.entries(params || {}).map(([k, v]) => `${k}=${shown(v)}`).join(" ");
}

// What was typed in a card's forms, by pipeline and field: a refresh rebuilds the cards, not what you typed.
const drafts = {};

function field(pipeline, name, attrs) {
  const key = `${pipeline}\u0000${name}`;
  const input = h("input", { ...attrs, name, oninput: (e) => { drafts[key] = e.target.value; } });
  if (key in drafts) input.value = drafts[key];
  return input;
}

// `k=v k=v` as params: each value JSON when it parses (10, true, [1,2]), else the text, as the CLI's -P; or a
// JSON object (`{"note": "two words"}`) for values with spaces.
function parseParams(text) {
  if ((text || "").trim().startsWith("{")) {
    const parsed = JSON.parse(text);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("params: a JSON object");
    return parsed;
  }
  const params = {};
  for (const pair of (text || "").split(/\s+/).filter(Boolean)) {
    const at = pair.indexOf("=");
    if (at < 1) throw new Error(`${pair}: write params as name=value`);
    const raw = pair.slice(at + 1);
    try { params[pair.slice(0, at)] = JSON.parse(raw); } catch { params[pair.slice(0, at)] = raw; }
  }
  return params;
}

// What the last button of each card did (kept across refreshes, as drafts are).
const said = {};

// A button's action: POST with the token, then refresh the page, which says in the card what happened.
async function act(pipeline, what, call) {
  try {
    said[pipeline] = { cls: "said meta", text: what(await call()) };
  } catch (error) {
    said[pipeline] = { cls: "said error", text: error.message };
  }
  await refreshPipelines();
}

function forms(card, id, declaredParams) {
  const draftKey = id;
  const path = `/api/orch/pipelines/${encodeURIComponent(id)}`;
  const declared = Object.keys(declaredParams || {}).map((k) => `${k}=`).join(" ");
  const value = (name) => card.querySelector(`input[name='${name}']`).value;
  const run = h("div", { class: "actions run" },
    field(draftKey, "run-params", { placeholder: declared || "name=value …", size: 40 }),
    h("button", { class: "run", onclick: () => act(id, (r) => r.skipped ? `skipped: ${r.reason}`
      : r.queued ? `queued (${r.position}): ${r.submission_id}` : `started ${r.submission_id}`,
    () => api("POST", `${path}/runs`, { params: parseParams(value("run-params")) })) }, "run"));
  const fill = h("div", { class: "actions backfill-form" },
    field(draftKey, "bf-start", { type: "date" }), " → ", field(draftKey, "bf-end", { type: "date" }),
    " every ", field(draftKey, "bf-step", { value: "1d", size: 4 }),
    " at most ", field(draftKey, "bf-max", { type: "number", value: "4", min: "1", max: "100" }),
    field(draftKey, "bf-params", { placeholder: "other params: name=value …", size: 30 }),
    h("button", { class: "backfill", onclick: () => act(id, (r) => `backfill ${r.backfill_id}: ${r.total} dates`,
      () => api("POST", `${path}/backfills`, { start: value("bf-start"), end: value("bf-end"),
        step: value("bf-step"), max_active: Number(value("bf-max")), params: parseParams(value("bf-params")) })) },
    "backfill"));
  const note = said[id] || { cls: "said meta", text: "" };
  return [h("h4", {}, "run now"), run, h("h4", {}, "backfill"), fill, h("p", { class: note.cls }, note.text)];
}

function pauseButton(id, s) {
  const verb = s.paused ? "resume" : "pause";
  return h("button", { class: verb, onclick: () => act(id, () => `schedule ${s.name}: ${verb}d`,
    () => api("POST", `/api/orch/pipelines/${encodeURIComponent(id)}/schedules/${encodeURIComponent(s.name)}/${verb}`)) },
  verb);
}

function pipelineCard(latest, versions, runs, schedules, backfills) {
  const limit = latest.max_active_runs ? `max ${latest.max_active_runs} active, overlap ${latest.overlap}` : "no run limit";
  const card = h("div", { class: "card", dataset: { pipeline: latest.pipeline_id } },
    h("h3", {}, latest.pipeline_id, " ", h("small", {}, `v${latest.version} · ${limit}`)));
  card.append(h("div", { class: "meta versions" }, "versions: ", ...versions.slice(0, 10).flatMap((v, i) => [
    i ? " · " : "", h("span", { dataset: { version: String(v.version) }, title: `spec ${v.spec_hash}` },
                      `v${v.version} (${when(v.created_at)})`)])));
  const strip = h("div", { class: "strip" }, ...runs.slice().reverse().map((r) => h("a", {
    href: `#/s/${encodeURIComponent(r.submission_id)}`, style: `background:${COLORS[r.state] || "#6b7280"}`,
    title: `${r.submission_id} · ${r.state} · v${r.version} · ${when(r.created_at)} ${paramsText(r.params)}`,
    dataset: { submission: r.submission_id, state: r.state } })));
  card.append(h("h4", {}, `recent runs (${runs.length})`), runs.length ? strip : h("p", { class: "meta" }, "none yet"));
  if (schedules.length) {
    card.append(h("h4", {}, "schedules"), h("table", { class: "kv schedules" },
      h("thead", {}, h("tr", {}, ...["name", "cron", "params", "next fires", ""].map((t) => h("th", {}, t)))),
      h("tbody", {}, ...schedules.map((s) => h("tr", { dataset: { schedule: s.name } },
        h("td", {}, s.name), h("td", {}, `${s.cron} (${s.timezone || "UTC"})`), h("td", {}, paramsText(s.params)),
        h("td", { class: "next" }, s.paused ? "paused" : (s.next_fires || []).map(when).join(" · ") || "none"),
        h("td", {}, pauseButton(latest.pipeline_id, s)))))));
  }
  for (const b of backfills) card.append(backfillRow(b));
  card.append(...forms(card, latest.pipeline_id, versions.length ? (versions[0].spec || {}).params : {}));
  return card;
}

const BACKFILL_STATES = ["SUCCEEDED", "SKIPPED", "RUNNING", "PENDING", "FAILED", "CANCELLED"];

function backfillRow(b) {
  const total = Math.max(b.total, 1);
  const bar = h("div", { class: "progress", title: `${b.backfill_id}: ${b.total} dates` },
    ...BACKFILL_STATES.filter((s) => b.counts[s]).map((s) => h("span", {
      class: `seg-${s}`, style: `width:${(100 * b.counts[s]) / total}%;background:${COLORS[s]}`,
      title: `${b.counts[s]} ${s.toLowerCase()}` })));
  const counts = BACKFILL_STATES.filter((s) => b.counts[s]).map((s) => `${b.counts[s]} ${s.toLowerCase()}`).join(", ");
  return h("div", { class: "backfill", dataset: { backfill: b.backfill_id, state: b.state } },
    h("h4", {}, `backfill ${b.backfill_id} `, h("span", { class: "state", style: `background:${COLORS[b.state] || "#6b7280"}` },
                                                  b.state)),
    h("div", { class: "meta" }, `${b.start} → ${b.end} every ${b.step}, ${b.max_active} at once ${paramsText(b.params)}`),
    bar, h("div", { class: "meta counts" }, `${counts} of ${b.total}`));
}

// -- one submission --------------------------------------------------------------------------------

async function openSubmission(id) {
  show("detail");
  stopPolling();
  view = { id, timer: null, graph: null, status: null, selected: null, reportAsked: false };
  $("d-title").textContent = id;
  $("d-params").tBodies[0].replaceChildren();
  $("d-metrics").tBodies[0].replaceChildren();
  $("charts").replaceChildren();
  $("charts-pane").hidden = true;
  $("log").textContent = "select a node";
  $("children-pane").hidden = true;
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
    drawDag(); drawChildren(); drawGantt(); drawParams(status.params);
    if (view.selected && status.state === "RUNNING") loadLog(view.selected);
    running = status.state === "RUNNING";
    // The report (metrics.json) and the charts, once, when the run has ended (no more status polls for it).
    if (!running && !view.reportAsked) { view.reportAsked = true; await loadReport(id); }
    $("detail-error").textContent = "";
  } catch (error) { $("detail-error").textContent = error.message; }
  if (running && id === view.id && view.timer === null) view.timer = setTimeout(refresh, 1000);
}

function kvRows(tbody, rows, empty) {
  tbody.replaceChildren(...rows.map((cells) => h("tr", {}, ...cells.map((c, i) => h("td", {
    class: i === cells.length - 1 && typeof c === "number" ? "num" : "" }, shown(c))))));
  if (!rows.length) tbody.append(h("tr", {}, h("td", { class: "meta" }, empty)));
}

function drawParams(params) {
  kvRows($("d-params").tBodies[0], Object.entries(params || {}).map(([k, v]) => [k, v]), "no params");
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

// The run's report is written just after it ends: a missing one is asked again twice, half a second apart.
async function loadReport(id) {
  let report = null, problem = null;
  for (let attempt = 0; attempt < 3 && report === null; attempt++) {
    if (attempt) await sleep(500);
    if (id !== view.id) return;
    try { report = await api("GET", `/api/orch/artifacts/${encodeURIComponent(id)}/metrics.json`); }
    catch (error) { problem = error; }
  }
  if (id !== view.id) return;
  if (report === null) { kvRows($("d-metrics").tBodies[0], [], `no report (${problem.message})`); return; }
  const rows = [];
  for (const [node, entry] of Object.entries(report.nodes || {})) {
    const metrics = entry && entry.metrics;
    if (metrics && typeof metrics === "object" && !Array.isArray(metrics)) {
      for (const [k, v] of Object.entries(metrics)) rows.push([node, k, v]);
    }
  }
  kvRows($("d-metrics").tBodies[0], rows, "no node wrote a metrics.json");
  await loadCharts(id);
}

// Every node file named `*.chart.json` ({title, x, series: [{name, y}]}) drawn as a line chart.
async function loadCharts(id) {
  const index = await api("GET", `/api/orch/artifacts/${encodeURIComponent(id)}`).catch(() => ({ nodes: {} }));
  const files = Object.entries(index.nodes || {}).flatMap(([node, names]) =>
    names.filter((n) => n.endsWith(".chart.json")).map((n) => [node, n]));
  const charts = [];
  for (const [node, name] of files.slice(0, 8)) {
    const path = name.split("/").map(encodeURIComponent).join("/");
    try {
      const chart = await api("GET", `/api/orch/artifacts/${encodeURIComponent(id)}/${encodeURIComponent(node)}/${path}`);
      charts.push(drawChart(chart, node, name));
    } catch (error) { charts.push(h("p", { class: "error" }, `${node}/${name}: ${error.message}`)); }
  }
  if (id !== view.id) return;
  $("charts").replaceChildren(...charts);
  $("charts-pane").hidden = !charts.length;
}

const SERIES_COLORS = ["#2563eb", "#9ca3af", "#16a34a", "#d97706", "#7c3aed"];

// An inline SVG line chart: x is the points' order (labels shown at the ends), y scaled to the data's range.
function drawChart(chart, node, name) {
  const series = (Array.isArray(chart.series) ? chart.series : []).slice(0, SERIES_COLORS.length);
  const x = Array.isArray(chart.x) ? chart.x : [];
  const ys = series.map((s) => (Array.isArray(s.y) ? s.y : []).slice(0, 100_000));
  const finite = ys.flat().filter((v) => typeof v === "number" && Number.isFinite(v));
  const W = 900, H = 260, L = 64, R = 16, T = 12, B = 28;
  const svg = fitted(`chart-${node}-${name}`, W, H);
  svg.setAttribute("class", "chart-svg");
  svg.dataset.node = node;
  if (!finite.length) return h("div", { class: "chart" }, h("h4", {}, `${node} · ${shown(chart.title || name)}`), "no points");
  let lo = finite.reduce((a, b) => Math.min(a, b)), hi = finite.reduce((a, b) => Math.max(a, b));
  if (hi === lo) { lo -= 1; hi += 1; }
  const n = Math.max(2, ...ys.map((y) => y.length));
  const px = (i) => L + (i / (n - 1)) * (W - L - R);
  const py = (v) => T + ((hi - v) / (hi - lo)) * (H - T - B);
  for (let k = 0; k <= 4; k++) {
    const v = lo + ((hi - lo) * k) / 4;
    el("line", { x1: L, x2: W - R, y1: py(v), y2: py(v), stroke: "#e5e7eb" }, svg);
    el("text", { x: L - 6, y: py(v) + 4, "text-anchor": "end", fill: "#6b7280" }, svg).textContent = v.toPrecision(4);
  }
  if (chart.x_label) el("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle", fill: "#6b7280" }, svg)
    .textContent = shown(chart.x_label);
  if (x.length) {
    el("text", { x: L, y: H - 8, fill: "#6b7280" }, svg).textContent = shown(x[0]);
    el("text", { x: W - R, y: H - 8, "text-anchor": "end", fill: "#6b7280" }, svg).textContent = shown(x[x.length - 1]);
  }
  ys.forEach((y, k) => {
    // A gap (null) ends a line; each run of numbers is one polyline.
    let run = [];
    const flush = () => {
      if (run.length) el("polyline", { points: run.join(" "), fill: "none", stroke: SERIES_COLORS[k],
                                       "stroke-width": k === 0 ? 2 : 1.2, class: "series", "data-series": k }, svg);
      run = [];
    };
    y.forEach((v, i) => {
      if (typeof v === "number" && Number.isFinite(v)) run.push(`${px(i).toFixed(1)},${py(v).toFixed(1)}`);
      else flush();
    });
    flush();
  });
  const legend = h("div", { class: "legend" }, chart.y_label ? h("span", {}, `${shown(chart.y_label)}:`) : null,
    ...series.map((s, k) => h("span", {
    style: `color:${SERIES_COLORS[k]}` }, `— ${shown(s.name ?? `series ${k + 1}`)}`)));
  return h("div", { class: "chart", dataset: { node, file: name } },
    h("h4", {}, `${node} · ${shown(chart.title || name)}`), legend, svg);
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
    const selected = view.selected === node.id || mapOf(view.selected) === node.id;  // a child selects its map
    const g = el("g", { class: `node${selected ? " selected" : ""}`, "data-node": node.id,
                        "data-state": state, transform: `translate(${x},${y})` }, svg);
    el("rect", { width: W, height: H, rx: 6, fill: COLORS[state] || "#9ca3af",
                 stroke: onPath.has(node.id) ? "#d4a017" : "#374151", "stroke-width": onPath.has(node.id) ? 3 : 1 }, g);
    const label = el("text", { x: 8, y: 16, fill: "#fff", "font-weight": 600 }, g);
    label.textContent = node.id.length > 22 ? node.id.slice(0, 21) + "…" : node.id;
    const sub = el("text", { x: 8, y: 32, fill: "#fff" }, g);
    sub.textContent = `${node.kind} · ${state.toLowerCase()}`;
    const kids = childrenOf(node.id);
    if (kids.length) {  // collapsed into their map: counts and a progress bar
      const ok = kids.filter((n) => n.state === "SUCCEEDED" || n.state === "CACHED").length;
      const bad = kids.filter((n) => n.state === "FAILED" || n.state === "TIMED_OUT").length;
      sub.textContent = `map · ${ok}/${kids.length} ok${bad ? ` · ${bad} failed` : ""}`;
      el("rect", { x: 0, y: H - 4, width: (W * ok) / kids.length, height: 4, fill: "#fff", "data-map-progress": ok }, g);
    }
    const title = el("title", {}, g);
    const reason = (view.status.nodes.find((n) => n.node_id === node.id) || {}).reason;
    title.textContent = `${node.id} (${state})${reason ? ": " + reason : ""}`;  // e.g. why it was SKIPPED
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
  drawChildren();
  loadLog(id);
}

// A map's children are `node[i]` in the status (not in the graph): the map node's id, or null for any other id.
function mapOf(id) {
  const match = /^(.*)\[\d+\]$/.exec(id || "");
  return match && view.graph.nodes.some((n) => n.id === match[1]) ? match[1] : null;
}

function childrenOf(id) {
  return view.status.nodes.filter((n) => n.node_id.startsWith(id + "[") && mapOf(n.node_id) === id);
}

// The children of the selected map node (or of the selected child's map): each one's state, attempts and
// error, a click away from its log. The graph keeps the map as one node; this is where `node[i]` is reached.
const CHILD_ROWS = 1000;
function drawChildren() {
  const map = mapOf(view.selected) || view.selected;
  const kids = map ? childrenOf(map) : [];
  $("children-pane").hidden = !kids.length;
  if (!kids.length) return;
  $("children-of").textContent = map;
  $("d-children").tBodies[0].replaceChildren(...kids.slice(0, CHILD_ROWS).map((n) => {
    const outcomes = n.history.map((a) => a.outcome || "running").join(" → ");
    const failed = [...n.history].reverse().find((a) => a.error);
    const error = n.error || (failed && failed.error);
    return h("tr", { dataset: { node: n.node_id, state: n.state }, class: n.node_id === view.selected ? "here" : "",
                     onclick: () => selectNode(n.node_id) },
      h("td", {}, n.node_id), h("td", { class: "state-text", style: `color:${COLORS[n.state] || ""}` }, n.state),
      h("td", { class: "attempts" }, `${n.attempts}${outcomes ? ` (${outcomes})` : ""}`),
      h("td", { class: "meta" }, error ? `${error.type}: ${error.message}` : ""));
  }));
  $("children-more").textContent = kids.length > CHILD_ROWS ? `the first ${CHILD_ROWS} of ${kids.length}` : "";
}

async function loadLog(id) {
  $("log-node").textContent = `· ${id}`;
  try {
    const body = await api("GET", `/api/orch/logs/${encodeURIComponent(view.id)}?node=${encodeURIComponent(id)}&tail=2000`);
    if (view.selected !== id) return;
    const node = view.status.nodes.find((n) => n.node_id === id);
    const error = node && node.error ? `\n--- ${node.error.type}: ${node.error.message}\n${node.error.traceback || ""}`
      : node && node.state === "SKIPPED" ? `\n--- SKIPPED: ${node.reason}` : "";
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
