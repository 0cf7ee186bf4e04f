// Overview: every service, live. The server rendered the table; each lifecycle event makes
// this module re-read /services and /instances and update the rows in place (so telemetry
// cells and sparklines stay). body[data-updates] counts applied updates and
// body[data-last-latency-ms] (and -max-) is an event's delay from being recorded in the Store
// to being on screen.
import { api, el, fmtUs, fmtPct, fmtNum, followEvents, coalesce, sparkline, status } from "./common.js";

const PHASES = ["provision", "ready", "run", "destroy", "failed"];
const tbody = document.querySelector("#services tbody");

function chips(counts) {
  const order = PHASES.filter((p) => counts[p]).concat(
    Object.keys(counts).filter((p) => !PHASES.includes(p)).sort());
  if (!order.length) return [el("span", { class: "muted" }, "none")];
  const out = [];
  order.forEach((p, i) => {
    if (i) out.push(" ");
    out.push(el("span", { class: `chip phase-${p}`, "data-phase": p, "data-count": counts[p] }, `${p} ${counts[p]}`));
  });
  return out;
}

function badge(state) {
  return el("span", { class: `badge state-${state}`, "data-state": state }, state);
}

function newRow(name) {
  const link = el("a", { href: `/services/${encodeURIComponent(name)}` }, name);
  return el("tr", { "data-service": name },
    el("th", { scope: "row" }, link), el("td"), el("td", { class: "num", "data-ready": "" }),
    el("td", { "data-phases": "" }), el("td", { class: "num" }),
    el("td", { class: "num", "data-metric": "rate" }, "—"),
    el("td", { class: "num", "data-metric": "errors" }, "—"),
    el("td", { class: "num", "data-metric": "p95" }, "—"),
    el("td", { class: "spark", "data-metric": "trend" }));
}

function update(services, instances) {
  const byService = {};
  for (const i of instances) (byService[i.service] ||= {})[i.phase] = ((byService[i.service] || {})[i.phase] || 0) + 1;
  const seen = new Set();
  let previous = null;
  for (const s of services) {
    seen.add(s.name);
    let row = tbody.querySelector(`tr[data-service="${CSS.escape(s.name)}"]`);
    if (!row) {
      row = newRow(s.name);
      tbody.querySelector("td[colspan]")?.parentElement.remove();
      if (previous) previous.after(row); else tbody.prepend(row);
    }
    previous = row;
    const cells = row.children;
    cells[1].replaceChildren(badge(s.state), el("span", { class: "reason" }, s.reason || ""));
    cells[2].textContent = `${s.ready}/${s.desired}`;
    cells[3].replaceChildren(...chips(byService[s.name] || {}));
    cells[4].textContent = `v${s.release}${s.version ? " · " + s.version : ""}`;
  }
  for (const row of [...tbody.querySelectorAll("tr[data-service]")]) {
    if (!seen.has(row.dataset.service)) row.remove();
  }
}

async function refresh(batch) {
  try {
    const [services, instances] = await Promise.all([api("/services"), api("/instances")]);
    update(services, instances);
    const now = Date.now();
    const latest = Math.max(...batch.filter((e) => e && e.at).map((e) => e.at * 1000), 0);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    if (latest) {
      const delay = Math.max(0, now - latest);
      document.body.dataset.lastLatencyMs = String(delay);
      document.body.dataset.maxLatencyMs = String(Math.max(delay, Number(document.body.dataset.maxLatencyMs || 0)));
    }
  } catch (error) {
    status("live", `Could not refresh: ${error.message}`, true);
  }
}

const MINUTE_US = 60e6;

async function telemetry() {
  const note = document.getElementById("telemetry-note");
  try {
    const rows = await api("/telemetry/top", { group: "service", by: "calls", n: 1000, minutes: 5 });
    const byService = Object.fromEntries(rows.map((r) => [r.service, r]));
    for (const row of tbody.querySelectorAll("tr[data-service]")) {
      const r = byService[row.dataset.service];
      row.querySelector('[data-metric="rate"]').textContent = r ? fmtNum(r.calls / 5) : "—";
      row.querySelector('[data-metric="errors"]').textContent = r ? fmtPct(r.calls ? r.errors / r.calls : 0) : "—";
      row.querySelector('[data-metric="p95"]').textContent = r ? fmtUs(r.p95_us) : "—";
    }
    note.textContent = rows.length ? "" : "No requests traced in the last 5 minutes.";
  } catch (error) {
    note.textContent = `Telemetry unavailable: ${error.message}`;
    return;
  }
  trends().catch(() => {});
}

// Requests per minute over the last 15 minutes, one TOP query per minute.
async function trends() {
  const end = Math.floor(Date.now() / 60000) * MINUTE_US;
  const minutes = [...Array(15).keys()].map((i) => end - (14 - i) * MINUTE_US);
  const results = await Promise.all(minutes.map((start) =>
    api("/telemetry/top", { group: "service", by: "calls", n: 1000, start, end: start + MINUTE_US })
      .catch(() => [])));
  const xs = minutes.map((m, i) => i);
  for (const row of tbody.querySelectorAll("tr[data-service]")) {
    const name = row.dataset.service;
    const ys = results.map((rows) => (rows.find((r) => r.service === name) || { calls: 0 }).calls);
    const cell = row.querySelector('[data-metric="trend"]');
    if (ys.some((y) => y > 0)) sparkline(cell, xs, ys, `${name}: requests per minute, last 15 minutes`);
    else cell.replaceChildren();
  }
}

followEvents(coalesce(refresh, 30));
telemetry();
setInterval(telemetry, 30000);
