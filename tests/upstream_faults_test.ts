// End to end: upstream faults between the mirror and a real Distribution (retries, Retry-After,
// idle timeouts, resets, refused connections) and what the client sees for each.

import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { startFaultProxy } from "./fixtures/fault_proxy.ts";
import { startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { pushImage, pushLargeBlobImage, sha256 } from "./fixtures/seed.ts";
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
    const manifestPath = "/v2/org/app/manifests/1";
    const seen = (path: string, from: number) =>
      proxy.requests.slice(from).filter((r) => r.path === path);
    try {
      const app = await pushImage(registry.url, "org/app", "1", {
        files: { "app.txt": "app" },
        format: "docker",
      });
      const big = await pushLargeBlobImage(registry.url, "org/big", "1", 4 * 1024 * 1024, { dir });
      const get = (path: string, init?: RequestInit) =>
        fetch(`${mirror.url}/v2/quay.io${path}`, init);

      await t.step("503 twice, then success: the client gets the manifest", async () => {
        const from = proxy.requests.length;
        proxy.inject({ path: manifestPath, status: 503, times: 2 });
        const response = await get("/org/app/manifests/1", {
          headers: { accept: app.mediaType, "user-agent": "test-client/1.0" },
        });
        equal(response.status, 200);
        equal(sha256(new Uint8Array(await response.arrayBuffer())), app.digest);
        const attempts = seen(manifestPath, from);
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
        proxy.inject({ path: manifestPath, status: 429, headers: { "retry-after": "1" } });
        const started = Date.now();
        const response = await get("/org/app/manifests/1", { headers: { accept: app.mediaType } });
        equal(response.status, 200);
        await response.body?.cancel();
        equal(seen(manifestPath, from).length, 2);
        ok(Date.now() - started >= 900, "Retry-After was honoured");
      });

      await t.step("a Retry-After beyond the bound goes straight back to the client", async () => {
        const from = proxy.requests.length;
        proxy.inject({ path: manifestPath, status: 429, headers: { "retry-after": "3600" } });
        const response = await get("/org/app/manifests/1");
        equal(response.status, 429);
        equal(response.headers.get("retry-after"), "3600");
        equal((await response.json()).errors[0].code, "TOOMANYREQUESTS");
        equal(seen(manifestPath, from).length, 1);
      });

      await t.step(
        "5xx that persists: 503 JSON naming the upstream after the bounded retries",
        async () => {
          const from = proxy.requests.length;
          proxy.inject({ path: manifestPath, status: 503, times: 3 });
          const response = await get("/org/app/manifests/1");
          equal(response.status, 503);
          const error = (await response.json()).errors[0];
          equal(error.code, "UNAVAILABLE");
          match(error.message, /upstream quay\.io answered 503/);
          equal(seen(manifestPath, from).length, 3, "1 try + 2 retries");
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
        proxy.inject({ path: manifestPath, delayMs: 1500, times: 3 });
        const response = await get("/org/app/manifests/1");
        equal(response.status, 504);
        match((await response.json()).errors[0].message, /timed out/);
        equal(seen(manifestPath, from).length, 3);
      });

      const blobPath = `/v2/org/big/blobs/${big.blob.digest}`;
      await t.step("a body that stalls is cut after the idle timeout, not retried", async () => {
        const from = proxy.requests.length;
        proxy.inject({ path: blobPath, stallAfterBytes: 1024 * 1024 });
        const started = Date.now();
        const response = await get(`/org/big/blobs/${big.blob.digest}`);
        equal(response.status, 200);
        await rejects(response.arrayBuffer());
        ok(Date.now() - started >= 900, "cut by the 1 s idle timeout, not before");
        equal(seen(blobPath, from).length, 1, "no retry once bytes reached the client");
      });

      await t.step(
        "a reset mid-body cuts the client's connection, never a short 'complete' body",
        async () => {
          const from = proxy.requests.length;
          proxy.inject({ path: blobPath, resetAfterBytes: 100_000 });
          const response = await get(`/org/big/blobs/${big.blob.digest}`);
          equal(response.headers.get("content-length"), String(big.blob.size));
          await rejects(response.arrayBuffer());
          equal(seen(blobPath, from).length, 1);
          const whole = await get(`/org/big/blobs/${big.blob.digest}`);
          equal(sha256(new Uint8Array(await whole.arrayBuffer())), big.blob.digest);
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
          .filter((p) => p.path === `/v2/quay.io${manifestPath.slice(3)}` && p.status === 200);
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
