// A response body that records when it waits for its client, so a stalled download can be cut.

/** One response being sent: since when it has waited for the client to take more (0: it is not). */
export interface Sending {
  waitingSince: number;
}

/** Options of {@linkcode watchBody}. */
export interface WatchOptions {
  /** Clock, ms. */
  now: () => number;
  /** A client that asks for the next piece within this (ms) gets bigger pieces. */
  quickMs: number;
}

/**
 * Smallest and largest pieces handed to the HTTP server at once. The server asks for the next piece
 * only when the client has taken room for it, so each piece must be taken within the send timeout.
 * Pieces start small and double up to the largest while the client asks again quickly, and fall
 * back to the smallest when it does not: a fast download moves in 1 MiB pieces (as many hops as
 * without this wrapper), while a slow client must take only 64 KiB per send timeout.
 */
export const MIN_PIECE = 64 * 1024;
export const MAX_PIECE = 1024 * 1024;

/**
 * `source` as a stream that sets `sending.waitingSince` while the server has not asked for more: from
 * each piece handed over until the next ask, and after the end (the rest is still in buffers).
 * While the source itself is read (a fill waiting on upstream) the client is not waited on. A byte
 * source (a cached file) is read with buffers of our own, MAX_PIECE at a time.
 */
export function watchBody(
  source: ReadableStream<Uint8Array>,
  sending: Sending,
  opts: WatchOptions,
): ReadableStream<Uint8Array> {
  const byob = isByteStream(source) ? source.getReader({ mode: "byob" }) : undefined;
  const reader = byob ?? source.getReader();
  let rest: Uint8Array | undefined;
  let piece = MIN_PIECE / 2;
  return new ReadableStream<Uint8Array>({
    async pull(out) {
      const waited = sending.waitingSince === 0 ? 0 : opts.now() - sending.waitingSince;
      piece = waited <= opts.quickMs ? Math.min(MAX_PIECE, piece * 2) : MIN_PIECE;
      sending.waitingSince = 0;
      try {
        if (!rest) {
          const { done, value } = byob
            ? await byob.read(new Uint8Array(MAX_PIECE))
            : await (reader as ReadableStreamDefaultReader<Uint8Array>).read();
          if (done) return out.close();
          rest = value;
        }
        out.enqueue(rest.length > piece ? rest.subarray(0, piece) : rest);
        rest = rest.length > piece ? rest.subarray(piece) : undefined;
      } finally {
        sending.waitingSince = opts.now();
      }
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });
}

function isByteStream(stream: ReadableStream<Uint8Array>): boolean {
  try {
    stream.getReader({ mode: "byob" }).releaseLock();
    return true;
  } catch {
    return false;
  }
}
