// A circuit breaker for one upstream: after a few failures in a row it is skipped for a cool-down,
// then one request probes it (half-open); an answer closes it again, a failure reopens it.

/** Failures in a row that open the breaker. */
export const FAILURE_THRESHOLD = 3;
/** How long an open breaker skips its upstream before one request probes it again. */
export const COOL_DOWN_MS = 15_000;

/**
 * `up`: answering; `failing`: its last requests failed, still asked; `skipped`: open, not asked
 * until `skippedUntil`; `half-open`: the cool-down is over, the next request (or the one in
 * flight) probes it.
 */
export type BreakerState = "up" | "failing" | "skipped" | "half-open";

/** What the dashboard and metrics show of a breaker. */
export interface BreakerStatus {
  state: BreakerState;
  /** Failures in a row. */
  failures: number;
  /** When an open breaker lets a probe through (ms since the epoch). */
  skippedUntil?: number;
  /** The last failure, until an answer. */
  lastError?: string;
}

/** Options of {@linkcode Breaker}. */
export interface BreakerOptions {
  /** Clock, ms since the epoch. */
  now: () => number;
  /** False: failures are counted and shown, but the upstream is never skipped (nothing to skip to). */
  skips?: boolean;
  threshold?: number;
  coolDownMs?: number;
}

/** The breaker of one upstream. Every `allow()` that returns true is followed by an outcome. */
export class Breaker {
  readonly #now: () => number;
  readonly #skips: boolean;
  readonly #threshold: number;
  readonly #coolDownMs: number;
  #failures = 0;
  /** 0 while closed; else when the cool-down ends. */
  #openUntil = 0;
  #probing = false;
  #lastError?: string;

  constructor(options: BreakerOptions) {
    this.#now = options.now;
    this.#skips = options.skips ?? true;
    this.#threshold = options.threshold ?? FAILURE_THRESHOLD;
    this.#coolDownMs = options.coolDownMs ?? COOL_DOWN_MS;
  }

  /**
   * Whether a request may go to the upstream now. Closed: yes. Open: no until the cool-down ends;
   * then yes for one request at a time (the probe), whose outcome decides.
   */
  allow(): boolean {
    if (!this.#skips || this.#openUntil === 0) return true;
    if (this.#probing || this.#now() < this.#openUntil) return false;
    this.#probing = true;
    return true;
  }

  /** The upstream answered (any status but 5xx and 429): the breaker closes. */
  success(): void {
    this.#failures = 0;
    this.#openUntil = 0;
    this.#probing = false;
    this.#lastError = undefined;
  }

  /**
   * The upstream did not answer, or answered 5xx or 429. Opens the breaker at the threshold, at a
   * failed probe, or at once until `until` (a rate limit's reset), whichever ends later.
   */
  failure(error: string, until?: number): void {
    const now = this.#now();
    const reopen = this.#openUntil !== 0;
    this.#failures++;
    this.#lastError = error;
    this.#probing = false;
    let openUntil = this.#openUntil;
    if (reopen || this.#failures >= this.#threshold) openUntil = now + this.#coolDownMs;
    if (until !== undefined) openUntil = Math.max(openUntil, until);
    this.#openUntil = Math.max(this.#openUntil, openUntil);
  }

  /** Opens the breaker at once (an upstream that sent content not matching its digest). */
  trip(error: string): void {
    this.failure(error, this.#now() + this.#coolDownMs);
  }

  /** A request allowed through ended with no outcome (cancelled): another may probe. */
  release(): void {
    this.#probing = false;
  }

  /** Whether a request now would be skipped. */
  get skipping(): boolean {
    return this.#skips && this.#openUntil !== 0 &&
      (this.#probing || this.#now() < this.#openUntil);
  }

  status(): BreakerStatus {
    const status: BreakerStatus = { ...this.#state(), failures: this.#failures };
    if (this.#lastError !== undefined) status.lastError = this.#lastError;
    return status;
  }

  #state(): { state: BreakerState; skippedUntil?: number } {
    if (this.#failures === 0) return { state: "up" };
    if (!this.#skips || this.#openUntil === 0) return { state: "failing" };
    if (this.#probing || this.#now() >= this.#openUntil) {
      return { state: "half-open", skippedUntil: this.#openUntil };
    }
    return { state: "skipped", skippedUntil: this.#openUntil };
  }
}
