// GET /_cluster/fills/<registry>/<digest> (a replica, with the cluster secret): this replica's fill
// of that blob as it grows, from a Range start, so the other replicas need not go upstream.

import { FILL_HEADER, REPOSITORY_HEADER } from "../cluster/peer.ts";
import { RegistryError } from "../oci/errors.ts";
import type { Route } from "../route.ts";
import type { HandlerContext } from "./context.ts";
import { parseRange } from "./range.ts";

type PeerRoute = Extract<Route, { kind: "peer" }>;

/**
 * Streams the fill in flight here (its bytes are verified before the last one is sent, as to any
 * client); 404 with `x-mirror-fill: none` when there is none. A fill that failed to start answers
 * the error its own clients got.
 */
export async function handlePeer(
  route: PeerRoute,
  request: Request,
  ctx: HandlerContext,
): Promise<Response> {
  const pending = ctx.cache.fills.get(route.registry, route.digest);
  if (!pending) {
    throw new RegistryError(
      "BLOB_UNKNOWN",
      `no fill of ${route.digest} from ${route.registry} in flight on this replica`,
      { headers: { [FILL_HEADER]: "none" } },
    );
  }
  const fill = await pending;
  const start = fill.size === undefined
    ? Number(/^bytes=(\d+)-$/.exec(request.headers.get("range") ?? "")?.[1] ?? 0)
    : startOf(parseRange(request.headers.get("range"), fill.size), fill.size);
  const headers = new Headers({
    "content-type": "application/octet-stream",
    "docker-content-digest": fill.digest,
    [REPOSITORY_HEADER]: fill.origin.repository,
  });
  if (fill.size !== undefined) {
    headers.set("content-length", String(fill.size - start));
    if (start > 0) headers.set("content-range", `bytes ${start}-${fill.size - 1}/${fill.size}`);
  } else if (start > 0) {
    headers.set("content-range", `bytes ${start}-*/*`);
  }
  // Ends once the blob is committed: the replica then finds it in the bucket, not uploading it again.
  const body = ctx.cache.follow(fill, start, undefined, (sent, complete) => {
    ctx.record.bytes = sent;
    if (!complete) ctx.record.error ??= "the body was not sent whole (replica gone or fill failed)";
  }, true);
  return new Response(body, { status: start > 0 ? 206 : 200, headers });
}

/** Where a `bytes=N-` range starts; a peer asks for nothing else. */
function startOf(range: ReturnType<typeof parseRange>, size: number): number {
  if (range === "unsatisfiable") {
    throw new RegistryError("RANGE_INVALID", `range not satisfiable for a blob of ${size} bytes`, {
      headers: { "content-range": `bytes */${size}` },
    });
  }
  return range?.start ?? 0;
}
