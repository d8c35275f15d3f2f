// The request handler given to Deno.serve: route, dispatch to a handler, map errors, log one line.

import { LRUCache } from "lru-cache";
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
import type { ClientAuth } from "./security/client_auth.ts";
import type { Limits } from "./security/limits.ts";
import type { Policy } from "./security/policy.ts";
import type { UpstreamClient } from "./upstream/client.ts";

/** What the app is wired with in main.ts. */
export interface AppDeps {
  config: Config;
  clients: Map<string, UpstreamClient>;
  cache: Cache;
  metrics: MirrorMetrics;
  policy: Policy;
  limits: Limits;
  /** Client authentication; undefined when off. */
  auth?: ClientAuth;
  /** Every request comes from the operator (prefetch in this process): nothing is refused as private. */
  operator?: boolean;
  /** Clock, ms since the epoch (default Date.now). */
  now?: () => number;
}

/** Deno.serve's per-request info; `completed` settles when the response is fully sent. */
export interface ServeInfo {
  completed?: Promise<void>;
  remoteAddr?: Deno.Addr;
}

/** Probes answer without credentials: Kubernetes and load balancers cannot send any. */
const PUBLIC_ENDPOINTS = new Set(["healthz", "readyz"]);
/** How long a repository found private upstream is not asked again. */
const PRIVATE_VERDICT_TTL_MS = 60_000;
/** Private verdicts kept (names are the clients' choice): ~2 MB; a miss costs one upstream ask. */
const MAX_PRIVATE_VERDICTS = 10_000;

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
  // ttlResolution 0: read the clock on every check (and start no timer).
  const privateUntil = new LRUCache<string, number>({
    max: MAX_PRIVATE_VERDICTS,
    ttl: PRIVATE_VERDICT_TTL_MS,
    perf: { now: deps.now ?? Date.now },
    ttlResolution: 0,
  });
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
      const client = info?.remoteAddr?.transport === "tcp" ? info.remoteAddr.hostname : "local";
      const admitted = deps.limits.admit(request, client);
      if (admitted instanceof RegistryError) throw admitted;
      deferred.push(admitted);
      const decided = route(request, deps.config);
      if (decided instanceof RegistryError) throw decided;
      kind = decided.kind === "ops" ? decided.endpoint : decided.kind;
      describe(decided, record);
      // Who asks, then what for: all before any cache or upstream work.
      if (deps.auth && !PUBLIC_ENDPOINTS.has(kind)) {
        const who = await deps.auth.authenticate(request);
        if (who instanceof RegistryError) throw who;
        record.user = who.user;
      }
      if (decided.kind !== "ops" && decided.kind !== "base") {
        const denied = deps.policy.check(decided.registry, decided.name);
        if (denied) throw denied;
        const credentials = deps.config.registries.get(decided.registry)?.password !== undefined;
        if (!deps.auth && !deps.operator && credentials) {
          await requirePublic(deps, ctx, decided.registry, decided.name, privateUntil);
        }
      }
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
      // Bodies streamed from a fill count what they sent; others say what they planned to send.
      record.bytes ??= length !== null ? Number(length) : record.upstreamBytes;
      count(deps.metrics, kind, record);
      logRequest(record, performance.now() - started, kind);
    };
    if (info?.completed) info.completed.then(done, done);
    else done();
    return response;
  };
}

/**
 * With the mirror's credentials and no client authentication, only what the upstream serves
 * anonymously is served: content of a private repository (from upstream or from the cache) would
 * otherwise reach any client. A public verdict is remembered on disk; a private one for a minute.
 */
async function requirePublic(
  deps: AppDeps,
  ctx: HandlerContext,
  registry: string,
  name: string,
  privateUntil: LRUCache<string, number>,
): Promise<void> {
  const { cache } = deps;
  if (await cache.hasLink(registry, name, PUBLIC_MARK)) return;
  const key = `${registry}/${name}`;
  let isPrivate = (privateUntil.get(key) ?? 0) > ctx.now();
  if (!isPrivate) {
    isPrivate = !(await deps.clients.get(registry)!.isPublic(name));
    if (isPrivate) privateUntil.set(key, ctx.now() + PRIVATE_VERDICT_TTL_MS);
    else await cache.addLink(registry, name, PUBLIC_MARK);
  }
  if (isPrivate) {
    throw new RegistryError(
      "UNAUTHORIZED",
      `${key} is private upstream: it is served only to authenticated clients ` +
        `(configure "auth" on the mirror)`,
    );
  }
}

/** The marker, among a repository's links, that it is readable anonymously upstream. */
const PUBLIC_MARK = "visibility:public";

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
