// Replicas sharing one bucket (a real Ceph RGW), each started with `deno task start`, in front of a
// real Distribution behind a counting proxy: one upstream fetch per blob for the fleet, streamed
// to every replica as it arrives; a killed holder taken over; tags shared; the bucket down.

import { deepEqual, equal, match, ok } from "node:assert/strict";
import { createHash, type Hash } from "node:crypto";
import type { S3Config } from "../src/config.ts";
import { S3Client } from "../src/s3/client.ts";
import { runCleanup } from "./fixtures/cleanup.ts";
import type { FaultProxy } from "./fixtures/fault_proxy.ts";
import { type MirrorProcess, startMirror } from "./fixtures/mirror.ts";
import { bucketTestBed, keysUnder, RGW_TOOLS, startGateway, stopGateway } from "./fixtures/rgw.ts";
import { pushBlob, pushImage, pushLargeBlobImage } from "./fixtures/seed.ts";
import { skipUnless } from "./fixtures/tools.ts";
import { waitFor } from "./fixtures/wait.ts";

const MiB = 1024 * 1024;
const SECRET = "cluster-test-secret-0123456789";

/** Starts `count` replicas on the bucket of `s3`, each advertising its own URL. */
function replicas(
  dir: string,
  count: number,
  s3: S3Config,
  options: { upstream: string; leaseTtl?: string; tagTtl?: string; cluster?: boolean },
): Promise<MirrorProcess[]> {
  const { endpoint, region, bucket, prefix } = s3;
  return Promise.all(
    Array.from({ length: count }, (_, i) =>
      startMirror(`${dir}/replica-${i}`, (port) => ({
        registries: { "quay.io": { upstream: options.upstream } },
        cache: {
          dir: `${dir}/replica-${i}/cache`,
          tagTtl: options.tagTtl ?? "5m",
          s3: { endpoint: endpoint.href, region, bucket, prefix, forcePathStyle: true },
        },
        ...(options.cluster === false ? {} : {
          cluster: {
            advertise: `http://127.0.0.1:${port}`,
            secret: SECRET,
            leaseTtl: options.leaseTtl ?? "3s",
          },
        }),
        upstream: { retries: 0 },
      }), { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey })),
  );
}

/** What one client's GET got: status, bytes, timings (ms since `since`), digest or error. */
interface Pulled {
  status: number;
  bytes: number;
  firstByteMs?: number;
  endMs: number;
  digest?: string;
  error?: string;
  /** The hash of the bytes received, to continue with a resumed GET. */
  hash: Hash;
}

/**
 * GETs `url` (from byte `from`, continuing `hash`), reading the body to its end or its error;
 * `progress.bytes` grows as bytes arrive.
 */
async function pull(
  url: string,
  since: number,
  opts: { from?: number; hash?: Hash; progress?: { bytes: number } } = {},
): Promise<Pulled> {
  const hash = opts.hash ?? createHash("sha256");
  const headers: Record<string, string> = opts.from ? { range: `bytes=${opts.from}-` } : {};
  const response = await fetch(url, { headers });
  let bytes = 0;
  let firstByteMs: number | undefined;
  let error: string | undefined;
  try {
    for await (const chunk of response.body!) {
      firstByteMs ??= performance.now() - since;
      bytes += chunk.length;
      if (opts.progress) opts.progress.bytes += chunk.length;
      hash.update(chunk);
    }
  } catch (e) {
    error = String((e as Error)?.message ?? e);
  }
  const endMs = performance.now() - since;
  const digest = error === undefined ? `sha256:${hash.copy().digest("hex")}` : undefined;
  return { status: response.status, bytes, firstByteMs, endMs, digest, error, hash };
}

/** GETs of `digest` the upstream saw since request `from`. */
function upstreamGets(proxy: FaultProxy, digest: string, from = 0) {
  return proxy.requests.slice(from).filter((r) => r.method === "GET" && r.path.includes(digest));
}

