// Serving cached content to a repository only once the upstream confirmed that repository has it.

import { manifestAccept } from "../oci/media_types.ts";
import { upstreamError } from "../upstream/errors.ts";
import { forwardedHeaders, type HandlerContext, pullScope } from "./context.ts";

/**
 * True when `digest` may be served from the cache to `name` of `registry`: it was fetched through
 * that repository before, or a HEAD upstream confirms it now (then remembered). Content cached
 * through one repository never leaks to another that does not hold it.
 */
export async function confirmLink(
  ctx: HandlerContext,
  request: Request,
  target: { registry: string; name: string; kind: "blobs" | "manifests"; digest: string },
): Promise<void> {
  const { registry, name, kind, digest } = target;
  if (await ctx.cache.hasLink(registry, name, digest)) return;
  const response = await ctx.upstream(registry).request({
    method: "HEAD",
    path: `/v2/${name}/${kind}/${digest}`,
    headers: {
      ...forwardedHeaders(request),
      ...(kind === "manifests" ? { accept: manifestAccept(null) } : {}),
    },
    scope: pullScope(name),
  }, ctx.record);
  ctx.record.upstreamStatus = response.status;
  await response.body?.cancel();
  if (response.status !== 200) {
    throw await upstreamError(response, registry, kind === "blobs" ? "blob" : "manifest");
  }
  await ctx.cache.addLink(registry, name, digest);
}
