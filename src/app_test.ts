import { equal } from "node:assert/strict";
import { createApp } from "./app.ts";
import { Cache } from "./cache/cache.ts";
import { buildConfig } from "./config.ts";
import { MirrorMetrics } from "./metrics.ts";
import { Limits } from "./security/limits.ts";
import { Policy } from "./security/policy.ts";
import { Upstreams } from "./upstream/upstreams.ts";

/** A mirror with credentials for `reg.test`, whose upstream refuses every anonymous tags list. */
async function privateUpstreamMirror(now: () => number) {
  const dir = await Deno.makeTempDir({ prefix: "app-test-" });
  const config = buildConfig({
    registries: {
      "reg.test": { upstream: "https://reg.test", username: "u", password: "p" },
    },
    cache: { dir },
  }, { env: {}, readTextFile: () => "" });
  const asked: string[] = [];
  const fetch = (input: URL | RequestInfo) => {
    asked.push(new URL(String(input)).pathname);
    return Promise.resolve(new Response(null, { status: 401 }));
  };
  const registry = config.registries.get("reg.test")!;
  const client = new Upstreams(registry, {
    ...config.upstream,
    userAgent: "test",
    fetch: fetch as typeof globalThis.fetch,
  });
  const cache = await Cache.open(config.cache);
  await cache.loaded;
  const app = createApp({
    config,
    clients: new Map([["reg.test", client]]),
    cache,
    metrics: new MirrorMetrics(),
    policy: new Policy(config.policy),
    limits: new Limits(config.limits, now),
    now,
  });
  const pull = async (name: string) => {
    const response = await app(new Request(`http://m/v2/reg.test/${name}/manifests/latest`));
    await response.body?.cancel();
    return response.status;
  };
  const dispose = async () => {
    await cache.eviction.close();
    await Deno.remove(dir, { recursive: true });
  };
  return { asked, pull, [Symbol.asyncDispose]: dispose };
}

Deno.test("app: private verdicts expire and are bounded in number", async () => {
  let now = 1_000_000;
  await using mirror = await privateUpstreamMirror(() => now);
  equal(await mirror.pull("org/private"), 401);
  equal(await mirror.pull("org/private"), 401);
  equal(mirror.asked.length, 1, "the verdict is remembered");
  equal(mirror.asked[0], "/v2/org/private/tags/list");
  now += 60_000;
  equal(await mirror.pull("org/private"), 401);
  equal(mirror.asked.length, 2, "after a minute upstream is asked again");
  // The incident: 12,000 unknown names, each answered 401 upstream.
  for (let i = 0; i < 12_000; i++) await mirror.pull(`x/n${i}`);
  equal(mirror.asked.length, 12_002);
  equal(await mirror.pull("x/n11999"), 401);
  equal(mirror.asked.length, 12_002, "a recent verdict is remembered");
  equal(await mirror.pull("org/private"), 401);
  equal(mirror.asked.length, 12_003, "the least recent verdict was dropped, so asked again");
});
