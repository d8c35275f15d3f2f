// The bucket's blob stream against a fake S3 client: what real S3 cannot be made to do (send fewer
// bytes than asked) and what is not visible through it (the requests, the pieces). The real bucket
// is in tests/s3_store_test.ts.

import { deepEqual, equal, match } from "node:assert/strict";
import type { S3Client } from "../s3/client.ts";
import { MAX_PIECE, watchBody } from "../watched_body.ts";
import { assertBody, patterned, readAll } from "./_test_support.ts";
import { BodyReader } from "./body_reader.ts";
import { openedS3Blob } from "./s3_blob.ts";

const SIZE = 2 * 1024 * 1024 + 4321;

/** A client whose GetObject answers `bytes[from, to)` (all of a Range, or less: `short`) in 64 KiB pieces. */
function fakeS3(bytes: Uint8Array, short = 0) {
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
      const to = (range ? Number(range[2]) + 1 : bytes.length) - short;
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
      return Promise.resolve(new Response(body, { status: range ? 206 : 200 }));
    },
  };
  return { client: client as unknown as S3Client, asked };
}

Deno.test("s3 blob: the whole object with one GET, by a default and by a BYOB reader", async () => {
  const bytes = patterned(SIZE, 3);
  const s3 = fakeS3(bytes);
  assertBody(await readAll(openedS3Blob(s3.client, "k", SIZE).stream()), bytes);
  const reader = new BodyReader(openedS3Blob(s3.client, "k", SIZE).stream());
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
  const got = await readAll(openedS3Blob(s3.client, "k", SIZE).stream(1000, 70_000));
  assertBody(got, bytes.subarray(1000, 70_000));
  deepEqual(s3.asked, [{ range: "bytes=1000-69999" }]);
});

Deno.test("s3 blob: fewer bytes from S3 than asked end the stream in an error, never short", async () => {
  const bytes = patterned(SIZE, 9);
  const { client } = fakeS3(bytes, 10);
  const got = await readAll(openedS3Blob(client, "k", SIZE).stream());
  match(String(got.error), /S3 GetObject k: 2101463 of 2101473 bytes, then the end/);
});

Deno.test("s3 blob: sent as a response it is its own send watch, in full pieces the watch sizes", async () => {
  const bytes = patterned(SIZE, 11);
  const { client } = fakeS3(bytes);
  const stream = openedS3Blob(client, "k", SIZE).stream();
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
