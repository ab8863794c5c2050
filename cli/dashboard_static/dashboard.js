// Cohort dashboard: renders the admin API's snapshots (server-sent events), no framework.
"use strict";

const COLOURS = ["#0a5bb5", "#b35900", "#116329", "#8250df", "#a40e26", "#1b7c83"];
let session = { role: "", csrf: "", operator: "" };
let selected = null;
let siteOf = {};  // node id -> site name, for the audit log's actors
let runStream = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value) {
  if (typeof value !== "number" || !isFinite(value)) return String(value);
  if (Number.isInteger(value)) return value.toLocaleString("en");
  const size = Math.abs(value);
  return size >= 100 ? value.toFixed(0) : size >= 1 ? value.toFixed(2) : value.toPrecision(3);
}

function when(unix) {
  if (!unix) return "—";
  return new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function ago(unix, now) {
  if (!unix) return "never";
  const s = Math.max(0, Math.round(now - unix));
  return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : when(unix);
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (options.method && options.method !== "GET") {
    headers["X-CSRF-Token"] = session.csrf;
    headers["Content-Type"] = "application/json";
  }
  const reply = await fetch(path, { ...options, headers, credentials: "same-origin" });
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new Error(body.detail || `${reply.status} ${reply.statusText}`);
  return body;
}

let listedRuns = "";
function renderOverview(data) {
  // Re-draw the run list only when it changed, and keep keyboard focus on the same run:
  // a list rebuilt every second would throw a keyboard user back to the top.
  const listed = JSON.stringify(data.runs.map((r) => [r.run_id, r.name, r.state, r.current_round, r.rounds]));
  if (listed !== listedRuns) {
    listedRuns = listed;
    const list = $("run-list");
    const focusedRun = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.run : undefined;
    list.replaceChildren();
    for (const run of data.runs) {
      const button = el("button", { type: "button", "data-run": run.run_id,
        "aria-current": String(run.run_id === selected) },
        run.name || run.run_id.slice(0, 8),
        el("span", { class: `state state-${run.state}` },
          `${run.state} · round ${run.current_round}/${run.rounds}`));
      button.addEventListener("click", () => selectRun(run.run_id));
      list.append(el("li", {}, button));
      if (run.run_id === focusedRun) button.focus();
    }
  }
  if (!selected && data.runs.length) selectRun(data.runs[0].run_id);
  const sites = $("sites").tBodies[0];
  sites.replaceChildren();
  for (const node of data.nodes) {
    siteOf[node.node_id] = node.site_name;
    const print = node.x25519_fingerprint || "";
    const cell = el("td", { class: "mono" }, print ? print.slice(0, 16) + "…" : "—");
    cell.title = print;
    sites.append(el("tr", {},
      el("td", { class: "name" }, node.site_name),
      el("td", { class: node.online ? "ok" : "bad" }, node.online ? "online" : "offline"),
      el("td", { class: "num" }, ago(node.last_seen_unix, data.now)), cell));
  }
  const counters = $("counters");
  counters.replaceChildren();
  for (const [key, value] of Object.entries(data.metrics)) {
    if (key.startsWith("cohort_")) continue;  // the same numbers under Prometheus names
    counters.append(el("dt", {}, key.replaceAll("_", " ")), el("dd", { class: "num" }, fmt(value)));
  }
  refreshAudit();
}

function selectRun(runId) {
  selected = runId;
  for (const b of document.querySelectorAll("[data-run]")) {
    b.setAttribute("aria-current", String(b.dataset.run === runId));
  }
  if (runStream) runStream.close();
  runStream = new EventSource(`/api/runs/${encodeURIComponent(runId)}/events`);
  runStream.addEventListener("snapshot", (e) => renderRun(JSON.parse(e.data)));
  runStream.addEventListener("error", (e) => {
    if (e.data) $("action-status").textContent = JSON.parse(e.data).detail;
  });
  for (const fmtName of ["html", "pdf", "json"]) {
    $(`rep-${fmtName}`).href = `/api/runs/${encodeURIComponent(runId)}/report.${fmtName}`;
  }
}

const KNOWN = new Set(["run_id", "name", "state", "model", "rounds", "current_round",
  "min_clients", "secure", "strategy", "config", "created_unix", "started_unix", "ended_unix",
  "failure_reason", "key_fingerprint", "custodian", "round_infos", "final_model_sha256",
  "audits_received", "waiting_for", "refusals", "site_results"]);

function facts(target, pairs) {
  target.replaceChildren();
  for (const [key, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    target.append(el("dt", {}, key), el("dd", {}, typeof value === "object"
      ? JSON.stringify(value) : value));
  }
}

// The per-round figures worth a column: model quality first; timings and counts stay in
// the report's appendix (and in each row's tooltip).
function pickMetrics(rounds) {
  const names = [...new Set(rounds.flatMap((r) => Object.keys(r.metrics || {})))]
    .filter((n) => !/(_seconds|examples)$/.test(n));
  const rank = (n) => (n.startsWith("eval_") ? 0 : n.startsWith("train_") ? 1 : 2);
  return names.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b)).slice(0, 3);
}

