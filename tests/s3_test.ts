// End to end with the cache in a real S3 (Ceph RGW): mirrors started with `deno task start`, a
// real Distribution upstream behind a counting proxy; a second mirror on the same bucket serves
// what the first cached without asking upstream; corrupt bytes never reach the bucket.

import { deepEqual, equal, match, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import type { S3Config } from "../src/config.ts";
import { startMirror } from "./fixtures/mirror.ts";
import { pushImage, pushLargeBlobImage } from "./fixtures/seed.ts";
import { bucketTestBed, keysUnder, RGW_TOOLS, s3Settings } from "./fixtures/rgw.ts";
import { runCleanup } from "./fixtures/cleanup.ts";
import { logMark, requestLines } from "./fixtures/clients/assertions.ts";
import { hostsToml, startContainerd, writeHostsDir } from "./fixtures/clients/containerd.ts";
import { cleanUpDir } from "./fixtures/clients/process.ts";
import { skopeoCopy } from "./fixtures/clients/skopeo.ts";
import { runTask } from "./fixtures/task.ts";
import { freePort, skipUnless } from "./fixtures/tools.ts";
import { waitFor } from "./fixtures/wait.ts";

const ROOT = new URL("../", import.meta.url).pathname;

async function digestOf(body: ReadableStream<Uint8Array>): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of body) hash.update(chunk);
  return `sha256:${hash.digest("hex")}`;
}

/** The `cache` config of a mirror on the bucket of `s3`; the keys come from the environment. */
function cacheOn(dir: string, s3: S3Config) {
  const { endpoint, region, bucket, prefix } = s3;
  return { dir, s3: { endpoint: endpoint.href, region, bucket, prefix, forcePathStyle: true } };
}

/** AWS_* variables with the keys of `s3`. */
function credentials(s3: S3Config): Record<string, string> {
  return { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey };
}

/** Entries of a directory, recursively, as paths relative to it. */
async function tree(dir: string, under = ""): Promise<string[]> {
  const found: string[] = [];
  for await (const entry of Deno.readDir(`${dir}/${under}`)) {
    const path = under ? `${under}/${entry.name}` : entry.name;
    found.push(path);
    if (entry.isDirectory) found.push(...await tree(dir, path));
  }
  return found.sort();
}

