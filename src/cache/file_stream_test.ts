import { equal, match, ok, rejects } from "node:assert/strict";
import { assertBody, patterned, readAll } from "./_test_support.ts";
import { fileStream } from "./file_stream.ts";

/** A temporary file holding `bytes`, removed on dispose. */
async function tempFile(bytes: Uint8Array): Promise<{ path: string } & AsyncDisposable> {
  const path = await Deno.makeTempFile({ prefix: "file_stream_" });
  await Deno.writeFile(path, bytes);
  return { path, [Symbol.asyncDispose]: () => Deno.remove(path) };
}

/** Fails unless `file` was closed (a closed FsFile's stat rejects with BadResource). */
async function assertClosed(file: Deno.FsFile): Promise<void> {
  await rejects(file.stat(), Deno.errors.BadResource, "the file is closed");
}

/** Waits for `promise`, failing after `ms`: a bound for a test that would otherwise hang. */
async function within<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

const SIZE = 3 * 1024 * 1024 + 12_345; // three full 1 MiB chunks and a short one

Deno.test("file stream: the whole file, in 1 MiB reads, then closes the file", async () => {
  const bytes = patterned(SIZE, 7);
  await using t = await tempFile(bytes);
  const file = await Deno.open(t.path);
  const sizes: number[] = [];
  const got = await readAll(
    fileStream(file, { end: SIZE }).pipeThrough(
      new TransformStream({
        transform(chunk, out) {
          sizes.push(chunk.length);
          out.enqueue(chunk);
        },
      }),
    ),
  );
  assertBody(got, bytes);
  equal(sizes.join(","), `${2 ** 20},${2 ** 20},${2 ** 20},12345`);
  await assertClosed(file);
});

Deno.test("file stream: ranges at odd offsets stop at their end", async () => {
  const bytes = patterned(SIZE, 3);
  await using t = await tempFile(bytes);
  const ranges: [number, number, number | undefined][] = [
    [1, SIZE - 1, undefined],
    [12_345, 2 ** 20 + 4_097, 1000], // the last read asks for fewer bytes than the buffer holds
    [SIZE - 3, SIZE, 7],
    [2 ** 20, 2 ** 21, undefined], // exactly one chunk, not at the start
    [99, 100, undefined],
  ];
  for (const [start, end, chunkSize] of ranges) {
    const file = await Deno.open(t.path);
    assertBody(
      await readAll(fileStream(file, { start, end, chunkSize })),
      bytes.subarray(start, end),
    );
    await assertClosed(file);
  }
});

Deno.test("file stream: an empty range sends nothing and closes the file", async () => {
  await using t = await tempFile(patterned(100));
  const file = await Deno.open(t.path);
  assertBody(await readAll(fileStream(file, { start: 50, end: 50 })), new Uint8Array());
  await assertClosed(file);
});

Deno.test("file stream: a BYOB reader gets the bytes in its own buffer, never past the end", async () => {
  const bytes = patterned(10_000, 5);
  await using t = await tempFile(bytes);
  const file = await Deno.open(t.path);
  const reader = fileStream(file, { start: 1_000, end: 4_000 }).getReader({ mode: "byob" });
  const first = await reader.read(new Uint8Array(2_500));
  ok(!first.done && first.value);
  assertBody({ bytes: first.value }, bytes.subarray(1_000, 3_500));
  const second = await reader.read(new Uint8Array(8_192)); // bigger than what is left
  ok(!second.done && second.value);
  assertBody({ bytes: second.value }, bytes.subarray(3_500, 4_000));
  const end = await reader.read(new Uint8Array(16));
  ok(end.done);
  await assertClosed(file);
});

Deno.test("file stream: cancelling mid-way closes the file", async () => {
  await using t = await tempFile(patterned(SIZE));
  const file = await Deno.open(t.path);
  const reader = fileStream(file, { start: 10, end: SIZE }).getReader();
  const first = await reader.read();
  equal(first.value?.length, 2 ** 20);
  await reader.cancel("client gone");
  await assertClosed(file);
});

Deno.test("file stream: a file truncated underneath errors the stream instead of ending it short", async () => {
  const bytes = patterned(SIZE, 9);
  await using t = await tempFile(bytes);
  const file = await Deno.open(t.path);
  const reader = fileStream(file, { end: SIZE }).getReader();
  const first = await reader.read();
  equal(first.value?.length, 2 ** 20);
  await Deno.truncate(t.path, 2 ** 20 + 500);
  const rest = await readAll(reader);
  equal(rest.bytes.length, 500, "the bytes still in the file are sent");
  ok(rest.error instanceof Error, "then the stream errors");
  match(rest.error.message, /ended 2\d+ bytes short of byte 3158073/);
  await assertClosed(file);
});

Deno.test("file stream: a range past the end of a shorter file errors", async () => {
  await using t = await tempFile(patterned(1000));
  const file = await Deno.open(t.path);
  const got = await readAll(fileStream(file, { start: 2000, end: 3000 }));
  equal(got.bytes.length, 0);
  ok(got.error instanceof Error);
  await assertClosed(file);
});

Deno.test("file stream: served by Deno.serve, a truncated file cuts the response", async () => {
  const bytes = patterned(SIZE, 11);
  await using t = await tempFile(bytes);
  let file: Deno.FsFile | undefined;
  await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async () => {
    file = await Deno.open(t.path);
    await Deno.truncate(t.path, SIZE - 1000);
    const headers = { "content-length": String(SIZE) };
    return new Response(fileStream(file, { end: SIZE }), { headers });
  });
  const response = await fetch(`http://127.0.0.1:${server.addr.port}/`);
  equal(response.status, 200);
  const got = await readAll(response.body!);
  ok(got.error !== undefined, `the client sees an error, not a short body (${got.bytes.length})`);
  ok(got.bytes.length < SIZE);
  await assertClosed(file!);
});

Deno.test("file stream: served by Deno.serve, a client that goes away mid-way closes the file", async () => {
  const size = 32 * 1024 * 1024; // more than the socket buffers hold, so the server is mid-body
  await using t = await tempFile(new Uint8Array(size));
  const closed = Promise.withResolvers<void>();
  await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async () => {
    const file = await Deno.open(t.path);
    const close = file.close.bind(file);
    file.close = () => {
      close();
      closed.resolve();
    };
    return new Response(fileStream(file, { end: size }));
  });
  const abort = new AbortController();
  const response = await fetch(`http://127.0.0.1:${server.addr.port}/`, { signal: abort.signal });
  const reader = response.body!.getReader();
  ok(!(await reader.read()).done);
  abort.abort();
  await rejects(reader.read());
  await within(closed.promise, 10_000, "the file was not closed");
});
