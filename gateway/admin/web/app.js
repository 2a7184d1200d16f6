// The API Keys page: sign-in, the key list, create/edit/revoke/delete, batches, audit, explain.

import { api, ApiError, query, setCsrfToken } from "./api.js";
import { focusFirstNew, mergeNewest, renderAuditRows } from "./auditview.js";
import { connectionLost, connectionOk, resetConnection, shouldTry, unreachable } from "./banner.js";
import { countKeys, loadSummary, pageLabel, summaryNodes } from "./density.js";
import { CUSTOM, NEVER, presetExpiry, presetOf, RENEW_PRESET } from "./expiry.js";
import { loadFeatures } from "./features.js";
import { clearFieldError, clearWhenFixed, showProblems } from "./fielderrors.js";
import { auditFilters, listFilters, setUnusedFilter, showFilters, unusedFilter } from "./filters.js";
import { expiresInText } from "./format.js";
import { grantsText, manageRefusal } from "./grants.js";
import { checkExpiry, checkName, checkRoles, parseRateLimit } from "./keychecks.js";
import { leaveKeyPage, refreshKeyPage, resetKeyPage, setupKeyPage, showKeyPage } from "./keypage.js";
import { overlapText } from "./overlap.js";
import { askOverlap } from "./rolldialog.js";
import { currentRoute, go, parseRoute, routeHash, showView, startRouter } from "./router.js";
import {
  anyDialogOpen,
  closeDialog,
  closeMenu,
  dateFormat,
  el,
  focusKeyed,
  icon,
  installDialogKeys,
  menuButton,
  menuOpen,
  openDialog,
  when,
} from "./ui.js";

const PAGE_SIZE = 50;
const AUDIT_PAGE_SIZE = 25;
const POLL_MS = 500; // how often the change sequence is read: changes show within a second
const USAGE_REFRESH_POLLS = 30; // polls between quiet refreshes for last-used / use counts
const SEARCH_DELAY_MS = 250;

const $ = (id) => document.getElementById(id);

const state = {
  session: null,
  viewsOf: null, // the actor whose filters, search, key page and rows the views hold
  roles: [],
  policy: null, // SHA-256 of the policy in force, as last seen
  keys: { items: [], cursors: [null], page: 0, next: null },
  selected: new Set(), // ids of the rows chosen for a batch (this page's rows only)
  // key: the one "Audit history" asked about (id, name); filters: those the events shown match
  audit: { next: null, key: null, events: [], expanded: new Set(), filters: null },
  seq: null,
  pollTimer: null,
  polls: 0,
  pending: false,
};

// ------------------------------------------------------------------------ formatting

