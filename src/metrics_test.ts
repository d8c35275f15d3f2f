import { equal, match } from "node:assert/strict";
import { Counter, Histogram, MirrorMetrics } from "./metrics.ts";

Deno.test("metrics: Prometheus text format with escaped labels and cumulative buckets", () => {
  const c = new Counter("x_total", "Things.");
  c.inc({ registry: "quay.io", status: "200" });
  c.inc({ status: "200", registry: "quay.io" }, 2);
  c.inc({ registry: 'we"ird\\' });
  equal(
    c.render(),
    [
      "# HELP x_total Things.",
      "# TYPE x_total counter",
      'x_total{registry="quay.io",status="200"} 3',
      'x_total{registry="we\\"ird\\\\"} 1',
    ].join("\n"),
  );
  const h = new Histogram("d_seconds", "Durations.", [0.1, 1]);
  h.observe({ registry: "r" }, 0.05);
  h.observe({ registry: "r" }, 0.5);
  h.observe({ registry: "r" }, 5);
  equal(
    h.render().split("\n").slice(2).join("\n"),
    [
      'd_seconds_bucket{registry="r",le="0.1"} 1',
      'd_seconds_bucket{registry="r",le="1"} 2',
      'd_seconds_bucket{registry="r",le="+Inf"} 3',
      'd_seconds_sum{registry="r"} 5.55',
      'd_seconds_count{registry="r"} 3',
    ].join("\n"),
  );
});

Deno.test("metrics: collectors run before each render; recent errors are bounded", () => {
  const m = new MirrorMetrics();
  let objects = 0;
  m.collect(() => m.cacheObjects.set({}, ++objects));
  match(m.render(), /^registry_mirror_cache_objects 1$/m);
  match(m.render(), /^registry_mirror_cache_objects 2$/m);
  for (let i = 0; i < 30; i++) m.upstreamFailed({ registry: "r", status: 503, message: `${i}` });
  equal(m.recentErrors.length, 20);
  equal(m.recentErrors[0].message, "29");
  match(m.render(), /# TYPE registry_mirror_evictions_total counter/);
});
