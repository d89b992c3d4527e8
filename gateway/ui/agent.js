// One agent: identity, connection, health tree, config state, connection settings state, effective
// config text, restart.
import { ApiError, api } from "./api.js";
import { announce, attr, badge, dl, h, refresh, replace, table, time } from "./dom.js";

const REFRESH_MS = 5000;
const RESTART = "AcceptsRestartCommand";

function uidLink(uid) {
  return h("a", { href: `#/agents/${uid}`, class: "uid" }, uid);
}

function attributes(caption, values) {
  const entries = Object.entries(values || {});
  if (!entries.length) return h("p", {}, `${caption}: none reported.`);
  return table(
    caption,
    ["Key", "Value"],
    entries.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, typeof v === "string" ? v : JSON.stringify(v)))),
    { class: "kv" },
  );
}

function healthNode(name, health) {
  const children = Object.entries(health.components || {});
  return h(
    "li",
    { "data-component": name },
    h("span", { class: "component" }, name),
    " ",
    badge(health.healthy ? "healthy" : "unhealthy"),
    health.status ? ` ${health.status}` : "",
    health.last_error ? h("span", { class: "error" }, ` last error: ${health.last_error}`) : "",
    children.length ? h("ul", {}, children.map(([child, value]) => healthNode(child, value))) : "",
  );
}

function healthTree(health) {
  if (!health) return h("p", {}, "This agent does not report its health.");
  return h("ul", { class: "tree", "aria-label": "Health by component" }, healthNode("agent", health));
}

function effectiveConfig(config) {
  if (!config) return h("p", {}, "This agent has not reported an effective config.");
  const files = Object.entries(config.files);
  if (!files.length) return h("p", {}, "The effective config has no files.");
  return h(
    "div",
    {},
    h("p", { class: "help" }, "SHA-256 ", h("code", {}, config.hash)),
    files.map(([name, file]) =>
      h(
        "details",
        { open: true, class: "file", "data-file": name },
        h("summary", {}, name || "(unnamed file)", " ", h("span", { class: "help" }, file.content_type || "no content type")),
        file.encoding === "base64"
          ? h("p", {}, "Binary content (base64):")
          : "",
        h("pre", { tabindex: 0 }, h("code", {}, file.body)),
      ),
    ),
  );
}

function configState(agent) {
  const sync = agent.config_sync || {};
  const remote = agent.remote_config;
  const configs = (sync.configs || []).map((name, i) => [i ? ", " : "", h("a", { href: `#/configs/${encodeURIComponent(name)}` }, name)]);
  return dl([
    ["Config status", badge(sync.status || "none")],
    ["Desired config", configs.length ? configs : "none (no config's selector matches this agent)"],
    ["Desired hash", sync.desired_hash ? h("code", {}, sync.desired_hash) : "—"],
    ["Reported status", remote ? badge(remote.status, remote.status.toLowerCase()) : "not reported"],
    ["Reported hash", remote && remote.last_remote_config_hash ? h("code", {}, remote.last_remote_config_hash) : "—"],
    ["Agent's error", remote && remote.error_message ? h("span", { class: "error" }, remote.error_message) : "—"],
  ]);
}

const SETTINGS_CAPABILITY = "ReportsConnectionSettingsStatus";

// The agent's last connection_settings_status beside the offer it last got (docs/opamp.md §1.7).
function settingsState(agent) {
  const cs = agent.connection_settings;
  if (!cs) {
    const can = (agent.capabilities || []).includes(SETTINGS_CAPABILITY);
    return h(
      "div",
      {},
      h(
        "p",
        { id: "settings-state" },
        can
          ? "This agent has not reported a connection settings status yet."
          : `This agent does not report its connection settings status (no ${SETTINGS_CAPABILITY} capability).`,
      ),
      settingsSources(agent),
    );
  }
  const reported = cs.last_connection_settings_hash;
  const offered = cs.offered_hash;
  let step = "no offer recorded for this agent";
  if (offered) {
    step = reported === offered ? "yes: the agent reports the offer it last got" : "no: the agent reports another hash (still applying, failed, or an older offer)";
  }
  return h(
    "div",
    { id: "settings-state" },
    dl([
      ["Settings status", badge(cs.status, cs.status.toLowerCase())],
      ["Reported hash", reported ? h("code", {}, reported) : "—"],
      ["Offered hash", offered ? h("code", {}, offered) : "—"],
      ["In step with the offer", step],
      ["Agent's error", cs.error_message ? h("span", { class: "error" }, cs.error_message) : "—"],
    ]),
    settingsSources(agent),
  );
}

