// Bytes [start, end) of an open file as a byte stream that reads straight into the reader's buffer.

import { MAX_PIECE, selfWatched, type SendWatch } from "../watched_body.ts";

/** Bytes per read when the reader brings no buffer of its own and no send watch sizes the pieces. */
export const CHUNK_SIZE = MAX_PIECE;

/**
 * Where a piece starts in its allocation. Until the process has freed a few, 1 MiB allocations are
 * glibc mmap chunks starting 16 bytes past a page, and the kernel copies page-aligned file data into
 * a destination 1 to 31 bytes past a page at 2.6-2.8 GB/s instead of 14 (4K aliasing, measured by
 * bench/read_alignment.ts): 64 of the first 1,028 pieces a fresh mirror read landed there.
 */
const PIECE_OFFSET = 48;

/** A buffer of `size` bytes for a file read, starting PIECE_OFFSET bytes into its allocation. */
export function newPiece(size: number): Uint8Array {
  return new Uint8Array(PIECE_OFFSET + size).subarray(PIECE_OFFSET);
}

/** Options of {@linkcode fileStream}. */
export interface FileStreamOptions {
  /** First byte (default 0). */
  start?: number;
  /** One past the last byte; the stream errors if the file ends before it. */
  end: number;
  /** Size of the buffers the stream allocates (default {@linkcode CHUNK_SIZE}). */
  chunkSize?: number;
}

/**
 * Streams `file` (just opened, at position 0) from `start` to `end` and closes it at the end, on
 * cancel and on error.
 *
 * A byte stream (`type: "bytes"`): a BYOB reader's buffer is filled directly; a default reader
 * (Deno.serve) gets a buffer of the size of the piece asked, read with one `FsFile.read`. Sent as a
 * response, the stream is its own send watch ({@linkcode selfWatched}): no wrapper stream, pieces
 * of 1 MiB to a fast client (16x fewer hops than `file.readable`'s 64 KiB, measured 1.3-1.6x its
 * speed) and of 64 KiB to a slow one, so a slow client holds little memory. A file that ends
 * before `end` (truncated underneath) errors the stream: a response is cut, never short.
 */
export function fileStream(
  file: Deno.FsFile,
  options: FileStreamOptions,
): ReadableStream<Uint8Array> {
  const start = options.start ?? 0;
  let left = options.end - start;
  let open = true;
  let positioned = start === 0;
  const close = () => {
    if (!open) return;
    open = false;
    file.close();
  };
  let watch: SendWatch | undefined;
  const stream = new ReadableStream({
    type: "bytes",
    start(controller) {
      if (left > 0) return;
      close();
      controller.close();
    },
    async pull(controller) {
      const piece = Math.min(watch?.asked() ?? options.chunkSize ?? CHUNK_SIZE, left);
      try {
        const request = controller.byobRequest;
        const view = request?.view;
        const into = view
          ? new Uint8Array(view.buffer, view.byteOffset, Math.min(view.byteLength, left))
          : newPiece(piece);
        let n: number | null;
        try {
          if (!positioned) {
            await file.seek(start, Deno.SeekMode.Start);
            positioned = true;
          }
          n = await file.read(into);
        } catch (e) {
          close();
          throw e;
        }
        if (!open) return; // cancelled while reading
        if (!n) {
          close();
          throw new Error(`file ended ${left} bytes short of byte ${options.end}`);
        }
        left -= n;
        if (request) request.respond(n);
        else controller.enqueue(into.subarray(0, n));
        if (left === 0) {
          close();
          controller.close();
        }
      } finally {
        watch?.handed();
      }
    },
    cancel() {
      close();
    },
  });
  return selfWatched(stream, (w) => watch = w);
}
