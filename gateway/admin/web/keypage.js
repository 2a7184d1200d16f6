// A key's own page (#/keys/ID): settings, roles and their rules, usage chart, advice, history,
// and the list's actions on the key (app.js's own functions and dialogs, called back).

import { api, ApiError, query } from "./api.js";
import { focusFirstNew, mergeNewest, renderAuditRows } from "./auditview.js";
import { pointLabel, usageChart, usageLegend, usageTable, usageTotals } from "./chart.js";
import { canFilterUnused } from "./density.js";
import { hasPath } from "./features.js";
import { expiresInText } from "./format.js";
import { el, when } from "./ui.js";

const HISTORY_PAGE_SIZE = 25;
const ADVICE_DAYS = 30; // "in the last 30 days this key used only …"
const RULE_DAYS = 30; // the window of "rules used"
const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
// The chart's ranges: how far back, and the step the usage API is asked for.
export const RANGES = {
  "24h": { label: "24 hours", span: DAY_MS, step: "hour" },
  "7d": { label: "7 days", span: 7 * DAY_MS, step: "hour" },
  "90d": { label: "90 days", span: 90 * DAY_MS, step: "day" },
};

const $ = (id) => document.getElementById(id);

// {openKeyDialog, rollKey, revokeKey, reinstateKey, deleteKey, handleFailure, roles, refusal,
// showUnused} from app.js
let hooks = null;
// The page's buttons for the list's actions, and the app.js function each one calls.
const ACTIONS = {
  "key-page-roll": "rollKey",
  "key-page-revoke": "revokeKey",
  "key-page-reinstate": "reinstateKey",
  "key-page-delete": "deleteKey",
};
// Every action the admin's grants may refuse (all but Check access and Audit history).
const MANAGE_BUTTONS = ["key-page-renew", "key-page-edit", ...Object.keys(ACTIONS)];
// A button the key's new state hides hands the focus to the one shown in its place.
const IN_PLACE_OF = {
  "key-page-renew": "key-page-edit",
  "key-page-revoke": "key-page-reinstate",
  "key-page-reinstate": "key-page-revoke",
};
const DEFAULT_RANGE = "24h";
const page = {
  id: null,
  key: null,
  range: DEFAULT_RANGE,
  usage: null, // the last usage answer, redrawn on resize
  history: { events: [], next: null, expanded: new Set() },
  ticket: 0,
};

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

// Wire the page's controls once; `given` are app.js's functions the page calls back.
export function setupKeyPage(given) {
  hooks = given;
  for (const [name, range] of Object.entries(RANGES)) {
    const button = el("button", { type: "button", class: "quiet", "data-range": name, "aria-pressed": String(name === page.range), text: range.label });
    button.addEventListener("click", () => chooseRange(name));
    $("usage-ranges").append(button);
  }
  $("usage-table-toggle").addEventListener("click", () => {
    const open = $("usage-table-toggle").getAttribute("aria-expanded") !== "true";
    $("usage-table-toggle").setAttribute("aria-expanded", String(open));
    $("usage-table-toggle").textContent = open ? "Hide the table" : "Show as table";
    $("usage-table-wrap").classList.toggle("visually-hidden", !open);
  });
  $("key-page-edit").addEventListener("click", () => {
    if (page.key) hooks.openKeyDialog(page.key, $("key-page-edit"));
  });
  // An expired key: a new expiry, as the list's "Renew…" offers.
  $("key-page-renew").addEventListener("click", () => {
    if (page.key) hooks.openKeyDialog(page.key, $("key-page-renew"), { renew: true });
  });
  // The row menu's actions, the same functions: the focus comes back to the button used.
  for (const [id, action] of Object.entries(ACTIONS)) {
    $(id).addEventListener("click", () => {
      if (page.key) hooks[action](page.key, $(id));
    });
  }
  $("key-history-more").addEventListener("click", () => {
    const before = $("key-history-body").children.length;
    loadHistory({ more: true }).then(() => focusFirstNew($("key-history-body"), before), hooks.handleFailure);
  });
  new ResizeObserver(() => drawUsage()).observe($("usage-chart"));
}

