// End to end: fallback upstreams. A real Distribution primary and a second one holding a copy (with
// its own token auth and credentials); the primary stopped mid-suite while dockerd, containerd and
// podman pull uncached images through the fallback. Hostile fallbacks (fault proxies flipping bytes)
// whose content never verifies; trustTags: false; the circuit breaker against a primary that hangs.

import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { chromium } from "playwright-core";
import { COOL_DOWN_MS, FAILURE_THRESHOLD } from "../src/upstream/breaker.ts";
import { runCleanup } from "./fixtures/cleanup.ts";
import { requestLines } from "./fixtures/clients/assertions.ts";
import { hostsToml, startContainerd, writeHostsDir } from "./fixtures/clients/containerd.ts";
import { DOCKER_CLI, mirrorDaemonJson, startDockerd } from "./fixtures/clients/dockerd.ts";
import { podmanClient, registriesConf } from "./fixtures/clients/podman.ts";
import { cleanUpDir, type Leftover } from "./fixtures/clients/process.ts";
import { pushBlobCopies, pushCopies } from "./fixtures/copies.ts";
import { startFaultProxy } from "./fixtures/fault_proxy.ts";
import { type MirrorProcess, startMirror } from "./fixtures/mirror.ts";
import { startOutageFront } from "./fixtures/outage_front.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { type PushedImage, sha256 } from "./fixtures/seed.ts";
import { startTokenServer } from "./fixtures/token_server.ts";
import { freePort, skipUnless } from "./fixtures/tools.ts";
import { waitFor } from "./fixtures/wait.ts";

const COPY_SERVICE = "copy.test";
/** The fallback's own credentials (the primary is anonymous). */
const COPY_USER = { username: "mirror", password: `pw-${crypto.randomUUID()}` };
const SEEDER = { username: "seeder", password: `pw-${crypto.randomUUID()}` };

/** Status, X-Cache, X-Cache-Via and the sha256 of the body. */
async function summary(
  response: Response,
): Promise<[number, string | null, string | null, string]> {
  const body = new Uint8Array(await response.arrayBuffer());
  return [
    response.status,
    response.headers.get("x-cache"),
    response.headers.get("x-cache-via"),
    sha256(body),
  ];
}

/** Status, OCI error code and message of an error response. */
async function failure(response: Response): Promise<[number, string, string]> {
  const error = (await response.json()).errors[0];
  return [response.status, error.code, error.message];
}

const exists = (path: string) => Deno.stat(path).then(() => true, () => false);
/** Where the mirror's filesystem cache keeps an object. */
const cached = (dir: string, kind: "blobs" | "manifests", digest: string) =>
  `${dir}/cache/${kind}/sha256/${digest.slice("sha256:".length)}`;

/** The cells of the dashboard's row for `upstream`, as headless Chromium renders them. */
async function dashboardRow(mirror: MirrorProcess, upstream: string): Promise<string[]> {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
  try {
    const page = await browser.newPage();
    await page.goto(`${mirror.url}/`);
    const row = page.locator("#upstreams tr", { hasText: upstream });
    await row.waitFor();
    return await row.locator("td").allTextContents();
  } finally {
    await browser.close();
  }
}

/** The state the mirror reports for one upstream of a registry. */
async function upstreamState(mirror: MirrorProcess, registry: string, upstream: string) {
  const stats = await (await fetch(`${mirror.url}/api/stats`)).json();
  return stats.upstreams.find((u: { registry: string; upstream: string }) =>
    u.registry === registry && u.upstream === upstream
  );
}