function toLocalInput(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function fromLocalInput(value) {
  if (!value) return null;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toISOString();
}

// The status line of the view shown (a key's page has its own). The URL, not the router:
// after Delete on a key's page the list is the view, before the router has heard of it.
function say(message, kind = "info") {
  const node = parseRoute(window.location.hash).view === "key" ? $("key-page-message") : $("status-message");
  node.textContent = message;
  node.dataset.kind = kind;
}

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

// ------------------------------------------------------------------------ session

// How an admin may sign in (GET /api/v1/session/methods, public): local form, provider button.
let methods = { methods: ["local"], local: true, backend: false, oidc: null };

// The form's ways in, as the sign-in API names them, in the order admin.sign_in lists them.
const FORM_METHODS = {
  local: { label: "keygate account", hint: "With your keygate admin account (keygate admins add NAME)." },
  backend: { label: "Backend account", hint: "With your account at the backend (the same name and password)." },
};

function formMethods() {
  return (methods.methods || []).filter((method) => method in FORM_METHODS && methods[method]);
}

// Why a provider sign-in came back without a session: the callback's `#sign-in-error=CODE`.
const SIGN_IN_ERRORS = {
  provider_unavailable: (name) => `${name} cannot be reached right now. Try again later${methods.local ? ", or sign in with a local account" : ""}.`,
  sign_in_expired: () => "That sign-in could not be completed: it took too long, was already used, or was started in another browser. Try again.",
  provider_refused: (name, reason) => `${name} refused the sign-in${reason ? ` (${reason})` : ""}. Try again.`,
  token_invalid: (name) => `${name}'s answer could not be verified, so you were not signed in.`,
  not_allowed: (name) => `Your ${name} account is not in a group allowed to sign in to keygate.`,
  cancelled: (name) => `The sign-in was cancelled at ${name}.`,
};

async function loadMethods() {
  try {
    methods = await api("GET", "/api/v1/session/methods");
  } catch {
    methods = { methods: ["local"], local: true, backend: false, oidc: null };
  }
}

function signInErrorFromUrl() {
  const hash = window.location.hash.slice(1);
  if (!hash) return "";
  const params = new URLSearchParams(hash);
  const code = params.get("sign-in-error");
  if (code === null) return "";
  window.history.replaceState(null, "", window.location.pathname);
  const name = (methods.oidc && methods.oidc.name) || "The identity provider";
  const describe = SIGN_IN_ERRORS[code];
  const reason = (params.get("reason") || "").replace(/[^A-Za-z0-9_.-]/g, "").slice(0, 64);
  return describe ? describe(name, reason) : "The sign-in could not be completed. Try again.";
}

// A deep link (#/keys/12) survives the provider's round trip, which comes back to `/`: kept
// in this tab's sessionStorage when the provider's button is followed, put back once on return.
const RETURN_TO = "keygate.return-to";

// Only the router's own routes are kept or put back (anything else is dropped unread).
function isRoute(hash) {
  return typeof hash === "string" && hash.length > 1 && routeHash(parseRoute(hash)) === hash;
}

function rememberDeepLink() {
  try {
    const hash = window.location.hash;
    if (isRoute(hash)) window.sessionStorage.setItem(RETURN_TO, hash);
    else window.sessionStorage.removeItem(RETURN_TO);
  } catch {
    // no storage (disabled, private mode): the sign-in lands on the key list
  }
}

function restoreDeepLink() {
  let saved = null;
  try {
    saved = window.sessionStorage.getItem(RETURN_TO);
    window.sessionStorage.removeItem(RETURN_TO);
  } catch {
    return;
  }
  const hash = window.location.hash;
  if (isRoute(saved) && (hash === "" || hash === "#")) window.history.replaceState(null, "", window.location.pathname + saved);
}

// After a sign-in: the list's search on the key list, else the view's heading.
function focusAfterSignIn() {
  const view = currentRoute().view;
  if (view === "keys") $("search").focus();
  else {
    const heading = document.querySelector(`[data-view="${view}"] [data-view-heading]`);
    if (heading) heading.focus();
  }
}

function showMethods() {
  const oidc = methods.oidc;
  $("oidc-sign-in").hidden = !oidc;
  if (oidc) $("oidc-name").textContent = oidc.name;
  const form = formMethods();
  $("signin-local").hidden = form.length === 0;
  $("signin-or").hidden = !(oidc && form.length);
  $("signin-or-text").textContent = form.length > 1 ? "or with an account" : `or with a ${form[0] === "backend" ? "backend" : "local"} account`;
  const hint = $("signin-hint");
  hint.hidden = Boolean(oidc) || form.length !== 1;
  if (form.length === 1) hint.textContent = FORM_METHODS[form[0]].hint;
  // Both local and backend accounts: the admin says which (a name may exist in both).
  const select = $("signin-method");
  $("signin-method-field").hidden = form.length < 2;
  const chosen = select.value;
  select.replaceChildren(...form.map((method) => el("option", { value: method }, FORM_METHODS[method].label)));
  if (form.includes(chosen)) select.value = chosen;
  $("signin-submit").classList.toggle("primary", !oidc);
}

// Where the signed-in admin came from: "local account", "via Keycloak", ...
function sourceLabel(session) {
  if (session.source === "local") return "local account";
  if (session.source === "oidc") return `via ${(methods.oidc && methods.oidc.name) || "the identity provider"}`;
  if (session.source === "backend") return "via the backend's accounts";
  if (session.source === "header") return "via the sign-in proxy";
  return session.source;
}

// What the admin may grant and where that comes from (their account, or their groups).
function grantsLabel(session) {
  const roles = session.grant_all ? "every role" : session.grants.length ? session.grants.join(", ") : "no roles";
  const groups = session.groups || [];
  const from = session.source === "local" ? "this account" : groups.length ? `${groups.length === 1 ? "group" : "groups"} ${groups.join(", ")}` : "no groups";
  return `may grant ${roles} (from ${from})`;
}

function showSignIn(message = "") {
  stopPolling();
  state.session = null;
  setCsrfToken(null);
  closeMenu({ focusButton: false });
  for (const dialog of document.querySelectorAll("dialog[open]")) closeDialog(dialog);
  clearSecret();
  $("loading").hidden = true;
  $("app-view").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  $("signin-view").hidden = false;
  const error = $("signin-error");
  error.textContent = message;
  error.hidden = !message;
  showMethods();
  $("signin-password").value = "";
  if (formMethods().length) $("signin-name").focus();
  else if (methods.oidc) $("oidc-sign-in").focus();
}

// Who signed in, as the session API names them ("local:root", "oidc:…"): one admin.
function actorOf(session) {
  return session.actor || session.admin;
}

async function showApp(session) {
  // A session that ended without Sign out left its admin's views: another admin starts
  // from the defaults, the same admin signing back in finds their view as they left it.
  if (state.viewsOf !== null && state.viewsOf !== actorOf(session)) resetViews();
  state.viewsOf = actorOf(session);
  state.session = session;
  setCsrfToken(session.csrf_token);
  $("loading").hidden = true;
  $("signin-view").hidden = true;
  $("app-view").hidden = false;
  $("who").hidden = false;
  $("who-name").textContent = session.display_name || session.admin;
  $("who-name").title = session.actor || session.admin;
  $("who-source").textContent = sourceLabel(session);
  $("who-grants").textContent = grantsLabel(session);
  $("sign-out").hidden = session.auth !== "session";
  const [roles] = await Promise.all([api("GET", "/api/v1/roles"), loadFeatures()]);
  state.roles = roles.roles;
  showFilters(state.roles);
  state.keys.cursors = [null];
  state.keys.page = 0;
  // Read the sequence before the list: any change after this point triggers a refresh.
  const { seq, policy } = await api("GET", "/api/v1/changes");
  state.policy = policy;
  state.seq = seq;
  startRouter(showRoute);
  await Promise.all([loadKeys(), loadAudit()]);
  startPolling(seq);
}

// ------------------------------------------------------------------------ views

function showRoute(route, { navigated }) {
  if (route.view !== "key") leaveKeyPage();
  closeMenu({ focusButton: false });
  showView(route.view, { navigated });
  if (route.view === "key") showKeyPage(route.id).catch(handleFailure);
}

const M_UNREACHABLE = "keygate could not be reached, so this may not have been done. Try again when the connection is back.";

function handleFailure(error) {
  if (error instanceof ApiError && error.status === 401) {
    resetConnection();
    showSignIn("Your session has ended. Sign in again.");
    return true;
  }
  if (unreachable(error)) {
    connectionLost({ now: true });
    say(error instanceof ApiError ? error.message : M_UNREACHABLE, "error");
    return false;
  }
  say(error.message || String(error), "error");
  return false;
}

async function signIn(event) {
  event.preventDefault();
  const form = formMethods();
  if (!form.length) return; // only the provider's button signs in
  const error = $("signin-error");
  error.hidden = true;
  const name = $("signin-name").value;
  const password = $("signin-password").value;
  const method = form.length > 1 ? $("signin-method").value : form[0];
  try {
    const session = await api("POST", "/api/v1/session", { name, password, method });
    $("signin-password").value = "";
    await showApp(session);
    focusAfterSignIn();
  } catch (failure) {
    $("signin-password").value = "";
    let message = failure.message;
    if (failure.status === 401) message = "Wrong name or password.";
    else if (failure.status === 429) {
      const wait = failure.body.retry_after;
      message = `Too many failed sign-ins. Try again in ${plural(wait || 1, "second")}.`;
    }
    error.textContent = message;
    error.hidden = false;
    (failure.field === "name" || !name ? $("signin-name") : $("signin-password")).focus();
  }
}

async function signOut() {
  const fromProvider = Boolean(state.session && state.session.source === "oidc" && methods.oidc);
  try {
    await api("DELETE", "/api/v1/session");
  } catch (failure) {
    if (!(failure instanceof ApiError && failure.status === 401)) {
      say(failure.message, "error");
      return;
    }
  }
  resetViews();
  // keygate's session is over; the provider's own session ends at its logout page, if any.
  if (fromProvider && methods.oidc.logout) {
    window.location.assign(methods.oidc.logout);
    return;
  }
  showSignIn("You have signed out.");
}

// The next admin to sign in in this tab starts from the defaults: none of the previous one's
// filters, search, page, chosen rows, audit filters, check or key page (nor their rows).
function resetViews() {
  for (const form of ["filters", "audit-filters", "explain-form"]) $(form).reset();
  setUnusedFilter(null);
  renderChips();
  listRequest += 1; // answers still on their way are dropped
  auditRequest += 1;
  state.keys = { items: [], cursors: [null], page: 0, next: null };
  state.selected.clear();
  state.audit = { next: null, key: null, events: [], expanded: new Set(), filters: null };
  renderKeys();
  $("keys-summary").hidden = true;
  $("keys-summary").replaceChildren();
  $("page-label").textContent = "Page 1";
  $("audit-body").replaceChildren();
  $("explain-result").replaceChildren();
  $("status-message").textContent = "";
  resetKeyPage();
  window.history.replaceState(null, "", window.location.pathname); // the key list
  state.viewsOf = null;
}

// ------------------------------------------------------------------------ live updates

function startPolling(seq) {
  stopPolling();
  state.seq = seq;
  state.polls = 0;
  state.pollTimer = window.setInterval(poll, POLL_MS);
}

function stopPolling() {
  if (state.pollTimer !== null) window.clearInterval(state.pollTimer);
  state.pollTimer = null;
  state.seq = null;
}

let polling = false;

async function poll() {
  if (polling || !state.session || !shouldTry()) return;
  polling = true;
  try {
    const { seq, policy } = await api("GET", "/api/v1/changes", undefined, { background: true });
    state.polls += 1;
    // Back after the server could not be reached: what changed meanwhile is read again.
    let changed = connectionOk() || (state.seq !== null && seq !== state.seq);
    state.seq = seq;
    if (state.policy !== null && policy !== state.policy) {
      // The policy was reloaded: its roles (and which keys hold unknown ones) may differ.
      state.roles = (await api("GET", "/api/v1/roles", undefined, { background: true })).roles;
      changed = true;
    }
    state.policy = policy;
    if (changed || state.polls % USAGE_REFRESH_POLLS === 0) refreshSoon(changed);
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 401) {
      resetConnection();
      showSignIn("Your session has ended. Sign in again.");
    } else if (unreachable(failure)) connectionLost(); // the banner says it, once: no message per poll
  } finally {
    polling = false;
  }
}

