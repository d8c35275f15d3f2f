// End to end: real Distribution upstreams (one with Docker-Hub-style token auth and a CDN redirect),
// the mirror started with `deno task start`, and skopeo and fetch pulling through every routing form.

import bcrypt from "bcryptjs";
import { deepEqual, equal, match, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { startMirror } from "./fixtures/mirror.ts";
import { startRegistry, startStaticFileServer } from "./fixtures/registry.ts";
import {
  MediaType,
  type PushedImage,
  pushImage,
  pushIndex,
  pushLargeBlobImage,
  sha256,
} from "./fixtures/seed.ts";
import { startTokenServer } from "./fixtures/token_server.ts";
import { skipUnless } from "./fixtures/tools.ts";

const SERVICE = "registry.docker.io";
const HUB_USER = { username: "hubuser", password: "hubpass" };

/** skopeo copy from the mirror into a dir: layout; returns the dir. */
async function skopeoCopy(source: string, dest: string, extra: string[] = []): Promise<string> {
  const out = await new Deno.Command("skopeo", {
    args: [
      "copy",
      "--retry-times=0",
      "--src-tls-verify=false",
      ...extra,
      `docker://${source}`,
      `dir:${dest}`,
    ],
    stdin: "null",
  }).output();
  const text = new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`skopeo copy ${source} failed: ${text}`);
  return dest;
}

/** Checks a skopeo dir: the manifest is byte-identical and every layer has the pushed digest. */
async function assertPulled(dir: string, image: PushedImage): Promise<void> {
  const manifest = await Deno.readFile(`${dir}/manifest.json`);
  equal(sha256(manifest), image.digest, "manifest digest");
  const layer = await Deno.readFile(`${dir}/${image.layer.digest.slice("sha256:".length)}`);
  equal(sha256(layer), image.layer.digest, "layer digest");
}

async function sha256Stream(body: ReadableStream<Uint8Array>): Promise<[string, number]> {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of body) {
    hash.update(chunk);
    size += chunk.byteLength;
  }
  return [`sha256:${hash.digest("hex")}`, size];
}

