// Texts the page computes from API values (pure; the CLI's Python follows the same rules).

const MINUTE = 60; // seconds
const HOUR = 3_600;
const DAY = 86_400;

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

// "in 34 s", "in 5 min", "in 3 h", "in 2 days": whole units rounded down, as
// gateway.key_rules.expires_in_text (one table tests both).
export function expiresInText(seconds) {
  const whole = Math.max(1, Math.floor(seconds));
  if (whole < MINUTE) return `in ${whole} s`;
  if (whole < HOUR) return `in ${Math.floor(whole / MINUTE)} min`;
  if (whole < DAY) return `in ${Math.floor(whole / HOUR)} h`;
  const days = Math.floor(whole / DAY);
  return `in ${days} ${days === 1 ? "day" : "days"}`;
}

// One detail value as text: objects as "name=value" lists, arrays comma-separated, null "-".
export function valueText(value) {
  if (value === null || value === undefined) return "-";
  if (Array.isArray(value)) return value.map(valueText).join(", ");
  if (typeof value === "object") {
    return Object.keys(value)
      .sort()
      .map((name) => `${name}=${valueText(value[name])}`)
      .join(", ");
  }
  return String(value);
}

// An audit entry's details as one line of text: edits as before → after, batches as counts.
export function detailsText(details) {
  details = details || {};
  if (details.before && details.after) {
    return Object.keys(details.after)
      .map((field) => `${field}: ${valueText(details.before[field])} → ${valueText(details.after[field])}`)
      .join("; ");
  }
  if ("count" in details) {
    const skipped = details.skipped ? `, ${details.skipped} skipped` : "";
    const batch = details.batch_id ? ` (batch ${details.batch_id})` : "";
    return `${plural(details.count, "key")}${skipped}${batch}`;
  }
  return Object.entries(details)
    .map(([name, value]) => `${name}: ${valueText(value)}`)
    .join("; ");
}
