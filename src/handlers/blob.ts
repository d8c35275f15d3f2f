// GET/HEAD /v2/<name>/blobs/<digest>: from the cache, or from the one upstream fill of that digest.

import type { CachedBlob } from "../cache/cache.ts";
import type { Fill } from "../cache/fill.ts";
import { S3Store } from "../cache/s3_store.ts";
import { log } from "../log.ts";
import { RegistryError } from "../oci/errors.ts";
import type { Route } from "../route.ts";
import { upstreamError } from "../upstream/errors.ts";
import { confirmLink, mayServe } from "./confirm.ts";
import {
  askUpstream,
  cacheStatus,
  forwardedHeaders,
  type HandlerContext,
  pullScope,
  registryHeaders,
} from "./context.ts";
import { type ByteRange, parseRange } from "./range.ts";

type BlobRoute = Extract<Route, { kind: "blob" }>;

/** The upstreams a fill read from (a resume may go elsewhere), for its clients and its verdict. */
interface FillSources {
  vias: Set<string>;
  fallback: boolean;
}

/** Fills started here -> where their bytes came from (for X-Cache-Via of clients that join). */
const fillSources = new WeakMap<Promise<Fill>, FillSources>();

/**
 * A cached blob is served from disk (Range, HEAD) without upstream contact. A miss joins the fill
 * of that digest, or starts it: clients get bytes as they arrive, each at its own pace.
 */
export async function handleBlob(
  route: BlobRoute,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  const { cache } = ctx;
  const link = { ...route, kind: "blobs" as const };
  if (!cache.fills.get(route.registry, route.digest)) {
    // Pinned and opened before the upstream is asked anything: eviction cannot take it meanwhile.
    const stored = await openCached(route, ctx);
    if (stored) {
      let servable = false;
      try {
        servable = await mayServe(ctx, request, link);
        if (servable) return await serveStored(route, request, ctx, stored);
      } finally {
        if (!servable) {
          stored.close();
          stored.release();
        }
      }
    }
  }
  if (route.method === "HEAD") {
    return await headUpstream(route, request, ctx);
  }
  const origin = { registry: route.registry, repository: route.name };
  const sources: FillSources = { vias: new Set(), fallback: false };
  const upstream = (offset: number) => openUpstream(route, request, ctx, offset, sources);
  // With replicas, the fill reads from the replica filling the blob, or the bucket, or upstream.
  const source = ctx.cluster?.fill({ ...origin, digest: route.digest }, {
    upstream,
    stored: (offset) => openStoredSource(route, request, ctx, offset),
    confirm: () => confirmLink(ctx, request, link),
  });
  const { fill: pending, joined } = cache.fill(route.digest, origin, source?.open ?? upstream);
  if (!joined) {
    fillSources.set(pending, sources);
    if (source) pending.then((fill) => source.watch(fill), () => source.abandon());
  }
  const fill = await pending;
  // A fill of this registry started for another repository: its upstream must confirm this one.
  if (fill.origin.repository !== route.name) await confirmLink(ctx, request, link);
  const from = fillSources.get(pending);
  if (joined && from) ctx.record.via ??= [...from.vias].at(-1);
  return serveFill(fill, request, ctx, joined ? undefined : sources);
}

/**
 * The cached blob, pinned and opened; undefined when not cached, or when the store cannot be read
 * (the bucket down): the blob is then fetched upstream like a miss.
 */
async function openCached(route: BlobRoute, ctx: HandlerContext): Promise<CachedBlob | undefined> {
  try {
    return await ctx.cache.openBlob(route.digest);
  } catch (e) {
    log.warn("cannot read {digest} from the cache, fetching it upstream: {error}", {
      digest: route.digest,
      error: String((e as Error)?.message ?? e),
    });
    return undefined;
  }
}

/**
 * A stored blob from `offset` as a fill's source (another replica committed it meanwhile), when
 * this repository may be served it; undefined otherwise.
 */
async function openStoredSource(
  route: BlobRoute,
  request: Request,
  ctx: HandlerContext,
  offset: number,
): Promise<Response | undefined> {
  const blob = await ctx.cache.store.openBlob(route.digest);
  if (!blob) return undefined;
  let servable = false;
  try {
    servable = offset < blob.size && await mayServe(ctx, request, { ...route, kind: "blobs" });
  } finally {
    if (!servable) blob.close();
  }
  if (!servable) return undefined;
  const headers = new Headers({ "content-length": String(blob.size - offset) });
  if (offset > 0) headers.set("content-range", `bytes ${offset}-${blob.size - 1}/${blob.size}`);
  return new Response(await blob.stream(offset), { status: offset > 0 ? 206 : 200, headers });
}

