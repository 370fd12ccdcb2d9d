// Charts as plain SVG: stacked bars per day, horizontal bars per group, and the experts' load heat map.
// Every bar carries data-value so a reader (or a test) can see the number it draws.

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  for (const child of children) element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return element;
}

export function compact(value) {
  const number = Number(value);
  if (!Number.isFinite(number)) return String(value);
  const abs = Math.abs(number);
  if (abs >= 1e9) return `${(number / 1e9).toFixed(1)}G`;
  if (abs >= 1e6) return `${(number / 1e6).toFixed(1)}M`;
  if (abs >= 1e4) return `${(number / 1e3).toFixed(1)}k`;
  if (Number.isInteger(number)) return String(number);
  return number.toPrecision(3);
}

// series: [{name, class, values: [number per label]}], stacked bottom to top.
export function stackedBars(labels, series, { title, height = 180, format = compact } = {}) {
  const width = Math.max(960, labels.length * 18 + 80); // drawn about as wide as the page: text keeps its size
  const left = 64, bottom = 22, top = 8;
  const totals = labels.map((_, i) => series.reduce((sum, one) => sum + one.values[i], 0));
  const peak = Math.max(...totals, 0) || 1;
  const plot = height - bottom - top;
  const step = (width - left - 8) / Math.max(labels.length, 1);
  const chart = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  chart.append(s("title", {}, title));
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plot * (1 - fraction);
    chart.append(s("line", { x1: left, x2: width - 8, y1: y, y2: y, class: "grid" }),
      s("text", { x: left - 4, y: y + 4, class: "axis", "text-anchor": "end" }, format(peak * fraction)));
  }
  labels.forEach((label, i) => {
    let base = top + plot;
    const x = left + i * step + 1;
    for (const one of series) {
      const value = one.values[i];
      const size = (value / peak) * plot;
      const bar = s("rect", { x, y: base - size, width: Math.max(step - 2, 1), height: size, class: `bar ${one.class}`,
        "data-series": one.name, "data-label": label, "data-value": value });
      bar.append(s("title", {}, `${label} · ${one.name}: ${format(value)}`));
      chart.append(bar);
      base -= size;
    }
    if (labels.length <= 16 || i % Math.ceil(labels.length / 8) === 0) {
      chart.append(s("text", { x: x + step / 2, y: height - 6, class: "axis", "text-anchor": "middle" },
        label.length === 10 ? label.slice(5) : label));
    }
  });
  return chart;
}

// rows: [{label, value, share (0..1, drawn as the hatched cached part), text}]
export function horizontalBars(rows, { title, format = compact } = {}) {
  const line = 22, labelWidth = 230, width = 960;
  const peak = Math.max(...rows.map((row) => row.value), 0) || 1;
  const chart = s("svg", { viewBox: `0 0 ${width} ${Math.max(rows.length, 1) * line + 4}`, class: "chart hbars",
    role: "img", "aria-label": title });
  chart.append(s("title", {}, title));
  rows.forEach((row, i) => {
    const y = i * line + 2;
    const size = (row.value / peak) * (width - labelWidth - 330);
    chart.append(s("text", { x: labelWidth - 6, y: y + 14, class: "axis", "text-anchor": "end" },
      row.label.length > 36 ? `${row.label.slice(0, 35)}…` : row.label));
    chart.append(s("rect", { x: labelWidth, y, width: size, height: line - 6, class: "bar total",
      "data-label": row.label, "data-value": row.value }));
    if (row.share) {
      chart.append(s("rect", { x: labelWidth, y, width: size * row.share, height: line - 6, class: "bar cached" }));
    }
    chart.append(s("text", { x: labelWidth + size + 6, y: y + 14, class: "axis" }, row.text || format(row.value)));
  });
  return chart;
}

// layers: [[load per expert]] (a dense layer is []); one row a layer, one cell an expert, darker = more tokens.
export function heatMap(layers, { title, caption = "" } = {}) {
  const cell = 18, left = 30;
  const experts = Math.max(...layers.map((layer) => layer.length), 1);
  const peak = Math.max(...layers.flat(), 0) || 1;
  const chart = s("svg", { viewBox: `0 0 ${left + experts * cell + 4} ${layers.length * cell + 16}`,
    class: "chart heatmap", role: "img", "aria-label": title });
  chart.append(s("title", {}, title));
  layers.forEach((layer, row) => {
    chart.append(s("text", { x: left - 4, y: row * cell + 13, class: "axis", "text-anchor": "end" }, `L${row}`));
    layer.forEach((load, expert) => {
      const rect = s("rect", { x: left + expert * cell, y: row * cell, width: cell - 1, height: cell - 1,
        class: "cell", "fill-opacity": (0.08 + 0.92 * (load / peak)).toFixed(3), "data-value": load });
      rect.append(s("title", {}, `layer ${row}, expert ${expert}: ${load}`));
      chart.append(rect);
    });
  });
  chart.append(s("text", { x: left, y: layers.length * cell + 12, class: "axis" }, caption));
  return chart;
}
