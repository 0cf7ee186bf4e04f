// Hosts: CPU, memory, disk and network of every host the collector samples (/telemetry/hosts),
// each put beside the instances of its node. The collector's own host is the node called
// `local` on a single machine. Charts come with a table of the same samples.
import { api, el, fmtBytes, fmtPct, fmtTime, status, loadUPlot, chartTable } from "./common.js";

const nodes = document.getElementById("nodes");

function sectionFor(host, local) {
  const section = nodes.querySelector(`section[data-node="${CSS.escape(host)}"]`)
    || (local && nodes.querySelector('section[data-node="local"]'));
  if (section) {
    section.dataset.host = host;
    section.querySelector("h2").textContent = section.dataset.node === host ? `Host ${host}` : `Host ${host} (node ${section.dataset.node})`;
    return section;
  }
  const made = el("section", { class: "host", "data-host": host, "data-node": host },
    el("h2", {}, `Host ${host}`), el("div", { class: "host-metrics", "data-metrics": "" }),
    el("p", { class: "muted" }, "No instances on this host."));
  nodes.append(made);
  return made;
}

function columns(answer) {
  const index = Object.fromEntries(answer.fields.map((f, i) => [f, i]));
  return (field) => answer.points.map((p) => p[index[field]]);
}

// Tables shorter than the chart: at most 30 rows, evenly spaced, the newest always kept.
function thin(n, most) {
  if (n <= most) return [...Array(n).keys()];
  const step = (n - 1) / (most - 1);
  return [...Array(most).keys()].map((i) => Math.round(i * step));
}

async function drawHost(answer, local, uPlot) {
  const host = answer.host;
  const col = columns(answer);
  const ts = col("ts");
  const section = sectionFor(host, local);
  const box = section.querySelector("[data-metrics]");
  const instances = section.querySelectorAll("tr[data-instance]").length;
  const last = answer.points.length - 1;
  const at = (field) => (last >= 0 ? col(field)[last] : null);
  const memPct = last >= 0 ? at("mem_used") / at("mem_total") : null;
  const diskPct = last >= 0 ? at("disk_used") / at("disk_total") : null;
  document.querySelector("#host-summary tbody").append(el("tr", { "data-host": host, "data-cpu": String(at("cpu_ratio")) },
    el("th", { scope: "row" }, el("a", { href: `#h-host-${host}` }, host)),
    el("td", { class: "num" }, fmtPct(at("cpu_ratio"))),
    el("td", { class: "num" }, last >= 0 ? `${fmtBytes(at("mem_used"))} of ${fmtBytes(at("mem_total"))} (${fmtPct(memPct)})` : "—"),
    el("td", { class: "num" }, last >= 0 ? `${fmtBytes(at("disk_used"))} of ${fmtBytes(at("disk_total"))} (${fmtPct(diskPct)})` : "—"),
    el("td", { class: "num" }, last >= 0 ? `${fmtBytes(at("disk_read_bps"))}/s · ${fmtBytes(at("disk_write_bps"))}/s` : "—"),
    el("td", { class: "num" }, last >= 0 ? `${fmtBytes(at("net_rx_bps"))}/s · ${fmtBytes(at("net_tx_bps"))}/s` : "—"),
    el("td", { class: "num" }, String(instances)),
    el("td", {}, last >= 0 ? fmtTime(ts[last]) : "no sample yet")));
  section.querySelector("h2").id = `h-host-${host}`;
  const rows = thin(ts.length, 30);
  const cpu = col("cpu_ratio").map((x) => x * 100);
  const mem = col("mem_used").map((x, i) => (100 * x) / (col("mem_total")[i] || 1));
  const disk = col("disk_used").map((x, i) => (100 * x) / (col("disk_total")[i] || 1));
  const rx = col("net_rx_bps"), tx = col("net_tx_bps"), rd = col("disk_read_bps"), wr = col("disk_write_bps");
  const usage = el("div", { class: "chart", "aria-hidden": "true" });
  const io = el("div", { class: "chart", "aria-hidden": "true" });
  box.replaceChildren(
    el("p", {}, el("a", { href: `/impact?kind=host&value=${encodeURIComponent(host)}` }, `APIs affected by ${host}`),
      ` · sampled every ${answer.resolution_s} s`),
    usage, io,
    chartTable(`Samples of ${host} as a table`, `CPU, memory, disk and network of ${host} (every ${answer.resolution_s} s, thinned to 30 rows)`,
      ["When", "CPU", "Memory", "Disk", "Disk read", "Disk write", "Net in", "Net out"],
      rows.map((i) => [new Date(ts[i] * 1000).toLocaleTimeString(), `${cpu[i].toFixed(1)} %`, `${mem[i].toFixed(1)} %`,
        `${disk[i].toFixed(1)} %`, `${fmtBytes(rd[i])}/s`, `${fmtBytes(wr[i])}/s`, `${fmtBytes(rx[i])}/s`, `${fmtBytes(tx[i])}/s`])));
  if (!uPlot || ts.length < 2) return;
  const width = Math.min(1100, nodes.clientWidth || 900);
  new uPlot({
    width, height: 160, scales: { y: { range: () => [0, 100] } },
    series: [{}, { label: "CPU %", stroke: "#0550ae", width: 2 }, { label: "memory %", stroke: "#bf5700", width: 2 },
      { label: "disk %", stroke: "#57606a", dash: [6, 4] }],
    axes: [{}, { label: "%" }],
  }, [ts, cpu, mem, disk], usage);
  const kib = (xs) => xs.map((x) => x / 1024);
  new uPlot({
    width, height: 160,
    series: [{}, { label: "net in KiB/s", stroke: "#116329" }, { label: "net out KiB/s", stroke: "#8250df" },
      { label: "disk read KiB/s", stroke: "#7d4e00", dash: [4, 3] }, { label: "disk write KiB/s", stroke: "#a40e26", dash: [4, 3] }],
    axes: [{}, { label: "KiB/s" }],
  }, [ts, kib(rx), kib(tx), kib(rd), kib(wr)], io);
}

async function load() {
  const minutes = document.getElementById("minutes").value;
  let first;
  try {
    first = await api("/telemetry/hosts", { minutes });
  } catch (error) {
    status("hosts-status", `Host metrics unavailable: ${error.message}`, true);
    return;
  }
  const others = await Promise.all(first.hosts.filter((h) => h !== first.host)
    .map((host) => api("/telemetry/hosts", { minutes, host }).catch(() => null)));
  document.querySelector("#host-summary tbody").replaceChildren();
  const uPlot = await loadUPlot();
  await drawHost(first, true, uPlot);
  for (const answer of others) if (answer) await drawHost(answer, false, uPlot);
  status("hosts-status", `${1 + others.filter(Boolean).length} host(s), last ${minutes} minutes.`);
  document.body.dataset.hosts = String(1 + others.filter(Boolean).length);
}

document.getElementById("minutes").addEventListener("change", load);
document.getElementById("window-form").addEventListener("submit", (e) => { e.preventDefault(); load(); });
load();