// Show key `id` (navigated: a fresh page; else a quiet refresh of the one shown).
export async function showKeyPage(id, { quiet = false } = {}) {
  const fresh = page.id !== id;
  const ticket = ++page.ticket;
  page.id = id;
  if (fresh) {
    page.key = null;
    page.usage = null;
    page.history = { events: [], next: null, expanded: new Set() };
    $("key-page-title").textContent = "API key";
    $("key-page-body").hidden = true;
    $("key-page-missing").hidden = true;
    $("key-page-actions").hidden = true;
    $("key-page-edit-reason").hidden = true;
    $("key-page-status").textContent = "";
    delete $("key-page-head").dataset.status;
    $("key-page-message").textContent = "";
  }
  let key;
  try {
    key = await api("GET", `/api/v1/keys/${id}`, undefined, { background: quiet });
  } catch (failure) {
    if (ticket !== page.ticket) return;
    if (failure instanceof ApiError && failure.status === 404) {
      page.key = null;
      $("key-page-title").textContent = "Key not found";
      $("key-page-status").textContent = "";
      delete $("key-page-head").dataset.status;
      $("key-page-body").hidden = true;
      $("key-page-actions").hidden = true;
      $("key-page-edit-reason").hidden = true;
      $("key-page-missing").hidden = false;
      return;
    }
    throw failure;
  }
  if (ticket !== page.ticket) return;
  page.key = key;
  document.title = `${key.name} · API key · keygate`;
  renderKey(key);
  $("key-page-body").hidden = false;
  await Promise.all([loadUsage({ quiet }), loadHistory({ quiet }), loadExtras(key, { quiet })]);
}

// A refresh after a change (here or elsewhere, or the periodic usage refresh) while the page
// is shown; resolves when it is drawn.
export function refreshKeyPage() {
  if (page.id === null) return Promise.resolve();
  return showKeyPage(page.id, { quiet: true }).catch(hooks.handleFailure);
}

export function leaveKeyPage() {
  page.id = null;
  page.ticket += 1;
}

// Sign-out: leave the page, and its chart's period and table back to their defaults.
export function resetKeyPage() {
  leaveKeyPage();
  page.key = null;
  page.usage = null;
  page.range = DEFAULT_RANGE;
  for (const button of $("usage-ranges").querySelectorAll("button")) button.setAttribute("aria-pressed", String(button.dataset.range === DEFAULT_RANGE));
  $("usage-table-toggle").setAttribute("aria-expanded", "false");
  $("usage-table-toggle").textContent = "Show as table";
  $("usage-table-wrap").classList.add("visually-hidden");
}

// ------------------------------------------------------------------------ settings and roles

function rateLimitWords(limit) {
  if (!limit) return el("span", { class: "muted", text: "The roles' default" });
  return `${limit.requests} per ${limit.per}, burst ${limit.burst}`;
}

function expiryCell(key) {
  if (!key.expires_at) return el("span", { class: "muted", text: "Never" });
  const left = new Date(key.expires_at).getTime() - Date.now();
  const note = left > 0 ? ` (${expiresInText(left / 1000)})` : " (expired)";
  return el("span", {}, when(key.expires_at), note);
}

function rollCell(key) {
  if (!key.rolled_at) return el("span", { class: "muted", text: "Never rolled" });
  const parts = [el("span", {}, "Rolled ", when(key.rolled_at))];
  if (key.previous_expires_at && new Date(key.previous_expires_at).getTime() > Date.now()) {
    parts.push(el("span", { class: "roll-overlap" }, "; old secret valid until ", when(key.previous_expires_at)));
  } else if (key.previous_expires_at) {
    parts.push(el("span", {}, "; old secret ended ", when(key.previous_expires_at)));
  }
  return el("span", {}, ...parts);
}

const STATUS_WORDS = { active: "Active", revoked: "Revoked", expired: "Expired" };

