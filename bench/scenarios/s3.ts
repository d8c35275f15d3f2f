// The cache in S3: registry-mirror (`cache.s3`) and Distribution (its s3 storage driver) on one
// real Ceph RGW booted for the scenario, each on an empty prefix in every run: cold and warm pulls
// of the mid blob, next to curl's own PUT and GET; then clients spread over three replicas of
// each on one bucket (./s3_herd.ts).

import { pullRate, timedPull } from "../clients.ts";
import { type BenchEnv, originTraffic, type SeededBlob } from "../env.ts";
import type { Options } from "../options.ts";
import { cpuSeconds, median, perGB } from "../proc.ts";
import { mb, num, ratio, type Row, type ScenarioResult, size } from "../report.ts";
import { directRates, emptyBucket, freshPrefix, type Rgw, useRgw, waitForObject } from "../rgw.ts";
import { type CacheKind, rotate, type Systems } from "../systems.ts";
import { blobKey, type ReplicaHerd, replicaHerd, REPLICAS } from "./s3_herd.ts";

type Series = Record<string, number[]>;

function push(series: Series, key: string, value: number): void {
  (series[key] ??= []).push(value);
}

/** The origin's own file of `blob` (Distribution's filesystem layout), for curl to upload. */
function originFile(env: BenchEnv, blob: SeededBlob): string {
  const hex = blob.digest.slice("sha256:".length);
  return `${env.origin.dataDir}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
}

/** The limits: the origin through the counting proxy, and the bucket's PUT and GET with curl. */
async function limits(env: BenchEnv, rgw: Rgw, blob: SeededBlob, series: Series): Promise<void> {
  push(series, "cold.proxied", await pullRate(env.nginx.proxyUrl + blob.path, blob.size));
  const bucket = freshPrefix(rgw, "direct");
  try {
    const { put, get } = await directRates(bucket, originFile(env, blob), blob.size);
    push(series, "put.curl", put);
    push(series, "get.curl", get);
  } finally {
    await emptyBucket(bucket);
  }
}

/**
 * One cold pull (timed until the blob is in the bucket and the origin quiet, for the CPU and the
 * origin's bytes), then one warm pull, through a cache of `kind` on a new prefix of the bucket.
 */
async function pulls(
  env: BenchEnv,
  caches: Systems,
  where: { kind: CacheKind; rgw: Rgw; blob: SeededBlob; dir: string },
  series: Series,
): Promise<void> {
  const { kind, blob, dir } = where;
  const bucket = freshPrefix(where.rgw, kind);
  const cache = await caches.start(kind, dir, bucket);
  try {
    let mark = env.nginx.mark();
    let cpu = cache.cpuSeconds();
    const began = performance.now();
    push(series, `cold.${kind}`, (await timedPull(cache.url + blob.path, blob.size)).mbps);
    const stored = await waitForObject(bucket, blobKey(kind, blob), 300_000);
    push(series, `stored.${kind}`, (stored - began) / 1000);
    // Distribution keeps fetching (its second copy, for the store) after the client got the blob.
    await env.nginx.settle();
    push(series, `coldCpu.${kind}`, perGB(cache.cpuSeconds() - cpu, blob.size));
    push(series, `origin.${kind}`, originTraffic(env, mark).bytes / blob.size);

    mark = env.nginx.mark();
    cpu = cache.cpuSeconds();
    push(series, `warm.${kind}`, await pullRate(cache.url + blob.path, blob.size));
    push(series, `warmCpu.${kind}`, perGB(cache.cpuSeconds() - cpu, blob.size));
    push(series, `warmOrigin.${kind}`, originTraffic(env, mark).bytes);
    push(series, `rss.${kind}`, cache.peakRss());
  } finally {
    await cache.stop();
    await emptyBucket(bucket);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

function pullRows(opts: Options, blob: SeededBlob, series: Series): Row[] {
  const med = (key: string) => median(series[key] ?? []);
  const rate = (key: string) => `${num(med(key))} MB/s`;
  const both = (key: string, unit: string) => ({
    mirror: `${num(med(`${key}.mirror`))}${unit}`,
    distribution: `${num(med(`${key}.distribution`))}${unit}`,
  });
  const of = `${size(blob.size)} blob, median of ${opts.runs}`;
  const versus = (key: string) => ratio(med(`${key}.mirror`), med(`${key}.distribution`));
  const atLeast = (key: string) =>
    med(`${key}.mirror`) >= med(`${key}.distribution`) ? "met" : "missed";
  // A warm pull must not reach the origin; say so when it did.
  const warmCell = (kind: CacheKind) => {
    const origin = Math.max(...(series[`warmOrigin.${kind}`] ?? [0]));
    return rate(`warm.${kind}`) + (origin > 0 ? ` (origin sent ${mb(origin)})` : "");
  };
  return [
    {
      scenario: "s3",
      measure: `cold pull: MB/s, ${of}`,
      ...both("cold", " MB/s"),
      baseline: `origin via counting proxy ${rate("cold.proxied")}; bucket PUT (curl) ${
        rate("put.curl")
      }`,
      result: `${versus("cold")} Distribution`,
      target: ">= 1.0x Distribution",
      verdict: atLeast("cold"),
    },
    {
      scenario: "s3",
      measure:
        "cold pull: CPU seconds (user + system) of the cache process per GB, upload included",
      ...both("coldCpu", " s"),
      baseline: "",
      result: `${versus("coldCpu")} Distribution's CPU`,
      target: "(reported)",
      verdict: "info",
    },
    {
      scenario: "s3",
      measure: "cold pull: bytes from the origin per pull (x blob size)",
      ...both("origin", "x"),
      baseline: "1x",
      result: `peak RSS ${mb(med("rss.mirror"))} vs ${mb(med("rss.distribution"))}`,
      target: "(reported)",
      verdict: "info",
    },
    {
      scenario: "s3",
      measure: "cold pull: seconds from the request until the blob is in the bucket",
      ...both("stored", " s"),
      baseline: `PUT alone (curl) ${num(blob.size / 1e6 / med("put.curl"))} s`,
      result: `${versus("stored")} Distribution's time`,
      target: "(reported)",
      verdict: "info",
    },
    {
      scenario: "s3",
      measure: `warm pull (from the bucket): MB/s, ${of}`,
      mirror: warmCell("mirror"),
      distribution: warmCell("distribution"),
      baseline: `bucket GET (curl) ${rate("get.curl")}`,
      result: `${versus("warm")} Distribution, ${
        ratio(med("warm.mirror"), med("get.curl"))
      } curl's GET`,
      target: ">= 1.0x Distribution",
      verdict: atLeast("warm"),
    },
    {
      scenario: "s3",
      measure: "warm pull: CPU seconds (user + system) of the cache process per GB",
      ...both("warmCpu", " s"),
      baseline: "",
      result: `${versus("warmCpu")} Distribution's CPU`,
      target: "(reported)",
      verdict: "info",
    },
    {
      scenario: "s3",
      measure: "cold + warm pull: CPU seconds of the RGW's daemons per GB pulled",
      ...(series["rgwCpu.mirror"]
        ? both("rgwCpu", " s")
        : { mirror: "n/a (an RGW not started here)", distribution: "n/a" }),
      baseline: "",
      result: series["rgwCpu.mirror"] ? `${versus("rgwCpu")} Distribution's` : "",
      target: "(reported)",
      verdict: "info",
    },
  ];
}

