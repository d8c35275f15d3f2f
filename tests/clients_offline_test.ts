// End to end with real clients and the upstreams stopped: images warmed by `prefetch` or by a
// first pull are pulled again by dockerd, containerd (ctr) and podman from the mirror's cache alone.

import { deepEqual, equal, match, ok } from "node:assert/strict";
import type { MirrorProcess } from "./fixtures/mirror.ts";
import { startMirror } from "./fixtures/mirror.ts";
import {
  assertServed,
  logMark,
  requestLines,
  waitForLogLine,
} from "./fixtures/clients/assertions.ts";
import {
  type Containerd,
  hostsToml,
  startContainerd,
  writeHostsDir,
} from "./fixtures/clients/containerd.ts";
import {
  DOCKER_CLI,
  type Dockerd,
  mirrorDaemonJson,
  startDockerd,
} from "./fixtures/clients/dockerd.ts";
import { type EgressTrap, startEgressTrap } from "./fixtures/clients/egress_trap.ts";
import { BUSYBOX, seedImages, type TestImage } from "./fixtures/clients/images.ts";
import { type Podman, podmanClient, registriesConf } from "./fixtures/clients/podman.ts";
import { cleanUpDir, type Leftover, runOk } from "./fixtures/clients/process.ts";
import { startUpstreams, type Upstreams } from "./fixtures/clients/upstreams.ts";
import { sha256 } from "./fixtures/seed.ts";
import { skipUnless } from "./fixtures/tools.ts";

const ROOT = new URL("../", import.meta.url).pathname;

const core = skipUnless(["docker-registry", "openssl", "tar", "gzip", BUSYBOX]);
const dockerTools = skipUnless(["dockerd", DOCKER_CLI, "containerd", "runc"]);
const containerdTools = skipUnless(["containerd", "ctr", "containerd-shim-runc-v2", "runc"]);
const podmanTools = skipUnless(["podman", "conmon", "runc"]);

/** The tag TTL of the mirror, and how long the suite waits after stopping the upstreams. */
const TAG_TTL = "1s";
const PAST_TTL_MS = 1_500;

const MANIFEST_TYPES = [
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.docker.distribution.manifest.v2+json",
].join(", ");

type LogFields = Record<string, unknown> | undefined;

function summary(lines: LogFields[]): string {
  return lines.map((p) =>
    `${p?.method} ${p?.path} ${p?.status} cache=${p?.cache} upstream=${p?.upstreamStatus}`
  ).join("\n");
}

/** True when the log line records an answer from an upstream (any status but "no answer"). */
function upstreamAnswered(p: LogFields): boolean {
  return typeof p?.upstreamStatus === "number" && p.upstreamStatus > 0;
}

/**
 * Asserts that after log line `from` the mirror served `image` (its manifests and its layer)
 * from the cache alone: every request for it 200, the tag `STALE` (past its TTL, upstream
 * unreachable), everything by digest `HIT`, and no upstream answered.
 */
async function assertFromCache(
  mirror: MirrorProcess,
  from: number,
  image: TestImage,
): Promise<void> {
  const layer = `/blobs/${image.amd64.layerDigest}`;
  await waitForLogLine(mirror, from, (p) => String(p?.path).includes(layer));
  const lines = requestLines(mirror, from).filter((p) =>
    p?.method !== undefined && p?.registry === image.registry &&
    p?.repository === image.repository
  );
  const seen = summary(lines);
  ok(lines.length > 0, `no request for ${image.reference}`);
  ok(lines.every((p) => p?.status === 200), `not all 200:\n${seen}`);
  const byTag = lines.filter((p) => p?.reference === image.tag);
  ok(byTag.length > 0, `the tag was not asked for:\n${seen}`);
  ok(byTag.every((p) => p?.cache === "STALE"), `the tag was not served stale:\n${seen}`);
  ok(
    lines.every((p) => p?.reference === image.tag || p?.cache === "HIT"),
    `not all by digest from the cache:\n${seen}`,
  );
  ok(!lines.some(upstreamAnswered), `an upstream answered:\n${seen}`);
  ok(
    lines.some((p) => String(p?.path).includes(layer) && p?.method === "GET"),
    `the layer was not fetched again:\n${seen}`,
  );
}

