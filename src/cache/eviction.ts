// Tracks cached objects' sizes and last access in memory and evicts least-recently-used ones.

import { log } from "../log.ts";
import type { ObjectKind, Store } from "./store.ts";

interface Entry {
  kind: ObjectKind;
  digest: string;
  size: number;
  accessedMs: number;
}

/** Evict down to this fraction of maxSize, so eviction does not run on every fill. */
const LOW_WATER = 0.9;
/** How often access times are written back to the store (never once per hit). */
const FLUSH_INTERVAL_MS = 60_000;

/**
 * The in-memory index of the cache: object sizes and access times, rebuilt from the store at
 * start in the background. Objects being read or filled are pinned and never evicted.
 */
export class Eviction {
  readonly #store: Store;
  readonly #maxSize?: number;
  readonly #entries = new Map<string, Entry>();
  readonly #pins = new Map<string, number>();
  readonly #touched = new Set<string>();
  /** Hits on objects the index does not hold (another replica stored them in the bucket). */
  readonly #touchedUnindexed = new Map<string, Omit<Entry, "size">>();
  readonly #now: () => number;
  #bytes = 0;
  /** Bytes promised to fills in flight (their Content-Length), counted in `#bytes` too. */
  #reserved = 0;
  #loaded = false;
  #running?: Promise<void>;
  #timer?: ReturnType<typeof setInterval>;
  /** Objects deleted by eviction since start. */
  evictions = 0;

  constructor(store: Store, maxSize: number | undefined, now: () => number = Date.now) {
    this.#store = store;
    this.#maxSize = maxSize;
    this.#now = now;
  }

  /** Builds the index from the store (objects added meanwhile are kept), then evicts if needed. */
  async load(): Promise<void> {
    for await (const info of this.#store.list()) {
      const key = `${info.kind}:${info.digest}`;
      if (!this.#entries.has(key)) this.#add(key, { ...info });
    }
    this.#loaded = true;
    const timer = setInterval(() => this.flush(), FLUSH_INTERVAL_MS);
    Deno.unrefTimer(timer);
    this.#timer = timer;
    log.info("cache index loaded: {objects} objects, {bytes} bytes", this.stats());
    this.maybeEvict();
  }

  /** Sizes and counts for metrics and logs. */
  stats(): { objects: number; bytes: number; reserved: number; evictions: number } {
    return {
      objects: this.#entries.size,
      bytes: this.#bytes - this.#reserved,
      reserved: this.#reserved,
      evictions: this.evictions,
    };
  }

  /** True when an object of `size` bytes may be cached at all (it fits in maxSize). */
  fits(size: number): boolean {
    return this.#maxSize === undefined || size <= this.#maxSize;
  }

  /**
   * How far ahead of its writes a fill reserves room: 64 MiB, or a 16th of maxSize when smaller,
   * so that an upstream claiming a large size cannot make many other objects go before it sends.
   */
  get reserveStep(): number {
    return Math.min(64 * 1024 * 1024, Math.ceil((this.#maxSize ?? Infinity) / 16));
  }

  /**
   * Counts `size` bytes a fill is about to write against maxSize, evicting to make room. Returns
   * the release function, called when the fill ends (before `added` on success).
   */
  reserve(size: number): () => void {
    this.#reserved += size;
    this.#bytes += size;
    this.maybeEvict();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#reserved -= size;
      this.#bytes -= size;
    };
  }

  /** Records a newly stored object. */
  added(kind: ObjectKind, digest: string, size: number): void {
    const key = `${kind}:${digest}`;
    const old = this.#entries.get(key);
    if (old) this.#bytes -= old.size;
    this.#add(key, { kind, digest, size, accessedMs: this.#now() });
    this.maybeEvict();
  }

  /** Records a hit, in memory only. */
  touched(kind: ObjectKind, digest: string): void {
    const key = `${kind}:${digest}`;
    const entry = this.#entries.get(key);
    if (!entry) {
      // Persisted too: whoever evicts the shared bucket needs every replica's hits.
      this.#touchedUnindexed.set(key, { kind, digest, accessedMs: this.#now() });
      return;
    }
    entry.accessedMs = this.#now();
    this.#touched.add(key);
  }

  /** Protects an object from eviction while it is read or filled; returns the release function. */
  pin(kind: ObjectKind, digest: string): () => void {
    const key = `${kind}:${digest}`;
    this.#pins.set(key, (this.#pins.get(key) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.#pins.get(key) ?? 1) - 1;
      if (left > 0) this.#pins.set(key, left);
      else this.#pins.delete(key);
    };
  }

  /** Starts an eviction pass in the background when the cache is over its maximum size. */
  maybeEvict(): void {
    if (!this.#loaded || this.#running || this.#maxSize === undefined) return;
    if (this.#bytes <= this.#maxSize) return;
    this.#running = this.#evict(this.#maxSize * LOW_WATER)
      .catch((e) => log.error("eviction failed: {error}", { error: String(e) }))
      .finally(() => this.#running = undefined);
  }

  /** Waits for a running eviction pass (tests, shutdown). */
  async settled(): Promise<void> {
    await this.#running;
  }

  /** Writes the access times recorded since the last flush to the store. */
  async flush(): Promise<void> {
    const keys = [...this.#touched];
    this.#touched.clear();
    const unindexed = [...this.#touchedUnindexed.values()];
    this.#touchedUnindexed.clear();
    for (const key of keys) {
      const entry = this.#entries.get(key);
      if (entry) await this.#store.touch(entry.kind, entry.digest, entry.accessedMs);
    }
    for (const t of unindexed) await this.#store.touch(t.kind, t.digest, t.accessedMs);
  }

  /** Stops the flush timer after a last flush. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    await this.settled();
    await this.flush();
  }

  #add(key: string, entry: Entry): void {
    this.#entries.set(key, entry);
    this.#bytes += entry.size;
  }

  /** Evicts least-recently-used objects until the cache holds at most `target` bytes. */
  async evictTo(target: number): Promise<void> {
    await this.settled();
    // Marked running, so that no background pass starts meanwhile and counts bytes twice.
    this.#running = this.#evict(target).finally(() => this.#running = undefined);
    await this.#running;
  }

  /** Forgets an object deleted outside eviction (found corrupt, say). */
  forget(kind: ObjectKind, digest: string): void {
    const key = `${kind}:${digest}`;
    const entry = this.#entries.get(key);
    if (!entry) return;
    this.#entries.delete(key);
    this.#touched.delete(key);
    this.#bytes -= entry.size;
  }

  async #evict(target: number): Promise<void> {
    const oldest = [...this.#entries.entries()].sort((a, b) => a[1].accessedMs - b[1].accessedMs);
    let freed = 0;
    let count = 0;
    for (const [key, entry] of oldest) {
      if (this.#bytes <= target) break;
      if (this.#pins.has(key) || this.#entries.get(key) !== entry) continue;
      await this.#store.delete(entry.kind, entry.digest);
      if (this.#entries.get(key) !== entry) continue; // forgotten or replaced meanwhile
      this.#entries.delete(key);
      this.#touched.delete(key);
      this.#bytes -= entry.size;
      freed += entry.size;
      count++;
    }
    this.evictions += count;
    log.info("evicted {count} objects ({freed} bytes); cache now {bytes} bytes", {
      count,
      freed,
      bytes: this.#bytes - this.#reserved,
    });
  }
}
