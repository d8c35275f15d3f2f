// One registry's upstreams: the primary, then its fallbacks in order, each behind a circuit breaker.
// A request goes to the primary; when it fails (no answer, timeout, 5xx, 429) it goes to the
// fallbacks that may answer it: any of them for content the caller verifies by digest, only those
// with `trustTags` for what cannot be verified (tags, tag lists, referrers, HEAD proofs).

import type { FallbackConfig, RegistryConfig } from "../config.ts";
import { log } from "../log.ts";
import type { MirrorMetrics, UpstreamStatus } from "../metrics.ts";
import { RegistryError } from "../oci/errors.ts";
import { Breaker } from "./breaker.ts";
import {
  type ClientOptions,
  type Progress,
  retryAfterMs,
  UpstreamClient,
  type UpstreamRequest,
} from "./client.ts";

/**
 * How a fallback's answer can be trusted: `digest` when the caller verifies the bytes against the
 * digest it asked for (blobs, manifests by digest); `tag` when it cannot (only `trustTags`).
 */
export type Trust = "digest" | "tag";

/** An upstream request, and what a fallback's answer to it is checked by. */
export interface SourcedRequest extends UpstreamRequest {
  trust: Trust;
}

/** An upstream's answer, and which upstream gave it. */
export interface Answer {
  response: Response;
  /** The upstream's `host[:port]`: X-Cache-Via, the `via` of the log, the metrics' `upstream`. */
  via: string;
  fallback: boolean;
}

/**
 * Longest wait for a primary's headers when a fallback could answer instead: the primary is not
 * retried either (the fallback is the retry), so an outage costs a request at most this much.
 */
export const FALLBACK_PATIENCE_MS = 10_000;

/** Upstream answers by outcome, for the metric of that name. */
type Outcome = "answered" | "failed" | "skipped" | "refused" | "corrupt";

interface Source {
  client: UpstreamClient;
  fallback: boolean;
  /** The upstream's `host[:port]`. */
  via: string;
  trustTags: boolean;
  breaker: Breaker;
}

/** Options of {@linkcode Upstreams}: every client's, and a clock for the breakers. */
export interface UpstreamsOptions extends ClientOptions {
  now?: () => number;
}

/** True when a registry or one of its fallbacks has credentials configured. */
export function withCredentials(registry: RegistryConfig): boolean {
  return registry.password !== undefined ||
    (registry.fallbacks ?? []).some((f) => f.password !== undefined);
}

/** The upstreams of one registry. */
export class Upstreams {
  readonly registry: RegistryConfig;
  readonly #sources: Source[];
  readonly #idleTimeoutMs: number;
  readonly #now: () => number;
  readonly #metrics?: MirrorMetrics;

