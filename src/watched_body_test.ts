import { deepEqual, equal, ok } from "node:assert/strict";
import {
  MAX_PIECE,
  MIN_PIECE,
  PIECE_BUDGET,
  type Sending,
  sharedPiece,
  watchBody,
  type WatchOptions,
} from "./watched_body.ts";

/** A default (not byte) stream of `chunks`, with a gate before each read of the source. */
function source(chunks: Uint8Array[], gate?: () => Promise<void>): ReadableStream<Uint8Array> {
  return new ReadableStream({
    async pull(c) {
      await gate?.();
      const next = chunks.shift();
      if (next) c.enqueue(next);
      else c.close();
    },
  });
}

/** A fast client's first pieces: from the smallest, doubling up to the largest. */
const GROWING = [MIN_PIECE, 2 * MIN_PIECE, 4 * MIN_PIECE, 8 * MIN_PIECE, MAX_PIECE];

/** The sizes of the pieces an 8 MiB body is read in, calling `before(step)` ahead of each read. */
async function pieceSizes(
  opts: WatchOptions,
  steps: number[],
  before: (step: number) => void,
): Promise<number[]> {
  const body = watchBody(source([new Uint8Array(8 * MAX_PIECE)]), { waitingSince: 0 }, opts);
  const reader = body.getReader();
  const sizes: number[] = [];
  for (const step of steps) {
    before(step);
    sizes.push((await reader.read()).value!.length);
  }
  await reader.cancel();
  return sizes;
}

Deno.test("watched body: pieces grow while the client asks quickly and shrink when it does not", async () => {
  let now = 1000;
  const opts = { now: () => now, quickMs: 100 };
  const sizes = await pieceSizes(opts, [0, 0, 0, 0, 0, 500, 0], (pause) => now += pause);
  deepEqual(sizes, [...GROWING, MIN_PIECE, /* after a slow ask */ 2 * MIN_PIECE]);
});

Deno.test("watched body: waiting on the source is not waiting on the client", async () => {
  let now = 1000;
  let open!: () => void;
  const sending: Sending = { waitingSince: 0 };
  const body = watchBody(
    source([new Uint8Array(10)], () => new Promise((resolve) => open = resolve)),
    sending,
    { now: () => now, quickMs: 100 },
  );
  const reader = body.getReader();
  const first = reader.read();
  await new Promise((resolve) => setTimeout(resolve, 10));
  equal(sending.waitingSince, 0, "the source is being read");
  now = 5000;
  open();
  equal((await first).value!.length, 10);
  equal(sending.waitingSince, 5000, "handed over: now waiting for the client");
  const end = reader.read();
  await new Promise((resolve) => setTimeout(resolve, 10));
  now = 6000;
  open();
  equal((await end).done, true);
  equal(sending.waitingSince, 6000, "after the end, the rest is still to be taken");
});

Deno.test("watched body: a byte source is read in large reads and passed whole", async () => {
  const size = 3 * MAX_PIECE + 5;
  let reads = 0;
  let left = size;
  const bytes = new ReadableStream({
    type: "bytes",
    pull(c) {
      reads++;
      const view = c.byobRequest!.view!;
      const n = Math.min(left, view.byteLength);
      new Uint8Array(view.buffer, view.byteOffset, n).fill(7);
      left -= n;
      c.byobRequest!.respond(n);
      if (left === 0) c.close();
    },
  });
  const body = watchBody(bytes, { waitingSince: 0 }, { now: () => 0, quickMs: 100 });
  let total = 0;
  for await (const chunk of body) total += chunk.length;
  equal(total, size);
  equal(reads, 4, "1 MiB per read");
});

Deno.test("watched body: bodies sent at once share the piece budget", async () => {
  equal(sharedPiece(1), MAX_PIECE);
  equal(sharedPiece(20), MAX_PIECE);
  equal(sharedPiece(50), 384 * 1024);
  equal(sharedPiece(10_000), MIN_PIECE, "never below the smallest piece");
  for (const bodies of [1, 3, 21, 50, 333]) {
    ok(sharedPiece(bodies) * bodies <= Math.max(PIECE_BUDGET, bodies * MIN_PIECE));
  }
  // A fast client's pieces grow only to its share.
  let bodies = 1;
  const opts = { now: () => 0, quickMs: 100, maxPiece: () => sharedPiece(bodies) };
  const sizes = await pieceSizes(opts, [1, 1, 1, 1, 1, 50, 50, 50], (n) => bodies = n);
  deepEqual(sizes, [...GROWING, ...Array(3).fill(384 * 1024) /* fifty bodies now */]);
});
