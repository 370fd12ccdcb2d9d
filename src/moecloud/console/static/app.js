// The console's shell: sign-in, the role's navigation, the language switch and the hash router. Each page is a
// module with render(root, context); what it shows comes from the documented JSON APIs (docs/console.md).

import { api, ApiError, clear, errorText, h, notice, setCsrfToken } from "./api.js";
import { initialLanguage, setLanguage, t } from "./i18n.js";
import * as gallery from "./gallery.js";
import * as keys from "./keys.js";
import * as operations from "./operations.js";
import * as playground from "./playground.js";
import * as tenants from "./tenants.js";
import * as usage from "./usage.js";

const PAGES = {
  gallery: { module: gallery, roles: ["admin"] },
  keys: { module: keys, roles: ["admin", "tenant"] },
  tenants: { module: tenants, roles: ["admin"] },
  usage: { module: usage, roles: ["admin", "tenant"] },
  playground: { module: playground, roles: ["admin", "tenant"] },
  operations: { module: operations, roles: ["admin"] },
};
const HOME = { admin: "gallery", tenant: "usage" };

let session = null;
let leaving = [];
let generation = 0; // the current route; a slower, older render must not replace a newer page

function leave() {
  for (const stop of leaving) stop();
  leaving = [];
}

// What a page gets: the session, and timers that stop when the page is left. A render that a later route has
// overtaken (a quick second click) registers nothing and is never shown.
function context(mine) {
  return {
    session,
    every(milliseconds, task) {
      if (mine !== generation) return;
      const timer = window.setInterval(task, milliseconds);
      leaving.push(() => window.clearInterval(timer));
    },
    onLeave(stop) {
      if (mine === generation) leaving.push(stop);
      else stop();
    },
    refresh: () => route(),
  };
}

function header() {
  const bar = document.getElementById("bar");
  const language = h("select", { id: "language", "aria-label": t("language"), onchange: (event) => {
    setLanguage(event.target.value, true);
    route();
  } }, h("option", { value: "en" }, "English"), h("option", { value: "zh" }, "中文"));
  language.value = document.documentElement.lang.startsWith("zh") ? "zh" : "en";
  const nav = h("nav", { "aria-label": t("navigation") });
  if (session) {
    for (const [name, page] of Object.entries(PAGES)) {
      if (page.roles.includes(session.role)) nav.append(h("a", { href: `#/${name}`, "data-page": name }, t(`nav.${name}`)));
    }
  }
  const who = session
    ? h("span", { class: "who", id: "who" }, session.role === "admin" ? t("role.admin") : `${t("role.tenant")}: ${session.tenant}`)
    : null;
  const out = session ? h("button", { id: "sign-out", class: "secondary", onclick: signOut }, t("sign_out")) : null;
  clear(bar, h("a", { class: "brand", href: "#/" }, "moecloud"), nav, h("span", { class: "spacer" }), who, out, language);
}

function signInPage(root) {
  const message = notice();
  const field = h("input", { id: "sign-in-key", name: "key", type: "password", autocomplete: "off", required: true,
    placeholder: t("sign_in.placeholder") });
  const form = h("form", { id: "sign-in", class: "card narrow", onsubmit: async (event) => {
    event.preventDefault();
    message.clear();
    try {
      session = await api("POST", "/console/api/session", { json: { key: field.value } });
      setCsrfToken(session.csrf_token);
      const asked = PAGES[currentPage()]; // a link to a page the role may see is kept through the sign-in
      if (asked && asked.roles.includes(session.role)) route();
      else window.location.hash = `#/${HOME[session.role]}`; // its hashchange routes (once, not twice)
    } catch (error) {
      message.fail(error instanceof ApiError && error.status === 401 ? t("sign_in.refused") : errorText(error, t));
    }
  } }, h("h1", {}, t("sign_in.title")), h("p", { class: "hint" }, t("sign_in.hint")),
  h("label", {}, t("sign_in.key"), field), h("button", { type: "submit" }, t("sign_in.submit")), message.element);
  clear(root, form);
  field.focus();
}

async function signOut() {
  try {
    await api("DELETE", "/console/api/session");
  } catch {
    // the session may be gone already; signing out locally is what matters
  }
  // a fresh page: nothing of this session (a playground conversation, a new key on screen) stays in memory
  window.location.replace("/console");
}

function currentPage() {
  return window.location.hash.replace(/^#\/?/, "").split("?")[0];
}

async function route() {
  leave();
  generation += 1;
  const root = document.getElementById("view");
  header();
  if (!session) {
    signInPage(root);
    return;
  }
  const name = currentPage();
  const page = PAGES[name];
  if (!page || !page.roles.includes(session.role)) {
    window.location.hash = `#/${HOME[session.role]}`;
    return;
  }
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === name);
  const mine = generation;
  clear(root, h("p", { class: "loading" }, t("loading")));
  const view = h("div", { class: "page", "data-page": name });
  try {
    await page.module.render(view, context(mine));
  } catch (error) {
    clear(view, h("p", { class: "notice error" }, errorText(error, t)));
  }
  if (mine === generation) clear(root, view);
}

async function start() {
  setLanguage(initialLanguage());
  try {
    session = await api("GET", "/console/api/session");
    setCsrfToken(session.csrf_token);
  } catch {
    session = null;
  }
  window.addEventListener("hashchange", route);
  window.addEventListener("moecloud:unauthorized", () => {
    if (session) window.location.replace("/console"); // the session ended (expired, revoked): start clean
  });
  route();
}

start();
