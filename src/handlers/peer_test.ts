import { deepEqual, equal } from "node:assert/strict";
import { createApp } from "../app.ts";
import { patterned, sha256 } from "../cache/_test_support.ts";
import { Cache } from "../cache/cache.ts";
import { FsStore } from "../cache/fs_store.ts";
import { buildConfig } from "../config.ts";
import { MirrorMetrics } from "../metrics.ts";
import { ClientAuth } from "../security/client_auth.ts";
import { Limits } from "../security/limits.ts";
import { Policy } from "../security/policy.ts";

const SECRET = "peer-test-secret-0123456789";

/** The real app with a cluster secret and client auth on, over a cache in a temp dir. */
async function replica() {
  const dir = await Deno.makeTempDir({ prefix: "peer-test-" });
  const config = buildConfig({
    registries: { "reg.test": { upstream: "https://reg.test" } },
    cache: { dir, s3: { bucket: "b", accessKeyId: "k", secretAccessKey: "s" } },
    cluster: { advertise: "http://10.0.0.1:8080", secret: SECRET },
    auth: { tokens: ["client-token-0123456789"] },
  }, { env: {}, readTextFile: () => "" });
  const cache = new Cache(await FsStore.open(dir, { clean: true }), config.cache);
  const app = createApp({
    config,
    clients: new Map(),
    cache,
    metrics: new MirrorMetrics(),
    policy: new Policy(config.policy),
    limits: new Limits(config.limits),
    auth: config.auth && await ClientAuth.load(config.auth),
  });
  return {
    cache,
    ask: (digest: string, headers: Record<string, string> = {}) =>
      app(new Request(`http://10.0.0.1:8080/_cluster/fills/reg.test/${digest}`, { headers })),
    async [Symbol.asyncDispose]() {
      await cache.eviction.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("peer endpoint: the fill in flight, whole or from a Range; none: 404 saying so", async () => {
  await using r = await replica();
  const bytes = patterned(300_000, 7);
  const digest = sha256(bytes);
  const auth = { authorization: `Bearer ${SECRET}` };

  const none = await r.ask(digest, auth);
  deepEqual([none.status, none.headers.get("x-mirror-fill")], [404, "none"]);
  equal((await none.json()).errors[0].code, "BLOB_UNKNOWN");

  // A fill whose upstream sends half, then the rest once the test says so.
  let rest!: () => void;
  const more = new Promise<void>((resolve) => rest = resolve);
  const body = new ReadableStream<Uint8Array>({
    async start(out) {
      out.enqueue(bytes.slice(0, 150_000));
      await more;
      out.enqueue(bytes.slice(150_000));
      out.close();
    },
  });
  const { fill } = r.cache.fill(
    digest,
    { registry: "reg.test", repository: "org/app" },
    () =>
      Promise.resolve(
        new Response(body, { headers: { "content-length": String(bytes.length) } }),
      ),
  );
  await fill;
  const whole = r.ask(digest, auth);
  const ranged = r.ask(digest, { ...auth, range: "bytes=100000-" });
  const [w, g] = await Promise.all([whole, ranged]);
  deepEqual(
    [w.status, w.headers.get("content-length"), w.headers.get("x-mirror-fill-repository")],
    [200, "300000", "org/app"],
  );
  deepEqual([g.status, g.headers.get("content-range")], [206, "bytes 100000-299999/300000"]);
  rest();
  deepEqual(new Uint8Array(await w.arrayBuffer()), bytes);
  deepEqual(new Uint8Array(await g.arrayBuffer()), bytes.slice(100_000));
});

Deno.test("peer endpoint: replicas need the secret; a client's credentials do not open it", async () => {
  await using r = await replica();
  const digest = sha256(patterned(10, 1));
  for (const authorization of ["Bearer client-token-0123456789", "", `Bearer ${SECRET.slice(1)}`]) {
    const refused = await r.ask(digest, authorization ? { authorization } : {});
    equal(refused.status, 401, authorization);
    equal((await refused.json()).errors[0].code, "UNAUTHORIZED");
  }
});
