// Tenants and credit (admin): make a tenant, add credit, set its rate limits and fair-queueing weight.

import { api, clear, errorText, formValues, h, integer, notice } from "./api.js";
import { t } from "./i18n.js";

function limitsForm(tenant, message, redraw) {
  const form = h("form", { class: "inline", "data-form": "limits", onsubmit: async (event) => {
    event.preventDefault();
    const values = formValues(form);
    try {
      await api("PATCH", `/admin/tenants/${encodeURIComponent(tenant.name)}`,
        { json: { rpm: integer(values.rpm) ?? null, tpm: integer(values.tpm) ?? null, weight: integer(values.weight) ?? 1 } });
      message.ok(t("tenants.saved", { name: tenant.name }));
      await redraw();
    } catch (error) {
      message.fail(errorText(error, t));
    }
  } },
  h("input", { name: "rpm", type: "number", min: 1, value: tenant.rpm ?? "", placeholder: "RPM", class: "small", "aria-label": "RPM" }),
  h("input", { name: "tpm", type: "number", min: 1, value: tenant.tpm ?? "", placeholder: "TPM", class: "small", "aria-label": "TPM" }),
  h("input", { name: "weight", type: "number", min: 1, value: tenant.weight, class: "small", "aria-label": t("tenants.weight") }),
  h("button", { class: "secondary", type: "submit" }, t("tenants.save")));
  return form;
}

function creditForm(tenant, message, redraw) {
  const form = h("form", { class: "inline", "data-form": "credit", onsubmit: async (event) => {
    event.preventDefault();
    const values = formValues(form);
    try {
      await api("POST", "/admin/credits", { json: { tenant: tenant.name, amount: values.amount, note: values.note } });
      message.ok(t("tenants.credited", { name: tenant.name, amount: values.amount }));
      await redraw();
    } catch (error) {
      message.fail(errorText(error, t));
    }
  } },
  h("input", { name: "amount", inputmode: "decimal", required: true, placeholder: t("tenants.amount"), class: "small",
    "aria-label": t("tenants.amount") }),
  h("input", { name: "note", placeholder: t("tenants.note"), "aria-label": t("tenants.note") }),
  h("button", { class: "secondary", type: "submit" }, t("tenants.add_credit")));
  return form;
}

export async function render(root) {
  const message = notice();
  const rows = h("tbody");
  const redraw = async () => {
    const tenants = await api("GET", "/admin/tenants");
    clear(rows, tenants.map((tenant) => h("tr", { "data-tenant": tenant.name },
      h("td", {}, tenant.name), h("td", { class: "number" }, tenant.balance),
      h("td", {}, limitsForm(tenant, message, redraw)), h("td", {}, creditForm(tenant, message, redraw)))));
  };
  await redraw();
  const form = h("form", { id: "new-tenant", class: "card grid", onsubmit: async (event) => {
    event.preventDefault();
    const values = formValues(form);
    try {
      await api("POST", "/admin/tenants", { json: { name: values.name, trial_credit: values.trial_credit,
        rpm: integer(values.rpm), tpm: integer(values.tpm), weight: integer(values.weight) ?? 1 } });
      message.ok(t("tenants.created", { name: values.name }));
      form.reset();
      await redraw();
    } catch (error) {
      message.fail(errorText(error, t));
    }
  } },
  h("h2", {}, t("tenants.create")),
  h("label", {}, t("tenants.name"), h("input", { name: "name", required: true, maxlength: 100 })),
  h("label", {}, t("tenants.trial_credit"), h("input", { name: "trial_credit", inputmode: "decimal" })),
  h("label", {}, "RPM", h("input", { name: "rpm", type: "number", min: 1 })),
  h("label", {}, "TPM", h("input", { name: "tpm", type: "number", min: 1 })),
  h("label", {}, t("tenants.weight"), h("input", { name: "weight", type: "number", min: 1, value: 1 })),
  h("div", { class: "row" }, h("button", { type: "submit" }, t("tenants.create_button"))));
  clear(root, h("h1", {}, t("nav.tenants")), form, message.element,
    h("table", { id: "tenants" }, h("thead", {}, h("tr", {}, [t("tenants.name"), t("tenants.balance"),
      t("tenants.limits"), t("tenants.credit")].map((text) => h("th", {}, text)))), rows));
}