function renderRun(run) {
  $("run-h").textContent = `Run ${run.name || run.run_id}`;
  $("run-body").hidden = false;
  facts($("run-facts"), [
    ["State", run.state + (run.failure_reason ? ` — ${run.failure_reason}` : "")],
    ["Round", `${run.current_round} of ${run.rounds}`],
    ["Waiting for", run.waiting_for],
    ["Model", `${run.model} · ${run.strategy} · ${run.secure === "paillier" ? "Paillier" : "plaintext"}`],
    ["Run id", run.run_id],
    ["Started", when(run.started_unix)],
    ["Ended", run.ended_unix ? when(run.ended_unix) : ""],
    ["Audits in", run.audits_received],
  ]);
  const ended = ["completed", "failed", "stopped"].includes(run.state);
  const stop = $("stop");  // absent from an auditor's page
  if (stop) stop.hidden = session.role !== "admin" || ended;
  const rounds = run.round_infos || [];
  const shown = pickMetrics(rounds);
  const head = $("rounds").tHead.rows[0];
  head.replaceChildren(...["Round", "State", "Selected", "Submitted", "Refused", "Late",
    "Seconds", ...shown.map((n) => n.replace(/^eval_/, "").replaceAll("_", " "))]
    .map((t) => el("th", { scope: "col" }, t)));
  const refusedIn = {};
  for (const r of run.refusals || []) refusedIn[r.round] = (refusedIn[r.round] || 0) + 1;
  const body = $("rounds").tBodies[0];
  body.replaceChildren();
  for (const r of rounds) {
    const submitted = r.submitted || 0, chosen = r.selected || 0, refused = refusedIn[r.number] || 0;
    // Late: selected, neither submitted nor refused by the time the round closed.
    const late = r.state === "closed" ? Math.max(0, chosen - submitted - refused) : 0;
    const seconds = r.closed_unix ? r.closed_unix - r.opened_unix : null;
    const row = el("tr", { "data-round": r.number },
      el("td", { class: "num" }, r.number), el("td", {}, r.state),
      el("td", { class: "num" }, chosen), el("td", { class: "num" }, submitted),
      el("td", { class: "num" }, refused), el("td", { class: "num" }, late),
      el("td", { class: "num" }, seconds === null ? "—" : fmt(seconds)),
      ...shown.map((n) => el("td", { class: "num" }, n in (r.metrics || {}) ? fmt(r.metrics[n]) : "—")));
    row.title = Object.entries(r.metrics || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
    body.append(row);
  }
  drawChart(rounds, shown);
  const refusals = $("refusals");
  refusals.replaceChildren();
  // One line per site, code and reason, listing the rounds it applied to.
  const grouped = new Map();
  for (const r of run.refusals || []) {
    const key = JSON.stringify([r.site_name, r.code, r.reason]);
    if (!grouped.has(key)) grouped.set(key, { ...r, rounds: [] });
    grouped.get(key).rounds.push(r.round);
  }
  for (const r of grouped.values()) {
    const which = r.rounds.length === 1 ? `round ${r.rounds[0]}` : `rounds ${r.rounds.join(", ")}`;
    refusals.append(el("li", { class: "refusal" },
      el("span", { class: "name" }, r.site_name), ` refused ${which}: `,
      el("span", { class: "code" }, r.code), ` — ${r.reason}`));
  }
  if (!refusals.children.length) refusals.append(el("li", {}, "none"));
  const results = $("site-results");
  results.replaceChildren();
  for (const s of run.site_results || []) {
    const held = Object.entries(s.holdout_metrics || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
    results.append(el("li", {}, el("span", { class: "name" }, s.site_name),
      `: audit ${s.audit}${held ? " · held-out " + held : ""}`));
  }
  if (!results.children.length) results.append(el("li", {}, "none yet"));
  facts($("custody"), [
    ["Aggregation", run.secure === "paillier" ? "Paillier (the coordinator holds no key)" : "plaintext"],
    ["Key custodian", run.custodian || (run.secure === "paillier" ? "first site selected" : "")],
    ["Key fingerprint", run.key_fingerprint],
    ["Final model sha256", run.final_model_sha256],
  ]);
  // Fields the dashboard does not know yet (privacy budgets, threshold custody, …): shown as sent.
  const extra = Object.entries(run).filter(([k]) => !KNOWN.has(k));
  $("privacy-wrap").hidden = !extra.length;
  facts($("privacy"), extra.map(([k, v]) => [k.replaceAll("_", " "), v]));
}

function drawChart(rounds, names) {
  const figure = $("chart");
  const closed = rounds.filter((r) => r.metrics && Object.keys(r.metrics).length);
  figure.replaceChildren();
  if (!closed.length || !names.length) {
    figure.append(el("p", {}, "No round has closed with metrics yet."));
    return;
  }
  const W = 340, H = 170, L = 50, B = 20, T = 8, R = 10;
  const xs = closed.map((r) => r.number);
  const values = closed.flatMap((r) => names.map((n) => r.metrics[n]).filter((v) => v !== undefined));
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (n) => L + (xs.length === 1 ? (W - L - R) / 2 : ((n - xs[0]) / (xs[xs.length - 1] - xs[0])) * (W - L - R));
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", "100%");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `Metrics per round: ${names.join(", ")} over rounds ${xs.join(", ")}`);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" });
  for (const v of [lo, (lo + hi) / 2, hi]) add("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" }, fmt(v));
  for (const n of xs) add("text", { x: x(n), y: H - 6, "text-anchor": "middle" }, n);
  const legend = el("p", { class: "legend" });
  names.forEach((name, i) => {
    const points = closed.filter((r) => r.metrics[name] !== undefined)
      .map((r) => `${x(r.number)},${y(r.metrics[name])}`);
    add("polyline", { points: points.join(" "), fill: "none", stroke: COLOURS[i], "stroke-width": 2 });
    for (const p of points) {
      const [cx, cy] = p.split(",");
      add("circle", { cx, cy, r: 3, fill: COLOURS[i] });
    }
    const key = el("span", {}, name);
    key.style.color = COLOURS[i];  // CSSOM, allowed by the page's CSP (no inline style)
    legend.append(key);
  });
  figure.append(svg, legend);
}

