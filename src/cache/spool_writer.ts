// Writes a fill's chunks to its spool file in order and off the JavaScript thread (an async write
// runs on Deno's blocking pool), while the pump goes on reading; the bytes waiting are bounded.

/** The spool file as the writer uses it. */
export type SpoolFile = Pick<Deno.FsFile, "write">;

/** What a writer reports as it goes. */
export interface WriterEvents {
  /** The next `bytes` queued bytes are in the file. */
  wrote(bytes: number): void;
  /** A write failed: nothing more is written. */
  failed(error: unknown): void;
}

/** One spool file's writes, one at a time, in the order they were queued. */
export class SpoolWriter {
  readonly #file: SpoolFile;
  readonly #events: WriterEvents;
  #queue: Uint8Array[] = [];
  /** Bytes queued or being written. */
  #pending = 0;
  #busy = false;
  #waiting: (() => void)[] = [];
  /** The first write error: nothing is written after it. */
  error?: unknown;

  constructor(file: SpoolFile, events: WriterEvents) {
    this.#file = file;
    this.#events = events;
  }

  /** Bytes queued or being written. */
  get pending(): number {
    return this.#pending;
  }

  /** Queues `chunk`; the caller must not change it afterwards. Ignored after an error. */
  write(chunk: Uint8Array): void {
    if (this.error !== undefined) return;
    this.#queue.push(chunk);
    this.#pending += chunk.length;
    if (!this.#busy) this.#run();
  }

  /** Resolves once at most `limit` bytes wait to be written, or a write failed. */
  async room(limit: number): Promise<void> {
    while (this.#pending > limit && this.error === undefined) {
      await new Promise<void>((resolve) => this.#waiting.push(resolve));
    }
  }

  /** Resolves once everything queued is written; throws the write error, if any. */
  async flush(): Promise<void> {
    await this.room(0);
    if (this.error !== undefined) throw this.error;
  }

  async #run(): Promise<void> {
    this.#busy = true;
    try {
      for (let chunk = this.#queue.shift(); chunk; chunk = this.#queue.shift()) {
        for (let at = 0; at < chunk.length;) {
          const n = await this.#file.write(chunk.subarray(at));
          at += n;
          this.#pending -= n;
          this.#events.wrote(n);
        }
        this.#wakeUp();
      }
    } catch (e) {
      this.error = e;
      this.#queue = [];
      this.#pending = 0;
      this.#events.failed(e);
    } finally {
      this.#busy = false;
      this.#wakeUp();
    }
  }

  #wakeUp(): void {
    const waiting = this.#waiting;
    this.#waiting = [];
    for (const wake of waiting) wake();
  }
}