// The actions the key's state offers, as the row menu does: Renew for an expired key, Revoke
// or Reinstate; outside the admin's grants each is disabled and says why (the server decides).
function renderActions(key) {
  const refusal = hooks.refusal(key);
  const focused = document.activeElement ? document.activeElement.id : "";
  $("key-page-actions").hidden = false;
  $("key-page-renew").hidden = key.status !== "expired";
  $("key-page-revoke").hidden = key.status === "revoked";
  $("key-page-reinstate").hidden = key.status !== "revoked";
  for (const id of MANAGE_BUTTONS) $(id).disabled = Boolean(refusal);
  if (focused in IN_PLACE_OF && $(focused).hidden) $(IN_PLACE_OF[focused]).focus(); // not lost
  $("key-page-edit-reason").hidden = !refusal;
  $("key-page-edit-reason").textContent = refusal || "";
}

function renderKey(key) {
  renderActions(key);
  $("key-page-head").dataset.status = key.status;
  $("key-page-title").textContent = key.name;
  $("key-page-title").title = key.name;
  $("key-page-status").textContent = STATUS_WORDS[key.status] || key.status;
  $("key-page-status").dataset.status = key.status;
  const rows = [
    ["Description", key.description ? el("span", { class: "full-description", text: key.description }) : el("span", { class: "muted", text: "None" })],
    ["Prefix", el("code", { text: `${key.prefix}…` })],
    ["Created", el("span", {}, when(key.created_at), ` by ${key.created_by}`)],
    ["Expires", expiryCell(key)],
    ["Secret", rollCell(key)],
    ["Rate limit", rateLimitWords(key.rate_limit)],
    ["Last used", when(key.last_used_at)],
    ["Uses", String(key.use_count)],
  ];
  if (key.revoked_at) rows.splice(4, 0, ["Revoked", when(key.revoked_at)]);
  $("key-settings").replaceChildren(...rows.flatMap(([name, value]) => [el("dt", { text: name }), el("dd", { "data-setting": name }, value)]));
  renderRoles(key);
}

function renderRoles(key) {
  const policy = new Map(hooks.roles().map((role) => [role.name, role]));
  $("key-roles").replaceChildren(
    ...key.roles.map((name) => {
      const role = policy.get(name);
      if (!role) {
        return el("li", { class: "role-card unknown-role" }, el("h3", { text: name }), el("p", { class: "form-error", text: "Not in the policy: this role grants nothing." }));
      }
      const rules = role.effective_rules.map((rule) =>
        el("li", {}, el("code", { text: rule.rule }), rule.role === name ? null : el("span", { class: "muted", text: ` (from ${rule.role})` })),
      );
      return el(
        "li",
        { class: "role-card", "data-role": name },
        el("h3", { text: name }),
        role.description ? el("p", { class: "muted", text: role.description }) : null,
        role.includes.length ? el("p", { text: `Includes ${role.includes.join(", ")}.` }) : null,
        rules.length ? el("ul", { class: "rule-list", "aria-label": `What ${name} allows` }, rules) : el("p", { class: "muted", text: "Allows nothing on its own." }),
      );
    }),
  );
}

// ------------------------------------------------------------------------ usage

function chooseRange(name) {
  page.range = name;
  for (const button of $("usage-ranges").querySelectorAll("button")) button.setAttribute("aria-pressed", String(button.dataset.range === name));
  loadUsage().catch(hooks.handleFailure);
}

async function loadUsage({ quiet = false } = {}) {
  const id = page.id;
  const name = page.range;
  const range = RANGES[name];
  const to = Date.now();
  // Whole hours: the API rounds `from` down; asking for exactly N days keeps N days' points.
  const from = Math.ceil((to - range.span) / HOUR_MS) * HOUR_MS;
  const params = { from: new Date(from).toISOString(), to: new Date(to).toISOString(), step: range.step };
  let usage;
  try {
    usage = await api("GET", query(`/api/v1/keys/${id}/usage`, params), undefined, { background: quiet });
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 422) {
      $("usage-note").textContent = `No usage for ${range.label}: ${failure.message}.`;
      return;
    }
    throw failure;
  }
  if (id !== page.id || name !== page.range) return; // another key or range was chosen since
  page.usage = { ...usage, range: name, rangeLabel: range.label };
  $("usage-note").textContent = "";
  drawUsage();
}

