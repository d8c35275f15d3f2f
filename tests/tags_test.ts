// End to end: a multi-arch tag stays an index in the cache whatever a client accepts; a client that
// takes one image manifest type gets the linux/amd64 child, and no client rewrites the tag record.

import { deepEqual, equal, ok } from "node:assert/strict";
import { type Podman, podmanClient, registriesConf } from "./fixtures/clients/podman.ts";
import { cleanUpDir, runOk } from "./fixtures/clients/process.ts";
import { skopeoCopy } from "./fixtures/clients/skopeo.ts";
import { type FaultProxy, startFaultProxy } from "./fixtures/fault_proxy.ts";
import { type MirrorProcess, startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import {
  MediaType,
  type PushedImage,
  pushImage,
  pushIndex,
  pushManifest,
  sha256,
} from "./fixtures/seed.ts";
import { skipUnless } from "./fixtures/tools.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** What a modern client sends, and what the mirror must ask upstream for a tag. */
const FULL_ACCEPT = [
  MediaType.ociIndex,
  MediaType.ociManifest,
  MediaType.dockerList,
  MediaType.dockerManifest,
];

const skopeoTools = skipUnless(["skopeo"]);
const podmanTools = skipUnless(["podman", "conmon", "runc"]);

/** A multi-arch image as pushed: the index (or list) and its children. */
interface MultiArch {
  digest: string;
  size: number;
  bytes: Uint8Array;
  mediaType: string;
  children: PushedImage[];
}

/** One kind of multi-arch tag, and the two single-type clients asking for it. */
interface Flavour {
  title: string;
  repository: string;
  push(registryUrl: string, repository: string, tag: string): Promise<MultiArch>;
  /** The one image manifest type a narrow client accepts: that of the children. */
  narrow: string;
  /** An image manifest type no child has. */
  unmatched: string;
}

/** arm64 first: the mirror must choose the child by platform, not by position. */
function platforms(label: string) {
  return ["arm64", "amd64"].map((architecture) => ({
    platform: { os: "linux", architecture },
    files: { "platform.txt": `${label} linux/${architecture}\n` },
  }));
}

/** An OCI index whose children are Docker v2 manifests (as `buildx imagetools create` makes). */
async function pushOciIndexOfDockerImages(
  registryUrl: string,
  repository: string,
  tag: string,
): Promise<MultiArch> {
  const images: PushedImage[] = [];
  for (const child of platforms(`${repository}:${tag}`)) {
    images.push(await pushImage(registryUrl, repository, "", { ...child, format: "docker" }));
  }
  const bytes = new TextEncoder().encode(JSON.stringify({
    schemaVersion: 2,
    mediaType: MediaType.ociIndex,
    manifests: images.map((image) => ({
      mediaType: image.mediaType,
      size: image.size,
      digest: image.digest,
      platform: image.platform,
    })),
  }));
  const pushed = await pushManifest(registryUrl, repository, tag, bytes, MediaType.ociIndex);
  return { ...pushed, bytes, mediaType: MediaType.ociIndex, children: images };
}

const FLAVOURS: Flavour[] = [
  {
    title: "Docker manifest list",
    repository: "multiarch/docker-list",
    push: (url, repository, tag) =>
      pushIndex(url, repository, tag, platforms(`${repository}:${tag}`), "docker-list"),
    narrow: MediaType.dockerManifest,
    unmatched: MediaType.ociManifest,
  },
  {
    title: "OCI index",
    repository: "multiarch/oci-index",
    push: (url, repository, tag) =>
      pushIndex(url, repository, tag, platforms(`${repository}:${tag}`), "oci-index"),
    narrow: MediaType.ociManifest,
    unmatched: MediaType.dockerManifest,
  },
  {
    title: "OCI index of Docker v2 images",
    repository: "multiarch/oci-index-docker-children",
    push: pushOciIndexOfDockerImages,
    narrow: MediaType.dockerManifest,
    unmatched: MediaType.ociManifest,
  },
];

/** What a HEAD and a GET of one manifest URL said. */
interface Answer {
  status: number;
  digest: string | null;
  type: string | null;
  length: string | null;
  /** The GET's X-Cache. */
  xCache: string | null;
  bytes: Uint8Array;
}

/**
 * A HEAD and a GET with `accept` (the GET first if asked); asserts both say the same: the status,
 * and for a 200 the Docker-Content-Digest, Content-Type and Content-Length.
 */
async function headAndGet(url: string, accept: string, getFirst = false): Promise<Answer> {
  const head = async () => {
    const response = await fetch(url, { method: "HEAD", headers: { accept } });
    await response.body?.cancel();
    return response;
  };
  const get = async () => {
    const response = await fetch(url, { headers: { accept } });
    return { response, bytes: new Uint8Array(await response.arrayBuffer()) };
  };
  const [headResponse, got] = getFirst
    ? await get().then(async (g) => [await head(), g] as const)
    : await head().then(async (h) => [h, await get()] as const);
  const fields = (r: Response) => [
    r.status,
    ...["docker-content-digest", "content-type", "content-length"].map((h) => r.headers.get(h)),
  ];
  const [headFields, getFields] = [fields(headResponse), fields(got.response)];
  ok(
    got.response.status === 200
      ? JSON.stringify(headFields) === JSON.stringify(getFields)
      : headResponse.status === got.response.status,
    `HEAD and GET differ (Accept: ${accept}): HEAD ${JSON.stringify(headFields)}, ` +
      `GET ${JSON.stringify(getFields)}`,
  );
  const [, digest, type, length] = getFields as [number, ...(string | null)[]];
  return {
    status: got.response.status,
    digest,
    type,
    length,
    xCache: got.response.headers.get("x-cache"),
    bytes: got.bytes,
  };
}

/** The media types of an Accept header, parameters dropped. */
function acceptedTypes(accept: string | undefined): Set<string> {
  return new Set((accept ?? "").split(",").map((v) => v.split(";")[0].trim()).filter(Boolean));
}

/** `registry-mirror cache ls`: `registry/repository:tag` -> [digest, media type]. */
async function cacheLs(configPath: string): Promise<Map<string, [string, string]>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "start", "cache", "ls", "--config", configPath],
    cwd: ROOT,
    stdin: "null",
  }).output();
  equal(out.code, 0, new TextDecoder().decode(out.stderr));
  const records = new Map<string, [string, string]>();
  for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
    const [tag, digest, mediaType] = line.split("\t");
    if (mediaType !== undefined) records.set(tag, [digest, mediaType]);
  }
  return records;
}

