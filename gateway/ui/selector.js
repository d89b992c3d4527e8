// The selector editor the configs and connection-settings forms share: `match` lines, expressions,
// instance uids; reading it back as the API's JSON; the input a "selector..." error path names; and
// a one-line summary for tables.
import { h } from "./dom.js";
import { FieldError, field, lines } from "./form.js";

const OPERATORS = ["In", "NotIn", "Exists", "DoesNotExist"];

function expressionRow(list, expr = { key: "", operator: "In", values: [] }) {
  const i = list.children.length;
  const row = h(
    "div",
    { class: "row expression" },
    field(`expr-${i}-key`, "Key", h("input", { id: `expr-${i}-key`, class: "expr-key", value: expr.key })),
    field(
      `expr-${i}-op`,
      "Operator",
      h("select", { id: `expr-${i}-op`, class: "expr-op" }, OPERATORS.map((o) => h("option", { selected: o === expr.operator }, o))),
    ),
    field(`expr-${i}-values`, "Values (comma-separated)", h("input", { id: `expr-${i}-values`, class: "expr-values", value: (expr.values || []).join(", ") })),
    h("button", { type: "button", class: "remove", onclick: () => row.remove() }, "Remove expression"),
  );
  list.append(row);
}

// `what`: the legend's end, e.g. "which agents get this config".
export function selectorFieldset(selector, what) {
  const s = selector || {};
  const expressions = h("div", { class: "expressions" });
  for (const expr of s.expressions || []) expressionRow(expressions, expr);
  return h(
    "fieldset",
    {},
    h("legend", {}, `Selector: ${what}`),
    field(
      "match",
      "Match (one key=value per line)",
      h("textarea", { id: "match", rows: 3, "aria-describedby": "match-help" }, Object.entries(s.match || {}).map(([k, v]) => `${k}=${v}`).join("\n")),
      "every line must hold; an empty selector matches no agent",
    ),
    h("h3", {}, "Expressions"),
    expressions,
    h("button", { type: "button", id: "add-expression", onclick: () => expressionRow(expressions) }, "Add expression"),
    field("uids", "Instance uids (one per line)", h("textarea", { id: "uids", rows: 2 }, (s.instance_uids || []).join("\n"))),
  );
}

// The editor -> the API's selector; a line the API could not mean anything by is refused here.
export function readSelector(form) {
  const match = {};
  for (const line of lines(form.querySelector("#match").value)) {
    const at = line.indexOf("=");
    if (at < 1) throw new FieldError("selector.match", `"${line}" is not key=value`);
    match[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  const expressions = [...form.querySelectorAll(".expression")].map((row) => {
    const operator = row.querySelector(".expr-op").value;
    const expr = { key: row.querySelector(".expr-key").value.trim(), operator };
    if (operator === "In" || operator === "NotIn") {
      expr.values = row.querySelector(".expr-values").value.split(",").map((v) => v.trim()).filter(Boolean);
    }
    return expr;
  });
  const selector = { match, expressions };
  const uids = lines(form.querySelector("#uids").value);
  if (uids.length) selector.instance_uids = uids;
  return selector;
}

// The input a selector error path names ("selector.expressions[1].values" -> expression 1's
// values), or undefined when `path` is not about the selector.
export function selectorInput(form, path) {
  if (path.startsWith("selector.match") || path === "selector") return form.querySelector("#match");
  if (path.startsWith("selector.instance_uids")) return form.querySelector("#uids");
  const expr = /^selector\.expressions\[(\d+)\](?:\.(\w+))?/.exec(path);
  if (expr) {
    const row = form.querySelectorAll(".expression")[Number(expr[1])];
    const part = { operator: ".expr-op", values: ".expr-values" }[expr[2]] || ".expr-key";
    return row ? row.querySelector(part) : form.querySelector("#add-expression");
  }
  if (path.startsWith("selector.expressions")) return form.querySelector("#add-expression");
  return undefined;
}

// "service.name=otelcol-contrib, os.type In (linux, darwin); or 2 instance uids"; "no agent" for {}.
export function selectorSummary(selector) {
  const s = selector || {};
  const parts = Object.entries(s.match || {}).map(([k, v]) => `${k}=${v}`);
  for (const e of s.expressions || []) {
    parts.push(e.values && e.values.length ? `${e.key} ${e.operator} (${e.values.join(", ")})` : `${e.key} ${e.operator}`);
  }
  const count = (s.instance_uids || []).length;
  const uids = count === 1 ? "1 instance uid" : `${count} instance uids`;
  // An agent named by its uid matches whatever its attributes are.
  if (!parts.length) return count ? uids : "no agent";
  return count ? `${parts.join(", ")}; or ${uids}` : parts.join(", ");
}
