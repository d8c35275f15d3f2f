// The worker side of the hash thread (hasher.ts): hashes fills' bytes out of the rings it shares
// with the main thread, each message a piece of one fill's ring, answered once hashed.
//
// The thread is started from a data: URL that imports WORKER_URL, this module's own URL: under
// `deno run` and `deno compile` that is this file; in a `deno bundle` file it is the bundle itself,
// whose entry point sees `import.meta.main` false, while this module answers.

import { createHash, type Hash } from "node:crypto";
import { isMainThread, parentPort, workerData } from "node:worker_threads";

/** What the thread is started with: the module serves only in a thread started with it. */
export const WORKER_DATA = { kind: "registry-mirror-hash" };
/** What a thread loads: this module, or the bundle that contains it. */
export const WORKER_URL = import.meta.url;

/** A request to the hash thread, about the fill `id`. */
export type HashRequest =
  | { op: "start"; id: number; algorithm: string; ring: SharedArrayBuffer }
  | { op: "data"; id: number; at: number; length: number }
  | { op: "end"; id: number }
  | { op: "drop"; id: number };

/** An answer: a piece hashed (its ring space is free again), the digest, or what went wrong. */
export type HashReply =
  | { op: "hashed"; id: number; length: number }
  | { op: "digest"; id: number; hex: string }
  | { op: "error"; id: number; message: string };

if (!isMainThread && parentPort && workerData?.kind === WORKER_DATA.kind) {
  const port = parentPort;
  const jobs = new Map<number, { hash: Hash; ring: Uint8Array }>();
  port.on("message", (request: HashRequest) => {
    const { id } = request;
    try {
      if (request.op === "start") {
        jobs.set(id, { hash: createHash(request.algorithm), ring: new Uint8Array(request.ring) });
        return;
      }
      if (request.op === "drop") {
        jobs.delete(id);
        return;
      }
      const job = jobs.get(id);
      if (!job) throw new Error(`no hash job ${id}`);
      if (request.op === "data") {
        job.hash.update(job.ring.subarray(request.at, request.at + request.length));
        port.postMessage({ op: "hashed", id, length: request.length } satisfies HashReply);
      } else {
        jobs.delete(id);
        port.postMessage({ op: "digest", id, hex: job.hash.digest("hex") } satisfies HashReply);
      }
    } catch (e) {
      jobs.delete(id);
      port.postMessage({ op: "error", id, message: String((e as Error)?.message ?? e) });
    }
  });
}
