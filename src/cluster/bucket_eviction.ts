// Eviction of a bucket shared by replicas: one at a time (whoever holds the `evict` lease) lists
// the objects with the access times every replica persisted (batched, once a minute) and deletes
// the least recently used ones.

import type { ObjectInfo, ObjectKind } from "../cache/store.ts";
import { log } from "../log.ts";
import type { Leases } from "./leases.ts";

/** What eviction needs of the bucket. */
export interface EvictableStore {
  /** Bytes of every object, from a listing only (cheap: no access times). */
  size(): Promise<number>;
  /** Every object with its last access. */
  list(): AsyncIterable<ObjectInfo>;
  delete(kind: ObjectKind, digest: string): Promise<void>;
}

/** What one pass found and did; `bytes` is the bucket's size before it. */
export type EvictionPass =
  | { outcome: "within"; bytes: number }
  | { outcome: "busy"; holder: string }
  | { outcome: "evicted"; bytes: number; evicted: number; freed: number };

/** Evict down to this fraction of maxSize, so that passes are rare. */
const LOW_WATER = 0.9;
/**
 * Objects used more recently are kept: hits reach the bucket up to a minute late, and a replica
 * may be streaming them (pins are per process).
 */
const GRACE_MS = 5 * 60_000;
/** How often each replica checks the bucket's size (a listing). */
const CHECK_INTERVAL_MS = 60_000;
/** The lease's name: one evictor at a time. */
const LEASE = "evict";

/** Keeps a shared bucket under `maxSize`, taking turns with the other replicas. */
export class BucketEviction {
  readonly #store: EvictableStore;
  readonly #leases: Leases;
  readonly #maxSize: number;
  readonly #graceMs: number;
  #timer?: ReturnType<typeof setInterval>;
  #running?: Promise<unknown>;
  /** Objects this replica evicted since start. */
  evicted = 0;

  constructor(
    store: EvictableStore,
    leases: Leases,
    options: { maxSize: number; graceMs?: number },
  ) {
    this.#store = store;
    this.#leases = leases;
    this.#maxSize = options.maxSize;
    this.#graceMs = options.graceMs ?? GRACE_MS;
  }

  /**
   * Above maxSize, evicts down to `target` (default 90% of maxSize) unless another replica is
   * evicting now.
   */
  async pass(target = this.#maxSize * LOW_WATER): Promise<EvictionPass> {
    const size = await this.#store.size();
    if (size <= this.#maxSize) return { outcome: "within", bytes: size };
    const acquired = await this.#leases.acquire(LEASE);
    if (!("lease" in acquired)) return { outcome: "busy", holder: acquired.held.owner };
    const lease = acquired.lease;
    let done = false;
    lease.hold(() => done);
    try {
      return await this.#evict(target);
    } finally {
      done = true;
      await lease.release();
    }
  }

  /** Checks the bucket every `intervalMs` in the background. */
  start(intervalMs = CHECK_INTERVAL_MS): void {
    const run = () => {
      this.#running ??= this.pass()
        .catch((e) =>
          log.error("bucket eviction failed: {error}", { error: String(e?.message ?? e) })
        )
        .finally(() => this.#running = undefined);
    };
    this.#timer = setInterval(run, intervalMs);
    Deno.unrefTimer(this.#timer);
  }

  /** Stops the checks, waiting for a pass in progress. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    await this.#running;
  }

  async #evict(target: number): Promise<EvictionPass> {
    const objects: ObjectInfo[] = [];
    for await (const info of this.#store.list()) objects.push(info);
    const bytes = objects.reduce((sum, o) => sum + o.size, 0);
    const recent = this.#leases.now() - this.#graceMs;
    let left = bytes;
    let evicted = 0;
    for (const o of objects.sort((a, b) => a.accessedMs - b.accessedMs)) {
      if (left <= target || o.accessedMs > recent) break;
      await this.#store.delete(o.kind, o.digest);
      left -= o.size;
      evicted++;
    }
    this.evicted += evicted;
    log.info("evicted {evicted} objects ({freed} bytes) from the bucket; it holds {bytes} bytes", {
      evicted,
      freed: bytes - left,
      bytes: left,
    });
    return { outcome: "evicted", bytes, evicted, freed: bytes - left };
  }
}
