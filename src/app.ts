// The request handler given to Deno.serve: route, dispatch to a handler, map errors, log one line.

import type { Cache } from "./cache/cache.ts";
import type { Config } from "./config.ts";
import { handleBlob } from "./handlers/blob.ts";
import type { HandlerContext } from "./handlers/context.ts";
import { handleBase, handleReferrers, handleTags } from "./handlers/listing.ts";
import { handleManifest } from "./handlers/manifest.ts";
import { handleOps } from "./handlers/ops.ts";
import { log, type RequestRecord } from "./log.ts";
import type { MirrorMetrics } from "./metrics.ts";
import { isDigestReference } from "./oci/names.ts";
import { RegistryError } from "./oci/errors.ts";
import { type Route, route } from "./route.ts";
import type { UpstreamClient } from "./upstream/client.ts";

/** What the app is wired with in main.ts. */
export interface AppDeps {
  config: Config;
  clients: Map<string, UpstreamClient>;
  cache: Cache;
  metrics: MirrorMetrics;
  /** Clock, ms since the epoch (default Date.now). */
  now?: () => number;
}

/** Deno.serve's per-request info; `completed` settles when the response is fully sent. */
export interface ServeInfo {
  completed?: Promise<void>;
}

/** Builds the `Request -> Response` function of the mirror. */
export function createApp(
  deps: AppDeps,
): (request: Request, info?: ServeInfo) => Promise<Response> {
  const upstream = (registry: string) => deps.clients.get(registry)!;
  const ops = {
    config: deps.config,
    cache: deps.cache,
    metrics: deps.metrics,
    startedAt: Date.now(),
  };
  return async (request, info) => {
    const started = performance.now();
    const url = new URL(request.url);
    const ns = url.searchParams.get("ns");
    const record: RequestRecord = {
      method: request.method,
      path: ns === null ? url.pathname : `${url.pathname}?ns=${ns}`,
      upstreamBytes: 0,
      retries: 0,
    };
    const deferred: (() => void)[] = [];
    const ctx: HandlerContext = {
      config: deps.config,
      upstream,
      cache: deps.cache,
      now: deps.now ?? Date.now,
      record,
      defer: (fn) => deferred.push(fn),
    };
    let response: Response;
    let kind = "unknown";
    try {
      const decided = route(request, deps.config);
      if (decided instanceof RegistryError) throw decided;
      kind = decided.kind === "ops" ? decided.endpoint : decided.kind;
      describe(decided, record);
      response = decided.kind === "ops"
        ? await handleOps(decided.endpoint, ops)
        : await dispatch(decided, request, ctx);
    } catch (e) {
      response = errorResponse(e, request.method, record);
    }
    record.status = response.status;
    const length = response.headers.get("content-length");
    const done = () => {
      for (const fn of deferred) fn();
      record.bytes = length !== null ? Number(length) : record.upstreamBytes;
      count(deps.metrics, kind, record);
      logRequest(record, performance.now() - started, kind);
    };
    if (info?.completed) info.completed.then(done, done);
    else done();
    return response;
  };
}

function dispatch(r: Route, request: Request, ctx: HandlerContext): Promise<Response> | Response {
  switch (r.kind) {
    case "manifest":
      return handleManifest(r, request, ctx);
    case "blob":
      return handleBlob(r, request, ctx);
    case "tags":
      return handleTags(r, request, ctx);
    case "referrers":
      return handleReferrers(r, request, ctx);
    default:
      return handleBase(request);
  }
}

function describe(r: Route, record: RequestRecord): void {
  if (r.kind === "base" || r.kind === "ops") return;
  record.registry = r.registry;
  record.repository = r.name;
  if (r.kind === "manifest") record.reference = r.reference;
  if (r.kind === "blob" || r.kind === "referrers") record.reference = r.digest;
}

/** Request, cache and pull counters, once the response has been sent. */
function count(metrics: MirrorMetrics, kind: string, record: RequestRecord): void {
  metrics.requests.inc({ kind, status: String(record.status) });
  if (!record.cache) return;
  metrics.cacheResults.inc({ result: record.cache.toLowerCase() });
  if (record.cache !== "MISS" && record.method === "GET") {
    metrics.cacheBytes.inc({ registry: record.registry! }, record.bytes ?? 0);
  }
  const reference = record.reference ?? "";
  if (kind === "manifest" && record.status === 200 && !isDigestReference(reference)) {
    const image = `${record.registry}/${record.repository}:${reference}`;
    metrics.pulls.set(image, (metrics.pulls.get(image) ?? 0) + 1);
  }
}

function errorResponse(e: unknown, method: string, record: RequestRecord): Response {
  if (e instanceof RegistryError) {
    record.error = e.message;
    return e.toResponse(method);
  }
  record.error = String((e as Error)?.message ?? e);
  log.error("unexpected error serving {method} {path}: {error}", {
    method: record.method,
    path: record.path,
    error: (e as Error)?.stack ?? String(e),
  });
  return new RegistryError("UNKNOWN", "internal error", { cause: e }).toResponse(method);
}

function logRequest(record: RequestRecord, durationMs: number, kind: string): void {
  const line = { ...record, durationMs: Math.round(durationMs) };
  // Probes and scrapes come every few seconds: keep them out of the info log.
  if (["metrics", "healthz", "readyz", "stats"].includes(kind)) {
    log.debug("{method} {path} {status}", line);
  } else {
    log.info("{method} {path} {status}", line);
  }
}
