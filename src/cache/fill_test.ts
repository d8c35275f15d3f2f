import { deepEqual, equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { RegistryError } from "../oci/errors.ts";
import {
  assertBody,
  chunks,
  deferred,
  discarding,
  enospc,
  exists,
  fullAfter,
  hasBlob,
  ok200,
  ORIGIN,
  patterned,
  putBlob,
  readAll,
  scripted,
  sha256,
  tempCache,
  tempStore,
  tmpEntries,
  upstream,
  waitFor,
  withFaults,
  within,
} from "./_test_support.ts";
import { Eviction } from "./eviction.ts";
import { type Fill, PASS_THROUGH_BUFFER } from "./fill.ts";
import { Fills, MAX_RESUMES, UNKNOWN_LENGTH_LIMIT } from "./fills.ts";
import type { Spool } from "./store.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

function ignore(): void {}

/** The digest of `chunk` repeated `count` times. */
function repeatedDigest(chunk: Uint8Array, count: number): string {
  const hash = createHash("sha256");
  for (let i = 0; i < count; i++) hash.update(chunk);
  return `sha256:${hash.digest("hex")}`;
}

function settled(fill: Fill): Promise<void> {
  return waitFor(`the fill of ${fill.digest} to settle`, () => fill.settled);
}

/** Fills over a temp store with a recorded, instant `sleep`. */
async function tempFills() {
  const temp = await tempStore();
  const eviction = new Eviction(temp.store, undefined);
  const sleeps: number[] = [];
  const fills = new Fills({
    store: temp.store,
    eviction,
    sleep: (ms) => {
      sleeps.push(ms);
      return Promise.resolve();
    },
  });
  return { ...temp, eviction, fills, sleeps };
}

Deno.test("fill: a second request for a digest joins the fill; upstream is opened once", async () => {
  await using t = await tempCache();
  const blob = patterned(300 * KiB);
  const digest = sha256(blob);
  const start = deferred();
  const rest = deferred();
  const up = upstream(() =>
    ok200(
      [start.promise, blob.subarray(0, 100 * KiB), rest.promise, blob.subarray(100 * KiB)],
      blob.length,
    )
  );
  const first = t.cache.fill(digest, ORIGIN, up.open);
  const second = t.cache.fill(digest, ORIGIN, up.open);
  equal(first.joined, false);
  equal(second.joined, true);
  const [a, b] = await Promise.all([first.fill, second.fill]);
  equal(a, b);
  const reader = t.cache.follow(a, 0, undefined, ignore).getReader();
  const readB = readAll(t.cache.follow(b, 0, undefined, ignore));
  // A waiting follower is woken by each chunk, not only when the fill ends.
  const reading = reader.read();
  start.resolve();
  const head = await within("the first bytes while the fill runs", reading);
  ok(!head.done && head.value.length > 0);
  equal(a.settled, false);
  rest.resolve();
  const [gotA, gotB] = await Promise.all([readAll(reader, [head.value.slice()]), readB]);
  assertBody(gotA, blob);
  assertBody(gotB, blob);
  deepEqual(up.opens, [0]);
  equal(t.cache.fills.stats.started, 1);
  equal(t.cache.fills.stats.coalesced, 1);
  equal(t.cache.fills.stats.completed, 1);
  ok(await hasBlob(t.fs, digest), "the verified blob is committed");
});

Deno.test("fill: with a wrong digest the last byte is never sent and nothing is committed", async () => {
  await using t = await tempCache();
  const blob = patterned(200 * KiB);
  const claimed = sha256(patterned(200 * KiB, 2));
  const up = upstream(() => ok200(chunks(blob, 64 * KiB), blob.length));
  const fill = await t.cache.fill(claimed, ORIGIN, up.open).fill;
  let release: { sent: number; complete: boolean } | undefined;
  const got = await readAll(
    t.cache.follow(fill, 0, undefined, (sent, complete) => release = { sent, complete }),
  );
  ok(got.error instanceof RegistryError, `the follower errors, got ${got.error}`);
  equal(got.error.code, "DIGEST_INVALID");
  ok(got.bytes.length < blob.length, `the follower got ${got.bytes.length} of ${blob.length}`);
  deepEqual(got.bytes, blob.subarray(0, got.bytes.length));
  deepEqual(release, { sent: got.bytes.length, complete: false });
  equal(t.cache.fills.stats.digestMismatches, 1);
  equal(t.cache.fills.stats.failed, 1);
  equal(await hasBlob(t.fs, claimed), false);
  equal(await hasBlob(t.fs, sha256(blob)), false);
  await waitFor("the spool to be removed", async () => (await tmpEntries(t.dir)).length === 0);
  equal(t.cache.eviction.stats().reserved, 0);
  equal(t.cache.fills.get(ORIGIN.registry, claimed), undefined);
});

Deno.test("fill: a broken upstream body is resumed from the byte it stopped at", async () => {
  await using t = await tempFills();
  const blob = patterned(300 * KiB);
  const digest = sha256(blob);
  const cut = 150 * KiB;
  const up = upstream((offset) => {
    if (offset === 0) {
      return ok200([...chunks(blob.subarray(0, cut), 50 * KiB), new Error("connection reset")]);
    }
    return new Response(scripted(chunks(blob.subarray(offset), 64 * KiB)).stream, {
      status: 206,
      headers: { "content-range": `bytes ${offset}-${blob.length - 1}/${blob.length}` },
    });
  });
  const fill = await t.fills.begin(digest, ORIGIN, up.open);
  const [a, b] = await Promise.all([
    readAll(fill.follow(0, undefined, ignore)),
    readAll(fill.follow(0, undefined, ignore)),
  ]);
  assertBody(a, blob);
  assertBody(b, blob);
  deepEqual(up.opens, [0, cut]);
  equal(t.fills.stats.resumes, 1);
  equal(t.fills.stats.completed, 1);
  equal(t.sleeps.length, 1);
  ok(await hasBlob(t.store, digest));
});

Deno.test("fill: a resume answered 200 (Range ignored) skips the bytes already received", async () => {
  await using t = await tempFills();
  const blob = patterned(200 * KiB, 3);
  const digest = sha256(blob);
  const cut = 70 * KiB;
  const up = upstream((offset) =>
    offset === 0
      ? ok200([blob.subarray(0, cut), new Error("connection reset")], blob.length)
      : ok200(chunks(blob, 48 * KiB), blob.length)
  );
  const fill = await t.fills.begin(digest, ORIGIN, up.open);
  assertBody(await readAll(fill.follow(0, undefined, ignore)), blob);
  deepEqual(up.opens, [0, cut]);
  ok(await hasBlob(t.store, digest));
});

Deno.test("fill: failed reconnects count as resumes; the fill fails after MAX_RESUMES", async () => {
  await using t = await tempFills();
  const blob = patterned(200 * KiB);
  const digest = sha256(blob);
  const cut = 100 * KiB;
  const up = upstream((offset) => {
    if (offset > 0) throw new Error("connect ECONNREFUSED");
    return ok200([blob.subarray(0, cut), new Error("connection reset")], blob.length);
  });
  const fill = await t.fills.begin(digest, ORIGIN, up.open);
  const got = await readAll(fill.follow(0, undefined, ignore));
  ok(got.error instanceof Error);
  equal(got.error.message, "connect ECONNREFUSED");
  ok(got.bytes.length < blob.length);
  // The old pump gave up after ONE failed reconnect: opens was [0, cut].
  deepEqual(up.opens, [0, ...Array(MAX_RESUMES).fill(cut)]);
  equal(t.fills.stats.resumes, MAX_RESUMES);
  equal(t.fills.stats.failed, 1);
  equal(t.sleeps.length, MAX_RESUMES);
  for (let i = 1; i < t.sleeps.length; i++) {
    ok(t.sleeps[i] > t.sleeps[i - 1], `backoff grows: ${t.sleeps.join(", ")}`);
  }
  equal(await hasBlob(t.store, digest), false);
  await waitFor("the spool to be removed", async () => (await tmpEntries(t.dir)).length === 0);
});

Deno.test("fill: a full disk mid-fill passes the bytes through without resuming or caching", async () => {
  const full = deferred();
  let spoolPath: string | undefined;
  let spools = 0;
  await using t = await tempCache({
    wrap: (store) =>
      withFaults(store, {
        createSpool: async (): Promise<Spool> => {
          const spool = await store.createSpool();
          spoolPath ??= spool.path;
          spools++;
          return fullAfter(spool, 150 * KiB, () => full.resolve());
        },
      }),
  });
  const blob = patterned(400 * KiB, 5);
  const digest = sha256(blob);
  const gate = deferred();
  const parts = chunks(blob, 100 * KiB);
  const up = upstream(() =>
    ok200([parts[0], parts[1], gate.promise, parts[2], parts[3]], 400 * KiB)
  );
  const first = t.cache.fill(digest, ORIGIN, up.open);
  const joined = t.cache.fill(digest, ORIGIN, up.open);
  equal(joined.joined, true);
  const fill = await first.fill;
  equal(await joined.fill, fill);
  const eager = readAll(t.cache.follow(fill, 0, undefined, ignore));
  const lazy = t.cache.follow(fill, 0, undefined, ignore); // read only once the fill is over
  await full.promise;
  await waitFor("the fill to stop caching", () => !fill.caching);
  equal(t.cache.eviction.stats().reserved, 0, "the reservation is released");
  // The failed fill is no longer joined: a new request starts a fill of its own.
  const again = upstream(() => Promise.reject(new RegistryError("BLOB_UNKNOWN", "gone")));
  const next = t.cache.fill(digest, ORIGIN, again.open);
  equal(next.joined, false);
  await next.fill.then(() => ok(false, "the second fill should fail"), ignore);
  deepEqual(again.opens, [0]);

  gate.resolve();
  assertBody(await eager, blob);
  await settled(fill);
  ok(spoolPath && await exists(spoolPath), "the spool stays while a follower still needs it");
  assertBody(await readAll(lazy), blob);
  await waitFor("the spool to be removed", async () => (await tmpEntries(t.dir)).length === 0);

  deepEqual(up.opens, [0], "no resume");
  equal(spools, 2, "the fill's, and the one made while the second request asked upstream");
  const stats = t.cache.fills.stats;
  equal(stats.diskErrors, 1);
  equal(stats.digestMismatches, 0);
  equal(stats.resumes, 0);
  equal(stats.completed, 1);
  equal(stats.passThrough, 1);
  equal(t.cache.diskErrors, 1);
  equal(await hasBlob(t.fs, digest), false);
});

Deno.test("fill: a full disk before any follower attached still reaches the follower (all in memory)", async () => {
  await using t = await tempCache({
    wrap: (store) =>
      withFaults(store, { createSpool: async () => fullAfter(await store.createSpool(), 0) }),
  });
  const blob = patterned(100 * KiB, 6);
  const digest = sha256(blob);
  const up = upstream(() => ok200(chunks(blob, 16 * KiB), blob.length));
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  await settled(fill);
  assertBody(await readAll(t.cache.follow(fill, 0, undefined, ignore)), blob);
  equal(t.cache.fills.stats.diskErrors, 1);
  await waitFor("the spool to be removed", async () => (await tmpEntries(t.dir)).length === 0);
});

Deno.test("fill: a full disk before any follower attached still reaches the follower (part on disk)", async () => {
  await using t = await tempCache({
    wrap: (store) =>
      withFaults(store, {
        createSpool: async () => fullAfter(await store.createSpool(), 40 * KiB),
      }),
  });
  const blob = patterned(100 * KiB, 7);
  const digest = sha256(blob);
  const up = upstream(() => ok200(chunks(blob, 16 * KiB), blob.length));
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  // The follower attaches once the fill is over, as a client joining from another repository
  // does after its upstream confirmed the link (a round trip), or any client of a small blob.
  await settled(fill);
  assertBody(await readAll(t.cache.follow(fill, 0, undefined, ignore)), blob);
  equal(t.cache.fills.stats.diskErrors, 1);
  await waitFor("the spool to be removed", async () => (await tmpEntries(t.dir)).length === 0);
});

Deno.test("fill: a spool that cannot be created passes the blob through from byte 0", async () => {
  await using t = await tempCache({
    wrap: (store) => withFaults(store, { createSpool: () => Promise.reject(enospc()) }),
  });
  const blob = patterned(150 * KiB, 8);
  const digest = sha256(blob);
  const up = upstream(() => ok200(chunks(blob, 32 * KiB), blob.length));
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  equal(fill.caching, false);
  equal(t.cache.fills.get(ORIGIN.registry, digest), undefined, "an uncached fill is not joined");
  assertBody(await readAll(t.cache.follow(fill, 0, undefined, ignore)), blob);
  deepEqual(up.opens, [0]);
  const stats = t.cache.fills.stats;
  equal(stats.diskErrors, 1);
  equal(stats.passThrough, 1);
  equal(stats.completed, 1);
  equal(t.cache.eviction.stats().reserved, 0);
  equal(await hasBlob(t.fs, digest), false);
});

Deno.test("fill: a blob larger than maxSize is passed through, not cached", async () => {
  await using t = await tempCache({ maxSizeBytes: 64 * KiB });
  const blob = patterned(100 * KiB, 9);
  const digest = sha256(blob);
  const up = upstream(() => ok200(chunks(blob, 32 * KiB), blob.length));
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  equal(fill.caching, false);
  equal(t.cache.eviction.stats().reserved, 0);
  assertBody(await readAll(t.cache.follow(fill, 0, undefined, ignore)), blob);
  // The spool made while upstream was asked is removed unused.
  await waitFor(
    "the unused spool to be removed",
    async () => (await tmpEntries(t.dir)).length === 0,
  );
  equal(t.cache.fills.stats.passThrough, 1);
  equal(t.cache.fills.stats.diskErrors, 0);
  equal(await hasBlob(t.fs, digest), false);
  deepEqual(t.cache.eviction.stats(), { objects: 0, bytes: 0, reserved: 0, evictions: 0 });
});

Deno.test("fill: the spool is created while upstream is asked, and removed when upstream fails", async () => {
  const created = deferred<Spool>();
  const asked = deferred();
  await using t = await tempCache({
    wrap: (store) =>
      withFaults(store, {
        createSpool: async () => {
          const spool = await store.createSpool();
          created.resolve(spool);
          return spool;
        },
      }),
  });
  const digest = sha256(patterned(10, 1));
  const { fill } = t.cache.fill(digest, ORIGIN, async () => {
    await asked.promise;
    throw new RegistryError("BLOB_UNKNOWN", "upstream: 404");
  });
  const spool = await within("the spool, before upstream answered", created.promise);
  asked.resolve();
  await fill.then(() => ok(false, "the fill must fail"), ignore);
  await waitFor("the spool to be removed", async () => !(await exists(spool.path)));
  equal(t.cache.fills.stats.diskErrors, 0);
});

Deno.test("fill: the Content-Length is reserved during a fill and becomes the object on commit", async () => {
  await using t = await tempCache({ maxSizeBytes: 1000 * KiB, now: () => 1 });
  const other = await putBlob(t.fs, patterned(600 * KiB, 10));
  await t.cache.eviction.load();
  const blob = patterned(350 * KiB, 11);
  const digest = sha256(blob);
  const gate = deferred();
  const up = upstream(() =>
    ok200([blob.subarray(0, 100 * KiB), gate.promise, blob.subarray(100 * KiB)], blob.length)
  );
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  const reading = readAll(t.cache.follow(fill, 0, undefined, ignore));
  await waitFor("the first chunk", () => fill.received === 100 * KiB);
  // Room is reserved a step (a 16th of maxSize) ahead of what was received, not the whole claim.
  const during = t.cache.eviction.stats();
  deepEqual({ ...during, reserved: 0 }, {
    objects: 1,
    bytes: 600 * KiB,
    reserved: 0,
    evictions: 0,
  });
  equal(during.reserved, 100 * KiB + t.cache.eviction.reserveStep);
  gate.resolve();
  assertBody(await reading, blob);
  await t.cache.eviction.settled();
  // 600 KiB + 350 KiB fit in 1000 KiB: counting the blob twice at commit would evict `other`.
  deepEqual(t.cache.eviction.stats(), {
    objects: 2,
    bytes: 950 * KiB,
    reserved: 0,
    evictions: 0,
  });
  ok(await hasBlob(t.fs, other));
  ok(await hasBlob(t.fs, digest));
});

Deno.test("fill: without a Content-Length, caching stops past UNKNOWN_LENGTH_LIMIT", async () => {
  let written = () => 0;
  await using t = await tempCache({
    wrap: (store) =>
      withFaults(store, {
        createSpool: async () => {
          const fake = discarding(await store.createSpool());
          written = fake.written;
          return fake.spool;
        },
      }),
  });
  // One 1 MiB chunk sent again and again: the limit is crossed without allocating it.
  const chunk = new Uint8Array(MiB).fill(7);
  const count = Math.ceil(UNKNOWN_LENGTH_LIMIT / MiB) + 2;
  // Hashing a GiB takes a second: the digest for today's limit (1 GiB, 1026 chunks) is known.
  const digest = count === 1026
    ? "sha256:4c27f26ed9f630cce9f4fc575b546bfc3b07271b2367392f3d109b214a920337"
    : repeatedDigest(chunk, count);
  let sent = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(out) {
      if (sent++ < count) out.enqueue(chunk);
      else out.close();
    },
  }, { highWaterMark: 0 });
  const up = upstream(() => new Response(body));
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  equal(fill.size, undefined);
  await settled(fill);
  equal(fill.error, undefined);
  equal(fill.caching, false);
  equal(fill.received, count * MiB);
  equal(
    written(),
    Math.floor(UNKNOWN_LENGTH_LIMIT / MiB) * MiB + MiB,
    "writes stop past the limit",
  );
  equal(t.cache.fills.stats.passThrough, 1);
  equal(t.cache.fills.stats.diskErrors, 0);
  equal(t.cache.fills.stats.completed, 1);
  equal(await hasBlob(t.fs, digest), false);
  // The spool waits for a client that joined to attach; once one came and went, it is removed.
  await fill.follow(0, undefined, () => {}).cancel();
  await waitFor("the spool to be removed", async () => (await tmpEntries(t.dir)).length === 0);
});

