// GET/HEAD /v2/<name>/manifests/<reference>: by digest from the cache (immutable); by tag through
// a tag record trusted for the TTL, then revalidated with a HEAD, served stale if upstream fails.

import type { CacheStatus } from "../cache/cache.ts";
import type { StoredManifest, TagRecord } from "../cache/store.ts";
import { readLimited } from "../body.ts";
import { log } from "../log.ts";
import { digestOf } from "../oci/digest.ts";
import { RegistryError } from "../oci/errors.ts";
import { accepts, manifestAccept, OCI_MANIFEST } from "../oci/media_types.ts";
import { isDigestReference, isValidDigest } from "../oci/names.ts";
import type { Route } from "../route.ts";
import { upstreamError } from "../upstream/errors.ts";
import { confirmLink } from "./confirm.ts";
import {
  cacheStatus,
  forwardedHeaders,
  type HandlerContext,
  pullScope,
  registryHeaders,
} from "./context.ts";

/**
 * Revalidating a cached tag has a fallback (the cached manifest), so it waits less than a miss:
 * at most 5 s for an answer and one retry.
 */
function revalidation(ctx: HandlerContext) {
  const { idleTimeoutMs, retries } = ctx.config.upstream;
  return { idleTimeoutMs: Math.min(idleTimeoutMs, 5_000), retries: Math.min(retries, 1) };
}
/** After a failed revalidation, how long a tag is served stale without asking upstream. */
const STALE_PAUSE_MS = 30_000;

/** Largest manifest accepted from an upstream (containerd and Distribution use 4 MiB too). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

type ManifestRoute = Extract<Route, { kind: "manifest" }>;

/** Serves a manifest; upstream is asked only on a miss or when a tag's TTL has passed. */
export async function handleManifest(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  const accept = request.headers.get("accept");
  if (isDigestReference(route.reference)) {
    const digest = route.reference;
    const stored = await ctx.cache.store.getManifest(digest);
    if (stored && accepts(accept, stored.mediaType)) {
      await confirmLink(ctx, request, { ...route, kind: "manifests", digest });
      return respond(route, ctx, digest, stored, "HIT");
    }
    return respond(route, ctx, digest, await fetchByDigest(route, request, ctx, digest), "MISS");
  }

  const { store } = ctx.cache;
  const tag = route.reference;
  const record = await store.getTag(route.registry, route.name, tag);
  if (!record || !accepts(accept, record.mediaType)) {
    if (route.method === "HEAD") {
      return respond(route, ctx, ...await resolveTag(route, request, ctx), "MISS");
    }
    const fetched = await fetchManifest(route, request, ctx, tag);
    if (record === undefined || accepts(accept, fetched.mediaType)) {
      await putTag(route, ctx, fetched.digest, fetched);
    }
    return respond(route, ctx, fetched.digest, fetched, "MISS");
  }
  if (ctx.now() - record.checkedAt < ctx.cache.tagTtlMs) {
    return respond(route, ctx, record.digest, await manifestOf(route, request, ctx, record), "HIT");
  }
  const key = `${route.registry}/${route.name}:${tag}`;
  if ((ctx.cache.staleUntil.get(key) ?? 0) > ctx.now()) {
    return await serveStale(route, ctx, record);
  }
  let current: TagRecord;
  try {
    [, current] = await resolveTag(route, request, ctx, revalidation(ctx));
    ctx.cache.staleUntil.delete(key);
  } catch (e) {
    if (!(e instanceof RegistryError) || (e.status < 500 && e.status !== 429)) {
      if (e instanceof RegistryError && e.status === 404) {
        await store.deleteTag(route.registry, route.name, tag);
      }
      throw e;
    }
    // Do not make every pull wait for a failing upstream: ask again after a pause.
    ctx.cache.staleUntil.set(key, ctx.now() + Math.min(ctx.cache.tagTtlMs, STALE_PAUSE_MS));
    log.warn("serving stale {registry}/{repository}:{tag}: {error}", {
      registry: route.registry,
      repository: route.name,
      tag,
      error: e.message,
    });
    return await serveStale(route, ctx, record, e);
  }
  const status = current.digest === record.digest ? "HIT" : "MISS";
  return respond(
    route,
    ctx,
    current.digest,
    await manifestOf(route, request, ctx, current),
    status,
  );
}

/** A cached tag whose upstream failed: the record for a HEAD, the cached bytes for a GET. */
async function serveStale(
  route: ManifestRoute,
  ctx: HandlerContext,
  record: TagRecord,
  cause?: RegistryError,
): Promise<Response> {
  const stored = await ctx.cache.store.getManifest(record.digest);
  if (route.method === "GET" && !stored) {
    throw cause ??
      new RegistryError("UNAVAILABLE", `upstream ${route.registry} is failing`, { status: 503 });
  }
  return respond(route, ctx, record.digest, stored ?? record, "STALE");
}

/** What the response is built from: the manifest bytes, or a tag record for a HEAD. */
type Served = StoredManifest | TagRecord;

