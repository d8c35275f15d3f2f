// Backoff after failed logins: a client address that keeps guessing passwords waits longer and
// longer (429 with Retry-After) before the next guess costs a bcrypt check.

import { LRUCache } from "lru-cache";
import { RegistryError } from "../oci/errors.ts";

/** Failed logins a client may make before it has to wait. */
const FREE_FAILURES = 5;
/** The wait after the first failure beyond the free ones; each further failure doubles it. */
const FIRST_WAIT_MS = 1_000;
const MAX_WAIT_MS = 5 * 60_000;
/** A client's failures are forgotten this long after its last one. */
const FORGET_AFTER_MS = 15 * 60_000;
/** Clients remembered (IPv6 gives one client countless addresses): ~5 MB, far above real use. */
const MAX_CLIENTS = 50_000;

/** Options of LoginBackoff. */
export interface LoginBackoffOptions {
  /** Clock, ms since the epoch (default Date.now). */
  now?: () => number;
}

/** One client's record; also the ticket of a check in progress. */
export interface LoginAttempt {
  readonly client: string;
  failures: number;
  /** Checks begun and not ended. */
  checking: number;
  /** No check begins before this time. */
  until: number;
}

/** Decides whether a client's password may be checked now, and learns from each outcome. */
export class LoginBackoff {
  readonly #now: () => number;
  readonly #clients: LRUCache<string, LoginAttempt>;

  constructor(options: LoginBackoffOptions = {}) {
    this.#now = options.now ?? Date.now;
    // ttlResolution 0: read the injected clock on every check (and start no timer).
    this.#clients = new LRUCache({
      max: MAX_CLIENTS,
      ttl: FORGET_AFTER_MS,
      perf: { now: this.#now },
      ttlResolution: 0,
    });
  }

  /**
   * The ticket of a check that may run now (pass it to `end`), or the 429 to answer. A client has
   * as many checks in flight as it has free failures left, and at least one: a burst of parallel
   * guesses cannot outrun the count of its own failures.
   */
  begin(client: string): LoginAttempt | RegistryError {
    const now = this.#now();
    let attempt = this.#clients.get(client);
    if (!attempt) {
      attempt = { client, failures: 0, checking: 0, until: 0 };
      this.#clients.set(client, attempt);
    }
    if (now < attempt.until) {
      return tooMany(`${attempt.failures} failed logins from ${client}`, attempt.until - now);
    }
    if (attempt.checking >= Math.max(1, FREE_FAILURES + 1 - attempt.failures)) {
      return tooMany(`${attempt.checking} logins from ${client} are being checked`, FIRST_WAIT_MS);
    }
    attempt.checking++;
    return attempt;
  }

  /** Records the outcome of a check begun with `begin`. A success forgives no failure. */
  end(attempt: LoginAttempt, matched: boolean): void {
    attempt.checking--;
    if (matched) return;
    attempt.failures++;
    const beyond = attempt.failures - FREE_FAILURES;
    if (beyond > 0) {
      const wait = Math.min(FIRST_WAIT_MS * 2 ** (beyond - 1), MAX_WAIT_MS);
      attempt.until = Math.max(attempt.until, this.#now() + wait);
    }
    this.#clients.set(attempt.client, attempt); // forgotten FORGET_AFTER_MS after this failure
  }

  /** Ends a check begun with `begin` that could not run: no outcome to learn from. */
  abandon(attempt: LoginAttempt): void {
    attempt.checking--;
  }
}

function tooMany(what: string, waitMs: number): RegistryError {
  const seconds = Math.ceil(waitMs / 1000);
  return new RegistryError("TOOMANYREQUESTS", `${what}: try again in ${seconds} s`, {
    headers: { "retry-after": String(seconds) },
  });
}
