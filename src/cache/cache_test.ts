import { deepEqual, equal, ok } from "node:assert/strict";
import { DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST } from "../oci/media_types.ts";
import { parseManifest } from "../oci/manifest.ts";
import { RegistryError } from "../oci/errors.ts";
import {
  assertBody,
  enospc,
  hasBlob,
  patterned,
  putBlob,
  readAll,
  sha256,
  storeTest,
  tempCache,
  tempCacheOn,
  withFaults,
} from "./_test_support.ts";
import { type Cache, HOT_MS, type Manifest } from "./cache.ts";
import type { Store, TagRecord } from "./store.ts";

const RECORD: TagRecord = {
  digest: sha256(new TextEncoder().encode("m")),
  mediaType: OCI_MANIFEST,
  size: 1,
  checkedAt: 1_700_000_000_000,
};

function encode(doc: unknown): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(JSON.stringify(doc));
}

/** A Docker manifest list: its media type is only in its bytes. */
const LIST_BYTES = encode({
  schemaVersion: 2,
  mediaType: DOCKER_MANIFEST_LIST,
  manifests: [{
    mediaType: DOCKER_MANIFEST,
    digest: RECORD.digest,
    size: 1234,
    platform: { os: "linux", architecture: "amd64" },
  }],
});

function manifestOf(bytes: Uint8Array<ArrayBuffer>): Manifest {
  const digest = sha256(bytes);
  const parsed = parseManifest(bytes, digest);
  if (parsed instanceof RegistryError) throw parsed;
  return { digest, mediaType: parsed.mediaType, bytes, parsed };
}

storeTest("cache: openBlob pins the blob before opening it", async (b) => {
  const late: { cache?: Cache } = {};
  await using t = await tempCacheOn(b, {
    wrap: (store) =>
      withFaults(store, {
        // An eviction pass runs between the lookup and the open.
        openBlob: async (digest) => {
          await late.cache!.eviction.evictTo(0);
          return await store.openBlob(digest);
        },
      }),
  });
  late.cache = t.cache;
  const bytes = patterned(100_000, 21);
  const digest = await putBlob(t.store, bytes);
  t.cache.eviction.added("blob", digest, bytes.length);
  const blob = await t.cache.openBlob(digest);
  ok(blob, "the blob survived the eviction pass");
  await t.cache.eviction.evictTo(0);
  ok(await hasBlob(t.store, digest), "an open blob is not evicted");
  assertBody(await readAll(await blob.stream()), bytes);
  blob.release();
  await t.cache.eviction.evictTo(0);
  equal(await hasBlob(t.store, digest), false);
  equal(t.cache.eviction.stats().objects, 0);
});

storeTest("cache: openBlob of a missing blob releases its pin", async (b) => {
  await using t = await tempCacheOn(b);
  const digest = sha256(patterned(10, 22));
  t.cache.eviction.added("blob", digest, 10); // indexed, but not on disk
  equal(await t.cache.openBlob(digest), undefined);
  await t.cache.eviction.evictTo(0);
  equal(t.cache.eviction.stats().objects, 0, "an unpinned entry is evicted");
});

storeTest(
  "cache: keepManifest, keepTag and addLink count disk errors instead of throwing",
  async (b) => {
    await using t = await tempCacheOn(b, {
      wrap: (store) =>
        withFaults(store, {
          putManifest: () => Promise.reject(enospc()),
          putTag: () => Promise.reject(enospc()),
          addLink: () => Promise.reject(enospc()),
        }),
    });
    const manifest = manifestOf(LIST_BYTES);
    const writes: [string, () => Promise<void>][] = [
      ["keepManifest", () => t.cache.keepManifest("docker.io", "library/alpine", manifest)],
      ["keepTag", () => t.cache.keepTag("docker.io", "library/alpine", "3.20", RECORD)],
      ["addLink", () => t.cache.addLink("docker.io", "library/alpine", RECORD.digest)],
    ];
    for (const [name, write] of writes) {
      const before = t.cache.diskErrors;
      await write(); // resolves: a handler then serves the content uncached (no 500)
      ok(t.cache.diskErrors > before, `${name} counts a disk error`);
      equal(t.cache.lastDiskError, enospc().message);
    }
    equal(t.cache.eviction.stats().objects, 0, "a manifest not stored is not indexed");
    equal(await t.cache.manifest(manifest.digest), undefined);
    equal(await t.cache.tag("docker.io", "library/alpine", "3.20"), undefined);
    equal(await t.cache.writeProblem(), undefined);
    equal(t.cache.lastDiskError, undefined, "a successful probe clears the last disk error");
  },
);

storeTest("cache: keepManifest stores, indexes and links the manifest", async (b) => {
  await using t = await tempCacheOn(b);
  const manifest = manifestOf(LIST_BYTES);
  await t.cache.keepManifest("docker.io", "library/alpine", manifest);
  equal(t.cache.diskErrors, 0);
  deepEqual(t.cache.eviction.stats(), {
    objects: 1,
    bytes: LIST_BYTES.length,
    reserved: 0,
    evictions: 0,
  });
  ok(await t.cache.hasLink("docker.io", "library/alpine", manifest.digest));
  await t.cache.keepTag("docker.io", "library/alpine", "3.20", RECORD);
  deepEqual(await t.cache.tag("docker.io", "library/alpine", "3.20"), RECORD);
});

