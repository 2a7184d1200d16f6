// Audit rows: action names, one row per event, and runs of sign-ins folded into one row.

import { detailsParts } from "./format.js";
import { el, focusKeyed, when } from "./ui.js";

export const ACTIONS = {
  create: "Created",
  edit: "Edited",
  revoke: "Revoked",
  reinstate: "Reinstated",
  delete: "Deleted",
  roll: "Rolled",
  revoke_all: "Revoked all",
  reinstate_all: "Reinstated all",
  delete_revoked: "Deleted all revoked",
  admin_add: "Admin added",
  admin_passwd: "Admin password changed",
  admin_grants: "Admin grants changed",
  admin_remove: "Admin removed",
  admin_sign_in: "Signed in",
  admin_sign_out: "Signed out",
  admin_sign_in_refused: "Refused sign-in",
  admin_login_failed: "Failed sign-in",
  admin_login_throttled: "Throttled sign-in",
  identify: "Looked up by secret",
  expiring: "Expiry notice",
};

// Sign-ins and sign-outs fold; failed or throttled sign-ins stay visible one by one.
const SESSION_ACTIONS = new Set(["admin_sign_in", "admin_sign_out"]);
const FOLD_AT = 2; // session events in a row that become one folded row

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

// Newest-first events as items: {event} alone, or {fold: [events]} for a run of sign-ins.
export function foldSignIns(events) {
  const items = [];
  let run = [];
  const flush = () => {
    if (run.length >= FOLD_AT) items.push({ fold: run });
    else for (const event of run) items.push({ event });
    run = [];
  };
  for (const event of events) {
    if (SESSION_ACTIONS.has(event.action)) run.push(event);
    else {
      flush();
      items.push({ event });
    }
  }
  flush();
  return items;
}

// "5 sign-ins by alice", "3 sign-ins, 2 sign-outs by alice, bob".
export function foldLabel(events) {
  const ins = events.filter((event) => event.action === "admin_sign_in").length;
  const outs = events.length - ins;
  const actors = [...new Set(events.map((event) => event.actor))];
  const counts = [ins ? plural(ins, "sign-in") : null, outs ? plural(outs, "sign-out") : null].filter(Boolean).join(", ");
  return `${counts} by ${actors.join(", ")}`;
}

// The event's key name, a link to the key's page when the entry names one key.
function keyName(event) {
  if (!event.key_name) return null;
  if (!event.key_id) return event.key_name;
  return el("a", { href: `#/keys/${event.key_id}`, class: "key-link", "data-focus-key": `audit-key:${event.id}`, text: event.key_name });
}

// One part of an entry's details: text, a time as the page writes times, or a roll's overlap
// as the roll dialog says it (the API's seconds in its tooltip, as a time's tooltip is its ISO).
function detailNode(part) {
  if (typeof part === "string") return part;
  if ("overlap" in part) return el("span", { class: "overlap", title: `overlap_seconds: ${part.overlap}`, text: part.text });
  return when(part.time);
}

export function auditRow(event) {
  return el(
    "tr",
    { "data-audit-id": event.id },
    el("td", { "data-label": "When" }, when(event.at)),
    el("td", { "data-label": "Actor", text: event.actor }),
    el("td", { "data-label": "Action", text: ACTIONS[event.action] || event.action }),
    el("td", { "data-label": "Key", class: "key-cell" }, keyName(event)),
    el("td", { "data-label": "Details", class: "details" }, detailsParts(event.details).map(detailNode)),
  );
}

// The rows of a folded run: a toggle row, then its events (shown when expanded).
function foldRows(events, expanded) {
  const id = String(events[0].id); // the newest event names the run across re-renders
  const open = expanded.has(id);
  const inner = events.map((event) => {
    const tr = auditRow(event);
    tr.classList.add("folded-item");
    tr.hidden = !open;
    return tr;
  });
  const toggle = el("button", {
    type: "button",
    class: "fold-toggle quiet",
    "aria-expanded": String(open),
    "data-focus-key": `fold:${id}`,
    onclick: () => {
      const now = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", String(now));
      if (now) expanded.add(id);
      else expanded.delete(id);
      for (const tr of inner) tr.hidden = !now;
    },
  });
  toggle.append(el("span", { class: "chevron", "aria-hidden": "true" }), foldLabel(events));
  const span = el("span", { class: "fold-span muted" }, when(events[events.length - 1].at), " – ", when(events[0].at));
  const head = el("tr", { class: "fold-row", "data-fold": id }, el("td", { colspan: "5" }, toggle, " ", span));
  return [head, ...inner];
}

// Table rows for newest-first events, runs of sign-ins folded (`expanded`: open runs' ids).
export function auditRows(events, expanded) {
  return foldSignIns(events).flatMap((item) => (item.fold ? foldRows(item.fold, expanded) : [auditRow(item.event)]));
}

// A quiet refresh's first page (`fresh`) merged with the events shown (`loaded`), both newest
// first (ids falling): new entries on top, the older ones loaded with "Load more" kept. Null
// when the page does not reach the entries shown (more new ones than a page), or either is
// empty: the caller shows the page afresh.
export function mergeNewest(fresh, loaded) {
  if (!loaded.length || !fresh.length) return null;
  const oldest = fresh[fresh.length - 1].id;
  if (oldest > loaded[0].id) return null;
  return [...fresh, ...loaded.filter((event) => event.id < oldest)];
}

// After "Load more" (`before`: the rows shown until then): the first new row's link or toggle
// takes the focus, which the button (hidden after the last page) would otherwise lose.
export function focusFirstNew(body, before) {
  const row = body.children[before];
  const target = row ? row.querySelector("a[href], button") : null;
  if (target) target.focus();
}

// Render events into a table body, the focus staying on the link or toggle it was on.
export function renderAuditRows(body, events, expanded) {
  const active = document.activeElement;
  const focused = active && body.contains(active) ? active.dataset.focusKey : null;
  body.replaceChildren(...auditRows(events, expanded));
  if (focused) {
    const again = focusKeyed(focused, body);
    if (again) again.focus({ preventScroll: true });
  }
}
