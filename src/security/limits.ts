// Request limits: URL length, header size, requests in flight, and a per-client request rate.

import { LRUCache } from "lru-cache";
import type { Config } from "../config.ts";
import { RegistryError } from "../oci/errors.ts";

/** Clients not seen for this long are forgotten by the rate limiter. */
const IDLE_CLIENT_MS = 60_000;
/** Clients remembered (IPv6 gives one client countless addresses): ~10 MB, far above real use. */
const MAX_CLIENTS = 50_000;

/** The settings the request limits read (the rest of `limits` is the connections'). */
export type RequestLimits = Pick<
  Config["limits"],
  "maxHeaderBytes" | "maxUrlLength" | "maxConcurrentRequests" | "clientRate"
>;

/** Refuses oversized requests, and admits the rest within the rate and concurrency limits. */
export class Limits {
  readonly #settings: RequestLimits;
  readonly #now: () => number;
  /** A forgotten client starts with a full burst, as it would after a minute idle. */
  readonly #buckets: LRUCache<string, { tokens: number; at: number }>;
  #inFlight = 0;

  constructor(settings: RequestLimits, now: () => number = Date.now) {
    this.#settings = settings;
    this.#now = now;
    // ttlResolution 0: read the injected clock on every check (and start no timer).
    this.#buckets = new LRUCache({
      max: MAX_CLIENTS,
      ttl: IDLE_CLIENT_MS,
      perf: { now },
      ttlResolution: 0,
    });
  }

  /** Requests admitted whose responses are not yet done. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /**
   * The error for a URL or request head over its limit, else undefined. Checked on every request,
   * probes included: it costs no resource to answer.
   */
  check(request: Request): RegistryError | undefined {
    const { maxUrlLength, maxHeaderBytes } = this.#settings;
    if (request.url.length > maxUrlLength) {
      return new RegistryError("UNSUPPORTED", `URL longer than ${maxUrlLength} bytes`, {
        status: 414,
      });
    }
    let headerBytes = 0;
    for (const [name, value] of request.headers) headerBytes += name.length + value.length + 4;
    if (headerBytes > maxHeaderBytes) {
      return new RegistryError(
        "UNSUPPORTED",
        `request headers larger than ${maxHeaderBytes} bytes`,
        { status: 431 },
      );
    }
  }

  /**
   * Takes a slot among the requests in flight and a token of the client's rate: a release function
   * to call when the response is done, or the error to answer.
   */
  admit(client: string): (() => void) | RegistryError {
    const { maxConcurrentRequests } = this.#settings;
    if (this.#settings.clientRate > 0 && !this.#take(client)) {
      return new RegistryError(
        "TOOMANYREQUESTS",
        `more than ${this.#settings.clientRate} requests per second from ${client}`,
        { headers: { "retry-after": "1" } },
      );
    }
    if (this.#inFlight >= maxConcurrentRequests) {
      return new RegistryError(
        "UNAVAILABLE",
        `too many requests in flight (limit ${maxConcurrentRequests})`,
        { headers: { "retry-after": "1" } },
      );
    }
    this.#inFlight++;
    let released = false;
    return () => {
      if (!released) this.#inFlight--;
      released = true;
    };
  }

  /** Token bucket per client: `clientRate` per second, bursts of twice that. */
  #take(client: string): boolean {
    const now = this.#now();
    const rate = this.#settings.clientRate;
    const bucket = this.#buckets.get(client) ?? { tokens: 2 * rate, at: now };
    bucket.tokens = Math.min(2 * rate, bucket.tokens + (now - bucket.at) / 1000 * rate);
    bucket.at = now;
    this.#buckets.set(client, bucket);
    if (bucket.tokens < 1) return false;
    bucket.tokens--;
    return true;
  }
}
