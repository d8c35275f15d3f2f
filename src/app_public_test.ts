import { equal, match } from "node:assert/strict";
import { createApp } from "./app.ts";
import { Cache } from "./cache/cache.ts";
import { buildConfig } from "./config.ts";
import { MirrorMetrics } from "./metrics.ts";
import { Limits } from "./security/limits.ts";
import { Policy } from "./security/policy.ts";
import { Upstreams } from "./upstream/upstreams.ts";

const TAG_TTL_MS = 5 * 60_000;

/**
 * A mirror with credentials for `reg.test` and no client auth. Upstream, an anonymous tags list
 * answers as `upstream.visibility` says ("down": 503); every manifest is unknown (404), so a
 * request let through by the visibility check ends 404 and a refused one 401.
 */
async function credentialedMirror(now: () => number) {
  const dir = await Deno.makeTempDir({ prefix: "app-public-test-" });
  const config = buildConfig({
    registries: { "reg.test": { upstream: "https://reg.test", username: "u", password: "p" } },
    cache: { dir, tagTtl: `${TAG_TTL_MS / 1000}s` },
    upstream: { retries: 0 },
  }, { env: {}, readTextFile: () => "" });
  equal(config.cache.tagTtlMs, TAG_TTL_MS);
  const upstream = { visibility: "public" as "public" | "private" | "down", asked: 0 };
  const fetch = (input: URL | RequestInfo) => {
    const path = new URL(String(input)).pathname;
    if (path.endsWith("/tags/list")) {
      upstream.asked++;
      const status = { public: 200, private: 401, down: 503 }[upstream.visibility];
      return Promise.resolve(Response.json({ name: "org/app", tags: ["1"] }, { status }));
    }
    const error = { errors: [{ code: "MANIFEST_UNKNOWN", message: "unknown" }] };
    return Promise.resolve(Response.json(error, { status: 404 }));
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
  const pull = async () => {
    const response = await app(new Request("http://m/v2/reg.test/org/app/manifests/1"));
    return { status: response.status, text: await response.text() };
  };
  const dispose = async () => {
    await cache.eviction.close();
    await Deno.remove(dir, { recursive: true });
  };
  return { upstream, pull, [Symbol.asyncDispose]: dispose };
}

Deno.test("app: a public verdict expires with the tag TTL; a repository turned private is refused", async () => {
  let now = 1_000_000;
  await using mirror = await credentialedMirror(() => now);
  equal((await mirror.pull()).status, 404, "public: let through to the handler");
  equal(mirror.upstream.asked, 1);
  mirror.upstream.visibility = "private";
  now += TAG_TTL_MS - 1;
  equal((await mirror.pull()).status, 404, "within the TTL the verdict stands");
  equal(mirror.upstream.asked, 1, "and upstream is not asked");
  now += 1;
  const refused = await mirror.pull();
  equal(refused.status, 401, "after the TTL upstream is asked again and says private");
  match(refused.text, /org\/app is private upstream/);
  equal(mirror.upstream.asked, 2);
  mirror.upstream.visibility = "public";
  now += 60_000;
  equal((await mirror.pull()).status, 404, "a private verdict lasts a minute");
  equal(mirror.upstream.asked, 3);
});

Deno.test("app: when upstream cannot answer, a public verdict stands another minute", async () => {
  let now = 1_000_000;
  await using mirror = await credentialedMirror(() => now);
  equal((await mirror.pull()).status, 404);
  mirror.upstream.visibility = "down";
  now += TAG_TTL_MS;
  equal((await mirror.pull()).status, 404, "served as before, as a stale tag is");
  equal(mirror.upstream.asked, 2);
  now += 59_999;
  equal((await mirror.pull()).status, 404);
  equal(mirror.upstream.asked, 2, "not asked again within the minute");
  mirror.upstream.visibility = "private";
  now += 1;
  equal((await mirror.pull()).status, 401, "once upstream answers, its answer counts");
  equal(mirror.upstream.asked, 3);
});

Deno.test("app: with no verdict yet, an upstream that cannot answer refuses the request", async () => {
  await using mirror = await credentialedMirror(() => 1_000_000);
  mirror.upstream.visibility = "down";
  const got = await mirror.pull();
  equal(got.status, 502);
  match(got.text, /answered 503/);
});