function respond(
  route: ManifestRoute,
  ctx: HandlerContext,
  digest: string,
  served: Served,
  status: CacheStatus,
): Response {
  const size = "bytes" in served ? served.bytes.byteLength : served.size;
  const headers = cacheStatus(
    ctx,
    status,
    registryHeaders({
      "content-type": served.mediaType,
      "docker-content-digest": digest,
      "content-length": String(size),
      etag: `"${digest}"`,
    }),
  );
  if (status !== "MISS") ctx.cache.eviction.touched("manifest", digest);
  const body = route.method === "HEAD" || !("bytes" in served) ? null : served.bytes;
  return new Response(body, { headers });
}

/** For a HEAD, the record is enough; a GET needs the bytes (cached, or fetched by digest). */
async function manifestOf(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  record: TagRecord,
): Promise<Served> {
  if (route.method === "HEAD") return record;
  const stored = await ctx.cache.store.getManifest(record.digest);
  return stored ?? await fetchByDigest(route, request, ctx, record.digest);
}

/**
 * Asks upstream what a tag points to with a HEAD (free on Docker Hub), falling back to a GET when
 * the upstream's HEAD lacks the digest. Concurrent lookups of one tag share one request.
 */
function resolveTag(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  patience?: { idleTimeoutMs: number; retries: number },
): Promise<[string, TagRecord]> {
  const key = `${route.registry}/${route.name}:${route.reference}`;
  return ctx.cache.tagFlights.run(key, async () => {
    const response = await upstreamManifest(route, request, ctx, "HEAD", route.reference, patience);
    const digest = response.headers.get("docker-content-digest");
    const type = response.headers.get("content-type");
    const length = response.headers.get("content-length");
    if (digest && isValidDigest(digest) && type && length) {
      return await putTag(route, ctx, digest, { mediaType: type, size: Number(length) });
    }
    const fetched = await fetchManifest(route, request, ctx, route.reference);
    return await putTag(route, ctx, fetched.digest, fetched);
  }).then((record) => [record.digest, record]);
}

async function putTag(
  route: ManifestRoute,
  ctx: HandlerContext,
  digest: string,
  what: { mediaType: string; size?: number; bytes?: Uint8Array },
): Promise<TagRecord> {
  const size = what.size ?? what.bytes?.byteLength ?? 0;
  const record = { digest, mediaType: what.mediaType, size, checkedAt: ctx.now() };
  await ctx.cache.store.putTag(route.registry, route.name, route.reference, record);
  return record;
}

/** A manifest by digest from upstream, once however many clients miss it at the same time. */
function fetchByDigest(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  digest: string,
): Promise<StoredManifest & { digest: string }> {
  const key = `${route.registry}/${route.name}@${digest}`;
  return ctx.cache.manifestFlights.run(key, () => fetchManifest(route, request, ctx, digest))
    .then((m) => ({ ...m, digest }));
}

/** GETs a manifest upstream, verifies it against a requested digest, stores and links it. */
async function fetchManifest(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  reference: string,
): Promise<StoredManifest & { digest: string }> {
  const byDigest = isDigestReference(reference);
  const response = await upstreamManifest(route, request, ctx, "GET", reference);
  const bytes = await readLimited(response.body, MAX_MANIFEST_BYTES);
  if (!bytes) {
    throw new RegistryError(
      "MANIFEST_INVALID",
      `${route.registry}: manifest ${route.name}:${reference} is larger than ${MAX_MANIFEST_BYTES} bytes`,
      { status: 502 },
    );
  }
  const digest = digestOf(bytes, byDigest ? reference : "sha256:");
  if (byDigest && digest !== reference) {
    throw new RegistryError(
      "MANIFEST_INVALID",
      `${route.registry}: upstream sent a manifest with digest ${digest} for ${reference}`,
      { status: 502 },
    );
  }
  const manifest = { mediaType: response.headers.get("content-type") ?? mediaTypeOf(bytes), bytes };
  await ctx.cache.store.putManifest(digest, manifest);
  ctx.cache.eviction.added("manifest", digest, bytes.byteLength);
  await ctx.cache.store.addLink(route.registry, route.name, digest);
  return { ...manifest, digest };
}

async function upstreamManifest(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  method: "GET" | "HEAD",
  reference: string,
  patience?: { idleTimeoutMs: number; retries: number },
): Promise<Response> {
  const response = await ctx.upstream(route.registry).request({
    ...patience,
    method,
    path: `/v2/${route.name}/manifests/${reference}`,
    headers: {
      ...forwardedHeaders(request),
      accept: manifestAccept(request.headers.get("accept")),
    },
    scope: pullScope(route.name),
  }, ctx.record);
  ctx.record.upstreamStatus = response.status;
  if (response.status !== 200) throw await upstreamError(response, route.registry, "manifest");
  return response;
}

/** The `mediaType` field of a manifest, or OCI's image manifest when it has none. */
function mediaTypeOf(bytes: Uint8Array): string {
  try {
    const mediaType = JSON.parse(new TextDecoder().decode(bytes))?.mediaType;
    return typeof mediaType === "string" ? mediaType : OCI_MANIFEST;
  } catch {
    return OCI_MANIFEST;
  }
}
