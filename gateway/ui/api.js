// The admin API, the only thing the UI talks to. The token lives in sessionStorage: gone when the
// browser session ends, never in a URL, never in a cookie (so no request is authenticated unless
// this code adds the header).
const TOKEN_KEY = "opamp-gateway.admin-token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function keepToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// Every state-changing request carries a JSON body and Content-Type: application/json, so the
// admin port can refuse anything a cross-site form could send.
export async function api(method, path, body, credential = token()) {
  const headers = { Accept: "application/json" };
  if (credential) headers.Authorization = `Bearer ${credential}`;
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (exc) {
    throw new ApiError(0, "network", `The gateway did not answer (${exc.message}).`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    throw new ApiError(response.status, error.code || "error", error.message || `HTTP ${response.status}`);
  }
  return data;
}

export function query(params) {
  const text = new URLSearchParams(params).toString();
  return text ? `?${text}` : "";
}
