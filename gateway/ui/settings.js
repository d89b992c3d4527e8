// Connection settings (docs/opamp.md §1.7): the list, and one form to create or edit a setting: its
// selector and priority, where agents send their own metrics, traces and logs, and named other
// connections, each with headers and TLS. The API's 400 errors are shown at the field they name
// ("own_metrics.destination_endpoint: ..." -> that input).
import { ApiError, api } from "./api.js";
import { announce, h, table } from "./dom.js";
import { FieldError, checkbox, clearErrors, deleteDialog, field, fieldOf, parsePriority, rowNamed, showError } from "./form.js";
import { readSelector, selectorFieldset, selectorInput, selectorSummary } from "./selector.js";

const BASE = "/api/v1/connection-settings";
const TELEMETRY = [
  ["own_metrics", "Own metrics"],
  ["own_traces", "Own traces"],
  ["own_logs", "Own logs"],
];

function resource(name) {
  return `${BASE}/${encodeURIComponent(name)}`;
}

function link(name) {
  return `#/connection-settings/${encodeURIComponent(name)}`;
}

function carries(s) {
  const items = TELEMETRY.filter(([kind]) => s[kind]).map(([kind, label]) =>
    h("li", { "data-part": kind }, `${label}: `, h("code", {}, s[kind].destination_endpoint)),
  );
  const others = Object.keys(s.other_connections || {});
  if (others.length) items.push(h("li", { "data-part": "other_connections" }, `Other connections: ${others.join(", ")}`));
  return h("ul", { class: "parts" }, items);
}

export async function showSettingsList(view) {
  const list = await api("GET", BASE);
  const rows = list.connection_settings.map((s) =>
    h(
      "tr",
      { "data-settings": s.name },
      h("th", { scope: "row" }, h("a", { href: link(s.name) }, s.name)),
      h("td", {}, selectorSummary(s.selector)),
      h("td", { class: "num" }, s.priority),
      h("td", {}, carries(s)),
      h("td", { class: "num" }, s.version),
      h("td", {}, h("code", { title: s.hash }, s.hash.slice(0, 12))),
    ),
  );
  view.append(
    h("h1", {}, "Connection settings"),
    h(
      "p",
      { class: "help" },
      "Where agents send their own telemetry, and their other connections. Of the settings whose selector matches an agent, the one with the highest priority (then the first name) gives each part.",
    ),
    h("p", {}, h("a", { href: "#/connection-settings/new", class: "button" }, "New connection settings")),
    rows.length
      ? table("Connection settings", ["Name", "Selector", "Priority", "Carries", "Version", "Hash"], rows, { class: "settings" })
      : h("p", {}, "No connection settings yet."),
  );
}

// Key/value rows (headers, other_settings): `kind` names the ids, `labels` the two inputs.
function pairList(prefix, kind, labels, values) {
  const list = h("div", { class: `pairs pairs-${kind}`, "data-next": 0 });
  const add = (key = "", value = "") => {
    const j = Number(list.dataset.next);
    list.dataset.next = j + 1;
    const id = `${prefix}-${kind}-${j}`;
    const row = h(
      "div",
      { class: "row pair" },
      field(`${id}-key`, labels[0], h("input", { id: `${id}-key`, class: "pair-key", value: key, autocomplete: "off" })),
      field(`${id}-value`, labels[1], h("input", { id: `${id}-value`, class: "pair-value", value, autocomplete: "off" })),
      h("button", { type: "button", class: "remove", onclick: () => row.remove() }, `Remove ${labels[0].toLowerCase()}`),
    );
    list.append(row);
  };
  for (const [key, value] of Object.entries(values || {})) add(key, value);
  const button = h("button", { type: "button", class: "remove", id: `${prefix}-add-${kind}`, onclick: () => add() }, `Add ${labels[0].toLowerCase()}`);
  return h("div", {}, list, button);
}

