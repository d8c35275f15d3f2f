// One blob in flight: the bytes an upstream fill has received, in its spool file and, for the
// latest ones (or all of them once the fill stopped caching), in memory, which any number of
// clients follow at their own pace.

import { selfWatched, type SendWatch } from "../watched_body.ts";
import { type Part, SharedBytes } from "./shared_bytes.ts";
import { SpoolBlocks, type SpoolCursor } from "./spool_blocks.ts";
import type { Store } from "./store.ts";

/**
 * The last bytes received that a caching fill keeps in memory, in the spool or not: followers
 * close behind the fill take them from there, shared, instead of reading the spool. The fill reads
 * upstream at most half of this (and a chunk) ahead of its fastest follower, whose bytes are thus
 * still in memory.
 */
export const WINDOW = 4 * 1024 * 1024;
/** Upstream bytes held in memory for clients of a fill that stopped caching, at most. */
export const PASS_THROUGH_BUFFER = 8 * 1024 * 1024;
/** How long the spool of a fill that did not cache waits for a client that joined to attach. */
const ATTACH_GRACE_MS = 30_000;
/** A fill that stopped caching waits this long for its slowest client before giving up. */
const CLIENT_STALL_MS = 60_000;

interface Follower {
  pos: number;
}

/** One blob being fetched from upstream into the cache. */
export class Fill {
  readonly digest: string;
  /** Total size from Content-Length, when the upstream said. */
  readonly size?: number;
  /** The registry and repository the fill was started for. */
  readonly origin: { registry: string; repository: string };
  /** Bytes received from upstream so far. */
  received = 0;
  /** Bytes [0, stored) are in the spool file; the rest only in memory. */
  stored = 0;
  /** False once the fill stopped writing to disk: it then only passes bytes through. */
  caching: boolean;
  /** Set when the fill ended: undefined on success. */
  error?: Error;
  /** Every byte arrived and the digest matched; the commit may still be under way. */
  verified = false;
  /** The fill is over: committed (or passed through), or failed. */
  settled = false;
  /**
   * Received chunks in memory, in order: every one not yet in the spool (being written, or passed
   * through once caching stopped) and, while caching, the last WINDOW bytes of those that are.
   */
  #memory: SharedBytes[] = [];
  #memoryBytes = 0;
  /** The spool as followers behind the memory read it. */
  readonly #spool: SpoolBlocks;
  readonly #followers = new Set<Follower>();
  #hadFollowers = false;
  /** Followers waiting for more bytes or the end share one promise, settled by notify(). */
  #changes?: { promise: Promise<void>; resolve: () => void };
  /** The pump waiting for room (pass-through) or for its fastest follower (caching). */
  #pumpWaiter?: () => void;
  /** False once the fastest follower stalled: the pump then reads as fast as upstream sends. */
  #paced = true;
  /** Called once no follower needs the spool any more and the pump is done with it. */
  #onIdle?: () => void;
  #graceTimer?: ReturnType<typeof setTimeout>;

  constructor(
    digest: string,
    size: number | undefined,
    origin: Fill["origin"],
    spoolPath: string | undefined,
    store: Store,
  ) {
    this.digest = digest;
    this.size = size;
    this.origin = origin;
    this.caching = spoolPath !== undefined;
    this.#spool = new SpoolBlocks(() => store.openFill(spoolPath!, digest));
  }

  /**
   * Records a chunk received from upstream; it must not change afterwards (followers share it).
   * An `owned` chunk's buffer is read by nothing else: it is freed once written and sent.
   */
  appended(chunk: Uint8Array, owned = false): void {
    this.#memory.push(new SharedBytes(this.received, chunk, owned));
    this.#memoryBytes += chunk.length;
    this.received += chunk.length;
    this.notify();
  }

  /** Records that the next `bytes` received bytes are in the spool. */
  wrote(bytes: number): void {
    this.stored += bytes;
    this.#trim();
  }

  /** Stops writing to disk: what is in the spool stays readable, the rest passes through memory. */
  stopCaching(): void {
    this.caching = false;
    this.#trim();
    this.#wakePump(); // from paced(): room() is its wait now
  }

  /** Wakes every follower waiting for more bytes or the end. */
  notify(): void {
    const changes = this.#changes;
    this.#changes = undefined;
    changes?.resolve();
  }

