// What every handler receives: the config, the upstream clients and the request's log record.

import type { Cache, CacheStatus } from "../cache/cache.ts";
import type { Config } from "../config.ts";
import type { RequestRecord } from "../log.ts";
import type { UpstreamClient } from "../upstream/client.ts";

/** Dependencies of a handler, passed in so tests can point them at 127.0.0.1. */
export interface HandlerContext {
  config: Config;
  /** The upstream client of a configured registry. */
  upstream: (registry: string) => UpstreamClient;
  cache: Cache;
  /** Clock (ms since the epoch), for tag TTLs. */
  now: () => number;
  /** Filled in by the handler; logged when the response completes. */
  record: RequestRecord;
  /** Runs `fn` once the response has been sent (or the client went away). */
  defer: (fn: () => void) => void;
}

/** Counts and records how a response was served, and says so in its X-Cache header. */
export function cacheStatus(ctx: HandlerContext, status: CacheStatus, headers: Headers): Headers {
  ctx.cache.counts[status]++;
  ctx.record.cache = status;
  headers.set("x-cache", status);
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
