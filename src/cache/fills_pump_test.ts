// The pump's pace and shape: big reads, at most WINDOW ahead of its fastest follower, followers
// behind the memory sharing spool reads, bytes before an upstream error kept.

import { deepEqual, equal, ok } from "node:assert/strict";
import {
  assertBody,
  chunks,
  hasBlob,
  ORIGIN,
  patterned,
  readAll,
  scripted,
  sha256,
  tempCache,
  upstream,
  waitFor,
  withFaults,
} from "./_test_support.ts";
import { MAX_READ } from "./body_reader.ts";
import { type Fill, WINDOW } from "./fill.ts";
import { MAX_PIECE, watchBody } from "../watched_body.ts";

const KiB = 1024;

function ignore(): void {}

function settled(fill: Fill): Promise<void> {
  return waitFor(`the fill of ${fill.digest} to settle`, () => fill.settled);
}

/** A byte stream like fetch's body: `bytes`, `ready` bytes at a time, then an error if given. */
function byteBody(bytes: Uint8Array, opts: { ready?: number; error?: Error } = {}) {
  let at = 0;
  const reads: number[] = [];
  const stream = new ReadableStream({
    type: "bytes",
    autoAllocateChunkSize: 64 * KiB,
    pull(controller: ReadableByteStreamController) {
      const request = controller.byobRequest!;
      const view = request.view as Uint8Array;
      const n = Math.min(view.length, opts.ready ?? Infinity, bytes.length - at);
      if (n === 0) {
        if (opts.error) return controller.error(opts.error);
        controller.close();
        request.respond(0);
        return;
      }
      view.set(bytes.subarray(at, at + n));
      at += n;
      reads.push(n);
      request.respond(n);
    },
  });
  return { stream, reads, sent: () => at };
}

Deno.test("pump: what a byte-stream upstream has ready reaches followers as one chunk", async () => {
  await using t = await tempCache();
  const blob = patterned(4 * MAX_READ + 5 * KiB, 21);
  const digest = sha256(blob);
  // The upstream has 600 KiB ready at a time (a socket's worth), not 64 KiB.
  const body = byteBody(blob, { ready: 600 * KiB });
  const up = upstream(() =>
    new Response(body.stream, { headers: { "content-length": String(blob.length) } })
  );
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  await settled(fill);
  const reader = t.cache.follow(fill, 0, undefined, ignore).getReader();
  const sizes: number[] = [];
  const parts: Uint8Array[] = [];
  for (let next = await reader.read(); !next.done; next = await reader.read()) {
    sizes.push(next.value.length);
    parts.push(next.value.slice());
  }
  assertBody(await readAll(new Blob(parts as BlobPart[]).stream()), blob);
  // The end of the blob came from memory in the upstream's reads: one hand-off, not ten.
  ok(sizes.includes(600 * KiB), `chunk sizes ${sizes.join(", ")}`);
  ok(await hasBlob(t.fs, digest));
});

Deno.test("pump: reads upstream at most half a WINDOW ahead of its fastest follower", async () => {
  await using t = await tempCache();
  const size = 256 * KiB;
  const blob = patterned(WINDOW * 4, 22);
  const digest = sha256(blob);
  const body = scripted(chunks(blob, size));
  const up = upstream(() =>
    new Response(body.stream, { headers: { "content-length": String(blob.length) } })
  );
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  const reader = t.cache.follow(fill, 0, undefined, ignore).getReader();
  const first = await reader.read();
  ok(!first.done);
  const taken = first.value.length;
  // The follower stops reading: the pump stops once it is half a WINDOW ahead of it.
  await waitFor("the pump to reach the window", () => fill.received >= taken + WINDOW / 2);
  await new Promise((resolve) => setTimeout(resolve, 0));
  ok(
    fill.received <= taken + WINDOW / 2 + size,
    `the pump received ${fill.received} bytes with ${taken} taken by the only follower`,
  );
  equal(fill.settled, false);
  // Once the follower reads on, so does the pump, to the end.
  const rest = await readAll(reader, [first.value.slice()]);
  assertBody(rest, blob);
  ok(await hasBlob(t.fs, digest));
});

Deno.test("pump: without a follower left, the fill runs to the end", async () => {
  await using t = await tempCache();
  const blob = patterned(WINDOW * 3, 23);
  const digest = sha256(blob);
  const up = upstream(() => new Response(scripted(chunks(blob, 256 * KiB)).stream));
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  const reader = t.cache.follow(fill, 0, undefined, ignore).getReader();
  await reader.read();
  await waitFor("the pump to reach the window", () => fill.received >= WINDOW / 2);
  await reader.cancel();
  await settled(fill);
  equal(fill.error, undefined);
  equal(fill.received, blob.length);
  await waitFor("the commit", async () => await hasBlob(t.fs, digest));
});

