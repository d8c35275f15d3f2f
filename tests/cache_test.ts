// End to end: the pull-through cache against a real Distribution, through a fault-injecting proxy:
// one upstream fetch per blob, followers, Range during a fill, corruption, links, tag TTL, stale
// serving, restarts after a crash, and eviction.

import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { createHash } from "node:crypto";
import { startFaultProxy } from "./fixtures/fault_proxy.ts";
import { startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import {
  pushBlob,
  pushImage,
  pushIndex,
  pushLargeBlobImage,
  pushManifest,
  sha256,
} from "./fixtures/seed.ts";
import { skipUnless } from "./fixtures/tools.ts";

async function digestOf(body: ReadableStream<Uint8Array>): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of body) hash.update(chunk);
  return `sha256:${hash.digest("hex")}`;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

Deno.test({
  name: "cache: blobs and manifests against a real Distribution",
  ...skipUnless(["docker-registry"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "cache_test_" });
    const registry = await startRegistry({ dir: `${dir}/quay` });
    const proxy = startFaultProxy(registry.url);
    const config = {
      registries: { "quay.io": { upstream: proxy.url } },
      cache: { dir: `${dir}/cache`, tagTtl: "2s" },
      upstream: { idleTimeout: "2s", retries: 1 },
    };
    let mirror = await startMirror(dir, config);
    const url = (path: string) => `${mirror.url}/v2/quay.io${path}`;
    const upstreamGets = (path: string, from = 0) =>
      proxy.requests.slice(from).filter((r) => r.method === "GET" && r.path === path);
    const blobFile = (digest: string) => `${dir}/cache/blobs/sha256/${digest.slice(7)}`;
    try {
      const big = await pushLargeBlobImage(registry.url, "org/big", "1", 200 << 20, { dir });
      const bigPath = `/v2/org/big/blobs/${big.blob.digest}`;

      await t.step("20 concurrent clients on a cold 200 MB blob: one upstream GET", async () => {
        const responses = await Promise.all(
          Array.from({ length: 20 }, () => fetch(url(`/org/big/blobs/${big.blob.digest}`))),
        );
        deepEqual(responses.map((r) => r.status), Array(20).fill(200));
        deepEqual(responses.map((r) => r.headers.get("x-cache")), Array(20).fill("MISS"));
        const digests = await Promise.all(responses.map((r) => digestOf(r.body!)));
        deepEqual(digests, Array(20).fill(big.blob.digest));
        equal(upstreamGets(bigPath).length, 1);
      });

      await t.step("a hit is served from disk: Range, HEAD, no upstream contact", async () => {
        const from = proxy.requests.length;
        const hit = await fetch(url(`/org/big/blobs/${big.blob.digest}`), {
          headers: { range: "bytes=1000-1999" },
        });
        deepEqual([hit.status, hit.headers.get("x-cache")], [206, "HIT"]);
        equal(hit.headers.get("content-range"), `bytes 1000-1999/${big.blob.size}`);
        const part = new Uint8Array(await hit.arrayBuffer());
        const file = await Deno.open(blobFile(big.blob.digest));
        await file.seek(1000, Deno.SeekMode.Start);
        const expected = new Uint8Array(1000);
        await file.read(expected);
        file.close();
        deepEqual(part, expected);
        const head = await fetch(url(`/org/big/blobs/${big.blob.digest}`), { method: "HEAD" });
        deepEqual(
          [
            head.status,
            head.headers.get("content-length"),
            head.headers.get("docker-content-digest"),
          ],
          [200, String(big.blob.size), big.blob.digest],
        );
        const bad = await fetch(url(`/org/big/blobs/${big.blob.digest}`), {
          headers: { range: `bytes=${big.blob.size}-` },
        });
        deepEqual([bad.status, bad.headers.get("content-range")], [
          416,
          `bytes */${big.blob.size}`,
        ]);
        await bad.body?.cancel();
        equal(proxy.requests.length, from, "no upstream request for hits");
      });

      await t.step("slow and vanishing clients neither slow nor cancel the fill", async () => {
        const blob = await pushLargeBlobImage(registry.url, "org/slow", "1", 32 << 20, { dir });
        const path = url(`/org/slow/blobs/${blob.blob.digest}`);
        const slow = await fetch(path);
        const slowReader = slow.body!.getReader();
        await slowReader.read(); // one chunk, then nothing while the others finish
        const gone = (await fetch(path)).body!.getReader();
        await gone.read();
        await gone.cancel();
        equal(await digestOf((await fetch(path)).body!), blob.blob.digest);
        for (let i = 0; i < 50 && !(await exists(blobFile(blob.blob.digest))); i++) {
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        ok(await exists(blobFile(blob.blob.digest)), "the fill completed while a client stalled");
        await slowReader.cancel();
        equal(upstreamGets(`/v2/org/slow/blobs/${blob.blob.digest}`).length, 1);
        await new Promise((resolve) => setTimeout(resolve, 100));
        const lines = mirror.logs().map((l) => l.properties as Record<string, unknown>)
          .filter((p) => p.path === `/v2/quay.io/org/slow/blobs/${blob.blob.digest}`);
        const sizes = lines.map((p) => p.bytes as number).sort((a, b) => a - b);
        equal(sizes.at(-1), blob.blob.size, "the whole body, logged as such");
        ok(sizes[0] < blob.blob.size, `a client that left is logged with what it got: ${sizes}`);
        ok(lines.some((p) => String(p.error).includes("not sent whole")));
      });

      await t.step("a Range during a fill is served as soon as those bytes exist", async () => {
        const blob = await pushLargeBlobImage(registry.url, "org/ranged", "1", 8 << 20, { dir });
        const path = `/v2/org/ranged/blobs/${blob.blob.digest}`;
        proxy.inject({ path, stallAfterBytes: 2 << 20 }); // upstream pauses at 2 MiB for 2 s
        const whole = fetch(url(`/org/ranged/blobs/${blob.blob.digest}`));
        await new Promise((resolve) => setTimeout(resolve, 300));
        const started = Date.now();
        const early = await fetch(url(`/org/ranged/blobs/${blob.blob.digest}`), {
          headers: { range: "bytes=1024-2047" },
        });
        equal(early.status, 206);
        equal((await early.arrayBuffer()).byteLength, 1024);
        ok(Date.now() - started < 1500, "bytes already on disk are not held back by the stall");
        const late = await fetch(url(`/org/ranged/blobs/${blob.blob.digest}`), {
          headers: { range: `bytes=${6 << 20}-` },
        });
        deepEqual([late.status, (await late.arrayBuffer()).byteLength], [206, 2 << 20]);
        equal(await digestOf((await whole).body!), blob.blob.digest);
        equal(upstreamGets(path).length, 2, "the first GET and one resume");
      });

      await t.step("a corrupted upstream body: connections cut, nothing cached", async () => {
        const blob = await pushLargeBlobImage(registry.url, "org/bad", "1", 4 << 20, { dir });
        const path = `/v2/org/bad/blobs/${blob.blob.digest}`;
        proxy.inject({ path, flipByteAt: 3 << 20 });
        const response = await fetch(url(`/org/bad/blobs/${blob.blob.digest}`));
        equal(response.status, 200);
        await rejects(response.arrayBuffer(), "never a 'complete' wrong blob");
        ok(!(await exists(blobFile(blob.blob.digest))));
        // As clients do, retry a cut download: one that raced into the failing fill is cut too.
        let got: string | undefined;
        for (let attempt = 0; attempt < 2 && got === undefined; attempt++) {
          const again = await fetch(url(`/org/bad/blobs/${blob.blob.digest}`));
          got = await digestOf(again.body!).catch(() => undefined);
        }
        equal(got, blob.blob.digest);
        equal(upstreamGets(path).length, 2);
        ok(mirror.output().includes(`for blob ${blob.blob.digest}`), "the mismatch is logged");
      });

      await t.step(
        "another repository gets a cached blob only once upstream confirms it",
        async () => {
          const blob =
            (await pushLargeBlobImage(registry.url, "org/linked", "1", 1 << 20, { dir })).blob;
          equal(
            await digestOf((await fetch(url(`/org/linked/blobs/${blob.digest}`))).body!),
            blob.digest,
          );
          const from = proxy.requests.length;
          const denied = await fetch(url(`/org/other/blobs/${blob.digest}`));
          equal(denied.status, 404);
          equal((await denied.json()).errors[0].code, "BLOB_UNKNOWN");
          await pushBlob(registry.url, "org/copy", await Deno.readFile(blobFile(blob.digest)));
          for (let i = 0; i < 2; i++) {
            const copy = await fetch(url(`/org/copy/blobs/${blob.digest}`));
            equal(copy.headers.get("x-cache"), "HIT");
            equal(await digestOf(copy.body!), blob.digest);
          }
          const asked = proxy.requests.slice(from).map((r) => `${r.method} ${r.path}`);
          deepEqual(asked, [
            `HEAD /v2/org/other/blobs/${blob.digest}`,
            `HEAD /v2/org/copy/blobs/${blob.digest}`,
          ], "one HEAD per repository, then remembered");
        },
      );

      const app = await pushImage(registry.url, "org/app", "v1", {
        files: { "v": "1" },
        format: "oci",
      });
      const multi = await pushIndex(registry.url, "org/multi", "1", [
        { platform: { os: "linux", architecture: "amd64" }, files: { a: "amd64" } },
        { platform: { os: "linux", architecture: "arm64" }, files: { a: "arm64" } },
      ], "oci-index");

      await t.step("a tag is trusted for its TTL, then revalidated with a HEAD", async () => {
        const path = "/v2/org/app/manifests/v1";
        const first = await fetch(url("/org/app/manifests/v1"));
        deepEqual([first.headers.get("x-cache"), first.headers.get("docker-content-digest")], [
          "MISS",
          app.digest,
        ]);
        await first.body?.cancel();
        const from = proxy.requests.length;
        const hit = await fetch(url("/org/app/manifests/v1"));
        equal(hit.headers.get("x-cache"), "HIT");
        equal(sha256(new Uint8Array(await hit.arrayBuffer())), app.digest);
        equal(proxy.requests.length, from, "within the TTL: no upstream request");
        const moved = await pushImage(registry.url, "org/app", "v1", {
          files: { v: "2" },
          format: "oci",
        });
        const stillOld = await fetch(url("/org/app/manifests/v1"), { method: "HEAD" });
        equal(stillOld.headers.get("docker-content-digest"), app.digest);
        await new Promise((resolve) => setTimeout(resolve, 2100));
        const fresh = await fetch(url("/org/app/manifests/v1"));
        equal(fresh.headers.get("docker-content-digest"), moved.digest);
        equal(sha256(new Uint8Array(await fresh.arrayBuffer())), moved.digest);
        const asked = proxy.requests.slice(from).map((r) => `${r.method} ${r.path}`);
        deepEqual(asked, [`HEAD ${path}`, `GET /v2/org/app/manifests/${moved.digest}`]);
        const same = proxy.requests.length;
        await new Promise((resolve) => setTimeout(resolve, 2100));
        const revalidated = await fetch(url("/org/app/manifests/v1"));
        equal(revalidated.headers.get("x-cache"), "HIT");
        await revalidated.body?.cancel();
        deepEqual(
          proxy.requests.slice(same).map((r) => r.method),
          ["HEAD"],
          "unchanged: HEAD only",
        );
      });

      await t.step("upstream 5xx, 429 or down after the TTL: the tag is served stale", async () => {
        await pushManifest(registry.url, "org/app", "v2", app.bytes, app.mediaType);
        const warm = await fetch(url("/org/app/manifests/v2"));
        await warm.body?.cancel();
        await new Promise((resolve) => setTimeout(resolve, 2100));
        for (const [tag, status] of [["v1", 503], ["v2", 429]] as const) {
          proxy.inject({ path: `/v2/org/app/manifests/${tag}`, status, times: 2 });
          const stale = await fetch(url(`/org/app/manifests/${tag}`));
          deepEqual([stale.status, stale.headers.get("x-cache")], [200, "STALE"], tag);
          await stale.body?.cancel();
        }
        const from = proxy.requests.length;
        const again = await fetch(url("/org/app/manifests/v1"), { method: "HEAD" });
        deepEqual([again.status, again.headers.get("x-cache")], [200, "STALE"]);
        equal(proxy.requests.length, from, "a failing upstream is not asked again at once");
        ok(mirror.output().includes("serving stale"), "stale serves are logged");
      });

      await t.step("a tag deleted upstream is a 404 after its TTL", async () => {
        const gone = await pushImage(registry.url, "org/gone", "1", {
          files: { g: "1" },
          format: "oci",
        });
        const first = await fetch(url("/org/gone/manifests/1"));
        equal(first.status, 200);
        await first.body?.cancel();
        const deleted = await fetch(`${registry.url}/v2/org/gone/manifests/${gone.digest}`, {
          method: "DELETE",
        });
        equal(deleted.status, 202);
        await deleted.body?.cancel();
        await new Promise((resolve) => setTimeout(resolve, 2100));
        const after = await fetch(url("/org/gone/manifests/1"));
        equal(after.status, 404);
        equal((await after.json()).errors[0].code, "MANIFEST_UNKNOWN");
      });

      await t.step("multi-arch: the index and each child pulled are cached", async () => {
        const index = await fetch(url(`/org/multi/manifests/1`));
        equal(index.headers.get("docker-content-digest"), multi.digest);
        await index.body?.cancel();
        for (const child of multi.children) {
          const r = await fetch(url(`/org/multi/manifests/${child.digest}`));
          equal(sha256(new Uint8Array(await r.arrayBuffer())), child.digest);
          const layer = await fetch(url(`/org/multi/blobs/${child.layer.digest}`));
          equal(await digestOf(layer.body!), child.layer.digest);
        }
      });

      await t.step("a command run beside the server leaves its fills alone", async () => {
        const blob = await pushLargeBlobImage(registry.url, "org/beside", "1", 8 << 20, { dir });
        proxy.inject({
          path: `/v2/org/beside/blobs/${blob.blob.digest}`,
          stallAfterBytes: 2 << 20,
        });
        const pending = fetch(url(`/org/beside/blobs/${blob.blob.digest}`));
        await new Promise((resolve) => setTimeout(resolve, 300));
        const du = await new Deno.Command(Deno.execPath(), {
          args: ["task", "--quiet", "start", "cache", "du", "--config", `${dir}/config.json`],
          cwd: new URL("../", import.meta.url).pathname,
          stdin: "null",
          stdout: "null",
          stderr: "null",
        }).output();
        equal(du.code, 0);
        equal(await digestOf((await pending).body!), blob.blob.digest);
        ok(await exists(blobFile(blob.blob.digest)), "the fill was committed");
      });

      await t.step(
        "kill -9 during a fill, restart: leftovers cleaned, pull is correct",
        async () => {
          const blob = await pushLargeBlobImage(registry.url, "org/crash", "1", 16 << 20, { dir });
          const path = `/v2/org/crash/blobs/${blob.blob.digest}`;
          proxy.inject({ path, stallAfterBytes: 4 << 20 });
          const pending = await fetch(url(`/org/crash/blobs/${blob.blob.digest}`));
          const reader = pending.body!.getReader();
          await reader.read();
          await new Promise((resolve) => setTimeout(resolve, 200));
          ok([...Deno.readDirSync(`${dir}/cache/tmp`)].length > 0, "a spool was being written");
          await mirror.kill();
          await reader.cancel().catch(() => {});
          mirror = await startMirror(dir, config);
          deepEqual([...Deno.readDirSync(`${dir}/cache/tmp`)], [], "spools removed at start");
          ok(!(await exists(blobFile(blob.blob.digest))), "nothing partial was committed");
          const again = await fetch(url(`/org/crash/blobs/${blob.blob.digest}`));
          equal(await digestOf(again.body!), blob.blob.digest);
        },
      );

      await t.step("upstream gone: everything pulled before is still served", async () => {
        await proxy.stop();
        await new Promise((resolve) => setTimeout(resolve, 2100)); // past the tag TTL too
        const checks: [string, string][] = [
          [`/org/big/blobs/${big.blob.digest}`, big.blob.digest],
          [`/org/multi/manifests/${multi.digest}`, multi.digest],
          ...multi.children.map((
            c,
          ): [string, string] => [`/org/multi/manifests/${c.digest}`, c.digest]),
          ...multi.children.map((
            c,
          ): [string, string] => [`/org/multi/blobs/${c.layer.digest}`, c.layer.digest]),
        ];
        for (const [path, digest] of checks) {
          const r = await fetch(url(path));
          equal(r.status, 200, path);
          equal(r.headers.get("x-cache"), "HIT", path);
          equal(await digestOf(r.body!), digest, path);
        }
        const tag = await fetch(url("/org/multi/manifests/1"));
        deepEqual([tag.status, tag.headers.get("x-cache")], [200, "STALE"]);
        equal(sha256(new Uint8Array(await tag.arrayBuffer())), multi.digest);
        const never = await fetch(url("/org/never/manifests/1"));
        equal(never.status, 502);
        match((await never.json()).errors[0].message, /unreachable/);
      });

      await t.step("every response and log line says HIT, MISS or STALE", () => {
        const lines = mirror.logs().map((l) => l.properties as Record<string, unknown>)
          .filter((p) => typeof p.path === "string" && p.status === 200 && p.method === "GET");
        ok(lines.length > 5);
        for (const line of lines) {
          if (line.path === "/v2/" || !String(line.path).startsWith("/v2/")) continue;
          ok(["HIT", "MISS", "STALE"].includes(String(line.cache)), JSON.stringify(line));
        }
      });
    } finally {
      await mirror.stop();
      await proxy.stop().catch(() => {});
      await registry.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "cache: eviction keeps the cache under maxSize, least recently used first",
  ...skipUnless(["docker-registry"]),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "evict_test_" });
    const registry = await startRegistry({ dir: `${dir}/quay` });
    const mirror = await startMirror(dir, {
      registries: { "quay.io": { upstream: registry.url } },
      cache: { dir: `${dir}/cache`, maxSize: "10MiB" },
    });
    const blobFile = (digest: string) => `${dir}/cache/blobs/sha256/${digest.slice(7)}`;
    const pull = async (name: string, digest: string) => {
      const r = await fetch(`${mirror.url}/v2/quay.io/${name}/blobs/${digest}`);
      equal(await digestOf(r.body!), digest);
    };
    try {
      const blobs = [];
      for (const name of ["a", "b", "c"]) {
        blobs.push(
          (await pushLargeBlobImage(registry.url, `org/${name}`, "1", 4 << 20, { dir })).blob,
        );
      }
      const [a, b, c] = blobs;
      await pull("org/a", a.digest);
      await pull("org/b", b.digest);
      await new Promise((resolve) => setTimeout(resolve, 20));
      await pull("org/a", a.digest); // a is now more recent than b
      await pull("org/c", c.digest); // 12 MiB > 10 MiB: evict down to 9 MiB
      let evicted = false;
      for (let i = 0; i < 50 && !evicted; i++) {
        evicted = !(await exists(blobFile(b.digest)));
        if (!evicted) await new Promise((resolve) => setTimeout(resolve, 100));
      }
      ok(evicted, "the least recently used blob was evicted");
      ok(await exists(blobFile(a.digest)) && await exists(blobFile(c.digest)));
      await pull("org/b", b.digest); // fetched again from upstream
      ok(mirror.output().includes("evicted"), "evictions are logged");
    } finally {
      await mirror.stop();
      await registry.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
