// Hashes a fill's bytes. A big blob is hashed in a worker thread: the pump copies each chunk into a
// ring it shares with the thread (a memcpy) instead of running sha256 on the JavaScript thread,
// which has the sockets to serve. A small blob is hashed here: the thread's round trips (and its
// start-up, the first time) would cost more than they save.

import { createHash } from "node:crypto";
import { Worker } from "node:worker_threads";
import { type HashReply, type HashRequest, WORKER_DATA, WORKER_URL } from "./hash_worker.ts";

/** Blobs with at least this Content-Length are hashed in the worker thread. */
export const THREAD_MIN_SIZE = 16 * 1024 * 1024;
/** Bytes of one fill copied to the thread and not hashed yet, at most. */
const RING = 4 * 1024 * 1024;

/** The running digest of one fill's bytes. */
export interface Hasher {
  /** Hashes `chunk` after the bytes before it; the chunk may change once this resolves. */
  update(chunk: Uint8Array): Promise<void>;
  /** The digest as `algorithm:hex`; the hasher is done. */
  digest(): Promise<string>;
  /** Forgets the bytes (the fill failed). */
  close(): void;
}

/** A hasher for a blob of `algorithm` ("sha256", "sha512") and, when known, `size` bytes. */
export function hasher(algorithm: string, size: number | undefined): Hasher {
  return size !== undefined && size >= THREAD_MIN_SIZE
    ? new ThreadHasher(algorithm)
    : new LocalHasher(algorithm);
}

class LocalHasher implements Hasher {
  readonly #algorithm: string;
  readonly #hash;

  constructor(algorithm: string) {
    this.#algorithm = algorithm;
    this.#hash = createHash(algorithm);
  }

  update(chunk: Uint8Array): Promise<void> {
    this.#hash.update(chunk);
    return Promise.resolve();
  }

  digest(): Promise<string> {
    return Promise.resolve(`${this.#algorithm}:${this.#hash.digest("hex")}`);
  }

  close(): void {}
}

/** One fill's bytes, hashed by the shared thread out of a ring of RING bytes. */
class ThreadHasher implements Hasher {
  readonly #algorithm: string;
  readonly #thread: HashThread;
  readonly #id: number;
  readonly #ring = new Uint8Array(new SharedArrayBuffer(RING));
  /** Bytes copied into the ring so far. */
  #head = 0;
  /** Bytes copied and not hashed yet. */
  #pending = 0;
  #wake?: () => void;
  #digest?: { resolve: (hex: string) => void; reject: (e: Error) => void };
  #error?: Error;

  constructor(algorithm: string) {
    this.#algorithm = algorithm;
    this.#thread = HashThread.shared();
    this.#id = this.#thread.start(this, algorithm, this.#ring.buffer as SharedArrayBuffer);
  }

  async update(chunk: Uint8Array): Promise<void> {
    for (let at = 0; at < chunk.length;) {
      while (this.#pending === RING && !this.#error) {
        await new Promise<void>((resolve) => this.#wake = resolve);
      }
      if (this.#error) throw this.#error;
      const offset = this.#head % RING;
      const n = Math.min(chunk.length - at, RING - offset, RING - this.#pending);
      this.#ring.set(chunk.subarray(at, at + n), offset);
      this.#thread.send({ op: "data", id: this.#id, at: offset, length: n });
      this.#head += n;
      this.#pending += n;
      at += n;
    }
  }

  digest(): Promise<string> {
    if (this.#error) return Promise.reject(this.#error);
    return new Promise<string>((resolve, reject) => {
      this.#digest = { resolve: (hex) => resolve(`${this.#algorithm}:${hex}`), reject };
      this.#thread.send({ op: "end", id: this.#id });
    });
  }

  close(): void {
    this.#thread.drop(this.#id);
  }

  /** What the thread answered about this fill. */
  answered(reply: HashReply): void {
    if (reply.op === "hashed") {
      this.#pending -= reply.length;
    } else if (reply.op === "digest") {
      this.#thread.forget(this.#id);
      this.#digest?.resolve(reply.hex);
    } else {
      this.failed(new Error(`hashing failed: ${reply.message}`));
    }
    this.#wakeUp();
  }

  /** The thread failed: the fill cannot be verified. */
  failed(error: Error): void {
    this.#error ??= error;
    this.#thread.forget(this.#id);
    this.#digest?.reject(this.#error);
    this.#wakeUp();
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

/**
 * The worker thread shared by every fill, started by the first big fill and kept for the next. It
 * keeps the process alive only while it has fills to hash.
 */
class HashThread {
  static #shared?: HashThread;
  readonly #worker: Worker;
  readonly #jobs = new Map<number, ThreadHasher>();
  #nextId = 0;

  static shared(): HashThread {
    HashThread.#shared ??= new HashThread();
    return HashThread.#shared;
  }

  constructor() {
    const entry = `data:text/javascript,${
      encodeURIComponent(`import ${JSON.stringify(WORKER_URL)};`)
    }`;
    this.#worker = new Worker(new URL(entry), { workerData: WORKER_DATA });
    this.#worker.unref();
    this.#worker.on("message", (reply: HashReply) => this.#jobs.get(reply.id)?.answered(reply));
    const fail = (why: string) => {
      if (HashThread.#shared === this) HashThread.#shared = undefined;
      const error = new Error(`the hash thread ${why}`);
      for (const job of [...this.#jobs.values()]) job.failed(error);
    };
    this.#worker.on("error", (e: Error) => fail(`failed: ${e.message}`));
    this.#worker.on("exit", (code: number) => fail(`exited with code ${code}`));
  }

  /** Registers a fill's ring; returns the fill's id. */
  start(job: ThreadHasher, algorithm: string, ring: SharedArrayBuffer): number {
    const id = ++this.#nextId;
    if (this.#jobs.size === 0) this.#worker.ref();
    this.#jobs.set(id, job);
    this.send({ op: "start", id, algorithm, ring });
    return id;
  }

  send(request: HashRequest): void {
    this.#worker.postMessage(request);
  }

  /** Stops hashing a fill that failed. */
  drop(id: number): void {
    if (!this.#jobs.has(id)) return;
    this.send({ op: "drop", id });
    this.forget(id);
  }

  /** The fill needs no more answers. */
  forget(id: number): void {
    if (this.#jobs.delete(id) && this.#jobs.size === 0) this.#worker.unref();
  }
}