Deno.test({
  name: "fallback: dockerd, containerd and podman pull uncached images while the primary is down",
  ...skipUnless([
    "docker-registry",
    "openssl",
    "dockerd",
    DOCKER_CLI,
    "containerd",
    "ctr",
    "containerd-shim-runc-v2",
    "runc",
    "podman",
    "conmon",
  ]),
  async fn(t) {
    // Short: podman refuses a runroot path longer than 50 characters.
    const dir = await Deno.makeTempDir({ prefix: "fb_clients_" });
    const cleanup: (() => unknown)[] = [];
    let leftovers: Leftover[] = [];
    try {
      const tokens = await startTokenServer({
        dir,
        service: COPY_SERVICE,
        users: { [COPY_USER.username]: COPY_USER.password, [SEEDER.username]: SEEDER.password },
      });
      cleanup.push(() => tokens.stop());
      const primary = await startRegistry({ dir: `${dir}/primary` });
      let primaryRunning = true;
      cleanup.push(() => primaryRunning && primary.stop());
      const copy = await startRegistry({
        dir: `${dir}/copy`,
        tokenAuth: { realm: tokens.realm, service: COPY_SERVICE, certPath: tokens.certPath },
      });
      cleanup.push(() => copy.stop());
      // Counts the mirror's connections to the primary, which it dials through this front.
      const front = startOutageFront(`127.0.0.1:${primary.port}`);
      cleanup.push(() => front.stop());
      const targets = [{ url: primary.url }, { url: copy.url, auth: SEEDER }];
      const image = (name: string) => pushCopies(targets, `fb/${name}`, "1", `${name}\n`);
      const warm = await image("warm");
      const forDockerd = await image("dockerd-app");
      const forContainerd = await image("containerd-app");
      const forPodman = await image("podman-app");
      const seeded = tokens.requests.length;
      const mirror = await startMirror(dir, {
        registries: {
          "docker.io": {
            upstream: front.url,
            fallbacks: [{
              upstream: copy.url,
              trustTags: true,
              ...COPY_USER,
              authRealms: ["127.0.0.1"],
            }],
          },
        },
        upstream: { idleTimeout: "5s", retries: 1 },
      });
      cleanup.push(() => mirror.stop());
      const mirrorHost = `127.0.0.1:${mirror.port}`;
      const copyHost = `127.0.0.1:${copy.port}`;

      /**
       * Asserts the mirror answered the tag and served config and layer from the copy after log
       * line `from` (the manifest by digest is then a hit: the tag's lookup fetched it).
       */
      const servedByCopy = (from: number, name: string, image: PushedImage) => {
        const lines = requestLines(mirror, from).filter((p) => p?.method && p?.status === 200);
        const seen = JSON.stringify(lines.map((p) => [p?.method, p?.path, p?.cache, p?.via]));
        const paths = [
          `/v2/fb/${name}/manifests/1`,
          `/v2/fb/${name}/blobs/${image.config.digest}`,
          `/v2/fb/${name}/blobs/${image.layer.digest}`,
        ];
        for (const path of paths) {
          ok(
            lines.some((p) => String(p?.path).split("?")[0] === path && p?.via === copyHost),
            `${path} not answered by the copy: ${seen}`,
          );
        }
      };

      await t.step("while the primary is up it answers, not the copy", async () => {
        const manifest = await fetch(`${mirror.url}/v2/fb/warm/manifests/1`, {
          headers: { accept: warm.mediaType },
        });
        deepEqual(await summary(manifest), [200, "MISS", front.host, warm.digest]);
        const layer = await fetch(`${mirror.url}/v2/fb/warm/blobs/${warm.layer.digest}`);
        deepEqual(await summary(layer), [200, "MISS", front.host, warm.layer.digest]);
        equal(tokens.requests.length, seeded, "the copy was not asked anything");
      });

      await primary.stop();
      primaryRunning = false;
      const outage = { connections: front.connections, started: Date.now() };

      await t.step("dockerd (registry-mirrors) pulls through the copy", async () => {
        const dockerd = await startDockerd(`${dir}/dockerd`, mirrorDaemonJson(mirrorHost));
        try {
          const from = mirror.logs().length;
          await dockerd.docker(["pull", "fb/dockerd-app:1"]);
          const [inspected] = JSON.parse(
            await dockerd.docker(["image", "inspect", "fb/dockerd-app:1"]),
          );
          equal(inspected.Id, forDockerd.config.digest, "image ID (config digest)");
          ok(
            inspected.RepoDigests.some((d: string) => d.endsWith(`@${forDockerd.digest}`)),
            `RepoDigests ${inspected.RepoDigests} lack ${forDockerd.digest}`,
          );
          servedByCopy(from, "dockerd-app", forDockerd);
        } finally {
          await dockerd.stop();
        }
      });

      await t.step("containerd (hosts.toml) pulls through the copy", async () => {
        const containerd = await startContainerd(`${dir}/containerd`);
        try {
          const hostsDir = `${dir}/containerd/certs.d`;
          await writeHostsDir(hostsDir, {
            "docker.io": hostsToml("https://registry-1.docker.io", [{ url: mirror.url }]),
          });
          const from = mirror.logs().length;
          const reference = "docker.io/fb/containerd-app:1";
          const listed = await containerd.pull(reference, hostsDir);
          equal(listed, forContainerd.digest, "listed digest");
          servedByCopy(from, "containerd-app", forContainerd);
        } finally {
          await containerd.stop();
        }
      });

      await t.step("podman (registries.conf) pulls through the copy", async () => {
        const podman = await podmanClient(
          `${dir}/podman`,
          registriesConf([{ prefix: "docker.io", mirrors: [mirrorHost] }]),
        );
        const from = mirror.logs().length;
        const id = await podman.pull("docker.io/fb/podman-app:1");
        equal(`sha256:${id}`, forPodman.config.digest, "image ID");
        const digest = await podman.podman([
          "image",
          "inspect",
          "--format",
          "{{.Digest}}",
          "docker.io/fb/podman-app:1",
        ]);
        equal(digest.trim(), forPodman.digest, "digest");
        servedByCopy(from, "podman-app", forPodman);
      });

      await t.step("the primary was skipped, not dialled for every request", async () => {
        const dialled = front.connections - outage.connections;
        const probes = Math.floor((Date.now() - outage.started) / COOL_DOWN_MS) + 1;
        // Each probe may also carry the anonymous visibility check (the copy has credentials).
        const bound = 2 * (FAILURE_THRESHOLD + probes);
        const served = requestLines(mirror, 0).filter((p) =>
          p?.registry === "docker.io" && p?.via === copyHost
        ).length;
        ok(dialled <= bound, `${dialled} connections to the stopped primary (bound ${bound})`);
        ok(served > dialled, `${served} requests answered by the copy, ${dialled} dials`);
        const state = await upstreamState(mirror, "docker.io", front.host);
        ok(["skipped", "half-open"].includes(state.state), JSON.stringify(state));
        ok(state.failures >= FAILURE_THRESHOLD, JSON.stringify(state));
        match(state.lastError, /unreachable|closed|reset/);
        const fallback = await upstreamState(mirror, "docker.io", copyHost);
        deepEqual([fallback.role, fallback.state, fallback.trustTags], ["fallback", "up", true]);
        ok(
          tokens.requests.some((r) => r.username === COPY_USER.username && r.status === 200),
          "the fallback's own credentials went to its token server",
        );
      });
    } finally {
      await runCleanup(cleanup).catch((e) => console.error(e));
      const keep = Deno.env.get("KEEP_TEST_DIR") !== undefined;
      if (keep) console.error(`kept ${dir}`);
      leftovers = await cleanUpDir(dir, keep);
    }
    deepEqual(leftovers, [], "processes left running after their daemons stopped");
  },
});

