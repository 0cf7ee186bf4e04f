// Trace search: the form's values come from the address (?service=&endpoint=&min_ms=&error=),
// so a search is a link people can share; results link to the waterfall.
import { api, el, fmtUs, fmtTime, status } from "./common.js";

const params = new URLSearchParams(location.search);
for (const [field, key] of [["f-service", "service"], ["f-endpoint", "endpoint"], ["f-min", "min_ms"], ["f-minutes", "minutes"]]) {
  if (params.get(key)) document.getElementById(field).value = params.get(key);
}
document.getElementById("f-error").checked = params.get("error") === "1";

async function search() {
  const query = {
    service: params.get("service") || "", endpoint: params.get("endpoint") || "",
    minutes: params.get("minutes") || 60, limit: 50,
    min_duration_us: params.get("min_ms") ? Math.round(Number(params.get("min_ms")) * 1000) : "",
    error: params.get("error") === "1" ? "true" : "",
  };
  let rows;
  try {
    rows = await api("/telemetry/traces", query);
  } catch (error) {
    status("traces-status", `Telemetry unavailable: ${error.message}`, true);
    return;
  }
  status("traces-status", `${rows.length} traces.`);
  document.querySelector("#traces tbody").replaceChildren(...rows.map((t) => el("tr", { "data-trace": t.trace_id },
    el("th", { scope: "row" }, el("a", { href: `/traces/${t.trace_id}` }, t.trace_id.slice(0, 16))),
    el("td", {}, `${t.root_service} ${t.root_name}`), el("td", {}, fmtTime(t.start_us / 1e6)),
    el("td", { class: "num" }, fmtUs(t.duration_us)), el("td", { class: "num" }, t.spans),
    el("td", { class: "num" + (t.errors ? " bad" : "") }, t.errors), el("td", {}, t.services.join(", ")))));
}

search();