/** A counter of a replica's /metrics, summed over the label sets that match. */
async function metric(replica: MirrorProcess, pattern: RegExp): Promise<number> {
  const text = await (await fetch(`${replica.url}/metrics`)).text();
  return [...text.matchAll(new RegExp(pattern.source, "gm"))]
    .reduce((sum, m) => sum + Number(m[1]), 0);
}

const sourcesOf = (replica: MirrorProcess, source: string) =>
  metric(
    replica,
    new RegExp(`^registry_mirror_cluster_fill_sources_total\\{source="${source}"\\} (\\d+)$`),
  );

const options = skipUnless(["docker-registry", ...RGW_TOOLS]);

Deno.test({
  name: "cluster: 30 clients on three replicas, one cold 200 MB blob: one upstream GET, streamed",
  ...options,
  async fn() {
    const { dir, s3, registry, proxy, cleanup } = await bucketTestBed("cluster_test_");
    try {
      const big = await pushLargeBlobImage(registry.url, "org/big", "1", 200 * MiB, { dir });
      const digest = big.blob.digest;
      const fleet = await replicas(dir, 3, s3, { upstream: proxy.url });
      cleanup.push(...fleet.map((r) => () => r.stop()));
      const path = `/v2/quay.io/org/big/blobs/${digest}`;

      const since = performance.now();
      const pulled = await Promise.all(
        Array.from({ length: 30 }, (_, i) => pull(fleet[i % 3].url + path, since)),
      );
      for (const [i, p] of pulled.entries()) {
        deepEqual(
          [p.status, p.error, p.bytes, p.digest],
          [200, undefined, 200 * MiB, digest],
          `#${i}`,
        );
      }
      equal(upstreamGets(proxy, digest).length, 1, "one upstream GET for the fleet");
      // Streamed: every client had bytes before any client had the whole blob.
      const lastFirstByte = Math.max(...pulled.map((p) => p.firstByteMs!));
      const firstEnd = Math.min(...pulled.map((p) => p.endMs));
      ok(lastFirstByte < firstEnd, `first bytes by ${lastFirstByte} ms, first end ${firstEnd} ms`);

      const upstream = await Promise.all(fleet.map((r) => sourcesOf(r, "upstream")));
      const peer = await Promise.all(fleet.map((r) => sourcesOf(r, "peer")));
      deepEqual([upstream.reduce((a, b) => a + b), peer.reduce((a, b) => a + b)], [1, 2]);
      const owner = upstream.indexOf(1);
      // The others found the holder's commit: no second upload. A replica's clients end once the
      // blob is verified, so its own commit (a HEAD finding the blob) may come just after.
      const kept = (replica: (typeof fleet)[number]) =>
        replica.logs().some((l) => String(l.message).includes("is in the bucket already"));
      for (const [i, replica] of fleet.entries()) {
        if (i !== owner) {
          await waitFor(`replica ${i} to find the holder's commit`, () => kept(replica));
        }
      }
      for (const [i, replica] of fleet.entries()) {
        equal(kept(replica), i !== owner, `replica ${i} (owner ${owner}) uploaded again`);
      }
      deepEqual(await keysUnder(s3, "blobs/"), [`blobs/sha256/${digest.slice(7)}`]);
      await waitFor(
        "the lease released",
        async () => (await keysUnder(s3, "leases/")).length === 0,
      );

      const ttfb = (at: (i: number) => boolean) =>
        pulled.filter((_, i) => at(i % 3)).map((p) => Math.round(p.firstByteMs!));
      const ends = pulled.map((p) => p.endMs);
      console.log(
        `cluster herd: first byte (ms) owner ${ttfb((i) => i === owner)}, others ${
          ttfb((i) => i !== owner)
        }; all done in ${Math.round(Math.max(...ends))} ms (${
          Math.round(30 * 200 / (Math.max(...ends) / 1000))
        } MB/s to clients)`,
      );
    } finally {
      await runCleanup(cleanup);
    }
  },
});

