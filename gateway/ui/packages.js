// Packages: the list with the counts of their agents by package status, and one page per package: a
// form to create or edit it (the API's validation errors shown at the field they name), its counts,
// and its staged rollout with pause, resume and roll back.
import { ApiError, api } from "./api.js";
import { announce, dl, h, refresh, table, time } from "./dom.js";
import { FieldError, clearErrors, deleteDialog, field, fieldOf, lines, parsePriority, showError } from "./form.js";

const REFRESH_MS = 3000;
export const PACKAGE_STATES = ["installed", "installing", "failed", "pending", "unsupported"];

function agentsLink(name, state) {
  const params = new URLSearchParams({ package: name });
  if (state) params.set("package_status", state);
  return `#/agents?${params}`;
}

function countCells(p) {
  const r = p.rollout || { matched: 0 };
  return [
    h("td", { class: "num", "data-state": "matched" }, h("a", { href: agentsLink(p.name) }, r.matched)),
    PACKAGE_STATES.map((state) =>
      h(
        "td",
        { class: "num", "data-state": state },
        h("a", { href: agentsLink(p.name, state), "aria-label": `${r[state] || 0} ${state}` }, r[state] || 0),
      ),
    ),
    h(
      "td",
      { class: "bar" },
      h("progress", {
        max: Math.max(r.matched, 1),
        value: r.installed || 0,
        "aria-label": `${p.name}: ${r.installed || 0} of ${r.matched} agents installed`,
      }),
    ),
  ];
}

function path(name) {
  return `/api/v1/packages/${encodeURIComponent(name)}`;
}

export async function showPackages(view, ctx) {
  const body = h("div");
  view.append(
    h("h1", {}, "Packages"),
    h(
      "p",
      { class: "help" },
      "Collector builds and add-ons agents download from your artifact repository; the gateway stores only their URL, SHA-256 and signature.",
    ),
    h("p", {}, h("a", { href: "#/packages/new", class: "button" }, "New package")),
    body,
  );
  const update = async () => {
    const list = await api("GET", "/api/v1/packages");
    const details = await Promise.all(list.packages.map((p) => api("GET", path(p.name))));
    if (!ctx.live()) return;
    refresh(
      body,
      details.length
        ? table(
            "Packages and their agents",
            ["Package", "Offered as", "Version", "Revision", "Priority", "Matched", ...PACKAGE_STATES, "Installed"],
            details.map((p) =>
              h(
                "tr",
                { "data-package": p.name },
                h("th", { scope: "row" }, h("a", { href: `#/packages/${encodeURIComponent(p.name)}` }, p.name)),
                h("td", {}, `${p.package_name} (${p.type === "addon" ? "add-on" : "top level"})`),
                h("td", {}, p.version),
                h("td", { class: "num" }, p.revision),
                h("td", { class: "num" }, p.priority),
                countCells(p),
              ),
            ),
            { class: "rollout" },
          )
        : h("p", {}, "No packages yet."),
    );
  };
  await update();
  ctx.every(REFRESH_MS, update);
}

