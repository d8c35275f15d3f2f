// End to end: upstream faults between the mirror and a real Distribution (retries, Retry-After,
// idle timeouts, resets, refused connections) and what the client sees for each.

import { deepEqual, equal, match, ok } from "node:assert/strict";
import { startFaultProxy } from "./fixtures/fault_proxy.ts";
import { startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { pushImage, pushLargeBlobImage, pushManifest, sha256 } from "./fixtures/seed.ts";
import { freePort, skipUnless } from "./fixtures/tools.ts";

Deno.test({
  name: "upstream faults: retries, timeouts and errors through the mirror",
  ...skipUnless(["docker-registry"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "faults_test_" });
    const registry = await startRegistry({ dir: `${dir}/quay` });
    const proxy = startFaultProxy(registry.url);
    const mirror = await startMirror(dir, {
      registries: {
        "quay.io": { upstream: proxy.url },
        "gcr.io": { upstream: `http://127.0.0.1:${freePort()}` },
      },
      upstream: { idleTimeout: "1s", retries: 2 },
    });
    // Each step asks for its own tag, so that none is already cached.
    const manifestPath = (tag: string) => `/v2/org/app/manifests/${tag}`;
    const seen = (path: string, from: number) =>
      proxy.requests.slice(from).filter((r) => r.path === path);
    try {
      const app = await pushImage(registry.url, "org/app", "1", {
        files: { "app.txt": "app" },
        format: "docker",
      });
      for (const tag of ["retry", "ra1", "ra3600", "fail", "slow"]) {
        await pushManifest(registry.url, "org/app", tag, app.bytes, app.mediaType);
      }
      const get = (path: string, init?: RequestInit) =>
        fetch(`${mirror.url}/v2/quay.io${path}`, init);

      await t.step("503 twice, then success: the client gets the manifest", async () => {
        const from = proxy.requests.length;
        proxy.inject({ path: manifestPath("retry"), status: 503, times: 2 });
        const response = await get("/org/app/manifests/retry", {
          headers: { accept: app.mediaType, "user-agent": "test-client/1.0" },
        });
        equal(response.status, 200);
        equal(sha256(new Uint8Array(await response.arrayBuffer())), app.digest);
        const attempts = seen(manifestPath("retry"), from);
        equal(attempts.length, 3);
        for (const attempt of attempts) {
          equal(
            attempt.headers["user-agent"],
            "test-client/1.0",
            "the client's agent is forwarded",
          );
          equal(attempt.headers["accept-encoding"], "identity");
        }
      });

      await t.step("429 with Retry-After: 1 is waited for, then retried", async () => {
        const from = proxy.requests.length;
        proxy.inject({ path: manifestPath("ra1"), status: 429, headers: { "retry-after": "1" } });
        const started = Date.now();
        const response = await get("/org/app/manifests/ra1", {
          headers: { accept: app.mediaType },
        });
        equal(response.status, 200);
        await response.body?.cancel();
        equal(seen(manifestPath("ra1"), from).length, 2);
        ok(Date.now() - started >= 900, "Retry-After was honoured");
      });

      await t.step("a Retry-After beyond the bound goes straight back to the client", async () => {
        const from = proxy.requests.length;
        proxy.inject({
          path: manifestPath("ra3600"),
          status: 429,
          headers: { "retry-after": "3600" },
        });
        const response = await get("/org/app/manifests/ra3600");
        equal(response.status, 429);
        equal(response.headers.get("retry-after"), "3600");
        equal((await response.json()).errors[0].code, "TOOMANYREQUESTS");
        equal(seen(manifestPath("ra3600"), from).length, 1);
      });

      await t.step(
        "5xx that persists: 503 JSON naming the upstream after the bounded retries",
        async () => {
          const from = proxy.requests.length;
          proxy.inject({ path: manifestPath("fail"), status: 503, times: 3 });
          const response = await get("/org/app/manifests/fail");
          equal(response.status, 503);
          const error = (await response.json()).errors[0];
          equal(error.code, "UNAVAILABLE");
          match(error.message, /upstream quay\.io answered 503/);
          equal(seen(manifestPath("fail"), from).length, 3, "1 try + 2 retries");
        },
      );

      await t.step("refused connection: 502 UNAVAILABLE naming the registry", async () => {
        const response = await fetch(`${mirror.url}/v2/gcr.io/x/y/manifests/1`);
        equal(response.status, 502);
        const error = (await response.json()).errors[0];
        equal(error.code, "UNAVAILABLE");
        match(error.message, /upstream gcr\.io \(http:\/\/127\.0\.0\.1:\d+\) unreachable/);
      });

      await t.step("headers that never come: 504 after the idle timeout, retried", async () => {
        const from = proxy.requests.length;
        proxy.inject({ path: manifestPath("slow"), delayMs: 1500, times: 3 });
        const response = await get("/org/app/manifests/slow");
        equal(response.status, 504);
        match((await response.json()).errors[0].message, /timed out/);
        equal(seen(manifestPath("slow"), from).length, 3);
      });

      // Each fault gets its own blob: a blob, once cached, is never fetched upstream again.
      const blobs: { digest: string; size: number }[] = [];
      for (let i = 0; i < 2; i++) {
        blobs.push(
          (await pushLargeBlobImage(registry.url, `org/big${i}`, "1", 4 << 20, { dir })).blob,
        );
      }
      await t.step("a body that stalls is resumed with Range after the idle timeout", async () => {
        const path = `/v2/org/big0/blobs/${blobs[0].digest}`;
        const from = proxy.requests.length;
        proxy.inject({ path, stallAfterBytes: 1024 * 1024 });
        const started = Date.now();
        const response = await get(`/org/big0/blobs/${blobs[0].digest}`);
        equal(response.status, 200);
        equal(sha256(new Uint8Array(await response.arrayBuffer())), blobs[0].digest);
        ok(Date.now() - started >= 900, "waited for the 1 s idle timeout");
        const attempts = seen(path, from);
        deepEqual(attempts.map((r) => r.headers.range), [undefined, "bytes=1048576-"]);
      });

      await t.step(
        "a reset mid-body is resumed: the client sees one whole, correct body",
        async () => {
          const path = `/v2/org/big1/blobs/${blobs[1].digest}`;
          const from = proxy.requests.length;
          proxy.inject({ path, resetAfterBytes: 100_000 });
          const response = await get(`/org/big1/blobs/${blobs[1].digest}`);
          equal(response.headers.get("content-length"), String(blobs[1].size));
          equal(sha256(new Uint8Array(await response.arrayBuffer())), blobs[1].digest);
          const ranges = seen(path, from).map((r) => r.headers.range);
          equal(ranges.length, 2);
          match(ranges[1]!, /^bytes=\d+-$/);
          ok(
            Number(ranges[1]!.slice(6, -1)) >= 100_000 - 65536,
            `resumed near the break: ${ranges[1]}`,
          );
        },
      );

      await t.step("upstream 404 keeps its code", async () => {
        const response = await get("/org/app/manifests/nope");
        equal(response.status, 404);
        equal((await response.json()).errors[0].code, "MANIFEST_UNKNOWN");
        const blob = await get(`/org/app/blobs/sha256:${"0".repeat(64)}`);
        equal(blob.status, 404);
        equal((await blob.json()).errors[0].code, "BLOB_UNKNOWN");
      });

      await t.step("garbage and a TLS ClientHello on the port do not hurt the server", async () => {
        for (
          const bytes of [[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03], [
            0x00,
            0xff,
          ]]
        ) {
          const conn = await Deno.connect({ hostname: "127.0.0.1", port: mirror.port });
          await conn.write(new Uint8Array([...bytes, ...new Uint8Array(500)]));
          await conn.read(new Uint8Array(1024)).catch(() => null);
          conn.close();
        }
        const response = await fetch(`${mirror.url}/v2/`);
        deepEqual([response.status, await response.text()], [200, "{}"]);
      });

      await t.step("each request's log line carries retries and upstream status", () => {
        const lines = mirror.logs().map((l) => l.properties as Record<string, unknown>)
          .filter((p) =>
            p.path === `/v2/quay.io${manifestPath("retry").slice(3)}` && p.status === 200
          );
        ok(lines.some((p) => p.retries === 2 && p.upstreamStatus === 200), JSON.stringify(lines));
      });
    } finally {
      await mirror.stop();
      await proxy.stop();
      await registry.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
