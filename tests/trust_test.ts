// End to end: trust between registries. Private content cached from a real Distribution (quay.io,
// token auth) never reaches a hostile upstream (ghcr.io) that claims to hold every digest; a tag or
// an index of its own that points at that content is not resolved from the cache; its dripped blob
// never stalls quay.io's clients of the same digest, nor evicts quay.io's content on a claimed
// Content-Length; and within quay.io a repository confirmed by HEAD is still served.

import { deepEqual, equal, fail, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { runCleanup } from "./fixtures/cleanup.ts";
import { startFaultProxy } from "./fixtures/fault_proxy.ts";
import { CLAIMED_BLOB_SIZE, startHostileUpstream } from "./fixtures/hostile_upstream.ts";
import { startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { pushBlob, pushImage, pushLargeBlobImage, sha256 } from "./fixtures/seed.ts";
import { startTokenServer } from "./fixtures/token_server.ts";
import { skipUnless } from "./fixtures/tools.ts";
import { waitFor } from "./fixtures/wait.ts";

const SERVICE = "quay.test";
const QUAY_USER = { username: "puller", password: `pw-${crypto.randomUUID()}` };
/** The mirror's own client token (static bearer token auth). */
const CLIENT_TOKEN = `client-${crypto.randomUUID()}`;
/** How long the quay.io client may take for a 4 MiB blob while ghcr.io drips the same digest. */
const OWN_FILL_BOUND_MS = 20_000;
/** The small cache of the claimed-size test, quay.io's blob in it, and ghcr.io's claimed size. */
const SMALL_CACHE = { maxSize: "10MiB", quayBlob: 4 << 20, claimed: 7 << 20 };

async function digestOf(body: ReadableStream<Uint8Array>): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of body) hash.update(chunk);
  return `sha256:${hash.digest("hex")}`;
}

/** Status, X-Cache and the sha256 of the body (or of nothing, for a HEAD). */
async function summary(response: Response): Promise<[number, string | null, string]> {
  const body = new Uint8Array(await response.arrayBuffer());
  return [response.status, response.headers.get("x-cache"), sha256(body)];
}

/** Status and OCI error code of an error response (none for a HEAD), else the body's digest. */
async function errorOf(response: Response): Promise<[number, string | undefined]> {
  const body = new Uint8Array(await response.arrayBuffer());
  if (body.length === 0) return [response.status, undefined];
  try {
    return [response.status, JSON.parse(new TextDecoder().decode(body)).errors[0].code];
  } catch {
    return [response.status, `a body of digest ${sha256(body)}`];
  }
}

/** deepEqual, saying what was compared and what it was (a message hides the diff). */
function same(actual: unknown, expected: unknown, what: string): void {
  deepEqual(actual, expected, `${what}: got ${JSON.stringify(actual)}`);
}