Deno.test({
  name: "s3: two mirrors on one bucket; the second serves what the first cached, no upstream GET",
  ...skipUnless(["docker-registry", ...RGW_TOOLS]),
  async fn(t) {
    const { dir, s3, registry, proxy, cleanup } = await bucketTestBed("s3_test_");
    try {
      const config = (cacheDir: string) => ({
        registries: { "quay.io": { upstream: proxy.url } },
        cache: cacheOn(cacheDir, s3),
        upstream: { retries: 0 },
      });
      const first = await startMirror(`${dir}/a`, config(`${dir}/a/cache`), credentials(s3));
      cleanup.push(() => first.stop());
      const image = await pushImage(registry.url, "org/app", "v1", {
        files: { "hello.txt": "hello from s3\n" },
        format: "oci",
      });
      const big = await pushLargeBlobImage(registry.url, "org/big", "1", 24 << 20, { dir });
      const layer = `/v2/quay.io/org/app/blobs/${image.layer.digest}`;
      const bigBlob = `/v2/quay.io/org/big/blobs/${big.blob.digest}`;

      await t.step("the first mirror pulls a manifest and blobs into the bucket", async () => {
        const manifest = await fetch(`${first.url}/v2/quay.io/org/app/manifests/v1`);
        equal(manifest.status, 200);
        equal(manifest.headers.get("docker-content-digest"), image.digest);
        await manifest.body?.cancel();
        for (const [path, digest] of [[layer, image.layer.digest], [bigBlob, big.blob.digest]]) {
          const blob = await fetch(first.url + path);
          deepEqual([blob.status, blob.headers.get("x-cache")], [200, "MISS"]);
          equal(await digestOf(blob.body!), digest);
        }
        const expected = [
          `blobs/sha256/${image.layer.digest.slice(7)}`,
          `blobs/sha256/${big.blob.digest.slice(7)}`,
          `manifests/sha256/${image.digest.slice(7)}`,
          "tags/quay.io/org/app/v1",
        ];
        await waitFor("the blobs in the bucket", async () => {
          const keys = await keysUnder(s3);
          return expected.every((k) => keys.includes(k));
        });
        // A spool is removed once its upload ended (clients end before: once it is verified).
        const local = () =>
          tree(`${dir}/a/cache`).then((paths) => paths.filter((p) => !p.startsWith("server.")));
        await waitFor("the spools removed", async () => (await local()).length === 1);
        deepEqual(await local(), ["tmp"], "cache.dir holds only (empty) spools");
      });

      await t.step(
        "a second mirror with an empty cache.dir serves them: no upstream request",
        async () => {
          const second = await startMirror(`${dir}/b`, config(`${dir}/b/cache`), credentials(s3));
          cleanup.push(() => second.stop());
          const from = proxy.requests.length;
          const manifest = await fetch(`${second.url}/v2/quay.io/org/app/manifests/v1`);
          deepEqual([manifest.status, manifest.headers.get("x-cache")], [200, "HIT"]);
          equal(await digestOf(manifest.body!), image.digest);
          for (const [path, digest] of [[layer, image.layer.digest], [bigBlob, big.blob.digest]]) {
            const blob = await fetch(second.url + path);
            deepEqual([blob.status, blob.headers.get("x-cache")], [200, "HIT"]);
            equal(await digestOf(blob.body!), digest);
          }
          const range = await fetch(second.url + bigBlob, { headers: { range: "bytes=1000-" } });
          deepEqual([range.status, range.headers.get("content-range")], [
            206,
            `bytes 1000-${big.blob.size - 1}/${big.blob.size}`,
          ]);
          equal((await range.arrayBuffer()).byteLength, big.blob.size - 1000);
          const head = await fetch(second.url + bigBlob, { method: "HEAD" });
          equal(head.headers.get("content-length"), String(big.blob.size));
          deepEqual(proxy.requests.slice(from), [], "nothing asked upstream");
          const ready = await fetch(`${second.url}/readyz`);
          deepEqual([ready.status, await ready.json()], [200, { status: "ready" }]);
          const metrics = await (await fetch(`${second.url}/metrics`)).text();
          match(
            metrics,
            /^registry_mirror_store_requests_total\{operation="GetObject",status="206"\} 1$/m,
          );
          match(
            metrics,
            /^registry_mirror_store_request_duration_seconds_count\{operation="HeadObject"\} \d+$/m,
          );
          // The big blob and its range went from the bucket to the client in Deno's own code.
          const relayed = /^registry_mirror_bodies_relayed_total (\d+)$/m.exec(metrics);
          ok(Number(relayed?.[1]) >= 2, `relayed by the runtime: ${relayed?.[0]}`);
        },
      );

      await t.step("cache ls and du read the bucket", async () => {
        const ls = await runTask(
          ["cache", "ls", "--json", "--config", `${dir}/b/config.json`],
          credentials(s3),
        );
        equal(ls.code, 0, ls.stderr);
        deepEqual(
          JSON.parse(ls.stdout).tags.map((t: { image: string; digest: string }) => [
            t.image,
            t.digest,
          ]),
          [["quay.io/org/app:v1", image.digest]],
        );
        const du = await runTask(
          ["cache", "du", "--json", "--config", `${dir}/b/config.json`],
          credentials(s3),
        );
        const usage = JSON.parse(du.stdout);
        deepEqual([usage.blobs.objects, usage.manifests.objects], [2, 1]);
        equal(usage.blobs.bytes, image.layer.size + big.blob.size);
      });

      await t.step("cache gc evicts the bucket beside running mirrors", async () => {
        const gc = await runTask(
          ["cache", "gc", "--max-size", "1MiB", "--config", `${dir}/b/config.json`],
          credentials(s3),
        );
        equal(gc.code, 0, gc.stderr);
        match(gc.stdout, /^evicted \d+ objects \(.+\); bucket now .+$/m);
        const blobs = await keysUnder(s3, "blobs/");
        ok(!blobs.includes(`blobs/sha256/${big.blob.digest.slice(7)}`), "the big blob evicted");
        const du = await runTask(
          ["cache", "du", "--json", "--config", `${dir}/b/config.json`],
          credentials(s3),
        );
        ok(JSON.parse(du.stdout).total.bytes <= 1024 * 1024);
        // Evicted is a miss again, fetched upstream and cached.
        const blob = await fetch(first.url + bigBlob);
        deepEqual([blob.status, blob.headers.get("x-cache")], [200, "MISS"]);
        equal(await digestOf(blob.body!), big.blob.digest);
      });

      await t.step("bytes that do not match their digest never reach the bucket", async () => {
        const other = await pushImage(registry.url, "org/other", "v1", {
          files: { "x.txt": "corrupted on the way\n".repeat(5000) },
          format: "oci",
          gzipLevel: 0,
        });
        const path = `/v2/org/other/blobs/${other.layer.digest}`;
        proxy.inject({ path, flipByteAt: 1000 });
        const bad = await fetch(`${first.url}/v2/quay.io${path.slice(3)}`);
        const failed = await digestOf(bad.body!).then(() => false, () => true);
        ok(failed, "the client's body is cut, never complete with wrong bytes");
        const key = `blobs/sha256/${other.layer.digest.slice(7)}`;
        ok(!(await keysUnder(s3, "blobs/")).includes(key), "nothing under the blob's key");
        const good = await fetch(`${first.url}/v2/quay.io${path.slice(3)}`);
        equal(await digestOf(good.body!), other.layer.digest);
        await waitFor(
          "the good blob in the bucket",
          async () => (await keysUnder(s3, "blobs/")).includes(key),
        );
      });
    } finally {
      await runCleanup(cleanup);
    }
  },
});

