import { deepEqual, equal } from "node:assert/strict";
import { createApp, type ServeInfo } from "./app.ts";
import { Cache } from "./cache/cache.ts";
import { buildConfig } from "./config.ts";
import { MirrorMetrics } from "./metrics.ts";
import { Limits } from "./security/limits.ts";
import { Policy } from "./security/policy.ts";

/**
 * An app with no upstream, `slots` requests in flight allowed and `clientRate` per client. Every
 * response it gives holds its slot until the app is disposed (as one not yet sent would).
 */
async function limitedApp(clientRate: number, slots = 2) {
  const dir = await Deno.makeTempDir({ prefix: "app-admission-test-" });
  const config = buildConfig({
    cache: { dir },
    limits: { maxConcurrentRequests: slots, clientRate, maxHeaderBytes: 2048 },
  }, { env: {}, readTextFile: () => "" });
  const cache = await Cache.open(config.cache);
  await cache.loaded;
  const app = createApp({
    config,
    clients: new Map(),
    cache,
    metrics: new MirrorMetrics(),
    policy: new Policy(config.policy),
    limits: new Limits(config.limits, () => 1_000_000),
  });
  let release!: () => void;
  const sending = new Promise<void>((resolve) => release = resolve);
  const info: ServeInfo = {
    completed: sending,
    remoteAddr: { transport: "tcp", hostname: "10.0.0.7", port: 1234 },
  };
  const status = async (path: string, init?: RequestInit) => {
    const response = await app(new Request(`http://m${path}`, init), info);
    await response.body?.cancel();
    return response.status;
  };
  const dispose = async () => {
    release();
    await cache.eviction.close();
    await Deno.remove(dir, { recursive: true });
  };
  return { status, [Symbol.asyncDispose]: dispose };
}

const PROBES = ["/healthz", "/readyz", "/metrics"];

Deno.test("app: probes answer while every slot is taken", async () => {
  await using app = await limitedApp(0);
  deepEqual([await app.status("/v2/"), await app.status("/v2/")], [200, 200]);
  equal(await app.status("/v2/"), 503, "the two slots are held");
  equal(await app.status("/api/stats"), 503, "the dashboard's data is not a probe");
  for (const probe of PROBES) equal(await app.status(probe), 200, probe);
});

Deno.test("app: probes answer a client over its rate", async () => {
  await using app = await limitedApp(1);
  // A burst of two, then refused; the slots are not the limit here.
  equal(await app.status("/v2/"), 200);
  equal(await app.status("/v2/"), 200);
  equal(await app.status("/v2/"), 429);
  for (const probe of PROBES) equal(await app.status(probe), 200, probe);
});

Deno.test("app: size limits apply to probes too; writes to ops endpoints are 405", async () => {
  await using app = await limitedApp(0, 10);
  equal(await app.status("/healthz", { headers: { "x-pad": "p".repeat(3000) } }), 431);
  for (const [method, path] of [["PUT", "/metrics"], ["POST", "/healthz"], ["DELETE", "/"]]) {
    equal(await app.status(path, { method }), 405, `${method} ${path}`);
  }
  equal(await app.status("/nowhere", { method: "PUT" }), 404);
});
