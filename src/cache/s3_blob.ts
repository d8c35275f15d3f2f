// A blob of the bucket, opened: its bytes [start, end) come from one GET (with Range unless it is
// the whole blob) sent on the first read, and end in an error rather than short if S3 sends fewer.

import type { S3Client } from "../s3/client.ts";
import { selfWatched, type SendWatch } from "../watched_body.ts";
import { CHUNK_SIZE } from "./file_stream.ts";
import type { OpenedBlob } from "./store.ts";

/** The object `key` of `size` bytes, found: its bytes are asked for when it is streamed. */
export function openedS3Blob(client: S3Client, key: string, size: number): OpenedBlob {
  let used = false;
  return {
    size,
    stream(start = 0, end = size) {
      if (used) throw new Error("a blob is streamed once");
      used = true;
      return s3BlobStream(client, key, { start, end, size });
    },
    close() {
      used = true;
    },
  };
}

/**
 * A stream of bytes [start, end) of the object `key` of `size` bytes: a byte stream, like a cached
 * file's (`fileStream`), that reads the GET's body straight into the reader's buffer or,
 * sent as a response, into pieces its send watch sizes ({@linkcode selfWatched}: no wrapper),
 * each filled by as many reads as it takes: fetch hands the body over in smaller chunks, and
 * every piece handed to the server costs a hop.
 */
function s3BlobStream(
  client: S3Client,
  key: string,
  { start, end, size }: { start: number; end: number; size: number },
): ReadableStream<Uint8Array> {
  let body: ReadableStreamBYOBReader | undefined;
  let left = end - start;
  const whole = start === 0 && end === size;
  let watch: SendWatch | undefined;
  const stream = new ReadableStream({
    type: "bytes",
    start(controller) {
      if (left === 0) controller.close();
    },
    async pull(controller) {
      const piece = Math.min(watch?.asked() ?? CHUNK_SIZE, left);
      try {
        if (!body) {
          const headers: Record<string, string> = whole
            ? {}
            : { range: `bytes=${start}-${end - 1}` };
          const response = await client.send("GetObject", "GET", key, {
            headers,
            expect: [whole ? 200 : 206],
          });
          body = response.body!.getReader({ mode: "byob" }); // fetch bodies are byte streams
        }
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
          const { done, value } = await body.read(rest);
          if (done || !value) {
            throw new Error(
              `S3 GetObject ${key}: ${end - start - left + filled} of ${
                end - start
              } bytes, then the end`,
            );
          }
          // The read transferred the buffer it was given: go on in the view it returned.
          got = new Uint8Array(value.buffer, value.byteOffset - filled, size);
          filled += value.length;
        }
        const value = got.subarray(0, filled);
        if (value.length > left) {
          throw new Error(`S3 GetObject ${key}: more than the ${end - start} bytes asked`);
        }
        left -= value.length;
        if (request) request.respondWithNewView(value);
        else controller.enqueue(value);
        if (left === 0) {
          controller.close();
          await body.cancel().catch(() => {});
        }
      } finally {
        watch?.handed();
      }
    },
    async cancel(reason) {
      await body?.cancel(reason);
    },
  });
  return selfWatched(stream, (w) => watch = w);
}
