// Many clients at once on a warm (cached) blob: aggregate MB/s and CPU seconds per GB of each cache,
// next to nginx serving the same file.

import { parallelPulls, pullRate } from "../clients.ts";
import type { CacheProcess } from "../distribution.ts";
import type { BenchEnv, SeededBlob } from "../env.ts";
import type { Options } from "../options.ts";
import { cpuSeconds, median, perGB } from "../proc.ts";
import { num, ratio, type Row, type ScenarioResult, size } from "../report.ts";
import { type CacheKind, rotate, type Systems } from "../systems.ts";

/** The servers measured, with how to reach the blob and read their CPU time. */
type Server = { name: string; url: string; cpuSeconds(): number };

/** One crowd of clients on one server. */
interface Crowd {
  /** All clients' bytes over the time until the last one finished, MB/s (10^6). */
  mbps: number;
  /** The server's CPU seconds (user + system) per GB sent. */
  cpuPerGB: number;
}

async function crowd(server: Server, blob: SeededBlob, clients: number): Promise<Crowd> {
  const cpu = server.cpuSeconds();
  const { pulls, wallSeconds } = await parallelPulls(server.url, clients);
  const spent = server.cpuSeconds() - cpu;
  const bad = pulls.filter((p) => p.status !== 200 || p.bytes !== blob.size);
  if (bad.length > 0) {
    throw new Error(
      `${server.name}: ${bad.length} of ${clients} pulls failed: ${JSON.stringify(bad[0])}`,
    );
  }
  const bytes = clients * blob.size;
  return { mbps: bytes / 1e6 / wallSeconds, cpuPerGB: perGB(spent, bytes) };
}

/**
 * Starts both caches on empty directories, fills each with the mid-size blob by one pull, then
 * runs `opts.concurrency` clients at once against each cache and nginx, `opts.runs` times in
 * rotating order.
 */
export async function crowdScenario(
  env: BenchEnv,
  opts: Options,
  caches: Systems,
): Promise<ScenarioResult> {
  const blob = env.mid;
  const clients = opts.concurrency;
  const servers: Server[] = [
    { name: "nginx", url: blob.staticUrl, cpuSeconds: () => cpuSeconds(env.nginx.pid) },
    { name: "sendfile", url: blob.sendfileUrl, cpuSeconds: () => cpuSeconds(env.nginx.pid) },
  ];
  const started: CacheProcess[] = [];
  const runs: Record<string, Crowd[]> = {};
  try {
    for (const kind of ["distribution", "mirror"] as const satisfies CacheKind[]) {
      const cache = await caches.start(kind, `${env.dir}/runs/crowd-${kind}`);
      started.push(cache);
      await pullRate(cache.url + blob.path, blob.size);
      servers.push({ name: kind, url: cache.url + blob.path, cpuSeconds: cache.cpuSeconds });
    }
    await env.nginx.settle(); // Distribution fills its store after the client got the blob
    for (let run = 0; run < opts.runs; run++) {
      for (const server of rotate(servers, run)) {
        (runs[server.name] ??= []).push(await crowd(server, blob, clients));
      }
    }
  } finally {
    for (const cache of started) await cache.stop();
    for (const kind of ["distribution", "mirror"]) {
      await Deno.remove(`${env.dir}/runs/crowd-${kind}`, { recursive: true }).catch(() => {});
    }
  }
  const med = (name: string, pick: (c: Crowd) => number) => median(runs[name].map(pick));
  const rate = (name: string) => med(name, (c) => c.mbps);
  const cpu = (name: string) => med(name, (c) => c.cpuPerGB);
  const nginx = Math.max(rate("nginx"), rate("sendfile"));
  const of = `${clients} clients on the ${size(blob.size)} blob, median of ${opts.runs}`;
  const rows: Row[] = [
    {
      scenario: "crowd",
      measure: `MB/s, all clients together, ${of}`,
      mirror: `${num(rate("mirror"))} MB/s`,
      distribution: `${num(rate("distribution"))} MB/s`,
      baseline: `nginx ${num(rate("nginx"))} MB/s (sendfile ${num(rate("sendfile"))} MB/s)`,
      result: `${ratio(rate("mirror"), rate("distribution"))} Distribution, ${
        ratio(rate("mirror"), nginx)
      } nginx`,
      target: ">= 1.0x Distribution",
      verdict: rate("mirror") >= rate("distribution") ? "met" : "missed",
    },
    {
      scenario: "crowd",
      measure: `CPU seconds (user + system) of the server process per GB, ${of}`,
      mirror: `${num(cpu("mirror"))} s`,
      distribution: `${num(cpu("distribution"))} s`,
      baseline: `nginx ${num(cpu("nginx"))} s (sendfile ${num(cpu("sendfile"))} s)`,
      result: `${ratio(cpu("mirror"), cpu("distribution"))} Distribution's CPU`,
      target: "<= Distribution's",
      verdict: cpu("mirror") <= cpu("distribution") ? "met" : "missed",
    },
  ];
  return { id: "crowd", rows, raw: { runs } };
}
