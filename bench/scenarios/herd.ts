// Many clients at once on one cold big blob: how many bytes each cache reads from the origin, how
// long until every client has the blob, and each cache's peak memory.

import { parallelPulls, pullRate } from "../clients.ts";
import { type BenchEnv, originTraffic } from "../env.ts";
import type { Options } from "../options.ts";
import { currentRss, median } from "../proc.ts";
import { mb, num, ratio, type Row, type ScenarioResult } from "../report.ts";
import { type CacheKind, rotate, type Systems } from "../systems.ts";

/** What one herd run measured. */
interface Herd {
  /** Bytes from the origin, as a multiple of the blob size. */
  originX: number;
  originRequests: number;
  wallSeconds: number;
  /** Clients that got the whole blob with a 200. */
  complete: number;
  peakRss: number;
  /** RSS after start-up and one small cold pull, before the herd. */
  baseRss: number;
}

async function herd(
  env: BenchEnv,
  opts: Options,
  caches: Systems,
  kind: CacheKind,
  dir: string,
  staggerMs = 0,
): Promise<Herd> {
  const cache = await caches.start(kind, dir);
  try {
    await pullRate(cache.url + env.small.path, env.small.size);
    await env.nginx.settle();
    const baseRss = currentRss(cache.pid);
    const mark = env.nginx.mark();
    const maxTimeS = herdTimeLimit(opts);
    const { pulls, wallSeconds } = await parallelPulls(
      cache.url + env.big.path,
      opts.herdClients,
      { maxTimeS, staggerMs },
    );
    await env.nginx.settle();
    const traffic = originTraffic(env, mark);
    return {
      originX: traffic.bytes / env.big.size,
      originRequests: traffic.requests,
      wallSeconds,
      complete: pulls.filter((p) => p.status === 200 && p.bytes === env.big.size).length,
      peakRss: cache.peakRss(),
      baseRss,
    };
  } finally {
    await cache.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Each client is cut after this many seconds (the big blob at 6 MB/s): the run stays bounded. */
function herdTimeLimit(opts: Options): number {
  return Math.max(30, Math.ceil(opts.size / 6e6));
}

/** Clients of the staggered herd start this far apart: 50 of them within 1.5 s. */
const STAGGER_MS = 30;

/**
 * Runs the concurrent cold pull `opts.herdRuns` times against each cache, then once with the
 * clients arriving STAGGER_MS apart, as a fleet's jobs do: they are then megabytes apart in the blob.
 */
export async function herdScenario(
  env: BenchEnv,
  opts: Options,
  caches: Systems,
): Promise<ScenarioResult> {
  const runs: Record<CacheKind, Herd[]> = { mirror: [], distribution: [] };
  for (let run = 0; run < opts.herdRuns; run++) {
    for (const kind of rotate(["mirror", "distribution"] as const, run)) {
      runs[kind].push(await herd(env, opts, caches, kind, `${env.dir}/runs/herd-${kind}-${run}`));
    }
  }
  const staggeredRun = (kind: CacheKind) =>
    herd(env, opts, caches, kind, `${env.dir}/runs/herd-staggered-${kind}`, STAGGER_MS);
  const staggered: Record<CacheKind, Herd> = {
    mirror: await staggeredRun("mirror"),
    distribution: await staggeredRun("distribution"),
  };
  const med = (kind: CacheKind, pick: (h: Herd) => number) => median(runs[kind].map(pick));
  const n = opts.herdClients;
  const of = `of ${opts.herdRuns} run${opts.herdRuns > 1 ? "s" : ""}`;
  const complete = (kind: CacheKind) => Math.min(...runs[kind].map((h) => h.complete));
  const cut = (kind: CacheKind) =>
    complete(kind) < n ? `, clients cut at ${herdTimeLimit(opts)} s: a lower bound` : "";
  // The herd may add at most this much to what the process held before it.
  const rssGrowthLimit = 48e6;
  const growth = (kind: CacheKind) => med(kind, (h) => h.peakRss - h.baseRss);
  const mirrorX = med("mirror", (h) => h.originX);
  const rows: Row[] = [
    {
      scenario: "herd",
      measure: `bytes read from the origin (x blob size), ${n} clients, median ${of}`,
      mirror: `${num(mirrorX)}x (${num(med("mirror", (h) => h.originRequests))} requests${
        cut("mirror")
      })`,
      distribution: `${num(med("distribution", (h) => h.originX))}x (${
        num(med("distribution", (h) => h.originRequests))
      } requests${cut("distribution")})`,
      baseline: "1x",
      result: `Distribution reads ${ratio(med("distribution", (h) => h.originX), mirrorX)} as much`,
      target: "origin bytes = 1x blob",
      verdict: mirrorX < 1.01 ? "met" : "missed",
    },
    {
      scenario: "herd",
      measure: `wall time until all ${n} clients have the blob, median ${of}`,
      mirror: `${num(med("mirror", (h) => h.wallSeconds))} s (${complete("mirror")}/${n} complete)`,
      distribution: `${num(med("distribution", (h) => h.wallSeconds))} s (${
        complete("distribution")
      }/${n} complete)`,
      baseline: "",
      result: `mirror takes ${
        ratio(med("mirror", (h) => h.wallSeconds), med("distribution", (h) => h.wallSeconds))
      } Distribution's time`,
      target: "(reported)",
      verdict: complete("mirror") === n ? "info" : "missed",
    },
    {
      scenario: "herd",
      measure:
        `peak RSS (VmHWM) and its growth over the RSS after start-up and one small pull, median ${of}`,
      mirror: `${mb(med("mirror", (h) => h.peakRss))} (+${mb(growth("mirror"))})`,
      distribution: `${mb(med("distribution", (h) => h.peakRss))} (+${mb(growth("distribution"))})`,
      baseline: "",
      result: `mirror grows ${ratio(growth("mirror"), growth("distribution"))} as much`,
      target: "mirror grows <= 48 MB",
      verdict: growth("mirror") <= rssGrowthLimit ? "met" : "missed",
    },
    staggeredRow(n, staggered),
  ];
  return { id: "herd", rows, raw: { runs, staggered } };
}

/** The staggered herd's memory and time, reported: the target is on clients arriving at once. */
function staggeredRow(n: number, runs: Record<CacheKind, Herd>): Row {
  const growth = (kind: CacheKind) => runs[kind].peakRss - runs[kind].baseRss;
  const show = (kind: CacheKind) =>
    `+${mb(growth(kind))}, ${num(runs[kind].wallSeconds)} s (${runs[kind].complete}/${n} complete)`;
  return {
    scenario: "herd",
    measure: `${n} clients arriving ${STAGGER_MS} ms apart: peak RSS growth and wall time, one run`,
    mirror: show("mirror"),
    distribution: show("distribution"),
    baseline: "",
    result: `mirror grows ${ratio(growth("mirror"), growth("distribution"))} as much`,
    target: "(reported)",
    verdict: runs.mirror.complete === n ? "info" : "missed",
  };
}