Deno.test({
  name:
    "cluster: the holder killed mid-fill; the others take over with one Range GET, clients whole",
  ...options,
  async fn() {
    const { dir, s3, registry, proxy, cleanup } = await bucketTestBed("cluster_test_");
    try {
      const size = 64 * MiB;
      const big = await pushLargeBlobImage(registry.url, "org/kill", "1", size, { dir });
      const digest = big.blob.digest;
      // The first upstream GET stops sending at 24 MiB: the holder is mid-fill when it dies.
      proxy.inject({ path: digest, method: "GET", stallAfterBytes: 24 * MiB });
      const [a, b, c] = await replicas(dir, 3, s3, { upstream: proxy.url, leaseTtl: "2s" });
      cleanup.push(() => a.stop(), () => b.stop(), () => c.stop());
      const path = `/v2/quay.io/org/kill/blobs/${digest}`;
      const since = performance.now();

      const progressA = { bytes: 0 };
      const onA = pull(a.url + path, since, { progress: progressA });
      await waitFor("a holds the lease", async () => (await keysUnder(s3, "leases/")).length > 0);
      const progress = [0, 1, 2, 3].map(() => ({ bytes: 0 }));
      const others = [b, b, c, c].map((r, i) =>
        pull(r.url + path, since, { progress: progress[i] })
      );
      await waitFor(
        "the clients of b and c streaming a's fill",
        () => progress.every((p) => p.bytes >= 16 * MiB),
        { timeoutMs: 60_000 },
      );
      await a.kill();

      const cut = await onA;
      ok(cut.error !== undefined && cut.bytes < size, "a's client is cut");
      // Its retry goes to another replica, from where it was cut.
      const resumed = await pull(b.url + path, since, { from: cut.bytes, hash: cut.hash });
      deepEqual([resumed.status, resumed.error, resumed.digest], [206, undefined, digest]);
      for (const p of await Promise.all(others)) {
        deepEqual([p.status, p.error, p.bytes, p.digest], [200, undefined, size, digest]);
      }
      const gets = upstreamGets(proxy, digest);
      equal(gets.length, 2, "one more upstream GET for the death");
      match(gets[1].headers.range ?? "", /^bytes=\d+-$/);
      ok(Number(/\d+/.exec(gets[1].headers.range)![0]) >= 16 * MiB, "resumed, not restarted");

      // Nothing partial in the bucket: the blob whole, once; the dead holder's lease cleaned up.
      deepEqual(await keysUnder(s3, "blobs/"), [`blobs/sha256/${digest.slice(7)}`]);
      const again = await pull(c.url + path, since);
      deepEqual([again.status, again.digest], [200, digest]);
      await waitFor(
        "the leases released",
        async () => (await keysUnder(s3, "leases/")).length === 0,
      );
    } finally {
      await runCleanup(cleanup);
    }
  },
});

