// Start-up of the mirror on a cache holding many objects: seconds from spawning the process to the
// first 200 on /v2/, to the first blob served as a cache HIT, and to its eviction index loaded.

import { REPO } from "../env.ts";
import type { BenchEnv } from "../env.ts";
import { fabricateCache } from "../fabricate.ts";
import type { Options } from "../options.ts";
import { median, sleep, waitHttp } from "../proc.ts";
import { num, type ScenarioResult } from "../report.ts";
import type { Systems } from "../systems.ts";

/** Seconds after spawning the mirror. */
interface Startup {
  ready: number;
  hit: number;
  /** When the log said the cache index was loaded (NaN if not within the time bound). */
  indexed: number;
}

async function logLine(path: string, text: string, timeoutMs: number): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    const log = await Deno.readTextFile(path).catch(() => "");
    if (log.includes(text)) return performance.now();
    await sleep(20);
  }
  return NaN;
}

async function start(
  env: BenchEnv,
  caches: Systems,
  cacheDir: string,
  probe: string,
  run: number,
): Promise<Startup> {
  const mirror = await caches.mirror(`${env.dir}/runs/startup-${run}`, { cacheDir, noWait: true });
  try {
    const ready = await waitHttp(`${mirror.url}/v2/`, {
      everyMs: 5,
      timeoutMs: 30_000,
      alive: mirror.alive,
    });
    const response = await fetch(`${mirror.url}/v2/${REPO}/blobs/${probe}`);
    await response.arrayBuffer();
    const hit = performance.now();
    if (response.status !== 200 || response.headers.get("x-cache") !== "HIT") {
      throw new Error(`probe blob: ${response.status} X-Cache ${response.headers.get("x-cache")}`);
    }
    const indexed = await logLine(mirror.logPath, "cache index loaded", 60_000);
    const after = (t: number) => (t - mirror.spawnedAt) / 1000;
    return { ready: after(ready), hit: after(hit), indexed: after(indexed) };
  } finally {
    await mirror.stop();
  }
}

/** Fabricates `opts.objects` cached objects and starts the mirror on them `opts.runs` times. */
export async function startupScenario(
  env: BenchEnv,
  opts: Options,
  caches: Systems,
): Promise<ScenarioResult> {
  const cacheDir = `${env.dir}/runs/startup-cache`;
  try {
    const began = performance.now();
    const made = await fabricateCache(cacheDir, opts.objects, {
      registry: "docker.io",
      repository: REPO,
    });
    const fabricateSeconds = (performance.now() - began) / 1000;
    // One start not measured: Deno's module cache, the page cache of the directory.
    await start(env, caches, cacheDir, made.probeDigest, -1);
    const runs: Startup[] = [];
    for (let run = 0; run < opts.runs; run++) {
      runs.push(await start(env, caches, cacheDir, made.probeDigest, run));
    }
    const med = (pick: (s: Startup) => number) => median(runs.map(pick));
    const ready = med((s) => s.ready);
    const hit = med((s) => s.hit);
    return {
      id: "startup",
      rows: [{
        scenario: "startup",
        measure: `seconds from spawn, ${
          made.blobs + made.manifests
        } objects, median of ${opts.runs}`,
        mirror: `first 200 on /v2/ ${num(ready)} s; first blob HIT ${num(hit)} s`,
        distribution: "",
        baseline: "",
        result: `eviction index loaded after ${num(med((s) => s.indexed))} s`,
        target: "< 2 s to first answer",
        verdict: ready < 2 && hit < 2 ? "met" : "missed",
      }],
      raw: { runs, fabricated: made, fabricateSeconds },
    };
  } finally {
    await Deno.remove(cacheDir, { recursive: true }).catch(() => {});
  }
}