// Re-read the list (and the audit log after a change) unless a dialog or menu is open.
function refreshSoon(withAudit = true) {
  if (anyDialogOpen() || menuOpen()) {
    state.pending = true;
    return;
  }
  state.pending = false;
  loadKeys({ quiet: true }).catch(handleFailure);
  if (withAudit) loadAudit({ quiet: true }).catch(handleFailure);
  if (currentRoute().view === "key") refreshKeyPage();
}

document.addEventListener("keygate:overlay-closed", () => {
  if (state.pending) window.setTimeout(() => refreshSoon(true), 0);
});

// ------------------------------------------------------------------------ key list

function listParams() {
  return { ...listFilters(), sort: $("sort").value, limit: PAGE_SIZE, cursor: state.keys.cursors[state.keys.page] };
}

// The summary line and "Page X of Y", after the list (they cost more requests than it).
async function loadOverview({ quiet = false } = {}) {
  const ticket = listRequest;
  const [summary, total] = await Promise.all([loadSummary({ background: quiet }), countKeys(listFilters(), state.seq, { background: quiet })]);
  if (ticket !== listRequest) return;
  const line = $("keys-summary");
  const focused = line.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
  line.hidden = summary === null;
  line.replaceChildren(...(summary ? summaryNodes(summary, showUnused) : []));
  if (focused) {
    const again = focusKeyed(focused, line);
    if (again) again.focus();
  }
  $("page-label").textContent = pageLabel(state.keys.page, PAGE_SIZE, total);
}

// Show only the keys unused for `days` days (the summary line's and the advice's link), with a
// chip that removes the filter; on the key list, from any view.
function showUnused(days) {
  setUnusedFilter(days);
  renderChips();
  if (currentRoute().view !== "keys") go({ view: "keys" });
  restartList();
}

function renderChips() {
  const days = unusedFilter();
  const chips = $("filter-chips");
  chips.hidden = days === null;
  if (days === null) return chips.replaceChildren();
  const label = `unused for ${plural(days, "day")}`;
  chips.replaceChildren(
    el("span", { class: "chips-label", text: "Showing only keys" }),
    el(
      "button",
      {
        type: "button",
        class: "filter-chip",
        "aria-label": `Remove filter: ${label}`,
        title: "Remove this filter",
        onclick: () => {
          setUnusedFilter(null);
          renderChips();
          restartList();
          $("search").focus();
        },
      },
      el("span", { text: label }),
      icon("cross"),
    ),
  );
}

let listRequest = 0;

async function loadKeys({ quiet = false } = {}) {
  const ticket = ++listRequest;
  const page = await api("GET", query("/api/v1/keys", listParams()), undefined, { background: quiet });
  if (ticket !== listRequest) return; // a newer request (typing, paging) wins
  if (menuOpen()) {
    // A read that started before a row's menu opened (a background refresh, or a search
    // typed a moment before): rendering would pull the row (and the open menu) out from
    // under the pointer. Read again when the menu closes.
    state.pending = true;
    return;
  }
  if (page.items.length === 0 && state.keys.page > 0) {
    state.keys.page -= 1; // the page emptied under us (deletes elsewhere): step back
    return loadKeys({ quiet });
  }
  state.keys.items = page.items;
  state.keys.next = page.next_cursor;
  renderKeys();
  await loadOverview({ quiet });
}

// After paging: the new page's first key has the focus (and is in view), not a pager button
// the last or first page disables.
function focusFirstKey() {
  const link = $("keys-body").querySelector(".key-link");
  if (link) link.focus();
}

function restartList() {
  state.keys.cursors = [null];
  state.keys.page = 0;
  loadKeys().catch(handleFailure);
}

// Revoked and expired keys: an icon named for the status, and its (hidden) word beside it.
const STATUS_ICONS = { revoked: ["blocked", "Revoked"], expired: ["clock", "Expired"] };

function statusCell(key) {
  const marked = STATUS_ICONS[key.status];
  if (marked) {
    const [name, label] = marked;
    return el("span", { class: `status status-${key.status}` }, icon(name, label), el("span", { "aria-hidden": "true", text: label }));
  }
  return el("span", { class: "status status-active" }, icon("dot"), "Active");
}

const DAY_MS = 86_400_000;

// "expires in 34 s / 5 min / 3 h / 2 days" for an active key within the server's
// expiry.warn_days, else nothing.
function expiresSoon(key) {
  if (key.status !== "active" || !key.expires_at) return null;
  const left = new Date(key.expires_at).getTime() - Date.now();
  const warn = (state.session && state.session.expiry_warn_days) || 14;
  if (left <= 0 || left > warn * DAY_MS) return null;
  return el("span", { class: "expires-soon", text: ` expires ${expiresInText(left / 1000)}` });
}

