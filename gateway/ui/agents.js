// Agents: the API's filters as a form whose state lives in the URL's hash, one page of the API's
// cursor paging at a time (the API pages by instance_uid; it offers no other order, so the columns
// do not sort), refreshed every few seconds.
import { api, query } from "./api.js";
import { attr, badge, h, refresh, replace, shortUid, table, time } from "./dom.js";

const STATUSES = ["online", "offline", "disconnected", "unhealthy"];
const CONFIG_STATUSES = ["applied", "applying", "failed", "pending", "unsupported", "none"];
const PACKAGE_STATUSES = ["installed", "installing", "failed", "pending", "unsupported", "none"];
const LIMITS = ["25", "50", "100", "200"];
const REFRESH_MS = 5000;

// The hash's filter parameters -> the API's query parameters; a bad `attr` line is refused here.
export function apiParams(params) {
  const out = {};
  for (const key of ["status", "q", "config", "config_status", "package", "package_status", "limit", "cursor"]) {
    const value = params.get(key);
    if (value) out[key] = value;
  }
  for (const pair of (params.get("attr") || "").split(",")) {
    if (!pair.trim()) continue;
    const at = pair.indexOf("=");
    if (at < 1) throw new FilterError(`Attribute filter "${pair.trim()}": write key=value (several: separate with commas).`);
    out[`attr.${pair.slice(0, at).trim()}`] = pair.slice(at + 1).trim();
  }
  return out;
}

class FilterError extends Error {}

function select(id, label, options, value, allLabel) {
  return [
    h("label", { for: id }, label),
    h(
      "select",
      { id, name: id },
      allLabel === null ? "" : h("option", { value: "" }, allLabel),
      options.map((o) => h("option", { value: o, selected: o === value }, o)),
    ),
  ];
}

function filterForm(params, configNames, packageNames) {
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter agents" },
    h("div", {}, select("status", "Status", STATUSES, params.get("status"), "any")),
    h(
      "div",
      {},
      h("label", { for: "q" }, "Search"),
      h("input", { id: "q", name: "q", type: "search", value: params.get("q") || "", placeholder: "uid, host, any value" }),
    ),
    h(
      "div",
      {},
      h("label", { for: "attr" }, "Attributes"),
      h("input", {
        id: "attr",
        name: "attr",
        value: params.get("attr") || "",
        placeholder: "os.type=linux",
        "aria-describedby": "attr-help",
      }),
      h("span", { id: "attr-help", class: "help" }, "key=value, comma-separated; exact match"),
    ),
    h("div", {}, select("config", "Config", configNames, params.get("config"), "any")),
    h("div", {}, select("config_status", "Config status", CONFIG_STATUSES, params.get("config_status"), "any")),
    h("div", {}, select("package", "Package", packageNames, params.get("package"), "any")),
    h("div", {}, select("package_status", "Package status", PACKAGE_STATUSES, params.get("package_status"), "any")),
    h("div", {}, select("limit", "Per page", LIMITS, params.get("limit") || "50", null)),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Apply"), h("a", { href: "#/agents" }, "Clear")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [key, value] of new FormData(form)) if (String(value).trim()) next.set(key, String(value).trim());
    location.hash = `#/agents${next.size ? `?${next}` : ""}`;
  });
  return form;
}

function row(agent) {
  const host = attr(agent, "host.name");
  const type = [attr(agent, "service.name"), attr(agent, "service.version")].filter(Boolean).join(" ");
  const sync = agent.config_sync || {};
  const health = agent.health ? (agent.health.healthy ? "healthy" : "unhealthy") : "not reported";
  return h(
    "tr",
    { "data-uid": agent.instance_uid },
    h(
      "th",
      { scope: "row" },
      h("a", { href: `#/agents/${agent.instance_uid}`, title: agent.instance_uid, class: "uid" }, shortUid(agent.instance_uid)),
    ),
    h("td", {}, host || "—"),
    h("td", {}, type || "—"),
    h("td", { "data-col": "status" }, badge(agent.status)),
    h("td", {}, badge(health, agent.health ? health : "none")),
    h("td", {}, badge(sync.status || "none")),
    h("td", {}, time(agent.last_seen)),
    h("td", {}, [agent.node || "—", agent.transport ? ` (${agent.transport})` : ""]),
  );
}

function pager(params, nextCursor) {
  const back = params.getAll("back");
  const links = [];
  if (params.get("cursor")) {
    const prev = new URLSearchParams(params);
    prev.delete("back");
    back.slice(0, -1).forEach((c) => prev.append("back", c));
    const previous = back.at(-1);
    if (previous) prev.set("cursor", previous);
    else prev.delete("cursor");
    const first = new URLSearchParams(params);
    first.delete("back");
    first.delete("cursor");
    links.push(h("a", { href: `#/agents?${first}` }, "First page"), h("a", { href: `#/agents?${prev}`, rel: "prev" }, "Previous page"));
  }
  if (nextCursor) {
    const next = new URLSearchParams(params);
    if (params.get("cursor")) next.append("back", params.get("cursor"));
    next.set("cursor", nextCursor);
    links.push(h("a", { href: `#/agents?${next}`, rel: "next" }, "Next page"));
  }
  return h("nav", { class: "pager", "aria-label": "Pages" }, links);
}

export async function showAgents(view, ctx) {
  const [configs, packages] = await Promise.all([api("GET", "/api/v1/configs"), api("GET", "/api/v1/packages")]);
  view.append(
    h("h1", {}, "Agents"),
    filterForm(
      ctx.params,
      configs.configs.map((c) => c.name),
      packages.packages.map((p) => p.name),
    ),
  );
  const results = h("div", { id: "results" });
  view.append(results);
  let wanted;
  try {
    wanted = apiParams(ctx.params);
  } catch (exc) {
    if (!(exc instanceof FilterError)) throw exc;
    view.querySelector("#attr").setAttribute("aria-invalid", "true");
    results.append(h("p", { class: "error", role: "alert" }, exc.message));
    return;
  }
  const update = async () => {
    let page;
    try {
      page = await api("GET", `/api/v1/agents${query(wanted)}`);
    } catch (exc) {
      if (exc.status !== 400 && exc.status !== 404) throw exc;
      replace(results, h("p", { class: "error", role: "alert" }, exc.message));
      return;
    }
    if (!ctx.live()) return;
    const head = ["Agent", "Host", "Type and version", "Status", "Health", "Config", "Last seen", "Node (transport)"];
    refresh(
      results,
      page.agents.length
        ? h(
            "div",
            { class: "scroll" },
            table(`Agents (this page: ${page.agents.length}; in instance_uid order)`, head, page.agents.map(row), {
              class: "agents",
            }),
          )
        : h("p", { class: "empty" }, page.next_cursor ? "No agent on this page matches; try the next page." : "No agents match."),
      pager(ctx.params, page.next_cursor),
    );
  };
  await update();
  ctx.every(REFRESH_MS, update);
}
