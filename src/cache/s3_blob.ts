// A blob of the bucket, opened: its bytes [start, end) come from one GET (with Range unless it is
// the whole blob) sent on the first read, and end in an error rather than short if S3 sends fewer.

import type { S3Client } from "../s3/client.ts";
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

/** A stream of bytes [start, end) of the object `key` of `size` bytes. */
function s3BlobStream(
  client: S3Client,
  key: string,
  { start, end, size }: { start: number; end: number; size: number },
): ReadableStream<Uint8Array> {
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  let received = 0;
  const whole = start === 0 && end === size;
  return new ReadableStream<Uint8Array>({
    async pull(out) {
      if (start >= end) return out.close();
      if (!reader) {
        const headers: Record<string, string> = whole ? {} : { range: `bytes=${start}-${end - 1}` };
        const response = await client.send("GetObject", "GET", key, {
          headers,
          expect: [whole ? 200 : 206],
        });
        reader = response.body!.getReader();
      }
      const next = await reader.read();
      if (next.done) {
        if (received !== end - start) {
          throw new Error(`S3 GetObject ${key}: ${received} of ${end - start} bytes, then the end`);
        }
        return out.close();
      }
      received += next.value.length;
      out.enqueue(next.value);
    },
    async cancel(reason) {
      await reader?.cancel(reason);
    },
  }, { highWaterMark: 0 });
}
