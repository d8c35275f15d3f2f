// End to end with real clients against a TLS mirror with htpasswd client auth: dockerd, containerd
// (ctr) and podman, each trusting a private CA, pull with credentials and are refused without.

import bcrypt from "bcryptjs";
import { deepEqual, equal, match, ok } from "node:assert/strict";
import type { MirrorProcess } from "./fixtures/mirror.ts";
import { startMirror } from "./fixtures/mirror.ts";
import {
  assertServed,
  logMark,
  requestLines,
  waitForLogLine,
} from "./fixtures/clients/assertions.ts";
import { hostsToml, startContainerd, writeHostsDir } from "./fixtures/clients/containerd.ts";
import {
  DOCKER_CLI,
  type Dockerd,
  installDockerCa,
  startDockerd,
} from "./fixtures/clients/dockerd.ts";
import { type EgressTrap, startEgressTrap } from "./fixtures/clients/egress_trap.ts";
import { BUSYBOX, seedImages, type TestImage } from "./fixtures/clients/images.ts";
import { podmanClient, registriesConf } from "./fixtures/clients/podman.ts";
import { cleanUpDir, type Leftover } from "./fixtures/clients/process.ts";
import { startUpstreams, type Upstreams } from "./fixtures/clients/upstreams.ts";
import { pushImage } from "./fixtures/seed.ts";
import { makeCerts } from "./fixtures/tls.ts";
import { skipUnless } from "./fixtures/tools.ts";

const core = skipUnless(["docker-registry", "openssl", "tar", "gzip", BUSYBOX]);
const dockerTools = skipUnless(["dockerd", DOCKER_CLI, "containerd", "runc"]);
const containerdTools = skipUnless(["containerd", "ctr", "containerd-shim-runc-v2", "runc"]);
const podmanTools = skipUnless(["podman", "conmon", "runc"]);

const USER = "alice";
const PASSWORD = `pw-${crypto.randomUUID()}`;
const WRONG = "not-the-password";
/** What the egress trap sees when a client falls back to Docker Hub. */
const HUB_CONNECT = "CONNECT registry-1.docker.io:443 HTTP/1.1";

/** The error `promise` rejected with; fails the test if it resolved instead. */
async function failure(promise: Promise<unknown>, what: string): Promise<Error> {
  const outcome = await promise.then(() => undefined, (e: Error) => e);
  ok(outcome instanceof Error, `${what} succeeded, but must be refused`);
  return outcome;
}

/**
 * Asserts that every request the mirror logged after line `from` for `repository`, and every
 * `/v2/` ping, was answered 401 without asking an upstream, that there was at least one, and
 * that the docker.io stand-in (behind `upstreams.hubProxy`) saw nothing of it since request
 * `proxyFrom`. (dockerd without credentials stops after the 401 to its ping.)
 */
async function assertRefused(
  mirror: MirrorProcess,
  from: number,
  upstreams: Upstreams,
  proxyFrom: number,
  repository: string,
): Promise<void> {
  const relevant = (p: Record<string, unknown> | undefined) =>
    p?.method !== undefined &&
    (p?.path === "/v2/" || String(p?.path).startsWith(`/v2/${repository}/`));
  await waitForLogLine(mirror, from, relevant);
  const lines = requestLines(mirror, from).filter(relevant);
  const seen = JSON.stringify(lines.map((p) => [p?.method, p?.path, p?.status, p?.user]));
  ok(lines.length > 0, `no request for ${repository} reached the mirror: ${seen}`);
  ok(lines.every((p) => p?.status === 401 && p?.user === undefined), `not all 401: ${seen}`);
  ok(lines.every((p) => p?.upstreamStatus === undefined), `an upstream was asked: ${seen}`);
  deepEqual(
    upstreams.hubProxy.requests.slice(proxyFrom).filter((r) => r.path.includes(repository)),
    [],
    `the docker.io upstream saw requests for ${repository}`,
  );
}

