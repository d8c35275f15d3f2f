// `registry-mirror cache ls|du|gc`: look into the cache directory (ls, du) and trim it (gc).

import type { Cache } from "../cache/cache.ts";
import type { Store } from "../cache/store.ts";
import { formatBytes } from "./format.ts";

/** `cache ls`: every tag record, one per line, sorted: image, digest, media type, last check. */
export async function cacheLs(store: Store, print: (line: string) => void): Promise<void> {
  const lines: string[] = [];
  for await (const { registry, repository, tag, record } of store.listTags()) {
    const checked = new Date(record.checkedAt).toISOString();
    lines.push(
      `${registry}/${repository}:${tag}\t${record.digest}\t${record.mediaType}\t${checked}`,
    );
  }
  for (const line of lines.sort()) print(line);
  print(`${lines.length} tags`);
}

/** `cache du`: objects and bytes by kind; it only reads (safe beside a serving mirror). */
export async function cacheDu(store: Store, print: (line: string) => void): Promise<void> {
  const sums = { blob: { objects: 0, bytes: 0 }, manifest: { objects: 0, bytes: 0 } };
  for await (const info of store.list()) {
    sums[info.kind].objects++;
    sums[info.kind].bytes += info.size;
  }
  const total = sums.blob.bytes + sums.manifest.bytes;
  print(`blobs\t${sums.blob.objects}\t${sums.blob.bytes}\t${formatBytes(sums.blob.bytes)}`);
  print(
    `manifests\t${sums.manifest.objects}\t${sums.manifest.bytes}\t${
      formatBytes(sums.manifest.bytes)
    }`,
  );
  print(`total\t${sums.blob.objects + sums.manifest.objects}\t${total}\t${formatBytes(total)}`);
}

/** `cache gc`: evicts least-recently-used objects down to `maxSize` bytes. */
export async function cacheGc(
  cache: Cache,
  maxSize: number,
  print: (line: string) => void,
): Promise<void> {
  await cache.loaded;
  const before = cache.eviction.stats();
  await cache.eviction.evictTo(maxSize);
  const after = cache.eviction.stats();
  print(
    `evicted ${before.objects - after.objects} objects (${
      formatBytes(before.bytes - after.bytes)
    }); ` +
      `cache now ${after.objects} objects, ${formatBytes(after.bytes)}`,
  );
}
