// The connection banner: shown when the server cannot be reached (network error or 5xx), then
// "Connected again" when it answers, which hides after a few seconds.

const FAILURES_BEFORE_BANNER = 2; // failed polls in a row (one is a blip) before it shows
export const RETRY_MS = 2_000; // while unreachable, how often to try again (not every poll)
const CONNECTED_SHOW_MS = 4_000; // how long "Connected again" stays
export const M_LOST = "keygate cannot be reached. Changes made elsewhere won't show, and nothing you do here is saved, until it is back. Trying again…";
export const M_BACK = "Connected again.";

let failures = 0;
let down = false;
let lastTry = 0;
let hideTimer = null;

// Whether a failed request means the server is unreachable (not a refusal).
export function unreachable(failure) {
  return failure instanceof TypeError || (typeof failure.status === "number" && failure.status >= 500);
}

function show(lost, back) {
  window.clearTimeout(hideTimer);
  document.getElementById("connection-lost").textContent = lost;
  document.getElementById("connection-back").textContent = back;
}

// A request failed as unreachable; `now` shows the banner at once (a user's action failed).
export function connectionLost({ now = false } = {}) {
  failures += 1;
  lastTry = Date.now();
  if (!down && (now || failures >= FAILURES_BEFORE_BANNER)) {
    down = true;
    show(M_LOST, "");
  }
}

// A request succeeded; returns whether the connection was down until now.
export function connectionOk() {
  failures = 0;
  if (!down) return false;
  down = false;
  show("", M_BACK);
  hideTimer = window.setTimeout(() => show("", ""), CONNECTED_SHOW_MS);
  return true;
}

// While down, polls wait RETRY_MS between tries (one failed request, not one per poll).
export function shouldTry() {
  return !down || Date.now() - lastTry >= RETRY_MS;
}

// Signed out: nothing to report.
export function resetConnection() {
  failures = 0;
  down = false;
  show("", "");
}
