// TOP-N: four rankings of entry endpoints over a window, and slow SQL with the APIs it serves.
import { api, el, fmtUs, fmtPct, fillTable, status } from "./common.js";

const HEADERS = [["Endpoint"], ["Service"], ["Calls", true], ["Errors", true], ["Average", true], ["p95", true], ["Total time", true]];

function bar(value, max) {
  return el("span", {}, el("span", { class: "hbar", style: `width:${Math.round((60 * value) / Math.max(1, max))}px`, "aria-hidden": "true" }));
}

async function load() {
  const minutes = document.getElementById("minutes").value;
  try {
    await Promise.all(["calls", "p95", "hotspot", "errors"].map(async (by) => {
      const rows = await api("/telemetry/top", { by, group: "endpoint", n: 10, minutes });
      const measure = { calls: "calls", p95: "p95_us", hotspot: "sum_us", errors: "errors" }[by];
      const max = Math.max(0, ...rows.map((r) => r[measure]));
      fillTable(document.querySelector(`table[data-top="${by}"]`), HEADERS, rows.map((r) => [
        el("span", {}, bar(r[measure], max), r.endpoint), r.service, String(r.calls),
        `${r.errors} (${fmtPct(r.calls ? r.errors / r.calls : 0)})`, fmtUs(r.avg_us), fmtUs(r.p95_us), fmtUs(r.sum_us)]));
    }));
    const threshold = Math.round(Number(document.getElementById("sql-threshold").value || 0) * 1000);
    const sql = await api("/telemetry/slow-sql", { minutes, threshold_us: threshold, n: 10 });
    fillTable(document.getElementById("slow-sql"),
      [["Statement"], ["Service → database"], ["Calls", true], ["p95", true], ["Total", true], ["APIs it serves (share of their time)"]],
      sql.map((s) => [el("code", {}, s.fingerprint), `${s.service} → ${s.peer}`, String(s.calls), fmtUs(s.p95_us), fmtUs(s.sum_us),
        s.apis.map((a) => `${a.api} (${fmtPct(a.share)})`).join("; ") || "—"]));
    status("top-status", `Last ${minutes} minutes.`);
  } catch (error) {
    status("top-status", `Telemetry unavailable: ${error.message}`, true);
  }
}

document.getElementById("minutes").addEventListener("change", load);
document.getElementById("sql-threshold").addEventListener("change", load);
document.getElementById("window-form").addEventListener("submit", (e) => { e.preventDefault(); load(); });
load();
setInterval(load, 15000);
