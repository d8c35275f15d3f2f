// Blob fills: one upstream fetch per registry and digest, written to a spool file that clients
// follow (see fill.ts); resumed with Range when upstream breaks; verified before commit. When the
// disk fails, the fill stops caching and its clients keep receiving the upstream bytes.

import { createHash } from "node:crypto";
import { log } from "../log.ts";
import { RegistryError } from "../oci/errors.ts";
import { BodyReader } from "./body_reader.ts";
import type { Eviction } from "./eviction.ts";
import { Fill } from "./fill.ts";
import { SpoolWriter } from "./spool_writer.ts";
import type { Spool, Store } from "./store.ts";

/** How often a fill reconnects (failed reconnects included) after a broken transfer. */
export const MAX_RESUMES = 5;
/** First wait before a reconnect; doubled each time, with jitter. */
const RESUME_DELAY_MS = 200;
/** Without a Content-Length, caching stops past this many bytes (the bytes still pass through). */
export const UNKNOWN_LENGTH_LIMIT = 1024 ** 3;
/** Received bytes waiting to be written to the spool, at most: the pump waits beyond this. */
const WRITE_AHEAD = 4 * 1024 * 1024;

// node:crypto sets itself up on first use: here, rather than on the first fill's way to its first
// byte.
createHash("sha256").update(new Uint8Array(1));

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
  /** Local write failures (full disk, I/O errors): the fill went on without caching. */
  diskErrors: number;
  /** Fills whose bytes reached clients without being cached (disk error, too big, no length). */
  passThrough: number;
}

/** What fills need from outside; tests pass their own sleep. */
export interface FillDeps {
  store: Store;
  eviction: Eviction;
  sleep?: (ms: number) => Promise<void>;
  /** Called once a fill's blob is committed: its origin registry supplied these bytes. */
  committed?: (fill: Fill) => Promise<void>;
}

/** All fills in flight, keyed by digest, so that each blob is fetched upstream once. */
export class Fills {
  readonly #store: Store;
  readonly #eviction: Eviction;
  readonly #sleep: (ms: number) => Promise<void>;
  readonly #committed?: (fill: Fill) => Promise<void>;
  /** Keyed by registry and digest: a fill is never shared with another registry's clients. */
  readonly #inflight = new Map<string, Promise<Fill>>();
  readonly stats: FillStats = {
    started: 0,
    completed: 0,
    failed: 0,
    digestMismatches: 0,
    resumes: 0,
    coalesced: 0,
    diskErrors: 0,
    passThrough: 0,
  };

  constructor(deps: FillDeps) {
    this.#store = deps.store;
    this.#eviction = deps.eviction;
    this.#sleep = deps.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    this.#committed = deps.committed;
  }

  /** The fill of `digest` from `registry` in flight, if any (one that stopped caching is not). */
  get(registry: string, digest: string): Promise<Fill> | undefined {
    return this.#inflight.get(fillKey(registry, digest));
  }

  /** Number of fills in flight. */
  get active(): number {
    return this.#inflight.size;
  }

