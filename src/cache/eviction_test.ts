import { deepEqual, equal, ok } from "node:assert/strict";
import {
  deferred,
  hasBlob,
  patterned,
  putBlob,
  sha256,
  storeTest,
  withFaults,
} from "./_test_support.ts";
import { Eviction } from "./eviction.ts";
import type { ObjectKind, Store } from "./store.ts";

/** A clock the test sets. */
function clock(start = 1_000): { now: () => number; set(ms: number): void } {
  let ms = start;
  return { now: () => ms, set: (to) => ms = to };
}

/** `store` recording what it deletes, in order. */
function recording(store: Store): { store: Store; deleted: string[] } {
  const deleted: string[] = [];
  return {
    deleted,
    store: withFaults(store, {
      delete: async (kind: ObjectKind, digest: string) => {
        deleted.push(digest);
        await store.delete(kind, digest);
      },
    }),
  };
}

/** Stores `count` blobs of `size` bytes each and records them at times 1, 2, 3... */
async function addBlobs(
  store: Store,
  eviction: Eviction,
  time: { set(ms: number): void },
  count: number,
  size: number,
): Promise<string[]> {
  const digests: string[] = [];
  for (let i = 0; i < count; i++) {
    const digest = await putBlob(store, patterned(size, 100 + i));
    time.set(i + 1);
    eviction.added("blob", digest, size);
    digests.push(digest);
  }
  return digests;
}

storeTest("eviction: evicts least recently added first, by the injected clock", async (backend) => {
  await using t = await backend.tempStore();
  const { store, deleted } = recording(t.store);
  const time = clock();
  const eviction = new Eviction(store, undefined, time.now);
  const [a, b, c] = await addBlobs(store, eviction, time, 3, 100);
  await eviction.evictTo(200);
  deepEqual(deleted, [a]);
  await eviction.evictTo(100);
  deepEqual(deleted, [a, b]);
  ok(await hasBlob(t.store, c));
  equal(await hasBlob(t.store, a), false);
  deepEqual(eviction.stats(), { objects: 1, bytes: 100, reserved: 0, evictions: 2 });
});

storeTest("eviction: a hit (touched) moves an object to the back of the line", async (backend) => {
  await using t = await backend.tempStore();
  const { store, deleted } = recording(t.store);
  const time = clock();
  const eviction = new Eviction(store, undefined, time.now);
  const [a, b, c] = await addBlobs(store, eviction, time, 3, 100);
  time.set(10);
  eviction.touched("blob", a);
  await eviction.evictTo(100);
  deepEqual(deleted, [b, c]);
  ok(await hasBlob(t.store, a));
});

storeTest("eviction: pinned objects are skipped until released", async (backend) => {
  await using t = await backend.tempStore();
  const { store, deleted } = recording(t.store);
  const time = clock();
  const eviction = new Eviction(store, undefined, time.now);
  const [a, b, c] = await addBlobs(store, eviction, time, 3, 100);
  const release = eviction.pin("blob", a);
  const again = eviction.pin("blob", a);
  await eviction.evictTo(0);
  deepEqual(deleted, [b, c]);
  ok(await hasBlob(t.store, a));
  release();
  release(); // twice: still pinned by `again`
  await eviction.evictTo(0);
  deepEqual(deleted, [b, c]);
  again();
  await eviction.evictTo(0);
  deepEqual(deleted, [b, c, a]);
  deepEqual(eviction.stats(), { objects: 0, bytes: 0, reserved: 0, evictions: 3 });
});

storeTest(
  "eviction: a reservation counts against maxSize and triggers eviction",
  async (backend) => {
    await using t = await backend.tempStore();
    const { store, deleted } = recording(t.store);
    const time = clock();
    const eviction = new Eviction(store, 1000, time.now);
    await eviction.load();
    try {
      const [a, b, c] = await addBlobs(store, eviction, time, 3, 300);
      await eviction.settled();
      deepEqual(deleted, [], "900 of 1000 bytes: nothing to evict");
      const release = eviction.reserve(200);
      await eviction.settled();
      // 1100 > 1000: down to 90% (900), reservation included.
      deepEqual(deleted, [a]);
      deepEqual(eviction.stats(), { objects: 2, bytes: 600, reserved: 200, evictions: 1 });
      release();
      release();
      deepEqual(eviction.stats(), { objects: 2, bytes: 600, reserved: 0, evictions: 1 });
      ok(await hasBlob(t.store, b));
      ok(await hasBlob(t.store, c));
    } finally {
      await eviction.close();
    }
  },
);

