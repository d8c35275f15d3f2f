import { deepEqual, equal, ok } from "node:assert/strict";
import { emptyPrefix, RGW_TOOLS, s3Settings } from "../../tests/fixtures/rgw.ts";
import { skipUnless } from "../../tests/fixtures/tools.ts";
import { S3Client } from "../s3/client.ts";
import { type Acquired, type Lease, Leases } from "./leases.ts";

const TTL = 10_000;
const NAME = "fills/docker.io/sha256/abc";

/** Replicas' leases on a fresh prefix of the test bucket, all on one injected clock. */
async function fleet(...owners: string[]) {
  const s3 = await s3Settings();
  const client = new S3Client(s3);
  const clock = { t: 1_000_000 };
  const leases = owners.map((owner) =>
    new Leases(client, s3.prefix, { owner, ttlMs: TTL, now: () => clock.t })
  );
  return {
    clock,
    leases,
    [Symbol.asyncDispose]: () => emptyPrefix(s3),
  };
}

function held(acquired: Acquired): Lease {
  if (!("lease" in acquired)) throw new Error(`held by ${acquired.held.owner}`);
  return acquired.lease;
}

function holder(acquired: Acquired): string {
  if ("lease" in acquired) throw new Error(`got lease ${acquired.lease.generation}`);
  return acquired.held.owner;
}

const options = skipUnless(RGW_TOOLS);

Deno.test({
  name: "leases: one holder; renewal keeps it; once lapsed exactly one of two racers takes over",
  ...options,
  async fn() {
    await using f = await fleet("http://a:8080/", "http://b:8080/", "http://c:8080/");
    const [a, b, c] = f.leases;
    const first = held(await a.acquire(NAME));
    equal(first.generation, 0);
    equal(holder(await b.acquire(NAME)), "http://a:8080/");

    // Renewed after a third of the TTL, the lease outlives its first expiry.
    f.clock.t += TTL / 2;
    ok(await first.tick(false));
    f.clock.t += TTL * 0.7;
    equal(holder(await b.acquire(NAME)), "http://a:8080/", "renewed: still a's");

    // a stalls past the TTL: b and c both see it lapsed; conditional create lets one win.
    f.clock.t += TTL;
    const raced = await Promise.all([b.acquire(NAME), c.acquire(NAME)]);
    const winners = raced.filter((r) => "lease" in r);
    equal(winners.length, 1, "exactly one takes over");
    const winner = held(winners[0]);
    equal(winner.generation, 1);
    const loser = raced.find((r) => !("lease" in r))!;
    const winnerOwner = raced[0] === winners[0] ? "http://b:8080/" : "http://c:8080/";
    equal(holder(loser), winnerOwner);

    // The stalled holder wakes and renews its generation: it is below, so nobody follows it.
    ok(await first.tick(false));
    equal(holder(await a.acquire(NAME)), winnerOwner);
    deepEqual(await a.generations(NAME), [0, 1]);

    // Released: its generation and the lapsed ones below are gone; the next taker starts over.
    await winner.release();
    deepEqual(await a.generations(NAME), []);
    equal(held(await c.acquire(NAME)).generation, 0);
  },
});

Deno.test({
  name: "leases: a generation created in a gap below a live one is given back, not held",
  ...options,
  async fn() {
    await using f = await fleet("http://a/", "http://b/", "http://c/");
    const [a, b, c] = f.leases;
    const stalled = held(await a.acquire(NAME));
    f.clock.t += TTL + 1;
    const taken = held(await b.acquire(NAME));
    equal(taken.generation, 1);
    // a comes back and releases what it held: generation 0 goes, leaving a gap below b's.
    await stalled.release();
    deepEqual(await a.generations(NAME), [1]);
    // c creates generation 0 (it is free), sees generation 1 above it, live: c follows b.
    equal(holder(await c.acquire(NAME)), "http://b/");
    deepEqual(await c.generations(NAME), [1], "c's generation 0 was deleted again");
  },
});

Deno.test({
  name: "leases: tick renews only after a third of the TTL and releases once the job is done",
  ...options,
  async fn() {
    await using f = await fleet("http://a/", "http://b/");
    const [a, b] = f.leases;
    const lease = held(await a.acquire(NAME));
    f.clock.t += TTL / 4;
    ok(await lease.tick(false));
    // Not renewed yet (a quarter of the TTL): it lapses at the original expiry.
    f.clock.t += TTL * 0.75 + 1;
    const after = await b.acquire(NAME);
    equal(held(after).generation, 1, "lapsed at the first expiry: taken over");
    await held(after).release();

    const again = held(await a.acquire(NAME));
    equal(await again.tick(true), false, "done: released");
    ok(again.released);
    deepEqual(await a.generations(NAME), []);
    equal(await again.tick(false), false, "stays released");
  },
});

Deno.test({
  name: "leases: hold() renews in the background and releases when the job says done",
  ...options,
  async fn() {
    const s3 = await s3Settings();
    try {
      const client = new S3Client(s3);
      const a = new Leases(client, s3.prefix, { owner: "http://a/", ttlMs: 600 });
      const b = new Leases(client, s3.prefix, { owner: "http://b/", ttlMs: 600 });
      const lease = held(await a.acquire(NAME));
      let done = false;
      lease.hold(() => done);
      // Several TTLs later it is still a's: it was renewed meanwhile.
      const until = Date.now() + 2_000;
      while (Date.now() < until) {
        equal(holder(await b.acquire(NAME)), "http://a/");
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      done = true;
      const deadline = Date.now() + 5_000;
      while (!lease.released || (await a.generations(NAME)).length > 0) {
        ok(Date.now() < deadline, "released within the deadline");
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      equal(held(await b.acquire(NAME)).generation, 0);
    } finally {
      await emptyPrefix(s3);
    }
  },
});
