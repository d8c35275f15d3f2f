// End to end with real clients: dockerd, containerd (ctr), podman and skopeo pull through the mirror
// (started with `deno task start`) from five stand-in registries, configured as docs/clients.md says.

import { deepEqual, equal, ok } from "node:assert/strict";
import type { MirrorProcess } from "./fixtures/mirror.ts";
import { startMirror } from "./fixtures/mirror.ts";
import {
  assertPartialContent,
  assertResumed,
  assertServed,
  logMark,
  requestLines,
} from "./fixtures/clients/assertions.ts";
import { hostsToml, startContainerd, writeHostsDir } from "./fixtures/clients/containerd.ts";
import { DOCKER_CLI, mirrorDaemonJson, startDockerd } from "./fixtures/clients/dockerd.ts";
import {
  BUSYBOX,
  type LargeTestImage,
  seedImages,
  seedLargeImage,
  type TestImage,
} from "./fixtures/clients/images.ts";
import { podmanClient, registriesConf } from "./fixtures/clients/podman.ts";
import { cleanUpDir, type Leftover, run } from "./fixtures/clients/process.ts";
import { layerFile, skopeoCopy } from "./fixtures/clients/skopeo.ts";
import { REGISTRY_NAMES, startUpstreams, type Upstreams } from "./fixtures/clients/upstreams.ts";
import { type FaultProxy, startFaultProxy } from "./fixtures/fault_proxy.ts";
import { sha256 } from "./fixtures/seed.ts";
import { skipUnless } from "./fixtures/tools.ts";

const core = skipUnless(["docker-registry", "openssl", "tar", "gzip", BUSYBOX]);
const dockerTools = skipUnless(["dockerd", DOCKER_CLI, "containerd", "runc"]);
const containerdTools = skipUnless(["containerd", "ctr", "containerd-shim-runc-v2", "runc"]);
const podmanTools = skipUnless(["podman", "conmon", "runc"]);
const skopeoTools = skipUnless(["skopeo"]);

/** Random bytes in the layer broken mid-transfer, and where the upstream connection is reset. */
const LARGE_LAYER = 32 * 1024 * 1024;
const RESET_AFTER = 8 * 1024 * 1024;

/** Seeds a large docker.io image and has `proxy` cut its layer's first GET at RESET_AFTER bytes. */
async function breakableImage(
  upstreams: Upstreams,
  repository: string,
  proxy: FaultProxy,
): Promise<LargeTestImage> {
  const big = await seedLargeImage(upstreams, repository, LARGE_LAYER);
  proxy.inject({ path: big.amd64.layerDigest, method: "GET", resetAfterBytes: RESET_AFTER });
  return big;
}

