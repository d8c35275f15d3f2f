// Bytes that followers of a fill send parts of (a chunk the fill received, a block of its spool),
// freed as soon as nothing in JavaScript reads them any more, rather than at V8's next collection.
// Buffers handed to Deno's HTTP server outlive a scavenge or two while the socket takes them, move
// to the old generation and pile up until a full collection: fifty clients arriving 30 ms apart on
// one cold 1 GiB blob grew the mirror by 223-245 MB that way.

/** Part of shared bytes, for one follower. */
export interface Part {
  bytes: Uint8Array;
  /**
   * To call once the part is no longer read in JavaScript (the HTTP server holds its own reference
   * to the memory: see SendWatch.handed). A part never marked sent keeps its bytes for the collector.
   */
  sent: () => void;
}

/**
 * Bytes [offset, end) of a blob, in a buffer nothing else writes. When the buffer is ours alone
 * (`owned`), it is freed once no longer kept (no more parts will be handed out) and every part
 * handed out was sent.
 */
export class SharedBytes {
  readonly offset: number;
  readonly end: number;
  readonly bytes: Uint8Array;
  readonly #owned: boolean;
  #held = 0;
  #kept = true;

  constructor(offset: number, bytes: Uint8Array, owned = true) {
    this.offset = offset;
    this.end = offset + bytes.length;
    this.bytes = bytes;
    this.#owned = owned;
  }

  /** Whether byte `pos` of the blob is here. */
  has(pos: number): boolean {
    return pos >= this.offset && pos < this.end;
  }

  /** Bytes [pos, stop) (up to the end), held until sent. */
  part(pos: number, stop: number): Part {
    this.hold();
    let sent = false;
    return {
      bytes: this.bytes.subarray(pos - this.offset, stop - this.offset),
      sent: () => {
        if (sent) return;
        sent = true;
        this.release();
      },
    };
  }

  /** Keeps the bytes from being freed until {@linkcode release}. */
  hold(): void {
    this.#held++;
  }

  /** Ends a {@linkcode hold}: the bytes may go now. */
  release(): void {
    this.#held--;
    this.#freeIfDone();
  }

  /** The owner hands out no more parts: the bytes go once the last part is sent. */
  unkeep(): void {
    this.#kept = false;
    this.#freeIfDone();
  }

  #freeIfDone(): void {
    if (!this.#owned || this.#kept || this.#held > 0) return;
    const buffer = this.bytes.buffer as ArrayBuffer;
    if (buffer.detached) return;
    try {
      // Detaching drops JavaScript's reference to the memory now; whoever else holds it keeps it.
      buffer.transfer(0);
    } catch { /* not detachable: the collector frees it */ }
  }
}
