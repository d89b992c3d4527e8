// What the editing forms (configs, connection settings, packages) share: labelled fields with an error slot,
// errors the form finds itself, the API's 400 messages put at the input their field path names, and
// the delete confirmation.
import { api } from "./api.js";
import { announce, h } from "./dom.js";

export function field(id, label, input, help) {
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    input,
    help ? h("span", { class: "help", id: `${id}-help` }, help) : "",
    h("span", { class: "error field-error", id: `${id}-error`, "aria-live": "polite" }),
  );
}

// A checkbox reads best with its label after it, on one line.
export function checkbox(id, label, checked) {
  return h(
    "div",
    { class: "field check" },
    h("label", {}, h("input", { id, type: "checkbox", checked: Boolean(checked) }), " ", label),
    h("span", { class: "error field-error", id: `${id}-error`, "aria-live": "polite" }),
  );
}

export function lines(text) {
  return text.split("\n").map((l) => l.trim()).filter(Boolean);
}

// A mistake the form finds before asking the API: `field` is the API's path for it; `input`, when
// given, is the exact input (a header row's name, which a path cannot tell from an empty one).
export class FieldError extends Error {
  constructor(field, problem, input = null) {
    super(`${field}: ${problem}`);
    this.field = field;
    this.input = input;
  }
}

export function parsePriority(form) {
  const text = form.querySelector("#priority").value.trim() || "0";
  if (!/^-?\d+$/.test(text)) throw new FieldError("priority", "must be a whole number");
  return Number(text);
}

export function clearErrors(form) {
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
  form.querySelector("#form-error").textContent = "";
}

// `input`: the one the message is about (its error slot is `<id>-error`), or null for the whole form.
export function showError(form, input, message) {
  const slot = input ? form.querySelector(`#${CSS.escape(input.id)}-error`) : null;
  if (input && slot) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", [`${input.id}-error`, input.getAttribute("aria-describedby")].filter(Boolean).join(" "));
    slot.textContent = message;
    input.focus();
  } else {
    form.querySelector("#form-error").textContent = message;
  }
  announce(message);
}

// "files.x.content_type: must be ..." -> "files.x.content_type"; a message that names no field -> null.
export function fieldOf(message) {
  const at = message.indexOf(": ");
  return at > 0 && !message.slice(0, at).includes(" ") ? message.slice(0, at) : null;
}

// Of the rows whose name (read by `nameOf`) a path `rest` starts with, the longest: names may hold
// dots, so "a.b.destination_endpoint" belongs to "a.b" rather than "a" when both exist.
export function rowNamed(rows, rest, nameOf) {
  let best = null;
  for (const row of rows) {
    const name = nameOf(row);
    if ((rest === name || rest.startsWith(`${name}.`)) && (!best || name.length > nameOf(best).length)) best = row;
  }
  return best;
}

// A modal confirmation; `path` is DELETEd on "Delete", then the browser goes to `back`.
export function deleteDialog({ title, text, path, done, back }) {
  const dialog = h(
    "dialog",
    { "aria-labelledby": "delete-title" },
    h("h2", { id: "delete-title" }, title),
    h("p", {}, text),
    h(
      "form",
      { method: "dialog" },
      h("button", { value: "cancel", autofocus: true }, "Cancel"),
      " ",
      h("button", { value: "delete", class: "danger", id: "confirm-delete" }, "Delete"),
    ),
  );
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "delete") return;
    try {
      await api("DELETE", path);
      announce(done);
      location.hash = back;
    } catch (exc) {
      document.getElementById("form-error").textContent = exc.message;
    }
  });
  return dialog;
}