Deno.test({
  name: "real clients pull through the mirror",
  ...core,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "clients_test_" });
    let upstreams: Upstreams | undefined;
    let mirror: MirrorProcess | undefined;
    let front: FaultProxy | undefined;
    let leftovers: Leftover[] = [];
    try {
      upstreams = await startUpstreams(`${dir}/upstreams`);
      const up = upstreams;
      const images = await seedImages(up);
      const distinct = new Set(Object.values(images).map((image) => image.amd64.layerDigest));
      equal(distinct.size, Object.keys(images).length, "every image has its own content");
      mirror = await startMirror(dir, {
        registries: up.mirrorRegistries,
        upstream: { idleTimeout: "10s", retries: 2 },
      });
      const m = mirror;
      const mirrorHost = `127.0.0.1:${m.port}`;
      // Between a client and the mirror, to break the client's own connection.
      front = startFaultProxy(m.url);
      const clientSide = front;
      const frontHost = clientSide.url.replace("http://", "");

      await t.step({
        name: "dockerd",
        ...dockerTools,
        fn: async (t) => {
          const dockerd = await startDockerd(`${dir}/dockerd`, mirrorDaemonJson(mirrorHost));
          /** Pulls by the short name users type, checks digest and image ID, runs it. */
          const pullAndRun = async (name: string, image: TestImage) => {
            const from = logMark(m);
            await dockerd.docker(["pull", name]);
            const [inspected] = JSON.parse(await dockerd.docker(["image", "inspect", name]));
            equal(inspected.Id, image.amd64.configDigest, `${name}: image ID (config digest)`);
            ok(
              inspected.RepoDigests.some((d: string) => d.endsWith(`@${image.digest}`)),
              `${name}: RepoDigests ${inspected.RepoDigests} lack ${image.digest}`,
            );
            equal(await dockerd.docker(["run", "--rm", "--network", "none", name]), image.output);
            assertServed(m, from, image);
          };
          try {
            await t.step(
              "daemon.json registry-mirrors: library/ name, Docker manifest",
              () => pullAndRun("hello:1", images.hubHello),
            );
            await t.step(
              "daemon.json registry-mirrors: docker/compose, two components",
              () => pullAndRun("docker/compose:v2", images.hubCompose),
            );
            await t.step(
              "daemon.json registry-mirrors: org/app (also on quay.io, ghcr.io)",
              () => pullAndRun("org/app:1", images.hubApp),
            );
            await t.step(
              "daemon.json registry-mirrors: Docker manifest list and OCI index",
              async () => {
                await pullAndRun("multi:list", images.hubList);
                await pullAndRun("library/multi:oci", images.hubIndex);
              },
            );
            await t.step(
              "upstream reset mid-layer: the pull completes, resumed by Range",
              async () => {
                const from = up.hubProxy.requests.length;
                const big = await breakableImage(up, "library/big-dockerd", up.hubProxy);
                await pullAndRun("big-dockerd:1", big);
                assertResumed(up.hubProxy.requests.slice(from), big.amd64.layerDigest, RESET_AFTER);
              },
            );
            await t.step(
              "mirror:port/library/ name, client connection reset mid-layer: dockerd resumes",
              async () => {
                const from = clientSide.requests.length;
                const mark = logMark(m);
                const big = await breakableImage(up, "library/big-dockerd-client", clientSide);
                await pullAndRun(`${frontHost}/library/big-dockerd-client:1`, big);
                assertResumed(clientSide.requests.slice(from), big.amd64.layerDigest, RESET_AFTER);
                assertPartialContent(m, mark, big.amd64.layerDigest);
              },
            );
          } finally {
            await dockerd.stop();
          }
        },
      });

      await t.step({
        name: "containerd",
        ...containerdTools,
        fn: async (t) => {
          const containerd = await startContainerd(`${dir}/containerd`);
          const hostsDir = `${dir}/containerd/certs.d`;
          await writeHostsDir(
            hostsDir,
            Object.fromEntries(REGISTRY_NAMES.map((registry) => [
              registry,
              hostsToml(
                registry === "docker.io" ? "https://registry-1.docker.io" : `https://${registry}`,
                [{ url: m.url }],
              ),
            ])),
          );
          const prefixedHostsDir = `${dir}/containerd/certs.d-override-path`;
          await writeHostsDir(prefixedHostsDir, {
            "quay.io": hostsToml("https://quay.io", [
              { url: `${m.url}/quay.io/v2`, overridePath: true },
            ]),
          });
          const frontHostsDir = `${dir}/containerd/certs.d-front`;
          await writeHostsDir(frontHostsDir, {
            "docker.io": hostsToml("https://registry-1.docker.io", [{ url: clientSide.url }]),
          });
          let containers = 0;
          /** `ctr images pull --hosts-dir`, then the listed digest and `ctr run` output. */
          const pullAndRun = async (image: TestImage, hosts = hostsDir) => {
            const from = logMark(m);
            const listed = await containerd.pull(image.reference, hosts);
            equal(listed, image.digest, `${image.reference}: listed digest`);
            const output = await containerd.runImage(
              image.reference,
              `clients-test-${++containers}`,
            );
            equal(output, image.output, `${image.reference}: ctr run output`);
            assertServed(m, from, image);
            ok(
              requestLines(m, from).some((p) => String(p?.path).endsWith(`?ns=${image.registry}`)),
              "containerd sent ?ns=",
            );
          };
          try {
            await t.step(
              "hosts.toml ns=docker.io: library/, docker/compose, manifest list, OCI index",
              async () => {
                for (
                  const image of [
                    images.hubHello,
                    images.hubCompose,
                    images.hubList,
                    images.hubIndex,
                  ]
                ) await pullAndRun(image);
              },
            );
            await t.step(
              "hosts.toml ns=quay.io, ns=ghcr.io: one name, three registries",
              async () => {
                for (const image of [images.quayApp, images.ghcrApp, images.hubApp]) {
                  await pullAndRun(image);
                }
              },
            );
            await t.step(
              "hosts.toml ns=registry.k8s.io: single-component name",
              () => pullAndRun(images.k8sPause),
            );
            await t.step(
              "hosts.toml ns=registry.gitlab.com: three-component name",
              () => pullAndRun(images.gitlabApp),
            );
            await t.step(
              "hosts.toml override_path, http://mirror/quay.io/v2: OCI index",
              () => pullAndRun(images.quayIndex, prefixedHostsDir),
            );
            await t.step(
              "upstream reset mid-layer: the pull completes, resumed by Range",
              async () => {
                const from = up.hubProxy.requests.length;
                const big = await breakableImage(up, "library/big-containerd", up.hubProxy);
                await pullAndRun(big);
                assertResumed(up.hubProxy.requests.slice(from), big.amd64.layerDigest, RESET_AFTER);
              },
            );
            await t.step("client connection reset mid-layer: containerd resumes", async () => {
              const from = clientSide.requests.length;
              const mark = logMark(m);
              const big = await breakableImage(up, "library/big-containerd-client", clientSide);
              await pullAndRun(big, frontHostsDir);
              assertResumed(clientSide.requests.slice(from), big.amd64.layerDigest, RESET_AFTER);
              assertPartialContent(m, mark, big.amd64.layerDigest);
            });
          } finally {
            await containerd.stop();
          }
        },
      });

      await t.step({
        name: "podman",
        ...podmanTools,
        fn: async (t) => {
          const podman = await podmanClient(
            `${dir}/podman`,
            registriesConf(REGISTRY_NAMES.map((registry) => ({
              prefix: registry,
              mirrors: [registry === "docker.io" ? mirrorHost : `${mirrorHost}/${registry}`],
            }))),
          );
          /** Pulls the fully qualified name, checks image ID and digest, runs it. */
          const pullAndRun = async (image: TestImage) => {
            const from = logMark(m);
            const id = await podman.pull(image.reference);
            equal(`sha256:${id}`, image.amd64.configDigest, `${image.reference}: image ID`);
            const digest = await podman.podman([
              "image",
              "inspect",
              "--format",
              "{{.Digest}}",
              image.reference,
            ]);
            equal(digest.trim(), image.digest, `${image.reference}: digest`);
            equal(await podman.run(image.reference), image.output, `${image.reference}: output`);
            assertServed(m, from, image);
          };
          await t.step(
            "registries.conf docker.io mirror at the root: library/, docker/compose, list, index",
            async () => {
              for (
                const image of [images.hubHello, images.hubCompose, images.hubList, images.hubIndex]
              ) await pullAndRun(image);
            },
          );
          await t.step(
            "registries.conf path-prefix mirrors: quay.io, ghcr.io (same name), OCI index",
            async () => {
              for (const image of [images.quayApp, images.ghcrApp, images.quayIndex]) {
                await pullAndRun(image);
              }
            },
          );
          await t.step(
            "registries.conf path-prefix mirror: registry.k8s.io single component",
            () => pullAndRun(images.k8sPause),
          );
          await t.step(
            "registries.conf path-prefix mirror: registry.gitlab.com three components",
            () => pullAndRun(images.gitlabApp),
          );
        },
      });

      await t.step({
        name: "skopeo",
        ...skopeoTools,
        fn: async (t) => {
          let copies = 0;
          /** Copies `<mirror>/<path>:<tag>` to a dir: and checks the manifest and /hello.txt. */
          const copy = async (path: string, image: TestImage) => {
            const from = logMark(m);
            const out = `${dir}/skopeo/${++copies}`;
            await Deno.mkdir(`${dir}/skopeo`, { recursive: true });
            await skopeoCopy(`${mirrorHost}/${path}:${image.tag}`, out);
            const manifest = await Deno.readFile(`${out}/manifest.json`);
            equal(sha256(manifest), image.amd64.digest, `${path}: manifest digest`);
            equal(await layerFile(out, image.amd64.layerDigest, "hello.txt"), image.output);
            assertServed(m, from, image);
          };
          await t.step("registry-name prefixes: /v2/<registry>/<name>", async () => {
            for (const image of Object.values(images)) {
              await copy(`${image.registry}/${image.repository}`, image);
            }
          });
          await t.step(
            "alias prefixes: /v2/<alias>/<name> with two or more components",
            async () => {
              await copy("docker/library/hello", images.hubHello);
              await copy("quay/org/app", images.quayApp);
              await copy("ghcr/org/app", images.ghcrApp);
              await copy("gitlab/group/project/app", images.gitlabApp);
            },
          );
          await t.step(
            "default route: Docker Hub, library/ added, docker/compose kept",
            async () => {
              await copy("hello", images.hubHello);
              await copy("docker/compose", images.hubCompose);
              await copy("org/app", images.hubApp);
              const from = logMark(m);
              const aliasOne = await run("skopeo", [
                "inspect",
                "--retry-times=0",
                "--tls-verify=false",
                `docker://${mirrorHost}/k8s/pause:3.9`,
              ]);
              ok(aliasOne.code !== 0, "k8s/pause is Docker Hub's k8s/pause, which does not exist");
              const lines = requestLines(m, from).filter((p) => p?.repository);
              deepEqual(
                [...new Set(lines.map((p) => p?.registry))],
                ["docker.io"],
              );
            },
          );
        },
      });
    } finally {
      await front?.stop();
      await mirror?.stop();
      await upstreams?.stop();
      const keep = Deno.env.get("KEEP_TEST_DIR") !== undefined;
      if (keep) console.error(`kept ${dir}`);
      leftovers = await cleanUpDir(dir, keep);
    }
    deepEqual(leftovers, [], "processes left running after their daemons stopped");
  },
});
