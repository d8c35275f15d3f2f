// The request handler given to Deno.serve: route, dispatch to a handler, map errors, log one line.

import { LRUCache } from "lru-cache";
import type { Cache } from "./cache/cache.ts";
import type { Cluster } from "./cluster/cluster.ts";
import type { Config } from "./config.ts";
import { handleBlob } from "./handlers/blob.ts";
import type { HandlerContext } from "./handlers/context.ts";
import { handleBase, handleReferrers, handleTags } from "./handlers/listing.ts";
import { handleManifest } from "./handlers/manifest.ts";
import { handleOps } from "./handlers/ops.ts";
import { handlePeer } from "./handlers/peer.ts";
import { log, type RequestRecord } from "./log.ts";
import type { MirrorMetrics } from "./metrics.ts";
import { isDigestReference } from "./oci/names.ts";
import { RegistryError } from "./oci/errors.ts";
import { type Route, route } from "./route.ts";
import type { ClientAuth } from "./security/client_auth.ts";
import type { Limits } from "./security/limits.ts";
import type { Policy } from "./security/policy.ts";
import { type Upstreams, withCredentials } from "./upstream/upstreams.ts";

/** What the app is wired with in main.ts. */
export interface AppDeps {
  config: Config;
  /** Each registry's upstreams: its primary and fallbacks. */
  clients: Map<string, Upstreams>;
  cache: Cache;
  /** Replicas sharing the bucket; undefined when alone. */
  cluster?: Cluster;
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

/** Answered beyond the rate and concurrency limits: what orchestrators and monitoring ask. */
const PROBES = new Set(["healthz", "readyz", "metrics"]);
/** Probes answer without credentials: Kubernetes and load balancers cannot send any. */
const PUBLIC_ENDPOINTS = new Set(["healthz", "readyz"]);
/**
 * How long a repository found private upstream is not asked again; also how long a public verdict
 * stands after upstream could not be asked.
 */
const PRIVATE_VERDICT_TTL_MS = 60_000;
/** Verdicts kept (names are the clients' choice): ~2 MB; a dropped one costs one upstream ask. */
const MAX_VERDICTS = 10_000;

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
  // Expiry is read from each verdict against the injected clock, so the cache needs no TTL.
  const verdicts = new LRUCache<string, Verdict>({ max: MAX_VERDICTS });
  return async (request, info) => {
    const started = performance.now();
    const url = URL.parse(request.url) ?? new URL("http://invalid/");
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
      cluster: deps.cluster,
      now: deps.now ?? Date.now,
      record,
      defer: (fn) => deferred.push(fn),
    };
    let response: Response;
    let kind = "unknown";
    try {
      const client = info?.remoteAddr?.transport === "tcp" ? info.remoteAddr.hostname : "local";
      const oversized = deps.limits.check(request);
      if (oversized) throw oversized;
      const decided = route(request, deps.config);
      // Probes and scrapes answer whatever the load: a busy pod must not be restarted as dead.
      // Replicas (authenticated by the router) stream fills that clients elsewhere wait for.
      if (decided instanceof RegistryError || !(isProbe(decided) || decided.kind === "peer")) {
        const admitted = deps.limits.admit(client);
        if (admitted instanceof RegistryError) throw admitted;
        deferred.push(admitted);
      }
      if (decided instanceof RegistryError) throw decided;
      kind = decided.kind === "ops" ? decided.endpoint : decided.kind;
      describe(decided, record);
      // Who asks, then what for: all before any cache or upstream work.
      if (deps.auth && !PUBLIC_ENDPOINTS.has(kind) && kind !== "peer") {
        const who = await deps.auth.authenticate(request, client);
        if (who instanceof RegistryError) throw who;
        record.user = who.user;
      }
      if (decided.kind !== "ops" && decided.kind !== "base" && decided.kind !== "peer") {
        const denied = deps.policy.check(decided.registry, decided.name);
        if (denied) throw denied;
        const registry = deps.config.registries.get(decided.registry);
        if (!deps.auth && !deps.operator && registry && withCredentials(registry)) {
          await requirePublic(deps, ctx, decided.registry, decided.name, verdicts);
        }
      }
      response = decided.kind === "ops"
        ? await handleOps(decided.endpoint, ops)
        : await dispatch(decided, request, ctx);
    } catch (e) {
      response = errorResponse(e, request.method, record);
    }
    originHeaders(response);
    record.status = response.status;
    const length = response.headers.get("content-length");
    const done = () => {
      for (const fn of deferred) fn();
      // Bodies streamed from a fill count what they sent; others say what they planned to send.
      record.bytes ??= length !== null ? Number(length) : record.upstreamBytes;
      count(deps.metrics, { kind, record, seconds: (performance.now() - started) / 1000 });
      logRequest(record, performance.now() - started, kind);
    };
    if (info?.completed) info.completed.then(done, done);
    else done();
    return response;
  };
}

