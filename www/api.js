// Requests to the talkserver API (see docs/protocol.md).
//
// URLs are relative, so the page also works when it is served under a
// path prefix.  Every failure becomes a RequestError whose message can be
// shown to a person as it is.

/**
 * A request that failed; `status` is the HTTP status, or 0 when the server
 * could not be reached; `retryAfter` the seconds its Retry-After asked for, or 0.
 */
export class RequestError extends Error {
  constructor(message, status, retryAfter = 0) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }

  /** A write answered 504 may or may not have been saved (docs/protocol.md): say neither. */
  get outcomeUnknown() {
    return this.status === 504;
  }
}

/** Fired on `window` when a write's outcome is unknown: the page re-reads the board. */
export const REREAD_EVENT = "talkserver:reread";

// Retry-After in seconds (the HTTP-date form is not used by talkserver).
function retryAfter(response) {
  const value = response.headers.get("Retry-After");
  return value && /^\d+$/.test(value) ? Number(value) : 0;
}

/** The API path of one talk: its title is a single URL-encoded segment. */
export function talkPath(title) {
  return "talks/" + encodeURIComponent(title);
}

async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { cache: "no-store", ...options });
  } catch (error) {
    if (error.name === "AbortError" || error.name === "TimeoutError") throw error;
    throw new RequestError("The server could not be reached.", 0);
  }
  if (!response.ok) {
    throw new RequestError(await errorMessage(response), response.status, retryAfter(response));
  }
  return response;
}

// The server answers errors as {"error": message}; anything else (a proxy's
// HTML page, say) is summed up by its status line.
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (typeof body.error === "string" && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `The server answered ${response.status} ${response.statusText}`.trim() + ".";
}

/** GET a JSON answer. */
export async function getJSON(path, signal) {
  const response = await request(path, { signal });
  try {
    return await response.json();
  } catch (_) {
    throw new RequestError("The server sent an answer that is not JSON.", response.status);
  }
}

/** Send a write (PUT, POST, DELETE) with an optional JSON body. */
export async function send(method, path, body) {
  const options = { method };
  if (body !== undefined) {
    options.headers = { "Content-Type": "application/json" };
    options.body = JSON.stringify(body);
  }
  try {
    await request(path, options);
  } catch (error) {
    if (error.outcomeUnknown) window.dispatchEvent(new Event(REREAD_EVENT));
    throw error;
  }
}

/** Propose a talk, or replace the one with the same title. */
export function proposeTalk(title, presenter, summary) {
  return send("PUT", talkPath(title), { presenter, summary });
}

/** Delete a talk. */
export function deleteTalk(title) {
  return send("DELETE", talkPath(title));
}

/** Add a comment to a talk. */
export function addComment(title, author, message) {
  return send("POST", talkPath(title) + "/comments", { author, message });
}