Deno.test({
  name: "trust: cached content crosses registries only on bytes the other registry sent",
  ...skipUnless(["docker-registry", "openssl"]),
  async fn(t) {
    const cleanup: (() => unknown)[] = [];
    const dir = await Deno.makeTempDir({ prefix: "trust_test_" });
    cleanup.push(() => Deno.remove(dir, { recursive: true }));
    try {
      const tokens = await startTokenServer({
        dir,
        service: SERVICE,
        users: { [QUAY_USER.username]: QUAY_USER.password },
        private: ["org/private"],
      });
      cleanup.push(() => tokens.stop());
      const registry = await startRegistry({
        dir: `${dir}/quay`,
        tokenAuth: { realm: tokens.realm, service: SERVICE, certPath: tokens.certPath },
      });
      cleanup.push(() => registry.stop());
      // Records what the mirror asks the real Distribution (pushes go to it directly).
      const quay = startFaultProxy(registry.url);
      cleanup.push(() => quay.stop());

      const secret = await pushImage(registry.url, "org/private", "1", {
        files: { "secret.txt": `private ${crypto.randomUUID()}\n` },
        format: "oci",
        auth: QUAY_USER,
      });
      const drip = await pushLargeBlobImage(registry.url, "org/drip", "1", 4 << 20, {
        dir,
        auth: QUAY_USER,
      });
      const D = drip.blob.digest;

      // ghcr.io's own index names the private manifest as its linux/amd64 child.
      const child = { mediaType: secret.mediaType, digest: secret.digest, size: secret.size };
      const hostile = startHostileUpstream({
        tags: { "evil/tag:1": secret.digest },
        indexes: { "evil/index:head-first": child, "evil/index:get-first": child },
        drips: [D],
      });
      cleanup.push(() => hostile.stop());
      const mirror = await startMirror(dir, {
        registries: {
          "quay.io": { upstream: quay.url, ...QUAY_USER, authRealms: ["127.0.0.1"] },
          "ghcr.io": { upstream: hostile.url },
        },
        auth: { tokens: [CLIENT_TOKEN] },
        upstream: { idleTimeout: "5s", retries: 1 },
      });
      cleanup.push(() => mirror.stop());

      const client = { authorization: `Bearer ${CLIENT_TOKEN}` };
      const get = (path: string, init: RequestInit = {}) =>
        fetch(`${mirror.url}/v2/${path}`, {
          ...init,
          headers: { ...client, ...init.headers as Record<string, string> },
        });
      const hostileSaw = (method: string, path: string) =>
        hostile.requests.some((r) => r.method === method && r.path === path);
      const quaySince = (from: number, path: string) =>
        quay.requests.slice(from).filter((r) => r.path === path).map((r) => r.method);
      const layer = `blobs/${secret.layer.digest}`;
      const config = `blobs/${secret.config.digest}`;
      const manifest = `manifests/${secret.digest}`;

      await t.step("the private image is pulled through quay.io and cached", async () => {
        for (const cache of ["MISS", "HIT"]) {
          const byTag = await get("quay.io/org/private/manifests/1", {
            headers: { accept: secret.mediaType },
          });
          same(await summary(byTag), [200, cache, secret.digest], `manifest, ${cache}`);
          const configBlob = await get(`quay.io/org/private/${config}`);
          same(await summary(configBlob), [200, cache, secret.config.digest], "config");
          const layerBlob = await get(`quay.io/org/private/${layer}`);
          same(await summary(layerBlob), [200, cache, secret.layer.digest], "layer");
        }
      });

      await t.step("ghcr.io's HEAD claims do not serve quay.io's cached bytes", async () => {
        for (const [path, code] of [[layer, "BLOB_UNKNOWN"], [config, "BLOB_UNKNOWN"]]) {
          same(await errorOf(await get(`ghcr.io/evil/app/${path}`)), [404, code], path);
          ok(hostileSaw("GET", `/v2/evil/app/${path}`), `ghcr.io was asked for ${path}`);
        }
        // A HEAD says what ghcr.io says (nothing fetched), never what the cache holds.
        const head = await get(`ghcr.io/evil/app/${layer}`, { method: "HEAD" });
        await head.body?.cancel();
        same(
          [head.status, head.headers.get("x-cache"), head.headers.get("content-length")],
          [200, "MISS", String(CLAIMED_BLOB_SIZE)],
          `the private layer is ${secret.layer.size} bytes: its size is not revealed`,
        );
        for (const method of ["GET", "HEAD"]) {
          const response = await get(`ghcr.io/evil/app/${manifest}`, {
            method,
            headers: { accept: secret.mediaType },
          });
          const named = response.headers.get("docker-content-digest");
          same(
            [...await errorOf(response), named],
            [404, method === "GET" ? "MANIFEST_UNKNOWN" : undefined, null],
            `${method} of the private manifest by digest`,
          );
        }
        ok(hostileSaw("GET", `/v2/evil/app/${manifest}`), "ghcr.io was asked for the manifest");
      });

      await t.step(
        "a ghcr.io tag naming the private digest is not resolved from the cache",
        async () => {
          const head = await get("ghcr.io/evil/tag/manifests/1", {
            method: "HEAD",
            headers: { accept: secret.mediaType },
          });
          await head.body?.cancel();
          same([head.status, head.headers.get("docker-content-digest")], [404, null], "HEAD");
          ok(
            hostileSaw("GET", `/v2/evil/tag/${manifest}`),
            "the named digest was fetched from ghcr.io",
          );
          const byTag = await get("ghcr.io/evil/tag/manifests/1", {
            headers: { accept: secret.mediaType },
          });
          same(await errorOf(byTag), [404, "MANIFEST_UNKNOWN"], "GET after the HEAD");
        },
      );

      await t.step(
        "a ghcr.io index naming the private manifest as its child does not serve it",
        async () => {
          // The client takes image manifests only: the mirror picks the index's child for it.
          const accept = { accept: secret.mediaType };
          const head = await get("ghcr.io/evil/index/manifests/head-first", {
            method: "HEAD",
            headers: accept,
          });
          await head.body?.cancel();
          // A HEAD may answer from the index's descriptor: it says only what ghcr.io's index says.
          same(
            [head.status, head.headers.get("docker-content-digest")],
            [200, secret.digest],
            "HEAD: the index's linux/amd64 child",
          );
          equal(head.headers.get("content-length"), String(child.size));
          const childGets = () =>
            hostile.requests.filter((r) =>
              r.method === "GET" && r.path === `/v2/evil/index/${manifest}`
            ).length;
          for (const tag of ["head-first", "get-first"]) {
            const before = childGets();
            const byTag = await get(`ghcr.io/evil/index/manifests/${tag}`, { headers: accept });
            const named = byTag.headers.get("docker-content-digest");
            same(
              [...await errorOf(byTag), named],
              [404, "MANIFEST_UNKNOWN", null],
              `GET of ${tag}: the private manifest is not served`,
            );
            ok(childGets() > before, `the child was fetched from ghcr.io for ${tag}`);
          }
        },
      );

      await t.step("a fill of ghcr.io is never joined by a client of quay.io", async () => {
        const dripping = await get(`ghcr.io/evil/app/blobs/${D}`);
        equal(dripping.status, 200, "ghcr.io's drip is served as it comes");
        const reader = dripping.body!.getReader();
        try {
          ok(((await reader.read()).value?.length ?? 0) > 0, "the drip has begun");
          ok(hostileSaw("GET", `/v2/evil/app/blobs/${D}`));
          const from = quay.requests.length;
          const abort = new AbortController();
          const timer = setTimeout(() => abort.abort(), OWN_FILL_BOUND_MS);
          try {
            const own = await get(`quay.io/org/drip/blobs/${D}`, { signal: abort.signal });
            same([own.status, await digestOf(own.body!)], [200, D], "quay.io's own fill");
          } catch (e) {
            if (!abort.signal.aborted) throw e;
            fail(`the quay.io client of ${D} was stalled behind ghcr.io's drip for 20 s`);
          } finally {
            clearTimeout(timer);
          }
          ok(quaySince(from, `/v2/org/drip/blobs/${D}`).includes("GET"), "a fill of its own");
        } finally {
          await reader.cancel();
        }
        // The mirror's fill from ghcr.io is left with the hostile upstream's word: end it.
        hostile.stopDrips();
        const again = await get(`quay.io/org/drip/blobs/${D}`);
        same(await summary(again), [200, "HIT", D], "quay.io's bytes stay cached");
      });

      await t.step(
        "within quay.io, a repository confirmed by HEAD is served from the cache",
        async () => {
          await pushBlob(registry.url, "org/other", secret.layer.bytes, QUAY_USER);
          const from = quay.requests.length;
          const other = await get(`quay.io/org/other/${layer}`);
          same(await summary(other), [200, "HIT", secret.layer.digest], "org/other");
          const asked = quaySince(from, `/v2/org/other/${layer}`);
          ok(asked.includes("HEAD") && !asked.includes("GET"), `HEAD only: ${asked}`);
          const none = await get(`quay.io/org/none/${layer}`);
          same(await errorOf(none), [404, "BLOB_UNKNOWN"], "a repository without it");
        },
      );
    } finally {
      await runCleanup(cleanup);
    }
  },
});

