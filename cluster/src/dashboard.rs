//! The dashboard's job page (`GET /jobs/{id}`): one page with a small inline script and no
//! outside resources. The coordinator embeds the job's view and history as JSON, so the page is
//! complete at load; the script draws it (the steps as a graph, charts as inline SVG) and then
//! reads `GET /api/jobs/{id}` and `/history` every 2 s. The cancel and savepoint buttons POST to
//! the same API the CLI uses.
//!
//! Where it is weak: the steps are drawn in the order the job builds them, as a chain (the
//! metrics carry no edges). With a `--token-file` the browser signs in at `/login` and holds a
//! session cookie (see `authenticate` in the coordinator).

/// The page of job `id`, with `view` (its `GET /api/jobs/{id}` JSON) and `history` (its
/// `/history` JSON) embedded.
pub fn job_page(id: &str, view: &str, history: &str) -> String {
    PAGE.replace("{{ID}}", &crate::coordinator::html(id))
        .replace("{{VIEW}}", &script_safe(view))
        .replace("{{HISTORY}}", &script_safe(history))
        .replace("{{SCRIPT}}", SCRIPT)
}

/// JSON made safe inside a `<script>` element (it cannot close it).
fn script_safe(json: &str) -> String {
    json.replace("</", "<\\/").replace("<!--", "<\\!--")
}

