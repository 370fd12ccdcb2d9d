// Keys: an admin sees and makes every tenant's keys (/admin/keys), a tenant its own (/v1/account/keys). A new
// key is shown once, with a copy button; revoking is one click.

import { api, clear, errorText, formValues, h, integer, list, notice } from "./api.js";
import { t } from "./i18n.js";

function when(value) {
  return value ? new Date(value).toLocaleString() : "—";
}

function keyState(key) {
  if (key.revoked_at) return "revoked";
  if (key.expires_at && new Date(key.expires_at) <= new Date()) return "expired";
  return "active";
}

function shownOnce(created) {
  const secret = h("code", { id: "new-key", class: "secret" }, created.key);
  const copied = h("span", { class: "hint", role: "status" });
  return h("div", { class: "card once", id: "new-key-box" },
    h("strong", {}, t("keys.shown_once")), h("div", { class: "row" }, secret,
      h("button", { class: "secondary", id: "copy-key", type: "button", onclick: async () => {
        try {
          await navigator.clipboard.writeText(created.key);
          copied.textContent = t("keys.copied");
        } catch {
          window.getSelection().selectAllChildren(secret); // no clipboard permission: select it for Ctrl+C
          copied.textContent = t("keys.select_copy");
        }
      } }, t("keys.copy")), copied));
}

export async function render(root, context) {
  const admin = context.session.role === "admin";
  const base = admin ? "/admin/keys" : "/v1/account/keys";
  const [keys, tenants] = await Promise.all([api("GET", base), admin ? api("GET", "/admin/tenants") : null]);
  const message = notice();
  const created = h("div");
  const rows = h("tbody");

  const draw = (items) => clear(rows, items.map((key) => {
    const state = keyState(key);
    return h("tr", { "data-key": key.id, "data-state": state },
      h("td", {}, key.name), admin ? h("td", {}, key.tenant) : null, h("td", {}, h("code", {}, `${key.prefix}…`)),
      h("td", {}, key.models ? key.models.join(", ") : t("keys.all_models")),
      h("td", {}, [key.rpm ?? "—", key.tpm ?? "—", key.max_concurrency ?? "—"].join(" / ")),
      h("td", {}, when(key.expires_at)), h("td", {}, h("span", { class: `status ${state}` }, t(`keys.state.${state}`))),
      h("td", {}, state === "active" ? h("button", { class: "danger", "data-action": "revoke", onclick: async () => {
        if (!window.confirm(t("keys.confirm_revoke", { name: key.name }))) return;
        try {
          await api("POST", `${base}/${encodeURIComponent(key.id)}/revoke`);
          draw(await api("GET", base));
        } catch (error) {
          message.fail(errorText(error, t));
        }
      } }, t("keys.revoke")) : null));
  }));
  draw(keys);

  const form = h("form", { id: "new-key-form", class: "card grid", onsubmit: async (event) => {
    event.preventDefault();
    const values = formValues(form);
    message.clear();
    const body = { name: values.name, models: list(values.models), rpm: integer(values.rpm), tpm: integer(values.tpm),
      max_concurrency: integer(values.max_concurrency),
      expires_at: values.expires_at ? new Date(values.expires_at).toISOString() : undefined };
    if (admin) Object.assign(body, { tenant: values.tenant, priority: integer(values.priority) });
    try {
      const made = await api("POST", base, { json: body });
      clear(created, shownOnce(made));
      form.reset();
      draw(await api("GET", base));
    } catch (error) {
      message.fail(errorText(error, t));
    }
  } },
  h("h2", {}, t("keys.create")),
  admin ? h("label", {}, t("keys.tenant"), h("select", { name: "tenant", required: true },
    tenants.map((tenant) => h("option", { value: tenant.name }, tenant.name)))) : null,
  h("label", {}, t("keys.name"), h("input", { name: "name", required: true, maxlength: 100 })),
  h("label", {}, t("keys.models"), h("input", { name: "models", placeholder: t("keys.models_hint") })),
  h("label", {}, "RPM", h("input", { name: "rpm", type: "number", min: 1 })),
  h("label", {}, "TPM", h("input", { name: "tpm", type: "number", min: 1 })),
  h("label", {}, t("keys.concurrency"), h("input", { name: "max_concurrency", type: "number", min: 1 })),
  admin ? h("label", {}, t("keys.priority"), h("input", { name: "priority", type: "number", min: 0 })) : null,
  h("label", {}, t("keys.expires"), h("input", { name: "expires_at", type: "datetime-local" })),
  h("div", { class: "row" }, h("button", { type: "submit", id: "create-key" }, t("keys.create_button"))), message.element);

  clear(root, h("h1", {}, t("nav.keys")), created, form,
    h("table", { id: "keys" }, h("thead", {}, h("tr", {}, [t("keys.name"), admin ? t("keys.tenant") : null,
      t("keys.prefix"), t("keys.models"), t("keys.limits"), t("keys.expires"), t("keys.status"), ""]
      .filter((text) => text !== null).map((text) => h("th", {}, text)))), rows));
}
