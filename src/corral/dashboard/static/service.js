// One service: instances (live), releases and rollout progress, latency and TOP endpoints,
// events (live), and what changed drawn on the charts' time axis. Charts sit beside tables
// that carry the same numbers.
import {
  api, el, fmtUs, fmtPct, fmtTime, followEvents, coalesce, localizeTimes, loadUPlot, status,
  markersPlugin, readChanges, chartTable,
} from "./common.js";

const name = document.querySelector("h1[data-service]").dataset.service;
const q = encodeURIComponent(name);

function instanceRow(i) {
  return el("tr", { "data-instance": i.id },
    el("th", { scope: "row" }, i.id),
    el("td", {}, el("span", { class: `badge phase-${i.phase}`, "data-phase": i.phase }, i.phase),
      el("span", { class: "reason" }, i.reason || "")),
    el("td", {}, i.node || ""), el("td", { class: "num" }, i.port ?? "—"),
    el("td", { class: "num" }, i.pid ?? "—"), el("td", { class: "num" }, `v${i.release}`),
    el("td", { class: "num" }, i.restarts ?? 0), el("td", {}, i.last_exit || ""));
}

async function instances() {
  const [service, items] = await Promise.all([api(`/services/${q}`), api("/instances", { service: name })]);
  const tbody = document.querySelector("#instances tbody");
  tbody.replaceChildren(...(items.length ? items.sort((a, b) => a.id.localeCompare(b.id)).map(instanceRow)
    : [el("tr", {}, el("td", { colspan: 8 }, "No instances"))]));
  const h1 = document.querySelector("h1[data-service] .badge");
  h1.className = `badge state-${service.state}`;
  h1.dataset.state = service.state;
  h1.textContent = service.state;
  document.querySelector("[data-ready]").textContent = `${service.ready}/${service.desired}`;
}

async function releases() {
  const box = document.getElementById("rollout");
  try {
    const r = await api(`/services/${q}/rollout`);
    const progress = el("progress", { max: Math.max(1, r.desired), value: Math.min(r.current.length, r.desired),
      "aria-label": "instances on the current release" });
    box.replaceChildren(
      el("p", { "data-rollout": r.state },
        `${r.kind} v${r.from_release} → v${r.to_release}: ${r.state}${r.step && r.step !== r.state ? " (" + r.step + ")" : ""} `,
        progress, ` ${r.current.length} of ${r.desired} instances current`,
        r.outdated.length ? `, ${r.outdated.length} outdated` : "", r.reason ? ` — ${r.reason}` : ""));
  } catch (error) {
    box.textContent = error.status === 404 ? "No rollout yet." : `Rollout unavailable: ${error.message}`;
  }
  try {
    const rows = await api(`/services/${q}/releases`);
    document.querySelector("#releases tbody").replaceChildren(...rows.reverse().map((r) =>
      el("tr", { "data-release": r.release },
        el("th", { scope: "row" }, `v${r.release}${r.current ? " (current)" : ""}`),
        el("td", {}, r.version ?? ""), el("td", {}, fmtTime(r.created_at)),
        el("td", {}, r.changes || ""), el("td", {}, r.outcome || ""), el("td", {}, r.message || ""))));
  } catch (error) {
    document.querySelector("#releases tbody").replaceChildren(
      el("tr", {}, el("td", { colspan: 6 }, `Releases unavailable: ${error.message}`)));
  }
}

function endpointRows(rows) {
  return rows.map((r) => el("tr", {},
    el("th", { scope: "row" }, r.endpoint), el("td", { class: "num" }, r.calls),
    el("td", { class: "num" }, `${r.errors} (${fmtPct(r.calls ? r.errors / r.calls : 0)})`),
    el("td", { class: "num" }, fmtUs(r.avg_us)), el("td", { class: "num" }, fmtUs(r.p95_us))));
}

// A service that sends no spans of its own (no instrumentation yet) is still seen by the
// gateway: its routes' edge spans carry the latency and errors of requests to it.
async function gatewayEndpoints() {
  const view = await api("/gateway/config").catch(() => null);
  const config = view && view.config;
  if (!config) return null;
  const routes = new Set((config.routes || []).filter((r) => r.service === name).map((r) => r.name));
  if (!routes.size) return null;
  const gateway = ((config.telemetry && config.telemetry.service_name) || "corral-gateway").toLowerCase();
  const rows = await api("/telemetry/top", { service: gateway, group: "endpoint", by: "calls", n: 100, minutes: 60 });
  const mine = rows.filter((r) => routes.has(r.endpoint.split(" ").slice(1).join(" ")));
  return mine.length ? { service: gateway, rows: mine } : null;
}

