// The count graph: CountEvents' histogram as stacked bars, one series per user or action (the largest ones, the
// rest as "other"). A bar narrows the view to its bucket, a series to its user or action.

import { el, svg } from "./dom.js";

const SERIES = 6;
const OTHER = "\u0000other";
const WIDTH = 900;
const HEIGHT = 180;
const AXIS = 18;

const labelFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit",
  minute: "2-digit" });

/**
 * Draws the graph. `onBucket(startSeconds, endSeconds)` and `onSeries(key)` narrow the view.
 */
export function drawGraph(chart, legend, response, range, { onBucket, onSeries }) {
  const buckets = response.buckets ?? [];
  const keys = (response.groups ?? []).slice(0, SERIES).map((group) => group.key);
  const hasOther = (response.groups ?? []).length > SERIES;
  const series = hasOther ? [...keys, OTHER] : keys;
  const totals = buckets.map((bucket) => Number(bucket.count ?? 0));
  const highest = Math.max(1, ...totals);
  const barWidth = WIDTH / Math.max(1, buckets.length);

  const plot = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT + AXIS}`, role: "group",
    "aria-label": "Events over time", class: "plot" });
  buckets.forEach((bucket, index) => {
    const start = Date.parse(bucket.startTime) / 1000;
    const end = Math.min(start + range.interval, range.end);
    const byKey = new Map((bucket.groups ?? []).map((group) => [group.key, Number(group.count)]));
    const count = totals[index];
    const label = `${labelFormat.format(new Date(start * 1000))}: ${count} events`;
    const bar = svg("g", { class: "bar", tabindex: 0, role: "button", "aria-label": label,
      "data-start": start, "data-count": count,
      onclick: () => onBucket(start, end),
      onkeydown: (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          onBucket(start, end);
        }
      } },
    svg("title", {}, label),
    svg("rect", { class: "hit", x: index * barWidth, y: 0, width: barWidth, height: HEIGHT }));
    let top = HEIGHT;
    let rest = count;
    series.forEach((key, seriesIndex) => {
      const value = key === OTHER ? rest : byKey.get(key) ?? 0;
      if (key !== OTHER) rest -= value;
      if (value <= 0) return;
      const height = (value / highest) * (HEIGHT - 4);
      top -= height;
      bar.append(svg("rect", { class: `series-${seriesIndex}`, x: index * barWidth + 1, y: top,
        width: Math.max(1, barWidth - 2), height }));
    });
    if (!series.length && count > 0) {
      const height = (count / highest) * (HEIGHT - 4);
      bar.append(svg("rect", { class: "series-0", x: index * barWidth + 1, y: HEIGHT - height,
        width: Math.max(1, barWidth - 2), height }));
    }
    plot.append(bar);
  });
  const step = Math.max(1, Math.ceil(buckets.length / 6));
  buckets.forEach((bucket, index) => {
    if (index % step) return;
    plot.append(svg("text", { x: index * barWidth + 2, y: HEIGHT + AXIS - 4, class: "axis" },
      labelFormat.format(new Date(bucket.startTime))));
  });
  plot.append(svg("text", { x: WIDTH - 2, y: 12, class: "axis", "text-anchor": "end" }, `max ${highest}`));
  chart.replaceChildren(plot);

  legend.replaceChildren(...series.map((key, index) => {
    const total = key === OTHER ? null : (response.groups ?? []).find((group) => group.key === key)?.count;
    const name = key === OTHER ? "other" : key || "(none)";
    const swatch = el("span", { class: `swatch series-${index}`, "aria-hidden": "true" });
    if (key === OTHER) return el("li", {}, swatch, name);
    return el("li", {}, el("button", { type: "button", class: "series", "data-key": key,
      onclick: () => onSeries(key) }, swatch, `${name} (${total})`));
  }));
}