Deno.test("fill: an upstream sending more than its Content-Length fails the fill", async () => {
  await using t = await tempCache();
  const blob = patterned(150 * KiB, 12);
  const length = 100 * KiB;
  const body = scripted(chunks(blob, 50 * KiB));
  const up = upstream(() =>
    new Response(body.stream, { headers: { "content-length": String(length) } })
  );
  const digest = sha256(blob.subarray(0, length));
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  const got = await readAll(t.cache.follow(fill, 0, undefined, ignore));
  ok(got.error instanceof RegistryError, `got ${got.error}`);
  equal(got.error.message, "upstream sent more than Content-Length");
  ok(got.bytes.length < length);
  equal(t.cache.fills.stats.digestMismatches, 0);
  ok(body.cancelled(), "the upstream body is cancelled");
  deepEqual(up.opens, [0]);
  equal(t.cache.fills.stats.failed, 1);
  equal(await hasBlob(t.fs, digest), false);
  await waitFor("the spool to be removed", async () => (await tmpEntries(t.dir)).length === 0);
});

Deno.test("fill: an uncached fill waits for its slowest follower (bounded memory)", async () => {
  await using t = await tempCache({
    wrap: (store) => withFaults(store, { createSpool: () => Promise.reject(enospc()) }),
  });
  const size = 256 * KiB;
  const blob = patterned(PASS_THROUGH_BUFFER + 16 * size, 13);
  const digest = sha256(blob);
  const body = scripted(chunks(blob, size));
  const up = upstream(() =>
    new Response(body.stream, { headers: { "content-length": String(blob.length) } })
  );
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  const fast = t.cache.follow(fill, 0, undefined, ignore).getReader();
  const slow = t.cache.follow(fill, 0, undefined, ignore); // not read for now
  const parts: Uint8Array[] = [];
  let read = 0;
  while (read < PASS_THROUGH_BUFFER + size) {
    const next = await fast.read();
    ok(!next.done);
    parts.push(next.value.slice());
    read += next.value.length;
  }
  // One turn of the event loop: a pump without backpressure reads the whole body meanwhile.
  await new Promise((resolve) => setTimeout(resolve, 0));
  ok(
    body.pulls() * size <= PASS_THROUGH_BUFFER + 2 * size,
    `the pump read ${body.pulls() * size} bytes with ${read} delivered to the fast follower`,
  );
  await slow.cancel();
  for (;;) {
    const next = await fast.read();
    if (next.done) break;
    parts.push(next.value.slice());
  }
  const got = new Uint8Array(blob.length);
  let at = 0;
  for (const p of parts) {
    got.set(p, at);
    at += p.length;
  }
  equal(at, blob.length);
  equal(sha256(got), digest);
  equal(t.cache.fills.stats.completed, 1);
});