function tlsFields(prefix, tls) {
  const t = tls || {};
  return h(
    "details",
    { class: "tls", open: Boolean(tls), "data-set": tls ? "true" : null },
    h("summary", {}, "TLS"),
    field(`${prefix}-tls-ca`, "CA certificates (PEM)", h("textarea", { id: `${prefix}-tls-ca`, class: "tls-ca", rows: 3, spellcheck: "false" }, t.ca_pem_contents || "")),
    checkbox(`${prefix}-tls-system`, "Also trust the system's CA certificates", t.include_system_ca_certs_pool),
    checkbox(`${prefix}-tls-skip`, "Skip certificate verification (insecure)", t.insecure_skip_verify),
    h(
      "div",
      { class: "row" },
      field(`${prefix}-tls-min`, "Minimum TLS version", h("input", { id: `${prefix}-tls-min`, class: "tls-min", value: t.min_version || "", placeholder: "1.2" })),
      field(`${prefix}-tls-max`, "Maximum TLS version", h("input", { id: `${prefix}-tls-max`, class: "tls-max", value: t.max_version || "" })),
    ),
  );
}

// One destination; `other` adds its name and other_settings (an entry of other_connections).
function connectionFields(prefix, legend, conn, other) {
  const c = conn || {};
  return h(
    "fieldset",
    { class: other ? "connection other" : "connection", "data-prefix": prefix },
    h("legend", {}, legend),
    other ? field(`${prefix}-name`, "Connection name", h("input", { id: `${prefix}-name`, class: "other-name", value: other.name })) : "",
    field(
      `${prefix}-endpoint`,
      "Destination endpoint",
      h("input", { id: `${prefix}-endpoint`, class: "endpoint", type: "url", value: c.destination_endpoint || "", "aria-describedby": `${prefix}-endpoint-help` }),
      other ? "an http(s):// URL" : "a full OTLP/HTTP URL with its path (https:// recommended); empty: this part is not offered",
    ),
    h("h3", {}, "Headers"),
    pairList(prefix, "header", ["Header", "Value"], c.headers),
    other ? [h("h3", {}, "Other settings"), pairList(prefix, "setting", ["Setting", "Value"], c.other_settings)] : "",
    tlsFields(prefix, c.tls),
    other ? h("button", { type: "button", class: "remove", onclick: (e) => e.target.closest("fieldset").remove() }, "Remove connection") : "",
  );
}

function addOther(list, name = "", conn = null) {
  const n = Number(list.dataset.next);
  list.dataset.next = n + 1;
  list.append(connectionFields(`other-${n}`, `Other connection ${n + 1}`, conn, { name }));
}

function readPairs(box, kind, path) {
  const out = {};
  for (const row of box.querySelectorAll(`.pairs-${kind} .pair`)) {
    const keyInput = row.querySelector(".pair-key");
    const key = keyInput.value.trim();
    const value = row.querySelector(".pair-value").value;
    if (!key && !value) continue;
    if (!key) throw new FieldError(path, "a value needs a name", keyInput);
    if (key in out) throw new FieldError(`${path}.${key}`, "given twice", keyInput);
    out[key] = value;
  }
  return out;
}

function readTls(box) {
  const details = box.querySelector(".tls");
  const value = (cls) => details.querySelector(cls).value;
  const tls = {
    ca_pem_contents: value(".tls-ca").trim() ? value(".tls-ca") : "",
    include_system_ca_certs_pool: details.querySelector('[id$="-tls-system"]').checked,
    insecure_skip_verify: details.querySelector('[id$="-tls-skip"]').checked,
    min_version: value(".tls-min").trim(),
    max_version: value(".tls-max").trim(),
  };
  // Kept when the setting had TLS (an offer with default TLS is not one without) or any field is set.
  const set = details.dataset.set === "true" || Object.values(tls).some(Boolean);
  return set ? tls : null;
}

