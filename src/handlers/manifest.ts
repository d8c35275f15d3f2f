// GET/HEAD /v2/<name>/manifests/<reference>: fetch upstream, verify the digest, return bytes unchanged.

import { readLimited } from "../body.ts";
import { digestOf } from "../oci/digest.ts";
import { RegistryError } from "../oci/errors.ts";
import { manifestAccept, OCI_MANIFEST } from "../oci/media_types.ts";
import { isDigestReference, isValidDigest } from "../oci/names.ts";
import type { Route } from "../route.ts";
import { upstreamError } from "../upstream/errors.ts";
import { forwardedHeaders, type HandlerContext, pullScope, registryHeaders } from "./context.ts";

/** Largest manifest accepted from an upstream (containerd and Distribution use 4 MiB too). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

type ManifestRoute = Extract<Route, { kind: "manifest" }>;

/** Serves a manifest from upstream; a HEAD by tag stays a HEAD upstream (free on Docker Hub). */
export async function handleManifest(
  route: ManifestRoute,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  const byDigest = isDigestReference(route.reference);
  const upstream = ctx.upstream(route.registry);
  const fetchManifest = (method: "GET" | "HEAD") =>
    upstream.request({
      method,
      path: `/v2/${route.name}/manifests/${route.reference}`,
      headers: {
        ...forwardedHeaders(request),
        accept: manifestAccept(request.headers.get("accept")),
      },
      scope: pullScope(route.name),
    }, ctx.record);

  let response = await fetchManifest(route.method);
  ctx.record.upstreamStatus = response.status;
  if (response.status !== 200) throw await upstreamError(response, route.registry, "manifest");

  if (route.method === "HEAD") {
    const digest = byDigest ? route.reference : response.headers.get("docker-content-digest");
    const length = response.headers.get("content-length");
    const type = response.headers.get("content-type");
    if (digest && isValidDigest(digest) && length && type) {
      return new Response(null, { headers: manifestHeaders(type, digest, length) });
    }
    // The upstream's HEAD lacks what a client needs: compute it from the manifest itself.
    response = await fetchManifest("GET");
    ctx.record.upstreamStatus = response.status;
    if (response.status !== 200) throw await upstreamError(response, route.registry, "manifest");
  }

  const bytes = await readLimited(response.body, MAX_MANIFEST_BYTES);
  if (!bytes) {
    throw new RegistryError(
      "MANIFEST_INVALID",
      `${route.registry}: manifest ${route.name}:${route.reference} is larger than ${MAX_MANIFEST_BYTES} bytes`,
      { status: 502 },
    );
  }
  const digest = digestOf(bytes, byDigest ? route.reference : "sha256:");
  if (byDigest && digest !== route.reference) {
    throw new RegistryError(
      "MANIFEST_INVALID",
      `${route.registry}: upstream sent a manifest with digest ${digest} for ${route.reference}`,
      { status: 502 },
    );
  }
  const type = response.headers.get("content-type") ?? mediaTypeOf(bytes);
  const headers = manifestHeaders(type, digest, String(bytes.byteLength));
  return new Response(route.method === "HEAD" ? null : bytes, { headers });
}

function manifestHeaders(type: string, digest: string, length: string): Headers {
  return registryHeaders({
    "content-type": type,
    "docker-content-digest": digest,
    "content-length": length,
    etag: `"${digest}"`,
  });
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