/** `skopeo copy --override-os linux --override-arch <arch>` of `reference` into a new dir:. */
async function skopeoCopyArch(dir: string, reference: string, arch: string): Promise<string> {
  const out = `${dir}/${crypto.randomUUID()}`;
  await skopeoCopy(reference, out, ["--override-os", "linux", "--override-arch", arch]);
  return out;
}

/** What one tag's checks run against. */
interface Setup {
  dir: string;
  registryUrl: string;
  mirror: MirrorProcess;
  /** Between the mirror and the registry: every upstream request, with its headers. */
  proxy: FaultProxy;
  podman: Podman;
}

/**
 * Pushes `flavour` as tag `state` (its own content), warms it with a full-Accept client when
 * `state` is "warm", then has a narrow client, skopeo and podman for arm64, skopeo for amd64 and a
 * client accepting no child ask for it, and checks the tag record was never rewritten.
 */
async function checkTag(
  t: Deno.TestContext,
  setup: Setup,
  { flavour, state }: { flavour: Flavour; state: "cold" | "warm" },
): Promise<void> {
  const { dir, mirror, proxy } = setup;
  const { repository } = flavour;
  const tag = state;
  const image = await flavour.push(setup.registryUrl, repository, tag);
  const amd64 = image.children.find((c) => c.platform.architecture === "amd64")!;
  const arm64 = image.children.find((c) => c.platform.architecture === "arm64")!;
  const url = `${mirror.url}/v2/quay.io/${repository}/manifests/${tag}`;
  const reference = `127.0.0.1:${mirror.port}/quay.io/${repository}:${tag}`;
  const tagRequests = (from: number) =>
    proxy.requests.slice(from).filter((r) => r.path === `/v2/${repository}/manifests/${tag}`);
  const seen = (from: number) =>
    JSON.stringify(tagRequests(from).map((r) => `${r.method} accept=${r.headers.accept}`));
  const names: Record<string, string> = {
    [image.digest]: "the index",
    [amd64.digest]: "the amd64 child",
    [arm64.digest]: "the arm64 child",
    [amd64.config.digest]: "the amd64 config",
    [arm64.config.digest]: "the arm64 config",
  };
  /** Asserts `actual` is `expected`, naming both (the index, a child, a config) when not. */
  const same = (actual: string | null | undefined, expected: string, what: string) =>
    equal(
      actual,
      expected,
      `${what}: ${names[actual ?? ""] ?? actual}, expected ${names[expected]} ${expected}`,
    );
  await Deno.mkdir(`${dir}/skopeo`, { recursive: true });

  if (state === "warm") {
    const warm = await headAndGet(url, FULL_ACCEPT.join(", "));
    deepEqual([warm.status, warm.digest, warm.type], [200, image.digest, image.mediaType]);
  }
  const start = proxy.requests.length;
  let afterFirst = start;

  await t.step(`(1) a client accepting only ${flavour.narrow}: the amd64 child`, async () => {
    const narrow = await headAndGet(url, flavour.narrow);
    afterFirst = proxy.requests.length;
    same(narrow.digest, amd64.digest, `HTTP ${narrow.status}, Docker-Content-Digest`);
    deepEqual(
      [narrow.status, narrow.type, narrow.length],
      [200, amd64.mediaType, String(amd64.size)],
    );
    deepEqual(narrow.bytes, amd64.bytes);
    const asked = tagRequests(start);
    ok(
      asked.every((r) => FULL_ACCEPT.every((type) => acceptedTypes(r.headers.accept).has(type))),
      `the tag was asked upstream without the full Accept list: ${seen(start)}`,
    );
    ok(asked.filter((r) => r.method === "GET").length <= 1, `GETs by tag: ${seen(start)}`);
    if (state === "cold") ok(asked.length >= 1, "a cold tag is resolved upstream");
    else equal(asked.length, 0, `a warm tag is not asked upstream again: ${seen(start)}`);
  });

  await t.step({
    name: "(2) skopeo --override-arch arm64: the arm64 child, its config and layer",
    ...skopeoTools,
    fn: async () => {
      const out = await skopeoCopyArch(`${dir}/skopeo`, reference, "arm64");
      same(sha256(await Deno.readFile(`${out}/manifest.json`)), arm64.digest, "manifest.json");
      const config = await Deno.readFile(`${out}/${arm64.config.digest.slice(7)}`);
      equal(sha256(config), arm64.config.digest);
      equal(JSON.parse(new TextDecoder().decode(config)).architecture, "arm64");
      const layer = await Deno.readFile(`${out}/${arm64.layer.digest.slice(7)}`);
      equal(sha256(layer), arm64.layer.digest);
      const inspected = JSON.parse(
        await runOk("skopeo", [
          "inspect",
          "--retry-times=0",
          "--tls-verify=false",
          "--override-os",
          "linux",
          "--override-arch",
          "arm64",
          `docker://${reference}`,
        ]),
      );
      deepEqual(
        [inspected.Digest, inspected.Architecture, inspected.Layers],
        [image.digest, "arm64", [arm64.layer.digest]],
      );
    },
  });

  await t.step({
    name: "(2) podman pull --arch arm64: the arm64 image",
    ...podmanTools,
    fn: async () => {
      const name = `quay.io/${repository}:${tag}`;
      const id = await setup.podman.pull(name, ["--os", "linux", "--arch", "arm64"]);
      same(`sha256:${id}`, arm64.config.digest, "podman image ID");
      const inspected = await setup.podman.podman([
        "image",
        "inspect",
        "--format",
        "{{.Architecture}} {{.Digest}}",
        name,
      ]);
      const [architecture, digest] = inspected.trim().split(" ");
      deepEqual([architecture, digest], ["arm64", image.digest]);
    },
  });

  await t.step({
    name: "(3) skopeo --override-arch amd64: the amd64 child and its config",
    ...skopeoTools,
    fn: async () => {
      const out = await skopeoCopyArch(`${dir}/skopeo`, reference, "amd64");
      same(sha256(await Deno.readFile(`${out}/manifest.json`)), amd64.digest, "manifest.json");
      const config = await Deno.readFile(`${out}/${amd64.config.digest.slice(7)}`);
      equal(sha256(config), amd64.config.digest);
    },
  });

  // Contract decision: a client that accepts none of the children's types gets 404
  // MANIFEST_UNKNOWN with a JSON error body (what Distribution answers for an OCI index), never
  // another child, a schema1 conversion (Distribution's answer for a list) or the index.
  await t.step(`a client accepting only ${flavour.unmatched}: 404 MANIFEST_UNKNOWN`, async () => {
    const none = await headAndGet(url, flavour.unmatched);
    deepEqual([none.status, none.digest], [404, null]);
    const body = JSON.parse(new TextDecoder().decode(none.bytes));
    equal(body.errors[0].code, "MANIFEST_UNKNOWN");
  });

  await t.step("the tag record was never rewritten", async (t) => {
    // Read first: a client accepting the index could repair a rewritten record.
    await t.step("cache ls: the index digest and media type", async () => {
      const records = await cacheLs(`${dir}/config.json`);
      const [digest, mediaType] = records.get(`quay.io/${repository}:${tag}`) ?? [];
      same(digest, image.digest, "the tag record's digest");
      equal(mediaType, image.mediaType);
    });
    await t.step("a GET with the full Accept list: the index, from the cache", async () => {
      const from = proxy.requests.length;
      const full = await headAndGet(url, FULL_ACCEPT.join(", "), true);
      deepEqual(
        [full.status, full.digest, full.type, full.length, full.xCache],
        [200, image.digest, image.mediaType, String(image.size), "HIT"],
      );
      deepEqual(full.bytes, image.bytes);
      equal(tagRequests(from).length, 0, `served from the tag record: ${seen(from)}`);
    });
    await t.step({
      name: "skopeo inspect --raw: the index",
      ...skopeoTools,
      fn: async () => {
        const raw = await runOk("skopeo", [
          "inspect",
          "--retry-times=0",
          "--tls-verify=false",
          "--raw",
          `docker://${reference}`,
        ]);
        same(sha256(new TextEncoder().encode(raw)), image.digest, "skopeo inspect --raw");
      },
    });
    await t.step("no client after the first asked upstream for the tag", () => {
      equal(tagRequests(afterFirst).length, 0, seen(afterFirst));
    });
  });
}

Deno.test({
  name: "tags: a client accepting one manifest type never switches a multi-arch tag",
  ...skipUnless(["docker-registry"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "tags_test_" });
    const registry = await startRegistry({ dir: `${dir}/quay` });
    const proxy = startFaultProxy(registry.url);
    let mirror: MirrorProcess | undefined;
    try {
      mirror = await startMirror(dir, {
        registries: { "quay.io": { upstream: proxy.url } },
        cache: { dir: `${dir}/cache`, tagTtl: "10m" },
        upstream: { idleTimeout: "5s", retries: 1 },
      });
      const podman = await podmanClient(
        `${dir}/podman`,
        registriesConf([{ prefix: "quay.io", mirrors: [`127.0.0.1:${mirror.port}/quay.io`] }]),
      );
      const setup = { dir, registryUrl: registry.url, mirror, proxy, podman };
      for (const flavour of FLAVOURS) {
        for (const state of ["cold", "warm"] as const) {
          await t.step(
            `${flavour.title}, ${state} cache`,
            (t) => checkTag(t, setup, { flavour, state }),
          );
        }
      }
    } finally {
      await mirror?.stop();
      await proxy.stop();
      await registry.stop();
      await cleanUpDir(dir);
    }
  },
});