Deno.test({
  name:
    "fallback: corrupt content from a fallback is refused and never cached; untrusted tags fail",
  ...skipUnless(["docker-registry"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "fallback_trust_" });
    const cleanup: (() => unknown)[] = [() => Deno.remove(dir, { recursive: true })];
    try {
      const copy = await startRegistry({ dir: `${dir}/copy` });
      cleanup.push(() => copy.stop());
      const app = await pushCopies([{ url: copy.url }], "fb/app", "1", "app\n");
      const other = await pushCopies([{ url: copy.url }], "fb/other", "1", "other\n");
      // A good fallback (recording what it is asked) and hostile ones flipping a byte of what they
      // serve by digest: manifests, blobs, or both.
      const good = startFaultProxy(copy.url);
      const badManifests = startFaultProxy(copy.url);
      badManifests.inject({ path: /\/manifests\/sha256:/, flipByteAt: 20, times: 1e6 });
      const badBlobs = startFaultProxy(copy.url);
      badBlobs.inject({ path: "/blobs/", method: "GET", flipByteAt: 10, times: 1e6 });
      const badAll = startFaultProxy(copy.url);
      badAll.inject(
        { path: /\/manifests\/sha256:/, flipByteAt: 20, times: 1e6 },
        { path: "/blobs/", method: "GET", flipByteAt: 10, times: 1e6 },
      );
      for (const proxy of [good, badManifests, badBlobs, badAll]) cleanup.push(() => proxy.stop());
      const down = `http://127.0.0.1:${freePort()}`;
      const mirror = await startMirror(dir, {
        registries: {
          "quay.io": {
            upstream: down,
            fallbacks: [{ upstream: badManifests.url }, { upstream: good.url }],
          },
          "ghcr.io": {
            upstream: down,
            fallbacks: [{ upstream: badBlobs.url }, { upstream: good.url }],
          },
          "gcr.io": { upstream: down, fallbacks: [{ upstream: badAll.url }] },
        },
        upstream: { idleTimeout: "5s", retries: 1 },
      });
      cleanup.push(() => mirror.stop());
      const get = (path: string, init?: RequestInit) => fetch(`${mirror.url}/v2/${path}`, init);
      const host = (url: string) => new URL(url).host;
      const asked = (proxy: typeof good, path: string) =>
        proxy.requests.filter((r) => r.path === path).map((r) => r.method);

      await t.step(
        "trustTags false: a cold tag fails naming the outage; by digest it is served",
        async () => {
          for (const method of ["GET", "HEAD"]) {
            const response = await get("quay.io/fb/app/manifests/1", {
              method,
              headers: { accept: app.mediaType },
            });
            equal(response.status, 503, method);
            if (method === "GET") {
              const [, code, message] = await failure(response);
              equal(code, "UNAVAILABLE");
              match(
                message,
                /^quay\.io: no upstream could answer: upstream http:\/\/127\.0\.0\.1:\d+: .*unreachable/,
              );
              match(
                message,
                /tags are not taken from fallbacks without "trustTags": true \(http:\/\/127\.0\.0\.1:\d+, http:\/\/127\.0\.0\.1:\d+\)/,
              );
            } else {
              await response.body?.cancel();
            }
          }
          deepEqual(
            [asked(good, "/v2/fb/app/manifests/1"), asked(badManifests, "/v2/fb/app/manifests/1")],
            [[], []],
            "no fallback was asked for the tag",
          );
          const byDigest = await get(`quay.io/fb/app/manifests/${app.digest}`, {
            headers: { accept: app.mediaType },
          });
          deepEqual(
            await summary(byDigest),
            [200, "MISS", host(good.url), app.digest],
            "the good fallback's manifest",
          );
          deepEqual(
            asked(badManifests, `/v2/fb/app/manifests/${app.digest}`),
            ["GET"],
            "the corrupt one was asked first",
          );
          const again = await get(`quay.io/fb/app/manifests/${app.digest}`, {
            headers: { accept: app.mediaType },
          });
          deepEqual(
            await summary(again),
            [200, "HIT", null, app.digest],
            "the verified bytes were cached",
          );
        },
      );

      await t.step(
        "a corrupt blob is refused and not cached; the retry gets the next fallback's",
        async () => {
          const blob = `ghcr.io/fb/app/blobs/${app.layer.digest}`;
          const first = await get(blob);
          equal(first.status, 200, "headers go out before the bytes are verified");
          await rejects(first.arrayBuffer(), "the body is cut, never completed with bad bytes");
          equal(await exists(cached(dir, "blobs", app.layer.digest)), false, "nothing cached");
          deepEqual(asked(badBlobs, `/v2/fb/app/blobs/${app.layer.digest}`), ["GET"]);
          const retry = await get(blob);
          deepEqual(
            await summary(retry),
            [200, "MISS", host(good.url), app.layer.digest],
            "the next fallback's",
          );
          deepEqual(
            asked(badBlobs, `/v2/fb/app/blobs/${app.layer.digest}`),
            ["GET"],
            "the corrupt fallback is in cool-down",
          );
          const hit = await get(blob);
          deepEqual(await summary(hit), [200, "HIT", null, app.layer.digest]);
          const state = await upstreamState(mirror, "ghcr.io", host(badBlobs.url));
          equal(state.state, "skipped");
          match(state.lastError, /does not match its digest/);
        },
      );

      await t.step("a fallback whose content never verifies: errors, nothing cached", async () => {
        const manifest = await get(`gcr.io/fb/other/manifests/${other.digest}`, {
          headers: { accept: other.mediaType },
        });
        const [status, code, message] = await failure(manifest);
        deepEqual([status, code], [503, "UNAVAILABLE"]);
        match(
          message,
          /fallback http:\/\/127\.0\.0\.1:\d+ sent what does not verify: upstream sent a manifest with digest sha256:[0-9a-f]{64} for gcr\.io\/fb\/other@/,
        );
        equal(await exists(cached(dir, "manifests", other.digest)), false, "no manifest cached");
        const state = await upstreamState(mirror, "gcr.io", host(badAll.url));
        equal(state.state, "skipped", "the corrupt fallback is put in cool-down");
        // In cool-down it is not asked: the blob fails at once, naming why.
        const blob = await get(`gcr.io/fb/other/blobs/${other.config.digest}`);
        const [blobStatus, , blobMessage] = await failure(blob);
        equal(blobStatus, 503);
        match(
          blobMessage,
          /fallback http:\/\/127\.0\.0\.1:\d+ is skipped until .* \(sent content that does not match its digest/,
        );
        equal(asked(badAll, `/v2/fb/other/blobs/${other.config.digest}`).length, 0);
        equal(await exists(cached(dir, "blobs", other.config.digest)), false, "no blob cached");
      });
    } finally {
      await runCleanup(cleanup);
    }
  },
});

