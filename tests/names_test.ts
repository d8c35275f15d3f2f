// End to end: repository names up to the 255 characters the OCI grammar allows are pulled,
// cached, listed and served again after a restart, however long their encoded forms get.

import { deepEqual, equal, ok } from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import { cleanUpDir } from "./fixtures/clients/process.ts";
import { layerFile, skopeoCopy } from "./fixtures/clients/skopeo.ts";
import { startFaultProxy } from "./fixtures/fault_proxy.ts";
import { type MirrorProcess, startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { type ImageFormat, type PushedImage, pushImage, sha256 } from "./fixtures/seed.ts";
import { skipUnless } from "./fixtures/tools.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/**
 * Valid names near Distribution's 255-character limit. All but the single component are longer
 * than 255 bytes once `/` is percent-encoded (one path part, if a cache keys files that way). A
 * client names an image with its host (`127.0.0.1:PORT/quay.io/...`) and refuses references over
 * 255 characters, so only the deep name is short enough for skopeo; the others go over HTTP.
 */
const NAMES: { title: string; name: string; format: ImageFormat }[] = [
  {
    title: "3 components, 255 characters (the longest name)",
    name: `org/${"a".repeat(125)}/${"b".repeat(125)}`,
    format: "docker",
  },
  {
    title: "8 components with every separator, 250 characters",
    name: [
      "my-org",
      "team.infra",
      "sub__group",
      "project_x",
      "tools--ci",
      "x".repeat(66),
      "y".repeat(66),
      "z".repeat(67),
    ].join("/"),
    format: "oci",
  },
  {
    title: "1 component, 250 characters",
    name: `single.${"c".repeat(243)}`,
    format: "docker",
  },
  {
    title: "20 components, 219 characters",
    name: Array.from({ length: 20 }, (_, i) => `group${i % 10}-sub`).join("/"),
    format: "oci",
  },
];

/** `registry-mirror cache ls`: its lines. */
async function cacheLs(configPath: string): Promise<string[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "start", "cache", "ls", "--config", configPath],
    cwd: ROOT,
    stdin: "null",
  }).output();
  equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout).split("\n");
}

/** The message of the mirror's last error log line, to say why a request failed. */
function lastError(mirror: MirrorProcess): string {
  for (const line of mirror.output().split("\n").reverse()) {
    try {
      const fields = JSON.parse(line);
      if (fields.level !== "ERROR") continue;
      return String(fields.properties?.error ?? fields.message).split("\n")[0].slice(0, 300);
    } catch {
      // Not JSON, or a line still being written.
    }
  }
  return "(no error logged)";
}

/** deepEqual, adding the mirror's last logged error to the message when it fails. */
function sameAs(mirror: MirrorProcess, actual: unknown, expected: unknown, what: string): void {
  if (isDeepStrictEqual(actual, expected)) return;
  deepEqual(actual, expected, `${what}: ${JSON.stringify(actual)}; ${lastError(mirror)}`);
}

/**
 * Pulls `image` of `name` through the mirror as a client does: HEAD and GET of the tag, HEAD and
 * GET of each blob; asserts statuses, digests, sizes and types, and returns each GET's X-Cache.
 */
async function pull(mirror: MirrorProcess, name: string, image: PushedImage) {
  const base = `${mirror.url}/v2/quay.io/${name}`;
  const accept = image.mediaType;
  const fields = (r: Response) => [
    r.status,
    ...["docker-content-digest", "content-type", "content-length"].map((h) => r.headers.get(h)),
  ];
  const expected = [200, image.digest, image.mediaType, String(image.size)];
  const head = await fetch(`${base}/manifests/1`, { method: "HEAD", headers: { accept } });
  await head.body?.cancel();
  sameAs(mirror, fields(head), expected, "HEAD by tag");
  const get = await fetch(`${base}/manifests/1`, { headers: { accept } });
  const bytes = new Uint8Array(await get.arrayBuffer());
  sameAs(mirror, fields(get), expected, "GET by tag");
  equal(sha256(bytes), image.digest);
  const xCache: Record<string, string | null> = { tag: get.headers.get("x-cache") };
  for (const [what, blob] of [["config", image.config], ["layer", image.layer]] as const) {
    const url = `${base}/blobs/${blob.digest}`;
    const headBlob = await fetch(url, { method: "HEAD" });
    await headBlob.body?.cancel();
    const headFields = [headBlob.status, headBlob.headers.get("content-length")];
    sameAs(mirror, headFields, [200, String(blob.size)], `HEAD ${what} blob`);
    const response = await fetch(url);
    const body = new Uint8Array(await response.arrayBuffer());
    sameAs(mirror, response.status, 200, `GET ${what} blob`);
    equal(sha256(body), blob.digest, `GET ${what} blob`);
    xCache[what] = response.headers.get("x-cache");
  }
  return xCache;
}