function herdRows(opts: Options, runs: Record<CacheKind, ReplicaHerd[]>): Row[] {
  const med = (kind: CacheKind, pick: (h: ReplicaHerd) => number) => median(runs[kind].map(pick));
  const n = opts.herdClients;
  const on =
    `${n} clients on ${REPLICAS} replicas, one bucket, one cold blob, median of ${opts.herdRuns}`;
  const complete = (kind: CacheKind) => Math.min(...runs[kind].map((h) => h.complete));
  const mirrorX = med("mirror", (h) => h.originX);
  const origin = (kind: CacheKind) =>
    `${num(med(kind, (h) => h.originX))}x (${num(med(kind, (h) => h.originRequests))} requests)`;
  const wall = (kind: CacheKind) =>
    `${num(med(kind, (h) => h.wallSeconds))} s (${complete(kind)}/${n} complete)`;
  const cpu = (kind: CacheKind) => med(kind, (h) => h.cpuSeconds);
  return [
    {
      scenario: "s3",
      measure: `herd: bytes from the origin (x blob size), ${on}`,
      mirror: origin("mirror"),
      distribution: origin("distribution"),
      baseline: "1x",
      result: `Distribution reads ${ratio(med("distribution", (h) => h.originX), mirrorX)} as much`,
      target: "origin bytes = 1x blob",
      verdict: mirrorX < 1.01 && complete("mirror") === n ? "met" : "missed",
    },
    {
      scenario: "s3",
      measure: `herd: wall time until all ${n} clients have the blob`,
      mirror: wall("mirror"),
      distribution: wall("distribution"),
      baseline: "",
      result: `mirror takes ${
        ratio(med("mirror", (h) => h.wallSeconds), med("distribution", (h) => h.wallSeconds))
      } Distribution's time`,
      target: "(reported)",
      verdict: complete("mirror") === n ? "info" : "missed",
    },
    {
      scenario: "s3",
      measure: `herd: CPU seconds (user + system) of the ${REPLICAS} replicas together`,
      mirror: `${num(cpu("mirror"))} s`,
      distribution: `${num(cpu("distribution"))} s`,
      baseline: "",
      result: `${ratio(cpu("mirror"), cpu("distribution"))} Distribution's CPU`,
      target: "(reported)",
      verdict: "info",
    },
  ];
}