Deno.test({
  name: "s3: a missing bucket or wrong credentials stop the mirror at start with the reason",
  ...skipUnless(RGW_TOOLS),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "s3_test_" });
    try {
      const s3 = await s3Settings();
      const cases: [Record<string, unknown>, Record<string, string>, RegExp][] = [
        [
          { bucket: "missing-bucket" },
          credentials(s3),
          /bucket "missing-bucket" .* does not exist/,
        ],
        [
          {},
          { ...credentials(s3), AWS_SECRET_ACCESS_KEY: "not-the-secret" },
          /refused the credentials \(SignatureDoesNotMatch\): check accessKeyId/,
        ],
        [{}, {}, /cache\.s3: set accessKeyId and secretAccessKey/],
      ];
      for (const [override, env, expected] of cases) {
        const path = `${dir}/config.json`;
        const cache = cacheOn(`${dir}/cache`, s3);
        await Deno.writeTextFile(
          path,
          JSON.stringify({
            listen: `127.0.0.1:${freePort()}`,
            cache: { ...cache, s3: { ...cache.s3, ...override } },
          }),
        );
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["task", "start", "--config", path],
          cwd: ROOT,
          env: { AWS_ACCESS_KEY_ID: "", AWS_SECRET_ACCESS_KEY: "", ...env },
          stdin: "null",
        }).output();
        const stderr = new TextDecoder().decode(out.stderr);
        equal(out.code, 1, stderr);
        match(stderr, expected);
        ok(!stderr.includes("not-the-secret"), "the secret is never printed");
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "s3: redirect: stored blobs answer 307 to a presigned URL; skopeo and containerd pull",
  ...skipUnless(["docker-registry", "skopeo", "containerd", "ctr", ...RGW_TOOLS]),
  async fn(t) {
    const { dir, s3, registry, proxy, cleanup } = await bucketTestBed(
      "s3_redirect_test_",
      cleanUpDir,
    );
    try {
      const cache = cacheOn(`${dir}/mirror/cache`, s3);
      const mirror = await startMirror(`${dir}/mirror`, {
        registries: { "quay.io": { upstream: proxy.url } },
        cache: { ...cache, s3: { ...cache.s3, redirect: true } },
        upstream: { retries: 0 },
      }, credentials(s3));
      cleanup.push(() => mirror.stop());
      const image = await pushImage(registry.url, "org/app", "v1", {
        files: { "hello.txt": "hello through a presigned URL\n".repeat(1000) },
        format: "oci",
        gzipLevel: 0,
      });
      const blobs = [image.config, image.layer];
      const blobUrl = (digest: string) => `${mirror.url}/v2/quay.io/org/app/blobs/${digest}`;

      await t.step("a miss is served by the mirror, then stored blobs redirect", async () => {
        for (const { digest } of blobs) {
          const miss = await fetch(blobUrl(digest));
          deepEqual([miss.status, miss.headers.get("x-cache")], [200, "MISS"]);
          equal(await digestOf(miss.body!), digest);
        }
        await waitFor("the blobs in the bucket", async () => {
          const keys = await keysUnder(s3, "blobs/");
          return blobs.every((b) => keys.includes(`blobs/sha256/${b.digest.slice(7)}`));
        });
        const from = proxy.requests.length;
        const redirected = await fetch(blobUrl(image.layer.digest), { redirect: "manual" });
        equal(redirected.status, 307);
        equal(redirected.headers.get("x-cache"), "HIT");
        const location = new URL(redirected.headers.get("location")!);
        equal(location.origin, s3.endpoint.origin);
        equal(location.searchParams.get("X-Amz-Expires"), "300");
        ok(location.searchParams.has("X-Amz-Signature"));
        await redirected.body?.cancel();
        const followed = await fetch(location);
        deepEqual([followed.status, await digestOf(followed.body!)], [200, image.layer.digest]);
        const ranged = await fetch(blobUrl(image.layer.digest), {
          headers: { range: "bytes=10-" },
        });
        equal(ranged.status, 206);
        equal((await ranged.arrayBuffer()).byteLength, image.layer.size - 10);
        const head = await fetch(blobUrl(image.layer.digest), { method: "HEAD" });
        deepEqual([head.status, head.headers.get("content-length")], [
          200,
          String(image.layer.size),
        ]);
        deepEqual(proxy.requests.slice(from), [], "the bytes came from the bucket");
        // A tampered URL is refused by S3 itself.
        location.searchParams.set("X-Amz-Expires", "3000");
        const tampered = await fetch(location);
        equal(tampered.status, 403);
        await tampered.body?.cancel();
      });

      const redirects = (from: number) =>
        requestLines(mirror, from).filter((p) =>
          String(p?.path).includes("/blobs/") && p?.status === 307
        ).length;

      await t.step("skopeo copy follows the redirects", async () => {
        const from = logMark(mirror);
        const out = `${dir}/skopeo`;
        await skopeoCopy(`127.0.0.1:${mirror.port}/quay.io/org/app:v1`, out);
        for (const { digest } of blobs) {
          equal(await digestOf((await Deno.open(`${out}/${digest.slice(7)}`)).readable), digest);
        }
        equal(redirects(from), 2, "config and layer redirected");
      });

      await t.step("containerd pulls through the redirects", async () => {
        const containerd = await startContainerd(`${dir}/containerd`);
        cleanup.push(() => containerd.stop());
        const hostsDir = `${dir}/containerd/certs.d`;
        await writeHostsDir(hostsDir, {
          "quay.io": hostsToml("https://quay.io", [{ url: mirror.url }]),
        });
        const from = logMark(mirror);
        const reference = "quay.io/org/app:v1";
        const listed = await containerd.pull(reference, hostsDir);
        equal(listed, image.digest);
        equal(redirects(from), 2, "config and layer redirected");
      });

      await t.step("no presigned URL is ever logged", () => {
        const output = mirror.output();
        ok(!/X-Amz-Signature|X-Amz-Credential/i.test(output), "a presigned URL in the log");
      });
    } finally {
      await runCleanup(cleanup);
    }
  },
});
