// Many clients spread over three replicas on one bucket, on one cold blob: registry-mirror's
// replicas in cluster mode (one upstream fetch for the fleet) next to three Distribution proxies
// on one bucket (each fetching on its own). Part of the s3 scenario.

import { curlPull, type Pull } from "../clients.ts";
import { type BenchEnv, originTraffic, type SeededBlob } from "../env.ts";
import type { CacheProcess } from "../distribution.ts";
import { type BucketSettings, emptyBucket, freshPrefix, type Rgw, waitForObject } from "../rgw.ts";
import type { CacheKind, Systems } from "../systems.ts";

/** Replicas of each system in the herd. */
export const REPLICAS = 3;

/** What one herd run on the replicas of one system measured. */
export interface ReplicaHerd {
  /** Bytes from the origin, as a multiple of the blob size. */
  originX: number;
  originRequests: number;
  /** Seconds until the last client ended. */
  wallSeconds: number;
  /** Clients that got the whole blob with a 200. */
  complete: number;
  /** CPU seconds (user + system) of the replicas together, from their start to the end. */
  cpuSeconds: number;
}

/** The key of `blob` under a cache's prefix: each system's own layout. */
export function blobKey(kind: CacheKind, blob: SeededBlob): string {
  const hex = blob.digest.slice("sha256:".length);
  return kind === "mirror"
    ? `blobs/sha256/${hex}`
    : `docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
}

/** Each client is cut after this long: the blob at 2 MB/s, or a minute. */
export function herdTimeLimit(blob: SeededBlob): number {
  return Math.max(60, Math.ceil(blob.size / 2e6));
}

function startReplica(
  caches: Systems,
  kind: CacheKind,
  dir: string,
  bucket: BucketSettings,
  secret: string,
): Promise<CacheProcess> {
  return kind === "mirror"
    ? caches.mirror(dir, { s3: bucket, clusterSecret: secret })
    : caches.distribution(dir, bucket);
}

/**
 * Starts {@linkcode REPLICAS} replicas of `kind` on one new prefix of the RGW's bucket, sends
 * `clients` concurrent curl pulls of the cold `blob` to them in turn, and counts what the origin
 * sent until every replica is done (the blob in the bucket, the counting proxy quiet).
 */
export async function replicaHerd(
  env: BenchEnv,
  caches: Systems,
  settings: { kind: CacheKind; rgw: Rgw; blob: SeededBlob; clients: number; dir: string },
): Promise<ReplicaHerd> {
  const { kind, blob, clients, dir } = settings;
  const bucket = freshPrefix(settings.rgw, `herd-${kind}`);
  const secret = crypto.randomUUID();
  const replicas: CacheProcess[] = [];
  try {
    replicas.push(
      ...await Promise.all(
        Array.from(
          { length: REPLICAS },
          (_, i) => startReplica(caches, kind, `${dir}/replica-${i}`, bucket, secret),
        ),
      ),
    );
    const cpu = () => replicas.reduce((sum, r) => sum + r.cpuSeconds(), 0);
    const maxTimeS = herdTimeLimit(blob);
    const mark = env.nginx.mark();
    const began = performance.now();
    const pulls: Pull[] = await Promise.all(
      Array.from(
        { length: clients },
        (_, i) => curlPull(replicas[i % REPLICAS].url + blob.path, { maxTimeS }),
      ),
    );
    const wallSeconds = (performance.now() - began) / 1000;
    await waitForObject(bucket, blobKey(kind, blob), 300_000);
    await env.nginx.settle();
    const traffic = originTraffic(env, mark);
    return {
      originX: traffic.bytes / blob.size,
      originRequests: traffic.requests,
      wallSeconds,
      complete: pulls.filter((p) => p.status === 200 && p.bytes === blob.size).length,
      cpuSeconds: cpu(),
    };
  } finally {
    await Promise.all(replicas.map((r) => r.stop()));
    await emptyBucket(bucket);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}
