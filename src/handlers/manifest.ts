// GET/HEAD /v2/<name>/manifests/<reference>: by digest from the cache (immutable); by tag through a
// canonical tag record (resolved upstream with the full modern Accept list, never with a client's),
// trusted for the TTL, then revalidated with a HEAD, served stale if upstream fails. Each client
// then gets what its Accept takes: the record's manifest, or an index's linux/amd64 child.

import type { CacheStatus, Manifest } from "../cache/cache.ts";
import type { TagRecord } from "../cache/store.ts";
import { readLimited } from "../body.ts";
import { log } from "../log.ts";
import { digestOf } from "../oci/digest.ts";
import { RegistryError } from "../oci/errors.ts";
import { parseManifest, platformChild } from "../oci/manifest.ts";
import { accepts, manifestAccept, MODERN_MANIFEST_TYPES } from "../oci/media_types.ts";
import { isDigestReference, isValidDigest } from "../oci/names.ts";
import type { Route } from "../route.ts";
import { upstreamError } from "../upstream/errors.ts";
import { mayServe } from "./confirm.ts";
import {
  askUpstream,
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

/** What tags are resolved with upstream, whatever the client accepts. */
const CANONICAL_ACCEPT = MODERN_MANIFEST_TYPES.join(", ");

type ManifestRoute = Extract<Route, { kind: "manifest" }>;

/** What a response is built from: a manifest's bytes, or for a HEAD what a tag record says. */
type Served = { digest: string; mediaType: string; size: number; bytes?: Uint8Array<ArrayBuffer> };

/** Serves a manifest; upstream is asked only on a miss or when a tag's TTL has passed. */
export async function handleManifest(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  if (isDigestReference(route.reference)) {
    // By digest the client names the exact content: served whatever its Accept (as Distribution).
    const digest = route.reference;
    const cached = await cachedFor(route, request, ctx, digest);
    if (cached) return respond(route, ctx, served(cached), "HIT");
    return respond(route, ctx, served(await fetchByDigest(route, request, ctx, digest)), "MISS");
  }
  return await negotiate(route, request, ctx, await tagRecord(route, request, ctx));
}

/** A tag's record, how it was obtained, and its manifest when this lookup just fetched it. */
interface Resolved {
  record: TagRecord;
  status: CacheStatus;
  manifest?: Manifest;
}

/** The tag's canonical record and how it was obtained: fresh, revalidated, fetched or stale. */
async function tagRecord(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
): Promise<Resolved> {
  const { cache } = ctx;
  const tag = route.reference;
  const record = await cache.tag(route.registry, route.name, tag);
  if (!record) return { ...await resolveTag(route, request, ctx), status: "MISS" };
  if (ctx.now() - record.checkedAt < cache.tagTtlMs) return { record, status: "HIT" };
  const key = `${route.registry}/${route.name}:${tag}`;
  if (cache.stalePaused(key)) return { record, status: "STALE" };
  try {
    const current = await resolveTag(route, request, ctx, revalidation(ctx));
    cache.pauseStale(key, 0);
    return { ...current, status: current.record.digest === record.digest ? "HIT" : "MISS" };
  } catch (e) {
    if (!(e instanceof RegistryError) || (e.status < 500 && e.status !== 429)) {
      if (e instanceof RegistryError && e.status === 404) {
        await cache.dropTag(route.registry, route.name, tag);
      }
      throw e;
    }
    // Do not make every pull wait for a failing upstream: ask again after a pause.
    cache.pauseStale(key, Math.min(cache.tagTtlMs, STALE_PAUSE_MS));
    log.warn("serving stale {registry}/{repository}:{tag}: {error}", {
      registry: route.registry,
      repository: route.name,
      tag,
      error: e.message,
    });
    return { record, status: "STALE" };
  }
}

/**
 * Answers with what the client's Accept takes: the tag's manifest, else (for an index or manifest
 * list) its linux/amd64 child of a type the client takes, as Distribution does; else 404. A HEAD
 * is answered from the record or the index's descriptor when the bytes are not at hand, so that
 * it costs no upstream GET (Docker Hub counts those); STALE answers only with cached bytes.
 */
async function negotiate(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  { record, status, manifest }: Resolved,
): Promise<Response> {
  const accept = request.headers.get("accept");
  const head = route.method === "HEAD" && status !== "STALE";
  if (accepts(accept, record.mediaType)) {
    if (head) return respond(route, ctx, record, status);
    const [own, fetched] = await manifestOf(route, request, ctx, record.digest, status, manifest);
    return respond(route, ctx, served(own), fetched ? "MISS" : status);
  }
  const [index, fetchedIndex] = await manifestOf(
    route,
    request,
    ctx,
    record.digest,
    status,
    manifest,
  );
  const child = platformChild(index.parsed, (type) => accepts(accept, type));
  if (!child) {
    throw new RegistryError(
      "MANIFEST_UNKNOWN",
      `${route.registry}/${route.name}:${route.reference} is ${record.mediaType}, which the ` +
        `client's Accept does not take (${accept})`,
    );
  }
  const cachedChild = await cachedFor(route, request, ctx, child.digest);
  if (head && !cachedChild) {
    const described = { digest: child.digest, mediaType: child.mediaType!, size: child.size };
    return respond(route, ctx, described, fetchedIndex ? "MISS" : status);
  }
  const [own, fetchedChild] = cachedChild
    ? [cachedChild, false]
    : await manifestOf(route, request, ctx, child.digest, status);
  return respond(route, ctx, served(own), fetchedIndex || fetchedChild ? "MISS" : status);
}

/**
 * A manifest by digest: the one at hand, the cached one, or from upstream (true: it was fetched).
 * While serving stale, only a cached one.
 */
async function manifestOf(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  digest: string,
  status: CacheStatus,
  atHand?: Manifest,
): Promise<[Manifest, boolean]> {
  if (atHand?.digest === digest) return [atHand, false];
  const cached = await cachedFor(route, request, ctx, digest);
  if (cached) return [cached, false];
  if (status === "STALE") {
    throw new RegistryError("UNAVAILABLE", `upstream ${route.registry} is failing`, {
      status: 503,
    });
  }
  return [await fetchByDigest(route, request, ctx, digest), true];
}

/**
 * A cached manifest this repository may be served (see mayServe): a digest named by an index is
 * no proof either, since the index comes from the same upstream.
 */
async function cachedFor(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  digest: string,
): Promise<Manifest | undefined> {
  const cached = await ctx.cache.manifest(digest);
  if (!cached) return undefined;
  return await mayServe(ctx, request, { ...route, kind: "manifests", digest }) ? cached : undefined;
}

function served(manifest: Manifest): Served {
  return { ...manifest, size: manifest.bytes.byteLength };
}

function respond(
  route: ManifestRoute,
  ctx: HandlerContext,
  served: Served,
  status: CacheStatus,
): Response {
  const headers = cacheStatus(
    ctx,
    status,
    registryHeaders({
      "content-type": served.mediaType,
      "docker-content-digest": served.digest,
      "content-length": String(served.size),
      etag: `"${served.digest}"`,
    }),
  );
  const body = route.method === "HEAD" ? null : served.bytes ?? null;
  return new Response(body, { headers });
}

/**
 * Asks upstream what a tag points to, with the full modern Accept list. A GET without a record
 * fetches the manifest by tag at once (one request); otherwise a HEAD (free on Docker Hub) names
 * the digest, whose manifest is then taken from the cache or fetched. The record's media type is
 * the manifest's own. Concurrent lookups of one tag share one request.
 */
function resolveTag(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  patience?: { idleTimeoutMs: number; retries: number },
): Promise<{ record: TagRecord; manifest: Manifest }> {
  const tag = route.reference;
  const key = `${route.registry}/${route.name}:${tag}`;
  return ctx.cache.tagFlights.run(key, async () => {
    let manifest: Manifest | undefined;
    if (route.method === "GET" && patience === undefined) {
      manifest = await fetchManifest(route, request, ctx, tag);
    } else {
      const head = { method: "HEAD" as const, reference: tag, patience };
      const digest = await upstreamManifest(route, request, ctx, head, async (response) => {
        await response.body?.cancel();
        return response.headers.get("docker-content-digest");
      });
      // The tag's digest is taken from the cache only if this registry supplied those bytes.
      if (digest && isValidDigest(digest) && await ctx.cache.suppliedBy(route.registry, digest)) {
        manifest = await ctx.cache.manifest(digest);
        if (manifest) await ctx.cache.addLink(route.registry, route.name, digest);
      }
      manifest ??= digest && isValidDigest(digest)
        ? await fetchByDigest(route, request, ctx, digest)
        : await fetchManifest(route, request, ctx, tag);
    }
    const record = {
      digest: manifest.digest,
      mediaType: manifest.mediaType,
      size: manifest.bytes.byteLength,
      checkedAt: ctx.now(),
    };
    await ctx.cache.keepTag(route.registry, route.name, tag, record);
    return { record, manifest };
  });
}

/** A manifest by digest from upstream, once however many clients miss it at the same time. */
function fetchByDigest(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  digest: string,
): Promise<Manifest> {
  const key = `${route.registry}/${route.name}@${digest}`;
  return ctx.cache.manifestFlights.run(key, () => fetchManifest(route, request, ctx, digest));
}

/**
 * GETs a manifest upstream, verifies it against a requested digest, takes its media type from its
 * own bytes (refusing what is not a valid manifest), then caches and links it. A fallback's
 * manifest that fails these checks is refused, and the next fallback asked.
 */
async function fetchManifest(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  reference: string,
): Promise<Manifest> {
  const get = { method: "GET" as const, reference };
  const manifest = await upstreamManifest(
    route,
    request,
    ctx,
    get,
    (response) => verifiedManifest(route, reference, response),
  );
  await ctx.cache.keepManifest(route.registry, route.name, manifest);
  return manifest;
}

/** The manifest an upstream sent for `reference`, if it is one and matches a requested digest. */
async function verifiedManifest(
  route: ManifestRoute,
  reference: string,
  response: Response,
): Promise<Manifest> {
  const byDigest = isDigestReference(reference);
  const what = `${route.registry}/${route.name}${byDigest ? "@" : ":"}${reference}`;
  const bytes = await readLimited(response.body, MAX_MANIFEST_BYTES);
  if (!bytes) {
    throw new RegistryError(
      "MANIFEST_INVALID",
      `manifest ${what} is larger than ${MAX_MANIFEST_BYTES} bytes`,
      { status: 502 },
    );
  }
  const claimed = response.headers.get("docker-content-digest");
  const digest = digestOf(bytes, byDigest ? reference : claimed ?? "sha256:");
  if (byDigest && digest !== reference) {
    throw new RegistryError(
      "MANIFEST_INVALID",
      `upstream sent a manifest with digest ${digest} for ${what}`,
      { status: 502 },
    );
  }
  const parsed = parseManifest(bytes, what);
  if (parsed instanceof RegistryError) throw parsed;
  return { digest, mediaType: parsed.mediaType, bytes, parsed };
}

/**
 * Asks the registry's upstreams for a manifest and hands a 200 to `take`. By digest any fallback
 * may answer (the bytes are verified); a tag only the primary and fallbacks with `trustTags`.
 */
async function upstreamManifest<T>(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
  { method, reference, patience }: {
    method: "GET" | "HEAD";
    reference: string;
    patience?: { idleTimeoutMs: number; retries: number };
  },
  take: (response: Response) => Promise<T>,
): Promise<T> {
  const byDigest = isDigestReference(reference);
  // A tag is resolved the same for every client; by digest, the client's types are added.
  const accept = byDigest
    ? manifestAccept(`${CANONICAL_ACCEPT}, ${request.headers.get("accept") ?? ""}`)
    : CANONICAL_ACCEPT;
  return await askUpstream(ctx, route.registry, {
    ...patience,
    method,
    path: `/v2/${route.name}/manifests/${reference}`,
    headers: { ...forwardedHeaders(request), accept },
    scope: pullScope(route.name),
    trust: byDigest ? "digest" : "tag",
  }, async ({ response }) => {
    if (response.status !== 200) throw await upstreamError(response, route.registry, "manifest");
    return await take(response);
  });
}
