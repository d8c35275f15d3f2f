// A blob of the bucket, opened: its bytes [start, end) come from one GET (with Range unless it is
// the whole blob), sent by the runtime itself, or read in JavaScript into full pieces that end in an
// error rather than short if S3 sends fewer.

import type { S3Client } from "../s3/client.ts";
import { runtimeSendable, selfWatched, type SendWatch } from "../watched_body.ts";
import { CHUNK_SIZE } from "./file_stream.ts";
import type { OpenedBlob } from "./store.ts";

/** The object `key` of `size` bytes, found: its bytes are asked for when it is streamed. */
export function openedS3Blob(client: S3Client, key: string, size: number): OpenedBlob {
  let used = false;
  return {
    size,
    async stream(start = 0, end = size) {
      if (used) throw new Error("a blob is streamed once");
      used = true;
      const whole = start === 0 && end === size;
      // No byte asked: nothing to ask S3 (a Range of none is not one it answers).
      if (start === end && !whole) return new ReadableStream({ start: (c) => c.close() });
      const response = await client.send("GetObject", "GET", key, {
        headers: whole ? {} : { range: `bytes=${start}-${end - 1}` },
        expect: [whole ? 200 : 206],
      });
      const body = response.body!; // fetch bodies are byte streams
      const length = response.headers.get("content-length");
      // Without its length, fetch cannot tell a body cut short from a whole one: counted here.
      if (length === null) return s3BlobStream(body, key, end - start);
      if (Number(length) !== end - start) {
        await body.cancel();
        throw new Error(`S3 GetObject ${key}: ${length} bytes for the ${end - start} asked`);
      }
      // The body as is, sent from socket to socket by the runtime; or read here, send-timed.
      return runtimeSendable(body, () => s3BlobStream(body, key, end - start));
    },
    close() {
      used = true;
    },
  };
}

/**
 * The `length` bytes of `body` (the GET of the object `key`) as a byte stream, like a cached
 * file's (`fileStream`), that reads the GET's body straight into the reader's buffer or, sent as
 * a response, into pieces its send watch sizes ({@linkcode selfWatched}: no wrapper), each filled
 * by as many reads as it takes: fetch hands the body over in smaller chunks, and every piece
 * handed to the server costs a hop.
 */
function s3BlobStream(
  body: ReadableStream<Uint8Array>,
  key: string,
  length: number,
): ReadableStream<Uint8Array> {
  let reader: ReadableStreamBYOBReader | undefined;
  let left = length;
  let watch: SendWatch | undefined;
  const stream = new ReadableStream({
    type: "bytes",
    start(controller) {
      if (left === 0) controller.close();
    },
    async pull(controller) {
      const piece = Math.min(watch?.asked() ?? CHUNK_SIZE, left);
      try {
        reader ??= body.getReader({ mode: "byob" });
        const request = controller.byobRequest;
        const view = request?.view;
        const into = view
          ? new Uint8Array(view.buffer, view.byteOffset, Math.min(view.byteLength, left))
          : new Uint8Array(piece);
        // A reader's own buffer gets one read; a piece of ours is filled before it is handed over.
        const size = into.length; // `into` is detached by the first read
        const want = view ? 1 : size;
        let got = into as Uint8Array<ArrayBuffer>;
        let filled = 0;
        while (filled < want) {
          const rest = new Uint8Array(got.buffer, got.byteOffset + filled, size - filled);
          const { done, value } = await reader.read(rest);
          if (done || !value) {
            throw new Error(
              `S3 GetObject ${key}: ${length - left + filled} of ${length} bytes, then the end`,
            );
          }
          // The read transferred the buffer it was given: go on in the view it returned.
          got = new Uint8Array(value.buffer, value.byteOffset - filled, size);
          filled += value.length;
        }
        const value = got.subarray(0, filled);
        if (value.length > left) {
          throw new Error(`S3 GetObject ${key}: more than the ${length} bytes asked`);
        }
        left -= value.length;
        if (request) request.respondWithNewView(value);
        else controller.enqueue(value);
        if (left === 0) {
          controller.close();
          await reader.cancel().catch(() => {});
        }
      } finally {
        watch?.handed();
      }
    },
    async cancel(reason) {
      await (reader ?? body).cancel(reason);
    },
  });
  return selfWatched(stream, (w) => watch = w);
}
