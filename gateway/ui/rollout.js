// A config's rollout counts as table cells, each count one click from the agents in that state.
import { h } from "./dom.js";

export const ROLLOUT_STATES = ["applied", "applying", "failed", "pending", "unsupported"];

function agentsLink(name, state) {
  const params = new URLSearchParams({ config: name });
  if (state) params.set("config_status", state);
  return `#/agents?${params}`;
}

export function rolloutCells(config) {
  const r = config.rollout || { matched: 0 };
  const label = `${config.name}: ${r.applied || 0} of ${r.matched} agents applied`;
  return [
    h("td", { class: "num", "data-state": "matched" }, h("a", { href: agentsLink(config.name) }, r.matched)),
    ROLLOUT_STATES.map((state) =>
      h(
        "td",
        { class: "num", "data-state": state },
        h("a", { href: agentsLink(config.name, state), "aria-label": `${r[state] || 0} ${state}` }, r[state] || 0),
      ),
    ),
    h("td", { class: "bar" }, h("progress", { max: Math.max(r.matched, 1), value: r.applied || 0, "aria-label": label })),
  ];
}
