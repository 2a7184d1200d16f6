// The key list's overview: the summary line above it and "Page X of Y" under it.

import { api, query } from "./api.js";
import { hasParams, hasPath } from "./features.js";
import { el } from "./ui.js";

const SUMMARY = "/api/v1/keys/summary";
export const UNUSED_DAYS = 30; // "unused for 30 days" in the summary line
const COUNT_PAGE = 1000; // keys per request when counting (the API's largest page)
const COUNT_PAGES = 10; // requests per count at most: past 10,000 keys, "Page 1 of 200+"

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

// "73 keys · 1 expired · 2 expiring · 5 unused for 30 days" (zero counts left out).
export function summaryText(summary) {
  const parts = [plural(summary.total, "key")];
  if (summary.revoked) parts.push(`${summary.revoked} revoked`);
  if (summary.expired) parts.push(`${summary.expired} expired`);
  if (summary.expiring) parts.push(`${summary.expiring} expiring`);
  if (summary.unused) parts.push(`${summary.unused} unused for ${plural(summary.unused_days, "day")}`);
  return parts.join(" · ");
}

// Whether the key list can show only the keys unused for N days (an older keygate cannot).
export function canFilterUnused() {
  return hasParams("/api/v1/keys", "unused_days");
}

// The summary line as nodes: its "N unused for D days" a button showing those keys in the
// list (`showUnused(days)`), when the list can filter by it; else the plain text.
export function summaryNodes(summary, showUnused) {
  if (!summary.unused || !canFilterUnused()) return [summaryText(summary)];
  const rest = summaryText({ ...summary, unused: 0 });
  const days = summary.unused_days;
  const button = el("button", {
    type: "button",
    class: "link-button",
    "data-focus-key": "summary-unused",
    title: `Show only the keys unused for ${plural(days, "day")}`,
    text: `${summary.unused} unused for ${plural(days, "day")}`,
    onclick: () => showUnused(days),
  });
  return [`${rest} · `, button];
}

// The summary (GET /api/v1/keys/summary's answer), or null when this server has none.
export async function loadSummary({ background = false } = {}) {
  if (!hasPath(SUMMARY)) return null;
  try {
    const summary = await api("GET", query(SUMMARY, { unused_days: UNUSED_DAYS }), undefined, { background });
    return summary && typeof summary.total === "number" ? summary : null;
  } catch (failure) {
    if (failure.status === 401) throw failure;
    return null;
  }
}

let counted = { key: null, value: null };

// How many keys match the list's filters: {count, capped}; read again only when the filters
// or the change sequence `seq` moved. The list answers pages without a total, so this counts.
export async function countKeys(filters, seq, { background = false } = {}) {
  const key = JSON.stringify([filters, seq]);
  if (counted.key === key) return counted.value;
  let count = 0;
  let cursor = null;
  let pages = 0;
  do {
    const page = await api("GET", query("/api/v1/keys", { ...filters, limit: COUNT_PAGE, cursor }), undefined, { background });
    count += page.items.length;
    cursor = page.next_cursor;
    pages += 1;
  } while (cursor && pages < COUNT_PAGES);
  counted = { key, value: { count, capped: Boolean(cursor) } };
  return counted.value;
}

// "Page 2 of 3" ("Page 1 of 200+" past the counting bound).
export function pageLabel(page, pageSize, total) {
  const pages = Math.max(1, Math.ceil(total.count / pageSize));
  return `Page ${page + 1} of ${pages}${total.capped ? "+" : ""}`;
}