Deno.test({
  name: "upstreams stopped: real clients pull cached images from the mirror",
  ...core,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "clients_off_" });
    let upstreams: Upstreams | undefined;
    let upstreamsRunning = false;
    let mirror: MirrorProcess | undefined;
    let trap: EgressTrap | undefined;
    let dockerd: Dockerd | undefined;
    let containerd: Containerd | undefined;
    let leftovers: Leftover[] = [];
    try {
      upstreams = await startUpstreams(`${dir}/upstreams`);
      upstreamsRunning = true;
      const up = upstreams;
      const images = await seedImages(up);
      /** Warmed by a first pull of each client. */
      const pulled = [images.hubHello, images.quayApp];
      /** Warmed by `prefetch` only: no client asks for it before the upstreams stop. */
      const prefetched = images.hubIndex;
      mirror = await startMirror(dir, {
        registries: up.mirrorRegistries,
        cache: { dir: `${dir}/cache`, tagTtl: TAG_TTL },
        upstream: { idleTimeout: "5s", retries: 1 },
      });
      const m = mirror;
      const mirrorHost = `127.0.0.1:${m.port}`;
      // A client falling back to a real registry (after a failed mirror pull) ends here.
      trap = startEgressTrap();
      const egress = trap;

      await t.step("prefetch x warm: docker.io/library/multi:oci, every platform", async () => {
        // Next to the running mirror while it is idle: prefetch empties the cache's tmp/ as it
        // starts, which would break a fill in progress (docs/clients.md says so).
        const out = await runOk(Deno.execPath(), [
          "task",
          "--quiet",
          "start",
          "prefetch",
          "--config",
          `${dir}/config.json`,
          prefetched.reference,
        ], { cwd: ROOT, env: { MIRROR_LOG_LEVEL: "warning" } });
        match(out, /prefetched 1 of 1 images: 3 manifests, 4 blobs/);
        const gets = up.hubProxy.requests.filter((r) =>
          r.method === "GET" && r.path.includes("/library/multi/blobs/")
        );
        equal(new Set(gets.map((r) => r.path)).size, 4, "both platforms' config and layer");
      });

      // Each client pulls, checks and runs what it pulls; the per-client offline steps also
      // remove everything first, so each layer crosses from the mirror again.
      const dockerName = (image: TestImage) =>
        image.registry === "docker.io"
          ? `${image.repository}:${image.tag}`
          : `${mirrorHost}/${image.registry}/${image.repository}:${image.tag}`;
      const dockerPull = async (image: TestImage) => {
        const docker = dockerd!.docker;
        const name = dockerName(image);
        await docker(["pull", name]);
        const [inspected] = JSON.parse(await docker(["image", "inspect", name]));
        equal(inspected.Id, image.amd64.configDigest, `${name}: image ID (config digest)`);
        ok(
          inspected.RepoDigests.some((d: string) => d.endsWith(`@${image.digest}`)),
          `${name}: RepoDigests ${inspected.RepoDigests} lack ${image.digest}`,
        );
        equal(await docker(["run", "--rm", "--network", "none", name]), image.output);
      };
      const hostsDir = `${dir}/containerd/certs.d`;
      let containers = 0;
      const ctrPull = async (image: TestImage) => {
        const listed = await containerd!.pull(image.reference, hostsDir);
        equal(listed, image.digest, `${image.reference}: listed digest`);
        const output = await containerd!.runImage(
          image.reference,
          `clients-offline-${++containers}`,
        );
        equal(output, image.output, `${image.reference}: ctr run output`);
      };
      let podman: Podman | undefined;
      const podmanPull = async (image: TestImage) => {
        const id = await podman!.pull(image.reference);
        equal(`sha256:${id}`, image.amd64.configDigest, `${image.reference}: image ID`);
        const digest = await podman!.podman([
          "image",
          "inspect",
          "--format",
          "{{.Digest}}",
          image.reference,
        ]);
        equal(digest.trim(), image.digest, `${image.reference}: digest`);
        equal(await podman!.run(image.reference), image.output, `${image.reference}: output`);
      };

      /** A first pull through the live upstreams, with each client's documented setup. */
      const warm = async (pull: (image: TestImage) => Promise<void>) => {
        for (const image of pulled) {
          const from = logMark(m);
          await pull(image);
          assertServed(m, from, image);
        }
      };
      await t.step({
        name: "dockerd x warm: first pulls of library/hello:1 and quay.io/org/app:1",
        ...dockerTools,
        fn: async () => {
          dockerd = await startDockerd(`${dir}/dockerd`, mirrorDaemonJson(mirrorHost), {
            env: egress.env,
          });
          await warm(dockerPull);
        },
      });
      await t.step({
        name: "containerd x warm: first pulls of library/hello:1 and quay.io/org/app:1",
        ...containerdTools,
        fn: async () => {
          containerd = await startContainerd(`${dir}/containerd`, { env: egress.env });
          await writeHostsDir(hostsDir, {
            "docker.io": hostsToml("https://registry-1.docker.io", [{ url: m.url }]),
            "quay.io": hostsToml("https://quay.io", [{ url: m.url }]),
          });
          await warm(ctrPull);
        },
      });
      await t.step({
        name: "podman x warm: first pulls of library/hello:1 and quay.io/org/app:1",
        ...podmanTools,
        fn: async () => {
          podman = await podmanClient(
            `${dir}/podman`,
            registriesConf([
              { prefix: "docker.io", mirrors: [mirrorHost] },
              { prefix: "quay.io", mirrors: [`${mirrorHost}/quay.io`] },
            ]),
            { env: egress.env },
          );
          await warm(podmanPull);
        },
      });

      await t.step("upstreams stopped, tag TTL passed: an uncached image is 502", async () => {
        upstreamsRunning = false;
        await up.stop();
        const down = await fetch(`${up.registries["quay.io"].url}/v2/`).then(
          (r) => r.body?.cancel(),
          (e) => e,
        );
        ok(down instanceof TypeError, "the quay.io stand-in still answers");
        await new Promise((resolve) => setTimeout(resolve, PAST_TTL_MS));
        const never = await fetch(`${m.url}/v2/docker/compose/manifests/v2`, {
          headers: { accept: MANIFEST_TYPES },
        });
        await never.body?.cancel();
        equal(never.status, 502, "docker/compose was never pulled: nothing to serve");
      });

      /** Pulls every image again after `remove` emptied the client's store. */
      const offline = async (
        remove: () => Promise<void>,
        pull: (image: TestImage) => Promise<void>,
      ) => {
        await remove();
        const trapFrom = egress.seen.length;
        for (const image of [...pulled, prefetched]) {
          const from = logMark(m);
          await pull(image);
          await assertFromCache(m, from, image);
        }
        deepEqual(egress.seen.slice(trapFrom), [], "a client went past the mirror");
      };
      await t.step({
        name: "dockerd x upstream stopped: rmi, pull hello, quay.io app, prefetched OCI index",
        ...dockerTools,
        fn: () =>
          offline(async () => {
            const docker = dockerd!.docker;
            await docker(["rmi", ...pulled.map(dockerName)]);
            equal(await docker(["images", "--quiet"]), "", "images left after rmi");
          }, dockerPull),
      });
      await t.step({
        name: "containerd x upstream stopped: images rm, pull hello, quay.io app, OCI index",
        ...containerdTools,
        fn: () =>
          offline(async () => {
            const ctr = containerd!.ctr;
            await ctr(["images", "rm", "--sync", ...pulled.map((image) => image.reference)]);
            equal(await ctr(["images", "ls", "--quiet"]), "", "images left after rm");
            equal(await ctr(["content", "ls", "--quiet"]), "", "content left after rm --sync");
          }, ctrPull),
      });
      await t.step({
        name: "podman x upstream stopped: rmi, pull hello, quay.io app, prefetched OCI index",
        ...podmanTools,
        fn: () =>
          offline(async () => {
            await podman!.podman(["rmi", "--all"]);
            equal(await podman!.podman(["images", "--quiet"]), "", "images left after rmi");
          }, podmanPull),
      });

      await t.step("prefetch x upstream stopped: the arm64 child is served too", async () => {
        const from = logMark(m);
        const get = async (path: string, accept = MANIFEST_TYPES) => {
          const response = await fetch(`${m.url}/v2/library/multi/${path}`, {
            headers: { accept },
          });
          const body = new Uint8Array(await response.arrayBuffer());
          equal(response.status, 200, path);
          return body;
        };
        const index = JSON.parse(new TextDecoder().decode(await get("manifests/oci")));
        const arm64 = index.manifests.find((d: { platform: { architecture: string } }) =>
          d.platform.architecture === "arm64"
        );
        const child = await get(`manifests/${arm64.digest}`);
        equal(sha256(child), arm64.digest, "arm64 manifest digest");
        const manifest = JSON.parse(new TextDecoder().decode(child));
        for (const blob of [manifest.config, ...manifest.layers]) {
          equal(sha256(await get(`blobs/${blob.digest}`, "*/*")), blob.digest, blob.digest);
        }
        const last = manifest.layers.at(-1).digest;
        await waitForLogLine(m, from, (p) => String(p?.path).endsWith(`/blobs/${last}`));
        const lines = requestLines(m, from).filter((p) => p?.method !== undefined);
        deepEqual(lines.map((p) => p?.cache), ["STALE", "HIT", "HIT", "HIT"], summary(lines));
        ok(!lines.some(upstreamAnswered), summary(lines));
      });
    } finally {
      await trap?.stop();
      await dockerd?.stop();
      await containerd?.stop();
      await mirror?.stop();
      if (upstreamsRunning) await upstreams?.stop();
      const keep = Deno.env.get("KEEP_TEST_DIR") !== undefined;
      if (keep) console.error(`kept ${dir}`);
      leftovers = await cleanUpDir(dir, keep);
    }
    deepEqual(leftovers, [], "processes left running after their daemons stopped");
  },
});