/** What the upstream last said of a repository's visibility, and until when it stands. */
interface Verdict {
  public: boolean;
  until: number;
}

function isProbe(r: Route): boolean {
  return r.kind === "ops" && PROBES.has(r.endpoint);
}

/**
 * With the mirror's credentials and no client authentication, only what the upstream serves
 * anonymously is served: content of a private repository (from upstream or from the cache) would
 * otherwise reach any client. A public verdict stands for the tag TTL, a private one for a minute;
 * then upstream is asked again, so a repository turned private is refused. When upstream cannot
 * answer (5xx, unreachable), a public verdict stands another minute, as a stale tag is served.
 */
async function requirePublic(
  deps: AppDeps,
  ctx: HandlerContext,
  registry: string,
  name: string,
  verdicts: LRUCache<string, Verdict>,
): Promise<void> {
  const key = `${registry}/${name}`;
  const now = ctx.now();
  let verdict = verdicts.get(key);
  if (verdict === undefined || now >= verdict.until) {
    try {
      const isPublic = await deps.clients.get(registry)!.isPublic(name);
      const ttl = isPublic ? deps.config.cache.tagTtlMs : PRIVATE_VERDICT_TTL_MS;
      verdict = { public: isPublic, until: now + ttl };
    } catch (e) {
      if (!verdict?.public || !(e instanceof RegistryError) || e.status < 500) throw e;
      verdict = { public: true, until: now + PRIVATE_VERDICT_TTL_MS };
    }
    verdicts.set(key, verdict);
  }
  if (!verdict.public) {
    throw new RegistryError(
      "UNAUTHORIZED",
      `${key} is private upstream: it is served only to authenticated clients ` +
        `(configure "auth" on the mirror)`,
    );
  }
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
    case "peer":
      return handlePeer(r, request, ctx);
    default:
      return handleBase(request);
  }
}

function describe(r: Route, record: RequestRecord): void {
  if (r.kind === "base" || r.kind === "ops") return;
  record.registry = r.registry;
  if (r.kind === "peer") {
    record.reference = r.digest;
    return;
  }
  record.repository = r.name;
  if (r.kind === "manifest") record.reference = r.reference;
  if (r.kind === "blob" || r.kind === "referrers") record.reference = r.digest;
}

/** Request, duration, cache and pull counters, once the response has been sent. */
function count(
  metrics: MirrorMetrics,
  { kind, record, seconds }: { kind: string; record: RequestRecord; seconds: number },
): void {
  metrics.requests.inc({ kind, status: String(record.status) });
  const statusClass = `${Math.floor((record.status ?? 0) / 100)}xx`;
  metrics.requestDuration.observe({ kind, status_class: statusClass }, seconds);
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

/**
 * Headers every response from the mirror's origin carries, whatever produced it (errors too): no
 * browser may sniff a type, e.g. render upstream bytes as HTML beside the dashboard's credentials.
 */
function originHeaders(response: Response): void {
  response.headers.set("x-content-type-options", "nosniff");
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
