// The operator's endpoints: /metrics (Prometheus), /healthz, /readyz, /api/stats and the dashboard.

import type { Cache } from "../cache/cache.ts";
import type { Config } from "../config.ts";
import { METRICS_CONTENT_TYPE, type MirrorMetrics } from "../metrics.ts";
import type { OpsEndpoint } from "../route.ts";
import { DASHBOARD_CSP, DASHBOARD_HTML } from "./dashboard_page.ts";

/** What the operator's endpoints read. */
export interface OpsContext {
  config: Config;
  cache: Cache;
  metrics: MirrorMetrics;
  startedAt: number;
}

/** Serves one of the operator's endpoints. */
export async function handleOps(endpoint: OpsEndpoint, ops: OpsContext): Promise<Response> {
  switch (endpoint) {
    case "metrics":
      return new Response(await ops.metrics.render(), {
        headers: { "content-type": METRICS_CONTENT_TYPE },
      });
    case "healthz":
      return Response.json({ status: "ok" });
    case "readyz": {
      // A cache that cannot write (a full disk) is reported, not hidden.
      const problem = await ops.cache.writeProblem();
      return Response.json(
        problem ? { status: "unready", problem } : { status: "ready" },
        { status: problem ? 503 : 200 },
      );
    }
    case "stats":
      return Response.json(await stats(ops), { headers: { "cache-control": "no-store" } });
    case "dashboard":
      return new Response(DASHBOARD_HTML, {
        headers: {
          "content-type": "text/html; charset=utf-8",
          "content-security-policy": DASHBOARD_CSP,
        },
      });
  }
}

/** The numbers the dashboard shows, as JSON. */
export async function stats(ops: OpsContext) {
  const { metrics, cache, config } = ops;
  metrics.refresh(); // runs the collectors, so every value is current
  const samples = async (metric: { get(): Promise<{ values: Sample[] }> }) =>
    (await metric.get()).values;
  const sum = (values: Sample[]) => values.reduce((a, v) => a + v.value, 0);
  const requests = await samples(metrics.requests);
  const cacheBytes = await samples(metrics.cacheBytes);
  const upstreamRequests = await samples(metrics.upstreamRequests);
  const upstreamBytes = await samples(metrics.upstreamBytes);
  const rateLimits = await samples(metrics.rateLimitRemaining);
  const byRegistry = (values: Sample[], name: string, filter?: (l: Sample["labels"]) => boolean) =>
    sum(values.filter((v) => v.labels.registry === name && (!filter || filter(v.labels))));
  const { HIT, MISS, STALE } = cache.counts;
  const served = HIT + MISS + STALE;
  const eviction = cache.eviction.stats();
  return {
    uptimeSeconds: Math.round((Date.now() - ops.startedAt) / 1000),
    requests: sum(requests),
    cache: {
      hits: HIT,
      misses: MISS,
      stale: STALE,
      hitRatio: served ? (HIT + STALE) / served : 0,
      bytesServed: sum(cacheBytes),
      sizeBytes: eviction.bytes,
      maxSizeBytes: config.cache.maxSizeBytes ?? null,
      objects: eviction.objects,
      evictions: eviction.evictions,
      fillsInFlight: cache.fills.active,
    },
    registries: [...config.registries.keys()].map((name) => ({
      name,
      upstreamRequests: byRegistry(upstreamRequests, name),
      upstreamErrors: byRegistry(
        upstreamRequests,
        name,
        (l) => l.status === "0" || Number(l.status) >= 500 || l.status === "429",
      ),
      upstreamBytes: byRegistry(upstreamBytes, name),
      cacheBytes: byRegistry(cacheBytes, name),
      rateLimitRemaining: rateLimits.find((v) => v.labels.registry === name)?.value ?? null,
    })),
    upstreams: metrics.upstreamStatuses(),
    topImages: [...metrics.pulls.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10)
      .map(([image, pulls]) => ({ image, pulls })),
    recentErrors: metrics.recentErrors,
  };
}

/** One value of a metric, with its labels. */
interface Sample {
  labels: Partial<Record<string, string | number>>;
  value: number;
}
