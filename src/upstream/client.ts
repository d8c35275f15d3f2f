// The upstream HTTP client: auth, redirects, retries with backoff, and idle (never total) timeouts.

import type { RegistryConfig } from "../config.ts";
import { RegistryError } from "../oci/errors.ts";
import { log, redactUrls } from "../log.ts";
import type { MirrorMetrics } from "../metrics.ts";
import { AddressGuard, type Resolve } from "./addresses.ts";
import { UpstreamAuth } from "./auth.ts";

/** Statuses worth another try on an idempotent request. */
const RETRY_STATUSES = new Set([429, 500, 502, 503, 504]);
const MAX_REDIRECTS = 5;
const BASE_DELAY_MS = 200;
/** A Retry-After longer than this is passed to the client instead of waited for. */
const MAX_RETRY_AFTER_MS = 30_000;

/** One request to an upstream registry. */
export interface UpstreamRequest {
  method: "GET" | "HEAD";
  /** Path below the registry's base URL, starting with `/v2/`, already validated. */
  path: string;
  query?: URLSearchParams;
  /** Accept, Range, User-Agent: what the handler chose to forward. */
  headers?: Record<string, string>;
  /** Token scope, e.g. `repository:library/ubuntu:pull`. */
  scope?: string;
  /** Overrides of the configured idle timeout and retries (for requests with a fallback). */
  idleTimeoutMs?: number;
  retries?: number;
}

/** Counters a caller can watch: bytes read from the body, retries made. */
export interface Progress {
  upstreamBytes: number;
  retries: number;
  /** Set when the body stream fails (idle timeout, reset). */
  error?: string;
}

/** Options shared by every client. */
export interface ClientOptions {
  idleTimeoutMs: number;
  retries: number;
  userAgent: string;
  fetch?: typeof fetch;
  metrics?: MirrorMetrics;
  /** How redirect and token realm targets are resolved (tests pass their own). */
  resolve?: Resolve;
}

/** Talks to one upstream registry. */
export class UpstreamClient {
  readonly registry: RegistryConfig;
  readonly auth: UpstreamAuth;
  readonly #options: ClientOptions;
  readonly #fetch: typeof fetch;
  readonly #guard: AddressGuard;
  #anonymous?: UpstreamClient;