// Which stored connection settings give each part this agent takes (the API's
// connection_settings_sources, absent when none are stored).
function settingsSources(agent) {
  const sources = agent.connection_settings_sources;
  if (!sources) return "";
  const link = (name) => h("a", { href: `#/connection-settings/${encodeURIComponent(name)}` }, name);
  const rows = [];
  for (const [part, label] of [["own_metrics", "Own metrics"], ["own_traces", "Own traces"], ["own_logs", "Own logs"]]) {
    if (sources[part]) rows.push([label, link(sources[part])]);
  }
  for (const [name, source] of Object.entries(sources.other_connections || {})) rows.push([`Other connection ${name}`, link(source)]);
  if (!rows.length) return h("p", { id: "settings-sources" }, "No connection settings apply to this agent (its selectors or capabilities).");
  return h("div", { id: "settings-sources" }, h("h3", {}, "Offered from"), dl(rows));
}

function packageState(agent) {
  const sync = agent.package_sync;
  const reported = agent.packages ? agent.packages.packages : {};
  const names = [...new Set([...Object.keys((sync && sync.packages) || {}), ...Object.keys(reported)])].sort();
  if (!names.length) return h("p", {}, "No package applies to this agent, and it reports none.");
  return table(
    "Packages: what the agent should have, and what it reports",
    ["Package", "Should have", "Status", "Reported", "Has", "Download", "Agent's error"],
    names.map((name) => {
      const want = sync && sync.packages[name];
      const got = reported[name];
      return h(
        "tr",
        { "data-package": name },
        h("th", { scope: "row" }, name),
        h("td", {}, want ? [h("a", { href: `#/packages/${encodeURIComponent(want.package)}` }, want.package), ` ${want.version}`] : "—"),
        h("td", {}, want ? badge(want.status) : "—"),
        h("td", {}, got ? badge(got.status, got.status.toLowerCase()) : "not reported"),
        h("td", {}, got && got.agent_has_version ? got.agent_has_version : "—"),
        h("td", {}, got && got.status === "DOWNLOADING" ? `${got.download_percent}%` : "—"),
        h("td", {}, got && got.error_message ? h("span", { class: "error" }, got.error_message) : "—"),
      );
    }),
    { class: "packages" },
  );
}

function relations(agent) {
  const items = [];
  if (agent.moved_from) items.push(h("li", {}, "You followed the old uid ", h("code", {}, agent.moved_from), "; this is its new uid."));
  const duplicateOf = [].concat(agent.duplicate_of || []);
  for (const uid of duplicateOf) items.push(h("li", {}, "Duplicate of ", uidLink(uid)));
  for (const uid of agent.previous_instance_uids || []) items.push(h("li", {}, "Previously ", uidLink(uid)));
  return items.length ? h("ul", { class: "relations" }, items) : h("p", {}, "No previous uids, no duplicate.");
}

function restartControl(agent) {
  const can = (agent.capabilities || []).includes(RESTART);
  const result = h("p", { id: "restart-result", role: "status" });
  const reason = can
    ? "Sends the agent a restart command: pushed over its WebSocket, or on its next poll."
    : `Disabled: this agent does not report the ${RESTART} capability, so it cannot be restarted.`;
  const button = h(
    "button",
    { type: "button", id: "restart", disabled: !can, "aria-describedby": "restart-reason" },
    "Restart",
  );
  button.addEventListener("click", async () => {
    button.disabled = true;
    result.textContent = "Sending…";
    try {
      const sent = await api("POST", `/api/v1/agents/${agent.instance_uid}/restart`, {});
      result.textContent =
        sent.delivery !== "pending"
          ? `Restart sent to the agent${sent.node ? ` through node ${sent.node}` : ""}.`
          : `Restart queued (${sent.delivery}): the agent gets it with its next message.`;
    } catch (exc) {
      result.textContent = exc instanceof ApiError ? `Not sent: ${exc.message}` : String(exc);
      result.className = "error";
    } finally {
      button.disabled = false;
      announce(result.textContent);
    }
  });
  return h("div", { class: "restart" }, button, h("p", { id: "restart-reason", class: "help" }, reason), result);
}

