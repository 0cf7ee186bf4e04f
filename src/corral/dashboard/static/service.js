// One service: instances (live), releases and rollout progress, latency and TOP endpoints,
// events (live). Charts sit beside tables that carry the same numbers.
import {
  api, el, fmtUs, fmtPct, fmtTime, followEvents, coalesce, localizeTimes, loadUPlot, status,
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

async function endpoints() {
  const tbody = document.querySelector("#endpoints tbody");
  let rows;
  try {
    rows = await api("/telemetry/top", { service: name, group: "endpoint", by: "calls", n: 10, minutes: 60 });
  } catch (error) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 5 }, `Telemetry unavailable: ${error.message}`)));
    return;
  }
  tbody.replaceChildren(...(rows.length ? rows.map((r) => el("tr", {},
    el("th", { scope: "row" }, r.endpoint), el("td", { class: "num" }, r.calls),
    el("td", { class: "num" }, `${r.errors} (${fmtPct(r.calls ? r.errors / r.calls : 0)})`),
    el("td", { class: "num" }, fmtUs(r.avg_us)), el("td", { class: "num" }, fmtUs(r.p95_us))))
    : [el("tr", {}, el("td", { colspan: 5 }, "No traced requests in the last hour."))]));
  if (rows.length) latency(rows[0].endpoint);
}

async function latency(endpoint) {
  const box = document.getElementById("latency-chart");
  const data = await api("/telemetry/latency", { service: name, endpoint, minutes: 60 }).catch(() => null);
  if (!data || !data.series.length) return;
  const xs = data.series.map((p) => p.start_us / 1e6);
  const ms = (key) => data.series.map((p) => p[key] / 1000);
  const table = el("table", { class: "grid" },
    el("caption", {}, `Latency of ${endpoint} per minute (the chart above as a table)`),
    el("thead", {}, el("tr", {}, ["Minute", "Calls", "Errors", "p50", "p90", "p99"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, data.series.map((p) => el("tr", {},
      el("th", { scope: "row" }, new Date(p.start_us / 1000).toLocaleTimeString()),
      el("td", { class: "num" }, p.calls), el("td", { class: "num" }, p.errors),
      el("td", { class: "num" }, fmtUs(p.p50_us)), el("td", { class: "num" }, fmtUs(p.p90_us)),
      el("td", { class: "num" }, fmtUs(p.p99_us))))));
  const details = el("details", {}, el("summary", {}, "Latency per minute as a table"), table);
  box.replaceChildren(el("h3", {}, `Latency of ${endpoint} (ms)`));
  box.after(details);
  const uPlot = await loadUPlot();
  if (!uPlot) return;
  new uPlot({
    width: Math.min(1100, box.clientWidth || 900), height: 220,
    series: [{}, { label: "p50", stroke: "#0550ae" }, { label: "p90", stroke: "#bf5700" },
      { label: "p99", stroke: "#a40e26", dash: [6, 4] }],
    axes: [{}, { label: "ms" }],
  }, [xs, ms("p50_us"), ms("p90_us"), ms("p99_us")], box);
}

function addEvent(e) {
  const tbody = document.querySelector("#events tbody");
  tbody.prepend(el("tr", {}, el("td", { class: "num" }, fmtTime(e.at)), el("td", {}, e.subject),
    el("td", {}, `${e.from || ""}${e.to ? " → " + e.to : ""}`), el("td", {}, e.reason)));
}

localizeTimes();
const refresh = coalesce(async (batch) => {
  batch.forEach(addEvent);
  try {
    await Promise.all([instances(), releases()]);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  } catch (error) {
    status("live", `Could not refresh: ${error.message}`, true);
  }
}, 30);
followEvents(refresh, { service: name });
releases();
endpoints();