Deno.test("pump: followers behind the memory share each spool read", async () => {
  let opens = 0;
  let reads = 0;
  await using t = await tempCache({
    wrap: (store) =>
      withFaults(store, {
        openFill: async (path, digest) => {
          opens++;
          const file = await store.openFill(path, digest);
          const readSync = file.readSync.bind(file);
          file.readSync = (buffer: Uint8Array) => {
            reads++;
            return readSync(buffer);
          };
          return file;
        },
      }),
  });
  const blob = patterned(WINDOW * 2, 24);
  const digest = sha256(blob);
  const up = upstream(() =>
    new Response(scripted(chunks(blob, 256 * KiB)).stream, {
      headers: { "content-length": String(blob.length) },
    })
  );
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  await settled(fill);
  // Ten clients come late: the first WINDOW bytes are only in the spool now.
  const got = await Promise.all(
    Array.from({ length: 10 }, () => readAll(t.cache.follow(fill, 0, undefined, ignore))),
  );
  for (const body of got) assertBody(body, blob);
  equal(opens, 1, "one spool reader for all followers");
  ok(reads <= 2 * (WINDOW / (256 * KiB)), `${reads} spool reads for ${WINDOW} bytes, 10 clients`);
});

Deno.test("pump: followers sent as responses free what they were sent once the server holds it", async () => {
  await using t = await tempCache();
  const blob = patterned(WINDOW * 3, 25);
  const digest = sha256(blob);
  // A byte stream, as fetch's: each chunk in a buffer of the fill's own.
  const up = upstream(() =>
    new Response(byteBody(blob, { ready: 256 * KiB }).stream, {
      headers: { "content-length": String(blob.length) },
    })
  );
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  /** Follows the whole blob; each piece as handed over, where it starts, and a copy of it. */
  const follow = async (watched: boolean) => {
    const body = t.cache.follow(fill, 0, undefined, ignore);
    // As the connection server sends a response: each piece is taken when the server asks.
    const opts = { now: () => 0, quickMs: 100 };
    const reader = (watched ? watchBody(body, { waitingSince: 0 }, opts) : body).getReader();
    const pieces: { handed: Uint8Array; at: number; end: number; copy: Uint8Array }[] = [];
    for (let at = 0;;) {
      const { done, value } = await reader.read();
      if (done) break;
      pieces.push({ handed: value, at, end: at + value.length, copy: value.slice() });
      at += value.length;
    }
    const bytes = new Uint8Array(
      await new Blob(pieces.map((p) => p.copy) as BlobPart[]).arrayBuffer(),
    );
    assertBody({ bytes }, blob);
    ok(pieces.every((p) => p.copy.length <= MAX_PIECE), "pieces of the size the send watch asks");
    return { pieces, freed: pieces.filter((p) => p.handed.length === 0) };
  };
  // A client from the start takes the fill's chunks from memory; once written and out of the
  // window, they are freed. The last WINDOW stays in memory for later clients.
  const live = await follow(true);
  ok(
    live.pieces.filter((p) => p.end <= 2 * WINDOW - 256 * KiB).every((p) => p.handed.length === 0),
  );
  ok(live.pieces.filter((p) => p.at >= 2 * WINDOW).every((p) => p.handed.length > 0));
  await settled(fill);
  // Late clients: the first 2 WINDOWs are only in the spool now, the last one in memory.
  const plain = await follow(false);
  equal(plain.freed.length, 0, "nothing a JavaScript reader took is freed");
  const late = await follow(true);
  deepEqual(late.freed, late.pieces.filter((p) => p.at < 2 * WINDOW), "the spool's blocks freed");
});

// Regression: reads that filled one buffer across several upstream reads lost those bytes with a
// read that failed, and the resume asked for them again (from byte 0 here, without a Range).
Deno.test("pump: after an upstream reset, the resume asks for the bytes after the last read", async () => {
  await using t = await tempCache();
  const blob = patterned(MAX_READ + 300 * KiB, 25);
  const digest = sha256(blob);
  const cut = 700 * KiB;
  const up = upstream((offset, call) => {
    if (call === 1) {
      const body = byteBody(blob.subarray(0, cut), {
        ready: 100 * KiB,
        error: new Error("connection reset"),
      });
      return new Response(body.stream, { headers: { "content-length": String(blob.length) } });
    }
    return new Response(byteBody(blob.subarray(offset)).stream, {
      status: 206,
      headers: { "content-range": `bytes ${offset}-${blob.length - 1}/${blob.length}` },
    });
  });
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  await settled(fill);
  deepEqual(up.opens, [0, cut]);
  assertBody(await readAll(t.cache.follow(fill, 0, undefined, ignore)), blob);
  equal(t.cache.fills.stats.resumes, 1);
  ok(await hasBlob(t.fs, digest));
});