// Whether the admin may manage the key: the server's answer (can_manage, the store's rule).
function canManage(key) {
  return manageRefusal(key, state.session) === null;
}

function keyMenuItems(key) {
  const refusal = manageRefusal(key, state.session);
  const managed = (item) => (refusal ? { ...item, disabled: true, reason: refusal } : item);
  return [
    managed({ label: "Edit", action: () => openKeyDialog(key) }),
    key.status === "expired" ? managed({ label: "Renew…", action: () => openKeyDialog(key, null, { renew: true }) }) : null,
    managed({ label: "Roll…", action: () => rollKey(key) }),
    managed({ label: "Revoke", disabled: key.status === "revoked", action: () => revokeKey(key) }),
    managed({ label: "Reinstate", disabled: key.status !== "revoked", action: () => reinstateKey(key) }),
    managed({ label: "Delete", danger: true, action: () => deleteKey(key) }),
    { label: "Check access…", action: () => focusExplain(key) },
    { label: "Audit history", action: () => focusAudit(key) },
  ].filter(Boolean);
}

function keyRow(key) {
  const settings = el(
    "button",
    {
      type: "button",
      class: "icon-button settings",
      "aria-label": `Settings for ${key.name}`,
      title: canManage(key) ? "Settings" : `Settings (${manageRefusal(key, state.session)})`,
      "aria-haspopup": "menu",
      "aria-expanded": "false",
      "data-focus-key": `settings:${key.id}`,
    },
    icon("gear"),
  );
  menuButton(settings, `Settings for ${key.name}`, () => keyMenuItems(key));
  const unknown = new Set(key.unknown_roles || []);
  const roles = el(
    "ul",
    { class: "chips" },
    key.roles.map((role) =>
      unknown.has(role)
        ? el("li", { class: "unknown", title: "Not in the policy: grants nothing", text: `${role} (unknown)` })
        : el("li", { text: role }),
    ),
  );
  return el(
    "tr",
    { class: `key-row key-${key.status}`, "data-key-id": key.id },
    el("th", { scope: "row", class: "key-name" }, el("a", { href: `#/keys/${key.id}`, class: "key-link", title: key.name, "data-focus-key": `name:${key.id}`, text: key.name })),
    el("td", { "data-label": "Description", class: "description" }, key.description ? el("div", { class: "clamp", title: key.description, text: key.description }) : null),
    el("td", { "data-label": "Roles" }, roles),
    el("td", { "data-label": "Status" }, statusCell(key)),
    el("td", { "data-label": "Prefix" }, el("code", { text: `${key.prefix}…` })),
    el("td", { "data-label": "Created" }, when(key.created_at), el("span", { class: "by", text: ` by ${key.created_by}` })),
    el("td", { "data-label": "Last used" }, when(key.last_used_at)),
    el("td", { "data-label": "Uses", class: "num", text: String(key.use_count) }),
    el("td", { "data-label": "Expires" }, when(key.expires_at), expiresSoon(key)),
    el(
      "td",
      { class: "row-actions" },
      el("input", {
        type: "checkbox",
        class: "pick",
        "aria-label": `Select ${key.name}`,
        checked: state.selected.has(key.id),
        disabled: !canManage(key),
        title: manageRefusal(key, state.session),
        "aria-describedby": canManage(key) ? null : `why-${key.id}`,
        "data-focus-key": `pick:${key.id}`,
        onchange: (event) => pickKey(key.id, event.target.checked),
      }),
      canManage(key) ? null : el("span", { id: `why-${key.id}`, class: "visually-hidden", text: manageRefusal(key, state.session) }),
      el("div", { class: "menu-anchor" }, settings),
    ),
  );
}

// ------------------------------------------------------------------------ chosen keys

const CHOSEN = {
  revoke: { verb: "Revoke", done: "Revoked", typed: true, note: "Requests with them are refused at once; you can reinstate them later." },
  reinstate: { verb: "Reinstate", done: "Reinstated", typed: false, note: "They work again at once (an expired key needs a new expiry first)." },
  delete: { verb: "Delete", done: "Deleted", typed: true, note: "This cannot be undone." },
};

function pickKey(id, picked) {
  if (picked) state.selected.add(id);
  else state.selected.delete(id);
  renderSelection();
}

function renderSelection() {
  const n = state.selected.size;
  $("selection-bar").hidden = n === 0;
  $("selection-count").textContent = `${plural(n, "key")} selected`;
  for (const [action, words] of Object.entries(CHOSEN)) $(`chosen-${action}`).textContent = `${words.verb} ${n}`;
}

async function runChosen(action) {
  const words = CHOSEN[action];
  const ids = [...state.selected];
  const n = ids.length;
  const names = state.keys.items.filter((key) => state.selected.has(key.id)).map((key) => key.name);
  const sure = await confirmAction({
    title: `${words.verb} ${plural(n, "selected API key")}?`,
    message: `${words.verb} ${names.join(", ")}? ${words.note}`,
    button: `${words.verb} ${plural(n, "key")}`,
    typeCount: words.typed && n > 1 ? n : null,
    danger: words.typed,
    returnFocus: $(`chosen-${action}`),
  });
  if (!sure) return;
  try {
    const result = await api("POST", "/api/v1/keys/batch", { action, ids });
    const left = result.skipped ? ` ${plural(result.skipped, "key")} already ${action === "revoke" ? "revoked" : "active"}.` : "";
    say(`${words.done} ${plural(result.count, "API key")}.${left}`);
    state.selected.clear();
    renderSelection();
    await loadKeys({ quiet: true });
  } catch (failure) {
    handleFailure(failure);
  }
}

function renderKeys() {
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.focusKey : null;
  const body = $("keys-body");
  const shown = new Set(state.keys.items.map((key) => key.id));
  for (const id of [...state.selected]) if (!shown.has(id)) state.selected.delete(id);
  body.replaceChildren(...state.keys.items.map(keyRow));
  renderSelection();
  $("keys-empty").hidden = state.keys.items.length > 0;
  $("prev-page").disabled = state.keys.page === 0;
  $("next-page").disabled = !state.keys.next;
  $("key-names").replaceChildren(...state.keys.items.map((key) => el("option", { value: key.name })));
  if (focused) {
    const again = focusKeyed(focused, body);
    if (again) again.focus();
  }
}

// ------------------------------------------------------------------------ create and edit

// The key form's fields as the API names them, in the form's order (fielderrors.js).
function textField(id) {
  return { error: `${id}-error`, controls: () => [$(id)], listen: () => [$(id)] };
}