storeTest("cache: manifest() takes the media type from the manifest's bytes", async (b) => {
  await using t = await tempCacheOn(b);
  const digest = sha256(LIST_BYTES);
  await t.store.putManifest(digest, LIST_BYTES);
  const found = await t.cache.manifest(digest);
  ok(found);
  equal(found.mediaType, DOCKER_MANIFEST_LIST);
  deepEqual(found.bytes, LIST_BYTES);
  equal(found.digest, digest);
  equal(found.parsed.manifests?.[0].digest, RECORD.digest);
});

storeTest("cache: a cached manifest that is not a valid manifest is dropped", async (b) => {
  await using t = await tempCacheOn(b);
  const bytes = encode({ hello: "world" });
  const digest = sha256(bytes);
  await t.store.putManifest(digest, bytes);
  equal(await t.cache.manifest(digest), undefined);
  equal(await t.raw("manifest", digest), undefined);
});

Deno.test("cache: a paused tag stays paused until the injected clock passes the pause", async () => {
  let now = 1_000_000;
  await using t = await tempCache({ now: () => now });
  const key = "docker.io/library/alpine:3.20";
  equal(t.cache.stalePaused(key), false);
  t.cache.pauseStale(key, 30_000);
  equal(t.cache.stalePaused(key), true);
  now += 29_999;
  equal(t.cache.stalePaused(key), true);
  now += 1;
  equal(t.cache.stalePaused(key), false);
  t.cache.pauseStale(key, 30_000);
  t.cache.pauseStale(key, 0);
  equal(t.cache.stalePaused(key), false, "ms 0 ends the pause");
  t.cache.pauseStale(key, 30_000);
  await t.cache.dropTag("docker.io", "library/alpine", "3.20");
  equal(t.cache.stalePaused(key), false, "a dropped tag is no longer paused");
});

Deno.test("cache: at most 10,000 tags are paused, least recently used forgotten first", async () => {
  const now = 1_000_000;
  await using t = await tempCache({ now: () => now });
  const max = 10_000;
  for (let i = 0; i < max; i++) t.cache.pauseStale(`r/x:${i}`, 60_000);
  equal(t.cache.stalePaused("r/x:0"), true); // used: now the most recent
  t.cache.pauseStale(`r/x:${max}`, 60_000);
  equal(t.cache.stalePaused(`r/x:${max}`), true);
  equal(t.cache.stalePaused("r/x:0"), true);
  equal(t.cache.stalePaused("r/x:1"), false, "the least recently used pause is forgotten");
  equal(t.cache.stalePaused("r/x:2"), true);
});

storeTest(
  "cache: tag records, manifests and links are reused from memory for HOT_MS, then read again",
  async (b) => {
    let now = 1_000_000;
    let reads = 0;
    const counting = (store: Store): Store =>
      new Proxy(store, {
        get(target, prop, receiver) {
          const value = Reflect.get(target, prop, receiver);
          if (typeof value !== "function") return value;
          if (prop === "getTag" || prop === "getManifest" || prop === "hasLink") {
            return (...args: unknown[]) => (reads++, value.apply(target, args));
          }
          return value.bind(target);
        },
      });
    await using t = await tempCacheOn(b, { now: () => now, wrap: counting });
    const manifest = manifestOf(LIST_BYTES);
    await t.store.putManifest(manifest.digest, manifest.bytes);
    await t.store.putTag("docker.io", "library/alpine", "3.20", RECORD);
    await t.store.addLink("docker.io", "library/alpine", manifest.digest);
    const lookup = async () => {
      deepEqual(await t.cache.tag("docker.io", "library/alpine", "3.20"), RECORD);
      equal((await t.cache.manifest(manifest.digest))?.digest, manifest.digest);
      ok(await t.cache.hasLink("docker.io", "library/alpine", manifest.digest));
    };
    await lookup();
    equal(reads, 3, "the first lookup reads the store");
    for (let i = 0; i < 10; i++) await lookup();
    equal(reads, 3, "within HOT_MS nothing more is read");
    // Changed elsewhere (another replica): seen once HOT_MS passed.
    const moved = { ...RECORD, digest: sha256(new TextEncoder().encode("other")) };
    await t.store.putTag("docker.io", "library/alpine", "3.20", moved);
    now += HOT_MS;
    equal((await t.cache.tag("docker.io", "library/alpine", "3.20"))?.digest, RECORD.digest);
    now += 1;
    equal((await t.cache.tag("docker.io", "library/alpine", "3.20"))?.digest, moved.digest);
    equal(reads, 4);
    // Changed here: seen at once.
    const kept = { ...moved, checkedAt: RECORD.checkedAt + 5 };
    await t.cache.keepTag("docker.io", "library/alpine", "3.20", kept);
    deepEqual(await t.cache.tag("docker.io", "library/alpine", "3.20"), kept);
    await t.cache.dropTag("docker.io", "library/alpine", "3.20");
    equal(await t.cache.tag("docker.io", "library/alpine", "3.20"), undefined);
    // A manifest removed from the store (evicted) is gone from memory within HOT_MS.
    await t.store.delete("manifest", manifest.digest);
    now += HOT_MS + 1;
    equal(await t.cache.manifest(manifest.digest), undefined);
  },
);
