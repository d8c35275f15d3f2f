// Cold and warm pulls of the big and small blobs: each cache starts empty, is pulled through once
// (cold), then again (warm); next to the origin read directly and nginx serving the same file.

import { pullRate, timedPull } from "../clients.ts";
import { type BenchEnv, MANIFEST_ACCEPT, originTraffic, REPO, type SeededBlob } from "../env.ts";
import type { Options } from "../options.ts";
import { cpuSeconds, median, perGB } from "../proc.ts";
import { mb, num, ratio, type Row, type ScenarioResult, size } from "../report.ts";
import { type CacheKind, rotate, type Systems } from "../systems.ts";

type Series = Record<string, number[]>;

function push(series: Series, key: string, value: number): void {
  (series[key] ??= []).push(value);
}

async function baselines(env: BenchEnv, series: Series): Promise<void> {
  for (const [name, blob] of [["big", env.big], ["small", env.small]] as const) {
    push(series, `cold.${name}.direct`, await pullRate(env.origin.url + blob.path, blob.size));
    // The upstream as each cache sees it: through the counting proxy.
    const proxied = await timedPull(env.nginx.proxyUrl + blob.path, blob.size);
    push(series, `cold.${name}.proxied`, proxied.mbps);
    push(series, `ttfb.${name}.proxied`, proxied.firstByteMs);
    const cpu = cpuSeconds(env.nginx.pid);
    push(series, `warm.${name}.nginx`, await pullRate(blob.staticUrl, blob.size));
    push(series, `warmCpu.${name}.nginx`, perGB(cpuSeconds(env.nginx.pid) - cpu, blob.size));
    push(series, `warm.${name}.sendfile`, await pullRate(blob.sendfileUrl, blob.size));
  }
}