  constructor(registry: RegistryConfig, options: UpstreamsOptions) {
    this.registry = registry;
    this.#idleTimeoutMs = options.idleTimeoutMs;
    this.#now = options.now ?? Date.now;
    this.#metrics = options.metrics;
    const fallbacks = registry.fallbacks ?? [];
    // Without fallbacks there is nowhere else to go: failures are shown, the primary always asked.
    const breaker = () => new Breaker({ now: this.#now, skips: fallbacks.length > 0 });
    this.#sources = [
      { client: new UpstreamClient(registry, options), fallback: false, trustTags: true },
      ...fallbacks.map((f) => ({
        client: new UpstreamClient(fallbackRegistry(registry, f), options),
        fallback: true,
        trustTags: f.trustTags,
      })),
    ].map((s) => ({ ...s, via: s.client.registry.upstream.host, breaker: breaker() }));
    options.metrics?.watchUpstreams(() => this.statuses());
  }

  /** True when the registry has fallback upstreams. */
  get hasFallbacks(): boolean {
    return this.#sources.length > 1;
  }

  /** The primary upstream's client. */
  get primary(): UpstreamClient {
    return this.#sources[0].client;
  }

  /** Token fetches of every upstream of the registry. */
  get tokenFetches(): number {
    return this.#sources.reduce((sum, s) => sum + s.client.auth.tokenFetches, 0);
  }

  /** Closes every upstream's connections. */
  async close(): Promise<void> {
    await Promise.all(this.#sources.map((s) => s.client.close()));
  }

  /**
   * The primary's answer; when it fails, the first fallback's (see `fetch`). Throws when no
   * upstream that may answer could.
   */
  request(req: SourcedRequest, progress: Progress): Promise<Answer> {
    return this.fetch(req, progress, (answer) => Promise.resolve(answer));
  }

  /**
   * Asks the primary, then, while the answer is a failure (no answer, timeout, 5xx, 429), each
   * fallback that may answer `req` in order. `take` turns an answer into the result: it reads and
   * verifies the body, or throws. Any answer of the primary is taken (a 404 is an answer); a
   * fallback's only when it is a success and `take` accepts it, else the next one is asked (one
   * whose content `take` refuses as corrupt is put in cool-down). An upstream whose breaker is
   * open is skipped. Without fallbacks, the primary's answer is taken
   * whatever it is, as it always was.
   */
  async fetch<T>(
    req: SourcedRequest,
    progress: Progress,
    take: (answer: Answer) => Promise<T>,
  ): Promise<T> {
    if (this.#sources.length === 1) return await this.#only(req, progress, take);
    const candidates = this.#sources.filter((s) =>
      !s.fallback || req.trust === "digest" || s.trustTags
    );
    const failures: string[] = [];
    let limited: number | undefined;
    for (const [i, source] of candidates.entries()) {
      const later = candidates.slice(i + 1).some((s) => !s.breaker.skipping);
      if (!source.breaker.allow()) {
        failures.push(`${this.#name(source)} ${skippedText(source.breaker.status())}`);
        this.#count(source, "skipped");
        continue;
      }
      let response: Response;
      try {
        response = await source.client.request(later ? this.#hurried(req) : req, progress);
      } catch (e) {
        if (!isOutage(e) && !source.fallback) {
          source.breaker.success();
          throw e;
        }
        const message = describe(e);
        if (isOutage(e)) this.#failed(source, message);
        else source.breaker.release();
        failures.push(`${this.#name(source)}: ${message}`);
        continue;
      }
      const status = response.status;
      if (status >= 500 || status === 429) {
        const until = status === 429 ? limitedUntil(response.headers, this.#now()) : undefined;
        if (until !== undefined && !source.fallback) limited = until;
        this.#failed(source, `${req.method} ${req.path} answered ${status}`, until);
        await response.body?.cancel();
        failures.push(`${this.#name(source)} answered ${status}`);
        continue;
      }
      source.breaker.success();
      if (source.fallback && (status < 200 || status > 299)) {
        await response.body?.cancel();
        this.#count(source, "refused");
        failures.push(`${this.#name(source)} answered ${status}`);
        continue;
      }
      let result: T;
      try {
        result = await take({ response, via: source.via, fallback: source.fallback });
      } catch (e) {
        if (!source.fallback) {
          this.#count(source, "answered");
          throw e;
        }
        await response.body?.cancel().catch(() => {});
        if (isCorrupt(e)) {
          this.distrust(source.via, describe(e));
          failures.push(`${this.#name(source)} sent what does not verify: ${describe(e)}`);
        } else {
          this.#failed(source, describe(e));
          failures.push(`${this.#name(source)}: ${describe(e)}`);
        }
        continue;
      }
      this.#count(source, "answered");
      return result;
    }
    throw this.#exhausted(req, failures, limited);
  }

  /**
   * Puts a fallback that sent content not matching its digest in cool-down, so that the next
   * request goes to the next fallback. The primary is not skipped for it (there it is a 502).
   */
  distrust(via: string, reason: string): void {
    const source = this.#sources.find((s) => s.fallback && s.via === via);
    if (!source) return;
    source.breaker.trip(`sent content that does not match its digest: ${reason}`);
    this.#count(source, "corrupt");
    log.warn("fallback {upstream} of {registry} sent content that does not verify: {reason}", {
      registry: this.registry.name,
      upstream: via,
      reason,
    });
  }

  /**
   * True when `name` can be read anonymously, as the primary says; during its outage, as the
   * first fallback with `trustTags` says (a verdict is metadata: others are not asked).
   */
  async isPublic(name: string): Promise<boolean> {
    let last: unknown;
    for (const source of this.#sources.filter((s) => !s.fallback || s.trustTags)) {
      if (!source.breaker.allow()) continue;
      try {
        const verdict = await source.client.isPublic(name);
        source.breaker.success();
        return verdict;
      } catch (e) {
        if (!isOutage(e)) {
          source.breaker.release();
          throw e;
        }
        this.#failed(source, describe(e));
        last = e;
      }
    }
    throw last ?? new RegistryError(
      "UNAVAILABLE",
      `upstream ${this.registry.name} is failing: every upstream that may answer is in cool-down`,
      { status: 503 },
    );
  }

  /** Each upstream's state, for the dashboard and metrics. */
  statuses(): UpstreamStatus[] {
    return this.#sources.map((s) => {
      const status = s.breaker.status();
      return {
        registry: this.registry.name,
        upstream: s.via,
        url: s.client.registry.upstream.href,
        role: s.fallback ? "fallback" : "primary",
        trustTags: s.trustTags,
        state: status.state,
        failures: status.failures,
        skippedUntil: status.skippedUntil === undefined
          ? null
          : new Date(status.skippedUntil).toISOString(),
        lastError: status.lastError ?? null,
      };
    });
  }

  /** The one upstream of a registry without fallbacks: its answer, whatever it is. */
  async #only<T>(
    req: SourcedRequest,
    progress: Progress,
    take: (answer: Answer) => Promise<T>,
  ): Promise<T> {
    const source = this.#sources[0];
    let response: Response;
    try {
      response = await source.client.request(req, progress);
    } catch (e) {
      if (isOutage(e)) this.#failed(source, describe(e));
      throw e;
    }
    if (response.status >= 500 || response.status === 429) {
      const until = response.status === 429
        ? limitedUntil(response.headers, this.#now())
        : undefined;
      this.#failed(source, `${req.method} ${req.path} answered ${response.status}`, until);
    } else {
      source.breaker.success();
      this.#count(source, "answered");
    }
    return await take({ response, via: source.via, fallback: false });
  }

  /** `req` for an upstream with another after it: no retries, a shorter wait for headers. */
  #hurried(req: SourcedRequest): SourcedRequest {
    const idle = req.idleTimeoutMs ?? this.#idleTimeoutMs;
    return { ...req, retries: 0, idleTimeoutMs: Math.min(idle, FALLBACK_PATIENCE_MS) };
  }

  #failed(source: Source, message: string, until?: number): void {
    const before = source.breaker.status().state;
    source.breaker.failure(message, until);
    this.#count(source, "failed");
    const after = source.breaker.status();
    if (after.state === "skipped" && before !== "skipped") {
      log.warn(
        "skipping upstream {upstream} of {registry} until {until} after {failures} failures: " +
          "{error}",
        {
          registry: this.registry.name,
          upstream: source.via,
          until: new Date(after.skippedUntil!).toISOString(),
          failures: after.failures,
          error: message,
        },
      );
    }
  }

