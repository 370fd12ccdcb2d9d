// The console's one way to the gateway and to the page: same-origin fetch with the session cookie (the CSRF
// header on every change), OpenAI-format errors turned into ApiError, and DOM built without innerHTML, so
// nothing a tenant or a model wrote is ever parsed as markup.

let csrfToken = null;

export function setCsrfToken(token) {
  csrfToken = token;
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
  }
}

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

export function url(path, params = {}) {
  const target = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") target.searchParams.set(name, String(value));
  }
  return target.pathname + target.search;
}

// fetch() as the signed-in session, or as `key` when one is given (the playground's pasted key).
export async function send(method, path, { json, params, key, signal } = {}) {
  const headers = {};
  if (json !== undefined) headers["content-type"] = "application/json";
  if (key) headers.authorization = `Bearer ${key}`;
  else if (!SAFE.has(method) && csrfToken) headers["x-csrf-token"] = csrfToken;
  const response = await fetch(url(path, params), {
    method, headers, signal, credentials: "same-origin",
    body: json === undefined ? undefined : JSON.stringify(json),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    const error = new ApiError(response.status, body);
    if (response.status === 401 && !key) window.dispatchEvent(new CustomEvent("moecloud:unauthorized"));
    throw error;
  }
  return response;
}

export async function api(method, path, options = {}) {
  const response = await send(method, path, options);
  return response.status === 204 ? null : response.json();
}

// h("div", {class: "x", onclick: f}, "text", child) -> an element; strings become text nodes.
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "value") element.value = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

export function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function clear(element, ...children) {
  element.replaceChildren();
  return append(element, children);
}

// An <form>'s named fields as an object of trimmed strings (empty ones left out).
export function formValues(form) {
  const values = {};
  for (const [name, value] of new FormData(form).entries()) {
    const text = String(value).trim();
    if (text !== "") values[name] = text;
  }
  return values;
}

export function integer(value) {
  return value === undefined ? undefined : Number.parseInt(value, 10);
}

export function list(value) {
  if (value === undefined) return undefined;
  return value.split(",").map((item) => item.trim()).filter(Boolean);
}

export function errorText(error, t) {
  if (!(error instanceof ApiError)) return String(error.message || error);
  return error.param ? `${error.message} (${t("field")}: ${error.param})` : error.message;
}

// A message area for a form: ok(text) / fail(error).
export function notice() {
  const element = h("p", { class: "notice", role: "status" });
  return {
    element,
    ok(text) { element.className = "notice ok"; element.textContent = text; },
    fail(text) { element.className = "notice error"; element.textContent = text; },
    clear() { element.className = "notice"; element.textContent = ""; },
  };
}

export function isoDay(date) {
  return date.toISOString().slice(0, 10);
}