for (const slowCommit of [false, true]) {
  Deno.test(
    slowCommit
      ? "fill: a slow commit (bucket): clients end once verified, replicas once committed, the fill joinable meanwhile"
      : "fill: a local commit: clients end once it is committed",
    async () => {
      const commit = deferred();
      await using t = await tempCache({
        wrap: (store) =>
          withFaults(store, {
            slowCommit,
            commitBlob: async (spool, digest) => {
              await commit.promise;
              await store.commitBlob(spool, digest);
            },
          }),
      });
      const blob = patterned(300 * KiB);
      const digest = sha256(blob);
      const up = upstream(() => ok200(chunks(blob, 64 * KiB), blob.length));
      const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
      let clientEnded = false;
      let replicaEnded = false;
      const client = readAll(t.cache.follow(fill, 0, undefined, ignore)).finally(() =>
        clientEnded = true
      );
      const replica = readAll(t.cache.follow(fill, 0, undefined, ignore, true)).finally(() =>
        replicaEnded = true
      );
      if (slowCommit) {
        assertBody(await within("the client's whole body before the commit", client), blob);
        equal(fill.settled, false, "still committing");
        const again = t.cache.fill(digest, ORIGIN, up.open);
        equal(again.joined, true, "a new request joins the fill being committed");
        assertBody(
          await within(
            "the joiner's body",
            readAll(t.cache.follow(await again.fill, 0, undefined, ignore)),
          ),
          blob,
        );
      } else {
        await waitFor("every byte but the last to arrive", () => fill.received === blob.length);
        await new Promise((resolve) => setTimeout(resolve, 50));
        equal(clientEnded, false, "the client waits for the commit");
      }
      equal(replicaEnded, false, "a replica's stream waits for the commit");
      commit.resolve();
      assertBody(await replica, blob);
      assertBody(await client, blob);
      deepEqual(up.opens, [0]);
      ok(await hasBlob(t.fs, digest), "committed");
    },
  );
}

