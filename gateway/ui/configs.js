// Configs: the list with rollout counts, and one form to create or edit a config, with the API's
// validation errors shown at the field they name ("files.x.content_type: ..." -> that input).
import { ApiError, api } from "./api.js";
import { announce, h, refresh, table } from "./dom.js";
import { FieldError, clearErrors, deleteDialog, field, fieldOf, parsePriority, showError } from "./form.js";
import { rolloutCells, ROLLOUT_STATES } from "./rollout.js";
import { readSelector, selectorFieldset, selectorInput } from "./selector.js";

const REFRESH_MS = 3000;

export async function showConfigs(view, ctx) {
  const body = h("div");
  view.append(h("h1", {}, "Configs"), h("p", {}, h("a", { href: "#/configs/new", class: "button" }, "New config")), body);
  const update = async () => {
    const list = await api("GET", "/api/v1/configs");
    const details = await Promise.all(list.configs.map((c) => api("GET", `/api/v1/configs/${encodeURIComponent(c.name)}`)));
    if (!ctx.live()) return;
    refresh(
      body,
      details.length
        ? table(
            "Configs and their rollout",
            ["Config", "Version", "Priority", "Matched", ...ROLLOUT_STATES, "Applied"],
            details.map((c) =>
              h(
                "tr",
                { "data-config": c.name },
                h("th", { scope: "row" }, h("a", { href: `#/configs/${encodeURIComponent(c.name)}` }, c.name)),
                h("td", { class: "num" }, c.version),
                h("td", { class: "num" }, c.priority),
                rolloutCells(c),
              ),
            ),
            { class: "rollout" },
          )
        : h("p", {}, "No configs yet."),
    );
  };
  await update();
  ctx.every(REFRESH_MS, update);
}

function fileRow(list, name = "", file = { content_type: "text/yaml", body: "" }) {
  const i = list.children.length;
  const binary = file.body_base64 !== undefined;
  const row = h(
    "fieldset",
    { class: "file-row", "data-base64": binary ? file.body_base64 : null },
    h("legend", {}, `File ${i + 1}`),
    field(`file-${i}-name`, "File name", h("input", { id: `file-${i}-name`, class: "file-name", value: name, required: true })),
    field(`file-${i}-type`, "Content type", h("input", { id: `file-${i}-type`, class: "file-type", value: file.content_type })),
    binary
      ? h("p", {}, "Binary file (kept as it is).")
      : field(`file-${i}-body`, "Body", h("textarea", { id: `file-${i}-body`, class: "file-body", rows: 10, spellcheck: "false" }, file.body)),
    h("button", { type: "button", class: "remove", onclick: () => row.remove() }, "Remove file"),
  );
  list.append(row);
}

// The form -> the API's JSON body; a line the API could not mean anything by is refused here.
function body(form, version) {
  const selector = readSelector(form);
  const files = {};
  for (const row of form.querySelectorAll(".file-row")) {
    const name = row.querySelector(".file-name").value;
    const type = row.querySelector(".file-type").value.trim();
    files[name] = row.dataset.base64 !== undefined
      ? { content_type: type, body_base64: row.dataset.base64 }
      : { content_type: type, body: row.querySelector(".file-body").value };
  }
  return { selector, priority: parsePriority(form), files, version };
}

// The input an error's field path names: "selector.expressions[1].values" -> expression 1's values.
function inputFor(form, path) {
  const byId = (id) => form.querySelector(`#${id}`);
  if (path === "name") return byId("name");
  if (path === "priority" || path === "version") return byId("priority");
  const selector = selectorInput(form, path);
  if (selector !== undefined) return selector;
  if (path.startsWith("files")) {
    const rows = [...form.querySelectorAll(".file-row")];
    const rest = path.slice("files.".length);
    const row = rows.find((r) => {
      const name = r.querySelector(".file-name").value;
      return rest === name || rest.startsWith(`${name}.`);
    });
    if (!row) return rows.length ? rows[0].querySelector(".file-name") : byId("add-file");
    const suffix = rest.slice(row.querySelector(".file-name").value.length);
    if (suffix === ".content_type") return row.querySelector(".file-type");
    if (suffix.startsWith(".body")) return row.querySelector(".file-body") || row.querySelector(".file-type");
    return row.querySelector(".file-name");
  }
  return null;
}

