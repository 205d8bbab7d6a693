/**
 * The REST API as the console calls it: same origin, the admin token from sessionStorage as
 * `Authorization: Bearer`. Every failure becomes an ApiError carrying the API's own code and message
 * (`{error: {code, message}}`), so pages can show exactly what the control plane said.
 */

const TOKEN_KEY = 'cairn.adminToken';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** Calls the API; resolves with the parsed JSON answer, rejects with an ApiError. */
export async function api(method, path, body, bearer = token()) {
  const headers = { accept: 'application/json' };
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (err) {
    throw new ApiError(0, 'UNREACHABLE', `the control plane did not answer ${method} ${path} (${err.message}); is it running?`);
  }
  const text = await res.text();
  let json;
  try {
    json = text === '' ? {} : JSON.parse(text);
  } catch {
    throw new ApiError(res.status, 'BAD_ANSWER', `${method} ${path} answered HTTP ${res.status} with something that is not JSON`);
  }
  if (!res.ok) {
    const e = json && json.error;
    throw new ApiError(res.status, e?.code ?? `HTTP_${res.status}`, e?.message ?? `${method} ${path} failed with HTTP ${res.status}`);
  }
  return json;
}

/** `?a=1&b=2` from the entries that are not empty. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const text = q.toString();
  return text ? `?${text}` : '';
}

/** A path segment: names are percent-encoded. */
export function seg(name) {
  return encodeURIComponent(name);
}
