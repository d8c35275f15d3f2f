// `registry-mirror cache ls|du|gc`: look into the cache directory (ls, du) and trim it (gc).

import type { Cache } from "../cache/cache.ts";
import type { Store } from "../cache/store.ts";
import { formatBytes } from "./format.ts";

/** How `cache ls` and `cache du` print. */
export interface ListOptions {
  /** One JSON document for scripts instead of tab-separated lines. */
  json?: boolean;
}

/** One cached tag, as `cache ls --json` lists it. */
export interface CachedTag {
  image: string;
  registry: string;
  repository: string;
  tag: string;
  digest: string;
  mediaType: string;
  /** When upstream was last asked (ISO 8601). */
  checkedAt: string;
}

/**
 * `cache ls`: every tag record, sorted by image: a line each (image, digest, media type, last
 * check) and a count, or with `json` one document `{"tags": [...]}`.
 */
export async function cacheLs(
  store: Store,
  print: (line: string) => void,
  options: ListOptions = {},
): Promise<void> {
  const tags: CachedTag[] = [];
  for await (const { registry, repository, tag, record } of store.listTags()) {
    tags.push({
      image: `${registry}/${repository}:${tag}`,
      registry,
      repository,
      tag,
      digest: record.digest,
      mediaType: record.mediaType,
      checkedAt: new Date(record.checkedAt).toISOString(),
    });
  }
  tags.sort((a, b) => a.image < b.image ? -1 : a.image > b.image ? 1 : 0);
  if (options.json) return print(JSON.stringify({ tags }, null, 2));
  for (const t of tags) print(`${t.image}\t${t.digest}\t${t.mediaType}\t${t.checkedAt}`);
  print(`${tags.length} tags`);
}

/** Objects and bytes of one kind. */
export interface Usage {
  objects: number;
  bytes: number;
}

/**
 * `cache du`: objects and bytes by kind, a line each, or with `json` one document
 * `{"blobs": {objects, bytes}, "manifests": {...}, "total": {...}}`. It only reads (safe beside a
 * serving mirror).
 */
export async function cacheDu(
  store: Store,
  print: (line: string) => void,
  options: ListOptions = {},
): Promise<void> {
  const sums = { blob: { objects: 0, bytes: 0 }, manifest: { objects: 0, bytes: 0 } };
  for await (const info of store.list()) {
    sums[info.kind].objects++;
    sums[info.kind].bytes += info.size;
  }
  const usage: Record<"blobs" | "manifests" | "total", Usage> = {
    blobs: sums.blob,
    manifests: sums.manifest,
    total: {
      objects: sums.blob.objects + sums.manifest.objects,
      bytes: sums.blob.bytes + sums.manifest.bytes,
    },
  };
  if (options.json) return print(JSON.stringify(usage, null, 2));
  for (const [kind, { objects, bytes }] of Object.entries(usage)) {
    print(`${kind}\t${objects}\t${bytes}\t${formatBytes(bytes)}`);
  }
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