Deno.test({
  name: "trust: a claimed Content-Length evicts no other registry's content ahead of its bytes",
  ...skipUnless(["docker-registry"]),
  async fn() {
    const cleanup: (() => unknown)[] = [];
    const dir = await Deno.makeTempDir({ prefix: "trust_test_size_" });
    cleanup.push(() => Deno.remove(dir, { recursive: true }));
    try {
      const registry = await startRegistry({ dir: `${dir}/quay` });
      cleanup.push(() => registry.stop());
      const big = await pushLargeBlobImage(registry.url, "org/big", "1", SMALL_CACHE.quayBlob, {
        dir,
      });
      const B = big.blob.digest;
      // Any digest of ghcr.io's choice: it never sends the bytes, only claims their size.
      const claimed = sha256(crypto.getRandomValues(new Uint8Array(32)));
      const hostile = startHostileUpstream({ drips: [claimed], dripSize: SMALL_CACHE.claimed });
      cleanup.push(() => hostile.stop());
      const mirror = await startMirror(dir, {
        registries: {
          "quay.io": { upstream: registry.url },
          "ghcr.io": { upstream: hostile.url },
        },
        cache: { dir: `${dir}/cache`, maxSize: SMALL_CACHE.maxSize },
      });
      cleanup.push(() => mirror.stop());
      const get = (path: string) => fetch(`${mirror.url}/v2/${path}`);
      const evictions = async () =>
        (await (await fetch(`${mirror.url}/api/stats`)).json()).cache.evictions;
      const blobFile = `${dir}/cache/blobs/sha256/${B.slice(7)}`;

      const first = await get(`quay.io/org/big/blobs/${B}`);
      same(await summary(first), [200, "MISS", B], "quay.io's blob, filled");
      await waitFor("quay.io's blob committed to the cache", () => Deno.stat(blobFile));

      const dripping = await get(`ghcr.io/evil/x/blobs/${claimed}`);
      same(
        [dripping.status, dripping.headers.get("content-length")],
        [200, String(SMALL_CACHE.claimed)],
        "ghcr.io's drip, served with its claimed length",
      );
      const reader = dripping.body!.getReader();
      try {
        // The fill reserved room (a step, a 16th of maxSize, ahead of its writes) and any eviction
        // for it began when it started, a whole drip interval before this first byte.
        ok(((await reader.read()).value?.length ?? 0) > 0, "the drip has begun");
        equal(await evictions(), 0, `${SMALL_CACHE.claimed} bytes claimed, none sent: no eviction`);
        const kept = await Deno.stat(blobFile).then(() => true, () => false);
        ok(kept, "quay.io's blob is still on disk");
      } finally {
        await reader.cancel();
      }
      hostile.stopDrips();
      const again = await get(`quay.io/org/big/blobs/${B}`);
      same(await summary(again), [200, "HIT", B], "quay.io's blob stays cached");
      equal(await evictions(), 0, "nothing was evicted");
    } finally {
      await runCleanup(cleanup);
    }
  },
});