async function throughCache(
  env: BenchEnv,
  caches: Systems,
  kind: CacheKind,
  dir: string,
  series: Series,
): Promise<void> {
  const cache = await caches.start(kind, dir);
  try {
    // What a client sends before any blob: the ping and the manifest (cold, so it goes upstream).
    // Then the small blob, cold, before the big one: the big blob's first byte is timed in a
    // process that has served a blob, as for every layer but the first of a running mirror's life.
    await opening(cache.url, env.big.tag);
    const blobs: [string, SeededBlob][] = [["small", env.small], ["big", env.big]];
    for (const [name, blob] of blobs) {
      const mark = env.nginx.mark();
      const cpu = cache.cpuSeconds();
      const cold = await timedPull(cache.url + blob.path, blob.size);
      push(series, `cold.${name}.${kind}`, cold.mbps);
      push(series, `ttfb.${name}.${kind}`, cold.firstByteMs);
      // Distribution keeps filling its store in the background after the client got the blob.
      await env.nginx.settle();
      push(series, `coldCpu.${name}.${kind}`, perGB(cache.cpuSeconds() - cpu, blob.size));
      push(series, `origin.${name}.${kind}`, originTraffic(env, mark).bytes / blob.size);
    }
    for (const [name, blob] of blobs) {
      const mark = env.nginx.mark();
      const cpu = cache.cpuSeconds();
      push(series, `warm.${name}.${kind}`, await pullRate(cache.url + blob.path, blob.size));
      push(series, `warmCpu.${name}.${kind}`, perGB(cache.cpuSeconds() - cpu, blob.size));
      push(series, `warmOrigin.${name}.${kind}`, originTraffic(env, mark).bytes);
    }
    await firstBytes(env, cache.url, kind, series);
    push(series, `rss.${kind}`, cache.peakRss());
  } finally {
    await cache.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Times the first byte of each loose blob, pulled cold through a cache that has served pulls, next
 * to the upstream's own through the counting proxy just before or just after (alternated): the
 * medians, over the blobs, of the cache's time, the upstream's and the gap between the two.
 */
async function firstBytes(env: BenchEnv, url: string, kind: CacheKind, series: Series) {
  const own: number[] = [];
  const upstream: number[] = [];
  const gaps: number[] = [];
  for (const [i, blob] of env.ttfb.entries()) {
    const viaCache = async () => (await timedPull(url + blob.path, blob.size)).firstByteMs;
    const direct = async () =>
      (await timedPull(env.nginx.proxyUrl + blob.path, blob.size)).firstByteMs;
    let cached: number;
    let origin: number;
    if (i % 2 === 0) {
      cached = await viaCache();
      origin = await direct();
    } else {
      origin = await direct();
      cached = await viaCache();
    }
    own.push(cached);
    upstream.push(origin);
    gaps.push(cached - origin);
  }
  push(series, `ttfbCold.${kind}`, median(own));
  push(series, `ttfbCold.upstream.${kind}`, median(upstream));
  push(series, `ttfbCold.gap.${kind}`, median(gaps));
}

/** `GET /v2/`, then the image's manifest by tag, as docker, containerd and podman open a pull. */
async function opening(url: string, tag: string): Promise<void> {
  for (const path of ["/v2/", `/v2/${REPO}/manifests/${tag}`]) {
    const response = await fetch(url + path, { headers: { accept: MANIFEST_ACCEPT } });
    await response.body?.cancel();
    if (!response.ok) throw new Error(`${url}${path}: ${response.status}`);
  }
}

function med(series: Series, key: string): number {
  return median(series[key] ?? []);
}

function rows(env: BenchEnv, opts: Options, series: Series): { cold: Row[]; warm: Row[] } {
  const rate = (key: string) => `${num(med(series, key))} MB/s`;
  const runs = `median of ${opts.runs}`;
  const cold: Row[] = [];
  const warm: Row[] = [];
  for (const [name, blob] of [["big", env.big], ["small", env.small]] as const) {
    const m = med(series, `cold.${name}.mirror`);
    const d = med(series, `cold.${name}.distribution`);
    const direct = med(series, `cold.${name}.direct`);
    const big = name === "big";
    cold.push({
      scenario: "cold",
      measure: `MB/s, ${size(blob.size)} blob, ${runs}`,
      mirror: rate(`cold.${name}.mirror`),
      distribution: rate(`cold.${name}.distribution`),
      baseline: `origin direct ${rate(`cold.${name}.direct`)} (via counting proxy ${
        rate(`cold.${name}.proxied`)
      })`,
      result: `${ratio(m, d)} Distribution, ${ratio(m, direct)} direct`,
      target: big ? ">= 1.0x Distribution; ratio to direct reported" : "(reported)",
      verdict: big ? (m >= d ? "met" : "missed") : "info",
    });
    const cpu = (phase: string, kind: string) =>
      `${num(med(series, `${phase}Cpu.${name}.${kind}`))} s`;
    if (big) {
      cold.push({
        scenario: "cold",
        measure: "CPU seconds (user + system) of the cache process per GB",
        mirror: cpu("cold", "mirror"),
        distribution: cpu("cold", "distribution"),
        baseline: "",
        result: `${
          ratio(med(series, "coldCpu.big.mirror"), med(series, "coldCpu.big.distribution"))
        } Distribution's CPU`,
        target: "<= Distribution's",
        verdict: med(series, "coldCpu.big.mirror") <= med(series, "coldCpu.big.distribution")
          ? "met"
          : "missed",
      });
      const gap = (kind: string) => med(series, `ttfbCold.gap.${kind}`);
      const own = (kind: string) =>
        `${num(med(series, `ttfbCold.${kind}`))} ms (${num(gap(kind))} ms after the upstream's)`;
      cold.push({
        scenario: "cold",
        measure: `time to first byte of a cold blob (curl): ${env.ttfb.length} blobs of ` +
          `${size(env.ttfb[0]?.size ?? 0)}, each pulled once through the cache after the pulls ` +
          "and once from the upstream through the counting proxy just before or after " +
          `(alternated); medians over the blobs, ${runs}`,
        mirror: own("mirror"),
        distribution: own("distribution"),
        baseline: `upstream via counting proxy ${num(med(series, "ttfbCold.upstream.mirror"))} ms`,
        result: `mirror ${num(gap("mirror"))} ms after the upstream's own`,
        target: "within 5 ms of the upstream's own",
        verdict: gap("mirror") <= 5 ? "met" : "missed",
      });
      const ttfb = (kind: string, blob = "big") => med(series, `ttfb.${blob}.${kind}`);
      cold.push({
        scenario: "cold",
        measure: `time to first byte of the big blob, the process's second blob after start ` +
          `(curl), ${runs}; its first (the small one): mirror ${
            num(ttfb("mirror", "small"))
          } ms, ` +
          `Distribution ${num(ttfb("distribution", "small"))} ms, upstream ` +
          `${num(ttfb("proxied", "small"))} ms`,
        mirror: `${num(ttfb("mirror"))} ms`,
        distribution: `${num(ttfb("distribution"))} ms`,
        baseline: `upstream via counting proxy ${num(ttfb("proxied"))} ms (timed apart)`,
        result: `mirror ${num(ttfb("mirror") - ttfb("proxied"))} ms after the upstream's own`,
        target: "(reported: code not yet warm)",
        verdict: "info",
      });
      cold.push({
        scenario: "cold",
        measure: `bytes from the origin per cold pull (x blob size)`,
        mirror: `${num(med(series, "origin.big.mirror"))}x`,
        distribution: `${num(med(series, "origin.big.distribution"))}x`,
        baseline: "1x",
        result: `peak RSS ${mb(med(series, "rss.mirror"))} vs ${
          mb(med(series, "rss.distribution"))
        }`,
        target: "(reported)",
        verdict: "info",
      });
    }
    const wm = med(series, `warm.${name}.mirror`);
    const wd = med(series, `warm.${name}.distribution`);
    // nginx's faster configuration on this machine is the limit.
    const nginx = Math.max(med(series, `warm.${name}.nginx`), med(series, `warm.${name}.sendfile`));
    // A warm pull must not reach the origin; say so when it did.
    const warmCell = (kind: string) => {
      const origin = Math.max(...(series[`warmOrigin.${name}.${kind}`] ?? [0]));
      return rate(`warm.${name}.${kind}`) + (origin > 0 ? ` (origin sent ${mb(origin)})` : "");
    };
    warm.push({
      scenario: "warm",
      measure: `MB/s, ${size(blob.size)} blob, ${runs}`,
      mirror: warmCell("mirror"),
      distribution: warmCell("distribution"),
      baseline: `nginx ${rate(`warm.${name}.nginx`)} (sendfile ${rate(`warm.${name}.sendfile`)})`,
      result: `${ratio(wm, wd)} Distribution, ${ratio(wm, nginx)} nginx`,
      target: big ? ">= 1.0x Distribution and >= 0.8x nginx" : "(reported)",
      verdict: big ? (wm >= wd && wm >= 0.8 * nginx ? "met" : "missed") : "info",
    });
    if (big) {
      const mirrorCpu = med(series, "warmCpu.big.mirror");
      const distributionCpu = med(series, "warmCpu.big.distribution");
      warm.push({
        scenario: "warm",
        measure: "CPU seconds (user + system) of the server process per GB",
        mirror: cpu("warm", "mirror"),
        distribution: cpu("warm", "distribution"),
        baseline: `nginx ${cpu("warm", "nginx")}`,
        result: `${ratio(mirrorCpu, distributionCpu)} Distribution's, ${
          ratio(mirrorCpu, med(series, "warmCpu.big.nginx"))
        } nginx's CPU`,
        target: "<= Distribution's",
        verdict: mirrorCpu <= distributionCpu ? "met" : "missed",
      });
    }
  }
  return { cold, warm };
}

/** Runs the cold and warm pull scenarios `opts.runs` times (systems in rotating order). */
export async function pullScenarios(
  env: BenchEnv,
  opts: Options,
  caches: Systems,
): Promise<ScenarioResult[]> {
  const series: Series = {};
  for (let run = 0; run < opts.runs; run++) {
    for (const kind of rotate(["direct", "distribution", "mirror"] as const, run)) {
      if (kind === "direct") await baselines(env, series);
      else await throughCache(env, caches, kind, `${env.dir}/runs/pulls-${kind}-${run}`, series);
    }
  }
  const { cold, warm } = rows(env, opts, series);
  const pick = (prefix: string) =>
    Object.fromEntries(Object.entries(series).filter(([key]) => key.startsWith(prefix)));
  return [
    {
      id: "cold",
      rows: cold,
      raw: {
        ...pick("cold."),
        ...pick("coldCpu."),
        ...pick("ttfb."),
        ...pick("ttfbCold."),
        ...pick("origin."),
        ...pick("rss."),
      },
    },
    {
      id: "warm",
      rows: warm,
      raw: { ...pick("warm."), ...pick("warmCpu."), ...pick("warmOrigin.") },
    },
  ];
}
