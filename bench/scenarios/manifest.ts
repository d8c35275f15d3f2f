// A cached manifest asked for by tag by many concurrent keep-alive clients (wrk): requests per
// second and p99 latency of each cache, and how often each asked the origin meanwhile.

import { type Load, wrkLoad } from "../clients.ts";
import { type BenchEnv, MANIFEST_ACCEPT, originTraffic, REPO } from "../env.ts";
import type { Options } from "../options.ts";
import { median } from "../proc.ts";
import { num, ratio, type ScenarioResult } from "../report.ts";
import { type CacheKind, rotate, type Systems } from "../systems.ts";

const HEADERS = { accept: MANIFEST_ACCEPT };

/** Fetches the manifest twice (the second must be cached) and checks both answers. */
async function prime(url: string): Promise<void> {
  for (let i = 0; i < 2; i++) {
    const response = await fetch(url, { headers: HEADERS });
    await response.body?.cancel();
    if (response.status !== 200) throw new Error(`GET ${url}: ${response.status}`);
  }
}

async function measure(
  env: BenchEnv,
  opts: Options,
  caches: Systems,
  kind: CacheKind,
  dir: string,
): Promise<Load & { originRequests: number }> {
  const cache = await caches.start(kind, dir);
  try {
    const url = `${cache.url}/v2/${REPO}/manifests/${env.manifestTag}`;
    await prime(url);
    // Warm-up: JIT, connection pools, page cache.
    await wrkLoad(url, { connections: opts.concurrency, durationS: 1, headers: HEADERS });
    const mark = env.nginx.mark();
    const load = await wrkLoad(url, {
      connections: opts.concurrency,
      durationS: opts.loadSeconds,
      headers: HEADERS,
    });
    await env.nginx.idle();
    return { ...load, originRequests: originTraffic(env, mark).requests };
  } finally {
    await cache.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs the manifest load `opts.runs` times against each cache. */
export async function manifestScenario(
  env: BenchEnv,
  opts: Options,
  caches: Systems,
): Promise<ScenarioResult> {
  const loads: Record<CacheKind, (Load & { originRequests: number })[]> = {
    mirror: [],
    distribution: [],
  };
  for (let run = 0; run < opts.runs; run++) {
    for (const kind of rotate(["distribution", "mirror"] as const, run)) {
      loads[kind].push(
        await measure(env, opts, caches, kind, `${env.dir}/runs/manifest-${kind}-${run}`),
      );
    }
  }
  const rate = (kind: CacheKind) => median(loads[kind].map((l) => l.requestsPerSec));
  const p99 = (kind: CacheKind) => median(loads[kind].map((l) => l.p99Ms));
  const errors = (kind: CacheKind) => loads[kind].reduce((sum, l) => sum + l.errors, 0);
  const perRequest = (kind: CacheKind) =>
    median(loads[kind].map((l) => l.originRequests / Math.max(1, l.requests)));
  const cell = (kind: CacheKind) =>
    `${num(rate(kind))} req/s, p99 ${num(p99(kind))} ms` +
    (errors(kind) > 0 ? `, ${errors(kind)} errors` : "") +
    `; ${num(perRequest(kind))} origin requests per request`;
  const m = rate("mirror");
  const d = rate("distribution");
  return {
    id: "manifest",
    rows: [{
      scenario: "manifest",
      measure:
        `req/s and p99, ${opts.concurrency} clients, ${opts.loadSeconds} s, median of ${opts.runs}`,
      mirror: cell("mirror"),
      distribution: cell("distribution"),
      baseline: "",
      result: `${ratio(m, d)} Distribution req/s`,
      target: ">= 3x Distribution",
      verdict: m >= 3 * d && errors("mirror") === 0 ? "met" : "missed",
    }],
    raw: { loads },
  };
}
