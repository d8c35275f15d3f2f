// A fill's spool as its followers read it once they are behind the bytes the fill keeps in memory:
// each block is read once into a buffer of its own, which every follower near that position
// shares. Fifty clients on one blob cost one read and one buffer per block, not fifty. A block's
// memory is freed as soon as it is no longer kept and the HTTP server holds every part of it
// handed out, rather than at V8's next collection: clients that arrive apart read blocks of their
// own, and those left to the collector grew the mirror by 210-245 MB with fifty of them.

/** Bytes read from the spool at once. */
export const BLOCK = 256 * 1024;
/** Blocks kept for the followers behind the one that read them. */
const KEEP = 16;

/** Part of a block, for one follower. */
export interface SpoolPart {
  bytes: Uint8Array;
  /**
   * To call once the part is no longer read in JavaScript (the HTTP server holds its own reference
   * to the memory): once every part of a block is, and the block is no longer kept, its memory is
   * freed. A part never marked sent keeps its block for the collector.
   */
  sent: () => void;
}

interface Block {
  offset: number;
  bytes: Uint8Array;
  /** Parts handed out and not yet sent. */
  held: number;
  kept: boolean;
}

/** The blocks of one spool most recently read. */
export class SpoolBlocks {
  readonly #open: () => Promise<Deno.FsFile>;
  #file?: Promise<Deno.FsFile>;
  /** Oldest first. */
  #blocks: Block[] = [];
  /** The read in progress: one at a time, since a read is a seek and a read of one file. */
  #reading?: Promise<void>;
  /** Blocks whose memory was freed, since the start. */
  freed = 0;

  /** Reads the spool that `open` opens (once, then again after `close`). */
  constructor(open: () => Promise<Deno.FsFile>) {
    this.#open = open;
  }

  /**
   * The spool's bytes from `pos`: at least one, at most to `stop`. The spool holds `stored` bytes
   * (more than `pos`); a block is never read past them.
   */
  async at(pos: number, stop: number, stored: number): Promise<SpoolPart> {
    for (;;) {
      for (let i = this.#blocks.length - 1; i >= 0; i--) {
        const block = this.#blocks[i];
        const { offset, bytes } = block;
        if (pos >= offset && pos < offset + bytes.length) return this.#part(block, pos, stop);
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
    for (const block of this.#blocks.splice(0)) this.#unkeep(block);
    await this.#reading?.catch(() => {});
    (await file?.catch(() => undefined))?.close();
  }

  #part(block: Block, pos: number, stop: number): SpoolPart {
    block.held++;
    let sent = false;
    return {
      bytes: block.bytes.subarray(pos - block.offset, stop - block.offset),
      sent: () => {
        if (sent) return;
        sent = true;
        block.held--;
        this.#freeIfDone(block);
      },
    };
  }

  #unkeep(block: Block): void {
    block.kept = false;
    this.#freeIfDone(block);
  }

  #freeIfDone(block: Block): void {
    if (block.kept || block.held > 0) return;
    const buffer = block.bytes.buffer as ArrayBuffer;
    if (buffer.detached) return;
    try {
      // Detaching drops JavaScript's reference to the memory now; whoever else holds it keeps it.
      buffer.transfer(0);
      this.freed++;
    } catch { /* not detachable: the collector frees it */ }
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
    this.#blocks.push({ offset: pos, bytes, held: 0, kept: true });
    if (this.#blocks.length > KEEP) this.#unkeep(this.#blocks.shift()!);
  }
}
