import { deepEqual, equal, notEqual, ok } from "node:assert/strict";
import { chunks, patterned, scripted } from "./_test_support.ts";
import { BodyReader, MAX_READ } from "./body_reader.ts";

const KiB = 1024;

/** A byte stream like fetch's body: each read is filled from `bytes` up to the size asked. */
function byteSource(
  bytes: Uint8Array,
): { stream: ReadableStream<Uint8Array>; pulls: () => number } {
  let at = 0;
  let pulls = 0;
  const stream = new ReadableStream({
    type: "bytes",
    autoAllocateChunkSize: 64 * KiB,
    pull(controller: ReadableByteStreamController) {
      pulls++;
      const request = controller.byobRequest!;
      const view = request.view as Uint8Array;
      const n = Math.min(view.length, bytes.length - at);
      if (n === 0) {
        controller.close();
        request.respond(0);
        return;
      }
      view.set(bytes.subarray(at, at + n));
      at += n;
      request.respond(n);
    },
  });
  return { stream, pulls: () => pulls };
}

async function readAll(reader: BodyReader): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  for (let chunk = await reader.read(); chunk; chunk = await reader.read()) out.push(chunk);
  return out;
}

function joined(parts: Uint8Array[]): Uint8Array {
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  return bytes;
}

Deno.test("body reader: a byte stream is read in reads of MAX_READ, not 64 KiB chunks", async () => {
  const blob = patterned(4 * MAX_READ + 100 * KiB);
  const source = byteSource(blob);
  const parts = await readAll(new BodyReader(source.stream));
  deepEqual(parts.map((p) => p.length), [MAX_READ, MAX_READ, MAX_READ, MAX_READ, 100 * KiB]);
  deepEqual(joined(parts), blob);
  // A default reader of the same stream would have taken 68 chunks of 64 KiB.
  equal(source.pulls(), 6);
});

Deno.test("body reader: every chunk is a buffer of its own (followers keep them)", async () => {
  const parts = await readAll(new BodyReader(byteSource(patterned(3 * MAX_READ)).stream));
  equal(parts.length, 3);
  notEqual(parts[0].buffer, parts[1].buffer);
  notEqual(parts[1].buffer, parts[2].buffer);
  ok(parts.every((p) => p.byteLength > 0 && !(p.buffer as ArrayBuffer).detached));
});

Deno.test("body reader: a short read keeps only its bytes, not a buffer of MAX_READ", async () => {
  // A source that has 10 KiB ready at a time, as a slow upstream does.
  let left = 100 * KiB;
  const stream = new ReadableStream({
    type: "bytes",
    pull(controller: ReadableByteStreamController) {
      const request = controller.byobRequest!;
      const n = Math.min(10 * KiB, left);
      if (n === 0) {
        controller.close();
        request.respond(0);
        return;
      }
      left -= n;
      request.respond(n);
    },
  });
  const parts = await readAll(new BodyReader(stream));
  equal(parts.length, 10);
  deepEqual(parts.map((p) => p.buffer.byteLength), Array(10).fill(10 * KiB));
});

Deno.test("body reader: skips the bytes already received, across chunks", async () => {
  const blob = patterned(300 * KiB, 2);
  for (const skip of [0, 1, 50 * KiB, 100 * KiB, 100 * KiB + 1, 300 * KiB]) {
    const plain = await readAll(new BodyReader(scripted(chunks(blob, 100 * KiB)).stream, skip));
    deepEqual(joined(plain), blob.subarray(skip), `default stream, skip ${skip}`);
    const bytes = await readAll(new BodyReader(byteSource(blob).stream, skip));
    deepEqual(joined(bytes), blob.subarray(skip), `byte stream, skip ${skip}`);
  }
});

Deno.test("body reader: a default stream's chunks are passed on as they come", async () => {
  const blob = patterned(200 * KiB, 3);
  const parts = await readAll(new BodyReader(scripted(chunks(blob, 48 * KiB)).stream));
  deepEqual(parts.map((p) => p.length), [48 * KiB, 48 * KiB, 48 * KiB, 48 * KiB, 8 * KiB]);
});

Deno.test("body reader: cancel cancels the body", async () => {
  const body = scripted([patterned(10), patterned(10)]);
  const reader = new BodyReader(body.stream);
  await reader.read();
  await reader.cancel(new Error("done"));
  equal(body.cancelled(), true);
});
