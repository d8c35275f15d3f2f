import { equal, match, ok } from "node:assert/strict";
import { MirrorMetrics } from "./metrics.ts";

/** Every metric name on /metrics today: the README lists them; dashboards and alerts use them. */
const NAMES = [
  "registry_mirror_requests_total",
  "registry_mirror_cache_results_total",
  "registry_mirror_cache_bytes_served_total",
  "registry_mirror_upstream_bytes_total",
  "registry_mirror_upstream_requests_total",
  "registry_mirror_upstream_request_duration_seconds",
  "registry_mirror_token_fetches_total",
  "registry_mirror_upstream_ratelimit_remaining",
  "registry_mirror_fills_in_flight",
  "registry_mirror_coalesced_waiters_total",
  "registry_mirror_fill_resumes_total",
  "registry_mirror_digest_mismatches_total",
  "registry_mirror_disk_errors_total",
  "registry_mirror_fills_uncached_total",
  "registry_mirror_cache_size_bytes",
  "registry_mirror_cache_max_size_bytes",
  "registry_mirror_cache_objects",
  "registry_mirror_evictions_total",
  "registry_mirror_connections_closed_total",
  "registry_mirror_bodies_relayed_total",
];

Deno.test("metrics: every name and type of before, the response histogram, process metrics", async () => {
  const m = new MirrorMetrics();
  m.requests.inc({ kind: "blob", status: "200" });
  m.requests.inc({ status: "200", kind: "blob" }, 2);
  m.upstreamRequests.inc({ registry: 'we"ird\\', status: "0" });
  m.requestDuration.observe({ kind: "manifest", status_class: "2xx" }, 0.003);
  m.requestDuration.observe({ kind: "manifest", status_class: "2xx" }, 7);
  m.upstreamLatency.observe({ registry: "quay.io" }, 0.05);
  const text = await m.render();
  for (const name of NAMES) match(text, new RegExp(`^# HELP ${name} `, "m"));
  match(text, /^# TYPE registry_mirror_requests_total counter$/m);
  match(
    text,
    /^# TYPE registry_mirror_evictions_total counter$/m,
    "a live counter stays a counter",
  );
  match(text, /^# TYPE registry_mirror_cache_objects gauge$/m);
  match(text, /^registry_mirror_requests_total\{kind="blob",status="200"\} 3$/m);
  match(text, /^registry_mirror_upstream_requests_total\{registry="we\\"ird\\\\",status="0"\} 1$/m);
  match(text, /^# TYPE registry_mirror_request_duration_seconds histogram$/m);
  const series = 'kind="manifest",status_class="2xx"';
  match(
    text,
    new RegExp(
      `^registry_mirror_request_duration_seconds_bucket\\{le="0.005",${series}\\} 1$`,
      "m",
    ),
  );
  match(
    text,
    new RegExp(`^registry_mirror_request_duration_seconds_bucket\\{le="10",${series}\\} 2$`, "m"),
  );
  match(
    text,
    new RegExp(
      `^registry_mirror_request_duration_seconds_bucket\\{le="\\+Inf",${series}\\} 2$`,
      "m",
    ),
  );
  match(
    text,
    new RegExp(`^registry_mirror_request_duration_seconds_sum\\{${series}\\} 7.003$`, "m"),
  );
  match(text, new RegExp(`^registry_mirror_request_duration_seconds_count\\{${series}\\} 2$`, "m"));
  match(text, /^registry_mirror_upstream_request_duration_seconds_count\{registry="quay.io"\} 1$/m);
  match(text, /^process_resident_memory_bytes [1-9]\d*$/m, "resident memory");
  match(text, /^process_open_fds [1-9]\d*$/m, "open descriptors");
  match(text, /^process_max_fds [1-9]\d*$/m, "descriptor limit");
  match(text, /^process_cpu_seconds_total /m);
  match(text, /^nodejs_eventloop_lag_seconds /m);
  ok(!/^registry_mirror_cache_max_size_bytes /m.test(text), "no maximum: no sample");
});

Deno.test("metrics: collectors run before each render; live counters are replaced", async () => {
  const m = new MirrorMetrics();
  let objects = 0;
  m.collect(() => {
    m.cacheObjects.set({}, ++objects);
    m.evictions.set({}, objects * 10);
    m.tokenFetches.set({ registry: "quay.io" }, objects);
    m.tokenFetches.set({ registry: "ghcr.io" }, 5);
  });
  match(await m.render(), /^registry_mirror_cache_objects 1$/m);
  const second = await m.render();
  match(second, /^registry_mirror_cache_objects 2$/m);
  match(second, /^registry_mirror_evictions_total 20$/m);
  match(second, /^registry_mirror_token_fetches_total\{registry="quay.io"\} 2$/m);
  match(second, /^registry_mirror_token_fetches_total\{registry="ghcr.io"\} 5$/m);
  m.cacheMaxSize.set({}, 1024);
  match(await m.render(), /^registry_mirror_cache_max_size_bytes 1024$/m);
  for (let i = 0; i < 30; i++) m.upstreamFailed({ registry: "r", status: 503, message: `${i}` });
  equal(m.recentErrors.length, 20);
  equal(m.recentErrors[0].message, "29");
});

Deno.test("metrics: two instances keep their own values", async () => {
  const a = new MirrorMetrics();
  const b = new MirrorMetrics();
  a.requests.inc({ kind: "base", status: "200" });
  match(await a.render(), /^registry_mirror_requests_total\{kind="base",status="200"\} 1$/m);
  ok(!/^registry_mirror_requests_total\{/m.test(await b.render()));
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