function pairs(form, id, separator, field) {
  const out = {};
  for (const line of lines(form.querySelector(`#${id}`).value)) {
    const at = line.indexOf(separator);
    if (at < 1) throw new FieldError(field, `"${line}" is not name${separator}value`);
    out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return out;
}

// The form -> the API's JSON body. What the form does not edit (selector expressions, the rollout
// strategy) is kept from the package as loaded.
function body(form, loaded) {
  const value = (id) => form.querySelector(`#${id}`).value.trim();
  const file = { download_url: value("download-url"), content_hash: value("content-hash") };
  if (value("signature")) file.signature = value("signature");
  const headers = pairs(form, "headers", ":", "file.headers");
  if (Object.keys(headers).length) file.headers = headers;
  const selector = { match: pairs(form, "match", "=", "selector.match") };
  if (loaded && loaded.selector.expressions) selector.expressions = loaded.selector.expressions;
  const uids = lines(form.querySelector("#uids").value);
  if (uids.length) selector.instance_uids = uids;
  const request = {
    type: form.querySelector("#type").value,
    version: value("version"),
    file,
    selector,
    priority: parsePriority(form),
    revision: loaded ? loaded.revision : 0,
  };
  if (value("package-name")) request.package_name = value("package-name");
  if (loaded && loaded.rollout) request.rollout = loaded.rollout;
  return request;
}

const INPUTS = [
  ["name", "name"],
  ["type", "type"],
  ["version", "version"],
  ["file.download_url", "download-url"],
  ["file.content_hash", "content-hash"],
  ["file.signature", "signature"],
  ["file.headers", "headers"],
  ["file", "download-url"],
  ["selector.match", "match"],
  ["selector.instance_uids", "uids"],
  ["selector", "match"],
  ["priority", "priority"],
  ["revision", "priority"],
  ["package_name", "package-name"],
];

// The input an API field path names (the longest prefix in INPUTS), or null for the whole form.
function inputFor(form, path) {
  const found = path ? INPUTS.find(([prefix]) => path === prefix || path.startsWith(`${prefix}.`) || path.startsWith(`${prefix}[`)) : null;
  return found ? form.querySelector(`#${found[1]}`) : null;
}

function packageForm(name, p) {
  const file = p ? p.file : {};
  const text = (id, label, value, help, attrs = {}) => field(id, label, h("input", { id, value: value ?? "", ...attrs }), help);
  const form = h(
    "form",
    { class: "config-form", novalidate: true },
    text("name", "Name", name, "a-z, 0-9, '.', '_', '-'; cannot be changed later", { readonly: Boolean(name), required: true }),
    field(
      "type",
      "Type",
      h(
        "select",
        { id: "type" },
        h("option", { value: "top_level", selected: !p || p.type === "top_level" }, "top level (the agent itself)"),
        h("option", { value: "addon", selected: Boolean(p) && p.type === "addon" }, "add-on"),
      ),
    ),
    text("version", "Version", p && p.version, "the package's own version, e.g. 0.121.0", { required: true }),
    h(
      "fieldset",
      {},
      h("legend", {}, "File: where agents download it"),
      text("download-url", "Download URL", file.download_url, "https:// on your artifact repository", { required: true, type: "url" }),
      text("content-hash", "SHA-256 of the file", file.content_hash, "64 hex digits (sha256sum)", { required: true, spellcheck: "false" }),
      field("signature", "Signature (base64, optional)", h("textarea", { id: "signature", rows: 3, spellcheck: "false" }, file.signature || "")),
      field(
        "headers",
        "Download headers (one Name: value per line, optional)",
        h("textarea", { id: "headers", rows: 2, spellcheck: "false" }, Object.entries(file.headers || {}).map(([k, v]) => `${k}: ${v}`).join("\n")),
      ),
    ),
    h(
      "fieldset",
      {},
      h("legend", {}, "Selector: which agents get this package"),
      field(
        "match",
        "Match (one key=value per line)",
        h("textarea", { id: "match", rows: 3 }, p ? Object.entries(p.selector.match || {}).map(([k, v]) => `${k}=${v}`).join("\n") : ""),
        "every line must hold; an empty selector matches no agent",
      ),
      field("uids", "Instance uids (one per line)", h("textarea", { id: "uids", rows: 2 }, p ? (p.selector.instance_uids || []).join("\n") : "")),
    ),
    text("priority", "Priority", p ? p.priority : 0, "higher wins among packages offered under the same name", { inputmode: "numeric" }),
    text("package-name", "Offered as (package name)", p ? p.package_name : "", "default: the name above"),
    h("p", { id: "form-error", class: "error", role: "alert" }),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", id: "save" }, name ? "Save changes" : "Create package"),
      name ? h("button", { type: "button", class: "danger", id: "delete" }, "Delete…") : "",
      h("a", { href: "#/packages" }, "Cancel"),
    ),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const target = form.querySelector("#name").value.trim();
    let request;
    try {
      request = body(form, p);
    } catch (exc) {
      if (!(exc instanceof FieldError)) throw exc;
      showError(form, inputFor(form, exc.field), exc.message);
      return;
    }
    try {
      await api("PUT", path(target), request);
    } catch (exc) {
      if (!(exc instanceof ApiError)) throw exc;
      showError(form, exc.status === 400 ? inputFor(form, fieldOf(exc.message)) : null, exc.message);
      return;
    }
    announce(`Package ${target} saved.`);
    const next = `#/packages/${encodeURIComponent(target)}`;
    if (location.hash === next) window.dispatchEvent(new HashChangeEvent("hashchange"));
    else location.hash = next;
  });
  return form;
}

