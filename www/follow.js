// Following the talk feed: one long poll after another, for as long as the
// page is open.
//
// The first request fetches every talk; each later one asks for the changes
// since the serverTime of the previous answer (the cursor) and waits until
// there are some.  When the server cannot be reached the follower backs off
// and then resumes from the same cursor, so nothing is missed and nothing
// arrives twice.

import { getJSON, RequestError } from "./api.js";

export const FIRST_RETRY_MS = 500;
export const MAX_RETRY_MS = 10_000;

// A retried poll that is still open after this long has reached the server:
// an unreachable one fails within milliseconds.
const LIVE_AFTER_MS = 1_000;

// A poll open for longer than any sane server poll timeout is presumed to
// hang on a dead connection (a laptop that slept, say) and is started anew.
const POLL_LIMIT_MS = 180_000;

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
 * `status` is told `live()`, `retryingIn(ms, message)` (the server's own
 * message when it sent one) and `trying()`.
 */
export class Follower {
  #onAnswer;
  #status;
  #wake = null;
  cursor = null;

  constructor(onAnswer, status) {
    this.#onAnswer = onAnswer;
    this.#status = status;
  }

  /** Poll until the page goes away. */
  async run() {
    let failures = 0;
    for (;;) {
      const seemsLive = setTimeout(() => this.#status.live(), failures ? LIVE_AFTER_MS : 0);
      try {
        const answer = await this.#poll();
        clearTimeout(seemsLive);
        this.#onAnswer(answer.talks, this.cursor === null || answer.reset === true);
        this.cursor = answer.serverTime;
        failures = 0;
        this.#status.live();
      } catch (error) {
        clearTimeout(seemsLive);
        if (error.name === "TimeoutError") continue;
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

  async #poll() {
    const path = this.cursor === null ? "talks" : `talks?changesSince=${this.cursor}`;
    const answer = await getJSON(path, AbortSignal.timeout(POLL_LIMIT_MS));
    if (!Number.isSafeInteger(answer?.serverTime) || !Array.isArray(answer.talks)) {
      throw new RequestError("The server sent an answer in an unknown shape.", 0);
    }
    return answer;
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
