// The key form's checks the page can make before asking the server, in plain words (pure).
// The server checks everything again and answers the rest (problems, each with its field).

export const RATE_LIMIT_MAX = 1_000_000_000; // the policy's RATE_LIMIT_MAX (10^9)
const RATE_LIMIT = /^\s*(\d+)\s*\/\s*(second|minute|hour)\s*(?:,\s*burst\s*=\s*(\d+)\s*)?$/;

export const M_NAME_EMPTY = "Give the key a name.";
export const M_NAME_SPACES = "The name can't start or end with a space.";
export const M_NAME_DIGITS = "The name can't be only digits (it would read as a key id).";
export const M_ROLES_NONE = "Choose at least one role.";
export const M_EXPIRY_EMPTY = "Choose the expiry date, or another expiry.";
export const M_EXPIRY_PAST = "The expiry must be in the future.";
export const M_RATE_LIMIT_FORM = "Write requests/second, /minute or /hour, optionally ,burst=N (e.g. 100/minute,burst=20).";
export const M_RATE_LIMIT_RANGE = `Requests and burst must be whole numbers from 1 to ${RATE_LIMIT_MAX.toLocaleString("en")}.`;

export function checkName(name) {
  if (!name.trim()) return M_NAME_EMPTY;
  if (name !== name.trim()) return M_NAME_SPACES;
  if (/^[0-9]+$/.test(name)) return M_NAME_DIGITS;
  return null;
}

export function checkRoles(roles) {
  return roles.length ? null : M_ROLES_NONE;
}

// `iso`: the chosen expiry (null: never; "" or an unreadable text: nothing chosen).
export function checkExpiry(iso, now = Date.now()) {
  if (iso === null) return null;
  const when = iso ? new Date(iso).getTime() : NaN;
  if (Number.isNaN(when)) return M_EXPIRY_EMPTY;
  return when <= now ? M_EXPIRY_PAST : null;
}

// The typed rate limit as the API takes it: {limit} (null when empty) or {error}.
export function parseRateLimit(text) {
  if (!text.trim()) return { limit: null };
  const match = RATE_LIMIT.exec(text);
  if (!match) return { error: M_RATE_LIMIT_FORM };
  const limit = { requests: Number(match[1]), per: match[2] };
  if (match[3] !== undefined) limit.burst = Number(match[3]);
  const inRange = (n) => n >= 1 && n <= RATE_LIMIT_MAX;
  if (!inRange(limit.requests) || (limit.burst !== undefined && !inRange(limit.burst))) return { error: M_RATE_LIMIT_RANGE };
  return { limit };
}