/** CPU seconds the RGW's daemons (mon, OSD, radosgw) used so far, when their pids are known. */
function rgwCpuSeconds(pids: number[]): number {
  return pids.reduce((sum, pid) => {
    try {
      return sum + cpuSeconds(pid);
    } catch {
      return sum;
    }
  }, 0);
}

/** Pids of the daemons of an RGW started by scripts/rgw.sh in `dir` (none when unknown). */
function rgwPids(dir: string | undefined): number[] {
  if (dir === undefined) return [];
  try {
    return [...Deno.readDirSync(`${dir}/run`)]
      .filter((entry) => entry.name.endsWith(".pid"))
      .map((entry) => Number(Deno.readTextFileSync(`${dir}/run/${entry.name}`).trim()));
  } catch {
    return [];
  }
}

/**
 * Boots an RGW (unless `opts.rgw` names one), runs the cold and warm pulls `opts.runs` times
 * (systems in rotating order) and the three-replica herd `opts.herdRuns` times, then stops it.
 */
export async function s3Scenario(
  env: BenchEnv,
  opts: Options,
  caches: Systems,
): Promise<ScenarioResult> {
  const blob = env.mid;
  const rgwDir = `${env.dir}/rgw`;
  const rgw = await useRgw(rgwDir, opts.rgw);
  try {
    const pids = rgwPids(opts.rgw ? undefined : rgwDir);
    const series: Series = {};
    for (let run = 0; run < opts.runs; run++) {
      for (const kind of rotate(["limits", "mirror", "distribution"] as const, run)) {
        if (kind === "limits") {
          await limits(env, rgw, blob, series);
          continue;
        }
        const dir = `${env.dir}/runs/s3-${kind}-${run}`;
        const before = rgwCpuSeconds(pids);
        await pulls(env, caches, { kind, rgw, blob, dir }, series);
        if (pids.length > 0) {
          push(series, `rgwCpu.${kind}`, perGB(rgwCpuSeconds(pids) - before, 2 * blob.size));
        }
      }
    }
    const herds: Record<CacheKind, ReplicaHerd[]> = { mirror: [], distribution: [] };
    for (let run = 0; run < opts.herdRuns; run++) {
      for (const kind of rotate(["mirror", "distribution"] as const, run)) {
        const dir = `${env.dir}/runs/s3-herd-${kind}-${run}`;
        const clients = opts.herdClients;
        herds[kind].push(await replicaHerd(env, caches, { kind, rgw, blob, clients, dir }));
      }
    }
    return {
      id: "s3",
      rows: [...pullRows(opts, blob, series), ...herdRows(opts, herds)],
      raw: { rgw: [`Ceph ${rgw.version}`], ...series, herds },
    };
  } finally {
    await caches.stopAll();
    await rgw.stop();
  }
}