  constructor(registry: RegistryConfig, options: ClientOptions) {
    this.registry = registry;
    this.#options = options;
    this.#fetch = options.fetch ?? fetch;
    this.#guard = new AddressGuard(registry.upstream, {
      fetch: this.#fetch,
      resolve: options.resolve,
    });
    this.auth = new UpstreamAuth(registry, {
      fetch: (url, init) => this.#guard.fetch(url, init, "a token realm"),
      now: Date.now,
      userAgent: options.userAgent,
    });
  }

  /** Closes the connections kept for redirect targets and token realms (and the anonymous twin). */
  async close(): Promise<void> {
    await this.#guard.close();
    await this.#anonymous?.close();
  }

  /**
   * True when `name` can be read without the configured credentials (an anonymous tags list
   * answers 200). False for private repositories; throws when the upstream cannot be asked.
   */
  async isPublic(name: string): Promise<boolean> {
    this.#anonymous ??= new UpstreamClient(
      { ...this.registry, username: undefined, password: undefined },
      { ...this.#options, metrics: undefined },
    );
    const response = await this.#anonymous.request({
      method: "GET",
      path: `/v2/${name}/tags/list`,
      query: new URLSearchParams({ n: "1" }),
      scope: `repository:${name}:pull`,
    }, { upstreamBytes: 0, retries: 0 });
    await response.body?.cancel();
    if (response.status >= 500 || response.status === 429) {
      throw new RegistryError(
        "UNAVAILABLE",
        `upstream ${this.registry.name} answered ${response.status}`,
        {
          status: 502,
        },
      );
    }
    return response.status === 200;
  }

  /**
   * Sends the request, retrying connect errors, 5xx and 429 with exponential backoff and jitter
   * (honouring Retry-After). Returns the final upstream response, whatever its status; its body is
   * watched by the idle timeout. Throws RegistryError when the upstream cannot be reached.
   */
  async request(req: UpstreamRequest, progress: Progress): Promise<Response> {
    const retries = req.retries ?? this.#options.retries;
    for (let attempt = 0;; attempt++) {
      let response: Response;
      try {
        response = await this.#send(req, progress);
      } catch (e) {
        // Refusals (a redirect to an internal address) and client errors are final.
        if (e instanceof RegistryError && (e.status < 500 || e.code === "DENIED")) throw e;
        this.#failed(0, describeError(e));
        if (attempt >= retries) throw this.#unreachable(e);
        await this.#retryWait(attempt, null, progress, describeError(e));
        continue;
      }
      if (response.status === 429) {
        log.warn("upstream {registry} answered 429 Too Many Requests", {
          registry: this.registry.name,
          retryAfter: response.headers.get("retry-after"),
        });
      }
      if (response.status >= 500 || response.status === 429) {
        this.#failed(response.status, `${req.method} ${req.path} answered ${response.status}`);
      }
      const retryAfter = retryAfterMs(response.headers.get("retry-after"), Date.now());
      if (
        !RETRY_STATUSES.has(response.status) || attempt >= retries ||
        (retryAfter ?? 0) > MAX_RETRY_AFTER_MS
      ) {
        return response;
      }
      await response.body?.cancel();
      await this.#retryWait(attempt, retryAfter, progress, `status ${response.status}`);
    }
  }

  /** One attempt: authorization, then redirects followed by hand. */
  async #send(req: UpstreamRequest, progress: Progress): Promise<Response> {
    const base = this.registry.upstream;
    let url = new URL(`${base.pathname.replace(/\/$/, "")}${req.path}`, base.origin);
    if (req.query) url.search = req.query.toString();
    let authorization = this.auth.cached(req.scope);
    let answered = false;
    const idleTimeoutMs = req.idleTimeoutMs ?? this.#options.idleTimeoutMs;
    const controller = new AbortController();
    const headerTimer = setTimeout(
      () => controller.abort(new DOMException("upstream sent no headers in time", "TimeoutError")),
      idleTimeoutMs,
    );
    try {
      for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
        const headers = new Headers(req.headers);
        headers.set("accept-encoding", "identity");
        if (!headers.has("user-agent")) headers.set("user-agent", this.#options.userAgent);
        // Credentials go to the upstream itself only, never to a redirect target elsewhere.
        if (authorization && url.origin === base.origin) {
          headers.set("authorization", authorization);
        }
        const sent = performance.now();
        const init: RequestInit = {
          method: req.method,
          headers,
          redirect: "manual",
          signal: controller.signal,
        };
        // A redirect target is dialled at the address the guard checked (it refuses internal ones).
        const response = url.origin === base.origin
          ? await this.#fetch(url, init)
          : await this.#guard.fetch(url, init, "a redirect");
        const labels = { registry: this.registry.name };
        this.#options.metrics?.upstreamLatency.observe(labels, (performance.now() - sent) / 1000);
        this.#options.metrics?.upstreamRequests.inc({ ...labels, status: String(response.status) });
        this.#watchRateLimit(response);
        const location = response.headers.get("location");
        if (response.status >= 300 && response.status < 400 && location) {
          await response.body?.cancel();
          url = redirectTarget(location, url, this.registry.name);
          continue;
        }
        if (response.status === 401 && !answered && url.origin === base.origin) {
          answered = true;
          const next = await this.auth.answer(
            response.headers.get("www-authenticate"),
            req.scope,
            authorization,
          );
          if (next !== undefined) {
            await response.body?.cancel();
            authorization = next;
            hop--;
            continue;
          }
        }
        clearTimeout(headerTimer);
        return watchIdle(response, controller, idleTimeoutMs, progress, (bytes) => {
          this.#options.metrics?.upstreamBytes.inc({ registry: this.registry.name }, bytes);
        });
      }
      throw new RegistryError("UNAVAILABLE", `upstream ${this.registry.name}: too many redirects`, {
        status: 502,
      });
    } catch (e) {
      controller.abort();
      throw e;
    } finally {
      clearTimeout(headerTimer);
    }
  }

  async #retryWait(
    attempt: number,
    retryAfter: number | undefined | null,
    progress: Progress,
    reason: string,
  ): Promise<void> {
    const backoff = BASE_DELAY_MS * 2 ** attempt;
    const delay = retryAfter ?? backoff / 2 + Math.random() * backoff / 2;
    progress.retries++;
    log.info("retrying upstream {registry} in {delayMs} ms: {reason}", {
      registry: this.registry.name,
      delayMs: Math.round(delay),
      reason,
      attempt: attempt + 1,
    });
    await new Promise((resolve) => setTimeout(resolve, delay));
  }

  #unreachable(e: unknown): RegistryError {
    if (e instanceof RegistryError) return e;
    const timeout = e instanceof DOMException && e.name === "TimeoutError";
    const what = timeout ? "timed out" : "unreachable";
    return new RegistryError(
      "UNAVAILABLE",
      `upstream ${this.registry.name} (${this.registry.upstream.origin}) ${what}: ${
        describeError(e)
      }`,
      { status: timeout ? 504 : 502, cause: e },
    );
  }

  /** Counts a failed attempt (status 0: no answer) for metrics and the dashboard. */
  #failed(status: number, message: string): void {
    const metrics = this.#options.metrics;
    if (!metrics) return;
    if (status === 0) metrics.upstreamRequests.inc({ registry: this.registry.name, status: "0" });
    metrics.upstreamFailed({ registry: this.registry.name, status, message });
  }

  /** Warns when an upstream (Docker Hub) says the pull allowance is nearly used up. */
  #watchRateLimit(response: Response): void {
    const remaining = response.headers.get("ratelimit-remaining");
    if (remaining === null) return;
    const left = parseInt(remaining, 10);
    const limit = parseInt(response.headers.get("ratelimit-limit") ?? "", 10);
    if (!Number.isNaN(left)) {
      this.#options.metrics?.rateLimitRemaining.set({ registry: this.registry.name }, left);
    }
    if (left <= 10 || (limit > 0 && left / limit < 0.1)) {
      log.warn("upstream {registry} rate limit nearly reached: {remaining} left of {limit}", {
        registry: this.registry.name,
        remaining: left,
        limit: Number.isNaN(limit) ? null : limit,
      });
    }
  }
}