Deno.test({
  name:
    "fallback: the circuit breaker stops waiting for a hanging primary, and uses it again once back",
  ...skipUnless(["docker-registry", "chromium"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "fallback_breaker_" });
    const cleanup: (() => unknown)[] = [() => Deno.remove(dir, { recursive: true })];
    try {
      const primary = await startRegistry({ dir: `${dir}/primary` });
      cleanup.push(() => primary.stop());
      const copy = await startRegistry({ dir: `${dir}/copy` });
      cleanup.push(() => copy.stop());
      const front = startOutageFront(`127.0.0.1:${primary.port}`);
      cleanup.push(() => front.stop());
      const targets = [{ url: primary.url }, { url: copy.url }];
      await pushCopies(targets, "fb/app", "1", "app\n");
      const blobs = await pushBlobCopies(targets, "fb/app", 10);
      const mirror = await startMirror(dir, {
        registries: {
          "docker.io": {
            upstream: front.url,
            fallbacks: [{ upstream: copy.url, trustTags: true }],
          },
        },
        upstream: { idleTimeout: "2s", retries: 2 },
      });
      cleanup.push(() => mirror.stop());
      const copyHost = `127.0.0.1:${copy.port}`;
      const blob = (i: number) => fetch(`${mirror.url}/v2/fb/app/blobs/${blobs[i]}`);

      await t.step("the primary answers while it is up", async () => {
        deepEqual(await summary(await blob(0)), [200, "MISS", front.host, blobs[0]]);
      });

      await t.step("hanging: only the first failures wait for it, then it is skipped", async () => {
        front.mode = "hang";
        for (let i = 1; i <= 8; i++) {
          deepEqual(await summary(await blob(i)), [200, "MISS", copyHost, blobs[i]], `blob ${i}`);
        }
        equal(front.unanswered, FAILURE_THRESHOLD, "8 requests, the primary tried 3 times");
        const state = await upstreamState(mirror, "docker.io", front.host);
        deepEqual([state.state, state.failures], ["skipped", FAILURE_THRESHOLD]);
        match(state.lastError, /timed out|no headers in time/);
        const metrics = await (await fetch(`${mirror.url}/metrics`)).text();
        const series = `registry="docker.io",upstream="${front.host}",role="primary"`;
        ok(
          metrics.includes(`registry_mirror_upstream_state{${series},state="skipped"} 1`),
          "state metric",
        );
        ok(
          metrics.includes(`registry_mirror_upstream_answers_total{${series},outcome="skipped"} 5`),
          "5 skipped",
        );
        const [registry, upstream, role, shown, failures] = await dashboardRow(mirror, front.host);
        deepEqual([registry, upstream, role, failures], ["docker.io", front.host, "primary", "3"]);
        equal(shown, `skipped until ${state.skippedUntil.slice(11, 19)}`, "the dashboard's state");
      });

      await t.step("back: a probe after the cool-down finds it, and it is used again", async () => {
        front.mode = "up";
        const tags = `${mirror.url}/v2/fb/app/tags/list`;
        await waitFor("the primary to answer again", async () => {
          const response = await fetch(tags);
          await response.body?.cancel();
          return response.status === 200 && response.headers.get("x-cache-via") === front.host;
        }, { timeoutMs: COOL_DOWN_MS + 15_000, intervalMs: 500 });
        deepEqual(await summary(await blob(9)), [200, "MISS", front.host, blobs[9]]);
        equal((await upstreamState(mirror, "docker.io", front.host)).state, "up");
      });
    } finally {
      await runCleanup(cleanup);
    }
  },
});
