// The cache, one owner with a small API: blobs (pinned, then opened), fills, manifests, tag
// records and repository links over a Store. Handlers call it; they never coordinate the store,
// pins, fills and in-flight maps themselves. Local write failures are logged and counted as
// "disk", never thrown at a client: the content is then served without being cached.

import { LRUCache } from "lru-cache";
import type { Config } from "../config.ts";
import { log } from "../log.ts";
import { RegistryError } from "../oci/errors.ts";
import { type ParsedManifest, parseManifest } from "../oci/manifest.ts";
import { Eviction } from "./eviction.ts";
import type { Fill } from "./fill.ts";
import { Fills, type OpenUpstream } from "./fills.ts";
import { openStore } from "./open_store.ts";
import { SingleFlight } from "./singleflight.ts";
import type { OpenedBlob, Store, TagRecord } from "./store.ts";

/** X-Cache values: served from the cache, fetched upstream, or served stale while upstream failed. */
export type CacheStatus = "HIT" | "MISS" | "STALE";

/** A manifest with what it says about itself (its media type comes from its own bytes). */
export interface Manifest {
  digest: string;
  mediaType: string;
  bytes: Uint8Array<ArrayBuffer>;
  parsed: ParsedManifest;
}

/** A cached blob, opened and pinned; `release` unpins it once the response is done. */
export interface CachedBlob extends OpenedBlob {
  release(): void;
}

/**
 * The link naming a registry as a supplier of a digest: its upstream sent these exact bytes (a
 * verified fill or manifest fetch), which makes its HEAD proof enough for its other repositories.
 * Not a valid repository name, so it never collides with one.
 */
const SUPPLIED = "_supplied";

/** Tags whose revalidation failed are paused: bounded, since tags are chosen by clients. */
const MAX_PAUSED_TAGS = 10_000;

/**
 * How long tag records, manifests and repository links read from the store are reused from memory
 * (ms): a busy tag costs one store read per second, not three per request (measured 2.8k req/s with
 * them). Changes made here update the memory at once; changes made elsewhere (another replica, the
 * `cache` command) show within this time. Manifests are content by digest: never wrong, only late
 * to disappear.
 */
export const HOT_MS = 1000;
const HOT_TAGS = 10_000;
const HOT_LINKS = 100_000;
const HOT_MANIFEST_BYTES = 32 * 1024 * 1024;

/** The cache of the mirror. */
export class Cache {
  readonly store: Store;
  readonly eviction: Eviction;
  readonly fills: Fills;
  readonly tagTtlMs: number;
  readonly counts: Record<CacheStatus, number> = { HIT: 0, MISS: 0, STALE: 0 };
  /** Concurrent lookups of one tag share one upstream request. */
  readonly tagFlights = new SingleFlight<{ record: TagRecord; manifest: Manifest }>();
  /** Concurrent misses of one manifest digest share one upstream request. */
  readonly manifestFlights = new SingleFlight<Manifest>();
  readonly #now: () => number;
  /** Tags whose revalidation failed: served stale without asking upstream until then (ms). */
  readonly #staleUntil = new LRUCache<string, number>({ max: MAX_PAUSED_TAGS });
  /** Store reads reused for HOT_MS (ttlResolution 0: the clock is read on each get, no timer). */
  readonly #hotTags: LRUCache<string, TagRecord>;
  readonly #hotLinks: LRUCache<string, true>;
  readonly #hotManifests: LRUCache<string, Manifest>;
  #diskErrors = 0;
  /** The last local write failure, until a write succeeds again (for /readyz). */
  lastDiskError?: string;

