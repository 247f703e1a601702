// The signed-in caller's token: kept for this tab only (sessionStorage), sent only in the authorization header.
// `audit-service dev` prints a console link carrying its token in the URL's fragment (#token=...), which browsers
// never send to a server; it is moved into the tab's storage and erased from the address bar at once.

import { ConnectError, serverStream, unary } from "./connect.js";

const KEY = "audit-console-token";

export function takeTokenFromFragment() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token === null) return;
  sessionStorage.setItem(KEY, token);
  history.replaceState(history.state, "", location.pathname + location.search);
}

export function token() {
  return sessionStorage.getItem(KEY) ?? "";
}

export function signIn(value) {
  sessionStorage.setItem(KEY, value.trim());
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

const AUDIT = "audit.v1.AuditService";

/** The API as the signed-in caller. */
export const api = {
  call: (method, request, signal) => unary(AUDIT, method, request, token(), signal),
  stream: (method, request, signal) => serverStream(AUDIT, method, request, token(), signal),
};

/** A message for the page: what failed, in the service's words, and what to do about a token. */
export function describe(error) {
  if (!(error instanceof ConnectError)) return `unexpected error: ${error?.message ?? error}`;
  if (error.code === "unauthenticated") return `Not signed in: ${error.message}. Sign in with a valid token.`;
  if (error.code === "permission_denied") return `Not allowed: ${error.message}`;
  return `${error.code}: ${error.message}`;
}
