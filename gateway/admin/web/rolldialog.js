// The roll dialog: how long the current secret keeps working beside the new one (0 to 30
// days, default 24 hours); answers the overlap in seconds, or null when cancelled.

import { clearFieldError, clearWhenFixed, showProblems } from "./fielderrors.js";
import { DEFAULT_AMOUNT, DEFAULT_UNIT, overlapSeconds } from "./overlap.js";
import { closeDialog, openDialog } from "./ui.js";

const $ = (id) => document.getElementById(id);

const FIELDS = {
  overlap_seconds: {
    error: "roll-overlap-error",
    controls: () => [$("roll-overlap")],
    listen: () => [$("roll-overlap"), $("roll-unit")],
  },
};

let settle = null; // resolves the open dialog's promise
let wired = false;

function typed() {
  return overlapSeconds($("roll-overlap").value, $("roll-unit").value);
}

function finish(seconds) {
  const resolve = settle;
  settle = null;
  closeDialog($("roll-dialog"));
  if (resolve) resolve(seconds);
}

function wire() {
  wired = true;
  $("roll-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const { seconds, error } = typed();
    if (error) showProblems(FIELDS, [{ field: "overlap_seconds", message: error }], null);
    else finish(seconds);
  });
  $("roll-cancel").addEventListener("click", () => finish(null));
  clearWhenFixed(FIELDS, { overlap_seconds: () => typed().error || null });
}

// Ask for the overlap of rolling `key`; focus goes back to `returnFocus` when cancelled.
export function askOverlap(key, returnFocus) {
  if (!wired) wire();
  $("roll-title").textContent = `Roll “${key.name}”?`;
  $("roll-message").textContent = `Give the API key “${key.name}” a new secret, shown once. The current secret keeps working for the time you choose, then it is refused.`;
  $("roll-overlap").value = DEFAULT_AMOUNT;
  $("roll-unit").value = DEFAULT_UNIT;
  clearFieldError(FIELDS.overlap_seconds);
  return new Promise((resolve) => {
    settle = resolve;
    openDialog($("roll-dialog"), { initialFocus: $("roll-overlap"), returnFocus, onRequestClose: () => finish(null) });
    $("roll-overlap").select();
  });
}
