// Every request of the page goes through here: the API key (asked once, kept in
// sessionStorage), the server's error shape ({success: false, error, detail}) and paths
// relative to the page, so the app also works behind a proxy that adds a prefix.

const KEY = "companion.apiKey";

export class ApiError extends Error {
  constructor(status, error, detail) {
    super(error || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
  }
}

let askForKey = null;
let pendingKey = null;

/** Register the function that asks the user for the key: (reason) => Promise<string>. */
export function onKeyNeeded(fn) {
  askForKey = fn;
}

export function storedKey() {
  try {
    return sessionStorage.getItem(KEY) || "";
  } catch {
    return "";
  }
}

function keep(key) {
  try {
    sessionStorage.setItem(KEY, key);
  } catch {
    /* private mode: the key lives as long as the page */
  }
  memoryKey = key;
}

let memoryKey = "";

function currentKey() {
  return storedKey() || memoryKey;
}

async function newKey(reason) {
  if (!askForKey) throw new ApiError(401, reason);
  // Many requests may fail at once: ask once, let them all wait for the same answer.
  pendingKey ??= askForKey(reason).finally(() => {
    pendingKey = null;
  });
  const key = await pendingKey;
  keep(key);
  return key;
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON (a proxy's page): fall through */
  }
  if (body && typeof body.error === "string") return new ApiError(response.status, body.error, body.detail);
  return new ApiError(response.status, `${response.status} ${response.statusText || "error"}`);
}

/**
 * fetch() with the key and the error shape. Returns the parsed JSON, or the Response
 * itself with {raw: true} (streams, files). Throws ApiError with the server's message.
 */
export async function api(path, {method = "GET", json, body, signal, raw = false, headers = {}} = {}) {
  const relative = path.replace(/^\/+/u, "");
  for (;;) {
    const init = {method, signal, headers: {...headers}};
    const key = currentKey();
    if (key) init.headers.Authorization = `Bearer ${key}`;
    if (json !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(json);
    } else if (body !== undefined) {
      init.body = body;
    }
    const response = await fetch(relative, init);
    if (response.status === 401) {
      const error = await errorOf(response);
      await newKey(key ? "That key was not accepted." : error.message);
      continue; // with the new key
    }
    if (!response.ok) throw await errorOf(response);
    return raw ? response : response.json();
  }
}

/** A server file (export, avatar) as a Blob. */
export async function blob(path, options) {
  return (await api(path, {...options, raw: true})).blob();
}
