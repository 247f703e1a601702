// A client of the Connect protocol (https://connectrpc.com/docs/protocol) with the JSON codec: unary calls and
// server streams, which is all the console calls. Errors, whatever their cause, are ConnectError with the
// protocol's code ("invalid_argument", "unauthenticated", ...) and a message to show.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// The codes of HTTP statuses without a Connect error body (a proxy's answer, say), as the protocol maps them.
const CODE_OF_HTTP_STATUS = {
  400: "internal", 401: "unauthenticated", 403: "permission_denied", 404: "unimplemented",
  429: "unavailable", 502: "unavailable", 503: "unavailable", 504: "unavailable",
};

const END_STREAM = 0b10;

export class ConnectError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }

  toString() {
    return `${this.code}: ${this.message}`;
  }
}

function headersOf(token, contentType) {
  const headers = { "content-type": contentType, "connect-protocol-version": "1" };
  if (token) headers.authorization = `Bearer ${token}`;
  return headers;
}

// What a bearer token may hold: visible ASCII. fetch refuses a header with other characters (a pasted token's
// zero-width space, say) with a TypeError, which would read as an unreachable service.
const TOKEN = /^[\x21-\x7e]+$/;

async function post(path, body, contentType, token, signal) {
  if (token && !TOKEN.test(token)) {
    throw new ConnectError("unauthenticated", "the token holds a space or a character that is not ASCII");
  }
  try {
    return await fetch(path, { method: "POST", headers: headersOf(token, contentType), body, signal,
      cache: "no-store", credentials: "omit" });
  } catch (error) {
    if (signal?.aborted) throw new ConnectError("canceled", "the call was canceled");
    throw new ConnectError("unavailable", `cannot reach the service (${error.message})`);
  }
}

function errorOf(json, status) {
  if (json && typeof json.code === "string") return new ConnectError(json.code, json.message ?? json.code);
  return new ConnectError(CODE_OF_HTTP_STATUS[status] ?? "unknown", `the service answered HTTP ${status}`);
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Calls a unary method, e.g. unary("audit.v1.AuditService", "ListEvents", {...}, token). */
export async function unary(service, method, request, token, signal) {
  const response = await post(`/${service}/${method}`, JSON.stringify(request), "application/json", token, signal);
  const text = await response.text();
  const json = parseJson(text);
  if (!response.ok) throw errorOf(json, response.status);
  if (json === undefined) throw new ConnectError("internal", "the answer is not JSON");
  return json;
}

function envelope(message) {
  const payload = encoder.encode(JSON.stringify(message));
  const framed = new Uint8Array(5 + payload.length);
  new DataView(framed.buffer).setUint32(1, payload.length);
  framed.set(payload, 5);
  return framed;
}

/**
 * Calls a server-streaming method: yields each response message. Throws ConnectError when the stream ends with
 * an error or without its end-of-stream message (a dropped connection: "unavailable").
 */
export async function* serverStream(service, method, request, token, signal) {
  const response = await post(`/${service}/${method}`, envelope(request), "application/connect+json", token,
    signal);
  if (!response.ok) throw errorOf(parseJson(await response.text()), response.status);
  const reader = response.body.getReader();
  let buffer = new Uint8Array(0);
  try {
    for (;;) {
      while (buffer.length >= 5) {
        const length = new DataView(buffer.buffer, buffer.byteOffset, 5).getUint32(1);
        if (buffer.length < 5 + length) break;
        const flags = buffer[0];
        const message = parseJson(decoder.decode(buffer.subarray(5, 5 + length)));
        buffer = buffer.slice(5 + length);
        if (message === undefined) throw new ConnectError("internal", "a streamed message is not JSON");
        if (flags & END_STREAM) {
          if (message.error) throw errorOf(message.error, 500);
          return;
        }
        yield message;
      }
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (signal?.aborted) throw new ConnectError("canceled", "the call was canceled");
        throw new ConnectError("unavailable", `the stream was interrupted (${error.message})`);
      }
      if (chunk.done) throw new ConnectError("unavailable", "the stream ended before its end message");
      const joined = new Uint8Array(buffer.length + chunk.value.length);
      joined.set(buffer);
      joined.set(chunk.value, buffer.length);
      buffer = joined;
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
