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

Deno.test("metrics: pull counts keep only the most recently pulled images", () => {
  const m = new MirrorMetrics();
  const pull = (image: string) => m.pulls.set(image, (m.pulls.get(image) ?? 0) + 1);
  pull("docker.io/library/busybox:1");
  for (let i = 0; i < 20_000; i++) {
    pull(`docker.io/x/n${i}:latest`);
    if (i % 100 === 0) pull("docker.io/library/ubuntu:24.04");
  }
  equal(m.pulls.size, 10_000, "bounded, not one entry per name ever pulled");
  equal(m.pulls.get("docker.io/library/busybox:1"), undefined, "the least recent left");
  equal(m.pulls.get("docker.io/x/n19999:latest"), 1);
  equal(m.pulls.get("docker.io/library/ubuntu:24.04"), 200, "an image in use keeps its count");
  const top = [...m.pulls.entries()].sort((a, b) => b[1] - a[1])[0];
  equal(top[0], "docker.io/library/ubuntu:24.04");
});