// One fieldset -> the API's connection object, or null when it is left empty.
function readConnection(box, path, other) {
  const endpoint = box.querySelector(".endpoint").value.trim();
  const headers = readPairs(box, "header", `${path}.headers`);
  const settings = other ? readPairs(box, "setting", `${path}.other_settings`) : {};
  const tls = readTls(box);
  if (!endpoint && !Object.keys(headers).length && !Object.keys(settings).length && !tls) return null;
  const conn = { destination_endpoint: endpoint };
  if (Object.keys(headers).length) conn.headers = headers;
  if (Object.keys(settings).length) conn.other_settings = settings;
  if (tls) conn.tls = tls;
  return conn;
}

function body(form) {
  const request = { selector: readSelector(form), priority: parsePriority(form) };
  for (const [kind] of TELEMETRY) {
    const conn = readConnection(form.querySelector(`[data-prefix="${kind}"]`), kind, false);
    if (conn) request[kind] = conn;
  }
  const others = {};
  for (const box of form.querySelectorAll(".connection.other")) {
    const nameInput = box.querySelector(".other-name");
    const name = nameInput.value.trim();
    const conn = readConnection(box, `other_connections.${name}`, true);
    if (!conn && !name) continue;
    if (!name) throw new FieldError("other_connections", "a connection needs a name", nameInput);
    if (name in others) throw new FieldError(`other_connections.${name}`, "given twice", nameInput);
    others[name] = conn || { destination_endpoint: "" };
  }
  if (Object.keys(others).length) request.other_connections = others;
  return request;
}

// In one connection's fieldset, the input a path's remainder names (".headers.Authorization").
function connectionInput(box, suffix, message) {
  const pair = /^\.(headers|other_settings)(?:\.(.+))?$/.exec(suffix);
  if (pair) {
    const kind = pair[1] === "headers" ? "header" : "setting";
    const rows = [...box.querySelectorAll(`.pairs-${kind} .pair`)];
    const row = pair[2] ? rows.find((r) => r.querySelector(".pair-key").value.trim() === pair[2]) : null;
    if (!row) return box.querySelector(`[id$="-add-${kind}"]`);
    // A bad name is the name's fault; anything else (length, line breaks) the value's.
    return /\bname\b/.test(message) ? row.querySelector(".pair-key") : row.querySelector(".pair-value");
  }
  const tls = { ".tls.include_system_ca_certs_pool": "-tls-system", ".tls.insecure_skip_verify": "-tls-skip", ".tls.min_version": ".tls-min", ".tls.max_version": ".tls-max" }[suffix];
  if (tls) {
    box.querySelector(".tls").open = true;
    return box.querySelector(tls.startsWith(".") ? tls : `[id$="${tls}"]`);
  }
  if (suffix.startsWith(".tls")) {
    box.querySelector(".tls").open = true;
    return box.querySelector(".tls-ca");
  }
  if (!suffix && box.querySelector(".other-name")) return box.querySelector(".other-name");
  return box.querySelector(".endpoint");
}

function inputFor(form, path, message) {
  if (path === "name") return form.querySelector("#name");
  if (path === "priority") return form.querySelector("#priority");
  const selector = selectorInput(form, path);
  if (selector !== undefined) return selector;
  for (const [kind] of TELEMETRY) {
    if (path === kind || path.startsWith(`${kind}.`)) {
      return connectionInput(form.querySelector(`[data-prefix="${kind}"]`), path.slice(kind.length), message);
    }
  }
  if (path.startsWith("other_connections.")) {
    const boxes = [...form.querySelectorAll(".connection.other")];
    const nameOf = (box) => box.querySelector(".other-name").value.trim();
    const rest = path.slice("other_connections.".length);
    const box = rowNamed(boxes, rest, nameOf);
    if (box) return connectionInput(box, rest.slice(nameOf(box).length), message);
  }
  if (path.startsWith("other_connections")) return form.querySelector("#add-other");
  return null;
}

function failed(form, exc) {
  if (exc instanceof FieldError) {
    showError(form, exc.input || inputFor(form, exc.field, exc.message), exc.message);
    return;
  }
  if (!(exc instanceof ApiError)) throw exc;
  const path = exc.status === 400 ? fieldOf(exc.message) : null;
  showError(form, path ? inputFor(form, path, exc.message) : null, exc.message);
}

