// The router: one view per hash route (#/overview, #/agents, #/agents/<uid>, #/configs,
// #/configs/new, #/configs/<name>, #/connection-settings, #/connection-settings/new,
// #/connection-settings/<name>, #/packages, #/packages/new, #/packages/<name>), sign-in when
// the API asks for a token, and the refresh timer
// of the view on screen.
import { ApiError, api, forgetToken, keepToken, token } from "./api.js";
import { h, replace } from "./dom.js";
import { showAgent } from "./agent.js";
import { showAgents } from "./agents.js";
import { showConfig, showConfigs } from "./configs.js";
import { showOverview } from "./overview.js";
import { showSettings, showSettingsList } from "./settings.js";
import { showPackage, showPackages } from "./packages.js";

const main = document.getElementById("main");
const signOut = document.getElementById("sign-out");
let generation = 0;
let timer = null;

function route() {
  const raw = location.hash.replace(/^#/, "") || "/overview";
  const [path, search = ""] = raw.split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(search) };
}

function pick(parts) {
  const [section, item] = parts;
  if (section === "agents") return item ? showAgent : showAgents;
  if (section === "configs") return item ? showConfig : showConfigs;
  if (section === "connection-settings") return item ? showSettings : showSettingsList;
  if (section === "packages") return item ? showPackage : showPackages;
  return showOverview;
}

async function render() {
  clearInterval(timer);
  timer = null;
  const mine = ++generation;
  const { parts, params } = route();
  const section = parts[0] || "overview";
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  signOut.hidden = !token();
  const view = h("div", { class: "view" });
  const ctx = {
    parts,
    params,
    live: () => mine === generation,
    // Run `fn` every `ms` while this view is on screen; a failure shows once and stops nothing.
    every(ms, fn) {
      timer = setInterval(async () => {
        if (mine !== generation) return;
        try {
          await fn();
        } catch (exc) {
          if (mine === generation) failed(exc);
        }
      }, ms);
    },
  };
  try {
    await pick(parts)(view, ctx);
    if (mine !== generation) return;
    replace(main, view);
    // A new route starts at the top, as a new page would.
    window.scrollTo(0, 0);
    const heading = main.querySelector("h1");
    document.title = heading ? `${heading.textContent} · opamp-gateway` : "opamp-gateway";
  } catch (exc) {
    if (mine === generation) failed(exc);
  }
}

function failed(exc) {
  clearInterval(timer);
  if (exc instanceof ApiError && exc.status === 401) {
    showSignIn(Boolean(token()));
    return;
  }
  replace(
    main,
    h(
      "div",
      { class: "view" },
      h("h1", {}, "Something went wrong"),
      h("p", { role: "alert", class: "error" }, exc.message || String(exc)),
      h("p", {}, h("button", { id: "try-again", type: "button", onclick: render }, "Try again")),
    ),
  );
  document.getElementById("try-again")?.focus();
}

function showSignIn(rejected) {
  forgetToken();
  signOut.hidden = true;
  const error = h("p", { id: "sign-in-error", class: "error", role: "alert" });
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "current-password",
    required: true,
    "aria-describedby": "token-help sign-in-error",
  });
  if (rejected) error.textContent = "Your session's token is no longer accepted. Sign in again.";
  const form = h(
    "form",
    { class: "sign-in", onsubmit: (event) => submit(event, input, error) },
    h("h1", {}, "Sign in"),
    h("label", { for: "token" }, "Admin token"),
    input,
    h(
      "p",
      { id: "token-help", class: "help" },
      "The token in this gateway's --admin-token-file. It is kept in this browser tab's session " +
        "only and sent only to this gateway's admin API.",
    ),
    h("button", { type: "submit" }, "Sign in"),
    error,
  );
  replace(main, form);
  document.title = "Sign in · opamp-gateway";
  input.focus();
}

async function submit(event, input, error) {
  event.preventDefault();
  const candidate = input.value.trim();
  error.textContent = "";
  try {
    await api("GET", "/api/v1/fleet/summary", undefined, candidate);
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) {
      error.textContent = "That token was not accepted. Check it and try again.";
      input.setAttribute("aria-invalid", "true");
    } else {
      error.textContent = exc.message;
    }
    input.select();
    return;
  }
  keepToken(candidate);
  await render();
  main.focus();
}

signOut.addEventListener("click", () => {
  forgetToken();
  showSignIn(false);
});
window.addEventListener("hashchange", render);
render();
