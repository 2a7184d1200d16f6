// Why the signed-in admin may not manage a key, in plain words (the server decides: can_manage).

function quoted(roles) {
  return roles.map((role) => `‘${role}’`).join(", ");
}

// The admin's grants as a sentence's end: "your grants are a, b" / "you may grant no roles".
export function grantsText(session) {
  if (session.grant_all) return "you may grant every role";
  if (!session.grants.length) return "you may grant no roles";
  return `your grants are ${session.grants.join(", ")}`;
}

// Null when the admin may manage the key (as the key JSON says), else the reason.
export function manageRefusal(key, session) {
  if (key.can_manage !== false) return null;
  const roles = key.outside_grants || [];
  const which = roles.length === 1 ? `role ${quoted(roles)}` : `roles ${quoted(roles)}`;
  return `You can't manage keys with ${which}: ${grantsText(session)}.`;
}