  constructor(store: Store, settings: Config["cache"], now: () => number = Date.now) {
    this.store = store;
    this.#now = now;
    const hot = { ttl: HOT_MS, ttlResolution: 0, perf: { now } };
    this.#hotTags = new LRUCache({ ...hot, max: HOT_TAGS });
    this.#hotLinks = new LRUCache({ ...hot, max: HOT_LINKS });
    this.#hotManifests = new LRUCache({
      ...hot,
      maxSize: HOT_MANIFEST_BYTES,
      sizeCalculation: (m) => m.bytes.byteLength + 1,
    });
    this.tagTtlMs = settings.tagTtlMs;
    this.eviction = new Eviction(store, settings.maxSizeBytes, now);
    this.fills = new Fills({
      store,
      eviction: this.eviction,
      committed: (fill) =>
        this.#supplied(fill.origin.registry, fill.origin.repository, fill.digest),
    });
  }

  /**
   * Opens the configured cache (directory or bucket); the eviction index is rebuilt in the
   * background. Only the serving process opens it this way (`clean` removes a crash's leftovers,
   * and it evicts).
   */
  static async open(settings: Config["cache"], options = { clean: false }): Promise<Cache> {
    const cache = new Cache(await openStore(settings, options), settings);
    // A store that cannot be listed now (a bucket unreachable) must not end the process.
    cache.loaded = cache.eviction.load().catch((e) =>
      log.error("cannot index the cache for eviction: {error}", { error: String(e?.message ?? e) })
    );
    return cache;
  }

  /** Settles when the eviction index has been rebuilt from disk. */
  loaded: Promise<void> = Promise.resolve();

  /** Local write failures since start (fills included). */
  get diskErrors(): number {
    return this.#diskErrors + this.fills.stats.diskErrors;
  }

  /** A cached blob, pinned before it is opened so that eviction cannot take it in between. */
  async openBlob(digest: string): Promise<CachedBlob | undefined> {
    const release = this.eviction.pin("blob", digest);
    const blob = await this.store.openBlob(digest).catch((e) => {
      release();
      throw e;
    });
    if (!blob) {
      release();
      return undefined;
    }
    this.eviction.touched("blob", digest);
    return Object.assign(blob, { release });
  }

  /** The fill of `digest` from `origin.registry` in flight, joined, or a new one started. */
  fill(
    digest: string,
    origin: Fill["origin"],
    open: OpenUpstream,
  ): { fill: Promise<Fill>; joined: boolean } {
    const pending = this.fills.get(origin.registry, digest);
    if (pending) {
      this.fills.stats.coalesced++;
      return { fill: pending, joined: true };
    }
    return { fill: this.fills.begin(digest, origin, open), joined: false };
  }

  /** Follows a fill from `start` to `end` (see Fill.follow), the blob pinned meanwhile. */
  follow(
    fill: Fill,
    start: number,
    end: number | undefined,
    release: (sent: number, complete: boolean) => void,
    untilSettled = false,
  ): ReadableStream<Uint8Array> {
    const unpin = this.eviction.pin("blob", fill.digest);
    return fill.follow(start, end, (sent, complete) => {
      unpin();
      release(sent, complete);
    }, untilSettled);
  }

  /** A cached manifest, verified against its digest; one that no longer parses is dropped. */
  async manifest(digest: string): Promise<Manifest | undefined> {
    const hot = this.#hotManifests.get(digest);
    if (hot) {
      this.eviction.touched("manifest", digest);
      return hot;
    }
    const bytes = await this.store.getManifest(digest);
    if (!bytes) {
      this.eviction.forget("manifest", digest); // missing or found corrupt (the store dropped it)
      return undefined;
    }
    const parsed = parseManifest(bytes, digest);
    if (parsed instanceof RegistryError) {
      log.warn("cached manifest {digest} is not a valid manifest: removed ({error})", {
        digest,
        error: parsed.message,
      });
      await this.store.delete("manifest", digest).catch(() => {});
      this.eviction.forget("manifest", digest);
      return undefined;
    }
    this.eviction.touched("manifest", digest);
    const manifest = { digest, mediaType: parsed.mediaType, bytes, parsed };
    this.#hotManifests.set(digest, manifest);
    return manifest;
  }

  /** Stores a verified manifest and links it to the repository it came from. */
  async keepManifest(registry: string, repository: string, manifest: Manifest): Promise<void> {
    await this.#write(`manifest ${manifest.digest}`, async () => {
      await this.store.putManifest(manifest.digest, manifest.bytes);
      this.eviction.added("manifest", manifest.digest, manifest.bytes.byteLength);
    });
    await this.#supplied(registry, repository, manifest.digest);
  }

  /** True once `registry`'s upstream itself sent the bytes of `digest` (verified). */
  suppliedBy(registry: string, digest: string): Promise<boolean> {
    return this.hasLink(registry, SUPPLIED, digest);
  }

  async #supplied(registry: string, repository: string, digest: string): Promise<void> {
    await this.addLink(registry, repository, digest);
    await this.addLink(registry, SUPPLIED, digest);
  }

  /** The tag record, if any. */
  async tag(registry: string, repository: string, tag: string): Promise<TagRecord | undefined> {
    const key = `${registry}/${repository}:${tag}`;
    const hot = this.#hotTags.get(key);
    if (hot) return hot;
    const record = await this.store.getTag(registry, repository, tag);
    if (record) this.#hotTags.set(key, record);
    return record;
  }

  /** Records what a tag points to, as the upstream said with the full Accept list. */
  async keepTag(registry: string, repository: string, tag: string, record: TagRecord) {
    const key = `${registry}/${repository}:${tag}`;
    const written = await this.#write(
      `tag ${key}`,
      () => this.store.putTag(registry, repository, tag, record),
    );
    if (written) this.#hotTags.set(key, record);
    else this.#hotTags.delete(key);
  }

  /** Forgets a tag the upstream no longer has. */
  async dropTag(registry: string, repository: string, tag: string): Promise<void> {
    this.#staleUntil.delete(`${registry}/${repository}:${tag}`);
    this.#hotTags.delete(`${registry}/${repository}:${tag}`);
    await this.store.deleteTag(registry, repository, tag);
  }

  /** True while a tag whose revalidation failed is served stale without asking upstream. */
  stalePaused(key: string): boolean {
    return (this.#staleUntil.get(key) ?? 0) > this.#now();
  }

  /** Pauses revalidation of a tag for `ms`, or ends the pause (`ms` 0). */
  pauseStale(key: string, ms: number): void {
    if (ms > 0) this.#staleUntil.set(key, this.#now() + ms);
    else this.#staleUntil.delete(key);
  }

  async hasLink(registry: string, repository: string, digest: string): Promise<boolean> {
    const key = `${registry}/${repository}@${digest}`;
    if (this.#hotLinks.has(key)) return true;
    const linked = await this.store.hasLink(registry, repository, digest);
    if (linked) this.#hotLinks.set(key, true);
    return linked;
  }

  /** Remembers that the upstream confirmed `repository` holds `digest`. */
  async addLink(registry: string, repository: string, digest: string): Promise<void> {
    const key = `${registry}/${repository}@${digest}`;
    const written = await this.#write(
      `link ${key}`,
      () => this.store.addLink(registry, repository, digest),
    );
    if (written) this.#hotLinks.set(key, true);
  }

  /** Why the cache cannot take writes now, if it cannot (a probe write, fsynced). */
  async writeProblem(): Promise<string | undefined> {
    try {
      await this.store.probeWrite();
      this.lastDiskError = undefined;
      return undefined;
    } catch (e) {
      return `the cache cannot write: ${(e as Error).message}`;
    }
  }

  /** Runs a store write; a failure is logged and counted as a disk error, not thrown (false). */
  async #write(what: string, write: () => Promise<void>): Promise<boolean> {
    try {
      await write();
      return true;
    } catch (e) {
      this.#diskErrors++;
      this.lastDiskError = (e as Error).message;
      log.error("cannot cache {what}: disk: {error}", { what, error: this.lastDiskError });
      return false;
    }
  }
}
