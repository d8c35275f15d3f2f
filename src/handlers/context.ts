// What every handler receives: the config, the upstream clients and the request's log record.

import type { Cache, CacheStatus } from "../cache/cache.ts";
import type { Cluster } from "../cluster/cluster.ts";
import type { Config } from "../config.ts";
import type { RequestRecord } from "../log.ts";
import type { Progress } from "../upstream/client.ts";
import type { Answer, SourcedRequest, Upstreams } from "../upstream/upstreams.ts";

/** Dependencies of a handler, passed in so tests can point them at 127.0.0.1. */
export interface HandlerContext {
  config: Config;
  /** The upstreams (primary and fallbacks) of a configured registry. */
  upstream: (registry: string) => Upstreams;
  cache: Cache;
  /** Replicas sharing the bucket (fleet-wide single fetch); undefined when alone. */
  cluster?: Cluster;
  /** Clock (ms since the epoch), for tag TTLs. */
  now: () => number;
  /** Filled in by the handler; logged when the response completes. */
  record: RequestRecord;
  /** Runs `fn` once the response has been sent (or the client went away). */
  defer: (fn: () => void) => void;
}

/**
 * Asks `registry`'s upstreams (see Upstreams.fetch) and records in the log which one answered and
 * how. `take` reads and checks the answer; a fallback's answer it refuses goes to the next one.
 */
export function askUpstream<T>(
  ctx: HandlerContext,
  registry: string,
  req: SourcedRequest,
  take: (answer: Answer) => Promise<T>,
  progress: Progress = ctx.record,
): Promise<T> {
  return ctx.upstream(registry).fetch(req, progress, (answer) => {
    ctx.record.upstreamStatus = answer.response.status;
    ctx.record.via = answer.via;
    return take(answer);
  });
}

/**
 * Counts and records how a response was served, and says so in its X-Cache header; a response
 * fetched upstream names the upstream it came from in X-Cache-Via.
 */
export function cacheStatus(ctx: HandlerContext, status: CacheStatus, headers: Headers): Headers {
  ctx.cache.counts[status]++;
  ctx.record.cache = status;
  headers.set("x-cache", status);
  if (status === "MISS") viaHeader(ctx, headers);
  return headers;
}

/** Names the upstream that answered (the primary or a fallback) in X-Cache-Via. */
export function viaHeader(ctx: HandlerContext, headers: Headers): Headers {
  if (ctx.record.via !== undefined) headers.set("x-cache-via", ctx.record.via);
  return headers;
}

/** The token scope for pulling `name`. */
export function pullScope(name: string): string {
  return `repository:${name}:pull`;
}

/** Headers forwarded upstream from the client: its User-Agent (never an invented one). */
export function forwardedHeaders(request: Request): Record<string, string> {
  const agent = request.headers.get("user-agent");
  return agent ? { "user-agent": agent } : {};
}

/** Headers every registry response carries. */
export function registryHeaders(extra: Record<string, string>): Headers {
  return new Headers({ "docker-distribution-api-version": "registry/2.0", ...extra });
}
