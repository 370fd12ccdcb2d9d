// Usage and billing: tokens and cost per day, model and key (cache-hit share drawn and printed), the balance and
// open holds, and the CSV export. Four calls a load, each summed by the database from the daily rollup.

import { api, clear, h, url } from "./api.js";
import { horizontalBars, stackedBars } from "./charts.js";
import { t } from "./i18n.js";

const range = { since: "", until: "", tenant: "" }; // kept while the console is open

function percent(share) {
  return `${(share * 100).toFixed(1)}%`;
}

function totalsCards(totals, balance) {
  const cards = [
    ["requests", totals.requests], ["prompt_tokens", totals.prompt_tokens],
    ["cache_hit_share", percent(totals.cache_hit_share)], ["completion_tokens", totals.completion_tokens],
    ["cost", totals.cost],
  ];
  if (balance) cards.push(["balance", `${balance.balance} ${balance.currency}`], ["held", balance.held]);
  return h("div", { class: "cards", id: "usage-totals" }, cards.map(([name, value]) =>
    h("div", { class: "stat", "data-stat": name }, h("span", { class: "label" }, t(`usage.${name}`)),
      h("span", { class: "value" }, String(value)))));
}

function byDay(summary) {
  const labels = summary.rows.map((row) => row.group);
  const tokens = stackedBars(labels, [
    { name: t("usage.cached"), class: "cached", values: summary.rows.map((row) => row.cached_tokens) },
    { name: t("usage.uncached"), class: "prompt", values: summary.rows.map((row) => row.prompt_tokens - row.cached_tokens) },
    { name: t("usage.completion"), class: "completion", values: summary.rows.map((row) => row.completion_tokens) },
  ], { title: t("usage.tokens_per_day") });
  tokens.id = "tokens-per-day";
  const cost = stackedBars(labels, [
    { name: t("usage.cost"), class: "cost", values: summary.rows.map((row) => Number(row.cost)) },
  ], { title: t("usage.cost_per_day"), format: (value) => Number(value).toPrecision(3) });
  cost.id = "cost-per-day";
  return [h("h2", {}, t("usage.tokens_per_day")), legend(), tokens, h("h2", {}, t("usage.cost_per_day")), cost];
}

function legend() {
  return h("p", { class: "legend" }, [["cached", "usage.cached"], ["prompt", "usage.uncached"],
    ["completion", "usage.completion"]].map(([kind, label]) => h("span", { class: `swatch ${kind}` }, t(label))));
}

function grouped(summary, title, id) {
  const rows = summary.rows.map((row) => ({
    label: row.tenant && summary.by === "key" ? `${row.tenant} · ${row.group}` : row.group,
    value: Number(row.cost), share: row.cache_hit_share,
    text: `${row.cost} · ${row.prompt_tokens + row.completion_tokens} tok · ${t("usage.hit")} ${percent(row.cache_hit_share)}`,
  }));
  const chart = rows.length ? horizontalBars(rows, { title }) : h("p", { class: "empty" }, t("usage.none"));
  chart.id = id;
  return [h("h2", {}, title), chart];
}

export async function render(root, context) {
  const admin = context.session.role === "admin";
  const prefix = admin ? "/admin/usage" : "/v1/usage";
  const filters = { since: range.since, until: range.until, tenant: admin ? range.tenant : undefined };
  const [day, model, key, balance, tenants] = await Promise.all([
    api("GET", `${prefix}/summary`, { params: { ...filters, by: "day" } }),
    api("GET", `${prefix}/summary`, { params: { ...filters, by: "model" } }),
    api("GET", `${prefix}/summary`, { params: { ...filters, by: "key" } }),
    admin ? (range.tenant ? api("GET", `/admin/credits/${encodeURIComponent(range.tenant)}`, { params: { entries: 0 } }) : null)
      : api("GET", "/v1/account"),
    admin ? api("GET", "/admin/tenants") : null,
  ]);
  const since = h("input", { type: "date", name: "since", value: day.since });
  const until = h("input", { type: "date", name: "until", value: day.until });
  const tenant = admin ? h("select", { name: "tenant" }, h("option", { value: "" }, t("usage.all_tenants")),
    tenants.map((one) => h("option", { value: one.name }, one.name))) : null;
  if (tenant) tenant.value = range.tenant;
  const form = h("form", { class: "inline filters", id: "usage-filters", onsubmit: (event) => {
    event.preventDefault();
    Object.assign(range, { since: since.value, until: until.value, tenant: tenant ? tenant.value : "" });
    context.refresh();
  } }, h("label", {}, t("usage.since"), since), h("label", {}, t("usage.until"), until),
  tenant ? h("label", {}, t("usage.tenant"), tenant) : null, h("button", { type: "submit" }, t("usage.show")),
  h("a", { class: "button secondary", id: "export-csv", download: "",
    href: url(`${prefix}/export.csv`, { since: day.since, until: day.until, tenant: admin ? range.tenant : undefined }) },
  t("usage.export")));
  clear(root, h("h1", {}, t("nav.usage")), form, totalsCards(day.totals, balance),
    admin && !range.tenant ? h("p", { class: "hint" }, t("usage.pick_tenant")) : null, byDay(day),
    grouped(model, t("usage.by_model"), "by-model"), grouped(key, t("usage.by_key"), "by-key"));
}
