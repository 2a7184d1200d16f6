// The key dialog's expiry presets, and the expiry each one means (pure).

const DAY_MS = 86_400_000;

// Days from now by preset; "never" has no expiry, "custom" takes the date field.
export const PRESET_DAYS = { "30d": 30, "90d": 90, "1y": 365 };
export const NEVER = "never";
export const CUSTOM = "custom";
// What "Renew" offers an expired key.
export const RENEW_PRESET = "90d";

// The preset a key's current expiry shows as: none is "never", a date is "custom".
export function presetOf(expiresAt) {
  return expiresAt ? CUSTOM : NEVER;
}

// The ISO expiry a relative preset means now; null for "never", undefined for "custom".
export function presetExpiry(preset, now = Date.now()) {
  if (preset === NEVER) return null;
  const days = PRESET_DAYS[preset];
  return days === undefined ? undefined : new Date(now + days * DAY_MS).toISOString();
}
