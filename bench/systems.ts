// Starts the caches under test (registry-mirror, Distribution's proxy) in front of the counting
// proxy, and makes sure none outlives the benchmark.

import { type CacheProcess, startDistributionProxy } from "./distribution.ts";
import type { BenchEnv } from "./env.ts";
import { type MirrorProcess, startMirrorProcess } from "./mirror.ts";
import type { BucketSettings } from "./rgw.ts";

/** The caches measured side by side. */
export type CacheKind = "mirror" | "distribution";

/** Starts caches for the scenarios; `stopAll` ends whatever is still running. */
export interface Systems {
  /** Starts registry-mirror with its config and log in `dir` (cache in `dir/cache`). */
  mirror(
    dir: string,
    opts?: {
      noWait?: boolean;
      cacheDir?: string;
      tagTtl?: string;
      s3?: BucketSettings;
      clusterSecret?: string;
    },
  ): Promise<MirrorProcess>;
  /** Starts Distribution's proxy with its storage in `dir/data`, or in the bucket `s3`. */
  distribution(dir: string, s3?: BucketSettings): Promise<CacheProcess>;
  /** Starts one of the two (with its cache in the bucket `s3` when given). */
  start(kind: CacheKind, dir: string, s3?: BucketSettings): Promise<CacheProcess>;
  stopAll(): Promise<void>;
}

/**
 * Caches in front of `env`'s counting proxy; mirrors run from the checkout `mirrorRoot` and write
 * CPU profiles to `cpuProfDir` when set.
 */
export function systems(
  env: BenchEnv,
  settings: { mirrorRoot: string; cpuProfDir?: string },
): Systems {
  const live = new Set<CacheProcess>();
  const track = <T extends CacheProcess>(process: T): T => {
    live.add(process);
    const stop = process.stop;
    process.stop = async () => {
      live.delete(process);
      await stop();
    };
    return process;
  };
  const self: Systems = {
    mirror: async (dir, opts = {}) =>
      track(
        await startMirrorProcess({
          dir,
          root: settings.mirrorRoot,
          upstream: env.nginx.proxyUrl,
          cpuProfDir: settings.cpuProfDir,
          cacheDir: opts.cacheDir,
          noWait: opts.noWait,
          tagTtl: opts.tagTtl,
          s3: opts.s3,
          clusterSecret: opts.clusterSecret,
        }),
      ),
    distribution: async (dir, s3) =>
      track(await startDistributionProxy(dir, env.nginx.proxyUrl, s3)),
    start: (kind, dir, s3) =>
      kind === "mirror" ? self.mirror(dir, { s3 }) : self.distribution(dir, s3),
    stopAll: async () => {
      await Promise.all([...live].map((p) => p.stop()));
    },
  };
  return self;
}

/** Rotates `items` by `run` places, so that no system always goes first. */
export function rotate<T>(items: readonly T[], run: number): T[] {
  const k = run % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}
