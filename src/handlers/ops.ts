// The operator's endpoints: /metrics (Prometheus), /healthz, /readyz, /api/stats and the dashboard.

import type { Cache } from "../cache/cache.ts";
import type { Config } from "../config.ts";
import type { MirrorMetrics } from "../metrics.ts";
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
      return new Response(ops.metrics.render(), {
        headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
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
      return Response.json(stats(ops), { headers: { "cache-control": "no-store" } });
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
export function stats(ops: OpsContext) {
  const { metrics, cache, config } = ops;
  metrics.render(); // runs the collectors, so gauges are current
  const sum = (values: Iterable<{ value: number }>) => [...values].reduce((a, v) => a + v.value, 0);
  const byRegistry = (
    counter: { values: Map<string, { labels: Record<string, string>; value: number }> },
    name: string,
    filter?: (l: Record<string, string>) => boolean,
  ) =>
    sum(
      [...counter.values.values()].filter((v) =>
        v.labels.registry === name && (!filter || filter(v.labels))
      ),
    );
  const { HIT, MISS, STALE } = cache.counts;
  const served = HIT + MISS + STALE;
  const eviction = cache.eviction.stats();
  return {
    uptimeSeconds: Math.round((Date.now() - ops.startedAt) / 1000),
    requests: sum(metrics.requests.values.values()),
    cache: {
      hits: HIT,
      misses: MISS,
      stale: STALE,
      hitRatio: served ? (HIT + STALE) / served : 0,
      bytesServed: sum(metrics.cacheBytes.values.values()),
      sizeBytes: eviction.bytes,
      maxSizeBytes: config.cache.maxSizeBytes ?? null,
      objects: eviction.objects,
      evictions: eviction.evictions,
      fillsInFlight: cache.fills.active,
    },
    registries: [...config.registries.keys()].map((name) => ({
      name,
      upstreamRequests: byRegistry(metrics.upstreamRequests, name),
      upstreamErrors: byRegistry(
        metrics.upstreamRequests,
        name,
        (l) => l.status === "0" || Number(l.status) >= 500 || l.status === "429",
      ),
      upstreamBytes: byRegistry(metrics.upstreamBytes, name),
      cacheBytes: byRegistry(metrics.cacheBytes, name),
      rateLimitRemaining: [...metrics.rateLimitRemaining.values.values()]
        .find((v) => v.labels.registry === name)?.value ?? null,
    })),
    topImages: [...metrics.pulls.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10)
      .map(([image, pulls]) => ({ image, pulls })),
    recentErrors: metrics.recentErrors,
  };
}