const PAGE: &str = r##"<!doctype html><html><head><meta charset="utf-8"><title>{{ID}} - paystream</title>
<link rel="icon" href="data:,">
<style>
body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:1em}.chart{border:1px solid #ccc;padding:4px}
.chart h3{margin:0;font-size:0.9em;font-weight:normal}
button{margin-right:0.5em}
</style></head><body>
<p><a href="/">all jobs</a></p>
<h1 id="title">{{ID}}</h1>
<p>State <b id="state"></b>, attempt <span id="attempt"></span>, <span id="restarts"></span> restarts, up <span id="uptime"></span>.
<span id="error"></span></p>
<p><button id="savepoint">Savepoint</button><button id="cancel">Cancel</button><span id="action"></span></p>
<h2>Steps</h2>
<svg id="graph" width="100%" height="90"></svg>
<table id="steps"><thead><tr><th>step</th><th>records in</th><th>in/s</th><th>records out</th><th>out/s</th></tr></thead><tbody></tbody></table>
<table><tr><th>events read</th><td class="n" id="events-read"></td><th>events/s</th><td class="n" id="events-per-second"></td></tr>
<tr><th>watermark lag</th><td class="n" id="watermark-lag"></td><th>backpressure pauses/s</th><td class="n" id="backpressure"></td></tr>
<tr><th>latency p50</th><td class="n" id="latency-p50"></td><th>latency p99</th><td class="n" id="latency-p99"></td></tr></table>
<div class="charts">
<div class="chart"><h3>events read per second</h3><svg id="chart-throughput" width="360" height="120"></svg></div>
<div class="chart"><h3>watermark lag (ms)</h3><svg id="chart-lag" width="360" height="120"></svg></div>
<div class="chart"><h3>result latency p99 (ms)</h3><svg id="chart-latency" width="360" height="120"></svg></div>
</div>
<h2>Checkpoints</h2>
<table><tr><th>completed</th><td class="n" id="cp-completed"></td><th>failures</th><td class="n" id="cp-failures"></td></tr>
<tr><th>last epoch</th><td class="n" id="cp-epoch"></td><th>last duration</th><td class="n" id="cp-duration"></td></tr>
<tr><th>last size</th><td class="n" id="cp-size"></td><th>last complete</th><td id="cp-last"></td></tr></table>
<h2>Restarts and transitions</h2>
<table id="transitions"><thead><tr><th>at</th><th>from</th><th>to</th><th>cause</th></tr></thead><tbody></tbody></table>
<p>Metrics endpoints: <span id="endpoints"></span> <span id="scrape-errors"></span></p>
<script type="application/json" id="initial-view">{{VIEW}}</script>
<script type="application/json" id="initial-history">{{HISTORY}}</script>
<script>{{SCRIPT}}</script>
</body></html>
"##;

const SCRIPT: &str = r##"
"use strict";
const jobId = document.getElementById("title").textContent;
const SVG = "http://www.w3.org/2000/svg";
let renders = 0;
function text(id, value) { document.getElementById(id).textContent = value; }
function number(n) { return n === null || n === undefined ? "-" : Math.round(n).toLocaleString("en"); }
function ms(n) { return n === null || n === undefined ? "-" : (n < 10 ? n.toFixed(2) : Math.round(n).toLocaleString("en")) + " ms"; }
function svgElement(name, attributes) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) e.setAttribute(k, v);
  return e;
}
function row(cells) {
  const tr = document.createElement("tr");
  for (const [value, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = value;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  return tr;
}
function drawGraph(steps) {
  const svg = document.getElementById("graph");
  svg.replaceChildren();
  const width = 170, gap = 40;
  svg.setAttribute("viewBox", "0 0 " + Math.max(1, steps.length * (width + gap)) + " 90");
  steps.forEach((s, i) => {
    const x = i * (width + gap);
    const g = svgElement("g", { "class": "step", "data-step": s.step });
    g.appendChild(svgElement("rect", { x: x, y: 5, width: width, height: 78, rx: 6, fill: "#eef4fb", stroke: "#4a78a8" }));
    const lines = [s.step, "in " + number(s.records_in) + " (" + number(s.records_in_per_second) + "/s)",
                   "out " + number(s.records_out) + " (" + number(s.records_out_per_second) + "/s)"];
    lines.forEach((l, j) => {
      const t = svgElement("text", { x: x + 8, y: 26 + j * 22, "font-size": 13, "font-weight": j === 0 ? "bold" : "normal" });
      t.textContent = l;
      g.appendChild(t);
    });
    svg.appendChild(g);
    if (i + 1 < steps.length) {
      svg.appendChild(svgElement("line", { x1: x + width, y1: 44, x2: x + width + gap - 6, y2: 44, stroke: "#4a78a8", "stroke-width": 2 }));
      svg.appendChild(svgElement("polygon", { points: (x + width + gap - 6) + ",39 " + (x + width + gap) + ",44 " + (x + width + gap - 6) + ",49", fill: "#4a78a8" }));
    }
  });
}
function drawChart(id, history, field) {
  const svg = document.getElementById(id);
  svg.replaceChildren();
  const w = 360, h = 120, pad = 4;
  const points = history.filter(p => p[field] !== null && p[field] !== undefined);
  svg.appendChild(svgElement("rect", { x: 0, y: 0, width: w, height: h, fill: "#fafafa" }));
  if (points.length === 0) {
    const t = svgElement("text", { x: 10, y: 60, "font-size": 12, fill: "#888" });
    t.textContent = "no data yet";
    svg.appendChild(t);
    return;
  }
  const t0 = points[0].at_ms, t1 = Math.max(points[points.length - 1].at_ms, t0 + 1);
  const top = Math.max(1, ...points.map(p => p[field]));
  const xy = points.map(p => [pad + (w - 2 * pad) * (p.at_ms - t0) / (t1 - t0), h - pad - (h - 2 * pad - 14) * p[field] / top]);
  svg.appendChild(svgElement("polyline", { points: xy.map(p => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "), fill: "none", stroke: "#c0392b", "stroke-width": 1.5, "class": "series" }));
  const label = svgElement("text", { x: 6, y: 12, "font-size": 11, fill: "#555" });
  label.textContent = "max " + number(top) + ", last " + number(points[points.length - 1][field]) + " (" + Math.round((t1 - t0) / 1000) + " s)";
  svg.appendChild(label);
}
function render(view, history) {
  renders += 1;
  document.body.dataset.renders = renders;
  text("state", view.state);
  text("attempt", view.attempt);
  text("restarts", view.restarts);
  text("uptime", view.uptime_ms === null || view.uptime_ms === undefined ? "-" : Math.round(view.uptime_ms / 1000) + " s");
  text("error", view.last_error ? "Last error: " + view.last_error : "");
  const m = view.metrics || { steps: [], endpoints: [] };
  drawGraph(m.steps);
  const body = document.querySelector("#steps tbody");
  body.replaceChildren(...m.steps.map(s => {
    const tr = row([[s.step], [number(s.records_in), "n records-in"], [number(s.records_in_per_second), "n"],
                    [number(s.records_out), "n records-out"], [number(s.records_out_per_second), "n"]]);
    tr.dataset.step = s.step;
    tr.dataset.recordsIn = s.records_in;
    tr.dataset.recordsOut = s.records_out;
    return tr;
  }));
  text("events-read", number(m.events_read));
  document.getElementById("events-read").dataset.value = m.events_read === undefined ? "" : m.events_read;
  text("events-per-second", number(m.events_per_second));
  text("watermark-lag", ms(m.watermark_lag_ms));
  text("backpressure", number(m.backpressure_waits_per_second));
  text("latency-p50", ms(m.latency_p50_ms));
  text("latency-p99", ms(m.latency_p99_ms));
  const c = m.checkpoints || {};
  text("cp-completed", number(c.completed));
  text("cp-failures", number(c.failures));
  text("cp-epoch", number(c.last_completed_epoch));
  text("cp-duration", ms(c.last_duration_ms));
  text("cp-size", c.last_size_bytes === undefined || c.last_size_bytes === null ? "-" : number(c.last_size_bytes) + " bytes");
  text("cp-last", view.last_checkpoint || "-");
  drawChart("chart-throughput", history, "events_per_second");
  drawChart("chart-lag", history, "watermark_lag_ms");
  drawChart("chart-latency", history, "latency_p99_ms");
  const transitions = document.querySelector("#transitions tbody");
  transitions.replaceChildren(...view.history.slice().reverse().map(t =>
    row([[new Date(t.at_ms).toISOString().replace("T", " ").slice(0, 19)], [t.from], [t.to], [t.cause]])));
  text("endpoints", m.endpoints.length ? m.endpoints.join(", ") : "none read yet");
  text("scrape-errors", m.scrape_errors && m.scrape_errors.length ? "(unread: " + m.scrape_errors.join("; ") + ")" : "");
  const live = !["cancelled", "finished", "failed"].includes(view.state);
  document.getElementById("cancel").disabled = !live;
  document.getElementById("savepoint").disabled = view.state !== "running" || !view.spec.checkpoint_dir;
}
async function refresh() {
  try {
    const [view, history] = await Promise.all([
      fetch("/api/jobs/" + jobId).then(r => r.json()),
      fetch("/api/jobs/" + jobId + "/history").then(r => r.json())]);
    render(view, history);
  } catch (e) {
    text("action", "cannot reach the coordinator: " + e);
  }
}
async function post(what, question) {
  if (!window.confirm(question)) return;
  text("action", what + "...");
  try {
    const answer = await fetch("/api/jobs/" + jobId + "/" + what, { method: "POST" });
    const body = await answer.json();
    text("action", answer.ok ? what + ": " + (body.savepoint || body.state) : what + " failed: " + body.error);
  } catch (e) {
    text("action", what + " failed: " + e);
  }
  refresh();
}
document.getElementById("cancel").addEventListener("click", () => post("cancel", "Cancel job " + jobId + "?"));
document.getElementById("savepoint").addEventListener("click", () => post("savepoint", "Take a savepoint of job " + jobId + "?"));
render(JSON.parse(document.getElementById("initial-view").textContent),
       JSON.parse(document.getElementById("initial-history").textContent));
setInterval(refresh, 2000);
"##;
