// One trace as a waterfall. The critical path is what the root waited for: walking back from
// a span's end, the child that finished last before that point, then (recursively) its own
// critical path, then the next child that finished before that child started.
import { api, el, fmtUs, fmtTime, status } from "./common.js";

const traceId = document.getElementById("trace-id").dataset.trace;

export function criticalPath(rows) {
  const spans = rows.map((r) => r.span);
  const byId = new Map(spans.filter((s) => !s.shared).map((s) => [s.span_id, s]));
  const kids = new Map();
  for (const s of spans) {
    const parent = s.shared ? s.span_id : s.parent_id;
    if (parent && byId.has(parent) && byId.get(parent) !== s) {
      (kids.get(byId.get(parent)) || kids.set(byId.get(parent), []).get(byId.get(parent))).push(s);
    }
  }
  const end = (s) => s.start_us + s.duration_us;
  const on = new Set();
  const walk = (span) => {
    on.add(span);
    let until = end(span);
    const children = (kids.get(span) || []).slice().sort((a, b) => end(b) - end(a));
    for (const child of children) {
      if (end(child) <= until + 1 && child.start_us >= span.start_us - 1) {
        walk(child);
        until = child.start_us;
      }
    }
  };
  const roots = spans.filter((s) => !s.shared && !(s.parent_id && byId.has(s.parent_id)));
  if (roots.length) walk(roots.reduce((a, b) => (end(b) - b.start_us > end(a) - a.start_us ? b : a)));
  return on;
}

function details(span) {
  const box = document.getElementById("span-details");
  const attrs = Object.entries(span.attributes || {}).sort(([a], [b]) => a.localeCompare(b));
  box.replaceChildren(
    el("h3", {}, `${span.service} · ${span.name}`),
    el("dl", { class: "facts" },
      el("dt", {}, "Kind"), el("dd", {}, span.kind || "internal"),
      el("dt", {}, "Instance"), el("dd", {}, span.instance || "—"),
      el("dt", {}, "Started"), el("dd", {}, fmtTime(span.start_us / 1e6)),
      el("dt", {}, "Duration"), el("dd", {}, fmtUs(span.duration_us)),
      el("dt", {}, "Status"), el("dd", { class: span.error ? "bad" : "" }, span.error ? `error ${span.status || ""}` : "ok"),
      el("dt", {}, "Peer"), el("dd", {}, span.remote_service || span.peer || "—"),
      el("dt", {}, "Span id"), el("dd", {}, span.span_id)),
    el("table", { class: "grid" }, el("caption", {}, "Attributes"),
      el("tbody", {}, attrs.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, v))))),
    (span.events || []).length ? el("table", { class: "grid" }, el("caption", {}, "Events"),
      el("tbody", {}, span.events.map(([ts, name]) => el("tr", {},
        el("th", { scope: "row" }, fmtUs(ts - span.start_us)), el("td", {}, name))))) : "");
}

async function load() {
  let trace;
  try {
    trace = await api(`/telemetry/trace/${encodeURIComponent(traceId)}`);
  } catch (error) {
    status("trace-status", error.message, true);
    return;
  }
  const critical = criticalPath(trace.rows);
  status("trace-status", `${trace.rows.length} spans across ${trace.services.length} services, ${fmtUs(trace.duration_us)}` +
    (trace.errors ? `, ${trace.errors} with errors` : "") + ".");
  document.getElementById("trace-facts").replaceChildren(
    el("dt", {}, "Started"), el("dd", {}, fmtTime(trace.start_us / 1e6)),
    el("dt", {}, "Services"), el("dd", {}, trace.services.join(", ")));
  const total = Math.max(1, trace.duration_us);
  const tbody = document.querySelector("#waterfall tbody");
  tbody.replaceChildren(...trace.rows.map((row, index) => {
    const s = row.span;
    const onPath = critical.has(s);
    const select = () => {
      tbody.querySelectorAll("tr.selected").forEach((r) => r.classList.remove("selected"));
      tr.classList.add("selected");
      details(s);
    };
    const button = el("button", { type: "button", class: "span-name", onclick: select,
      style: `margin-left:${row.depth * 14}px` }, s.name);
    const tr = el("tr", { class: [onPath ? "critical" : "", s.error ? "error" : ""].join(" ").trim() || null,
      "data-span": s.span_id, "data-critical": onPath ? "1" : null },
      el("th", { scope: "row" }, button, onPath ? el("span", { class: "crit-mark" }, "critical path") : ""),
      el("td", {}, s.service), el("td", { class: "num" }, fmtUs(row.offset_us)),
      el("td", { class: "num" + (s.error ? " bad" : "") }, fmtUs(s.duration_us) + (s.error ? " (error)" : "")),
      el("td", { class: "bar-cell" }, el("div", { class: "bar-track" }, el("div", { class: "bar",
        style: `left:${(100 * row.offset_us) / total}%;width:${(100 * s.duration_us) / total}%` }))));
    if (index === 0) queueMicrotask(select);
    return tr;
  }));
  document.body.dataset.spans = String(trace.rows.length);
}

load();
