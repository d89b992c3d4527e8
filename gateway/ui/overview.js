// Overview: the fleet summary (by status, type and version, OS) and every config's rollout,
// refreshed every few seconds.
import { api } from "./api.js";
import { badge, h, refresh, table } from "./dom.js";
import { rolloutCells, ROLLOUT_STATES } from "./rollout.js";

const STATUSES = ["online", "offline", "disconnected", "unhealthy"];
const REFRESH_MS = 5000;

export async function showOverview(view, ctx) {
  const body = h("div");
  const stamp = h("p", { class: "help", id: "updated" });
  view.append(h("h1", {}, "Overview"), stamp, body);
  const update = async () => {
    const [summary, configs] = await Promise.all([
      api("GET", "/api/v1/fleet/summary"),
      api("GET", "/api/v1/configs"),
    ]);
    const details = await Promise.all(
      configs.configs.map((c) => api("GET", `/api/v1/configs/${encodeURIComponent(c.name)}`)),
    );
    if (!ctx.live()) return;
    refresh(body, render(summary, details));
    stamp.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s.`;
  };
  await update();
  ctx.every(REFRESH_MS, update);
}

function bar(value, total, label) {
  return h("meter", { min: 0, max: Math.max(total, 1), value, "aria-label": label });
}

function counts(caption, total, entries, link) {
  const rows = entries.map(([name, count]) =>
    h(
      "tr",
      { "data-key": name },
      h("th", { scope: "row" }, link ? h("a", { href: link(name) }, name) : name),
      h("td", { class: "num" }, count),
      h("td", { class: "bar" }, bar(count, total, `${name}: ${count} of ${total}`)),
    ),
  );
  return table(caption, ["", "Agents", "Share"], rows, { class: "counts" });
}

function render(summary, configs) {
  const total = summary.total;
  const statuses = STATUSES.map((s) => [s, summary.by_status[s] || 0]);
  const versions = [];
  for (const [type, byVersion] of Object.entries(summary.by_type_version)) {
    for (const [version, count] of Object.entries(byVersion)) versions.push([`${type} ${version}`, count]);
  }
  versions.sort((a, b) => b[1] - a[1]);
  const systems = Object.entries(summary.by_os).sort((a, b) => b[1] - a[1]);
  return h(
    "div",
    { class: "overview" },
    h(
      "section",
      { class: "tiles", "aria-label": "Agents by status" },
      h("div", { class: "tile", "data-status": "total" }, h("span", { class: "big" }, total), " agents"),
      statuses.map(([status, count]) =>
        h(
          "a",
          { class: "tile", href: `#/agents?status=${status}`, "data-status": status },
          h("span", { class: "big" }, count),
          " ",
          badge(status),
        ),
      ),
    ),
    h(
      "div",
      { class: "grid" },
      counts("Agents by status", total, statuses, (s) => `#/agents?status=${s}`),
      counts("Agents by type and version", total, versions),
      counts("Agents by operating system", total, systems),
    ),
    h("h2", {}, "Configs"),
    configs.length
      ? table(
          "Rollout of each config",
          ["Config", "Version", "Matched", ...ROLLOUT_STATES, "Applied"],
          configs.map((c) =>
            h(
              "tr",
              { "data-config": c.name },
              h("th", { scope: "row" }, h("a", { href: `#/configs/${encodeURIComponent(c.name)}` }, c.name)),
              h("td", { class: "num" }, c.version),
              rolloutCells(c),
            ),
          ),
          { class: "rollout" },
        )
      : h("p", {}, "No configs yet. ", h("a", { href: "#/configs/new" }, "Create one"), "."),
  );
}
