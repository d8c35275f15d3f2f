// Rate-limited clients reading a warm blob for a bounded time: each cache's peak memory with the
// big blob against the mid-size one; memory must not grow with the blob's size.

import { parallelPulls, pullRate } from "../clients.ts";
import type { BenchEnv, SeededBlob } from "../env.ts";
import type { Options } from "../options.ts";
import { median, sampleRss } from "../proc.ts";
import { mb, type ScenarioResult, size } from "../report.ts";
import type { CacheKind, Systems } from "../systems.ts";

/** Peak memory while the slow clients read one blob. */
interface SlowRun {
  blob: string;
  peakRss: number;
  /** Highest VmRSS sampled minus the first sample, while the clients read. */
  growth: number;
  /** Bytes the clients got in total. */
  received: number;
}

async function warmUp(env: BenchEnv, caches: Systems, kind: CacheKind, dir: string) {
  const cache = await caches.start(kind, dir);
  try {
    for (const blob of [env.mid, env.big]) await pullRate(cache.url + blob.path, blob.size);
    await env.nginx.settle();
  } finally {
    await cache.stop();
  }
}

async function slowRun(
  opts: Options,
  caches: Systems,
  kind: CacheKind,
  dir: string,
  blob: SeededBlob,
): Promise<SlowRun> {
  const cache = await caches.start(kind, dir);
  try {
    const sampler = sampleRss(cache.pid);
    const { pulls } = await parallelPulls(cache.url + blob.path, opts.slowClients, {
      limitRate: opts.slowRate,
      maxTimeS: opts.slowSeconds,
    });
    const samples = sampler.stop();
    if (pulls.some((p) => p.status !== 200 || p.bytes === 0)) {
      throw new Error(`slow clients of ${kind}: ${JSON.stringify(pulls)}`);
    }
    return {
      blob: blob.tag,
      peakRss: cache.peakRss(),
      growth: Math.max(...samples) - samples[0],
      received: pulls.reduce((sum, p) => sum + p.bytes, 0),
    };
  } finally {
    await cache.stop();
  }
}

/** Warms each cache with both blobs, then runs the slow clients on each, in a fresh process. */
export async function slowScenario(
  env: BenchEnv,
  opts: Options,
  caches: Systems,
): Promise<ScenarioResult> {
  const runs: Record<CacheKind, SlowRun[]> = { mirror: [], distribution: [] };
  for (const kind of ["mirror", "distribution"] as const) {
    const dir = `${env.dir}/runs/slow-${kind}`;
    try {
      await warmUp(env, caches, kind, dir);
      for (let run = 0; run < opts.slowRuns; run++) {
        for (const blob of [env.mid, env.big]) {
          runs[kind].push(await slowRun(opts, caches, kind, dir, blob));
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  }
  const peak = (kind: CacheKind, blob: SeededBlob) =>
    median(runs[kind].filter((r) => r.blob === blob.tag).map((r) => r.peakRss));
  const cell = (kind: CacheKind) =>
    `${mb(peak(kind, env.big))} (${size(env.big.size)}) vs ${mb(peak(kind, env.mid))} (${
      size(env.mid.size)
    })`;
  const growth = peak("mirror", env.big) - peak("mirror", env.mid);
  // "Not growing with blob size": less than 5% of the extra blob bytes, or within 8 MB of noise.
  const allowed = Math.max(8e6, 0.05 * (env.big.size - env.mid.size));
  return {
    id: "slow",
    rows: [{
      scenario: "slow",
      measure:
        `peak RSS, ${opts.slowClients} clients at ${opts.slowRate}B/s for ${opts.slowSeconds} s, ` +
        `median of ${opts.slowRuns}`,
      mirror: cell("mirror"),
      distribution: cell("distribution"),
      baseline: "",
      result: `mirror ${growth >= 0 ? "+" : ""}${mb(growth)} for a ${
        size(env.big.size - env.mid.size)
      } bigger blob`,
      target: "bounded, not growing with blob size",
      verdict: growth <= allowed ? "met" : "missed",
    }],
    raw: { runs },
  };
}