const KEY_FIELDS = {
  name: textField("key-name"),
  description: textField("key-description"),
  roles: {
    error: "key-roles-error",
    controls: () => [...$("key-roles-list").querySelectorAll("input[type=checkbox]:not([disabled])")],
    listen: () => [$("key-roles-list")],
  },
  expires_at: {
    error: "key-expires-error",
    // The date when one is being chosen, else the preset: the first is focused.
    controls: () => ($("key-expiry-preset").value === CUSTOM ? [$("key-expires"), $("key-expiry-preset")] : [$("key-expiry-preset"), $("key-expires")]),
    listen: () => [$("key-expiry-preset"), $("key-expires")],
  },
  rate_limit: textField("key-rate-limit"),
};

// "100/minute,burst=20" (the CLI's form) for a key's own rate limit; "" for none.
function rateLimitText(limit) {
  return limit ? `${limit.requests}/${limit.per},burst=${limit.burst}` : "";
}

// The rate limit typed in the dialog as the API takes it (null when empty; checked first).
function typedRateLimit() {
  return parseRateLimit($("key-rate-limit").value).limit;
}

let editing = null; // the key being edited, or null when creating
let renewing = false; // the edit is a renewal (an expired key given a new expiry)

// The expiry chosen: an ISO time, null for never, "" (or raw text) for a date not given.
function chosenExpiry() {
  const preset = $("key-expiry-preset").value;
  return preset === CUSTOM ? fromLocalInput($("key-expires").value) || "" : presetExpiry(preset);
}

function expiryChanged() {
  const preset = $("key-expiry-preset").value;
  const current = editing ? editing.expires_at : null;
  if (preset === NEVER) return current !== null;
  if (preset === CUSTOM) return toLocalInput(current) !== $("key-expires").value;
  return true;
}

// The checks the page makes before asking the server (a message, or null), by field.
const KEY_CHECKS = {
  name: () => checkName($("key-name").value),
  roles: () => checkRoles(chosenRoles()),
  expires_at: () => (expiryChanged() ? checkExpiry(chosenExpiry()) : null),
  rate_limit: () => parseRateLimit($("key-rate-limit").value).error || null,
};

// Show the date field for a custom expiry, and say when the chosen expiry is.
function showExpiryChoice() {
  const preset = $("key-expiry-preset").value;
  $("key-expires-field").hidden = preset !== CUSTOM;
  const when = chosenExpiry();
  const date = when ? new Date(when) : null;
  let hint = "Choose a date and time, in your local time.";
  if (preset === NEVER) hint = "The key never expires.";
  else if (date && !Number.isNaN(date.getTime())) hint = `Expires ${dateFormat.format(date)} (your local time).`;
  $("key-expiry-hint").textContent = hint;
}

function clearFieldErrors() {
  for (const field of Object.values(KEY_FIELDS)) clearFieldError(field);
  $("key-form-error").hidden = true;
  $("key-form-error").textContent = "";
}

// Show every problem at once beside its field ({field, message}; the server's `problems`).
function showFieldError(problems) {
  showProblems(KEY_FIELDS, problems, $("key-form-error"));
}

let keyDialogWired = false;

function wireKeyDialog() {
  keyDialogWired = true;
  $("key-expiry-preset").addEventListener("change", showExpiryChoice);
  $("key-expires").addEventListener("input", showExpiryChoice);
  clearWhenFixed(KEY_FIELDS, KEY_CHECKS);
}

function renderRoleChoices(selected) {
  const list = $("key-roles-list");
  const session = state.session;
  list.replaceChildren(
    ...state.roles.map((role, index) => {
      const grantable = session.grant_all || session.grants.includes(role.name);
      const id = `role-${index}`;
      const note = grantable ? role.description || "" : `${role.description || ""} (you may not grant this role: ${grantsText(session)})`;
      return el(
        "div",
        { class: grantable ? "role-choice" : "role-choice not-grantable" },
        el("input", {
          type: "checkbox",
          id,
          value: role.name,
          checked: selected.includes(role.name),
          disabled: !grantable,
          "aria-describedby": `${id}-description`,
        }),
        el("label", { for: id, class: "role-name", text: role.name }),
        el("p", { id: `${id}-description`, class: "role-description", text: note.trim() }),
      );
    }),
  );
}

function chosenRoles() {
  return [...$("key-roles-list").querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value);
}

// Create (no key), edit, or renew (an expired key, offered a new expiry) in one dialog.
function openKeyDialog(key = null, returnFocus = null, { renew = false } = {}) {
  if (!keyDialogWired) wireKeyDialog();
  editing = key;
  renewing = Boolean(key && renew);
  clearFieldErrors();
  const verb = renewing ? "Renew" : "Edit";
  $("key-dialog-title").textContent = key ? `${verb} API key ${key.name}` : "Create API key";
  $("key-submit").textContent = renewing ? "Renew" : key ? "Save" : "Create";
  $("key-name").value = key ? key.name : "";
  $("key-description").value = key ? key.description : "";
  $("key-expires").value = key ? toLocalInput(key.expires_at) : "";
  $("key-expiry-preset").value = renewing ? RENEW_PRESET : presetOf(key ? key.expires_at : null);
  showExpiryChoice();
  $("key-rate-limit").value = key ? rateLimitText(key.rate_limit) : "";
  renderRoleChoices(key ? key.roles : []);
  const back = returnFocus || (key ? rowSettingsButton(key) : $("create-button"));
  openDialog($("key-dialog"), { initialFocus: renewing ? $("key-expiry-preset") : $("key-name"), returnFocus: back });
}

function rowSettingsButton(key) {
  return focusKeyed(`settings:${key.id}`) || $("create-button");
}

function sameRoles(a, b) {
  return a.length === b.length && [...a].sort().every((role, i) => role === [...b].sort()[i]);
}

