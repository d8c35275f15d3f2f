// The C allocator's settings the mirror runs with, and the warning when it runs without them.

/**
 * glibc's malloc settings, given by the environment (GLIBC_TUNABLES is read once, at process
 * start): `deno task start` and the container image set it. A blob is sent as 1 MiB buffers that
 * the garbage collector frees in batches; with glibc's defaults each batch shrinks the heap and
 * the next buffers fault their pages in again (130,000-200,000 page faults per GiB sent, measured
 * by bench/warm_ceiling.ts). Buffers under 4 MiB stay on the heap, and up to 128 MiB of free heap is
 * kept: warm pulls ran 1.2-1.8x faster with 0.7x the CPU, at the same peak memory.
 */
export const GLIBC_TUNABLES =
  "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=134217728:" +
  "glibc.malloc.top_pad=16777216";

/**
 * The warning to log at start on Linux when GLIBC_TUNABLES does not hold the mirror's settings
 * (the executable run by hand), or undefined.
 */
export function allocatorWarning(os: string, tunables: string | undefined): string | undefined {
  if (os !== "linux" || tunables?.includes(GLIBC_TUNABLES)) return undefined;
  return `GLIBC_TUNABLES does not hold the allocator settings the mirror is measured with: ` +
    `blobs are sent 1.2-1.8x slower, at more CPU. Start it with GLIBC_TUNABLES=${GLIBC_TUNABLES} ` +
    `(deno task start and the container image do)`;
}