async function endpoints() {
  const tbody = document.querySelector("#endpoints tbody");
  const source = document.getElementById("latency-source");
  let rows;
  let service = name;
  try {
    rows = await api("/telemetry/top", { service: name, group: "endpoint", by: "calls", n: 10, minutes: 60 });
    if (!rows.length) {
      const seen = await gatewayEndpoints();
      if (seen) {
        ({ service, rows } = seen);
        source.textContent = `${name} sends no spans of its own: these are its gateway routes, measured at the gateway.`;
      }
    }
  } catch (error) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 5 }, `Telemetry unavailable: ${error.message}`)));
    return;
  }
  tbody.replaceChildren(...(rows.length ? endpointRows(rows)
    : [el("tr", {}, el("td", { colspan: 5 }, "No traced requests in the last hour."))]));
  if (rows.length) await latency(service, rows[0].endpoint);
}

const charts = [];
const HOUR_S = 3600;

function markers() {
  return markersPlugin(() => readChanges(document.getElementById("changes")), (n) => {
    document.body.dataset.markers = String(n);
  });
}

async function latency(service, endpoint) {
  const box = document.getElementById("latency-chart");
  const errorsBox = document.getElementById("errors-chart");
  const data = await api("/telemetry/latency", { service, endpoint, minutes: 60 }).catch(() => null);
  if (!data || !data.series.length) return;
  const xs = data.series.map((p) => p.start_us / 1e6);
  const ms = (key) => data.series.map((p) => p[key] / 1000);
  const table = chartTable("Latency and errors per minute as a table",
    `Latency of ${endpoint} per minute (the charts above as a table)`,
    ["Minute", "Calls", "Errors", "p50", "p90", "p99"],
    data.series.map((p) => [new Date(p.start_us / 1000).toLocaleTimeString(), p.calls, p.errors,
      fmtUs(p.p50_us), fmtUs(p.p90_us), fmtUs(p.p99_us)]));
  box.replaceChildren(el("h3", {}, `Latency of ${endpoint} (ms)`));
  errorsBox.replaceChildren(el("h3", {}, `Requests and errors per minute of ${endpoint}`));
  errorsBox.after(table);
  const uPlot = await loadUPlot();
  if (!uPlot) return;
  // Both charts span the same last hour as the "what changed" list, so markers line up.
  const now = Date.now() / 1000;
  const x = { time: true, range: () => [now - HOUR_S, now] };
  const width = Math.min(1100, box.clientWidth || 900);
  charts.push(new uPlot({
    width, height: 200, plugins: [markers()], scales: { x },
    series: [{}, { label: "p50", stroke: "#0550ae" }, { label: "p90", stroke: "#bf5700" },
      { label: "p99", stroke: "#a40e26", dash: [6, 4] }],
    axes: [{}, { label: "ms" }],
  }, [xs, ms("p50_us"), ms("p90_us"), ms("p99_us")], box));
  charts.push(new uPlot({
    width, height: 140, plugins: [markersPlugin(() => readChanges(document.getElementById("changes")))],
    scales: { x },
    series: [{}, { label: "requests", stroke: "#0550ae" }, { label: "errors", stroke: "#a40e26", width: 2 }],
    axes: [{}, { label: "per minute" }],
  }, [xs, data.series.map((p) => p.calls), data.series.map((p) => p.errors)], errorsBox));
}

// The change list follows the event log: re-read it (classified by the server, the one place
// that knows which events are changes) and redraw the markers.
async function changes() {
  const list = document.getElementById("changes");
  const items = await fetch(`/services/${q}/changes`, { credentials: "same-origin" }).then((r) => r.json());
  list.replaceChildren(...(items.length ? items.map((c) => el("li", { "data-at-s": c.at.toFixed(3), "data-kind": c.kind },
    el("span", { class: "num" }, fmtTime(c.at)), " ",
    el("span", { class: `mark mark-${c.kind}` }, KIND_WORDS[c.kind] || c.kind), ` ${c.subject}: ${c.reason}`))
    : [el("li", { class: "muted", "data-empty": "" }, "No changes in the last hour.")]));
  charts.forEach((chart) => chart.redraw(false));
}

const KIND_WORDS = Object.fromEntries([...document.querySelectorAll("#h-changes ~ p .mark")]
  .map((m) => [m.className.replace(/.*mark-/, ""), m.textContent]));

function addEvent(e) {
  const tbody = document.querySelector("#events tbody");
  tbody.prepend(el("tr", {}, el("td", { class: "num" }, fmtTime(e.at)), el("td", {}, e.subject),
    el("td", {}, `${e.from || ""}${e.to ? " → " + e.to : ""}`), el("td", {}, e.reason)));
}

localizeTimes();
const refresh = coalesce(async (batch) => {
  batch.forEach(addEvent);
  try {
    await Promise.all([instances(), releases(), changes()]);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (error) {
    status("live", `Could not refresh: ${error.message}`, true);
  }
}, 30);
followEvents(refresh, { service: name });
releases();
endpoints();
