// Topology: the dependency map from /telemetry/dependencies, drawn with Cytoscape.js, with
// the same edges in a table. Nodes are services (click or Enter on the table's link opens
// the service) and uninstrumented peers; an edge's colour and label carry its error rate.
import { api, el, fmtUs, fmtPct, loadCytoscape, status } from "./common.js";

const ERROR_COLOURS = [[0.05, "#a40e26"], [0.01, "#bf5700"], [0, "#116329"]];
const colourFor = (rate) => ERROR_COLOURS.find(([min]) => rate > min || min === 0)[1];

let graph = null;

async function load() {
  const minutes = document.getElementById("minutes").value;
  let edges;
  try {
    edges = await api("/telemetry/dependencies", { minutes });
  } catch (error) {
    status("topology-status", `Telemetry unavailable: ${error.message}`, true);
    return;
  }
  const services = new Set((await api("/services").catch(() => [])).map((s) => s.name));
  const peers = new Set(edges.filter((e) => e.uninstrumented).map((e) => e.child));
  document.querySelector("#edges tbody").replaceChildren(...(edges.length ? edges.map((e) => {
    const rate = e.calls ? e.errors / e.calls : 0;
    const node = (n) => services.has(n) ? el("a", { href: `/services/${encodeURIComponent(n)}` }, n) : n;
    return el("tr", { "data-edge": `${e.parent}->${e.child}` },
      el("th", { scope: "row" }, node(e.parent)), el("td", {}, node(e.child)),
      el("td", { class: "num" }, e.calls), el("td", { class: "num" }, e.errors),
      el("td", { class: "num" + (rate > 0.01 ? " bad" : "") }, fmtPct(rate)),
      el("td", { class: "num" }, fmtUs(e.avg_us)), el("td", { class: "num" }, fmtUs(e.p95_us)),
      el("td", {}, e.uninstrumented ? "peer (no spans of its own)" : "service"));
  }) : [el("tr", {}, el("td", { colspan: 8 }, "No calls traced in this window."))]));
  const names = [...new Set(edges.flatMap((e) => [e.parent, e.child]))].sort();
  status("topology-status", `${names.length} nodes, ${edges.length} edges over the last ${minutes} minutes.`);
  const cytoscape = await loadCytoscape();
  const box = document.getElementById("graph");
  if (!cytoscape) {
    box.hidden = true;
    return;
  }
  const elements = [
    ...names.map((n) => ({ data: { id: n, label: n, kind: peers.has(n) && !services.has(n) ? "peer" : "service" } })),
    ...edges.map((e) => {
      const rate = e.calls ? e.errors / e.calls : 0;
      return { data: { id: `${e.parent}->${e.child}`, source: e.parent, target: e.child,
        label: `${e.calls} calls · ${fmtPct(rate)} err · p95 ${fmtUs(e.p95_us)}`,
        colour: colourFor(rate), width: 1 + Math.min(6, Math.log10(1 + e.calls)) } };
    }),
  ];
  const crowded = edges.length > 30;
  if (graph) graph.destroy();
  graph = cytoscape({
    container: box, elements, wheelSensitivity: 0.3,
    layout: { name: "breadthfirst", directed: true, spacingFactor: 1.1, padding: 20 },
    style: [
      { selector: "node", style: { label: "data(label)", "background-color": "#0550ae", color: "#1b1f24",
        "text-valign": "bottom", "text-margin-y": 4, "font-size": 12, width: 26, height: 26 } },
      { selector: 'node[kind = "peer"]', style: { shape: "round-rectangle", "background-color": "#57606a" } },
      { selector: "edge", style: { width: "data(width)", "line-color": "data(colour)",
        "target-arrow-color": "data(colour)", "target-arrow-shape": "triangle", "curve-style": "bezier",
        label: "data(label)", "font-size": 10, "text-background-color": "#ffffff",
        "text-background-opacity": 0.85, "text-background-padding": 2, color: "#1b1f24",
        // A large map is unreadable with every label: they show on hover (the table has all).
        "text-opacity": crowded ? 0 : 1 } },
      { selector: "edge.hover, edge:selected", style: { "text-opacity": 1, "z-index": 10 } },
    ],
  });
  graph.on("mouseover", "edge", (evt) => evt.target.addClass("hover"));
  graph.on("mouseout", "edge", (evt) => evt.target.removeClass("hover"));
  graph.on("tap", "node", (evt) => {
    const id = evt.target.id();
    if (services.has(id)) location.href = `/services/${encodeURIComponent(id)}`;
  });
  document.body.dataset.graphNodes = String(graph.nodes().length);
  // Time to a drawn graph, from navigation start: Cytoscape paints on the next animation
  // frame, so the frame after that one has it on screen (read by the figures test).
  requestAnimationFrame(() => requestAnimationFrame(() => {
    document.body.dataset.graphRenderedMs = String(Math.round(performance.now()));
  }));
}

document.getElementById("minutes").addEventListener("change", load);
document.getElementById("window-form").addEventListener("submit", (e) => { e.preventDefault(); load(); });
load();
