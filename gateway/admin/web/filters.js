// The list's and the audit log's filters: which the server offers, and their values.

import { ACTIONS } from "./auditview.js";
import { hasParams } from "./features.js";
import { el } from "./ui.js";

const $ = (id) => document.getElementById(id);

let unusedDays = null; // "unused for N days" chosen from the summary line or the advice, or null

// Show only the keys unused for `days` days (null: all again); the caller reloads the list.
export function setUnusedFilter(days) {
  unusedDays = days;
}

export function unusedFilter() {
  return unusedDays;
}

// The key list's filters (what "Page X of Y" counts; the list adds its sort and page).
export function listFilters() {
  return {
    q: $("search").value.trim(),
    status: $("status-filter").value,
    role: $("role-filter").value,
    created_by: $("creator-filter").value.trim(),
    unused_days: unusedDays,
  };
}

// The audit filters other than the key: actor, text, actions, date range (local days).
export function auditFilters() {
  const day = (value, next) => {
    if (!value) return "";
    const date = new Date(`${value}T00:00`);
    if (next) date.setDate(date.getDate() + 1); // "until" a day includes that whole day
    return Number.isNaN(date.getTime()) ? "" : date.toISOString();
  };
  return {
    actor: $("audit-actor").value.trim(),
    q: $("audit-q").value.trim(),
    action: $("audit-action").value,
    since: day($("audit-from").value, false),
    until: day($("audit-until").value, true),
  };
}

// The filters this server supports (an older keygate lacks some): shown, the rest hidden.
export function showFilters(roles) {
  const keyFilters = hasParams("/api/v1/keys", "role", "created_by");
  $("role-filter-field").hidden = !keyFilters;
  $("creator-filter-field").hidden = !keyFilters;
  const chosen = $("role-filter").value;
  $("role-filter").replaceChildren(el("option", { value: "" }, "Any"), ...roles.map((role) => el("option", { value: role.name }, role.name)));
  if (roles.some((role) => role.name === chosen)) $("role-filter").value = chosen;
  const audit = {
    q: "audit-q-field",
    action: "audit-action-field",
    since: "audit-from-field",
    until: "audit-until-field",
  };
  for (const [param, field] of Object.entries(audit)) $(field).hidden = !hasParams("/api/v1/audit", param);
  $("audit-csv").hidden = !hasParams("/api/v1/audit", "format");
  if (!$("audit-action").options.length) {
    $("audit-action").append(
      el("option", { value: "" }, "Any"),
      ...AUDIT_ACTION_GROUPS.map(([label, actions]) => el("option", { value: actions.join(",") }, label)),
      el("optgroup", { label: "One action" }, Object.entries(ACTIONS).map(([action, label]) => el("option", { value: action }, label))),
    );
  }
}

// Each action in one group at most: a group's name says which entries it shows.
export const AUDIT_ACTION_GROUPS = [
  ["Changes to one key", ["create", "edit", "roll", "revoke", "reinstate", "delete"]],
  ["Changes to all keys at once", ["revoke_all", "reinstate_all", "delete_revoked"]],
  ["Sign-ins and sign-outs", ["admin_sign_in", "admin_sign_out", "admin_sign_in_refused", "admin_login_failed", "admin_login_throttled"]],
  ["Admin accounts", ["admin_add", "admin_passwd", "admin_grants", "admin_remove"]],
];