Deno.test("fill: a failed fill is left at once: its followers are cut and a new request starts over, whatever its cleanup waits on", async () => {
  await using t = await tempCache();
  const blob = patterned(200 * KiB);
  const digest = sha256(blob);
  const cancelled = deferred();
  const held = deferred();
  // Sends more than its Content-Length, and then takes its time to be cancelled.
  const up = upstream((_offset, call) =>
    call === 1
      ? new Response(
        new ReadableStream({
          pull: (c) => c.enqueue(blob.slice()),
          cancel: () => (cancelled.resolve(), held.promise),
        }),
        { headers: { "content-length": String(blob.length - 1) } },
      )
      : ok200(chunks(blob, 64 * KiB), blob.length)
  );
  const fill = await t.cache.fill(digest, ORIGIN, up.open).fill;
  const got = readAll(t.cache.follow(fill, 0, undefined, ignore));
  await within("the upstream body cancelled", cancelled.promise);
  const cut = await within("the follower cut while the cleanup waits", got);
  ok(cut.error instanceof RegistryError, `the follower errors, got ${cut.error}`);
  const again = t.cache.fill(digest, ORIGIN, up.open);
  equal(again.joined, false, "a new request does not join the failed fill");
  assertBody(await readAll(t.cache.follow(await again.fill, 0, undefined, ignore)), blob);
  held.resolve();
  await settled(fill);
  deepEqual(up.opens, [0, 0]);
});