function summary(agent) {
  return dl([
    ["Status", h("span", { id: "agent-status" }, badge(agent.status))],
    ["instance_uid", h("code", {}, agent.instance_uid)],
    ["Connected", agent.connected === undefined ? "—" : agent.connected ? "yes" : "no"],
    ["Node", agent.node || "—"],
    ["Transport", agent.transport || "—"],
    ["Agent key", agent.key_id ? h("code", { id: "agent-key-id" }, agent.key_id) : "none"],
    ["Last seen", time(agent.last_seen)],
    ["Enrolled", time(agent.enrolled_at)],
    ["Sequence number", agent.sequence_num],
    ["Pending command", agent.pending_command || "none"],
  ]);
}

function render(agent) {
  const name = attr(agent, "host.name") || attr(agent, "service.name") || agent.instance_uid;
  return [
    h("h1", {}, name),
    h(
      "div",
      { class: "grid" },
      h("section", { "aria-labelledby": "h-conn" }, h("h2", { id: "h-conn" }, "Connection"), summary(agent), restartControl(agent)),
      h("section", { "aria-labelledby": "h-health" }, h("h2", { id: "h-health" }, "Health"), healthTree(agent.health)),
    ),
    h("section", { "aria-labelledby": "h-config" }, h("h2", { id: "h-config" }, "Remote config"), configState(agent)),
    h("section", { "aria-labelledby": "h-settings" }, h("h2", { id: "h-settings" }, "Connection settings"), settingsState(agent)),
    h("section", { "aria-labelledby": "h-packages" }, h("h2", { id: "h-packages" }, "Packages"), h("div", { class: "scroll" }, packageState(agent))),
    h(
      "section",
      { "aria-labelledby": "h-effective" },
      h("h2", { id: "h-effective" }, "Effective config"),
      effectiveConfig(agent.effective_config),
    ),
    h(
      "div",
      { class: "grid" },
      h(
        "section",
        { "aria-labelledby": "h-attrs" },
        h("h2", { id: "h-attrs" }, "Attributes"),
        attributes("Identifying attributes", agent.description.identifying_attributes),
        attributes("Non-identifying attributes", agent.description.non_identifying_attributes),
      ),
      h(
        "section",
        { "aria-labelledby": "h-caps" },
        h("h2", { id: "h-caps" }, "Capabilities"),
        h("ul", { class: "caps" }, (agent.capabilities || []).map((c) => h("li", {}, c))),
        h("h2", {}, "Previous uids and duplicates"),
        relations(agent),
      ),
    ),
  ];
}

export async function showAgent(view, ctx) {
  const uid = ctx.parts[1];
  const path = `/api/v1/agents/${encodeURIComponent(uid)}`;
  let agent;
  try {
    agent = await api("GET", path);
  } catch (exc) {
    if (!(exc instanceof ApiError) || exc.status !== 404) throw exc;
    view.append(h("h1", {}, "No such agent"), h("p", { role: "alert" }, exc.message), h("a", { href: "#/agents" }, "All agents"));
    return;
  }
  const body = h("div");
  replace(body, render(agent));
  view.append(h("p", { class: "crumbs" }, h("a", { href: "#/agents" }, "Agents"), " / ", uid), body);
  // Live status: the parts that change (status, connection, health, config) are re-rendered; the
  // open/closed state of the file viewers and the restart result are kept.
  ctx.every(REFRESH_MS, async () => {
    const fresh = await api("GET", path);
    if (!ctx.live()) return;
    const result = body.querySelector("#restart-result");
    const closed = [...body.querySelectorAll("details.file:not([open])")].map((d) => d.dataset.file);
    refresh(body, render(fresh));
    if (result && result.textContent) body.querySelector("#restart-result").replaceWith(result);
    for (const d of body.querySelectorAll("details.file")) if (closed.includes(d.dataset.file)) d.open = false;
  });
}
