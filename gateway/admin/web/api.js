// The admin API as the page uses it: JSON in and out, the session's CSRF token on every write.

const CSRF_HEADER = "X-CSRF-Token";
// Background polls prove the session but do not count as activity (idle timeout).
const BACKGROUND_HEADER = "X-Keygate-Background";

let csrfToken = null;

export function setCsrfToken(token) {
  csrfToken = token;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `request failed (${status})`);
    this.status = status;
    this.code = body ? body.error : null;
    this.field = body ? body.field || null : null;
    this.body = body || {};
  }
}

export async function api(method, path, body, { background = false } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (csrfToken) headers[CSRF_HEADER] = csrfToken;
  }
  if (background) headers[BACKGROUND_HEADER] = "1";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
    redirect: "error",
  });
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function query(path, params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `${path}?${text}` : path;
}
