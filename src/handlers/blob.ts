// GET/HEAD /v2/<name>/blobs/<digest>: from the cache, or from the one upstream fill of that digest.

import type { CachedBlob } from "../cache/cache.ts";
import type { Fill } from "../cache/fill.ts";
import { RegistryError } from "../oci/errors.ts";
import type { Route } from "../route.ts";
import { upstreamError } from "../upstream/errors.ts";
import { confirmLink, mayServe } from "./confirm.ts";
import {
  cacheStatus,
  forwardedHeaders,
  type HandlerContext,
  pullScope,
  registryHeaders,
} from "./context.ts";
import { type ByteRange, parseRange } from "./range.ts";

type BlobRoute = Extract<Route, { kind: "blob" }>;

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
    const stored = await cache.openBlob(route.digest);
    if (stored) {
      let servable = false;
      try {
        servable = await mayServe(ctx, request, link);
        if (servable) return serveStored(route, request, ctx, stored);
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
  const { fill: pending } = cache.fill(
    route.digest,
    origin,
    (offset) => openUpstream(route, request, ctx, offset),
  );
  const fill = await pending;
  // A fill of this registry started for another repository: its upstream must confirm this one.
  if (fill.origin.repository !== route.name) await confirmLink(ctx, request, link);
  return serveFill(fill, request, ctx);
}

function serveStored(
  route: BlobRoute,
  request: Request,
  ctx: HandlerContext,
  blob: CachedBlob,
): Response {
  ctx.defer(blob.release);
  const range = parseRange(request.headers.get("range"), blob.size);
  if (range === "unsatisfiable" || route.method === "HEAD") blob.close();
  if (range === "unsatisfiable") throw unsatisfiable(blob.size);
  const headers = cacheStatus(ctx, "HIT", blobHeaders(route.digest, blob.size, range));
  if (route.method === "HEAD") return new Response(null, { headers });
  const body = blob.stream(range?.start, range?.end);
  return new Response(body, { status: range ? 206 : 200, headers });
}

function serveFill(fill: Fill, request: Request, ctx: HandlerContext): Response {
  // Without a known size a range cannot be placed yet: the whole blob is sent.
  const range = fill.size === undefined
    ? undefined
    : parseRange(request.headers.get("range"), fill.size);
  if (range === "unsatisfiable") throw unsatisfiable(fill.size!);
  const headers = cacheStatus(ctx, "MISS", blobHeaders(fill.digest, fill.size, range));
  const body = ctx.cache.follow(fill, range?.start ?? 0, range?.end, (sent, complete) => {
    ctx.record.bytes = sent;
    if (!complete) ctx.record.error ??= "the body was not sent whole (client gone or fill failed)";
  });
  return new Response(body, { status: range ? 206 : 200, headers });
}

/** The upstream blob from `offset` (a Range request when resuming), with auth and redirects. */
async function openUpstream(
  route: BlobRoute,
  request: Request,
  ctx: HandlerContext,
  offset: number,
): Promise<Response> {
  const headers = forwardedHeaders(request);
  if (offset > 0) headers.range = `bytes=${offset}-`;
  const response = await ctx.upstream(route.registry).request({
    method: "GET",
    path: `/v2/${route.name}/blobs/${route.digest}`,
    headers,
    scope: pullScope(route.name),
  }, { upstreamBytes: 0, retries: 0 });
  if (offset === 0) {
    ctx.record.upstreamStatus = response.status;
    if (response.status !== 200) throw await upstreamError(response, route.registry, "blob");
  }
  return response;
}

/** HEAD of a blob not cached: asked upstream, nothing fetched. */
async function headUpstream(
  route: BlobRoute,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  const response = await ctx.upstream(route.registry).request({
    method: "HEAD",
    path: `/v2/${route.name}/blobs/${route.digest}`,
    headers: forwardedHeaders(request),
    scope: pullScope(route.name),
  }, ctx.record);
  ctx.record.upstreamStatus = response.status;
  if (response.status !== 200) throw await upstreamError(response, route.registry, "blob");
  const length = response.headers.get("content-length");
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
