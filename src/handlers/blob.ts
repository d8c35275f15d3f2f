// GET/HEAD /v2/<name>/blobs/<digest>: stream from upstream (redirects followed), Range passed through.

import type { Route } from "../route.ts";
import { upstreamError } from "../upstream/errors.ts";
import { forwardedHeaders, type HandlerContext, pullScope, registryHeaders } from "./context.ts";

type BlobRoute = Extract<Route, { kind: "blob" }>;

/** One byte range, the only form registries and their clients use. */
const SINGLE_RANGE = /^bytes=\d+-\d*$/;

/** Streams a blob from upstream without holding it: the body moves chunk by chunk. */
export async function handleBlob(
  route: BlobRoute,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  const headers = forwardedHeaders(request);
  const range = request.headers.get("range")?.replace(/\s/g, "");
  if (range && SINGLE_RANGE.test(range)) headers.range = range;
  const response = await ctx.upstream(route.registry).request({
    method: route.method,
    path: `/v2/${route.name}/blobs/${route.digest}`,
    headers,
    scope: pullScope(route.name),
  }, ctx.record);
  ctx.record.upstreamStatus = response.status;
  if (response.status !== 200 && response.status !== 206) {
    throw await upstreamError(response, route.registry, "blob");
  }
  const out = registryHeaders({
    "content-type": "application/octet-stream",
    "docker-content-digest": route.digest,
    "accept-ranges": "bytes",
    etag: `"${route.digest}"`,
  });
  // Deno's fetch decompresses a compressed body, so its Content-Length no longer applies.
  const length = response.headers.get("content-length");
  if (length && !response.headers.has("content-encoding")) out.set("content-length", length);
  const contentRange = response.headers.get("content-range");
  if (contentRange) out.set("content-range", contentRange);
  return new Response(response.body, { status: response.status, headers: out });
}