/**
 * Asserts that every request for `image` logged after line `from` was either a 401 challenge
 * (containerd asks without credentials first, per request kind) or served to USER, and that USER
 * got the manifest and the layer.
 */
async function assertAuthenticated(
  mirror: MirrorProcess,
  from: number,
  image: TestImage,
): Promise<void> {
  const layer = `/blobs/${image.amd64.layerDigest}`;
  await waitForLogLine(mirror, from, (p) => String(p?.path).includes(layer) && p?.status === 200);
  const lines = requestLines(mirror, from).filter((p) =>
    p?.method !== undefined && p?.repository === image.repository &&
    p?.registry === image.registry
  );
  const seen = JSON.stringify(lines.map((p) => [p?.method, p?.path, p?.status, p?.user]));
  const served = lines.filter((p) => p?.status !== 401);
  ok(
    served.every((p) => p?.user === USER && Number(p?.status) < 300),
    `not all served to ${USER}: ${seen}`,
  );
  ok(
    served.some((p) => String(p?.path).includes(layer)),
    `the layer was not served to ${USER}: ${seen}`,
  );
}

Deno.test({
  name: "real clients pull from a TLS mirror with htpasswd auth",
  ...core,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "clients_tls_" });
    let upstreams: Upstreams | undefined;
    let mirror: MirrorProcess | undefined;
    let trap: EgressTrap | undefined;
    let leftovers: Leftover[] = [];
    try {
      upstreams = await startUpstreams(`${dir}/upstreams`);
      const up = upstreams;
      const images = await seedImages(up);
      /** A docker.io image per client that is only ever asked for without valid credentials. */
      const refusedRepository = async (client: string) => {
        const repository = `library/secret-${client}`;
        await pushImage(up.registries["docker.io"].url, repository, "1", {
          files: { "secret.txt": `${client}\n` },
          format: "docker",
          auth: up.hubPushAuth,
        });
        return repository;
      };
      const certs = await makeCerts(`${dir}/certs`);
      await Deno.writeTextFile(`${dir}/htpasswd`, `${USER}:${bcrypt.hashSync(PASSWORD, 4)}\n`);
      mirror = await startMirror(dir, {
        registries: up.mirrorRegistries,
        upstream: { idleTimeout: "10s", retries: 1 },
        tls: { cert: certs.cert, key: certs.key },
        auth: { htpasswd: `${dir}/htpasswd` },
      });
      const m = mirror;
      const mirrorHost = `127.0.0.1:${m.port}`;
      // Any fallback to a real registry (after the mirror refused) ends here, on 127.0.0.1.
      trap = startEgressTrap();
      const egress = trap;
      /** Asserts no client tried a real registry since `from` entries of the trap. */
      const assertNoFallback = (from: number) =>
        deepEqual(egress.seen.slice(from), [], "a client went past the mirror");
      // containerd and podman read a CA from a directory (hosts.toml `ca`, --cert-dir).
      const certDir = `${dir}/client-certs`;
      await Deno.mkdir(certDir);
      await Deno.copyFile(certs.caCert, `${certDir}/ca.crt`);

      await t.step({
        name: "dockerd",
        ...dockerTools,
        fn: async (t) => {
          const removeCa = await installDockerCa(mirrorHost, certs.caCert);
          let dockerd: Dockerd | undefined;
          try {
            // registry-mirrors only matters for the docker.io names of two steps below.
            dockerd = await startDockerd(
              `${dir}/dockerd`,
              { "registry-mirrors": [m.url] },
              { env: egress.env },
            );
            const docker = dockerd.docker;
            await t.step(
              "dockerd x with credentials: certs.d CA, docker login, pull mirror:port/library/",
              async () => {
                const image = images.hubHello;
                const name = `${mirrorHost}/library/hello:1`;
                const from = logMark(m);
                const trapFrom = egress.seen.length;
                await docker(["login", "--username", USER, "--password", PASSWORD, mirrorHost]);
                try {
                  await docker(["pull", name]);
                  const [inspected] = JSON.parse(await docker(["image", "inspect", name]));
                  equal(inspected.Id, image.amd64.configDigest, "image ID (config digest)");
                  deepEqual(inspected.RepoDigests, [`${mirrorHost}/library/hello@${image.digest}`]);
                  equal(await docker(["run", "--rm", "--network", "none", name]), image.output);
                } finally {
                  await docker(["logout", mirrorHost]);
                }
                assertServed(m, from, image);
                await assertAuthenticated(m, from, image);
                assertNoFallback(trapFrom);
              },
            );
            await t.step(
              "dockerd x without credentials: wrong password, mirror:port/ and registry-mirrors refused",
              async () => {
                const repository = await refusedRepository("dockerd");
                const from = logMark(m);
                const proxyFrom = up.hubProxy.requests.length;
                const trapFrom = egress.seen.length;
                const login = await failure(
                  docker(["login", "--username", USER, "--password", WRONG, mirrorHost]),
                  "docker login with a wrong password",
                );
                match(login.message, /401|unauthorized/i);
                // dockerd treats 127.0.0.0/8 as an insecure registry: after the HTTPS 401 it
                // also tries plain HTTP and reports that error, so the mirror log is the proof.
                await failure(
                  docker(["pull", `${mirrorHost}/${repository}:1`]),
                  "docker pull without credentials",
                );
                deepEqual(egress.seen.slice(trapFrom), [], "no fallback for a mirror:port/ name");
                // Through registry-mirrors the refusal makes dockerd fall back to Docker Hub.
                const hub = await failure(
                  docker(["pull", `${repository.replace("library/", "")}:1`]),
                  "docker pull through registry-mirrors without credentials",
                );
                match(hub.message, /registry-1\.docker\.io/);
                deepEqual(egress.seen.slice(trapFrom), [HUB_CONNECT]);
                await assertRefused(m, from, up, proxyFrom, repository);
                const listed = await docker(["images", "--quiet", `${mirrorHost}/${repository}`]);
                equal(listed, "", "nothing stored");
              },
            );
            await t.step(
              "dockerd x registry-mirrors: dockerd sends the mirror Docker Hub's stored login",
              async () => {
                // The credentials `docker login` stored for Docker Hub go to the registry mirror
                // too (and to Docker Hub on a fallback): a mirror with auth sees them.
                const config = `${dir}/dockerd/client/config.json`;
                const hubKey = "https://index.docker.io/v1/";
                await Deno.writeTextFile(
                  config,
                  JSON.stringify({ auths: { [hubKey]: { auth: btoa(`${USER}:${PASSWORD}`) } } }),
                );
                const image = images.hubCompose;
                const from = logMark(m);
                const trapFrom = egress.seen.length;
                try {
                  await docker(["pull", "docker/compose:v2"]);
                  const [inspected] = JSON.parse(
                    await docker(["image", "inspect", "docker/compose:v2"]),
                  );
                  equal(inspected.Id, image.amd64.configDigest, "image ID (config digest)");
                } finally {
                  await Deno.writeTextFile(config, JSON.stringify({ auths: {} }));
                }
                assertServed(m, from, image);
                await assertAuthenticated(m, from, image);
                assertNoFallback(trapFrom);
              },
            );
            await t.step(
              "dockerd x CA not installed: still pulls, dockerd never verifies 127.0.0.0/8",
              async () => {
                // dockerd treats loopback registries as insecure (TLS without verification), so
                // this suite cannot prove that dockerd uses certs.d; this step notices if that
                // ever changes. A mirror on a real host name is verified against certs.d.
                await removeCa();
                const image = images.hubApp;
                const name = `${mirrorHost}/org/app:1`;
                const from = logMark(m);
                await docker(["login", "--username", USER, "--password", PASSWORD, mirrorHost]);
                try {
                  await docker(["pull", name]);
                  const [inspected] = JSON.parse(await docker(["image", "inspect", name]));
                  equal(inspected.Id, image.amd64.configDigest, "image ID (config digest)");
                } finally {
                  await docker(["logout", mirrorHost]);
                }
                await assertAuthenticated(m, from, image);
              },
            );
          } finally {
            await dockerd?.stop();
            await removeCa();
          }
        },
      });

      await t.step({
        name: "containerd",
        ...containerdTools,
        fn: async (t) => {
          const containerd = await startContainerd(`${dir}/containerd`, { env: egress.env });
          const hostsDir = `${dir}/containerd/certs.d`;
          await writeHostsDir(hostsDir, {
            "docker.io": hostsToml("https://registry-1.docker.io", [
              { url: m.url, ca: `${certDir}/ca.crt` },
            ]),
          });
          const pull = (reference: string, extra: string[] = [], hosts = hostsDir) =>
            containerd.ctr([
              "images",
              "pull",
              "--snapshotter",
              "native",
              "--hosts-dir",
              hosts,
              ...extra,
              reference,
            ]);
          try {
            await t.step(
              "containerd x with credentials: hosts.toml ca, ctr pull --user, manifest list",
              async () => {
                const image = images.hubList;
                const from = logMark(m);
                const trapFrom = egress.seen.length;
                await pull(image.reference, ["--user", `${USER}:${PASSWORD}`]);
                const listed = (await containerd.ctr(["images", "ls"])).split("\n")
                  .map((line) => line.split(/\s+/)).find((cols) => cols[0] === image.reference);
                equal(listed?.[2], image.digest, "listed digest");
                const output = await containerd.runImage(image.reference, "clients-secure-test");
                equal(output, image.output, "ctr run output");
                assertServed(m, from, image);
                await assertAuthenticated(m, from, image);
                ok(
                  requestLines(m, from).some((p) => String(p?.path).endsWith("?ns=docker.io")),
                  "containerd sent ?ns=",
                );
                assertNoFallback(trapFrom);
              },
            );
            await t.step(
              "containerd x without credentials: no --user and a wrong password refused",
              async () => {
                const repository = await refusedRepository("containerd");
                const from = logMark(m);
                const proxyFrom = up.hubProxy.requests.length;
                const reference = `docker.io/${repository}:1`;
                const trapFrom = egress.seen.length;
                for (const extra of [[], ["--user", `${USER}:${WRONG}`]]) {
                  const error = await failure(pull(reference, extra), `ctr pull ${extra}`);
                  match(error.message, /401|unauthorized|auth/i);
                }
                await assertRefused(m, from, up, proxyFrom, repository);
                ok(
                  egress.seen.slice(trapFrom).includes(HUB_CONNECT),
                  "containerd did not go on to server",
                );
                const names = (await containerd.ctr(["images", "ls", "--quiet"])).split("\n");
                ok(!names.includes(reference), "nothing stored");
              },
            );
            await t.step(
              "containerd x CA not installed: hosts.toml without ca, the TLS handshake fails",
              async () => {
                const noCaDir = `${dir}/containerd/certs.d-no-ca`;
                await writeHostsDir(noCaDir, {
                  "docker.io": hostsToml("https://registry-1.docker.io", [{ url: m.url }]),
                });
                const from = logMark(m);
                const error = await failure(
                  pull(images.hubCompose.reference, ["--user", `${USER}:${PASSWORD}`], noCaDir),
                  "ctr pull without the CA",
                );
                match(error.message, /x509|certificate/);
                deepEqual(
                  requestLines(m, from).filter((p) => p?.path),
                  [],
                  "no request got through",
                );
              },
            );
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
            registriesConf([
              { prefix: "docker.io", mirrors: [mirrorHost], insecure: false },
              { prefix: "quay.io", mirrors: [`${mirrorHost}/quay.io`], insecure: false },
            ]),
            { env: egress.env },
          );
          /** Pulls `image` with `extra` flags; checks image ID, digest and what it prints. */
          const pullAndRun = async (image: TestImage, extra: string[]) => {
            const from = logMark(m);
            const trapFrom = egress.seen.length;
            const id = await podman.pull(image.reference, extra);
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
            await assertAuthenticated(m, from, image);
            assertNoFallback(trapFrom);
          };
          await t.step(
            "podman x with credentials: --cert-dir CA, podman login (auth.json), root mirror",
            async () => {
              await podman.podman([
                "login",
                "--cert-dir",
                certDir,
                "--username",
                USER,
                "--password",
                PASSWORD,
                mirrorHost,
              ]);
              try {
                const auth = JSON.parse(await Deno.readTextFile(`${dir}/podman/auth.json`));
                deepEqual(Object.keys(auth.auths), [mirrorHost], "auth.json entry");
                await pullAndRun(images.hubIndex, ["--cert-dir", certDir]);
                // The same login serves the path-prefix mirror of another registry.
                await pullAndRun(images.quayApp, ["--cert-dir", certDir]);
              } finally {
                await podman.podman(["logout", mirrorHost]);
              }
            },
          );
          await t.step(
            "podman x with credentials: --cert-dir CA, --creds, by the mirror's own name",
            async () => {
              const image = images.ghcrApp;
              const name = `${mirrorHost}/${image.registry}/${image.repository}:${image.tag}`;
              const from = logMark(m);
              const id = await podman.pull(name, [
                "--cert-dir",
                certDir,
                "--creds",
                `${USER}:${PASSWORD}`,
              ]);
              equal(`sha256:${id}`, image.amd64.configDigest, "image ID");
              const digest = await podman.podman([
                "image",
                "inspect",
                "--format",
                "{{.Digest}}",
                name,
              ]);
              equal(digest.trim(), image.digest, "digest");
              equal(await podman.run(name), image.output, "output");
              assertServed(m, from, image);
              await assertAuthenticated(m, from, image);
            },
          );
          await t.step(
            "podman x without credentials: none, a wrong password, --creds (never sent to mirrors)",
            async () => {
              const repository = await refusedRepository("podman");
              const from = logMark(m);
              const proxyFrom = up.hubProxy.requests.length;
              const reference = `docker.io/${repository}:1`;
              const trapFrom = egress.seen.length;
              const attempts = [
                [reference, []],
                [`${mirrorHost}/${repository}:1`, ["--creds", `${USER}:${WRONG}`]],
                // containers/image gives --creds to the named registry only, never to a mirror.
                [reference, ["--creds", `${USER}:${PASSWORD}`]],
              ] as const;
              for (const [name, creds] of attempts) {
                const error = await failure(
                  podman.pull(name, ["--cert-dir", certDir, ...creds]),
                  `podman pull ${creds} ${name}`,
                );
                match(error.message, /unauthorized|authentication (required|failed)/i);
              }
              await assertRefused(m, from, up, proxyFrom, repository);
              ok(
                egress.seen.slice(trapFrom).includes(HUB_CONNECT),
                "podman did not fall back to location",
              );
              const listed = await podman.podman(["images", "--quiet", reference]);
              equal(listed, "", "nothing stored");
            },
          );
          await t.step(
            "podman x CA not installed: no --cert-dir, the TLS handshake fails",
            async () => {
              const from = logMark(m);
              const error = await failure(
                podman.pull(images.hubCompose.reference, ["--creds", `${USER}:${PASSWORD}`]),
                "podman pull without the CA",
              );
              match(error.message, /x509|certificate/);
              deepEqual(requestLines(m, from).filter((p) => p?.path), [], "no request got through");
            },
          );
        },
      });
    } finally {
      await trap?.stop();
      await mirror?.stop();
      await upstreams?.stop();
      const keep = Deno.env.get("KEEP_TEST_DIR") !== undefined;
      if (keep) console.error(`kept ${dir}`);
      leftovers = await cleanUpDir(dir, keep);
    }
    deepEqual(leftovers, [], "processes left running after their daemons stopped");
  },
});