function usageSummary(totals, label) {
  const refused = totals.refused ? `${totals.refused} refused (${totals.denied} by policy, ${totals.limited} by rate limit)` : "none refused";
  const errors = totals.upstream_errors ? `, ${totals.upstream_errors} of them answered 5xx by the upstream` : "";
  return `Requests in the last ${label}: ${totals.forwarded} forwarded${errors}; ${refused}.`;
}

function drawUsage() {
  const usage = page.usage;
  const box = $("usage-chart");
  if (!usage || box.clientWidth === 0) return;
  const points = usage.points.map((point) => ({ ...point, start: new Date(point.start).getTime() }));
  const totals = usageTotals(points);
  const summary = usageSummary(totals, usage.rangeLabel);
  const chart = usageChart(points, usage.step, box.clientWidth, summary);
  chart.dataset.range = usage.range;
  box.replaceChildren(chart);
  $("usage-legend").replaceChildren(usageLegend(totals));
  const per = usage.step === "day" ? "day" : "hour";
  const caption = `Requests of ${usage.key_name} per ${per}, last ${usage.rangeLabel} (${per}s without requests left out)`;
  $("usage-table-wrap").replaceChildren(usageTable(points, usage.step, caption));
  $("usage-peak").textContent = peakText(points, usage.step);
}

function peakText(points, step) {
  let peak = null;
  for (const point of points) {
    const all = point.forwarded + point.denied + point.limited;
    if (all > 0 && (peak === null || all > peak.all)) peak = { all, start: point.start };
  }
  if (peak === null) return "No requests in this period.";
  return `Busiest ${step}: ${pointLabel(peak.start, step, { full: true })}, ${plural(peak.all, "request")}.`;
}

// ------------------------------------------------------------------------ advice, rules, addresses