let auditBusy = false;
async function refreshAudit() {
  if (auditBusy) return;
  auditBusy = true;
  try {
    const log = await api("/api/audit");
    const state = $("audit-state");
    state.className = log.verified ? "ok" : "bad";
    state.textContent = log.verified
      ? `chain verified here: ${log.rows} rows, head ${log.head_hash.slice(0, 16)}…`
      : `chain BROKEN at row ${log.first_bad_row}: ${log.reason}`;
    const body = $("audit").tBodies[0];
    body.replaceChildren();
    for (const row of log.recent) {
      const actor = siteOf[row.actor] || row.actor || "—";
      const tr = el("tr", {}, el("td", { class: "num" }, row.seq), el("td", {}, row.kind),
        el("td", { class: "name" }, actor.length > 14 ? actor.slice(0, 12) + "…" : actor),
        el("td", { class: "num" }, when(row.time_unix).slice(11, 19)));
      tr.title = row.details;
      body.append(tr);
    }
  } catch (error) {
    $("audit-state").textContent = `audit log: ${error.message}`;
  } finally {
    auditBusy = false;
  }
}

async function start() {
  session = await api("/api/session");
  $("who").textContent = `${session.operator || "operator"} (${session.role || "unknown role"})`;
  for (const node of document.querySelectorAll(".admin-only")) {
    if (session.role !== "admin") node.remove();   // not merely hidden: absent for auditors
    else if (node.id !== "stop") node.hidden = false;
  }
  const stream = new EventSource("/api/events");
  stream.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "badge on"; });
  stream.addEventListener("snapshot", (e) => renderOverview(JSON.parse(e.data)));
  stream.addEventListener("error", () => { $("live").textContent = "reconnecting"; $("live").className = "badge"; });
  const form = $("start-form");
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const data = Object.fromEntries(new FormData(form));
      for (const key of ["rounds", "min_clients"]) data[key] = Number(data[key]);
      if (!data.name) delete data.name;
      try {
        const run = await api("/api/runs", { method: "POST", body: JSON.stringify(data) });
        $("start-status").textContent = `started ${run.run_id}`;
        selectRun(run.run_id);
      } catch (error) {
        $("start-status").textContent = error.message;
      }
    });
  }
  const stop = $("stop");
  if (stop) {
    stop.addEventListener("click", async () => {
      if (!selected || !confirm("Stop this run? Sites stop training for it.")) return;
      try {
        await api(`/api/runs/${encodeURIComponent(selected)}/stop`, { method: "POST", body: "{}" });
        $("action-status").textContent = "stopped";
      } catch (error) {
        $("action-status").textContent = error.message;
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  start().catch((error) => { $("who").textContent = error.message; });
});
