// Reads an upstream body in big chunks: each BYOB read takes all the upstream has ready, up to
// MAX_READ (one hand-off per socket's worth rather than per 64 KiB), skipping bytes already
// received.

/** The biggest chunk. */
export const MAX_READ = 1024 * 1024;

/** The chunks of one upstream body, each in a buffer of its own that nothing writes again. */
export class BodyReader {
  readonly #byob?: ReadableStreamBYOBReader;
  /** Whether each chunk is in a buffer of its own, which nothing else reads (BYOB reads). */
  readonly owned: boolean;
  readonly #plain?: ReadableStreamDefaultReader<Uint8Array>;
  #skip: number;

  /** Reads `body`, dropping its first `skip` bytes (a resume that was answered from byte 0). */
  constructor(body: ReadableStream<Uint8Array>, skip = 0) {
    this.#skip = skip;
    try {
      this.#byob = body.getReader({ mode: "byob" });
    } catch {
      this.#plain = body.getReader(); // not a byte stream: its own chunks
    }
    this.owned = this.#byob !== undefined;
  }

  /** The next chunk, or undefined at the end of the body. */
  async read(): Promise<Uint8Array | undefined> {
    for (;;) {
      let chunk: Uint8Array;
      if (this.#byob) {
        // A read takes what the upstream has ready (a socket's worth), up to MAX_READ. A read that
        // fails takes its buffer along: nothing of it was handed out, so the resume asks for
        // exactly the bytes after the last chunk.
        const { done, value } = await this.#byob.read(new Uint8Array(MAX_READ));
        if (done) return undefined;
        // A short read gives the rest of its buffer back (followers hold chunks for a while).
        chunk = value.length === MAX_READ
          ? value
          : new Uint8Array((value.buffer as ArrayBuffer).transfer(value.length));
      } else {
        const { done, value } = await this.#plain!.read();
        if (done) return undefined;
        chunk = value;
      }
      if (this.#skip >= chunk.length) {
        this.#skip -= chunk.length;
        continue;
      }
      if (this.#skip > 0) {
        chunk = chunk.subarray(this.#skip);
        this.#skip = 0;
      }
      return chunk;
    }
  }

  /** Cancels the body (the reader is done with it). */
  cancel(reason?: unknown): Promise<void> {
    return (this.#byob ?? this.#plain!).cancel(reason);
  }
}
