import { deepEqual, equal, ok } from "node:assert/strict";
import { patterned } from "./_test_support.ts";
import type { Part } from "./shared_bytes.ts";
import { BLOCK, SpoolBlocks, type SpoolCursor } from "./spool_blocks.ts";

/** A temp file holding `bytes`; `opens` and `reads` count what SpoolBlocks did with it. */
async function spoolFile(bytes: Uint8Array) {
  const path = await Deno.makeTempFile({ prefix: "spool-blocks-test-" });
  await Deno.writeFile(path, bytes);
  const counts = { opens: 0, reads: 0 };
  const files: Deno.FsFile[] = [];
  const open = async () => {
    counts.opens++;
    const file = await Deno.open(path);
    files.push(file);
    const readSync = file.readSync.bind(file);
    file.readSync = (buffer: Uint8Array) => {
      counts.reads++;
      return readSync(buffer);
    };
    return file;
  };
  return {
    open,
    counts,
    async [Symbol.asyncDispose]() {
      for (const file of files) {
        try {
          file.close();
        } catch { /* closed by the blocks */ }
      }
      await Deno.remove(path);
    },
  };
}

Deno.test("spool blocks: followers at one position share one read of each block", async () => {
  const bytes = patterned(4 * BLOCK + 1000);
  await using spool = await spoolFile(bytes);
  const blocks = new SpoolBlocks(spool.open);
  const positions = Array.from({ length: 20 }, () => 0);
  const cursors: SpoolCursor[] = positions.map(() => ({}));
  const got: Uint8Array[][] = positions.map(() => []);
  while (positions.some((pos) => pos < bytes.length)) {
    // Every follower asks at once, as fifty clients of one blob do.
    await Promise.all(positions.map(async (pos, i) => {
      if (pos >= bytes.length) return;
      const { bytes: part } = await blocks.at(pos, bytes.length, bytes.length, cursors[i]);
      got[i].push(part);
      positions[i] += part.length;
    }));
  }
  for (const parts of got) {
    deepEqual(new Uint8Array(await new Blob(parts as BlobPart[]).arrayBuffer()), bytes);
  }
  equal(spool.counts.opens, 1);
  ok(spool.counts.reads <= 5 + 1, `${spool.counts.reads} reads for 5 blocks and 20 followers`);
  await blocks.close();
});

Deno.test("spool blocks: a block ends at the bytes stored and at the follower's stop", async () => {
  const bytes = patterned(3 * BLOCK);
  await using spool = await spoolFile(bytes);
  const blocks = new SpoolBlocks(spool.open);
  // The file holds more than `stored` (a write landing): those bytes are not read yet.
  const { bytes: first } = await blocks.at(10, 3 * BLOCK, 1000, {});
  deepEqual(first, bytes.subarray(10, 1000));
  // A range ending early gets only its bytes; the block read for it serves others' later positions.
  const { bytes: short } = await blocks.at(2000, 2100, 3 * BLOCK, {});
  deepEqual(short, bytes.subarray(2000, 2100));
  const { bytes: after } = await blocks.at(2100, 3 * BLOCK, 3 * BLOCK, {});
  deepEqual(after, bytes.subarray(2100, 2000 + BLOCK));
  equal(spool.counts.reads, 2);
  await blocks.close();
});

Deno.test("spool blocks: after close, the next read opens the spool again", async () => {
  const bytes = patterned(1000);
  await using spool = await spoolFile(bytes);
  const blocks = new SpoolBlocks(spool.open);
  deepEqual((await blocks.at(0, 1000, 1000, {})).bytes, bytes);
  await blocks.close();
  deepEqual((await blocks.at(500, 1000, 1000, {})).bytes, bytes.subarray(500));
  equal(spool.counts.opens, 2);
  await blocks.close();
});

Deno.test("spool blocks: a block is freed once no longer kept and every part of it was sent", async () => {
  const bytes = patterned(40 * BLOCK);
  await using spool = await spoolFile(bytes);
  const blocks = new SpoolBlocks(spool.open);
  /** A follower taking one part of block `i`, then moving on. */
  const at = async (i: number) => {
    const cursor: SpoolCursor = {};
    const part = await blocks.at(i * BLOCK, (i + 1) * BLOCK, bytes.length, cursor);
    blocks.leave(cursor);
    return part;
  };
  // Block 0: two followers take a part each; block 1: a part never marked sent.
  const a = await at(0);
  const b = await at(0);
  const unsent = await at(1);
  a.sent();
  b.sent();
  b.sent(); // twice counts once
  equal(a.bytes.length, BLOCK, "a kept block is not freed, even with every part sent");
  // Reading 16 more blocks, each sent at once, pushes blocks 0 and 1 out of those kept.
  const later = [];
  for (let i = 2; i < 18; i++) {
    const part = await at(i);
    part.sent();
    later.push(part);
  }
  equal(a.bytes.length, 0, "block 0: no longer kept, every part sent: freed");
  equal(b.bytes.length, 0);
  deepEqual(unsent.bytes, bytes.subarray(BLOCK, 2 * BLOCK), "block 1's part was never sent");
  ok(later.every((part) => part.bytes.length === BLOCK), "the blocks kept are not freed");
  // Closing lets go of the blocks still kept: those with every part sent are freed.
  await blocks.close();
  ok(later.every((part) => part.bytes.length === 0));
  deepEqual(unsent.bytes, bytes.subarray(BLOCK, 2 * BLOCK));
});

Deno.test("spool blocks: a follower's cursor keeps its block while others' reads push it out", async () => {
  const bytes = patterned(40 * BLOCK);
  await using spool = await spoolFile(bytes);
  const blocks = new SpoolBlocks(spool.open);
  const cursor: SpoolCursor = {};
  const piece = BLOCK / 4;
  const parts: Part[] = [];
  for (let pos = 0; pos < BLOCK; pos += piece) {
    parts.push(await blocks.at(pos, pos + piece, bytes.length, cursor));
    // Between two pieces of this follower, others read 20 blocks elsewhere.
    for (let i = 20; i < 40; i++) {
      const other: SpoolCursor = {};
      (await blocks.at(i * BLOCK, (i + 1) * BLOCK, bytes.length, other)).sent();
      blocks.leave(other);
    }
  }
  equal(spool.counts.reads, 1 + 4 * 20, "the follower's block was read once");
  deepEqual(
    new Uint8Array(await new Blob(parts.map((p) => p.bytes) as BlobPart[]).arrayBuffer()),
    bytes.subarray(0, BLOCK),
  );
  for (const part of parts) part.sent();
  equal(parts[0].bytes.length, piece, "still the cursor's block");
  blocks.leave(cursor);
  equal(parts[0].bytes.length, 0, "left, no longer kept, every part sent: freed");
  await blocks.close();
});