  /**
   * Starts filling `digest`: the first upstream response must be a 200 (`open` throws a
   * RegistryError otherwise, which every waiting client receives). Resolves once the upstream
   * answered; the body is then pumped in the background, whoever is still reading.
   */
  begin(digest: string, origin: Fill["origin"], open: OpenUpstream): Promise<Fill> {
    this.stats.started++;
    // deno-lint-ignore prefer-const -- assigned once, read by the closures below
    let started: Promise<Fill>;
    const key = fillKey(origin.registry, digest);
    const forget = () => {
      if (this.#inflight.get(key) === started) this.#inflight.delete(key);
    };
    started = (async () => {
      // The spool is created while the upstream is asked: the first byte does not wait for it.
      const creating: Promise<{ spool?: Spool; error?: unknown }> = this.#store.createSpool()
        .then((spool) => ({ spool }), (error) => ({ error }));
      let response: Response;
      try {
        response = await open(0);
      } catch (e) {
        creating.then(discard);
        throw e;
      }
      const length = response.headers.get("content-length");
      const size = length !== null && !response.headers.has("content-encoding")
        ? Number(length)
        : undefined;
      const fits = size === undefined || this.#eviction.fits(size);
      const created = await creating;
      if (!fits) discard(created);
      else if (created.error !== undefined) this.#diskError(digest, 0, created.error);
      const spool = fits ? created.spool : undefined;
      const fill = new Fill(digest, size, origin, spool?.path, this.#store);
      if (!spool) {
        this.#passThrough(fill, fits ? "disk" : "larger than cache.maxSize");
        // Later clients start their own fill: this one keeps no bytes for them.
        forget();
      }
      const reservation = new Reservation(this.#eviction, spool ? size : undefined);
      const unreserve = () => reservation.release();
      const unpin = this.#eviction.pin("blob", digest);
      this.#pump(fill, response, spool, open, reservation, forget)
        .finally(() => {
          unreserve();
          unpin();
          forget();
          fill.whenIdle(() => {
            if (spool && (fill.error || !fill.caching)) Deno.remove(spool.path).catch(() => {});
          });
        });
      return fill;
    })();
    this.#inflight.set(key, started);
    started.catch(forget);
    return started;
  }

  /**
   * Reads the upstream body (resuming it when it breaks), hashes it and hands each chunk to the
   * followers, while the spool is written behind it. Per chunk, the JavaScript thread hashes and
   * hands over: reads are big (BodyReader) and writes run on Deno's blocking pool (SpoolWriter).
   */
  async #pump(
    fill: Fill,
    first: Response,
    spool: Spool | undefined,
    open: OpenUpstream,
    reservation: Reservation,
    forget: () => void,
  ): Promise<void> {
    const file = spool?.file;
    const unreserve = () => reservation.release();
    const began = performance.now();
    const algorithm = fill.digest.startsWith("sha512:") ? "sha512" : "sha256";
    const hash = createHash(algorithm);
    let body = first.body ? new BodyReader(first.body) : undefined;
    const resumes = { count: 0 };
    /** Stops caching: the writes queued still land (unless one failed), then the file closes. */
    const stopCaching = async (why: string, error?: unknown) => {
      if (!fill.caching) return;
      if (error !== undefined) this.#diskError(fill.digest, fill.stored, error);
      fill.stopCaching();
      this.#passThrough(fill, why);
      unreserve();
      // New clients start a fill of their own (the disk may have room again by then).
      forget();
      await writer?.room(0);
      closeQuietly(file);
    };
    const writer = file && new SpoolWriter(file, {
      wrote: (bytes) => fill.wrote(bytes),
      // At once, not at the next chunk: the upstream may be slow to send it.
      failed: (e) => stopCaching("disk", e),
    });
    try {
      // The handler sends the response head now, before any byte of the body is worked on.
      await letIoRun();
      for (;;) {
        let chunk: Uint8Array | undefined;
        try {
          if (!body) throw new Error("upstream sent no body");
          chunk = await body.read();
          if (chunk === undefined) {
            if (fill.size === undefined || fill.received === fill.size) break;
            throw new Error(`upstream body ended at ${fill.received} of ${fill.size} bytes`);
          }
        } catch (e) {
          body = await this.#reconnect(fill, open, e, resumes);
          continue;
        }
        if (fill.size !== undefined && fill.received + chunk.length > fill.size) {
          throw new RegistryError("BLOB_UNKNOWN", "upstream sent more than Content-Length");
        }
        fill.appended(chunk, body.owned);
        if (fill.caching) {
          reservation.ahead(fill.received);
          writer!.write(chunk);
        }
        hash.update(chunk);
        // The first chunk goes out now, not after the chunks upstream has ready behind it.
        if (fill.received === chunk.length) await letIoRun();
        if (fill.caching) {
          await writer!.room(WRITE_AHEAD);
          await fill.paced();
        }
        if (fill.caching && fill.size === undefined && fill.received > UNKNOWN_LENGTH_LIMIT) {
          await stopCaching("no Content-Length and past the bound");
        }
        if (!fill.caching) await fill.room();
      }
      const digest = `${algorithm}:${hash.digest("hex")}`;
      if (digest !== fill.digest) {
        this.stats.digestMismatches++;
        throw new RegistryError(
          "DIGEST_INVALID",
          `upstream sent ${fill.received} bytes with digest ${digest} for blob ${fill.digest}`,
          { status: 502 },
        );
      }
      if (this.#store.slowCommit) {
        // The clients have every verified byte: they need not wait for the upload.
        fill.verified = true;
        fill.notify();
      }
      if (fill.caching) {
        try {
          await writer!.flush();
          await this.#commit(fill, spool!, unreserve);
        } catch (e) {
          await stopCaching("disk", e);
        }
      }
      this.stats.completed++;
      log.info("filled {digest}: {bytes} bytes in {durationMs} ms, {resumes} resumes", {
        digest: fill.digest,
        bytes: fill.received,
        durationMs: Math.round(performance.now() - began),
        resumes: resumes.count,
        cached: fill.caching,
        registry: fill.origin.registry,
        repository: fill.origin.repository,
      });
    } catch (e) {
      fill.error = e instanceof Error ? e : new Error(String(e));
      // Nobody joins a failed fill, and its followers are cut now, not after the cleanup below.
      forget();
      fill.notify();
      this.stats.failed++;
      log.error("fill of {digest} failed after {bytes} bytes: {error}", {
        digest: fill.digest,
        bytes: fill.received,
        error: fill.error.message,
      });
      await body?.cancel().catch(() => {});
      await writer?.room(0);
      closeQuietly(file);
    } finally {
      fill.settled = true;
      fill.notify();
    }
  }

  /** Moves a verified spool into the store and counts it. */
  async #commit(fill: Fill, spool: Spool, unreserve: () => void): Promise<void> {
    await spool.file.syncData();
    spool.file.close();
    await this.#store.commitBlob(spool.path, fill.digest);
    unreserve(); // the reservation becomes the object itself
    this.#eviction.added("blob", fill.digest, fill.received);
    await this.#committed?.(fill);
  }

  /**
   * Reconnects after a broken transfer: `Range: bytes=N-`, or a 200 read past what we have. A
   * failed reconnect counts as an attempt; attempts wait longer each time.
   */
  async #reconnect(
    fill: Fill,
    open: OpenUpstream,
    cause: unknown,
    attempts: { count: number },
  ): Promise<BodyReader> {
    let error = cause;
    while (attempts.count < MAX_RESUMES) {
      if (error instanceof RegistryError) throw error;
      const attempt = ++attempts.count;
      this.stats.resumes++;
      log.warn("resuming {digest} from byte {offset} after: {error}", {
        digest: fill.digest,
        offset: fill.received,
        error: String((error as Error)?.message ?? error),
        resume: attempt,
      });
      const backoff = RESUME_DELAY_MS * 2 ** (attempt - 1);
      await this.#sleep(backoff / 2 + Math.random() * backoff / 2);
      try {
        return await this.#resume(fill, open);
      } catch (e) {
        error = e;
      }
    }
    throw error;
  }

