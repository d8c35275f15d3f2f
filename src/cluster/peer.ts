// The internal endpoint between replicas: a replica that holds a fill's lease serves the fill's
// bytes (as they arrive) to the other replicas, which ask with the cluster secret.

/** Where a replica serves its fill of `digest` from `registry`. */
export function peerPath(registry: string, digest: string): string {
  return `/_cluster/fills/${encodeURIComponent(registry)}/${digest}`;
}

/** The path pattern of that endpoint, for the router. */
export const PEER_PATH = /^\/_cluster\/fills\/([^/]+)\/([^/]+)$/;
/** Prefix of every internal path: the router keeps them apart from the registry API. */
export const CLUSTER_PREFIX = "/_cluster/";

/** Answer header: `none` when the replica has no fill of that blob in flight. */
export const FILL_HEADER = "x-mirror-fill";
/** Answer header: the repository the fill was started for (its upstream confirmed it). */
export const REPOSITORY_HEADER = "x-mirror-fill-repository";

/** How a replica asks another. */
export interface PeerOptions {
  secret: string;
  /** How long to wait for the answer's headers (the owner may still be waiting for upstream). */
  headersTimeoutMs: number;
  /** How long the body may send nothing before it is cut. */
  idleTimeoutMs: number;
}

/**
 * Asks the replica at `owner` (its advertised URL) for its fill of `digest` from `registry`, from
 * byte `offset`. The answer is returned as it is; its body errors when it stalls.
 */
export async function openPeer(
  owner: string,
  target: { registry: string; digest: string; offset: number },
  options: PeerOptions,
): Promise<Response> {
  const url = new URL(peerPath(target.registry, target.digest), new URL(owner).origin);
  const headers: Record<string, string> = {
    authorization: `Bearer ${options.secret}`,
    "accept-encoding": "identity",
  };
  if (target.offset > 0) headers.range = `bytes=${target.offset}-`;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), options.headersTimeoutMs);
  let response: Response;
  try {
    response = await fetch(url, { headers, signal: abort.signal, redirect: "manual" });
  } catch (e) {
    throw new Error(`replica ${url.origin} did not answer: ${(e as Error)?.message ?? e}`, {
      cause: e,
    });
  } finally {
    clearTimeout(timer);
  }
  if (!response.body) return response;
  return new Response(watchIdle(response.body, options.idleTimeoutMs, url.origin), {
    status: response.status,
    headers: response.headers,
  });
}

/** `body`, ending with an error when the next chunk takes longer than `idleMs`. */
function watchIdle(
  body: ReadableStream<Uint8Array>,
  idleMs: number,
  origin: string,
): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  return new ReadableStream<Uint8Array>({
    async pull(out) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const stalled = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`replica ${origin} sent nothing for ${idleMs} ms`)),
          idleMs,
        );
      });
      try {
        const { done, value } = await Promise.race([reader.read(), stalled]);
        if (done) out.close();
        else out.enqueue(value);
      } catch (e) {
        reader.cancel(e).catch(() => {});
        out.error(e);
      } finally {
        clearTimeout(timer);
      }
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
}
