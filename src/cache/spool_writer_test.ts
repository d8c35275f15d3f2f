import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { chunks, deferred, enospc, patterned, waitFor } from "./_test_support.ts";
import { type SpoolFile, SpoolWriter } from "./spool_writer.ts";

const KiB = 1024;

/** A file in memory whose writes take at most `most` bytes each and finish in their own time. */
function memoryFile(most = Infinity) {
  const parts: Uint8Array[] = [];
  let writing = 0;
  let overlapped = false;
  const file: SpoolFile = {
    async write(data: Uint8Array): Promise<number> {
      if (++writing > 1) overlapped = true;
      await new Promise((resolve) => setTimeout(resolve, Math.random() * 2));
      const n = Math.min(most, data.length);
      parts.push(data.slice(0, n));
      writing--;
      return n;
    },
  };
  const bytes = () => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  };
  return { file, bytes, overlapped: () => overlapped };
}

Deno.test("spool writer: chunks land in order, whole, one write at a time, short writes resumed", async () => {
  const blob = patterned(300 * KiB);
  const memory = memoryFile(7 * KiB);
  let wrote = 0;
  const writer = new SpoolWriter(memory.file, {
    wrote: (n) => wrote += n,
    failed: () => ok(false),
  });
  for (const chunk of chunks(blob, 50 * KiB)) writer.write(chunk);
  equal(writer.pending, blob.length);
  await writer.flush();
  deepEqual(memory.bytes(), blob);
  equal(wrote, blob.length);
  equal(writer.pending, 0);
  equal(memory.overlapped(), false, "a write starts once the one before it ended");
});

Deno.test("spool writer: room(limit) waits until at most limit bytes are left to write", async () => {
  const gate = deferred();
  let calls = 0;
  const file: SpoolFile = {
    async write(data) {
      if (calls++ === 0) await gate.promise;
      return data.length;
    },
  };
  const writer = new SpoolWriter(file, { wrote: () => {}, failed: () => {} });
  for (let i = 0; i < 4; i++) writer.write(new Uint8Array(100));
  let roomy = false;
  const room = writer.room(150).then(() => roomy = true);
  await new Promise((resolve) => setTimeout(resolve, 0));
  equal(roomy, false, "400 bytes wait while the first write hangs");
  gate.resolve();
  await room;
  ok(writer.pending <= 150);
  await writer.flush();
});

Deno.test("spool writer: a failed write is reported once; nothing is written after it", async () => {
  const failures: unknown[] = [];
  let writes = 0;
  const file: SpoolFile = {
    write(data) {
      if (++writes === 2) return Promise.reject(enospc());
      return Promise.resolve(data.length);
    },
  };
  let wrote = 0;
  const writer = new SpoolWriter(file, {
    wrote: (n) => wrote += n,
    failed: (e) => failures.push(e),
  });
  for (let i = 0; i < 5; i++) writer.write(new Uint8Array(10));
  await waitFor("the failure", () => failures.length > 0);
  writer.write(new Uint8Array(10));
  await writer.room(0);
  await rejects(writer.flush(), /No space left/);
  equal(failures.length, 1);
  equal(writes, 2);
  equal(wrote, 10);
  equal(writer.pending, 0);
});

Deno.test("spool writer: every caller waiting for room is woken", async () => {
  const gate = deferred();
  const file: SpoolFile = {
    async write(data) {
      await gate.promise;
      return data.length;
    },
  };
  const writer = new SpoolWriter(file, { wrote: () => {}, failed: () => {} });
  writer.write(new Uint8Array(100));
  // The pump waits for room while a failed fill waits for the queue to drain.
  const waits = [writer.room(50), writer.room(0)];
  gate.resolve();
  await Promise.all(waits);
  equal(writer.pending, 0);
});