/** An error's message with its cause's (fetch says "fetch failed" and puts the reason in cause). */
function describeError(e: unknown): string {
  const error = e as Error & { cause?: Error };
  const cause = error?.cause?.message;
  return redactUrls(cause ? `${error.message}: ${cause}` : String(error?.message ?? e));
}

/** Resolves a redirect's Location against the URL that sent it (the guard checks where it leads). */
function redirectTarget(location: string, from: URL, registry: string): URL {
  try {
    return new URL(location, from);
  } catch {
    throw new RegistryError("UNAVAILABLE", `upstream ${registry} sent an invalid redirect`, {
      status: 502,
    });
  }
}

/** Milliseconds a Retry-After header asks for (seconds or an HTTP date), if any. */
export function retryAfterMs(value: string | null, now: number): number | undefined {
  if (value === null) return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Chunk size for default (non-BYOB) readers of a watched body, as Deno's own fetch bodies. */
const DEFAULT_READ = 64 * 1024;

/**
 * Wraps the body so that waiting more than `idleMs` for the next chunk aborts the upstream
 * request. Time spent while the client is not reading does not count: only pending reads do. The
 * wrapper is a byte stream: a BYOB reader (the fill's pump) reads straight into its own buffer,
 * in as big a read as the upstream has ready, with one hand-off per read.
 */
function watchIdle(
  response: Response,
  controller: AbortController,
  idleMs: number,
  progress: Progress,
  onEnd: (bytes: number) => void,
): Response {
  if (!response.body || [204, 205, 304].includes(response.status)) return response;
  const byob = byobReader(response.body);
  const plain = byob ? undefined : response.body.getReader();
  const reader = byob ?? plain!;
  let waitingSince = 0;
  let bytes = 0;
  /** Rejects the read in progress: an aborted fetch does not always error its body. */
  let idle: ((reason: unknown) => void) | undefined;
  const stalled = new Promise<never>((_, reject) => idle = reject);
  stalled.catch(() => {});
  const end = () => {
    clearInterval(timer);
    onEnd(bytes);
    bytes = 0;
  };
  const timer = setInterval(() => {
    if (waitingSince && Date.now() - waitingSince > idleMs) {
      const reason = new DOMException(`upstream idle for ${idleMs} ms`, "TimeoutError");
      controller.abort(reason);
      idle?.(reason);
    }
  }, Math.max(10, Math.min(1000, idleMs / 4)));
  Deno.unrefTimer(timer);
  const source: UnderlyingByteSource = {
    type: "bytes",
    // Default readers get chunks of this size; a BYOB reader's own buffer is used as it is.
    autoAllocateChunkSize: DEFAULT_READ,
    async pull(out) {
      // Always set, for default readers too (autoAllocateChunkSize).
      const request = out.byobRequest!;
      waitingSince = Date.now();
      try {
        const { done, value } = await Promise.race([
          byob ? byob.read(request.view as Uint8Array<ArrayBuffer>) : plain!.read(),
          stalled,
        ]);
        waitingSince = 0;
        if (done) {
          end();
          out.close();
          // A BYOB read hands its (transferred, empty) view back; a default read has none.
          if (value) request.respondWithNewView(value);
          else request.respond(0);
          return;
        }
        bytes += value.byteLength;
        progress.upstreamBytes += value.byteLength;
        // The source's read transferred the request's buffer: answer with the view it returned.
        if (byob) request.respondWithNewView(value);
        else out.enqueue(value);
      } catch (e) {
        waitingSince = 0;
        end();
        reader.cancel(e).catch(() => {});
        progress.error = String((e as Error)?.message ?? e);
        out.error(e);
      }
    },
    cancel(reason) {
      end();
      return reader.cancel(reason);
    },
  };
  return new Response(new ReadableStream(source), {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
}

/** A BYOB reader of `stream` when it is a byte stream (fetch bodies are), else undefined. */
function byobReader(
  stream: ReadableStream<Uint8Array>,
): ReadableStreamBYOBReader | undefined {
  try {
    return stream.getReader({ mode: "byob" });
  } catch {
    return undefined;
  }
}