storeTest("eviction: nothing is evicted before the index is loaded", async (backend) => {
  await using t = await backend.tempStore();
  const { store, deleted } = recording(t.store);
  const time = clock();
  const eviction = new Eviction(store, 100, time.now);
  await addBlobs(store, eviction, time, 3, 100);
  await eviction.settled();
  deepEqual(deleted, []);
});

storeTest(
  "eviction: load() indexes the store and evicts the oldest down to 90% of maxSize",
  async (backend) => {
    await using t = await backend.tempStore();
    const { store, deleted } = recording(t.store);
    const digests: string[] = [];
    const kind = (i: number) => i % 2 === 0 ? "blob" : "manifest";
    for (let i = 0; i < 10; i++) {
      const bytes = patterned(100, 200 + i);
      digests.push(
        kind(i) === "blob" ? await putBlob(store, bytes) : await putManifestBytes(store, bytes),
      );
    }
    // Access times out of creation order: object i was last used at 10_000 - i seconds, touched in
    // that order (S3 keeps when a touch reached the bucket).
    for (let i = 9; i >= 0; i--) {
      await store.touch(kind(i), digests[i], 1_700_000_000_000 - i * 1000);
    }
    const eviction = new Eviction(store, 950);
    try {
      await eviction.load();
      await eviction.settled();
      // 1000 > 950: evicted down to 855 (not merely to 950), the two least recently used.
      deepEqual(deleted, [digests[9], digests[8]]);
      deepEqual(eviction.stats(), { objects: 8, bytes: 800, reserved: 0, evictions: 2 });
      equal(await store.getManifest(digests[9]), undefined);
      equal(await hasBlob(t.store, digests[8]), false);
      ok(await hasBlob(t.store, digests[0]));
    } finally {
      await eviction.close();
    }
  },
);

storeTest("eviction: flush() writes the access times of hits to the store", async (backend) => {
  await using t = await backend.tempStore();
  const time = clock();
  const eviction = new Eviction(t.store, undefined, time.now);
  const [a] = await addBlobs(t.store, eviction, time, 1, 10);
  time.set(1_600_000_000_000);
  eviction.touched("blob", a);
  const before = Date.now();
  await eviction.flush();
  const after = Date.now();
  const listed = [];
  for await (const info of t.store.list()) listed.push(info);
  deepEqual(listed.map(({ accessedMs: _, ...o }) => o), [{ kind: "blob", digest: a, size: 10 }]);
  const [{ accessedMs }] = listed;
  // The directory keeps the time of the hit; S3 when the flush reached the bucket.
  if (backend.name === "fs") equal(accessedMs, 1_600_000_000_000);
  else ok(before <= accessedMs && accessedMs <= after, `${accessedMs} in [${before}, ${after}]`);
});

storeTest(
  "eviction: an eviction pass started while evictTo runs counts every byte once",
  async (backend) => {
    await using t = await backend.tempStore();
    const gate = deferred();
    const deleting = deferred();
    const store = withFaults(t.store, {
      delete: async (kind: ObjectKind, digest: string) => {
        deleting.resolve();
        await gate.promise;
        await t.store.delete(kind, digest);
      },
    });
    const time = clock();
    const eviction = new Eviction(store, 1000, time.now);
    await eviction.load();
    try {
      await addBlobs(store, eviction, time, 2, 400);
      const pruning = eviction.evictTo(0);
      await deleting.promise;
      // A fill commits meanwhile: 1200 > 1000 starts the background pass.
      const c = await putBlob(t.store, patterned(400, 300));
      time.set(3);
      eviction.added("blob", c, 400);
      gate.resolve();
      await pruning;
      await eviction.settled();
      const { objects, bytes, evictions } = eviction.stats();
      equal(bytes, objects * 400, `${objects} objects of 400 bytes counted as ${bytes} bytes`);
      equal(evictions, 3 - objects, `${evictions} evictions for ${3 - objects} objects deleted`);
    } finally {
      await eviction.close();
    }
  },
);

async function putManifestBytes(store: Store, bytes: Uint8Array): Promise<string> {
  const digest = sha256(bytes);
  await store.putManifest(digest, bytes);
  return digest;
}
