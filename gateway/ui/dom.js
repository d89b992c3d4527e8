// Building the page without innerHTML: every value from the API goes in as text, never as markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

export function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 2) return "just now";
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

export function time(iso) {
  return iso ? h("time", { datetime: iso, title: iso }, ago(iso)) : "never";
}

// A status is always written out; the colour only repeats it.
export function badge(text, kind = text) {
  return h("span", { class: `badge badge-${kind}` }, text);
}

export function attr(agent, key) {
  const d = agent.description || {};
  const value = (d.identifying_attributes || {})[key] ?? (d.non_identifying_attributes || {})[key];
  return value === undefined || value === null ? "" : String(value);
}

export function shortUid(uid) {
  return uid.slice(0, 8) + "…" + uid.slice(-4);
}

export function dl(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
}

export function table(caption, head, rows, attrs = {}) {
  return h(
    "table",
    attrs,
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, head.map((text) => h("th", { scope: "col" }, text)))),
    h("tbody", {}, rows),
  );
}

export function announce(text) {
  const el = document.getElementById("announce");
  el.textContent = "";
  // A fresh text node after a tick, so screen readers announce a repeated message too.
  setTimeout(() => {
    el.textContent = text;
  }, 50);
}

// `replace` for a refresh: a keyboard user's focus inside `el` survives the new content (found again
// by id, else by link target), so a live page does not throw them back to the top.
export function refresh(el, ...children) {
  const active = document.activeElement;
  const inside = active && el.contains(active) && active !== el;
  const id = inside ? active.id : "";
  const href = inside ? active.getAttribute("href") : null;
  replace(el, ...children);
  if (!inside) return;
  const again = id ? el.querySelector(`#${CSS.escape(id)}`) : href ? el.querySelector(`[href="${CSS.escape(href)}"]`) : null;
  again?.focus();
}