export async function showConfig(view, ctx) {
  const name = ctx.parts[1] === "new" ? null : ctx.parts[1];
  let config = null;
  // Even a new config's empty form asks the API first: without a valid token, sign-in comes first.
  if (!name) await api("GET", "/api/v1/configs");
  if (name) {
    try {
      config = await api("GET", `/api/v1/configs/${encodeURIComponent(name)}`);
    } catch (exc) {
      if (!(exc instanceof ApiError) || exc.status !== 404) throw exc;
      view.append(h("h1", {}, "No such config"), h("p", { role: "alert" }, exc.message), h("a", { href: "#/configs" }, "All configs"));
      return;
    }
  }
  const files = h("div", { class: "files" });
  const form = h(
    "form",
    { class: "config-form", novalidate: true },
    field("name", "Name", h("input", { id: "name", value: name || "", readonly: Boolean(name), required: true, "aria-describedby": "name-help" }), "a-z, 0-9, '.', '_', '-'; cannot be changed later"),
    field("priority", "Priority", h("input", { id: "priority", inputmode: "numeric", value: config ? config.priority : 0, "aria-describedby": "priority-help" }), "higher wins when two configs give a file of the same name"),
    selectorFieldset(config && config.selector, "which agents get this config"),
    h("h2", {}, "Files"),
    files,
    h("button", { type: "button", id: "add-file", onclick: () => fileRow(files) }, "Add file"),
    h("p", { id: "form-error", class: "error", role: "alert" }),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "save" }, name ? "Save changes" : "Create config"), name ? h("button", { type: "button", class: "danger", id: "delete" }, "Delete…") : "", h("a", { href: "#/configs" }, "Cancel")),
  );
  const fileEntries = config ? Object.entries(config.files) : [["collector.yaml", { content_type: "text/yaml", body: "" }]];
  for (const [fileName, file] of fileEntries) fileRow(files, fileName, file);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const target = form.querySelector("#name").value.trim();
    let request;
    try {
      request = body(form, config ? config.version : 0);
      // The form does not edit the rollout strategy: keep the config's (the API ignores the counts).
      if (config && config.rollout) request.rollout = config.rollout;
    } catch (exc) {
      if (!(exc instanceof FieldError)) throw exc;
      showError(form, inputFor(form, exc.field), exc.message);
      return;
    }
    try {
      await api("PUT", `/api/v1/configs/${encodeURIComponent(target)}`, request);
    } catch (exc) {
      if (!(exc instanceof ApiError)) throw exc;
      const path = exc.status === 400 ? fieldOf(exc.message) : null;
      showError(form, path ? inputFor(form, path) : null, exc.message);
      return;
    }
    announce(`Config ${target} saved.`);
    const next = `#/configs/${encodeURIComponent(target)}`;
    // Saved in place: show the new version (the next save must name it) and its rollout.
    if (location.hash === next) window.dispatchEvent(new HashChangeEvent("hashchange"));
    else location.hash = next;
  });
  view.append(h("p", { class: "crumbs" }, h("a", { href: "#/configs" }, "Configs"), " / ", name || "new"), h("h1", {}, name ? `Config ${name}` : "New config"));
  if (config) {
    const rollout = h("div", { id: "rollout" });
    const paint = (c) =>
      refresh(
        rollout,
        h("p", {}, `Version ${c.version}, updated `, h("time", { datetime: c.updated_at }, c.updated_at)),
        table("Rollout", ["Matched", ...ROLLOUT_STATES, "Applied"], [h("tr", { "data-config": c.name }, rolloutCells(c))], { class: "rollout" }),
      );
    paint(config);
    view.append(rollout);
    ctx.every(REFRESH_MS, async () => {
      const fresh = await api("GET", `/api/v1/configs/${encodeURIComponent(name)}`);
      if (ctx.live()) paint(fresh);
    });
    const dialog = deleteDialog({
      title: `Delete config ${config.name}?`,
      text: "Agents it matched stop receiving its files with their next config update.",
      path: `/api/v1/configs/${encodeURIComponent(config.name)}?version=${config.version}`,
      done: `Config ${config.name} deleted.`,
      back: "#/configs",
    });
    view.append(dialog);
    form.querySelector("#delete").addEventListener("click", () => dialog.showModal());
  }
  view.append(form);
}
