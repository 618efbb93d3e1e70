// The service's HTTP API: fetch with the bearer token, errors as ServiceError / Unreachable, and
// Server-Sent Events read from a fetch body (EventSource can neither POST nor send a token).

const TOKEN_KEY = "chat.token";

export class ServiceError extends Error {
  constructor(status, detail, retryAfter = null) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export class Unreachable extends Error {
  constructor() {
    super("the service is unreachable");
  }
}

// Set by the UI: (refused: boolean) => Promise<string | null>, the token a person typed.
let askForToken = async () => null;
export function whenTokenNeeded(ask) {
  askForToken = ask;
}

async function call(method, path, { body, headers = {}, signal } = {}) {
  for (;;) {
    const token = localStorage.getItem(TOKEN_KEY);
    const sent = { ...headers };
    if (token) sent.Authorization = `Bearer ${token}`;
    if (body !== undefined) sent["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: sent,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new Unreachable();
    }
    if (response.status !== 401) return response;
    // Nothing happens before the token is checked, so asking again and resending is safe.
    const typed = await askForToken(Boolean(token));
    if (!typed) throw new ServiceError(401, "this service needs a token");
    localStorage.setItem(TOKEN_KEY, typed);
  }
}

async function failure(response) {
  let detail = "";
  try {
    detail = (await response.json()).detail || "";
  } catch {
    // a body that is not the service's JSON error: the status says enough
  }
  const wait = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ServiceError(response.status, String(detail), Number.isNaN(wait) ? null : wait);
}

const path = (id, tail = "") => `/chat/${encodeURIComponent(id)}${tail}`;

/** The stored messages, oldest first; null when the service has no such session. */
export async function history(id) {
  const response = await call("GET", path(id));
  if (response.status === 404) return null;
  if (!response.ok) throw await failure(response);
  return (await response.json()).messages;
}

export async function forget(id) {
  const response = await call("DELETE", path(id));
  if (!response.ok) throw await failure(response);
}

/** Asks the running reply to stop; a reply already ended (404) is not an error. */
export async function stop(id) {
  const response = await call("POST", path(id, "/stop"));
  if (!response.ok && response.status !== 404) throw await failure(response);
}

/** Sends a message; the events of its reply, or a ServiceError before the first one. */
export async function send(sessionId, message, signal) {
  const response = await call("POST", "/chat/stream", {
    body: { session_id: sessionId || null, message },
    signal,
  });
  if (!response.ok) throw await failure(response);
  return events(response.body, signal);
}

/** The rest of a running reply after lastEventId; null when none is running (404) or the
 * last event was already seen (204). */
export async function reattach(id, lastEventId, signal) {
  const headers = lastEventId ? { "Last-Event-ID": lastEventId } : {};
  const response = await call("GET", path(id, "/stream"), { headers, signal });
  if (response.status === 404 || response.status === 204) return null;
  if (!response.ok) throw await failure(response);
  return events(response.body, signal);
}

/** Parses an event stream into {event, id, data} with data already JSON-decoded. */
async function* events(body, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  let event = { event: "message", id: null, data: [] };
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        if (signal?.aborted) return;
        throw new Unreachable();
      }
      if (chunk.done) return;
      buffered += chunk.value;
      const lines = buffered.split(/\r\n|\r|\n/);
      buffered = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) {
            yield { event: event.event, id: event.id, data: JSON.parse(event.data.join("\n")) };
          }
          event = { event: "message", id: null, data: [] };
          continue;
        }
        if (line.startsWith(":")) continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event.event = value;
        else if (field === "id") event.id = value;
        else if (field === "data") event.data.push(value);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
