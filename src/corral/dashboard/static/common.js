// Shared helpers for the dashboard's pages: API reads, formatting, DOM building, the live
// event stream and the (optional) chart libraries. Text always goes in through textContent,
// never innerHTML, so nothing a service or a span says can become markup.

export const API = "/api/v1";

export async function api(path, params) {
  const url = new URL(API + path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const message = body && body.message ? body.message : `${response.status} ${response.statusText}`;
    const error = new Error(message + (body && body.hint ? ` (${body.hint})` : ""));
    error.status = response.status;
    throw error;
  }
  return body;
}

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function fmtUs(us) {
  if (us === null || us === undefined || Number.isNaN(us)) return "—";
  if (us < 1000) return `${Math.round(us)} µs`;
  if (us < 1e6) return `${(us / 1000).toFixed(us < 1e4 ? 2 : 1)} ms`;
  return `${(us / 1e6).toFixed(2)} s`;
}

export function fmtPct(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "—";
  return `${(x * 100).toFixed(x && x < 0.01 ? 2 : 1)} %`;
}

export function fmtNum(n) {
  if (n === null || n === undefined) return "—";
  return n >= 100 ? Math.round(n).toLocaleString() : (Math.round(n * 10) / 10).toString();
}

export function fmtTime(seconds) {
  if (!seconds) return "—";
  return new Date(seconds * 1000).toLocaleString();
}

// Server-rendered times are epoch seconds in data-at: show them in the reader's time zone.
export function localizeTimes(root) {
  for (const cell of (root || document).querySelectorAll("[data-at]")) {
    const at = Number(cell.dataset.at);
    if (at) cell.textContent = fmtTime(at);
  }
}

export function status(id, text, isError) {
  const node = document.getElementById(id);
  if (!node) return;
  node.textContent = text;
  node.classList.toggle("bad", !!isError);
}

export function fillTable(table, headers, rows) {
  // headers: [[label, numeric?]]; rows: arrays of cells (strings or Nodes); first cell is a row header.
  table.replaceChildren(
    el("thead", {}, el("tr", {}, headers.map(([label, numeric]) =>
      el("th", { scope: "col", class: numeric ? "num" : null }, label)))),
    el("tbody", {}, rows.length ? rows.map((cells) => el("tr", {}, cells.map((cell, i) =>
      i === 0 ? el("th", { scope: "row" }, cell)
        : el("td", { class: headers[i] && headers[i][1] ? "num" : null }, cell))))
      : el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "Nothing in this window."))),
  );
}

// The lifecycle event stream. EventSource reconnects by itself; the status line says whether
// the page is live, so nobody trusts a stale screen during an incident.
export function followEvents(onEvent, query) {
  const live = document.getElementById("live");
  const url = new URL(API + "/events/stream", location.origin);
  for (const [k, v] of Object.entries(query || {})) url.searchParams.set(k, v);
  const source = new EventSource(url);
  const say = (state, text) => {
    if (!live) return;
    live.dataset.state = state;
    live.textContent = text;
  };
  source.onopen = () => say("live", "Live: updates appear as they happen.");
  source.onerror = () => say("down", "Live updates interrupted; reconnecting…");
  source.addEventListener("lifecycle", (message) => {
    let event = null;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    onEvent(event);
  });
  return source;
}

// Coalesce bursts (a rollout emits many events at once) into one refresh.
export function coalesce(fn, ms) {
  let timer = null;
  let pending = [];
  return (item) => {
    pending.push(item);
    if (timer) return;
    timer = setTimeout(async () => {
      const batch = pending;
      pending = [];
      timer = null;
      await fn(batch);
    }, ms);
  };
}

export const chartsAvailable = () => document.body.dataset.charts === "ok";

let uplotPromise = null;
export function loadUPlot() {
  if (!chartsAvailable()) return Promise.resolve(null);
  if (!uplotPromise) {
    const css = el("link", { rel: "stylesheet", href: "/static/vendor/uPlot.min.css" });
    document.head.append(css);
    uplotPromise = import("/static/vendor/uPlot.esm.js").then((m) => m.default).catch(() => null);
  }
  return uplotPromise;
}

export async function loadCytoscape() {
  if (!chartsAvailable()) return null;
  try {
    return (await import("/static/vendor/cytoscape.esm.min.mjs")).default;
  } catch (_) {
    return null;
  }
}

// A tiny line chart without axes. The values are also put into the cell's label so the
// sparkline has a text equivalent for screen readers and in the tooltip.
export async function sparkline(container, xs, ys, label) {
  container.replaceChildren();
  container.title = `${label}: ${ys.join(", ")}`;
  container.setAttribute("aria-label", container.title);
  const uPlot = await loadUPlot();
  if (!uPlot || xs.length < 2) {
    container.textContent = ys.length ? ys.join(" · ") : "";
    return;
  }
  new uPlot({
    width: 120, height: 28, pxAlign: false,
    cursor: { show: false }, legend: { show: false }, select: { show: false },
    scales: { x: { time: false }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
    axes: [{ show: false }, { show: false }],
    series: [{}, { stroke: "#0550ae", width: 1.5, fill: "rgba(5,80,174,0.12)" }],
  }, [xs, ys], container);
}

// "What changed": the service page's list (server-rendered, kept live) is the one source of
// the markers, so the chart and its text equivalent always agree.
export const CHANGE_COLOURS = {
  release: "#0550ae", deploy: "#116329", rollback: "#8250df",
  scale: "#7d4e00", restart: "#57606a", crash: "#a40e26",
};
export const CHANGE_LETTERS = { release: "R", deploy: "D", rollback: "B", scale: "S", restart: "↻", crash: "✕" };

export function readChanges(list) {
  return [...(list || document).querySelectorAll("li[data-at-s]")].map((li) => ({
    at: Number(li.dataset.atS), kind: li.dataset.kind,
  }));
}

// A uPlot plugin drawing each change as a dashed vertical line with its letter on top;
// `onDrawn(n)` learns how many fell inside the plotted range.
export function markersPlugin(getChanges, onDrawn) {
  return {
    hooks: {
      draw: (u) => {
        const { ctx } = u;
        const { top, height } = u.bbox;
        const [min, max] = [u.scales.x.min, u.scales.x.max];
        let drawn = 0;
        ctx.save();
        ctx.lineWidth = 1.5 * devicePixelRatio;
        ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
        ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
        ctx.textAlign = "center";
        for (const change of getChanges()) {
          if (!(change.at >= min && change.at <= max)) continue;
          const x = Math.round(u.valToPos(change.at, "x", true));
          const colour = CHANGE_COLOURS[change.kind] || "#57606a";
          ctx.strokeStyle = colour;
          ctx.fillStyle = colour;
          ctx.beginPath();
          ctx.moveTo(x, top + 12 * devicePixelRatio);
          ctx.lineTo(x, top + height);
          ctx.stroke();
          ctx.fillText(CHANGE_LETTERS[change.kind] || "•", x, top + 10 * devicePixelRatio);
          drawn += 1;
        }
        ctx.restore();
        if (onDrawn) onDrawn(drawn);
      },
    },
  };
}

export function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function fmtDuration(seconds) {
  if (seconds % 86400 === 0) return `${seconds / 86400} d`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  return `${Math.round(seconds / 60)} min`;
}

// A table as the text equivalent of a chart, folded under the chart.
export function chartTable(summary, caption, headers, rows) {
  return el("details", {}, el("summary", {}, summary),
    el("table", { class: "grid" }, el("caption", {}, caption),
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c, i) =>
        i === 0 ? el("th", { scope: "row" }, c) : el("td", { class: "num" }, c)))))));
}
