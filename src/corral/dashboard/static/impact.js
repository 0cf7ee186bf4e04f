// Impact: for a host, an instance or a SQL statement, the external APIs whose requests reach
// it (/telemetry/impact). The form is a plain GET, so an address names one question; the
// choices offered come from the API (instances, hosts seen by the collector, slow SQL).
import { api, el, fmtUs, fmtPct, status } from "./common.js";

const form = document.getElementById("impact-form");
const kind = document.getElementById("impact-kind");
const value = document.getElementById("impact-value");
const minutes = document.getElementById("impact-minutes");
const params = new URLSearchParams(location.search);
if (params.get("minutes")) minutes.value = params.get("minutes");

async function choices() {
  let names = [];
  try {
    if (kind.value === "instance") {
      names = (await api("/instances", { system: 1 })).map((i) => i.id);
    } else if (kind.value === "host") {
      names = (await api("/telemetry/hosts", { minutes: 1 })).hosts;
    } else {
      names = (await api("/telemetry/slow-sql", { threshold_us: 0, n: 50, minutes: 1440 })).map((s) => s.fingerprint);
    }
  } catch (_) { names = []; }
  document.getElementById("impact-choices").replaceChildren(...names.sort().map((n) => el("option", { value: n })));
}

async function load() {
  const target = value.value.trim();
  if (!target) {
    status("impact-status", "Choose a target above.");
    return;
  }
  status("impact-status", "Asking…");
  let result;
  try {
    result = await api("/telemetry/impact", { [kind.value]: target, minutes: minutes.value });
  } catch (error) {
    status("impact-status", error.message, true);
    document.querySelector("#impact tbody").replaceChildren();
    return;
  }
  const rows = result.apis.map((a) => el("tr", { "data-api": a.api },
    el("th", { scope: "row" }, a.api), el("td", { class: "num" }, a.requests),
    el("td", { class: "num" }, `${a.errors} (${fmtPct(a.requests ? a.errors / a.requests : 0)})`),
    el("td", { class: "num" }, a.calls), el("td", { class: "num" }, fmtPct(a.traffic_share)),
    el("td", { class: "num" }, fmtPct(a.time_share)), el("td", { class: "num" }, fmtUs(a.target_p95_us))));
  document.querySelector("#impact tbody").replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: 7 }, "No traced request reached it in this window."))]));
  const covers = result.instances.length ? ` (instances: ${result.instances.join(", ")})` : "";
  status("impact-status", `${result.apis.length} API(s) reach ${result.target}${covers} over the last ${minutes.value} minutes.`);
  document.body.dataset.impactApis = String(result.apis.length);
}

kind.addEventListener("change", choices);
form.addEventListener("submit", (e) => {
  // Keep the address in step with the question (shareable, and Back works), without a reload.
  e.preventDefault();
  const next = new URLSearchParams({ kind: kind.value, value: value.value.trim(), minutes: minutes.value });
  history.pushState(null, "", `/impact?${next}`);
  load();
});
addEventListener("popstate", () => location.reload());
choices();
load();
