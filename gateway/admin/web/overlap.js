// A roll's overlap (how long the old secret keeps working) as typed: amount and unit (pure).

export const OVERLAP_MAX_SECONDS = 30 * 86_400; // the API's ROLL_OVERLAP_MAX (30 days)
export const UNIT_SECONDS = { minutes: 60, hours: 3_600, days: 86_400 };
export const DEFAULT_AMOUNT = "24";
export const DEFAULT_UNIT = "hours";

export const M_OVERLAP_NUMBER = "Write a whole number, 0 or more.";
export const M_OVERLAP_RANGE = "The overlap can be from 0 up to 30 days.";

// {seconds} for an amount (text) in a unit, or {error}.
export function overlapSeconds(amount, unit) {
  const text = String(amount).trim();
  if (!/^\d+$/.test(text) || !(unit in UNIT_SECONDS)) return { error: M_OVERLAP_NUMBER };
  const seconds = Number(text) * UNIT_SECONDS[unit];
  if (seconds > OVERLAP_MAX_SECONDS) return { error: M_OVERLAP_RANGE };
  return { seconds };
}

// "24 hours", "2 days", "90 minutes", "no overlap".
export function overlapText(seconds) {
  if (seconds === 0) return "no overlap";
  for (const [unit, size] of [["day", 86_400], ["hour", 3_600], ["minute", 60]]) {
    if (seconds % size === 0) {
      const n = seconds / size;
      return `${n} ${unit}${n === 1 ? "" : "s"}`;
    }
  }
  return `${seconds} seconds`;
}