  /**
   * Resolves once the bytes held in memory for followers fit the pass-through buffer. Throws
   * when no client is left to receive them or the slowest one stalled.
   */
  async room(): Promise<void> {
    const deadline = Date.now() + CLIENT_STALL_MS;
    for (;;) {
      this.#trim();
      if (this.#hadFollowers && this.#followers.size === 0) {
        throw new Error("no client is left to receive a blob that is not cached");
      }
      if (this.#memoryBytes <= PASS_THROUGH_BUFFER) return;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`clients read nothing for ${CLIENT_STALL_MS} ms`);
      await this.#pumpWaits(left);
    }
  }

  /** Resolves when a follower moved (or the fill stopped caching), or after `ms`. */
  #pumpWaits(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.#pumpWaiter = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /**
   * Resolves once the fastest follower is less than half a WINDOW behind what was received, or
   * there is none: a fill goes as fast as its fastest client or the upstream, whichever is slower,
   * and its bytes reach that client from memory. Slower clients read the spool at their own pace.
   */
  async paced(): Promise<void> {
    const deadline = Date.now() + CLIENT_STALL_MS;
    while (this.caching && this.#paced && this.#behind()) {
      const left = deadline - Date.now();
      // A client that takes nothing for that long no longer sets the pace: the fill runs free.
      if (left <= 0) this.#paced = false;
      else await this.#pumpWaits(left);
    }
  }

  #behind(): boolean {
    if (this.#followers.size === 0) return false;
    let lead = 0;
    for (const f of this.#followers) lead = Math.max(lead, f.pos);
    return lead + WINDOW / 2 <= this.received;
  }

  /** Registers what to do once the pump and every follower are done with the spool. */
  whenIdle(fn: () => void): void {
    this.#onIdle = fn;
    this.#checkIdle();
  }

  #checkIdle(): void {
    if (!this.#onIdle || this.#followers.size > 0) return;
    if (!this.#hadFollowers) {
      // A client that joined may attach later (after a HEAD upstream): the spool waits for it.
      this.#graceTimer ??= setTimeout(() => {
        this.#hadFollowers = true;
        this.#checkIdle();
      }, ATTACH_GRACE_MS);
      Deno.unrefTimer(this.#graceTimer);
      return;
    }
    clearTimeout(this.#graceTimer);
    {
      const fn = this.#onIdle;
      this.#onIdle = undefined;
      fn();
    }
  }

  /**
   * Drops the chunks in memory that the spool holds (keeping the last WINDOW bytes while caching)
   * and, once caching stopped, those every follower has read; wakes the pump when it may go on.
   */
  #trim(): void {
    // Before its first client attaches, a fill that stopped caching keeps what it received for it.
    let lowest = this.#followers.size === 0 ? 0 : Infinity;
    for (const f of this.#followers) lowest = Math.min(lowest, f.pos);
    while (this.#memory.length > 0) {
      const first = this.#memory[0];
      const written = first.end <= this.stored;
      const stored = written &&
        (!this.caching || this.#memoryBytes - first.bytes.length >= WINDOW);
      const read = !this.caching && first.end <= lowest;
      if (!stored && !read) break;
      this.#memory.shift();
      this.#memoryBytes -= first.bytes.length;
      // Written, its memory goes once its last part is sent. One not written in full may still
      // wait in the spool writer's queue: the collector frees it.
      if (written) first.unkeep();
    }
    if (this.caching ? !this.#behind() : this.#memoryBytes <= PASS_THROUGH_BUFFER) {
      this.#wakePump();
    }
  }

  #wakePump(): void {
    const wake = this.#pumpWaiter;
    this.#pumpWaiter = undefined;
    wake?.();
  }

  #changed(): Promise<void> {
    if (!this.#changes) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => resolve = r);
      this.#changes = { promise, resolve };
    }
    return this.#changes.promise;
  }

  /** The bytes at `pos` (up to `stop`) held in memory, if any. */
  #fromMemory(pos: number, stop: number): Part | undefined {
    // Followers are mostly close behind the fill: the newest chunks are looked at first.
    for (let i = this.#memory.length - 1; i >= 0; i--) {
      const chunk = this.#memory[i];
      if (chunk.has(pos)) return chunk.part(pos, stop);
      if (pos >= chunk.end) return undefined;
    }
    return undefined;
  }

  /**
   * A stream of bytes [start, end) that follows the fill as it grows. It ends with an error (so
   * the client's connection is cut and it retries) when the fill fails, never with a short or
   * unverified body. Its last byte goes once the fill is verified, or with `untilSettled` once it
   * is over (a replica streaming the fill finds the blob committed when it ends).
   */
  follow(
    start: number,
    end: number | undefined,
    release: (sent: number, complete: boolean) => void,
    untilSettled = false,
  ): ReadableStream<Uint8Array> {
    const over = () => this.settled || (this.verified && !untilSettled);
    const me: Follower = { pos: start };
    const cursor: SpoolCursor = {};
    this.#followers.add(me);
    this.#hadFollowers = true;
    let released = false;
    const done = (complete = false) => {
      if (!released) {
        released = true;
        this.#followers.delete(me);
        this.#spool.leave(cursor);
        if (this.#followers.size === 0) this.#spool.close().catch(() => {});
        this.#trim();
        this.#checkIdle();
        release(me.pos - start, complete);
      }
    };
    let watch: SendWatch | undefined;
    const stream = new ReadableStream<Uint8Array>({
      pull: async (out) => {
        const piece = watch?.asked() ?? Infinity;
        let sent: (() => void) | undefined;
        try {
          let available: number;
          for (;;) {
            if (this.error) throw this.error;
            if (end !== undefined && me.pos >= end) {
              done(true);
              return out.close();
            }
            // The last byte waits for verification: with a Content-Length, a client takes the
            // body as complete once it has every byte, so a bad blob must end before that.
            available = over()
              ? this.received
              : Math.min(this.received, (this.size ?? Infinity) - 1);
            if (me.pos < available) break;
            if (over()) {
              done(true);
              return out.close();
            }
            await this.#changed();
          }
          const stop = Math.min(end ?? Infinity, available, me.pos + piece);
          // From memory or the spool, a part of bytes other followers may share.
          let part = this.#fromMemory(me.pos, stop);
          if (!part && me.pos < this.stored) {
            part = await this.#spool.at(me.pos, stop, this.stored, cursor);
          }
          if (!part) throw new Error(`a client fell behind the uncached fill of ${this.digest}`);
          me.pos += part.bytes.length;
          this.#trim();
          out.enqueue(part.bytes);
          sent = part.sent;
        } catch (e) {
          sent = undefined;
          done();
          out.error(e);
        } finally {
          watch?.handed(sent);
        }
      },
      cancel: () => done(),
    }, { highWaterMark: 0 }); // a part is taken when the server asks: see SendWatch.handed
    // Sent as a response, its own send watch: parts of the size the client takes (64 KiB to a slow
    // one), without a wrapper stream, each marked sent once the server holds it (see SharedBytes).
    return selfWatched(stream, (w) => watch = w);
  }
}