// A PUT replaces whatever has the name: a new setting first makes sure there is none to replace.
async function refuseExisting(target) {
  try {
    await api("GET", resource(target));
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 404) return;
    throw exc;
  }
  throw new FieldError("name", `connection settings ${target} exist already: open them from the list to edit them`);
}

export async function showSettings(view, ctx) {
  const name = ctx.parts[1] === "new" ? null : ctx.parts[1];
  let settings = null;
  // Even a new setting's empty form asks the API first: without a valid token, sign-in comes first.
  if (!name) await api("GET", BASE);
  if (name) {
    try {
      settings = await api("GET", resource(name));
    } catch (exc) {
      if (!(exc instanceof ApiError) || exc.status !== 404) throw exc;
      view.append(h("h1", {}, "No such connection settings"), h("p", { role: "alert" }, exc.message), h("a", { href: "#/connection-settings" }, "All connection settings"));
      return;
    }
  }
  const s = settings || {};
  const others = h("div", { class: "others", "data-next": 0 });
  const form = h(
    "form",
    { class: "config-form settings-form", novalidate: true },
    field("name", "Name", h("input", { id: "name", value: name || "", readonly: Boolean(name), required: true, "aria-describedby": "name-help" }), "a-z, 0-9, '.', '_', '-'; cannot be changed later"),
    field("priority", "Priority", h("input", { id: "priority", inputmode: "numeric", value: settings ? settings.priority : 0, "aria-describedby": "priority-help" }), "higher wins when two settings give the same part"),
    selectorFieldset(s.selector, "which agents get these settings"),
    h("h2", {}, "Own telemetry"),
    h("p", { class: "help" }, "Only agents that report their own metrics, traces or logs (the capability) are offered the matching part."),
    TELEMETRY.map(([kind, label]) => connectionFields(kind, label, s[kind], null)),
    h("h2", {}, "Other connections"),
    others,
    h("button", { type: "button", id: "add-other", onclick: () => addOther(others) }, "Add other connection"),
    h("p", { id: "form-error", class: "error", role: "alert" }),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", id: "save" }, name ? "Save changes" : "Create connection settings"),
      name ? h("button", { type: "button", class: "danger", id: "delete" }, "Delete…") : "",
      h("a", { href: "#/connection-settings" }, "Cancel"),
    ),
  );
  for (const [otherName, conn] of Object.entries(s.other_connections || {})) addOther(others, otherName, conn);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const target = form.querySelector("#name").value.trim();
    try {
      const request = body(form);
      if (!name) await refuseExisting(target);
      await api("PUT", resource(target), request);
    } catch (exc) {
      failed(form, exc);
      return;
    }
    announce(`Connection settings ${target} saved.`);
    const next = link(target);
    // Saved in place: show the new version and hash.
    if (location.hash === next) window.dispatchEvent(new HashChangeEvent("hashchange"));
    else location.hash = next;
  });
  view.append(
    h("p", { class: "crumbs" }, h("a", { href: "#/connection-settings" }, "Connection settings"), " / ", name || "new"),
    h("h1", {}, name ? `Connection settings ${name}` : "New connection settings"),
  );
  if (settings) {
    view.append(
      h("p", { id: "settings-version" }, `Version ${settings.version}, updated `, h("time", { datetime: settings.updated_at }, settings.updated_at), ", hash ", h("code", {}, settings.hash)),
    );
    const dialog = deleteDialog({
      title: `Delete connection settings ${settings.name}?`,
      text: "They are no longer offered. Agents keep the settings they have applied until other settings point them elsewhere.",
      path: resource(settings.name),
      done: `Connection settings ${settings.name} deleted.`,
      back: "#/connection-settings",
    });
    view.append(dialog);
    form.querySelector("#delete").addEventListener("click", () => dialog.showModal());
  }
  view.append(form);
}