Deno.test({
  name: "cluster: a peer's fill reaches another repository only once its upstream confirms it",
  ...options,
  async fn() {
    const { dir, s3, registry, proxy, cleanup } = await bucketTestBed("cluster_test_");
    try {
      const layer = async (tag: string) => {
        const image = await pushImage(registry.url, "org/app", tag, {
          files: { "data.bin": `layer ${tag}\n`.repeat(100_000) },
          format: "oci",
          gzipLevel: 0,
        });
        // The holder's upstream answers late: its fill is in flight when the other replica asks.
        proxy.inject({ path: `/v2/org/app/blobs/${image.layer.digest}`, delayMs: 2_000 });
        return image.layer;
      };
      const shared = await layer("v1");
      await pushBlob(registry.url, "org/copy", shared.bytes); // org/secret lacks every layer
      const unshared = await layer("v2");
      const [a, b] = await replicas(dir, 2, s3, { upstream: proxy.url });
      cleanup.push(() => a.stop(), () => b.stop());
      const since = performance.now();
      /** Starts a's fill of `digest` and waits until it holds the lease. */
      const fillOnA = async (digest: string) => {
        const pulled = pull(`${a.url}/v2/quay.io/org/app/blobs/${digest}`, since);
        await waitFor("a holds the lease", async () => (await keysUnder(s3, "leases/")).length > 0);
        return { pulled };
      };

      const { pulled: onA } = await fillOnA(shared.digest);
      const copy = await pull(`${b.url}/v2/quay.io/org/copy/blobs/${shared.digest}`, since);
      deepEqual([copy.status, copy.digest], [200, shared.digest]);
      equal(await sourcesOf(b, "peer"), 1, "b streamed a's fill, for another repository");
      deepEqual([(await onA).status, (await onA).digest], [200, shared.digest]);
      await waitFor(
        "the lease released",
        async () => (await keysUnder(s3, "leases/")).length === 0,
      );

      const { pulled: onA2 } = await fillOnA(unshared.digest);
      const refused = await fetch(`${b.url}/v2/quay.io/org/secret/blobs/${unshared.digest}`);
      equal(refused.status, 404);
      equal((await refused.json()).errors[0].code, "BLOB_UNKNOWN");
      equal(await sourcesOf(b, "peer"), 1, "nothing streamed for org/secret");
      deepEqual([(await onA2).status, (await onA2).digest], [200, unshared.digest]);

      for (const { digest } of [shared, unshared]) {
        equal(upstreamGets(proxy, digest).length, 1, "one upstream GET");
      }
      const heads = proxy.requests.filter((r) => r.method === "HEAD" && r.path.includes("/blobs/"));
      deepEqual(heads.map((r) => r.path), [
        `/v2/org/copy/blobs/${shared.digest}`,
        `/v2/org/secret/blobs/${unshared.digest}`,
      ]);
    } finally {
      await runCleanup(cleanup);
    }
  },
});

Deno.test({
  name: "cluster: a tag checked by one replica is fresh for the others (one revalidation per TTL)",
  ...options,
  async fn() {
    const { dir, s3, registry, proxy, cleanup } = await bucketTestBed("cluster_test_");
    try {
      const image = await pushImage(registry.url, "org/app", "v1", {
        files: { "hello.txt": "hello\n" },
        format: "oci",
      });
      const fleet = await replicas(dir, 3, s3, { upstream: proxy.url, tagTtl: "2s" });
      cleanup.push(...fleet.map((r) => () => r.stop()));
      const manifests = (from: number) =>
        proxy.requests.slice(from).filter((r) => r.path.includes("/manifests/"));
      const get = async (replica: MirrorProcess) => {
        const response = await fetch(`${replica.url}/v2/quay.io/org/app/manifests/v1`);
        equal(response.headers.get("docker-content-digest"), image.digest);
        await response.body?.cancel();
        return response.headers.get("x-cache");
      };

      const first = proxy.requests.length;
      equal(await get(fleet[0]), "MISS");
      deepEqual(manifests(first).map((r) => r.method), ["GET"]);
      const fresh = proxy.requests.length;
      deepEqual([await get(fleet[1]), await get(fleet[2])], ["HIT", "HIT"]);
      deepEqual(manifests(fresh), [], "the others used the record the first wrote");

      // Past the TTL the first to ask revalidates (a HEAD); the others use what it wrote.
      const checkedAt = await tagCheckedAt(s3);
      await waitFor("the tag record to age past the TTL", () => Date.now() - checkedAt > 2_000, {
        timeoutMs: 10_000,
      });
      const stale = proxy.requests.length;
      equal(await get(fleet[2]), "HIT");
      deepEqual(manifests(stale).map((r) => r.method), ["HEAD"], "one revalidation");
      const after = proxy.requests.length;
      deepEqual([await get(fleet[0]), await get(fleet[1])], ["HIT", "HIT"]);
      deepEqual(manifests(after), [], "no further revalidation within the TTL");
    } finally {
      await runCleanup(cleanup);
    }
  },
});

