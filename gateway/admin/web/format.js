// Texts the page computes from API values (pure; the CLI's Python follows the same rules).

import { overlapText } from "./overlap.js";

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

// A time as the API writes it (`clock.iso`): only such values under a `…_at` name are times.
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$/;

// A roll's overlap in seconds, as the roll API and its audit entry name it.
const OVERLAP = "overlap_seconds";

// One detail's name as the line says it: a roll's overlap is "overlap" (its text says the unit).
function nameText(name, value) {
  return name === OVERLAP && Number.isInteger(value) ? "overlap" : name;
}

// One detail's value: text, {time: iso} for the page to write as it writes every time, or
// {overlap: seconds, text} ("2 hours", as the roll dialog says it; the seconds for a tooltip).
function valuePart(name, value) {
  if (name === OVERLAP && Number.isInteger(value) && value >= 0) return { overlap: value, text: overlapText(value) };
  return name.endsWith("_at") && typeof value === "string" && ISO_TIME.test(value) ? { time: value } : valueText(value);
}

// Entries, each a list of parts, as one list with `separator` between them.
function joined(entries, separator) {
  return entries.flatMap((parts, index) => (index ? [separator, ...parts] : parts));
}

// An audit entry's details as the parts of one line (text, and {time: iso} where a time is):
// edits as before → after, batches as counts.
export function detailsParts(details) {
  details = details || {};
  if (details.before && details.after) {
    const fields = Object.keys(details.after);
    return joined(
      fields.map((field) => [`${nameText(field, details.after[field])}: `, valuePart(field, details.before[field]), " → ", valuePart(field, details.after[field])]),
      "; ",
    );
  }
  if ("count" in details) {
    const skipped = details.skipped ? `, ${details.skipped} skipped` : "";
    const batch = details.batch_id ? ` (batch ${details.batch_id})` : "";
    return [`${plural(details.count, "key")}${skipped}${batch}`];
  }
  return joined(
    Object.entries(details).map(([name, value]) => [`${nameText(name, value)}: `, valuePart(name, value)]),
    "; ",
  );
}
