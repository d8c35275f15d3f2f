// The small pass-through endpoints: GET /v2/ (the ping), tags list and referrers.

import type { Route } from "../route.ts";
import { upstreamError } from "../upstream/errors.ts";
import { forwardedHeaders, type HandlerContext, pullScope, registryHeaders } from "./context.ts";

/** `GET /v2/`: the mirror answers itself; no upstream is asked. */
export function handleBase(request: Request): Response {
  const headers = registryHeaders({ "content-type": "application/json" });
  return new Response(request.method === "HEAD" ? null : "{}", { headers });
}

/** `GET /v2/<name>/tags/list`: passed through, with the pagination `Link` rewritten for the client. */
export async function handleTags(
  route: Extract<Route, { kind: "tags" }>,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  const query = new URLSearchParams();
  if (route.n !== undefined) query.set("n", String(route.n));
  if (route.last !== undefined) query.set("last", route.last);
  const response = await ctx.upstream(route.registry).request({
    method: request.method === "HEAD" ? "HEAD" : "GET",
    path: `/v2/${route.name}/tags/list`,
    query,
    headers: forwardedHeaders(request),
    scope: pullScope(route.name),
  }, ctx.record);
  ctx.record.upstreamStatus = response.status;
  if (response.status !== 200) throw await upstreamError(response, route.registry, "repository");
  const headers = passHeaders(response, ["content-type", "content-length"]);
  const link = response.headers.get("link");
  if (link) headers.set("link", rewriteLink(link, route.name, route.clientPath, route.ns));
  return new Response(response.body, { headers });
}

/** `GET /v2/<name>/referrers/<digest>`: passed through (a 404 tells clients to use tag schema). */
export async function handleReferrers(
  route: Extract<Route, { kind: "referrers" }>,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  const query = new URLSearchParams();
  if (route.artifactType) query.set("artifactType", route.artifactType);
  const response = await ctx.upstream(route.registry).request({
    method: request.method === "HEAD" ? "HEAD" : "GET",
    path: `/v2/${route.name}/referrers/${route.digest}`,
    query,
    headers: { ...forwardedHeaders(request), accept: "application/vnd.oci.image.index.v1+json" },
    scope: pullScope(route.name),
  }, ctx.record);
  ctx.record.upstreamStatus = response.status;
  if (response.status !== 200) throw await upstreamError(response, route.registry, "manifest");
  const headers = passHeaders(response, ["content-type", "content-length", "oci-filters-applied"]);
  return new Response(response.body, { headers });
}

function passHeaders(response: Response, names: string[]): Headers {
  const headers = registryHeaders({});
  for (const name of names) {
    const value = response.headers.get(name);
    if (value !== null) headers.set(name, value);
  }
  return headers;
}

/**
 * Rewrites an upstream `Link: </v2/<name>/tags/list?last=x&n=2>; rel="next"` to the path the
 * client used (`/v2/quay.io/<name>/...`, `/quay/v2/<name>/...`), keeping `ns` for containerd.
 */
export function rewriteLink(link: string, name: string, clientPath: string, ns?: string): string {
  return link.replace(/<([^>]*)>/, (_, target: string) => {
    const url = new URL(target, "http://upstream.invalid");
    const prefix = `/v2/${name}/`;
    const rest = url.pathname.startsWith(prefix) ? url.pathname.slice(prefix.length) : "tags/list";
    if (ns !== undefined) url.searchParams.set("ns", ns);
    return `<${clientPath}/${rest}${url.search}>`;
  });
}
