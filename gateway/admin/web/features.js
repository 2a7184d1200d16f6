// Which admin API features this server has, read once from its OpenAPI document.
//
// The page is served by the same keygate it talks to, but an older keygate (or one part of a
// fleet mid-upgrade) may lack a newer endpoint or filter: its controls stay hidden then.

import { api } from "./api.js";

const OPENAPI = "/api/v1/openapi.json";

let known = null; // {paths: Set, params: Map(path -> Set of GET query parameter names)}

export async function loadFeatures() {
  try {
    const doc = await api("GET", OPENAPI);
    const paths = new Set(Object.keys(doc.paths || {}));
    const params = new Map();
    for (const [path, item] of Object.entries(doc.paths || {})) {
      const get = item && item.get;
      params.set(path, new Set(((get && get.parameters) || []).map((parameter) => parameter.name)));
    }
    known = { paths, params };
  } catch {
    known = null; // unknown: optional sections are tried (a 404 hides them), filters hidden
  }
}

// Whether GET `path` exists (true when the document could not be read).
export function hasPath(path) {
  return known === null || known.paths.has(path);
}

// Whether GET `path` takes every one of the query parameters `names` (false when the
// document could not be read: a filter the server may not know would answer 400).
export function hasParams(path, ...names) {
  if (known === null) return false;
  const params = known.params.get(path);
  return Boolean(params) && names.every((name) => params.has(name));
}