Deno.test({
  name: "pull through the mirror from real Distribution upstreams",
  ...skipUnless(["docker-registry", "skopeo", "openssl", "curl"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "pull_test_" });
    const tokens = await startTokenServer({
      dir,
      service: SERVICE,
      users: { [HUB_USER.username]: HUB_USER.password },
      private: ["private/secret"],
    });
    await Deno.mkdir(`${dir}/hub/data`, { recursive: true });
    const cdn = startStaticFileServer(`${dir}/hub/data`);
    const hub = await startRegistry({
      dir: `${dir}/hub`,
      tokenAuth: { realm: tokens.realm, service: SERVICE, certPath: tokens.certPath },
      redirectBaseUrl: cdn.url,
    });
    const quay = await startRegistry({ dir: `${dir}/quay` });
    const k8s = await startRegistry({ dir: `${dir}/k8s` });
    const mirror = await startMirror(dir, {
      registries: {
        "docker.io": { upstream: hub.url, ...HUB_USER, authRealms: ["127.0.0.1"] },
        // Same upstream without credentials: private repositories must stay private.
        "ghcr.io": { upstream: hub.url },
        "quay.io": { upstream: quay.url },
        "registry.k8s.io": { upstream: k8s.url },
      },
      hosts: { "quay.mirror.test": "quay.io" },
    });
    const host = `127.0.0.1:${mirror.port}`;
    try {
      const auth = HUB_USER;
      const hello = await pushImage(hub.url, "library/hello", "1", {
        files: { "hello.txt": "hello from docker.io" },
        format: "docker",
        auth,
      });
      const compose = await pushImage(hub.url, "docker/compose", "v2", {
        files: { "compose.txt": "docker/compose on docker.io" },
        format: "docker",
        auth,
      });
      const secret = await pushImage(hub.url, "private/secret", "1", {
        files: { "secret.txt": "private content" },
        format: "oci",
        auth,
      });
      const quayApp = await pushImage(quay.url, "org/app", "1", {
        files: { "app.txt": "org/app on quay.io" },
        format: "oci",
      });
      const hubApp = await pushImage(hub.url, "org/app", "1", {
        files: { "app.txt": "org/app on docker.io" },
        format: "docker",
        auth,
      });
      const pause = await pushImage(k8s.url, "pause", "3.9", {
        files: { "pause": "pause on registry.k8s.io" },
        format: "oci-no-mediatype",
      });
      const multi = await pushIndex(quay.url, "org/multi", "1", [
        { platform: { os: "linux", architecture: "amd64" }, files: { "arch": "amd64" } },
        { platform: { os: "linux", architecture: "arm64" }, files: { "arch": "arm64" } },
      ], "oci-index");
      const list = await pushIndex(
        hub.url,
        "library/multi",
        "1",
        [
          { platform: { os: "linux", architecture: "amd64" }, files: { "arch": "amd64" } },
          { platform: { os: "linux", architecture: "arm64" }, files: { "arch": "arm64" } },
        ],
        "docker-list",
        auth,
      );
      ok(hello.digest !== hubApp.digest && quayApp.digest !== hubApp.digest);

      await t.step("skopeo: Docker Hub default route, library/ added, token auth", async () => {
        await assertPulled(await skopeoCopy(`${host}/library/hello:1`, `${dir}/o1`), hello);
        await assertPulled(await skopeoCopy(`${host}/hello:1`, `${dir}/o2`), hello);
        await assertPulled(await skopeoCopy(`${host}/org/app:1`, `${dir}/o3`), hubApp);
      });

      await t.step(
        "skopeo: docker/compose stays on Docker Hub (alias needs two components)",
        async () => {
          await assertPulled(await skopeoCopy(`${host}/docker/compose:v2`, `${dir}/o4`), compose);
          await assertPulled(
            await skopeoCopy(`${host}/docker/docker/compose:v2`, `${dir}/o5`),
            compose,
          );
        },
      );

      await t.step("skopeo: registry name and alias prefixes reach quay.io", async () => {
        await assertPulled(await skopeoCopy(`${host}/quay.io/org/app:1`, `${dir}/o6`), quayApp);
        await assertPulled(await skopeoCopy(`${host}/quay/org/app:1`, `${dir}/o7`), quayApp);
      });

      await t.step(
        "skopeo: single-component registry.k8s.io name, OCI manifest without mediaType",
        async () => {
          await assertPulled(
            await skopeoCopy(`${host}/registry.k8s.io/pause:3.9`, `${dir}/o8`),
            pause,
          );
          const response = await fetch(`${mirror.url}/v2/registry.k8s.io/pause/manifests/3.9`);
          equal(response.headers.get("content-type"), MediaType.ociManifest);
          equal(response.headers.get("docker-content-digest"), pause.digest);
          deepEqual(new Uint8Array(await response.arrayBuffer()), pause.bytes);
          ok(!JSON.parse(new TextDecoder().decode(pause.bytes)).mediaType);
        },
      );

      await t.step("fetch: ns=, direct /<alias>/v2/ form and Host header routing", async () => {
        const cases: [string, Record<string, string>, PushedImage][] = [
          ["/v2/org/app/manifests/1?ns=quay.io", {}, quayApp],
          ["/v2/org/app/manifests/1?ns=docker.io", {}, hubApp],
          ["/v2/hello/manifests/1?ns=docker.io", {}, hello],
          ["/v2/pause/manifests/3.9?ns=registry.k8s.io", {}, pause],
          ["/quay/v2/org/app/manifests/1", {}, quayApp],
          ["/quay.io/v2/org/app/manifests/1?ns=quay.io", {}, quayApp],
          ["/v2/org/app/manifests/1", {}, hubApp],
        ];
        for (const [path, headers, image] of cases) {
          const response = await fetch(`${mirror.url}${path}`, {
            headers: { accept: image.mediaType, ...headers },
          });
          equal(response.status, 200, path);
          equal(response.headers.get("docker-content-digest"), image.digest, path);
          equal(sha256(new Uint8Array(await response.arrayBuffer())), image.digest, path);
        }
        // fetch cannot set Host: curl can.
        const viaHost = await new Deno.Command("curl", {
          args: [
            "-sf",
            "-H",
            "Host: quay.mirror.test",
            "-H",
            `Accept: ${quayApp.mediaType}`,
            `${mirror.url}/v2/org/app/manifests/1`,
          ],
        }).output();
        equal(sha256(viaHost.stdout), quayApp.digest, "Host header routing");
        const blob = await fetch(
          `${mirror.url}/v2/org/app/blobs/${quayApp.layer.digest}?ns=quay.io`,
        );
        equal((await sha256Stream(blob.body!))[0], quayApp.layer.digest);
      });

      await t.step(
        "private repository: pulled with the configured credentials, only for authenticated clients",
        async () => {
          // Without credentials upstream: the upstream's own 401.
          const noCreds = await fetch(`${mirror.url}/v2/ghcr.io/private/secret/manifests/1`);
          equal(noCreds.status, 401);
          equal((await noCreds.json()).errors[0].code, "UNAUTHORIZED");
          // With credentials but no client authentication: refused, never leaked.
          const anonymous = await fetch(`${mirror.url}/v2/private/secret/manifests/1`);
          equal(anonymous.status, 401);
          match((await anonymous.json()).errors[0].message, /private upstream/);
          // With client authentication: served, fetched with the configured credentials.
          await Deno.writeTextFile(
            `${dir}/htpasswd`,
            `alice:${bcrypt.hashSync("wonderland", 4)}\n`,
          );
          const guarded = await startMirror(`${dir}/guarded`, {
            registries: {
              "docker.io": { upstream: hub.url, ...HUB_USER, authRealms: ["127.0.0.1"] },
            },
            auth: { htpasswd: `${dir}/htpasswd` },
          });
          try {
            const out = await skopeoCopy(
              `127.0.0.1:${guarded.port}/private/secret:1`,
              `${dir}/o9`,
              [
                "--src-creds=alice:wonderland",
              ],
            );
            await assertPulled(out, secret);
          } finally {
            await guarded.stop();
          }
          const basic = tokens.requests.filter((r) => r.username === HUB_USER.username);
          ok(basic.length > 0, "token requests carried the configured credentials");
        },
      );

      await t.step("multi-arch: OCI index and Docker manifest list with every child", async () => {
        const out = await skopeoCopy(`${host}/quay.io/org/multi:1`, `${dir}/o10`, [
          "--multi-arch=all",
        ]);
        equal(sha256(await Deno.readFile(`${out}/manifest.json`)), multi.digest);
        for (const child of multi.children) {
          const hex = child.digest.slice("sha256:".length);
          equal(sha256(await Deno.readFile(`${out}/${hex}.manifest.json`)), child.digest);
          const layer = await Deno.readFile(`${out}/${child.layer.digest.slice(7)}`);
          equal(sha256(layer), child.layer.digest);
        }
        const listOut = await skopeoCopy(`${host}/library/multi:1`, `${dir}/o11`, [
          "--multi-arch=all",
        ]);
        equal(sha256(await Deno.readFile(`${listOut}/manifest.json`)), list.digest);
        const head = await fetch(`${mirror.url}/v2/library/multi/manifests/1`, {
          method: "HEAD",
          headers: { accept: MediaType.dockerList },
        });
        equal(head.headers.get("content-type"), MediaType.dockerList);
        equal(head.headers.get("docker-content-digest"), list.digest);
      });

      await t.step("manifest HEAD and blob HEAD and Range", async () => {
        const head = await fetch(`${mirror.url}/v2/quay.io/org/app/manifests/1`, {
          method: "HEAD",
        });
        deepEqual(
          [
            head.status,
            head.headers.get("docker-content-digest"),
            head.headers.get("content-length"),
          ],
          [200, quayApp.digest, String(quayApp.bytes.length)],
        );
        equal(head.headers.get("content-type"), MediaType.ociManifest);
        const layer = quayApp.layer;
        const blobHead = await fetch(`${mirror.url}/v2/quay.io/org/app/blobs/${layer.digest}`, {
          method: "HEAD",
        });
        deepEqual(
          [
            blobHead.status,
            blobHead.headers.get("content-length"),
            blobHead.headers.get("docker-content-digest"),
          ],
          [200, String(layer.size), layer.digest],
        );
        for (
          const url of [
            `${mirror.url}/v2/quay.io/org/app/blobs/${layer.digest}`,
            `${mirror.url}/v2/library/hello/blobs/${hello.layer.digest}`,
          ]
        ) {
          const bytes = url.includes("quay") ? layer.bytes : hello.layer.bytes;
          const ranged = await fetch(url, { headers: { range: "bytes=10-19" } });
          equal(ranged.status, 206);
          equal(ranged.headers.get("content-range"), `bytes 10-19/${bytes.length}`);
          deepEqual(new Uint8Array(await ranged.arrayBuffer()), bytes.slice(10, 20));
          const tail = await fetch(url, { headers: { range: "bytes=20-" } });
          equal(tail.status, 206);
          deepEqual(new Uint8Array(await tail.arrayBuffer()), bytes.slice(20));
        }
      });

      await t.step(
        "Docker Hub blobs: redirect to the CDN followed without Authorization",
        () => {
          const cdnBlobGets = cdn.requests.filter((r) => r.path.includes("/blobs/"));
          ok(cdnBlobGets.length > 0, "blobs were redirected to the CDN");
          equal(
            cdnBlobGets.filter((r) => r.authorization).length,
            0,
            "CDN never saw Authorization",
          );
        },
      );

      await t.step(
        "tokens are cached per scope and reused across requests and clients",
        () => {
          const helloScope = tokens.requests.filter((r) =>
            r.scopes.includes("repository:library/hello:pull")
          );
          // One with the mirror's credentials; one anonymous, to learn the repository is public.
          deepEqual(helloScope.map((r) => r.username ?? null).sort(), [HUB_USER.username, null]);
        },
      );

      await t.step("a 200 MB blob streams with flat mirror memory", async () => {
        // Garbage collection lets memory rise by a fixed amount whatever the size: a 64 MB blob
        // first, then the 200 MB one must not raise the peak further by more than a margin.
        const pull = async (size: number) => {
          const big = await pushLargeBlobImage(quay.url, `org/big${size}`, "1", size, { dir });
          const response = await fetch(
            `${mirror.url}/v2/quay.io/org/big${size}/blobs/${big.blob.digest}`,
          );
          equal(response.headers.get("content-length"), String(size));
          deepEqual(await sha256Stream(response.body!), [big.blob.digest, size]);
          return mirror.peakRss();
        };
        const afterSmall = await pull(64 << 20);
        const afterBig = await pull(200 << 20);
        const growth = afterBig - afterSmall;
        ok(growth < 48 << 20, `peak RSS grew by ${growth} bytes from a 64 MB to a 200 MB blob`);
        ok(afterBig < 200 << 20, `peak RSS ${afterBig} bytes`);
      });

      await t.step("one JSON log line per request, no secrets", () => {
        const output = mirror.output();
        for (
          const secret of [HUB_USER.password, btoa(`${HUB_USER.username}:${HUB_USER.password}`)]
        ) {
          equal(output.includes(secret), false, "a secret reached the log");
        }
        ok(!/Bearer [A-Za-z0-9_-]{20,}/.test(output), "a token reached the log");
        const requests = mirror.logs().filter((l) =>
          (l.properties as Record<string, unknown>)?.path === "/v2/quay.io/org/app/manifests/1"
        );
        ok(requests.length >= 1);
        const p = requests[0].properties as Record<string, unknown>;
        deepEqual(
          [p.method, p.registry, p.repository, p.reference, p.status, p.upstreamStatus],
          ["GET", "quay.io", "org/app", "1", 200, 200],
        );
        ok(typeof p.durationMs === "number" && typeof p.bytes === "number");
        const warning = mirror.logs().find((l) => l.level === "WARN");
        ok(
          String(warning?.message).includes("upstream credentials are configured"),
          "loud warning",
        );
      });
    } finally {
      await mirror.stop();
      await Promise.all([hub.stop(), quay.stop(), k8s.stop(), tokens.stop(), cdn.stop()]);
      if (Deno.env.get("KEEP_TEST_DIR")) console.error(`kept ${dir}`);
      else await Deno.remove(dir, { recursive: true });
    }
  },
});
