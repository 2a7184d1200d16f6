// Building blocks of the page: elements, icons, modal dialogs with a focus trap, and menus.

const SVG = "http://www.w3.org/2000/svg";
// Times as the page writes them: the reader's locale, medium date and short time.
export const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A time as a <time> element in the reader's locale (ISO in its title), or `empty` muted.
export function when(iso, empty = "Never") {
  if (!iso) return el("span", { class: "muted", text: empty });
  return el("time", { datetime: iso, title: iso, text: dateFormat.format(new Date(iso)) });
}

const ICON_PATHS = {
  plus: ["M12 5v14", "M5 12h14"],
  batch: ["M4 6h16", "M4 12h16", "M4 18h10", "M18 16l2 2 -2 2"],
  gear: [
    "M12 15a3 3 0 1 0 0-6 3 3 0 0 0 0 6z",
    "M19.4 15a1.7 1.7 0 0 0 .3 1.8l.1.1a2 2 0 1 1-2.8 2.8l-.1-.1a1.7 1.7 0 0 0-1.8-.3 1.7 1.7 0 0 0-1 1.5V21a2 2 0 1 1-4 0v-.1a1.7 1.7 0 0 0-1.1-1.5 1.7 1.7 0 0 0-1.8.3l-.1.1a2 2 0 1 1-2.8-2.8l.1-.1a1.7 1.7 0 0 0 .3-1.8 1.7 1.7 0 0 0-1.5-1H3a2 2 0 1 1 0-4h.1a1.7 1.7 0 0 0 1.5-1.1 1.7 1.7 0 0 0-.3-1.8l-.1-.1a2 2 0 1 1 2.8-2.8l.1.1a1.7 1.7 0 0 0 1.8.3H9a1.7 1.7 0 0 0 1-1.5V3a2 2 0 1 1 4 0v.1a1.7 1.7 0 0 0 1 1.5 1.7 1.7 0 0 0 1.8-.3l.1-.1a2 2 0 1 1 2.8 2.8l-.1.1a1.7 1.7 0 0 0-.3 1.8V9a1.7 1.7 0 0 0 1.5 1H21a2 2 0 1 1 0 4h-.1a1.7 1.7 0 0 0-1.5 1z",
  ],
  blocked: ["M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18z", "M5.6 5.6l12.8 12.8"],
  clock: ["M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18z", "M12 7v5l3 2"],
  check: ["M5 12l5 5 9-10"],
  cross: ["M6 6l12 12", "M18 6L6 18"],
  dot: ["M12 8a4 4 0 1 0 0 8 4 4 0 0 0 0-8z"],
};

// An icon; with a label it is an image with that accessible name, else decoration only.
export function icon(name, label = null) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", `icon icon-${name}`);
  svg.setAttribute("focusable", "false");
  if (label) {
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
  } else {
    svg.setAttribute("aria-hidden", "true");
  }
  for (const d of ICON_PATHS[name]) {
    const path = document.createElementNS(SVG, "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

const FOCUSABLE =
  'a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

// The element carrying a focus key (`data-focus-key`), which survives a re-render of the list.
export function focusKeyed(key, root = document) {
  return root.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
}

function focusables(root) {
  return [...root.querySelectorAll(FOCUSABLE)].filter(
    (node) => !node.closest("[hidden]") && node.getClientRects().length > 0,
  );
}

// Dialogs open now, innermost last; refreshes wait while any is open.
const openDialogs = [];

export function anyDialogOpen() {
  return openDialogs.length > 0;
}

// Open a native modal <dialog>; Escape asks `onRequestClose` (default: close), Tab stays inside.
export function openDialog(dialog, { onRequestClose = null, initialFocus = null, returnFocus = null } = {}) {
  const entry = {
    dialog,
    onRequestClose: onRequestClose || (() => closeDialog(dialog)),
    returnFocus: returnFocus || document.activeElement,
  };
  openDialogs.push(entry);
  dialog.showModal();
  const first = initialFocus || focusables(dialog)[0];
  if (first) first.focus();
}

export function closeDialog(dialog) {
  const index = openDialogs.findIndex((entry) => entry.dialog === dialog);
  if (index < 0) return;
  const [entry] = openDialogs.splice(index, 1);
  dialog.close();
  let target = entry.returnFocus;
  if (target && !target.isConnected && target.dataset && target.dataset.focusKey) {
    // A live refresh re-rendered the list while the dialog was open: the same control's new
    // element carries the same focus key.
    target = focusKeyed(target.dataset.focusKey);
  }
  if (target && target.isConnected && typeof target.focus === "function") target.focus();
  document.dispatchEvent(new CustomEvent("keygate:overlay-closed"));
}

function topDialog() {
  return openDialogs[openDialogs.length - 1] || null;
}

function trapKeys(event) {
  const top = topDialog();
  if (!top || !top.dialog.contains(event.target)) return;
  if (event.key === "Escape") {
    event.preventDefault();
    event.stopPropagation();
    top.onRequestClose();
  } else if (event.key === "Tab") {
    const nodes = focusables(top.dialog);
    if (nodes.length === 0) return;
    const first = nodes[0];
    const last = nodes[nodes.length - 1];
    if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  }
}

export function installDialogKeys() {
  document.addEventListener("keydown", trapKeys, true);
  for (const dialog of document.querySelectorAll("dialog")) {
    // Other close requests (a platform back gesture) go the same way as Escape.
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      const entry = openDialogs.find((candidate) => candidate.dialog === dialog);
      if (entry) entry.onRequestClose();
    });
  }
}

