// Operations (admin): queue, latency percentiles and tokens/s, each worker's expert load per layer as a heat map,
// the autoscaler's events, and the audit log with its chain verification. Refreshed every 5 s (the verification
// when the page opens and on request).

import { api, clear, h } from "./api.js";
import { heatMap } from "./charts.js";
import { t } from "./i18n.js";

function ms(value) {
  return value === null || value === undefined ? "—" : `${Math.round(value)} ms`;
}

function stats(operations) {
  const { queue, latency } = operations;
  const cards = [
    ["queue_depth", queue.depth], ["running", queue.running], ["wait_p50", ms(queue.wait_p50_ms)],
    ["wait_p95", ms(queue.wait_p95_ms)], ["ttft_p50", ms(latency.ttft_p50_ms)], ["ttft_p95", ms(latency.ttft_p95_ms)],
    ["ttft_p99", ms(latency.ttft_p99_ms)], ["total_p50", ms(latency.total_p50_ms)],
    ["total_p95", ms(latency.total_p95_ms)], ["total_p99", ms(latency.total_p99_ms)],
    ["tokens_per_second", Number(operations.tokens_per_second).toFixed(1)], ["requests", operations.requests],
  ];
  return h("div", { class: "cards", id: "operations-stats" }, cards.map(([name, value]) =>
    h("div", { class: "stat", "data-stat": name }, h("span", { class: "label" }, t(`operations.${name}`)),
      h("span", { class: "value" }, String(value)))));
}

function expertLoad(operations) {
  if (!operations.expert_load.length) return h("p", { class: "empty" }, t("operations.no_workers"));
  return h("div", { class: "heatmaps" }, operations.expert_load.map((replica) =>
    h("figure", { class: "card", "data-replica": replica.replica },
      h("figcaption", {}, `${replica.deployment} · ${replica.replica}`),
      replica.error ? h("p", { class: "notice error" }, replica.error)
        : heatMap(replica.layers, { title: t("operations.heatmap_title", { replica: replica.replica }),
          caption: t("operations.heatmap_caption", { last: Math.max(...replica.layers.map((l) => l.length), 1) - 1,
            peak: Math.max(...replica.layers.flat(), 0) }) }))));
}

function table(id, headings, rows) {
  return h("table", { id }, h("thead", {}, h("tr", {}, headings.map((text) => h("th", {}, text)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headings.length, class: "empty" }, t("none")))));
}

// The chain's verification reads every audit row: done when the page opens and on request, not every refresh.
async function verification(element) {
  const verified = await api("GET", "/admin/audit/verify");
  clear(element,
    h("p", { id: "audit-verify", class: `notice ${verified.ok ? "ok" : "error"}`, "data-ok": String(verified.ok) },
      verified.ok ? t("operations.verified", { rows: verified.rows })
        : t("operations.broken", { problems: verified.problems.join("; ") })),
    h("button", { type: "button", class: "secondary", id: "audit-verify-again",
      onclick: () => verification(element) }, t("operations.verify_again")));
}

export async function render(root, context) {
  const live = h("div");
  const auditRows = h("div");
  const verified = h("div", { class: "row" });
  const draw = async () => {
    const [operations, audit] = await Promise.all([
      api("GET", "/admin/operations"), api("GET", "/admin/audit", { params: { limit: 50 } }),
    ]);
    clear(live, stats(operations), h("h2", {}, t("operations.expert_load")), expertLoad(operations),
      h("h2", {}, t("operations.scale_events")),
      table("scale-events", [t("operations.at"), t("operations.deployment"), t("operations.change"), t("operations.reason")],
        operations.scale_events.map((event) => h("tr", {}, h("td", {}, new Date(event.at).toLocaleString()),
          h("td", {}, event.deployment), h("td", {}, `${event.replicas_from} → ${event.replicas_to}`), h("td", {}, event.reason)))));
    clear(auditRows,
      table("audit", [t("operations.at"), t("operations.actor"), t("operations.action"), t("operations.target"), t("operations.details")],
        audit.map((entry) => h("tr", {}, h("td", {}, new Date(entry.at).toLocaleString()), h("td", {}, entry.actor),
          h("td", {}, entry.action), h("td", {}, entry.target), h("td", { class: "details" }, entry.details)))));
  };
  await Promise.all([draw(), verification(verified)]);
  clear(root, h("h1", {}, t("nav.operations")), live, h("h2", {}, t("operations.audit")), verified, auditRows);
  context.every(5000, () => draw().catch(() => {}));
}
