// Launches registry-mirror as `deno run <the start task's flags> main.ts --config FILE`, directly
// (no task runner in between), so its pid, memory and start-up time are the server's own.

import type { CacheProcess } from "./distribution.ts";
import { freePort } from "../tests/fixtures/tools.ts";
import { cpuSeconds, peakRss, spawnLogged, tailOf, waitHttp } from "./proc.ts";
import type { BucketSettings } from "./rgw.ts";

/** Options of {@linkcode startMirrorProcess}. */
export interface MirrorOptions {
  /** Directory for config.json and the log. */
  dir: string;
  /** The checkout whose main.ts is run. */
  root: string;
  /** Cache directory (default `dir/cache`). */
  cacheDir?: string;
  /** Base URL Docker Hub's requests go to. */
  upstream: string;
  /** Write a V8 CPU profile here when the process exits (`--cpu-prof`). */
  cpuProfDir?: string;
  /** MIRROR_LOG_LEVEL (default: the mirror's default, info). */
  logLevel?: string;
  /** Do not wait for `GET /v2/` (the caller times start-up itself). */
  noWait?: boolean;
  /** cache.tagTtl (default: the mirror's default). */
  tagTtl?: string;
  /** cache.s3: keep the cache in this bucket, under `prefix` (`dir` then holds only spools). */
  s3?: BucketSettings;
  /** Join the replicas sharing `s3` and this cluster secret (advertising this mirror's URL). */
  clusterSecret?: string;
}

/** A running mirror; `spawnedAt` is performance.now() just before the process was spawned. */
export interface MirrorProcess extends CacheProcess {
  spawnedAt: number;
  logPath: string;
  alive(): boolean;
}

/** The permission flags of `deno task start` in `root`'s deno.json, so they stay the same. */
export function startFlags(root: string): string[] {
  const meta = JSON.parse(Deno.readTextFileSync(`${root}/deno.json`));
  const task: string = meta.tasks.start;
  return task.split(/\s+/).filter((word) => word.startsWith("--"));
}

/**
 * The environment `deno task start` sets in the checkout at `root`: its `NAME=value` words before
 * `deno` (the glibc allocator's settings, the update check off).
 */
export function startEnv(root: string): Record<string, string> {
  const meta = JSON.parse(Deno.readTextFileSync(`${root}/deno.json`));
  const task: string = meta.tasks.start;
  const words = task.slice(0, task.search(/(^|\s)deno\s/)).trim().split(/\s+/).filter(Boolean);
  return Object.fromEntries(words.map((word) => word.split(/=(.*)/s).slice(0, 2)));
}

/** Starts the mirror with Docker Hub pointed at `opts.upstream` and waits until it answers. */
export async function startMirrorProcess(opts: MirrorOptions): Promise<MirrorProcess> {
  const port = freePort();
  const configPath = `${opts.dir}/config.json`;
  await Deno.mkdir(opts.dir, { recursive: true });
  await Deno.writeTextFile(
    configPath,
    JSON.stringify({
      listen: `127.0.0.1:${port}`,
      registries: { "docker.io": { upstream: opts.upstream } },
      cache: {
        dir: opts.cacheDir ?? `${opts.dir}/cache`,
        tagTtl: opts.tagTtl,
        s3: opts.s3 && { ...opts.s3, forcePathStyle: true },
      },
      cluster: opts.clusterSecret === undefined
        ? undefined
        : { advertise: `http://127.0.0.1:${port}`, secret: opts.clusterSecret },
    }),
  );
  const profile = opts.cpuProfDir ? ["--cpu-prof", `--cpu-prof-dir=${opts.cpuProfDir}`] : [];
  const env: Record<string, string> = {
    ...startEnv(opts.root),
    ...(opts.logLevel ? { MIRROR_LOG_LEVEL: opts.logLevel } : {}),
  };
  const spawnedAt = performance.now();
  const process = spawnLogged(
    Deno.execPath(),
    ["run", ...startFlags(opts.root), ...profile, "main.ts", "--config", configPath],
    { logPath: `${opts.dir}/mirror-${port}.log`, cwd: opts.root, env },
  );
  const url = `http://127.0.0.1:${port}`;
  const mirror: MirrorProcess = {
    url,
    pid: process.pid,
    spawnedAt,
    logPath: process.logPath,
    alive: () => !process.exited(),
    peakRss: () => peakRss(process.pid),
    cpuSeconds: () => cpuSeconds(process.pid),
    stop: () => process.stop(),
  };
  if (opts.noWait) return mirror;
  try {
    await waitHttp(`${url}/v2/`, { alive: mirror.alive });
  } catch (e) {
    await process.stop();
    const log = await tailOf(process.logPath, 5);
    throw new Error(`mirror did not start: ${(e as Error).message}\n${log}`);
  }
  return mirror;
}
