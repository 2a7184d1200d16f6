// Views by URL: hash routes (#/keys, #/audit, #/check, #/keys/ID), back and forward, focus.
//
// Hash routes need no server route: the admin listener serves only `/` and `/static/…`, and
// a sign-in proxy in front of it needs no rule for them. `#sign-in-error=…` (the provider
// callback's) is not a route: the page reads it and drops it before the router starts.

export const VIEW_TITLES = { keys: "API Keys", audit: "Audit log", check: "Check access", key: "API key" };
const KEY_ROUTE = /^#\/keys\/([1-9][0-9]{0,17})$/;

// The route a location hash names; anything unknown is the key list.
export function parseRoute(hash) {
  const key = KEY_ROUTE.exec(hash || "");
  if (key) return { view: "key", id: Number(key[1]) };
  if (hash === "#/audit") return { view: "audit" };
  if (hash === "#/check") return { view: "check" };
  return { view: "keys" };
}

// The hash of a route (the inverse of parseRoute).
export function routeHash(route) {
  return route.view === "key" ? `#/keys/${route.id}` : `#/${route.view}`;
}

let onRoute = null;
let current = { view: "keys" };
let focusNext = null; // the control go() asked to focus instead of the view's heading

function changed() {
  current = parseRoute(window.location.hash);
  if (onRoute) onRoute(current, { navigated: true });
}

// Start following the URL: `handler(route, {navigated})` now, and on every change after
// (links, back, forward). Called again after a new sign-in, it only swaps the handler.
export function startRouter(handler) {
  if (onRoute === null) window.addEventListener("hashchange", changed);
  onRoute = handler;
  current = parseRoute(window.location.hash);
  handler(current, { navigated: false });
}

export function currentRoute() {
  return current;
}

// Go to a route: a new history entry (back returns), or the same view shown again; `focus`
// (an element) takes the focus instead of the view's heading.
export function go(route, { focus = null } = {}) {
  focusNext = focus;
  const hash = routeHash(route);
  if (window.location.hash === hash) changed();
  else window.location.hash = hash;
}

// Show one view's section, mark its nav link, name the tab; on navigation, focus its heading.
export function showView(view, { navigated, title = null }) {
  for (const section of document.querySelectorAll("[data-view]")) section.hidden = section.dataset.view !== view;
  for (const link of document.querySelectorAll("[data-view-link]")) {
    const here = link.dataset.viewLink === view || (view === "key" && link.dataset.viewLink === "keys");
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${title || VIEW_TITLES[view]} · keygate`;
  if (navigated) {
    const target = focusNext || document.querySelector(`[data-view="${view}"] [data-view-heading]`);
    focusNext = null;
    window.scrollTo(0, 0);
    if (target) target.focus({ preventScroll: true });
  }
}
