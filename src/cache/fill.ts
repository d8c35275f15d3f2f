// One blob in flight: the bytes an upstream fill has received, in its spool file (or, once the
// fill stopped caching, in memory), which any number of clients follow at their own pace.

import type { Store } from "./store.ts";

/** Largest chunk a follower reads from the spool at once. */
const READ_CHUNK = 64 * 1024;
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
  readonly #spoolPath?: string;
  readonly #store: Store;
  /** Bytes received from upstream so far. */
  received = 0;
  /** Bytes [0, stored) are in the spool file; the rest, once caching stopped, only in memory. */
  stored = 0;
  /** False once the fill stopped writing to disk: it then only passes bytes through. */
  caching: boolean;
  /** Set when the fill ended: undefined on success. */
  error?: Error;
  settled = false;
  /** The chunk written last: followers caught up with the fill take it from memory, not disk. */
  #latest?: { offset: number; chunk: Uint8Array };
  /** Once caching stopped: received chunks some follower has not read yet. */
  #memory: { offset: number; chunk: Uint8Array }[] = [];
  #memoryBytes = 0;
  readonly #followers = new Set<Follower>();
  #hadFollowers = false;
  #wake: (() => void)[] = [];
  #roomWaiter?: () => void;
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
    this.#spoolPath = spoolPath;
    this.#store = store;
    this.caching = spoolPath !== undefined;
  }

  /** Records a chunk received from upstream (written to the spool while caching). */
  appended(chunk: Uint8Array): void {
    if (this.caching) {
      this.#latest = { offset: this.received, chunk };
      this.stored += chunk.length;
    } else {
      this.#memory.push({ offset: this.received, chunk });
      this.#memoryBytes += chunk.length;
    }
    this.received += chunk.length;
    this.notify();
  }

  /** Stops writing to disk: what is in the spool stays readable, the rest passes through memory. */
  stopCaching(): void {
    this.caching = false;
    this.#latest = undefined;
  }

  /** Wakes every follower waiting for more bytes or the end. */
  notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const resolve of wake) resolve();
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
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#roomWaiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
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

  /** Drops memory chunks every follower has read; wakes the pump when there is room. */
  #trim(): void {
    // Before its first client attaches, a fill keeps what it received for it.
    if (this.#memory.length === 0 || this.#followers.size === 0) return;
    let lowest = Infinity;
    for (const f of this.#followers) lowest = Math.min(lowest, f.pos);
    while (this.#memory.length > 0) {
      const first = this.#memory[0];
      if (first.offset + first.chunk.length > lowest) break;
      this.#memory.shift();
      this.#memoryBytes -= first.chunk.length;
    }
    if (this.#memoryBytes <= PASS_THROUGH_BUFFER && this.#roomWaiter) {
      const wake = this.#roomWaiter;
      this.#roomWaiter = undefined;
      wake();
    }
  }

  #changed(): Promise<void> {
    return new Promise((resolve) => this.#wake.push(resolve));
  }

  /** The bytes at `pos` (up to `stop`) held in memory, if any. */
  #fromMemory(pos: number, stop: number): Uint8Array | undefined {
    const latest = this.#latest;
    const chunks = latest ? [latest] : this.#memory;
    for (const { offset, chunk } of chunks) {
      if (pos >= offset && pos < offset + chunk.length) {
        return chunk.subarray(pos - offset, stop - offset);
      }
    }
    return undefined;
  }

  /**
   * A stream of bytes [start, end) that follows the fill as it grows. It ends with an error (so
   * the client's connection is cut and it retries) when the fill fails, never with a short or
   * unverified body.
   */
  follow(
    start: number,
    end: number | undefined,
    release: (sent: number, complete: boolean) => void,
  ): ReadableStream<Uint8Array> {
    const me: Follower = { pos: start };
    this.#followers.add(me);
    this.#hadFollowers = true;
    let file: Deno.FsFile | undefined;
    /** Where the next read from `file` starts. */
    let filePos = 0;
    let released = false;
    const done = (complete = false) => {
      file?.close();
      file = undefined;
      if (!released) {
        released = true;
        this.#followers.delete(me);
        this.#trim();
        this.#checkIdle();
        release(me.pos - start, complete);
      }
    };
    return new ReadableStream<Uint8Array>({
      pull: async (out) => {
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
            available = this.settled
              ? this.received
              : Math.min(this.received, (this.size ?? Infinity) - 1);
            if (me.pos < available) break;
            if (this.settled) {
              done(true);
              return out.close();
            }
            await this.#changed();
          }
          const stop = Math.min(end ?? Infinity, available);
          const part = this.#fromMemory(me.pos, stop);
          if (part) {
            me.pos += part.length;
            this.#trim();
            return out.enqueue(part);
          }
          if (me.pos >= this.stored) {
            throw new Error(`a client fell behind the uncached fill of ${this.digest}`);
          }
          file ??= await this.#store.openFill(this.#spoolPath!, this.digest);
          if (filePos !== me.pos) await file.seek(me.pos, Deno.SeekMode.Start);
          const buffer = new Uint8Array(Math.min(READ_CHUNK, Math.min(stop, this.stored) - me.pos));
          // The bytes were just written: a synchronous read copies them from the page cache.
          const n = file.readSync(buffer);
          if (n === null) throw new Error(`spool of ${this.digest} ended early`);
          me.pos += n;
          filePos = me.pos;
          this.#trim();
          out.enqueue(n === buffer.length ? buffer : buffer.subarray(0, n));
        } catch (e) {
          done();
          out.error(e);
        }
      },
      cancel: () => done(),
    }, { highWaterMark: 0 });
  }
}
