import { deepEqual, equal, ok } from "node:assert/strict";
import { emptyPrefix, RGW_TOOLS, s3Settings } from "../../tests/fixtures/rgw.ts";
import { freePort, skipUnless } from "../../tests/fixtures/tools.ts";
import { S3Client } from "../s3/client.ts";
import { ClusterFill, type FillSources } from "./fill_source.ts";
import { type Lease, Leases } from "./leases.ts";

const TTL = 10_000;
const DIGEST = `sha256:${"ab".repeat(32)}`;
const TARGET = { registry: "docker.io", repository: "library/alpine", digest: DIGEST };
const NAME = `fills/docker.io/sha256/${"ab".repeat(32)}`;
/** Nobody listens there: a holder that died. */
const DEAD = `http://127.0.0.1:${freePort()}/`;
const PEER = { secret: "cluster-secret-0123456789", headersTimeoutMs: 2_000, idleTimeoutMs: 2_000 };

/** Sources that record what was asked of them. */
function sources(stored?: () => Response) {
  const upstream: number[] = [];
  const bucket: number[] = [];
  const recorded: FillSources = {
    upstream: (offset) => {
      upstream.push(offset);
      return Promise.resolve(new Response("upstream bytes"));
    },
    stored: (offset) => {
      bucket.push(offset);
      return Promise.resolve(stored?.());
    },
    confirm: () => Promise.resolve(),
  };
  return { upstream, bucket, recorded };
}

/** A dead holder's lease and this replica's leases, on one injected clock. */
async function setup() {
  const s3 = await s3Settings();
  const client = new S3Client(s3);
  const clock = { t: 5_000_000 };
  const now = () => clock.t;
  const dead = new Leases(client, s3.prefix, { owner: DEAD, ttlMs: TTL, now });
  const mine = new Leases(client, s3.prefix, { owner: "http://me/", ttlMs: TTL, now });
  const held = await dead.acquire(NAME);
  if (!("lease" in held)) throw new Error("the dead holder did not get the lease");
  return {
    clock,
    mine,
    deadLease: held.lease as Lease,
    [Symbol.asyncDispose]: () => emptyPrefix(s3),
  };
}

const options = skipUnless(RGW_TOOLS);

Deno.test({
  name:
    "fill source: a dead holder's lease is waited out, then taken over, then upstream with Range",
  ...options,
  async fn() {
    await using t = await setup();
    const s = sources();
    const slept: number[] = [];
    const fill = new ClusterFill(
      {
        leases: t.mine,
        peer: PEER,
        sleep: (ms) => {
          slept.push(ms);
          t.clock.t += ms;
          return Promise.resolve();
        },
      },
      TARGET,
      s.recorded,
    );
    const response = await fill.open(1000);
    equal(await response.text(), "upstream bytes");
    deepEqual(s.upstream, [1000], "one upstream request, from the offset reached");
    const waited = slept.reduce((a, b) => a + b, 0);
    ok(waited >= TTL && waited <= TTL + 1000, `waited ${waited} ms: the TTL, not more`);
    ok(fill.holding);
    deepEqual(await t.mine.generations(NAME), [0, 1], "taken over as generation 1");
    // A resume of the holder goes straight upstream.
    await (await fill.open(2000)).body?.cancel();
    deepEqual(s.upstream, [1000, 2000]);
    // The fill ends: the lease is released (by the background holder).
    const state = { settled: false, caching: true };
    fill.watch(state);
    state.settled = true;
    const deadline = Date.now() + 5_000;
    while ((await t.mine.generations(NAME)).length > 0) {
      ok(Date.now() < deadline, "released within the deadline");
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    ok(!fill.holding);
  },
});

Deno.test({
  name: "fill source: a blob committed when the lease is taken is read from the bucket",
  ...options,
  async fn() {
    await using t = await setup();
    await t.deadLease.release(); // the holder committed and let go
    const s = sources(() => new Response("stored bytes"));
    const fill = new ClusterFill({ leases: t.mine, peer: PEER }, TARGET, s.recorded);
    equal(await (await fill.open(0)).text(), "stored bytes");
    deepEqual([s.upstream, s.bucket], [[], [0]]);
    ok(!fill.holding);
    deepEqual(await t.mine.generations(NAME), [], "the lease taken to check was given back");
  },
});

Deno.test({
  name: "fill source: a holder that renews but never serves is waited on two TTLs, then upstream",
  ...options,
  async fn() {
    await using t = await setup();
    const s = sources();
    let waited = 0;
    const fill = new ClusterFill(
      {
        leases: t.mine,
        peer: PEER,
        sleep: async (ms) => {
          waited += ms;
          t.clock.t += ms;
          await t.deadLease.renew(); // alive for the bucket, unreachable for us
        },
      },
      TARGET,
      s.recorded,
    );
    await (await fill.open(0)).body?.cancel();
    deepEqual(s.upstream, [0]);
    ok(waited > 2 * TTL && waited <= 2 * TTL + 2000, `waited ${waited} ms`);
    ok(!fill.holding, "without the lease");
  },
});

Deno.test({
  name: "fill source: leases unavailable (the bucket down): straight upstream",
  ...options,
  async fn() {
    const s3 = await s3Settings({ endpoint: new URL(DEAD) });
    const leases = new Leases(new S3Client(s3), s3.prefix, { owner: "http://me/", ttlMs: TTL });
    const s = sources();
    const fill = new ClusterFill({ leases, peer: PEER }, TARGET, s.recorded);
    await (await fill.open(0)).body?.cancel();
    deepEqual(s.upstream, [0]);
  },
});

Deno.test({
  name:
    "fill source: a lease of another process behind this replica's URL is waited out, not asked",
  ...options,
  async fn() {
    const asked: string[] = [];
    await using server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (r) => {
      asked.push(r.url);
      return new Response("would wait on itself", { status: 500 });
    });
    const self = `http://127.0.0.1:${server.addr.port}/`;
    const s3 = await s3Settings();
    try {
      const client = new S3Client(s3);
      const clock = { t: 7_000_000 };
      const now = () => clock.t;
      const previous = new Leases(client, s3.prefix, { owner: self, ttlMs: TTL, now });
      ok("lease" in await previous.acquire(NAME));
      const mine = new Leases(client, s3.prefix, { owner: self, ttlMs: TTL, now });
      const s = sources();
      const fill = new ClusterFill(
        {
          leases: mine,
          peer: PEER,
          sleep: (ms) => {
            clock.t += ms;
            return Promise.resolve();
          },
        },
        TARGET,
        s.recorded,
      );
      await (await fill.open(0)).body?.cancel();
      deepEqual([s.upstream, asked], [[0], []], "upstream once, itself never");
      ok(fill.holding);
      await fill.abandon();
    } finally {
      await emptyPrefix(s3);
    }
  },
});
