// Following the talk feed for as long as the page is open: over an event
// stream (EventSource) when it works, else one long poll after another.
//
// The first answer holds every talk; each later one holds the changes since
// the serverTime of the previous answer (the cursor).  A stream gets them
// pushed; a poll asks for them and waits until there are some.  When the
// server cannot be reached the follower backs off and then resumes from the
// same cursor, so nothing is missed and nothing arrives twice.
//
// A stream that fails before it opens while a poll of the same server
// works is being refused on the way (a proxy, a firewall, a browser
// extension); after STREAM_REFUSALS such failures in a row the page keeps
// to long polls.  See docs/client.md.

import { getJSON, RequestError } from "./api.js";

export const FIRST_RETRY_MS = 500;
export const MAX_RETRY_MS = 10_000;

// A retried poll that is still open after this long has reached the server:
// an unreachable one fails within milliseconds.
const LIVE_AFTER_MS = 1_000;

// A poll open for longer than any sane server poll timeout is presumed to
// hang on a dead connection (a laptop that slept, say) and is started anew.
const POLL_LIMIT_MS = 180_000;

// Streams refused in a row (while polls work) before the page keeps to polls.
export const STREAM_REFUSALS = 2;

/**
 * How long to wait before retry number `failures` (1, 2, ...): doubling from
 * 0.5 s and capped at 10 s, with jitter over the upper half so that many pages
 * do not all come back at the same moment after a restart.
 */
export function retryDelay(failures, random = Math.random) {
  const ceiling = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** (failures - 1));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/**
 * Keeps a view in step with the server.
 *
 * `onAnswer(talks, replace)` gets the talks of each answer; `replace` says
 * they are the complete list (the first load, or a `"reset": true` answer).
 * `status` is told `live()` (only once the first answer has been applied:
 * until then the page has nothing to show), `retryingIn(ms, message)` (the
 * server's own message when it sent one) and `trying()`.
 */
export class Follower {
  #onAnswer;
  #status;
  #wake = null;
  #refusals = 0;
  cursor = null;
  /** "stream" while the page tries event streams, "poll" once it keeps to long polls. */
  transport = typeof EventSource === "function" ? "stream" : "poll";

  constructor(onAnswer, status) {
    this.#onAnswer = onAnswer;
    this.#status = status;
  }

  /** Follow until the page goes away. */
  async run() {
    let failures = 0;
    // After a stream failed before opening, one poll tells whether the
    // server is down or only streams are refused.
    let probe = false;
    for (;;) {
      const streaming = this.transport === "stream" && !probe;
      // A stream says when it is open; a poll is live once it has not failed at once.
      const seemsLive = streaming ? null : setTimeout(() => this.#live(), failures ? LIVE_AFTER_MS : 0);
      try {
        if (streaming) {
          await this.#stream(() => {
            failures = 0;
            this.#refusals = 0;
            this.#live();
          });
        } else {
          this.#take(await this.#poll());
          if (probe) {
            probe = false;
            this.#refusals += 1;
            if (this.#refusals >= STREAM_REFUSALS) this.transport = "poll";
          }
        }
        clearTimeout(seemsLive);
        failures = 0;
        this.#live();
      } catch (error) {
        clearTimeout(seemsLive);
        if (error.name === "TimeoutError") continue;
        if (error.streamRefused) {
          probe = true;
          continue;
        }
        probe = false;
        // A cursor the server refuses will not get better: start over.
        if (error.status === 400) this.cursor = null;
        failures += 1;
        // A server that says when to come back (Retry-After) is not asked sooner.
        const delay = Math.max(retryDelay(failures), (error.retryAfter || 0) * 1000);
        this.#status.retryingIn(delay, error.status ? error.message : "");
        await this.#sleep(delay);
        this.#status.trying();
      }
    }
  }

  /** Cut the current wait short (the "Retry now" button, the network coming back). */
  retryNow() {
    if (this.#wake) this.#wake();
  }

  #path() {
    return this.cursor === null ? "talks" : `talks?changesSince=${this.cursor}`;
  }

  /** Say "live" once the board has been drawn (a cursor means an answer was applied). */
  #live() {
    if (this.cursor !== null) this.#status.live();
  }

  #take(answer) {
    const first = this.cursor === null;
    this.#onAnswer(answer.talks, first || answer.reset === true);
    this.cursor = answer.serverTime;
    if (first) this.#live(); // a stream's first event, or a poll's answer
  }

  async #poll() {
    return checked(await getJSON(this.#path(), AbortSignal.timeout(POLL_LIMIT_MS)));
  }

  /**
   * Follow one event stream until it fails or ends (then it rejects; a
   * stream never resolves).  `opened` is called once the server accepts it.
   * The browser's own reconnecting is not used: the follower reconnects
   * with its cursor and its backoff, and tells the status line.
   */
  #stream(opened) {
    return new Promise((_, reject) => {
      const source = new EventSource(this.#path());
      let open = false;
      const fail = (error) => {
        source.close();
        reject(error);
      };
      source.onopen = () => {
        open = true;
        opened();
      };
      source.onmessage = (event) => {
        let answer;
        try {
          answer = checked(JSON.parse(event.data));
        } catch (_) {
          fail(new RequestError("The server sent an answer in an unknown shape.", 0));
          return;
        }
        this.#take(answer);
      };
      source.onerror = () => {
        const error = new RequestError("The server could not be reached.", 0);
        // Failing before the server answered: refused, or the server is down.
        error.streamRefused = !open;
        fail(error);
      };
    });
  }

  #sleep(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wake = done;
    });
  }
}

/** `answer` if it has the shape of a /talks answer; throws otherwise. */
function checked(answer) {
  if (!Number.isSafeInteger(answer?.serverTime) || !Array.isArray(answer.talks)) {
    throw new RequestError("The server sent an answer in an unknown shape.", 0);
  }
  return answer;
}
