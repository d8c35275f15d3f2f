// The cache: its store, the in-memory eviction index, blob fills and hit/miss counters.

import type { Config } from "../config.ts";
import { Eviction } from "./eviction.ts";
import { Fills } from "./fill.ts";
import { FsStore } from "./fs_store.ts";
import { SingleFlight } from "./singleflight.ts";
import type { Store, StoredManifest, TagRecord } from "./store.ts";

/** X-Cache values: served from the cache, fetched upstream, or served stale while upstream failed. */
export type CacheStatus = "HIT" | "MISS" | "STALE";

/** Everything the handlers need to use the cache. */
export class Cache {
  readonly store: Store;
  readonly eviction: Eviction;
  readonly fills: Fills;
  readonly tagTtlMs: number;
  readonly counts: Record<CacheStatus, number> = { HIT: 0, MISS: 0, STALE: 0 };
  /** Concurrent lookups of one tag share one upstream request. */
  readonly tagFlights = new SingleFlight<TagRecord>();
  /** Tags whose revalidation failed: served stale without asking upstream until then (ms). */
  readonly staleUntil = new Map<string, number>();
  /** Concurrent misses of one manifest digest share one upstream request. */
  readonly manifestFlights = new SingleFlight<StoredManifest>();

  constructor(store: Store, settings: Config["cache"]) {
    this.store = store;
    this.tagTtlMs = settings.tagTtlMs;
    this.eviction = new Eviction(store, settings.maxSizeBytes);
    this.fills = new Fills(store, this.eviction);
  }

  /**
   * Opens the filesystem cache; the eviction index is rebuilt in the background. The server
   * passes `clean` to remove a crash's leftovers; commands run beside a server must not.
   */
  static async open(settings: Config["cache"], options = { clean: false }): Promise<Cache> {
    const cache = new Cache(await FsStore.open(settings.dir, options), settings);
    cache.loaded = cache.eviction.load();
    return cache;
  }

  /** Settles when the eviction index has been rebuilt from disk. */
  loaded: Promise<void> = Promise.resolve();
}
