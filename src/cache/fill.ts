// Blob fills: one upstream fetch per digest, written to a spool file that any number of clients
// follow at their own pace; resumed with Range when upstream breaks; verified before commit.

import { createHash } from "node:crypto";
import { log } from "../log.ts";
import { RegistryError } from "../oci/errors.ts";
import type { Eviction } from "./eviction.ts";
import type { Store } from "./store.ts";

/** How often a fill resumes a broken upstream transfer before giving up. */
const MAX_RESUMES = 5;
/** Largest chunk a follower reads from the spool at once. */
const READ_CHUNK = 64 * 1024;

/** Opens the upstream body from `offset` (0: the whole blob; else a `Range: bytes=offset-`). */
export type OpenUpstream = (offset: number) => Promise<Response>;

/** Counters for metrics. */
export interface FillStats {
  started: number;
  completed: number;
  failed: number;
  digestMismatches: number;
  resumes: number;
  /** Requests that joined a fill another request started. */
  coalesced: number;
}

/** One blob being fetched from upstream into the cache. */
export class Fill {
  readonly digest: string;
  /** Total size from Content-Length, when the upstream said. */
  readonly size?: number;
  /** The registry and repository the fill was started for. */
  readonly origin: { registry: string; repository: string };
  readonly #spoolPath: string;
  readonly #store: Store;
  /** Bytes on disk so far (readable by followers). */
  written = 0;
  /** Set when the fill ended: undefined on success. */
  error?: Error;
  settled = false;
  /** The chunk written last: followers caught up with the fill take it from memory, not disk. */
  #latest?: { offset: number; chunk: Uint8Array };
  #wake: (() => void)[] = [];

  constructor(
    digest: string,
    size: number | undefined,
    origin: Fill["origin"],
    spoolPath: string,
    store: Store,
  ) {
    this.digest = digest;
    this.size = size;
    this.origin = origin;
    this.#spoolPath = spoolPath;
    this.#store = store;
  }

  /** Records a chunk the pump has written to the spool and wakes the followers. */
  appended(chunk: Uint8Array): void {
    this.#latest = { offset: this.written, chunk };
    this.written += chunk.length;
    this.notify();
  }

