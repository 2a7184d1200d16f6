// A key's usage as a stacked SVG bar chart, and the same numbers as a table (no library).

import { el } from "./ui.js";

const SVG = "http://www.w3.org/2000/svg";
const HEIGHT = 220; // px of the whole chart
const PAD = { top: 12, right: 10, bottom: 28, left: 44 }; // px around the plot
const MIN_LABEL_GAP = 72; // px between two time labels on the x axis

// Layers bottom to top; forwarded requests the upstream answered 5xx are part of "forwarded".
export const LAYERS = [
  { name: "ok", label: "Forwarded, no upstream error", value: (p) => p.forwarded - p.upstream_errors },
  { name: "upstream", label: "Forwarded, upstream 5xx", value: (p) => p.upstream_errors },
  { name: "refused", label: "Refused (403 policy, 429 rate limit)", value: (p) => p.denied + p.limited },
];

// The sums of a series of usage points.
export function usageTotals(points) {
  const totals = { forwarded: 0, denied: 0, limited: 0, upstream_errors: 0 };
  for (const point of points) for (const name of Object.keys(totals)) totals[name] += point[name];
  totals.refused = totals.denied + totals.limited;
  return totals;
}

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  for (const child of children) node.append(child);
  return node;
}

// The smallest "nice" axis top (1, 2, 5 × 10^n) at or above `value`.
export function niceCeiling(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

const hourFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const dayFullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });

// A point's time as the axis, the tooltip and the table write it.
export function pointLabel(start, step, { full = false } = {}) {
  const date = new Date(start);
  if (step === "day") return full ? dayFullFormat.format(date) : dayFormat.format(date);
  if (full) return fullFormat.format(date);
  return date.getHours() === 0 ? dayFormat.format(date) : hourFormat.format(date);
}

function pointTitle(point, step) {
  const refused = point.denied + point.limited;
  const errors = point.upstream_errors ? ` (${point.upstream_errors} upstream 5xx)` : "";
  return `${pointLabel(point.start, step, { full: true })}: ${point.forwarded} forwarded${errors}, ${refused} refused`;
}

// Draw the chart `width` px wide: bars stacked per LAYERS, y axis 0..nice max, a few time labels.
export function usageChart(points, step, width, summary) {
  const plotW = Math.max(40, width - PAD.left - PAD.right);
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const top = niceCeiling(Math.max(0, ...points.map((p) => p.forwarded + p.denied + p.limited)));
  const slot = plotW / Math.max(1, points.length);
  const barW = Math.max(1, slot > 6 ? slot * 0.78 : slot - 0.4);
  const y = (value) => PAD.top + plotH - (value / top) * plotH;
  const chart = svg("svg", {
    class: "usage-chart",
    width,
    height: HEIGHT,
    viewBox: `0 0 ${width} ${HEIGHT}`,
    role: "img",
    "aria-label": summary,
  });
  for (const fraction of [0, 0.5, 1]) {
    const value = top * fraction;
    const at = y(value);
    chart.append(svg("line", { class: "grid", x1: PAD.left, x2: PAD.left + plotW, y1: at, y2: at }));
    if (fraction === 0.5 && !Number.isInteger(value)) continue;
    const label = svg("text", { class: "axis", x: PAD.left - 6, y: at + 4, "text-anchor": "end" });
    label.textContent = String(value);
    chart.append(label);
  }
  const every = Math.max(1, Math.ceil(MIN_LABEL_GAP / slot));
  points.forEach((point, index) => {
    const x = PAD.left + index * slot + (slot - barW) / 2;
    const group = svg("g", { class: "bar", "data-start": point.start });
    const title = svg("title");
    title.textContent = pointTitle(point, step);
    group.append(title);
    let base = 0;
    for (const layer of LAYERS) {
      const value = layer.value(point);
      if (value <= 0) continue;
      group.append(svg("rect", { class: `layer-${layer.name}`, x, width: barW, y: y(base + value), height: y(base) - y(base + value) }));
      base += value;
    }
    chart.append(group);
    if (index % every === 0) {
      const label = svg("text", { class: "axis", x: PAD.left + index * slot + slot / 2, y: HEIGHT - 8, "text-anchor": "middle" });
      label.textContent = pointLabel(point.start, step);
      chart.append(label);
    }
  });
  return chart;
}

// The legend: each layer's colour and total.
export function usageLegend(totals) {
  const values = { ok: totals.forwarded - totals.upstream_errors, upstream: totals.upstream_errors, refused: totals.refused };
  return el(
    "ul",
    { class: "chart-legend" },
    LAYERS.map((layer) =>
      el("li", {}, el("span", { class: `swatch layer-${layer.name}`, "aria-hidden": "true" }), `${layer.label}: `, el("strong", { "data-total": layer.name, text: String(values[layer.name]) })),
    ),
  );
}

// The numbers as a table: one row per hour or day with any request, then the totals.
export function usageTable(points, step, caption) {
  const row = (cells, header = false) =>
    el(
      "tr",
      {},
      cells.map((cell, index) => (index === 0 ? el("th", { scope: "row", text: cell }) : el(header ? "th" : "td", { class: "num", text: String(cell) }))),
    );
  const used = points.filter((p) => p.forwarded + p.denied + p.limited > 0);
  const totals = usageTotals(points);
  return el(
    "table",
    { class: "usage-table" },
    el("caption", { text: caption }),
    el(
      "thead",
      {},
      el(
        "tr",
        {},
        ["Time", "Forwarded", "Upstream 5xx", "Refused by policy (403)", "Refused by rate limit (429)"].map((name, index) =>
          el("th", { scope: "col", class: index ? "num" : null, text: name }),
        ),
      ),
    ),
    el(
      "tbody",
      {},
      used.map((p) => row([pointLabel(p.start, step, { full: true }), p.forwarded, p.upstream_errors, p.denied, p.limited])),
    ),
    el("tfoot", {}, row(["Total", totals.forwarded, totals.upstream_errors, totals.denied, totals.limited])),
  );
}