async function submitKey(event) {
  event.preventDefault();
  clearFieldErrors();
  const found = Object.entries(KEY_CHECKS)
    .map(([field, check]) => ({ field, message: check() }))
    .filter((problem) => problem.message);
  if (found.length) {
    showFieldError(found);
    return;
  }
  const name = $("key-name").value;
  const description = $("key-description").value;
  const roles = chosenRoles();
  const expires = chosenExpiry();
  try {
    const rateLimit = typedRateLimit();
    if (editing === null) {
      const body = { name, description, roles };
      if (expires) body.expires_at = expires;
      if (rateLimit) body.rate_limit = rateLimit;
      const created = await api("POST", "/api/v1/keys", body);
      closeDialog($("key-dialog"));
      say(`Created “${created.key.name}”.`);
      showSecret(created.secret, created.key.name);
      loadKeys({ quiet: true }).catch(handleFailure);
    } else {
      const key = editing;
      const changes = {};
      if (name !== key.name) changes.name = name;
      if (description !== key.description) changes.description = description;
      if (!sameRoles(roles, key.roles)) changes.roles = roles;
      if (expiryChanged()) changes.expires_at = expires;
      if (rateLimitText(key.rate_limit) !== $("key-rate-limit").value.trim()) changes.rate_limit = rateLimit;
      if (Object.keys(changes).length > 0) {
        const saved = await api("PATCH", `/api/v1/keys/${key.id}`, changes);
        const until = saved.expires_at ? `, expires ${dateFormat.format(new Date(saved.expires_at))}` : "";
        say(renewing ? `Renewed “${saved.name}”${until}.` : `Saved “${saved.name}”.`);
      }
      closeDialog($("key-dialog"));
      await reread();
    }
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 401) handleFailure(failure);
    else if (unreachable(failure)) {
      handleFailure(failure);
      showFieldError([{ field: null, message: failure instanceof ApiError ? failure.message : M_UNREACHABLE }]);
    } else showFieldError(failure.body.problems || [{ field: failure.field, message: failure.message }]);
  }
}

// ------------------------------------------------------------------------ the secret, once

let secretCopied = false;

function clearSecret() {
  $("secret-value").value = "";
  $("secret-copied").textContent = "";
  secretCopied = false;
}

let secretWired = false;

function showSecret(secret, name, { title = `API key “${name}” created`, returnFocus = $("create-button") } = {}) {
  if (!secretWired) {
    secretWired = true;
    $("secret-value").addEventListener("copy", secretFieldCopied);
  }
  secretCopied = false;
  $("secret-title").textContent = title;
  $("secret-value").value = secret;
  $("secret-copied").textContent = "";
  // Focus on Copy (not the field: select() would take the focus there).
  openDialog($("secret-dialog"), {
    initialFocus: $("secret-copy"),
    returnFocus,
    onRequestClose: requestSecretClose,
  });
}

// A copy of the field itself (Ctrl/Cmd+C, the context menu) counts when it took the whole key.
function secretFieldCopied() {
  const field = $("secret-value");
  if (field.value && field.selectionStart === 0 && field.selectionEnd === field.value.length) {
    secretCopied = true;
    $("secret-copied").textContent = "Copied to the clipboard.";
  } else {
    $("secret-copied").textContent = "Only part of the key was selected: copy the whole key.";
  }
}

async function copySecret() {
  const field = $("secret-value");
  try {
    await navigator.clipboard.writeText(field.value);
  } catch {
    field.select();
    if (!document.execCommand("copy")) {
      $("secret-copied").textContent = "Could not copy: select the key and copy it yourself.";
      return;
    }
  }
  secretCopied = true;
  $("secret-copied").textContent = "Copied to the clipboard.";
}

async function requestSecretClose() {
  if (!secretCopied) {
    const sure = await confirmAction({
      title: "Close without copying?",
      message: "You have not copied this API key. It will not be shown again; if you close now, you will have to create a new key.",
      button: "Close without copying",
      returnFocus: $("secret-done"),
    });
    if (!sure) return;
  }
  clearSecret();
  closeDialog($("secret-dialog"));
}

// ------------------------------------------------------------------------ confirmations

let confirmResolve = null;

// Ask in a dialog that names what will happen; resolves true on its button, false otherwise.
// `button` says what the button does ("Revoke 62 keys"); with `typeCount` the administrator
// types that number before the button works (destructive batches).
function confirmAction({ title, message, button, returnFocus = null, typeCount = null, danger = true }) {
  $("confirm-title").textContent = title;
  $("confirm-message").textContent = message;
  const ok = $("confirm-ok");
  ok.textContent = button;
  ok.className = danger ? "danger" : "primary";
  const typed = $("confirm-type");
  $("confirm-type-row").hidden = typeCount === null;
  typed.value = "";
  ok.disabled = typeCount !== null;
  confirmNeeds = typeCount === null ? null : String(typeCount);
  if (typeCount !== null) $("confirm-type-label").textContent = `Type ${typeCount} to confirm`;
  return new Promise((resolve) => {
    confirmResolve = resolve;
    openDialog($("confirm-dialog"), {
      initialFocus: typeCount === null ? $("confirm-cancel") : typed,
      returnFocus,
      onRequestClose: () => settleConfirm(false),
    });
  });
}

let confirmNeeds = null; // the number to type, as text, or null

function confirmTyped() {
  $("confirm-ok").disabled = confirmNeeds !== null && $("confirm-type").value.trim() !== confirmNeeds;
}

function settleConfirm(answer) {
  if (answer && $("confirm-ok").disabled) return;
  const resolve = confirmResolve;
  confirmResolve = null;
  closeDialog($("confirm-dialog"));
  if (resolve) resolve(answer);
}

// After a change made here: the list read again, and the key's page when one is shown (by
// the URL: after a Delete there the list is shown, though the router has not heard yet).
function reread() {
  const onKeyPage = parseRoute(window.location.hash).view === "key";
  return Promise.all([loadKeys({ quiet: true }), onKeyPage ? refreshKeyPage() : null]);
}

// Whether `key`'s own page is shown (its Delete goes back to the list).
function showsKeyPage(key) {
  const route = parseRoute(window.location.hash);
  return route.view === "key" && route.id === key.id;
}

// One key's action, confirmed first. `from` is the control that asked (the focus returns
// there): the key page's button, or (null) the row's settings button.
async function keyAction(key, from, { title, message, button, run, done, danger = true, deletes = false }) {
  const sure = await confirmAction({ title, message, button, danger, returnFocus: from || rowSettingsButton(key) });
  if (!sure) return;
  try {
    await run();
    if (deletes && showsKeyPage(key)) go({ view: "keys" });
    say(done);
    await reread();
  } catch (failure) {
    handleFailure(failure);
  }
}

function revokeKey(key, from = null) {
  return keyAction(key, from, {
    title: `Revoke “${key.name}”?`,
    message: `Revoke the API key “${key.name}”? Requests with it are refused at once. You can reinstate it later.`,
    button: "Revoke key",
    run: () => api("POST", `/api/v1/keys/${key.id}/revoke`),
    done: `Revoked “${key.name}”.`,
  });
}

function reinstateKey(key, from = null) {
  return keyAction(key, from, {
    title: `Reinstate “${key.name}”?`,
    message: `Reinstate the API key “${key.name}”? It works again at once.`,
    button: "Reinstate key",
    danger: false,
    run: () => api("POST", `/api/v1/keys/${key.id}/reinstate`),
    done: `Reinstated “${key.name}”.`,
  });
}