// ---------------------------------------------------------------------------- menus

let openMenuState = null;

export function menuOpen() {
  return openMenuState !== null;
}

export function closeMenu({ focusButton = true } = {}) {
  const state = openMenuState;
  if (!state) return;
  openMenuState = null;
  state.menu.remove();
  state.button.setAttribute("aria-expanded", "false");
  document.removeEventListener("pointerdown", state.outside, true);
  window.removeEventListener("scroll", state.place, true);
  window.removeEventListener("resize", state.place);
  if (focusButton && state.button.isConnected) state.button.focus();
  document.dispatchEvent(new CustomEvent("keygate:overlay-closed"));
}

// Fixed to the viewport under its button (above it near the bottom), so no scrolling
// container clips it. CSSOM properties, not a style attribute: the CSP allows these.
function placeMenu(menu, button) {
  const rect = button.getBoundingClientRect();
  const gap = 4;
  menu.style.right = `${Math.max(gap, document.documentElement.clientWidth - rect.right)}px`;
  const height = menu.offsetHeight;
  const below = rect.bottom + gap;
  const above = rect.top - gap - height;
  menu.style.top = `${below + height > window.innerHeight && above > 0 ? above : below}px`;
}

let menuNotes = 0; // ids of the notes saying why menu items are disabled

// Open a menu of `items` ({label, action, disabled, reason}) under `button`; arrows move,
// Escape closes. A disabled item's `reason` is its tooltip and accessible description, and
// shown once as a note under the items (aria-hidden there: the items describe themselves).
export function openMenu(button, label, items) {
  closeMenu({ focusButton: false });
  const reasons = [...new Set(items.filter((item) => item.disabled && item.reason).map((item) => item.reason))];
  const noteIds = new Map(reasons.map((reason) => [reason, `menu-note-${++menuNotes}`]));
  const entries = items.map((item) =>
    el("button", {
      type: "button",
      role: "menuitem",
      tabindex: "-1",
      class: item.danger ? "menuitem destructive" : "menuitem",
      "aria-disabled": item.disabled ? "true" : null,
      title: item.disabled && item.reason ? item.reason : null,
      "aria-describedby": item.disabled && item.reason ? noteIds.get(item.reason) : null,
      text: item.label,
    }),
  );
  const notes = reasons.map((reason) => el("p", { class: "menu-note", id: noteIds.get(reason), "aria-hidden": "true", text: reason }));
  const menu = el("div", { role: "menu", class: "menu", "aria-label": label }, entries, notes);
  const choose = (index) => {
    const item = items[index];
    if (item.disabled) return;
    closeMenu({ focusButton: false });
    item.action();
  };
  entries.forEach((entry, index) => {
    entry.addEventListener("click", () => choose(index));
  });
  menu.addEventListener("keydown", (event) => {
    const current = entries.indexOf(document.activeElement);
    const move = (to) => {
      event.preventDefault();
      entries[(to + entries.length) % entries.length].focus();
    };
    if (event.key === "ArrowDown") move(current + 1);
    else if (event.key === "ArrowUp") move(current - 1);
    else if (event.key === "Home") move(0);
    else if (event.key === "End") move(entries.length - 1);
    else if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      closeMenu();
    } else if (event.key === "Tab") {
      closeMenu({ focusButton: false });
    }
  });
  const outside = (event) => {
    if (!menu.contains(event.target) && event.target !== button && !button.contains(event.target)) {
      closeMenu({ focusButton: false });
    }
  };
  const place = () => placeMenu(menu, button);
  openMenuState = { menu, button, outside, place };
  button.setAttribute("aria-expanded", "true");
  button.after(menu);
  place();
  document.addEventListener("pointerdown", outside, true);
  window.addEventListener("scroll", place, true);
  window.addEventListener("resize", place);
  const firstEnabled = entries.find((entry) => !entry.hasAttribute("aria-disabled")) || entries[0];
  firstEnabled.focus();
}

// Toggle a menu from its button (click, Enter, Space; ArrowDown opens too). `itemsFor` may
// answer a promise (items that depend on the server); null opens nothing.
export function menuButton(button, label, itemsFor) {
  const open = async () => {
    const items = await itemsFor();
    if (items && button.isConnected) openMenu(button, label, items);
  };
  button.addEventListener("click", () => {
    if (openMenuState && openMenuState.button === button) closeMenu();
    else open();
  });
  button.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown" && !(openMenuState && openMenuState.button === button)) {
      event.preventDefault();
      open();
    }
  });
}