Deno.test({
  name: "names: valid long repository names are pulled, cached and listed",
  ...skipUnless(["docker-registry"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "names_test_" });
    const registry = await startRegistry({ dir: `${dir}/quay` });
    const proxy = startFaultProxy(registry.url);
    const config = {
      registries: { "quay.io": { upstream: proxy.url } },
      cache: { dir: `${dir}/cache`, tagTtl: "10m" },
      upstream: { idleTimeout: "5s", retries: 1 },
    };
    let mirror: MirrorProcess | undefined;
    const images = new Map<string, PushedImage>();
    /** Upstream requests for `name` after request number `from`. */
    const upstreamFor = (name: string, from: number) =>
      proxy.requests.slice(from).filter((r) => r.path.startsWith(`/v2/${name}/`))
        .map((r) => `${r.method} ${r.path.slice(name.length + 4)}`);
    try {
      const first = await startMirror(dir, config);
      mirror = first;
      for (const { title, name, format } of NAMES) {
        await t.step(`${title}: pulled twice, the second time from the cache`, async () => {
          ok(name.length <= 255, `${name.length} characters`);
          const image = await pushImage(registry.url, name, "1", {
            files: { "name.txt": `${name}\n` },
            format,
          });
          images.set(name, image);
          const direct = await fetch(`${registry.url}/v2/${name}/manifests/1`, {
            headers: { accept: image.mediaType },
          });
          await direct.body?.cancel();
          deepEqual(
            [direct.status, direct.headers.get("docker-content-digest")],
            [200, image.digest],
            "Distribution serves the name",
          );
          await pull(first, name, image);
          const from = proxy.requests.length;
          deepEqual(await pull(first, name, image), {
            tag: "HIT",
            config: "HIT",
            layer: "HIT",
          });
          deepEqual(upstreamFor(name, from), [], "a second pull does not go upstream");
        });
      }

      await first.stop();
      mirror = undefined;
      mirror = await startMirror(dir, config);
      const restarted = mirror;
      for (const { title, name } of NAMES) {
        await t.step(`${title}: after a restart, served from the cache`, async () => {
          const image = images.get(name);
          ok(image, "pushed by the step above");
          const from = proxy.requests.length;
          deepEqual(await pull(restarted, name, image), {
            tag: "HIT",
            config: "HIT",
            layer: "HIT",
          });
          deepEqual(upstreamFor(name, from), [], "nothing asked upstream after the restart");
        });
      }

      await t.step("cache ls lists every name whole", async () => {
        const lines = await cacheLs(`${dir}/config.json`);
        for (const { name } of NAMES) {
          const image = images.get(name);
          ok(image, `${name} was pushed`);
          const line = lines.find((l) => l.startsWith(`quay.io/${name}:1\t`));
          ok(line, `no line for quay.io/${name}:1 in:\n${lines.join("\n")}`);
          deepEqual(line.split("\t").slice(0, 3), [
            `quay.io/${name}:1`,
            image.digest,
            image.mediaType,
          ]);
        }
      });

      await t.step({
        name: "skopeo copy through the restarted mirror (names a client can reference)",
        ...skipUnless(["skopeo", "tar"]),
        fn: async () => {
          const host = `127.0.0.1:${restarted.port}/quay.io`;
          const short = NAMES.filter(({ name }) => `${host}/${name}`.length <= 255);
          ok(short.length > 0, "a name short enough for a client reference");
          for (const { name } of short) {
            const image = images.get(name);
            ok(image, `${name} was pushed`);
            const out = `${dir}/skopeo/${crypto.randomUUID()}`;
            await Deno.mkdir(`${dir}/skopeo`, { recursive: true });
            const from = proxy.requests.length;
            await skopeoCopy(`${host}/${name}:1`, out);
            equal(sha256(await Deno.readFile(`${out}/manifest.json`)), image.digest);
            equal(await layerFile(out, image.layer.digest, "name.txt"), `${name}\n`);
            deepEqual(upstreamFor(name, from), [], "skopeo was served from the cache");
          }
        },
      });
    } finally {
      await mirror?.stop();
      await proxy.stop();
      await registry.stop();
      await cleanUpDir(dir);
    }
  },
});