/** When the upstream last confirmed org/app:v1, as the bucket's tag record says. */
async function tagCheckedAt(s3: S3Config): Promise<number> {
  const client = new S3Client(s3);
  const response = await client.send("GetObject", "GET", `${s3.prefix}tags/quay.io/org/app/v1`);
  return (await response.json()).checkedAt;
}

Deno.test({
  name: "cluster: the bucket down: clear 503s, blobs from upstream, nothing wrong cached, recovery",
  ...options,
  async fn() {
    const { dir, s3, registry, proxy, cleanup } = await bucketTestBed("cluster_test_");
    let gatewayDown = false;
    try {
      const image = await pushImage(registry.url, "org/app", "v1", {
        files: { "hello.txt": "hello\n" },
        format: "oci",
      });
      const other = await pushImage(registry.url, "org/other", "v1", {
        files: { "other.txt": "fetched while the bucket is down\n" },
        format: "oci",
      });
      const [mirror] = await replicas(dir, 1, s3, { upstream: proxy.url });
      cleanup.push(() => mirror.stop());
      const tag = `${mirror.url}/v2/quay.io/org/app/manifests/v1`;
      const layer = `${mirror.url}/v2/quay.io/org/app/blobs/${image.layer.digest}`;
      const otherLayer = `${mirror.url}/v2/quay.io/org/other/blobs/${other.layer.digest}`;
      const since = performance.now();
      await (await fetch(tag)).body?.cancel();
      equal((await pull(layer, since)).digest, image.layer.digest);
      // The client ends once the blob is verified; the upload may end just after.
      const layerKey = `blobs/sha256/${image.layer.digest.slice(7)}`;
      await waitFor("the layer committed", async () => (await keysUnder(s3)).includes(layerKey));
      const cached = await keysUnder(s3);

      await stopGateway();
      gatewayDown = true;
      for (const method of ["GET", "HEAD"]) {
        const response = await fetch(tag, { method });
        equal(response.status, 503, `${method} of a tag`);
        match(response.headers.get("content-type") ?? "", /^application\/json/);
        if (method === "GET") {
          const { errors } = await response.json();
          equal(errors[0].code, "UNAVAILABLE");
          match(errors[0].message, /the cache's bucket is unavailable/);
        }
      }
      const byDigest = await fetch(`${mirror.url}/v2/quay.io/org/app/manifests/${image.digest}`);
      equal(byDigest.status, 503);
      await byDigest.body?.cancel();
      // Blobs are fetched upstream meanwhile, verified, and not cached.
      for (const [url, digest] of [[layer, image.layer.digest], [otherLayer, other.layer.digest]]) {
        const p = await pull(url, since);
        deepEqual([p.status, p.digest], [200, digest]);
      }
      const ready = await fetch(`${mirror.url}/readyz`);
      equal(ready.status, 503);
      await ready.body?.cancel();

      await startGateway();
      gatewayDown = false;
      await waitFor("ready again", async () => {
        const response = await fetch(`${mirror.url}/readyz`);
        await response.body?.cancel();
        return response.status === 200;
      });
      deepEqual(await keysUnder(s3), cached, "nothing was written during the outage");
      const again = await fetch(tag);
      deepEqual([again.status, again.headers.get("x-cache")], [200, "HIT"]);
      equal(again.headers.get("docker-content-digest"), image.digest);
      await again.body?.cancel();
      const hit = await fetch(layer);
      equal(hit.headers.get("x-cache"), "HIT");
      await hit.body?.cancel();
      const miss = await pull(otherLayer, since);
      equal(miss.digest, other.layer.digest);
      await waitFor(
        "the other layer cached",
        async () =>
          (await keysUnder(s3, "blobs/")).includes(`blobs/sha256/${other.layer.digest.slice(7)}`),
      );
      const statuses = mirror.logs().map((l) => (l.properties as { status?: number })?.status);
      ok(!statuses.includes(500), "no 500 at any time");
    } finally {
      if (gatewayDown) await startGateway();
      await runCleanup(cleanup);
    }
  },
});