// A new secret for the same key; the old one keeps working for the overlap the admin chose.
// `from`: as keyAction's.
async function rollKey(key, from = null) {
  const back = () => from || rowSettingsButton(key);
  const overlap = await askOverlap(key, back());
  if (overlap === null) return;
  try {
    const rolled = await api("POST", `/api/v1/keys/${key.id}/roll`, { overlap_seconds: overlap });
    const old = rolled.key.previous_expires_at;
    const until = overlap && old ? `the old secret works until ${dateFormat.format(new Date(old))} (${overlapText(overlap)})` : "the old secret stopped at once";
    say(`Rolled “${rolled.key.name}”: ${until}.`);
    // Re-read first: the row is re-rendered, and focus returns to its new settings button.
    // A failed re-read must never cost the secret: the next poll reports it.
    await reread().catch(() => {});
    showSecret(rolled.secret, rolled.key.name, { title: `New secret for “${rolled.key.name}”`, returnFocus: back() });
  } catch (failure) {
    handleFailure(failure);
  }
}

function deleteKey(key, from = null) {
  return keyAction(key, from, {
    title: `Delete “${key.name}”?`,
    message: `Delete the API key “${key.name}” for good? This cannot be undone; software using it is refused at once.`,
    button: "Delete key",
    run: () => api("DELETE", `/api/v1/keys/${key.id}`),
    done: `Deleted “${key.name}”.`,
    deletes: true,
  });
}

// ------------------------------------------------------------------------ batch actions

const BATCHES = [
  {
    label: "Revoke all API keys",
    action: "revoke_all",
    path: "/api/v1/keys/revoke-all",
    none: "There are no API keys to revoke.",
    ask: (n) => [`Revoke all ${plural(n, "API key")}?`, `This revokes ${plural(n, "API key")} at once; requests with them are refused. You can reinstate them later.`],
    button: (n) => `Revoke ${plural(n, "key")}`,
    typeCount: true,
    done: (n) => `Revoked ${plural(n, "API key")}.`,
  },
  {
    label: "Reinstate the keys the last “Revoke all” revoked",
    action: "reinstate_last_revoke_all",
    path: "/api/v1/keys/reinstate-all",
    body: { scope: "last_revoke_all" },
    none: "No keys of the last “Revoke all” are still revoked.",
    ask: (n) => [`Reinstate ${plural(n, "API key")} of the last “Revoke all”?`, `This reinstates the ${plural(n, "API key")} the last “Revoke all” revoked; keys revoked one by one stay revoked.`],
    button: (n) => `Reinstate ${plural(n, "key")}`,
    typeCount: false,
    done: (n) => `Reinstated ${plural(n, "API key")} of the last “Revoke all”.`,
  },
  {
    label: "Reinstate all revoked API keys (also those revoked one by one)",
    action: "reinstate_all",
    path: "/api/v1/keys/reinstate-all",
    body: { scope: "all" },
    none: "There are no revoked API keys to reinstate.",
    ask: (n) => [`Reinstate all ${plural(n, "revoked API key")}?`, `This reinstates every revoked API key (${n}), also those revoked one by one for cause; they work again immediately.`],
    button: (n) => `Reinstate all ${plural(n, "key")}`,
    typeCount: false,
    done: (n) => `Reinstated ${plural(n, "API key")}.`,
  },
  {
    label: "Delete all revoked API keys",
    action: "delete_revoked",
    path: "/api/v1/keys/delete-revoked",
    none: "There are no revoked API keys to delete.",
    ask: (n) => [`Delete ${plural(n, "revoked API key")}?`, `This deletes ${plural(n, "revoked API key")} for good. This cannot be undone.`],
    button: (n) => `Delete ${plural(n, "key")}`,
    typeCount: true,
    done: (n) => `Deleted ${plural(n, "revoked API key")}.`,
  },
];

// The batch menu, each action disabled with the reason when it would touch no key now.
async function batchMenuItems() {
  let counts;
  try {
    counts = await api("GET", "/api/v1/keys/batch-counts");
  } catch (failure) {
    handleFailure(failure);
    return null;
  }
  return BATCHES.map((batch) => {
    const { count, skipped } = counts[batch.action];
    const item = { label: batch.label, danger: batch.typeCount, action: () => runBatch(batch) };
    if (count > 0) return item;
    const reason = skipped
      ? `The ${plural(skipped, "key")} it would touch ${skipped === 1 ? "has" : "have"} roles outside your grants: ${grantsText(state.session)}.`
      : batch.none;
    return { ...item, disabled: true, reason };
  });
}

function skippedNote(skipped) {
  return skipped ? ` ${plural(skipped, "key")} outside your grants will be left alone.` : "";
}

async function runBatch(batch) {
  try {
    const counts = await api("GET", "/api/v1/keys/batch-counts");
    const { count, skipped } = counts[batch.action];
    if (count === 0) {
      say(batch.none + skippedNote(skipped));
      $("batch-button").focus();
      return;
    }
    const [title, message] = batch.ask(count);
    const sure = await confirmAction({
      title,
      message: message + skippedNote(skipped),
      button: batch.button(count),
      typeCount: batch.typeCount ? count : null,
      danger: batch.typeCount,
      returnFocus: $("batch-button"),
    });
    if (!sure) return;
    const result = await api("POST", batch.path, batch.body);
    const left = result.skipped ? ` ${plural(result.skipped, "key")} outside your grants left alone.` : "";
    say(batch.done(result.count) + left);
    await loadKeys({ quiet: true });
  } catch (failure) {
    handleFailure(failure);
  }
}

// ------------------------------------------------------------------------ audit

let auditRequest = 0;

async function loadAudit({ more = false, quiet = false } = {}) {
  const ticket = ++auditRequest;
  const name = $("audit-key").value.trim();
  // "Audit history" asks by id (batches, entries under earlier names); a typed name is
  // resolved to its key's id by the server.
  const byId = state.audit.key && state.audit.key.name === name ? state.audit.key.id : null;
  const params = {
    ...auditFilters(),
    key_id: byId,
    key_name: byId === null ? name : "",
    limit: AUDIT_PAGE_SIZE,
    cursor: more ? state.audit.next : null,
  };
  const page = await api("GET", query("/api/v1/audit", params), undefined, { background: quiet });
  if (ticket !== auditRequest) return;
  const { limit, cursor, ...exported } = params; // the export is every match, not one page
  const filters = JSON.stringify(exported);
  // A quiet refresh under the same filters keeps the entries "Load more" added.
  const merged = quiet && !more && filters === state.audit.filters ? mergeNewest(page.items, state.audit.events) : null;
  if (merged) state.audit.events = merged;
  else {
    state.audit.events = more ? [...state.audit.events, ...page.items] : page.items;
    state.audit.next = page.next_cursor;
  }
  state.audit.filters = filters;
  renderAuditRows($("audit-body"), state.audit.events, state.audit.expanded);
  $("audit-csv").href = query("/api/v1/audit", { ...exported, format: "csv" });
  $("audit-more").hidden = !state.audit.next;
  $("audit-empty").hidden = $("audit-body").children.length > 0;
}

