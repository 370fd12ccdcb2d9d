// Gallery (admin): every checkpoint and deployed model with its shape, prices, quality and deployments; deploy a
// checkpoint in one form, scale and stop from the same card. The time from a click to ready is measured here.

import { api, clear, errorText, h, integer, notice } from "./api.js";
import { compact } from "./charts.js";
import { t } from "./i18n.js";

const SETTLED = new Set(["ready", "stopped", "remote", "failed"]);
const pending = new Map(); // deployment name -> {since: ms, action}; kept while the page is left and re-entered
const finished = new Map(); // deployment name -> text of the last measured click-to-ready

function bytes(size) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = size, unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${value.toFixed(value >= 100 || unit === 0 ? 0 : 1)} ${units[unit]}`;
}

function defaultName(model) {
  return model.toLowerCase().replace(/[^a-z0-9_.-]+/g, "-").replace(/^[^a-z0-9]+/, "").slice(0, 90) || "model";
}

function facts(entry) {
  const shape = entry.shape;
  const rows = [];
  if (shape) {
    rows.push([t("gallery.architecture"), shape.architecture], [t("gallery.size"), bytes(shape.size_bytes)],
      [t("gallery.params"), `${compact(shape.total_params)} / ${compact(shape.active_params)}`],
      [t("gallery.context"), compact(shape.context_length)], [t("gallery.quantization"), shape.quantization],
      [t("gallery.layers_experts"), `${shape.layers} / ${shape.experts}`]);
  }
  if (entry.price) {
    const price = (value) => String(Number(value)); // "1.500000000" -> "1.5"
    rows.push([t("gallery.price"),
      `${price(entry.price.input_miss)} / ${price(entry.price.input_hit)} / ${price(entry.price.output)}`]);
  }
  const quality = entry.quality.length
    ? entry.quality.map((q) => `${q.evaluation}: ${(q.score * 100).toFixed(1)}%`).join(", ") : t("gallery.no_quality");
  rows.push([t("gallery.quality"), quality]);
  return h("dl", { class: "facts" }, rows.map(([term, value]) => h("div", {}, h("dt", {}, term), h("dd", {}, value))));
}

function health(deployment) {
  return h("span", { class: "health" }, deployment.replica_health.map((replica) =>
    h("span", { class: `dot ${replica.state}`, title: `${replica.id || t("gallery.starting_replica")}: ${t(`state.${replica.state}`)}` })));
}

function deploymentRow(deployment, refresh) {
  const message = notice();
  const replicas = h("input", { type: "number", min: 0, max: deployment.max_replicas ?? 64, name: "replicas",
    value: deployment.replicas ?? 0, class: "small", "aria-label": t("gallery.replicas") });
  const act = async (action, call) => {
    message.clear();
    try {
      await call();
      pending.set(deployment.name, { since: performance.now(), action });
      finished.delete(deployment.name);
      await refresh();
    } catch (error) {
      message.fail(errorText(error, t));
    }
  };
  const local = deployment.kind === "local";
  const timing = pending.has(deployment.name)
    ? t("gallery.waiting", { seconds: ((performance.now() - pending.get(deployment.name).since) / 1000).toFixed(1) })
    : finished.get(deployment.name) || "";
  return h("tr", { "data-deployment": deployment.name },
    h("td", {}, deployment.name), h("td", {}, `${deployment.kind} · ${deployment.backend}`),
    h("td", {}, h("span", { class: `status ${deployment.status}`, "data-status": deployment.status }, t(`status.${deployment.status}`))),
    h("td", { class: "replicas" }, local ? `${deployment.ready_replicas ?? 0} / ${deployment.replicas}` : "—",
      local ? h("span", { class: "hint" }, ` (${deployment.min_replicas}–${deployment.max_replicas})`) : null, health(deployment)),
    h("td", { class: "timing" }, timing),
    h("td", {}, h("div", { class: "actions" }, local ? [replicas, h("button", { class: "secondary", "data-action": "scale", onclick: () =>
      act("scale", () => api("POST", `/admin/deployments/${encodeURIComponent(deployment.name)}/scale`,
        { json: { replicas: integer(replicas.value) } })) }, t("gallery.scale"))] : null,
    h("button", { class: "danger", "data-action": "stop", onclick: () => {
      if (window.confirm(t("gallery.confirm_stop", { name: deployment.name }))) {
        act("stop", () => api("DELETE", `/admin/deployments/${encodeURIComponent(deployment.name)}`));
      }
    } }, t("gallery.stop")), message.element)));
}

function deployForm(entry, refresh) {
  const message = notice();
  const name = defaultName(entry.model.split("/").pop());
  const form = h("form", { class: "inline deploy", "data-checkpoint": entry.checkpoint, "aria-label": t("gallery.deploy_title"),
    onsubmit: async (event) => {
    event.preventDefault();
    const values = Object.fromEntries(new FormData(form).entries());
    message.clear();
    try {
      await api("POST", "/admin/deployments", { json: {
        name: values.name, model: values.model, kind: "local", checkpoint: entry.checkpoint,
        replicas: integer(values.replicas), min_replicas: integer(values.min_replicas),
        max_replicas: integer(values.max_replicas),
      } });
      pending.set(values.name, { since: performance.now(), action: "deploy" });
      await refresh();
    } catch (error) {
      message.fail(errorText(error, t));
    }
  } },
  h("strong", { class: "form-title" }, t("gallery.deploy_title")),
  h("label", {}, t("gallery.name"), h("input", { name: "name", value: name, required: true })),
  h("label", {}, t("gallery.model"), h("input", { name: "model", value: entry.model, required: true })),
  h("label", {}, t("gallery.replicas"), h("input", { name: "replicas", type: "number", min: 0, value: 1, class: "small" })),
  h("label", {}, t("gallery.min"), h("input", { name: "min_replicas", type: "number", min: 0, value: 0, class: "small" })),
  h("label", {}, t("gallery.max"), h("input", { name: "max_replicas", type: "number", min: 1, value: 2, class: "small" })),
  h("button", { type: "submit" }, t("gallery.deploy")), message.element);
  return form;
}

function card(entry, refresh) {
  const table = entry.deployments.length ? h("table", { class: "deployments" },
    h("thead", {}, h("tr", {}, [t("gallery.deployment"), t("gallery.kind"), t("gallery.status"),
      t("gallery.replicas"), t("gallery.time_to_ready"), ""].map((text) => h("th", {}, text)))),
    h("tbody", {}, entry.deployments.map((deployment) => deploymentRow(deployment, refresh)))) : null;
  return h("section", { class: "card model", "data-model": entry.model },
    h("h2", {}, entry.model), entry.checkpoint ? h("p", { class: "hint path" }, entry.checkpoint) : null,
    facts(entry), table, entry.checkpoint ? deployForm(entry, refresh) : null);
}

// A click's wait ends when its deployment settles: "ready in 12.3 s" (or stopped, or failed).
function settle(models) {
  const byName = new Map(models.flatMap((entry) => entry.deployments.map((d) => [d.name, d])));
  for (const [name, started] of pending) {
    const deployment = byName.get(name);
    const seconds = ((performance.now() - started.since) / 1000).toFixed(1);
    if (!deployment && started.action === "stop") {
      pending.delete(name);
    } else if (deployment && SETTLED.has(deployment.status)) {
      pending.delete(name);
      finished.set(name, t(`gallery.settled.${deployment.status}`, { seconds }));
    }
  }
}

export async function render(root, context) {
  const models = h("div", { class: "models" });
  const updated = h("p", { class: "hint" });
  const refresh = async () => {
    const gallery = await api("GET", "/admin/gallery");
    settle(gallery.models);
    clear(models, gallery.models.length ? gallery.models.map((entry) => card(entry, refresh))
      : h("p", { class: "empty" }, t("gallery.empty")));
    updated.textContent = t("updated", { time: new Date().toLocaleTimeString() });
  };
  await refresh();
  clear(root, h("h1", {}, t("nav.gallery")), h("p", { class: "hint" }, t("gallery.hint")), updated, models);
  let busy = false, ticks = 0;
  context.every(1000, async () => {
    ticks += 1;
    if (busy || (!pending.size && ticks % 5)) return; // every second while a click waits, else every 5 s
    if (document.activeElement?.matches("input, select, textarea")) return; // never redraw under the typing hand
    busy = true;
    try { await refresh(); } catch { /* the next tick tries again */ } finally { busy = false; }
  });
}