  #count(source: Source, outcome: Outcome): void {
    this.#metrics?.upstreamAnswers.inc({
      registry: this.registry.name,
      upstream: source.via,
      role: source.fallback ? "fallback" : "primary",
      outcome,
    });
  }

  #name(source: Source): string {
    const url = source.client.registry.upstream.origin;
    return source.fallback ? `fallback ${url}` : `upstream ${url}`;
  }

  /** The error when no upstream that may answer did: each one's failure, and who was not asked. */
  #exhausted(req: SourcedRequest, failures: string[], limited?: number): RegistryError {
    const untrusted = req.trust === "tag"
      ? this.#sources.filter((s) => s.fallback && !s.trustTags)
      : [];
    const parts = [...failures];
    if (untrusted.length > 0) {
      const urls = untrusted.map((s) => s.client.registry.upstream.origin).join(", ");
      parts.push(`tags are not taken from fallbacks without "trustTags": true (${urls})`);
    }
    const message = `${this.registry.name}: no upstream could answer: ${parts.join("; ")}`;
    const now = this.#now();
    const retryAfter = limited ?? this.#sources[0].breaker.status().skippedUntil;
    const headers: Record<string, string> = retryAfter !== undefined && retryAfter > now
      ? { "retry-after": String(Math.ceil((retryAfter - now) / 1000)) }
      : {};
    return limited !== undefined
      ? new RegistryError("TOOMANYREQUESTS", message, { headers })
      : new RegistryError("UNAVAILABLE", message, { status: 503, headers });
  }
}

/** The client config of a fallback: the registry's name, the fallback's URL and credentials. */
function fallbackRegistry(registry: RegistryConfig, fallback: FallbackConfig): RegistryConfig {
  return {
    name: registry.name,
    upstream: fallback.upstream,
    aliases: [],
    username: fallback.username,
    password: fallback.password,
    authRealms: fallback.authRealms,
  };
}

/** An upstream that could not answer: unreachable, timed out, a token server down. */
function isOutage(e: unknown): boolean {
  return e instanceof RegistryError && e.status >= 500 && e.code !== "DENIED";
}

/** A refusal of what an upstream sent: not the content asked for, or not content at all. */
function isCorrupt(e: unknown): boolean {
  return e instanceof RegistryError && ["MANIFEST_INVALID", "DIGEST_INVALID"].includes(e.code);
}

function describe(e: unknown): string {
  return String((e as Error)?.message ?? e);
}

function skippedText(status: ReturnType<Breaker["status"]>): string {
  const until = status.skippedUntil === undefined
    ? ""
    : ` until ${new Date(status.skippedUntil).toISOString()}`;
  return `is skipped${until} after ${status.failures} failures (${status.lastError})`;
}

/**
 * Until when a 429 says the allowance is spent (ms since the epoch): its Retry-After, a
 * RateLimit-Reset in seconds, or else, when Docker Hub says none is left
 * (`ratelimit-remaining: 0;w=21600`), the whole window. Undefined when it says nothing.
 */
export function limitedUntil(headers: Headers, now: number): number | undefined {
  const retryAfter = retryAfterMs(headers.get("retry-after"), now);
  if (retryAfter !== undefined) return now + retryAfter;
  const reset = headers.get("ratelimit-reset")?.trim();
  if (reset && /^\d+$/.test(reset)) return now + Number(reset) * 1000;
  const spent = /^\s*0\s*;\s*w=(\d+)/.exec(headers.get("ratelimit-remaining") ?? "");
  return spent ? now + Number(spent[1]) * 1000 : undefined;
}
