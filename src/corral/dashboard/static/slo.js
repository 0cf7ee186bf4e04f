// SLOs: every objective of every gateway route with its error budget left and burn rates
// (/telemetry/slo), and a burn-down per route: the budget left at thirteen moments across the
// route's window (the same query asked with `end` in the past), charted and tabled.
import { api, el, fmtNum, fmtDuration, status, loadUPlot, chartTable } from "./common.js";

const POINTS = 12;

function objectiveLabel(o) {
  const pct = `${+(o.target * 100).toFixed(3)} %`;
  return o.kind === "latency" ? `latency: ${pct} within ${o.threshold_us / 1000} ms` : `availability ${pct}`;
}

function budgetCell(left) {
  const shown = Math.max(0, Math.min(1, left));
  const word = left < 0 ? "overspent" : left < 0.25 ? "low" : "ok";
  return el("td", { class: `num budget-${word}`, "data-budget": String(left) },
    el("meter", { min: 0, max: 1, low: 0.25, optimum: 1, value: shown, "aria-hidden": "true" }),
    ` ${(left * 100).toFixed(1)} %`);
}

function burnCell(o, window) {
  const burn = o.burn[window];
  return el("td", { class: "num" + (burn >= 6 ? " bad" : ""), "data-burn": window }, burn === undefined ? "—" : burn.toFixed(2));
}

function table(routes) {
  const rows = [];
  for (const r of routes) {
    for (const o of r.objectives) {
      const firing = o.alerts.filter((a) => a.firing).map((a) => a.name);
      rows.push(el("tr", { "data-route": r.route, "data-objective": o.kind },
        el("th", { scope: "row" }, r.route), el("td", {}, objectiveLabel(o)),
        el("td", { class: "num" }, fmtDuration(r.window_s)),
        el("td", { class: "num", "data-requests": String(o.requests) }, String(o.requests)),
        el("td", { class: "num" }, fmtNum(o.bad)), budgetCell(o.budget_left),
        burnCell(o, "5m"), burnCell(o, "1h"), burnCell(o, "6h"),
        el("td", { class: firing.length ? "bad" : "" }, firing.length ? `firing: ${firing.join(", ")}` : "none")));
    }
  }
  document.querySelector("#slo tbody").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: 10 }, "No route declares an SLO: add slo: {availability: 99.9%} to a gateway route."))]));
}

async function burndown(routes) {
  const box = document.getElementById("burndown");
  const now = Date.now() / 1000;
  // Per distinct window, POINTS + 1 moments spread over it; one query per moment answers
  // every route, so the cost is not per route.
  const windows = [...new Set(routes.map((r) => r.window_s))];
  const asked = {};
  await Promise.all(windows.map(async (w) => {
    const moments = [...Array(POINTS + 1).keys()].map((i) => now - w + (i * w) / POINTS);
    const answers = await Promise.all(moments.map((t) =>
      api("/telemetry/slo", { end: Math.round(t * 1e6) }).then((a) => a.routes).catch(() => null)));
    asked[w] = { moments, answers };
  }));
  const uPlot = await loadUPlot();
  const sections = [];
  for (const r of routes) {
    const xs = [];
    const series = r.objectives.map(() => []);
    const { moments, answers } = asked[r.window_s];
    moments.forEach((t, i) => {
      const found = answers[i] && answers[i].find((x) => x.route === r.route);
      if (!found) return;
      xs.push(t);
      found.objectives.forEach((o, j) => { if (series[j]) series[j].push(o.budget_left * 100); });
    });
    const chart = el("div", { class: "chart", "aria-hidden": "true" });
    const labels = r.objectives.map(objectiveLabel);
    const section = el("section", { "data-burndown": r.route },
      el("h3", {}, `${r.route}: budget left over the last ${fmtDuration(r.window_s)}`), chart,
      chartTable(`Budget left of ${r.route} as a table`, `Error budget left of route ${r.route} at each moment`,
        ["When", ...labels], xs.map((t, i) => [new Date(t * 1000).toLocaleString(),
          ...series.map((s) => `${s[i].toFixed(1)} %`)])));
    sections.push(section);
    box.append(section);
    if (uPlot && xs.length > 1) {
      const colours = ["#0550ae", "#bf5700", "#8250df", "#116329"];
      new uPlot({
        width: Math.min(1100, box.clientWidth || 900), height: 180,
        scales: { y: { range: (u, min, max) => [Math.min(0, min), 100] } },
        series: [{}, ...labels.map((label, j) => ({ label, stroke: colours[j % colours.length], width: 2 }))],
        axes: [{}, { label: "% of budget left" }],
      }, [xs, ...series], chart);
    }
  }
  box.replaceChildren(...sections);
  document.body.dataset.burndown = String(sections.length);
}

async function load() {
  let answer;
  try {
    answer = await api("/telemetry/slo");
  } catch (error) {
    status("slo-status", `Telemetry unavailable: ${error.message}`, true);
    return;
  }
  const routes = answer.routes;
  table(routes);
  const firing = routes.filter((r) => r.firing.length).map((r) => r.route);
  status("slo-status", !answer.gateway_config ? "No gateway is configured."
    : `${routes.length} route(s) with objectives; ${firing.length ? "alerts firing on " + firing.join(", ") : "no alert firing"}.`,
    firing.length > 0);
  document.body.dataset.sloRoutes = String(routes.length);
  if (routes.length) await burndown(routes);
}

load();
setInterval(load, 30000);