// An optional section: the server may not have its endpoint (hidden), or answer it later.
async function optional(path, { quiet }) {
  const route = path.split("?")[0].replace(/\/keys\/[0-9]+\//, "/keys/{id}/");
  if (!hasPath(route)) return null;
  try {
    return await api("GET", path, undefined, { background: quiet });
  } catch (failure) {
    if (failure instanceof ApiError && failure.status !== 401) return null;
    throw failure;
  }
}

function ruleText(rule) {
  if (typeof rule === "string") return rule;
  const methods = Array.isArray(rule.methods) ? rule.methods.join(",") : rule.methods || "";
  return rule.rule || `${methods} ${rule.path || ""}`.trim();
}

async function loadExtras(key, { quiet }) {
  const [advice, rules, addresses] = await Promise.all([
    optional(`/api/v1/keys/${key.id}/advice?days=${ADVICE_DAYS}`, { quiet }),
    optional(`/api/v1/keys/${key.id}/rules?days=${RULE_DAYS}`, { quiet }),
    optional(`/api/v1/keys/${key.id}/addresses`, { quiet }),
  ]);
  if (key.id !== page.id) return;
  const focused = document.activeElement ? document.activeElement.id : "";
  renderAdvice(key, advice);
  renderRulesUsed(rules);
  renderAddresses(addresses);
  // A quiet refresh re-renders the advice: its button keeps the focus it had.
  if (focused && document.activeElement === document.body && $(focused)) $(focused).focus({ preventScroll: true });
}

function sameSet(a, b) {
  return a.length === b.length && a.every((item) => b.includes(item));
}

function renderAdvice(key, advice) {
  const section = $("key-advice");
  section.hidden = !advice;
  if (!advice) return;
  const parts = [el("p", { class: "advice-message", text: advice.message || "" })];
  const entry = (item) => {
    if (typeof item === "string") return el("li", {}, el("code", { text: item }));
    const count = typeof item.count === "number" ? `, ${plural(item.count, "request")}` : "";
    return el("li", {}, el("code", { text: ruleText(item) }), el("span", { class: "muted", text: ` (${item.role}${count})` }));
  };
  const list = (title, items) => (items && items.length ? el("div", { "data-advice": title }, el("h3", { text: title }), el("ul", { class: "plain-list" }, items.map(entry))) : null);
  parts.push(
    list("Roles used", advice.used_roles),
    list("Roles not used", advice.unused_roles),
    list("Rules not used", advice.unused_rules),
  );
  const suggested = advice.suggested_roles;
  if (Array.isArray(suggested) && suggested.length && !sameSet(suggested, key.roles) && !hooks.refusal(key)) {
    const button = el("button", { type: "button", class: "primary", id: "advice-apply", text: `Edit roles to ${suggested.join(", ")}…` });
    button.addEventListener("click", () => {
      hooks.openKeyDialog(page.key, button);
      // Preselect only: nothing changes until the administrator saves the dialog.
      for (const box of document.querySelectorAll("#key-roles-list input[type=checkbox]")) {
        if (!box.disabled) box.checked = suggested.includes(box.value);
      }
    });
    parts.push(el("p", { class: "hint", text: "Opens the edit dialog with these roles chosen; nothing changes until you save." }), button);
  }
  if (canFilterUnused()) {
    // The advice's "keys unused for N days": every such key, in the list (not only this one).
    const days = advice.days || ADVICE_DAYS;
    const show = el("button", { type: "button", class: "link-button", id: "advice-unused", text: `Show every key unused for ${plural(days, "day")}` });
    show.addEventListener("click", () => hooks.showUnused(days));
    parts.push(el("p", { class: "advice-unused" }, show));
  }
  $("key-advice-body").replaceChildren(...parts.filter(Boolean));
}

function renderRulesUsed(rules) {
  const section = $("key-rules-used");
  section.hidden = !rules;
  if (!rules) return;
  const items = rules.items || [];
  $("key-rules-used-body").replaceChildren(
    items.length
      ? el(
          "table",
          { class: "compact" },
          el("caption", { class: "visually-hidden", text: `Policy rules that allowed this key's requests, last ${RULE_DAYS} days` }),
          el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Rule" }), el("th", { scope: "col", text: "Role" }), el("th", { scope: "col", class: "num", text: "Requests" }), el("th", { scope: "col", text: "Last used" }))),
          el(
            "tbody",
            {},
            items.map((rule) =>
              el("tr", {}, el("td", {}, el("code", { text: ruleText(rule) })), el("td", { text: rule.role }), el("td", { class: "num", text: String(rule.count) }), el("td", {}, when(rule.last_used_at))),
            ),
          ),
        )
      : el("p", { class: "muted", text: `No request in the last ${RULE_DAYS} days was allowed by a rule.` }),
  );
}

function renderAddresses(addresses) {
  const section = $("key-addresses");
  section.hidden = !addresses;
  if (!addresses) return;
  const items = addresses.items || [];
  $("key-addresses-body").replaceChildren(
    items.length
      ? el("ul", { class: "plain-list" }, items.map((item) => el("li", {}, el("code", { text: item.address }), " · last seen ", when(item.last_seen_at))))
      : el("p", { class: "muted", text: "No client address seen yet." }),
  );
}

// ------------------------------------------------------------------------ history

// The key's history: a page more, or (quiet) its newest entries merged with those shown.
async function loadHistory({ more = false, quiet = false } = {}) {
  const id = page.id;
  const history = page.history;
  const params = { key_id: id, limit: HISTORY_PAGE_SIZE, cursor: more ? history.next : null };
  const answer = await api("GET", query("/api/v1/audit", params), undefined, { background: quiet });
  if (id !== page.id || history !== page.history) return;
  const merged = quiet && !more ? mergeNewest(answer.items, history.events) : null;
  if (merged) history.events = merged; // "Load more" goes on from the oldest entry shown
  else {
    history.events = more ? [...history.events, ...answer.items] : answer.items;
    history.next = answer.next_cursor;
  }
  renderAuditRows($("key-history-body"), history.events, history.expanded);
  $("key-history-more").hidden = !history.next;
  $("key-history-empty").hidden = history.events.length > 0;
}
