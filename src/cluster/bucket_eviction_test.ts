import { deepEqual, equal, ok } from "node:assert/strict";
import { emptyPrefix, keysUnder, RGW_TOOLS, s3Settings } from "../../tests/fixtures/rgw.ts";
import { skipUnless } from "../../tests/fixtures/tools.ts";
import { patterned, putBlob } from "../cache/_test_support.ts";
import { S3Store } from "../cache/s3_store.ts";
import { BucketEviction } from "./bucket_eviction.ts";
import { Leases } from "./leases.ts";

const KiB = 1024;
const MINUTE = 60_000;

/**
 * An S3 store on a fresh prefix holding five 100 KiB blobs, used in that order. The bucket keeps
 * when each use reached it (its clock is this machine's); `usedMs` has those times, and the
 * replicas' clock (`now`) is set by the test.
 */
async function bucket() {
  const dir = await Deno.makeTempDir({ prefix: "bucket_eviction_test_" });
  const s3 = await s3Settings();
  const store = await S3Store.open({ dir, s3 }, { clean: true });
  const digests: string[] = [];
  for (let i = 0; i < 5; i++) digests.push(await putBlob(store, patterned(100 * KiB, 40 + i)));
  for (const digest of digests) await store.touch("blob", digest, Date.now());
  const used = new Map<string, number>();
  for await (const o of store.list()) used.set(o.digest, o.accessedMs);
  const usedMs = digests.map((d) => used.get(d)!);
  ok(usedMs.every((ms, i) => i === 0 || ms > usedMs[i - 1]), `used in order: ${usedMs}`);
  const clock = { now: Date.now() + 10 * MINUTE };
  const leases = (owner: string) =>
    new Leases(store.client, s3.prefix, { owner, ttlMs: 10_000, now: () => clock.now });
  return {
    s3,
    store,
    digests,
    usedMs,
    clock,
    leases,
    blobs: async () => (await keysUnder(s3, "blobs/")).map((k) => `sha256:${k.slice(13)}`),
    async [Symbol.asyncDispose]() {
      await emptyPrefix(s3);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

const options = skipUnless(RGW_TOOLS);

Deno.test({
  name: "bucket eviction: above maxSize, least recently used first, down to 90%",
  ...options,
  async fn() {
    await using b = await bucket();
    const eviction = new BucketEviction(b.store, b.leases("http://a/"), { maxSize: 350 * KiB });
    const pass = await eviction.pass();
    deepEqual(pass, { outcome: "evicted", bytes: 500 * KiB, evicted: 2, freed: 200 * KiB });
    deepEqual(await b.blobs(), b.digests.slice(2).sort());
    deepEqual(await keysUnder(b.s3, "leases/"), [], "the lease was given back");
    deepEqual(await eviction.pass(), { outcome: "within", bytes: 300 * KiB });
    equal(eviction.evicted, 2);
  },
});

Deno.test({
  name: "bucket eviction: one replica at a time; recently used objects are kept",
  ...options,
  async fn() {
    await using b = await bucket();
    const other = await b.leases("http://b/").acquire("evict");
    const eviction = new BucketEviction(b.store, b.leases("http://a/"), { maxSize: 350 * KiB });
    deepEqual(await eviction.pass(), { outcome: "busy", holder: "http://b/" });
    deepEqual((await b.blobs()).length, 5, "nothing deleted while another evicts");
    if ("lease" in other) await other.lease.release();

    // Only objects unused for 45 min may go: 45 min after the second use, only the first blob.
    b.clock.now = b.usedMs[1] - 1 + 45 * MINUTE;
    const strict = new BucketEviction(b.store, b.leases("http://a/"), {
      maxSize: 100 * KiB,
      graceMs: 45 * MINUTE,
    });
    deepEqual(await strict.pass(), {
      outcome: "evicted",
      bytes: 500 * KiB,
      evicted: 1,
      freed: 100 * KiB,
    });
    deepEqual(await b.blobs(), b.digests.slice(1).sort());
  },
});
