// How fast Deno reads a cached file into a buffer, by where the buffer starts within its page: the
// smallest program behind the note in bench/warm_ceiling.ts. A fresh allocation of 1 MiB is a glibc
// mmap chunk whose data starts 16 bytes past a page boundary; the kernel copies page-aligned file
// data into it with `rep movsb`, which on this machine's AMD EPYC runs at a fraction of its speed
// when the destination is 1 to 31 bytes past the source's offset within a page (4K aliasing).
//
//   deno run -A bench/read_alignment.ts [--size 256MiB]
//
// Prints GB/s of `FsFile.readSync` into 1 MiB, for each byte offset of the destination within its
// page, the file in the page cache.

import { parseArgs } from "node:util";
import { parseSize } from "../src/units.ts";

const PIECE = 1024 * 1024;
/** Offsets of the destination past a page boundary (the allocation's own is 16). */
const OFFSETS = [16, 1, 8, 24, 31, 32, 48, 64, 256, 2048, 4095, 0];

const { values } = parseArgs({ args: Deno.args, options: { size: { type: "string" } } });
const size = parseSize(values.size ?? "256MiB");
if (size === undefined) throw new Error(`--size ${values.size}: not a size`);
const path = await Deno.makeTempFile({ prefix: "read-alignment-" });
try {
  const chunk = new Uint8Array(PIECE);
  crypto.getRandomValues(chunk.subarray(0, 65536));
  const file = await Deno.open(path, { write: true });
  for (let written = 0; written < size; written += PIECE) file.writeSync(chunk);
  file.close();
  // One allocation, page boundary + 16 (checked by the timings: offset 16 is the slow one).
  const base = new Uint8Array(PIECE + 8192);
  const read = (into: Uint8Array) => {
    const file = Deno.openSync(path);
    try {
      const started = performance.now();
      let total = 0;
      for (let n = file.readSync(into); n; n = file.readSync(into)) total += n;
      return total / 1e9 / ((performance.now() - started) / 1000);
    } finally {
      file.close();
    }
  };
  read(base.subarray(0, PIECE)); // page cache and buffer pages in
  for (const offset of OFFSETS) {
    const start = (offset - 16 + 4096) % 4096;
    const rates = [0, 1, 2].map(() => read(base.subarray(start, start + PIECE)));
    const best = Math.max(...rates);
    console.log(`destination ${offset} bytes past a page: ${best.toFixed(1)} GB/s`);
  }
} finally {
  await Deno.remove(path);
}
