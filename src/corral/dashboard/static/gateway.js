// Gateway: the live status the gateway reports (counters, breaker states), refreshed.
import { api, status } from "./common.js";

async function load() {
  const pre = document.getElementById("gateway-live");
  if (!pre) return;
  try {
    const view = await api("/gateway/config");
    const live = view.live || {};
    const keys = Object.keys(live).sort();
    pre.textContent = keys.length ? keys.map((k) => `${k}: ${JSON.stringify(live[k])}`).join("\n")
      : "The gateway has not reported its live status yet.";
    const counters = live.routes || {};
    for (const row of document.querySelectorAll("tr[data-route]")) {
      const c = counters[row.dataset.route];
      const cell = row.querySelector('[data-counter="requests"]');
      if (cell && c !== undefined) cell.textContent = typeof c === "object" ? String(c.requests ?? JSON.stringify(c)) : String(c);
    }
  } catch (error) {
    pre.textContent = `Unavailable: ${error.message}`;
  }
}

load();
setInterval(load, 5000);