function rolloutView(name, rollout) {
  if (!rollout) return h("p", { id: "rollout-state" }, "No staged rollout of this revision: every agent it matches is offered it at once.");
  const act = (action, label, enabled) =>
    h(
      "button",
      {
        type: "button",
        id: `rollout-${action}`,
        disabled: !enabled,
        onclick: async (event) => {
          event.target.disabled = true;
          try {
            await api("POST", `${path(name)}/rollout/${action}`, {});
            announce(`Rollout ${action}: done.`);
          } catch (exc) {
            announce(exc.message);
          }
        },
      },
      label,
    );
  return h(
    "div",
    {},
    dl([
      ["State", h("span", { id: "rollout-state" }, rollout.state)],
      ["Revision", `${rollout.revision} (agents outside the waves keep ${rollout.previous_revision ?? "nothing"})`],
      ["Wave", `${rollout.wave + 1} of ${rollout.waves.length}`],
      ["In the waves so far", `${rollout.in_wave} of ${rollout.targeted}: ${rollout.applied} installed, ${rollout.applying} installing, ${rollout.failed} failed, ${rollout.pending} pending`],
      ["Updated", time(rollout.updated_at)],
    ]),
    h(
      "div",
      { class: "actions" },
      act("pause", "Pause", rollout.state === "progressing"),
      act("resume", "Resume", rollout.state === "paused"),
      act("rollback", "Roll back", !["rolled_back", "halted"].includes(rollout.state) && rollout.previous_revision !== null),
    ),
    table(
      "Rollout events",
      ["At", "State", "Wave", "Reason"],
      rollout.events.map((e) => h("tr", {}, h("td", {}, time(e.at)), h("td", {}, e.state), h("td", { class: "num" }, e.wave + 1), h("td", {}, e.reason))),
      { class: "events" },
    ),
  );
}

async function rolloutOf(name) {
  try {
    return await api("GET", `${path(name)}/rollout`);
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 404) return null;
    throw exc;
  }
}

export async function showPackage(view, ctx) {
  const name = ctx.parts[1] === "new" ? null : ctx.parts[1];
  let p = null;
  // Even a new package's empty form asks the API first: without a valid token, sign-in comes first.
  if (!name) await api("GET", "/api/v1/packages");
  if (name) {
    try {
      p = await api("GET", path(name));
    } catch (exc) {
      if (!(exc instanceof ApiError) || exc.status !== 404) throw exc;
      view.append(h("h1", {}, "No such package"), h("p", { role: "alert" }, exc.message), h("a", { href: "#/packages" }, "All packages"));
      return;
    }
  }
  view.append(h("p", { class: "crumbs" }, h("a", { href: "#/packages" }, "Packages"), " / ", name || "new"), h("h1", {}, name ? `Package ${name}` : "New package"));
  const form = packageForm(name, p);
  if (p) {
    const status = h("div", { id: "package-status" });
    const paint = (fresh, rollout) =>
      refresh(
        status,
        h("p", {}, `Revision ${fresh.revision} (version ${fresh.version}), updated `, time(fresh.updated_at)),
        table("Agents", ["Matched", ...PACKAGE_STATES, "Installed"], [h("tr", { "data-package": fresh.name }, countCells(fresh))], { class: "rollout" }),
        h("h2", {}, "Rollout"),
        rolloutView(fresh.name, rollout),
      );
    paint(p, await rolloutOf(name));
    view.append(status);
    ctx.every(REFRESH_MS, async () => {
      const [fresh, rollout] = await Promise.all([api("GET", path(name)), rolloutOf(name)]);
      if (ctx.live()) paint(fresh, rollout);
    });
    const dialog = deleteDialog({
      title: `Delete package ${p.name}?`,
      text: "Agents that got it are offered their packages without it, and remove it.",
      path: `${path(p.name)}?revision=${p.revision}`,
      done: `Package ${p.name} deleted.`,
      back: "#/packages",
    });
    view.append(dialog);
    form.querySelector("#delete").addEventListener("click", () => dialog.showModal());
  }
  view.append(h("h2", {}, name ? "Edit" : "Package"), form);
}
