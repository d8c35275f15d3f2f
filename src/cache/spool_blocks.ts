// A fill's spool as its followers read it once they are behind the bytes the fill keeps in memory:
// each block is read once into a buffer of its own, which every follower near that position
// shares. Fifty clients on one blob cost one read and one buffer per block, not fifty.

/** Bytes read from the spool at once. */
export const BLOCK = 256 * 1024;
/** Blocks kept for the followers behind the one that read them. */
const KEEP = 16;

/** The blocks of one spool most recently read. */
export class SpoolBlocks {
  readonly #open: () => Promise<Deno.FsFile>;
  #file?: Promise<Deno.FsFile>;
  /** Oldest first. */
  #blocks: { offset: number; bytes: Uint8Array }[] = [];
  /** The read in progress: one at a time, since a read is a seek and a read of one file. */
  #reading?: Promise<void>;

  /** Reads the spool that `open` opens (once, then again after `close`). */
  constructor(open: () => Promise<Deno.FsFile>) {
    this.#open = open;
  }

  /**
   * The spool's bytes from `pos`: at least one, at most to `stop`. The spool holds `stored` bytes
   * (more than `pos`); a block is never read past them.
   */
  async at(pos: number, stop: number, stored: number): Promise<Uint8Array> {
    for (;;) {
      for (let i = this.#blocks.length - 1; i >= 0; i--) {
        const { offset, bytes } = this.#blocks[i];
        if (pos >= offset && pos < offset + bytes.length) {
          return bytes.subarray(pos - offset, stop - offset);
        }
      }
      if (this.#reading) {
        // Another follower's read may bring these bytes too.
        await this.#reading.catch(() => {});
        continue;
      }
      const reading = this.#read(pos, Math.min(pos + BLOCK, stored));
      this.#reading = reading;
      try {
        await reading;
      } finally {
        this.#reading = undefined;
      }
    }
  }

  /** Closes the file and forgets the blocks (a later read opens it again). */
  async close(): Promise<void> {
    const file = this.#file;
    this.#file = undefined;
    this.#blocks = [];
    await this.#reading?.catch(() => {});
    (await file?.catch(() => undefined))?.close();
  }

  /** Reads the block [pos, stop). */
  async #read(pos: number, stop: number): Promise<void> {
    this.#file ??= this.#open();
    const file = await this.#file;
    file.seekSync(pos, Deno.SeekMode.Start);
    const bytes = new Uint8Array(stop - pos);
    // The bytes were just written: a synchronous read copies them from the page cache, without the
    // round trip to the blocking pool that would leave the follower waiting between blocks.
    for (let at = 0; at < bytes.length;) {
      const n = file.readSync(bytes.subarray(at));
      if (n === null) throw new Error(`the spool ended at byte ${pos + at}, before ${stop}`);
      at += n;
    }
    this.#blocks.push({ offset: pos, bytes });
    if (this.#blocks.length > KEEP) this.#blocks.shift();
  }
}
