// The bucket's blob stream against a fake S3 client: what real S3 cannot be made to do (send fewer
// bytes than asked) and what is not visible through it (the requests, the pieces). The real bucket
// is in tests/s3_store_test.ts.

import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import type { S3Client } from "../s3/client.ts";
import { MAX_PIECE, sendableStandIn, watchBody } from "../watched_body.ts";
import { assertBody, patterned, readAll } from "./_test_support.ts";
import { BodyReader } from "./body_reader.ts";
import { openedS3Blob } from "./s3_blob.ts";

const SIZE = 2 * 1024 * 1024 + 4321;

/**
 * A client whose GetObject answers `bytes[from, to)` (all of a Range, or less: `short`) in 64 KiB
 * pieces, with a Content-Length of what was asked (or `length`, or none when null).
 */
function fakeS3(bytes: Uint8Array, opts: { short?: number; length?: number | null } = {}) {
  const asked: Record<string, string>[] = [];
  const client = {
    send(
      operation: string,
      _method: string,
      _key: string,
      init: { headers?: Record<string, string> },
    ) {
      equal(operation, "GetObject");
      const headers = init.headers ?? {};
      asked.push(headers);
      const range = /^bytes=(\d+)-(\d+)$/.exec(headers.range ?? "");
      const from = range ? Number(range[1]) : 0;
      const end = range ? Number(range[2]) + 1 : bytes.length;
      const to = end - (opts.short ?? 0);
      let at = from;
      const body = new ReadableStream({
        type: "bytes",
        pull(controller) {
          if (at >= to) {
            controller.close();
            // A byte source that closes answers the read it was asked for, as fetch bodies do.
            return controller.byobRequest?.respond(0);
          }
          const piece = bytes.slice(at, Math.min(to, at + 65536));
          at += piece.length;
          controller.enqueue(piece);
        },
      });
      const length = opts.length === undefined ? end - from : opts.length;
      return Promise.resolve(
        new Response(body, {
          status: range ? 206 : 200,
          headers: length === null ? {} : { "content-length": String(length) },
        }),
      );
    },
  };
  return { client: client as unknown as S3Client, asked };
}

Deno.test("s3 blob: the whole object is one GET, its body as is, which the runtime may send itself", async () => {
  const bytes = patterned(SIZE, 3);
  const s3 = fakeS3(bytes);
  const body = await openedS3Blob(s3.client, "k", SIZE).stream();
  ok(sendableStandIn(body), "marked for the runtime to send");
  // Read in JavaScript (a replica's fill reading the bucket), the body is the GET's own.
  assertBody(await readAll(body), bytes);
  deepEqual(s3.asked, [{}]);
});

Deno.test("s3 blob: the stand-in reads the GET's body, by a default and by a BYOB reader", async () => {
  const bytes = patterned(SIZE, 4);
  const s3 = fakeS3(bytes);
  const standIn = async () => sendableStandIn(await openedS3Blob(s3.client, "k", SIZE).stream())!();
  assertBody(await readAll(await standIn()), bytes);
  const reader = new BodyReader(await standIn());
  const byob = new Uint8Array(SIZE);
  let at = 0;
  for (let chunk = await reader.read(); chunk; chunk = await reader.read()) {
    byob.set(chunk, at);
    at += chunk.length;
  }
  equal(at, SIZE);
  assertBody({ bytes: byob }, bytes);
  deepEqual(s3.asked, [{}, {}]);
});

Deno.test("s3 blob: a range is one GET with Range, and only its bytes", async () => {
  const bytes = patterned(SIZE, 5);
  const s3 = fakeS3(bytes);
  const body = await openedS3Blob(s3.client, "k", SIZE).stream(1000, 70_000);
  assertBody(await readAll(body), bytes.subarray(1000, 70_000));
  const standIn = sendableStandIn(await openedS3Blob(s3.client, "k", SIZE).stream(1000, 70_000));
  assertBody(await readAll(standIn!()), bytes.subarray(1000, 70_000));
  deepEqual(s3.asked, [{ range: "bytes=1000-69999" }, { range: "bytes=1000-69999" }]);
});

Deno.test("s3 blob: S3 answering another length than asked fails before any byte is sent", async () => {
  const { client } = fakeS3(patterned(SIZE, 6), { length: SIZE - 1 });
  await rejects(
    openedS3Blob(client, "k", SIZE).stream(),
    /S3 GetObject k: 2101472 bytes for the 2101473 asked/,
  );
});

Deno.test("s3 blob: fewer bytes from S3 than asked end the stand-in in an error, never short", async () => {
  const bytes = patterned(SIZE, 9);
  const { client } = fakeS3(bytes, { short: 10 });
  const standIn = sendableStandIn(await openedS3Blob(client, "k", SIZE).stream());
  const got = await readAll(standIn!());
  match(String(got.error), /S3 GetObject k: 2101463 of 2101473 bytes, then the end/);
});

Deno.test("s3 blob: without a Content-Length the body is counted in JavaScript, never sent as is", async () => {
  const { client } = fakeS3(patterned(SIZE, 10), { short: 10, length: null });
  const body = await openedS3Blob(client, "k", SIZE).stream();
  equal(sendableStandIn(body), undefined);
  match(String((await readAll(body)).error), /2101463 of 2101473 bytes, then the end/);
});

Deno.test("s3 blob: its stand-in sent as a response is its own send watch, in full pieces", async () => {
  const bytes = patterned(SIZE, 11);
  const { client } = fakeS3(bytes);
  const stream = sendableStandIn(await openedS3Blob(client, "k", SIZE).stream())!();
  const sending = { waitingSince: 0 };
  const sent = watchBody(stream, sending, { now: () => 0, quickMs: 10 });
  equal(sent, stream, "no wrapper stream");
  const sizes: number[] = [];
  const got = await readAll(sent.pipeThrough(
    new TransformStream({
      transform(chunk, out) {
        sizes.push(chunk.length);
        out.enqueue(chunk);
      },
    }),
  ));
  assertBody(got, bytes);
  // A quick client: pieces grow from 64 KiB to the biggest, each filled from S3's smaller reads
  // (64 KiB here) before it is handed over.
  const k = 1024;
  deepEqual(sizes.slice(0, 5), [64 * k, 128 * k, 256 * k, 512 * k, MAX_PIECE]);
  equal(Math.max(...sizes), MAX_PIECE);
});