  /** Asks upstream for the rest; a 200 (Range ignored) is read past what we already have. */
  async #resume(fill: Fill, open: OpenUpstream): Promise<BodyReader> {
    const response = await open(fill.received);
    const range = /^bytes (\d+)-/.exec(response.headers.get("content-range") ?? "");
    if (response.status === 206 && range && Number(range[1]) === fill.received && response.body) {
      return new BodyReader(response.body);
    }
    if (response.status === 200 && response.body) {
      return new BodyReader(response.body, fill.received);
    }
    await response.body?.cancel();
    throw new Error(`resume answered ${response.status} ${response.headers.get("content-range")}`);
  }

  #diskError(digest: string, bytes: number, error: unknown): undefined {
    this.stats.diskErrors++;
    log.error("fill of {digest} stopped caching at {bytes} bytes: disk: {error}", {
      digest,
      bytes,
      error: String((error as Error)?.message ?? error),
    });
    return undefined;
  }

  #passThrough(fill: Fill, why: string): void {
    this.stats.passThrough++;
    log.warn("passing {digest} through without caching: {reason}", {
      digest: fill.digest,
      reason: why,
      size: fill.size ?? null,
    });
  }
}

/**
 * A fill's Content-Length counted against maxSize ahead of its writes, one step at a time: room is
 * made before the bytes land, and an upstream that claims a huge length and drips cannot make the
 * cache evict more than a step for it.
 */
class Reservation {
  readonly #eviction: Eviction;
  readonly #size?: number;
  #reserved = 0;
  #releases: (() => void)[] = [];

  constructor(eviction: Eviction, size: number | undefined) {
    this.#eviction = eviction;
    this.#size = size;
    this.ahead(0);
  }

  /** Reserves up to a step beyond `written` bytes (never beyond the size). */
  ahead(written: number): void {
    const step = this.#eviction.reserveStep;
    if (this.#size === undefined || written + step / 2 < this.#reserved) return;
    const target = Math.min(this.#size, written + step);
    if (target <= this.#reserved) return;
    this.#releases.push(this.#eviction.reserve(target - this.#reserved));
    this.#reserved = target;
  }

  release(): void {
    for (const release of this.#releases) release();
    this.#releases = [];
    this.#reserved = 0;
  }
}

function fillKey(registry: string, digest: string): string {
  return `${registry}@${digest}`;
}

/** Closes and removes a spool that will not be used. */
function discard(created: { spool?: Spool }): void {
  if (!created.spool) return;
  closeQuietly(created.spool.file);
  Deno.remove(created.spool.path).catch(() => {});
}

/**
 * Resolves once Deno's own tasks have had their turn, such as the HTTP server writing a response
 * head or chunk it was handed. While JavaScript keeps finding work (upstream bytes already
 * received), they do not: neither a resolved promise nor a message posted to itself lets them
 * run, but an op completed on another thread does. Measured with strace on a cold pull: without
 * this, the response head left with the first chunk and the first chunk after four more were
 * hashed (3-5 ms later); with it, right after the handler returned.
 */
async function letIoRun(): Promise<void> {
  try {
    await Deno.stat("/");
  } catch {
    // Not allowed to look: no turn, nothing else lost.
  }
}

/** Closes a spool file that may be closed already. */
function closeQuietly(file: Deno.FsFile | undefined): void {
  try {
    file?.close();
  } catch { /* already closed */ }
}