async function serveStored(
  route: BlobRoute,
  request: Request,
  ctx: HandlerContext,
  blob: CachedBlob,
): Promise<Response> {
  const { store } = ctx.cache;
  if (route.method === "GET" && ctx.config.cache.s3?.redirect && store instanceof S3Store) {
    // The client fetches the bytes from the bucket itself, with a URL that expires soon.
    blob.close();
    blob.release();
    const headers = cacheStatus(
      ctx,
      "HIT",
      registryHeaders({
        location: await store.presignBlob(route.digest),
        "docker-content-digest": route.digest,
        "content-length": "0",
        "cache-control": "no-store",
      }),
    );
    return new Response(null, { status: 307, headers });
  }
  ctx.defer(blob.release);
  const range = parseRange(request.headers.get("range"), blob.size);
  if (range === "unsatisfiable" || route.method === "HEAD") blob.close();
  if (range === "unsatisfiable") throw unsatisfiable(blob.size);
  const headers = cacheStatus(ctx, "HIT", blobHeaders(route.digest, blob.size, range));
  if (route.method === "HEAD") return new Response(null, { headers });
  const body = await blob.stream(range?.start, range?.end);
  return new Response(body, { status: range ? 206 : 200, headers });
}

/**
 * Serves a fill as it grows. The client that started it reports a fill that failed its digest
 * check: a fallback that sent those bytes is put in cool-down, so the client's retry goes to the
 * next one.
 */
function serveFill(
  fill: Fill,
  request: Request,
  ctx: HandlerContext,
  started?: FillSources,
): Response {
  // Without a known size a range cannot be placed yet: the whole blob is sent.
  const range = fill.size === undefined
    ? undefined
    : parseRange(request.headers.get("range"), fill.size);
  if (range === "unsatisfiable") throw unsatisfiable(fill.size!);
  const headers = cacheStatus(ctx, "MISS", blobHeaders(fill.digest, fill.size, range));
  const body = ctx.cache.follow(fill, range?.start ?? 0, range?.end, (sent, complete) => {
    ctx.record.bytes = sent;
    if (!complete) ctx.record.error ??= "the body was not sent whole (client gone or fill failed)";
    const error = fill.error;
    if (started?.fallback && error instanceof RegistryError && error.code === "DIGEST_INVALID") {
      const upstreams = ctx.upstream(fill.origin.registry);
      for (const via of started.vias) upstreams.distrust(via, error.message);
    }
  });
  return new Response(body, { status: range ? 206 : 200, headers });
}

/**
 * The upstream blob from `offset` (a Range request when resuming), with auth and redirects: from
 * the primary, or when it fails from a fallback (the fill verifies the digest before caching).
 */
async function openUpstream(
  route: BlobRoute,
  request: Request,
  ctx: HandlerContext,
  offset: number,
  sources: FillSources,
): Promise<Response> {
  const headers = forwardedHeaders(request);
  if (offset > 0) headers.range = `bytes=${offset}-`;
  const req = {
    method: "GET" as const,
    path: `/v2/${route.name}/blobs/${route.digest}`,
    headers,
    scope: pullScope(route.name),
    trust: "digest" as const,
  };
  const progress = { upstreamBytes: 0, retries: 0 };
  const { response, via, fallback } = offset === 0
    ? await askUpstream(ctx, route.registry, req, async (answer) => {
      if (answer.response.status !== 200) {
        throw await upstreamError(answer.response, route.registry, "blob");
      }
      return answer;
    }, progress)
    : await ctx.upstream(route.registry).request(req, progress);
  sources.vias.add(via);
  sources.fallback ||= fallback;
  return response;
}

/**
 * HEAD of a blob not cached: asked upstream, nothing fetched. A fallback's HEAD only says that
 * a blob exists and its size; the bytes a client then GETs are verified.
 */
async function headUpstream(
  route: BlobRoute,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  const length = await askUpstream(ctx, route.registry, {
    method: "HEAD",
    path: `/v2/${route.name}/blobs/${route.digest}`,
    headers: forwardedHeaders(request),
    scope: pullScope(route.name),
    trust: "digest",
  }, async ({ response }) => {
    if (response.status !== 200) throw await upstreamError(response, route.registry, "blob");
    await response.body?.cancel();
    return response.headers.get("content-length");
  });
  const headers = blobHeaders(route.digest, length === null ? undefined : Number(length));
  return new Response(null, { headers: cacheStatus(ctx, "MISS", headers) });
}

function blobHeaders(digest: string, size: number | undefined, range?: ByteRange): Headers {
  const headers = registryHeaders({
    "content-type": "application/octet-stream",
    "docker-content-digest": digest,
    "accept-ranges": "bytes",
    etag: `"${digest}"`,
  });
  if (range) {
    headers.set("content-range", `bytes ${range.start}-${range.end - 1}/${size}`);
    headers.set("content-length", String(range.end - range.start));
  } else if (size !== undefined) {
    headers.set("content-length", String(size));
  }
  return headers;
}

function unsatisfiable(size: number): RegistryError {
  return new RegistryError("RANGE_INVALID", `range not satisfiable for a blob of ${size} bytes`, {
    headers: { "content-range": `bytes */${size}` },
  });
}