  /** Wakes every follower waiting for more bytes or the end. */
  notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const resolve of wake) resolve();
  }

  #changed(): Promise<void> {
    return new Promise((resolve) => this.#wake.push(resolve));
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
    let file: Deno.FsFile | undefined;
    let pos = start;
    /** Where the next read from `file` starts. */
    let filePos = 0;
    let released = false;
    const done = (complete = false) => {
      file?.close();
      file = undefined;
      if (!released) release(pos - start, complete);
      released = true;
    };
    return new ReadableStream<Uint8Array>({
      pull: async (out) => {
        try {
          let available: number;
          for (;;) {
            if (this.error) throw this.error;
            if (end !== undefined && pos >= end) {
              done(true);
              return out.close();
            }
            // The last byte waits for verification: with a Content-Length, a client takes the
            // body as complete once it has every byte, so a bad blob must end before that.
            available = this.settled
              ? this.written
              : Math.min(this.written, (this.size ?? Infinity) - 1);
            if (pos < available) break;
            if (this.settled) {
              done(true);
              return out.close();
            }
            await this.#changed();
          }
          const stop = Math.min(end ?? Infinity, available);
          const latest = this.#latest;
          if (latest && pos >= latest.offset && pos < latest.offset + latest.chunk.length) {
            const part = latest.chunk.subarray(pos - latest.offset, stop - latest.offset);
            pos += part.length;
            return out.enqueue(part);
          }
          file ??= await this.#store.openFill(this.#spoolPath, this.digest);
          if (filePos !== pos) await file.seek(pos, Deno.SeekMode.Start);
          const buffer = new Uint8Array(Math.min(READ_CHUNK, stop - pos));
          // The bytes were just written: a synchronous read copies them from the page cache.
          const n = file.readSync(buffer);
          if (n === null) throw new Error(`spool of ${this.digest} ended early`);
          pos += n;
          filePos = pos;
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

/** All fills in flight, keyed by digest, so that each blob is fetched upstream once. */
export class Fills {
  readonly #store: Store;
  readonly #eviction: Eviction;
  readonly #inflight = new Map<string, Promise<Fill>>();
  readonly stats: FillStats = {
    started: 0,
    completed: 0,
    failed: 0,
    digestMismatches: 0,
    resumes: 0,
    coalesced: 0,
  };

  constructor(store: Store, eviction: Eviction) {
    this.#store = store;
    this.#eviction = eviction;
  }

  /** The fill in flight for `digest`, if any. */
  get(digest: string): Promise<Fill> | undefined {
    return this.#inflight.get(digest);
  }

  /** Number of fills in flight. */
  get active(): number {
    return this.#inflight.size;
  }

  /**
   * Starts filling `digest`: the first upstream response must be a 200 (`open` throws a
   * RegistryError otherwise, which every waiting client receives). Resolves once the upstream
   * answered; the body is then pumped to disk in the background, whoever is still reading.
   */
  begin(digest: string, origin: Fill["origin"], open: OpenUpstream): Promise<Fill> {
    this.stats.started++;
    const started = (async () => {
      const response = await open(0);
      const length = response.headers.get("content-length");
      const size = length !== null && !response.headers.has("content-encoding")
        ? Number(length)
        : undefined;
      const spool = await this.#store.createSpool().catch(async (e) => {
        await response.body?.cancel();
        throw e;
      });
      const fill = new Fill(digest, size, origin, spool.path, this.#store);
      const release = this.#eviction.pin("blob", digest);
      this.#pump(fill, response, spool.file, spool.path, open)
        .finally(() => {
          release();
          this.#inflight.delete(digest);
        });
      return fill;
    })();
    this.#inflight.set(digest, started);
    started.catch(() => this.#inflight.delete(digest));
    return started;
  }

  async #pump(
    fill: Fill,
    first: Response,
    file: Deno.FsFile,
    spoolPath: string,
    open: OpenUpstream,
  ): Promise<void> {
    const began = performance.now();
    const hash = createHash(fill.digest.startsWith("sha512:") ? "sha512" : "sha256");
    let body: ReadableStream<Uint8Array> | null = first.body;
    let resumes = 0;
    try {
      for (;;) {
        try {
          if (!body) throw new Error("upstream sent no body");
          for await (const chunk of body) {
            hash.update(chunk);
            // A synchronous write into the page cache costs microseconds; an async op per chunk
            // costs a thread hop each way and made fills 1.7x slower (see BENCHMARKS.md).
            for (let at = 0; at < chunk.length;) at += file.writeSync(chunk.subarray(at));
            fill.appended(chunk);
            if (fill.size !== undefined && fill.written > fill.size) {
              throw new RegistryError("BLOB_UNKNOWN", "upstream sent more than Content-Length");
            }
          }
          if (fill.size === undefined || fill.written === fill.size) break;
          throw new Error(`upstream body ended at ${fill.written} of ${fill.size} bytes`);
        } catch (e) {
          if (e instanceof RegistryError || resumes >= MAX_RESUMES) throw e;
          resumes++;
          this.stats.resumes++;
          log.warn("resuming {digest} from byte {offset} after: {error}", {
            digest: fill.digest,
            offset: fill.written,
            error: String((e as Error)?.message ?? e),
            resume: resumes,
          });
          body = await this.#resume(fill, open);
        }
      }
      const digest = `${fill.digest.split(":")[0]}:${hash.digest("hex")}`;
      if (digest !== fill.digest) {
        this.stats.digestMismatches++;
        throw new RegistryError(
          "DIGEST_INVALID",
          `upstream sent ${fill.written} bytes with digest ${digest} for blob ${fill.digest}`,
          { status: 502 },
        );
      }
      await file.syncData();
      file.close();
      await this.#store.commitBlob(spoolPath, fill.digest);
      this.#eviction.added("blob", fill.digest, fill.written);
      this.stats.completed++;
      log.info("filled {digest}: {bytes} bytes in {durationMs} ms, {resumes} resumes", {
        digest: fill.digest,
        bytes: fill.written,
        durationMs: Math.round(performance.now() - began),
        resumes,
        registry: fill.origin.registry,
        repository: fill.origin.repository,
      });
    } catch (e) {
      fill.error = e instanceof Error ? e : new Error(String(e));
      this.stats.failed++;
      log.error("fill of {digest} failed after {bytes} bytes: {error}", {
        digest: fill.digest,
        bytes: fill.written,
        error: fill.error.message,
      });
      await body?.cancel().catch(() => {});
      try {
        file.close();
      } catch { /* already closed */ }
      await Deno.remove(spoolPath).catch(() => {});
    } finally {
      fill.settled = true;
      fill.notify();
    }
  }

  /** Asks upstream for the rest; a 200 (Range ignored) is read past what we already have. */
  async #resume(fill: Fill, open: OpenUpstream): Promise<ReadableStream<Uint8Array> | null> {
    const response = await open(fill.written);
    const range = /^bytes (\d+)-/.exec(response.headers.get("content-range") ?? "");
    if (response.status === 206 && range && Number(range[1]) === fill.written) {
      return response.body;
    }
    if (response.status === 200 && response.body) return skip(response.body, fill.written);
    await response.body?.cancel();
    throw new Error(`resume answered ${response.status} ${response.headers.get("content-range")}`);
  }
}

/** The stream without its first `count` bytes. */
function skip(body: ReadableStream<Uint8Array>, count: number): ReadableStream<Uint8Array> {
  let left = count;
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, out) {
        if (left >= chunk.length) {
          left -= chunk.length;
          return;
        }
        out.enqueue(chunk.subarray(left));
        left = 0;
      },
    }),
  );
}