function focusAudit(key) {
  state.audit.key = { id: key.id, name: key.name };
  $("audit-key").value = key.name;
  $("audit-actor").value = "";
  for (const id of ["audit-q", "audit-action", "audit-from", "audit-until"]) $(id).value = "";
  loadAudit().catch(handleFailure);
  go({ view: "audit" });
}

// ------------------------------------------------------------------------ explain

function focusExplain(key) {
  $("explain-key").value = key.name;
  go({ view: "check" }, { focus: $("explain-path") });
}

async function findKeyByName(name) {
  const page = await api("GET", query("/api/v1/keys", { q: name, limit: 1000 }));
  return page.items.find((key) => key.name === name) || null;
}

const REASONS = {
  allowed: "allowed",
  no_rule: "no rule of the key's roles allows it (deny by default)",
  protected: "the path is protected (key management): refused for every key",
  override_forbidden: "the method named by a _method parameter is not allowed",
  bad_method_override: "a _method parameter must name one method",
  key_unknown: "the proxy does not know the key (yet)",
  key_revoked: "the key is revoked",
  key_expired: "the key has expired",
  key_rolled: "the key's old secret has ended its overlap",
};

async function explain(event) {
  event.preventDefault();
  const result = $("explain-result");
  const name = $("explain-key").value.trim();
  result.replaceChildren();
  try {
    const key = name ? await findKeyByName(name) : null;
    if (!key) {
      result.replaceChildren(el("p", { class: "form-error", text: name ? `No key is named “${name}”.` : "Give a key name." }));
      return;
    }
    const answer = await api("POST", "/api/v1/policy/explain", {
      method: $("explain-method").value,
      path: $("explain-path").value,
      key_id: key.id,
    });
    const verdict = answer.allowed ? "Allowed" : "Denied";
    const lines = [
      el("p", { class: answer.allowed ? "verdict allowed" : "verdict denied" }, icon(answer.allowed ? "check" : "cross"), `${verdict}: ${answer.method} ${answer.target}`),
      el("p", { text: answer.allowed ? "Deciding rule:" : `Why: ${REASONS[answer.reason] || answer.refusal.message}.` }),
    ];
    if (answer.rule) {
      lines.push(el("p", {}, el("code", { text: answer.rule.rule }), ` (role ${answer.rule.role}, rule ${answer.rule.index + 1})`));
    }
    lines.push(el("p", { class: "muted", text: `Key “${key.name}”, roles: ${answer.roles.join(", ")}` }));
    result.replaceChildren(...lines);
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 401) handleFailure(failure);
    else result.replaceChildren(el("p", { class: "form-error", text: failure.message }));
  }
}

// ------------------------------------------------------------------------ wiring

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    window.clearTimeout(timer);
    timer = window.setTimeout(() => fn(...args), ms);
  };
}

function wire() {
  installDialogKeys();
  $("create-button").append(icon("plus"));
  $("batch-button").append(icon("batch"));
  $("signin-form").addEventListener("submit", signIn);
  $("oidc-sign-in").addEventListener("click", rememberDeepLink);
  $("sign-out").addEventListener("click", signOut);
  $("create-button").addEventListener("click", () => openKeyDialog());
  menuButton($("batch-button"), "Batch actions", batchMenuItems);
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    restartList();
  });
  $("search").addEventListener("input", debounce(restartList, SEARCH_DELAY_MS));
  $("status-filter").addEventListener("change", restartList);
  $("role-filter").addEventListener("change", restartList);
  $("creator-filter").addEventListener("input", debounce(restartList, SEARCH_DELAY_MS));
  $("sort").addEventListener("change", restartList);
  $("prev-page").addEventListener("click", () => {
    if (state.keys.page === 0) return;
    state.keys.page -= 1;
    loadKeys().then(focusFirstKey, handleFailure);
  });
  $("next-page").addEventListener("click", () => {
    if (!state.keys.next) return;
    state.keys.cursors[state.keys.page + 1] = state.keys.next;
    state.keys.cursors.length = state.keys.page + 2;
    state.keys.page += 1;
    loadKeys().then(focusFirstKey, handleFailure);
  });
  $("key-form").addEventListener("submit", submitKey);
  $("key-cancel").addEventListener("click", () => closeDialog($("key-dialog")));
  $("secret-copy").addEventListener("click", copySecret);
  $("secret-done").addEventListener("click", requestSecretClose);
  $("confirm-ok").addEventListener("click", () => settleConfirm(true));
  $("confirm-type").addEventListener("input", confirmTyped);
  for (const action of Object.keys(CHOSEN)) $(`chosen-${action}`).addEventListener("click", () => runChosen(action));
  $("chosen-clear").addEventListener("click", () => {
    state.selected.clear();
    renderKeys();
  });
  $("confirm-type").addEventListener("keydown", (event) => {
    if (event.key === "Enter") settleConfirm(true);
  });
  $("confirm-cancel").addEventListener("click", () => settleConfirm(false));
  $("audit-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadAudit().catch(handleFailure);
  });
  $("audit-more").addEventListener("click", () => {
    const before = $("audit-body").children.length;
    loadAudit({ more: true }).then(() => focusFirstNew($("audit-body"), before), handleFailure);
  });
  $("explain-form").addEventListener("submit", explain);
  setupKeyPage({
    openKeyDialog,
    rollKey,
    revokeKey,
    reinstateKey,
    deleteKey,
    handleFailure,
    roles: () => state.roles,
    refusal: (key) => manageRefusal(key, state.session),
    showUnused,
  });
}

async function start() {
  wire();
  await loadMethods();
  const signInError = signInErrorFromUrl();
  restoreDeepLink(); // after the error is read: a failed provider sign-in keeps the link too
  try {
    await showApp(await api("GET", "/api/v1/session"));
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 401) showSignIn(signInError);
    else {
      $("loading").textContent = `Could not reach keygate: ${failure.message}`;
    }
  }
}

start();
