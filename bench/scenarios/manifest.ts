// A manifest asked for by tag by many concurrent keep-alive clients (wrk): requests per second and
// p99 latency of each cache, and how often each asked the origin meanwhile. The mirror runs twice:
// with its default tag TTL (the tag is cached) and with tag TTL 0, where it revalidates the tag
// upstream with a HEAD on every request, as Distribution's proxy always does.

import { type Load, wrkLoad } from "../clients.ts";
import type { CacheProcess } from "../distribution.ts";
import { type BenchEnv, MANIFEST_ACCEPT, originTraffic, REPO } from "../env.ts";
import type { Options } from "../options.ts";
import { median } from "../proc.ts";
import { num, ratio, type Row, type ScenarioResult } from "../report.ts";
import { rotate, type Systems } from "../systems.ts";

const HEADERS = { accept: MANIFEST_ACCEPT };

/** The configurations measured. */
const SYSTEMS = ["distribution", "mirror", "mirrorRevalidating"] as const;
type System = typeof SYSTEMS[number];

type Measured = Load & { originRequests: number };

/** Fetches the manifest twice (the second must be cached) and checks both answers. */
async function prime(url: string): Promise<void> {
  for (let i = 0; i < 2; i++) {
    const response = await fetch(url, { headers: HEADERS });
    await response.body?.cancel();
    if (response.status !== 200) throw new Error(`GET ${url}: ${response.status}`);
  }
}

function start(caches: Systems, system: System, dir: string): Promise<CacheProcess> {
  if (system === "distribution") return caches.distribution(dir);
  return caches.mirror(dir, system === "mirrorRevalidating" ? { tagTtl: "0s" } : {});
}

async function measure(
  env: BenchEnv,
  opts: Options,
  caches: Systems,
  system: System,
  dir: string,
): Promise<Measured> {
  const cache = await start(caches, system, dir);
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

/** Runs the manifest load `opts.runs` times against each configuration, in rotating order. */
export async function manifestScenario(
  env: BenchEnv,
  opts: Options,
  caches: Systems,
): Promise<ScenarioResult> {
  const loads: Record<System, Measured[]> = {
    distribution: [],
    mirror: [],
    mirrorRevalidating: [],
  };
  for (let run = 0; run < opts.runs; run++) {
    for (const system of rotate(SYSTEMS, run)) {
      loads[system].push(
        await measure(env, opts, caches, system, `${env.dir}/runs/manifest-${system}-${run}`),
      );
    }
  }
  const rate = (system: System) => median(loads[system].map((l) => l.requestsPerSec));
  const p99 = (system: System) => median(loads[system].map((l) => l.p99Ms));
  const errors = (system: System) => loads[system].reduce((sum, l) => sum + l.errors, 0);
  const perRequest = (system: System) =>
    median(loads[system].map((l) => l.originRequests / Math.max(1, l.requests)));
  const cell = (system: System) =>
    `${num(rate(system))} req/s, p99 ${num(p99(system))} ms` +
    (errors(system) > 0 ? `, ${errors(system)} errors` : "") +
    `; ${num(perRequest(system))} origin requests per request`;
  const d = rate("distribution");
  const how =
    `req/s and p99, ${opts.concurrency} clients, ${opts.loadSeconds} s, median of ${opts.runs}`;
  const row = (system: System, what: string, times: number): Row => ({
    scenario: "manifest",
    measure: `${what}: ${how}`,
    mirror: cell(system),
    distribution: cell("distribution"),
    baseline: "",
    result: `${ratio(rate(system), d)} Distribution req/s`,
    target: `>= ${times}x Distribution`,
    verdict: rate(system) >= times * d && errors(system) === 0 ? "met" : "missed",
  });
  return {
    id: "manifest",
    rows: [
      row("mirror", "tag cached (tag TTL 5 min)", 20),
      // Like for like: Distribution's proxy asks the origin about the tag on every request.
      row("mirrorRevalidating", "tag revalidated upstream on every request (tag TTL 0)", 1.5),
    ],
    raw: { loads },
  };
}
