// A fill's spool as its followers read it once they are behind the bytes the fill keeps in memory:
// each block is read once into a buffer of its own, which every follower near that position
// shares. Fifty clients on one blob cost one read and one buffer per block, not fifty. A block is
// freed once no longer kept and every part of it was sent (see SharedBytes).

import { type Part, SharedBytes } from "./shared_bytes.ts";

/** Bytes read from the spool at once. */
export const BLOCK = 256 * 1024;
/** Blocks kept for the followers behind the one that read them. */
const KEEP = 16;

/** A follower's place in the spool (see {@linkcode SpoolBlocks.at}). */
export interface SpoolCursor {
  block?: SharedBytes;
}

/** The blocks of one spool most recently read. */
export class SpoolBlocks {
  readonly #open: () => Promise<Deno.FsFile>;
  #file?: Promise<Deno.FsFile>;
  /** Oldest first. */
  #blocks: SharedBytes[] = [];
  /** The read in progress: one at a time, since a read is a seek and a read of one file. */
  #reading?: Promise<void>;

  /** Reads the spool that `open` opens (once, then again after `close`). */
  constructor(open: () => Promise<Deno.FsFile>) {
    this.#open = open;
  }

  /**
   * The spool's bytes from `pos`: at least one, at most to `stop`. The spool holds `stored` bytes
   * (more than `pos`); a block is never read past them. The block the part comes from stays the
   * cursor's follower's until it asks for bytes outside it (or {@linkcode leave}s): a follower
   * taking a block in small pieces reads it once, however many others read meanwhile.
   */
  async at(pos: number, stop: number, stored: number, cursor: SpoolCursor): Promise<Part> {
    if (!cursor.block?.has(pos)) {
      this.leave(cursor);
      cursor.block = await this.#find(pos, stored); // the hold #find took is the cursor's
    }
    return cursor.block.part(pos, stop);
  }

  /** The follower of `cursor` is done with its block. */
  leave(cursor: SpoolCursor): void {
    cursor.block?.release();
    cursor.block = undefined;
  }

  /** Closes the file and forgets the blocks (a later read opens it again). */
  async close(): Promise<void> {
    const file = this.#file;
    this.#file = undefined;
    for (const block of this.#blocks.splice(0)) block.unkeep();
    await this.#reading?.catch(() => {});
    (await file?.catch(() => undefined))?.close();
  }

  /**
   * The block holding `pos`, one kept or read now, held once for the caller: between this return
   * and the caller's next step, other followers' reads may push it out of those kept.
   */
  async #find(pos: number, stored: number): Promise<SharedBytes> {
    for (;;) {
      const found = this.#blocks.findLast((block) => block.has(pos));
      if (found) {
        found.hold();
        return found;
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
    this.#blocks.push(new SharedBytes(pos, bytes));
    if (this.#blocks.length > KEEP) this.#blocks.shift()!.unkeep();
  }
}
