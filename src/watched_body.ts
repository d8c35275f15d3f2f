// A response body that records when it waits for its client, so a stalled download can be cut.

/** One response being sent: since when it has waited for the client to take more (0: it is not). */
export interface Sending {
  waitingSince: number;
  /** Set when the runtime sends the body by itself (see runtimeSendable): since when, ms. */
  runtimeSince?: number;
}

/** Options of {@linkcode watchBody}. */
export interface WatchOptions {
  /** Clock, ms. */
  now: () => number;
  /** A client that asks for the next piece within this (ms) gets bigger pieces. */
  quickMs: number;
  /** The largest piece now, for the bodies being sent to share {@linkcode PIECE_BUDGET}. */
  maxPiece?: () => number;
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
 * Bytes in pieces handed to the HTTP server, over all the bodies being sent: each body holds its
 * piece until the socket took it, so fifty warm clients of one 1 GiB blob in 1 MiB pieces grew the
 * mirror by 72-75 MB, and by 32-41 MB sharing this, in the same time. Twenty bodies or fewer keep
 * 1 MiB pieces.
 */
export const PIECE_BUDGET = 20 * 1024 * 1024;

/** The largest piece for each of `bodies` bodies being sent at once: MIN_PIECE to MAX_PIECE. */
export function sharedPiece(bodies: number): number {
  const share = Math.floor(PIECE_BUDGET / Math.max(1, bodies) / MIN_PIECE) * MIN_PIECE;
  return Math.min(MAX_PIECE, Math.max(MIN_PIECE, share));
}

/** The send-timeout bookkeeping of one body: each ask of the server, and each piece handed over. */
export class SendWatch {
  #piece = MIN_PIECE / 2;
  /** Called at the next ask: the piece last handed over is then the server's alone. */
  #sent?: () => void;

  constructor(readonly sending: Sending, readonly opts: WatchOptions) {}

  /** The server asks for more: the client is not waited on; returns the size of the next piece. */
  asked(): number {
    const { sending, opts } = this;
    const sent = this.#sent;
    this.#sent = undefined;
    sent?.();
    const waited = sending.waitingSince === 0 ? 0 : opts.now() - sending.waitingSince;
    const max = opts.maxPiece?.() ?? MAX_PIECE;
    this.#piece = waited <= opts.quickMs ? Math.min(max, this.#piece * 2) : MIN_PIECE;
    sending.waitingSince = 0;
    return this.#piece;
  }

  /**
   * A piece was handed over, or the body ended (the rest is still in buffers): the client is waited
   * on. `sent` is called at the next ask, when the server holds that piece itself: Deno.serve's body
   * sink passes each piece to Rust, which keeps its own reference to the memory until the socket
   * took it, before it reads the next one.
   */
  handed(sent?: () => void): void {
    this.sending.waitingSince = this.opts.now();
    this.#sent = sent;
  }
}

/** Streams that call a {@linkcode SendWatch} themselves, so they are sent without a wrapper. */
const selfWatching = new WeakMap<ReadableStream<Uint8Array>, (watch: SendWatch) => void>();

/**
 * Marks `stream` as calling the SendWatch passed to `attach` on each pull (asked, then handed):
 * {@linkcode watchBody} then returns it as is. A cached file sent this way costs one stream, not two.
 */
export function selfWatched(
  stream: ReadableStream<Uint8Array>,
  attach: (watch: SendWatch) => void,
): ReadableStream<Uint8Array> {
  selfWatching.set(stream, attach);
  return stream;
}

/**
 * Bodies Deno's HTTP server can send by itself, each with a watched stand-in. A fetch body given
 * to a Response as is goes from socket to socket in Rust: no JavaScript per chunk, no copy into
 * pieces of ours, no zeroed buffers (a bucket's blob: 0.4 CPU s/GB against 1.0, BENCHMARKS.md).
 * Nothing tells JavaScript how far such a body got, so no send timeout sees it: the connection
 * server sends a bounded number of them so, and the stand-in instead of the others.
 */
const runtimeSent = new WeakMap<ReadableStream<Uint8Array>, () => ReadableStream<Uint8Array>>();

/**
 * Marks `body` (a fetch body, not yet read) as one the runtime can send by itself; `standIn`
 * makes the stream sent instead when it may not, which reads `body` in JavaScript, send-timed.
 */
export function runtimeSendable(
  body: ReadableStream<Uint8Array>,
  standIn: () => ReadableStream<Uint8Array>,
): ReadableStream<Uint8Array> {
  runtimeSent.set(body, standIn);
  return body;
}

/** The stand-in of `body` when the runtime can send it by itself (see runtimeSendable). */
export function sendableStandIn(
  body: ReadableStream<Uint8Array>,
): (() => ReadableStream<Uint8Array>) | undefined {
  return runtimeSent.get(body);
}

/**
 * `source` as a stream that sets `sending.waitingSince` while the server has not asked for more: from
 * each piece handed over until the next ask, and after the end (the rest is still in buffers).
 * While the source itself is read (a fill waiting on upstream) the client is not waited on. A byte
 * source (a cached file) is read with buffers of our own, MAX_PIECE at a time. A source marked by
 * {@linkcode selfWatched} is given the watch and returned unwrapped.
 */
export function watchBody(
  source: ReadableStream<Uint8Array>,
  sending: Sending,
  opts: WatchOptions,
): ReadableStream<Uint8Array> {
  const watch = new SendWatch(sending, opts);
  const attach = selfWatching.get(source);
  if (attach) {
    attach(watch);
    return source;
  }
  const byob = isByteStream(source) ? source.getReader({ mode: "byob" }) : undefined;
  const reader = byob ?? source.getReader();
  let rest: Uint8Array | undefined;
  return new ReadableStream<Uint8Array>({
    async pull(out) {
      const piece = watch.asked();
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
        watch.handed();
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
