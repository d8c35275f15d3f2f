// Who may be served cached content: a repository its registry's upstream confirmed holds it, and
// never another registry on that registry's word alone (see the README's trust model).

import { RegistryError } from "../oci/errors.ts";
import { manifestAccept } from "../oci/media_types.ts";
import { upstreamError } from "../upstream/errors.ts";
import { askUpstream, forwardedHeaders, type HandlerContext, pullScope } from "./context.ts";

type Target = { registry: string; name: string; kind: "blobs" | "manifests"; digest: string };

/**
 * True when cached `digest` may be served to `name` of `registry`: it was fetched through that
 * repository before, or the registry's upstream itself sent these bytes before and now confirms
 * (HEAD) that `name` holds them. False when only other registries supplied them: the caller then
 * fetches the bytes from this registry, since a HEAD proves nothing about possession of content
 * another upstream (perhaps with credentials) sent. False too when, during an outage of a
 * registry with fallbacks, no upstream trusted with such claims can confirm: the bytes are then
 * fetched from a fallback and verified. Throws the upstream's refusal.
 */
export async function mayServe(
  ctx: HandlerContext,
  request: Request,
  target: Target,
): Promise<boolean> {
  const { registry, name, digest } = target;
  if (await ctx.cache.hasLink(registry, name, digest)) return true;
  if (!(await ctx.cache.suppliedBy(registry, digest))) return false;
  try {
    await confirmLink(ctx, request, target);
  } catch (e) {
    const outage = e instanceof RegistryError && (e.status >= 500 || e.status === 429);
    if (outage && ctx.upstream(registry).hasFallbacks) return false;
    throw e;
  }
  return true;
}

/**
 * Asks the registry's upstream (HEAD) whether `name` holds `digest`, and remembers a yes. Content
 * of one repository never reaches another that does not hold it; throws the upstream's refusal.
 * A HEAD proves nothing it could verify: only the primary and fallbacks with `trustTags` are asked.
 */
export async function confirmLink(
  ctx: HandlerContext,
  request: Request,
  target: Target,
): Promise<void> {
  const { registry, name, kind, digest } = target;
  if (await ctx.cache.hasLink(registry, name, digest)) return;
  await askUpstream(ctx, registry, {
    method: "HEAD",
    path: `/v2/${name}/${kind}/${digest}`,
    headers: {
      ...forwardedHeaders(request),
      ...(kind === "manifests" ? { accept: manifestAccept(null) } : {}),
    },
    scope: pullScope(name),
    trust: "tag",
  }, async ({ response }) => {
    if (response.status !== 200) {
      throw await upstreamError(response, registry, kind === "blobs" ? "blob" : "manifest");
    }
    await response.body?.cancel();
  });
  await ctx.cache.addLink(registry, name, digest);
}
