// End to end: a full cache disk (a 30 MiB tmpfs) is not an upstream failure. Blobs larger than the
// disk reach clients whole from one upstream GET, a full disk makes /readyz unready while pulls
// pass through uncached, and caching resumes once space is freed.

import { equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { startChunkedProxy } from "./fixtures/chunked_proxy.ts";
import { runCleanup } from "./fixtures/cleanup.ts";
import { expectFacts } from "./fixtures/facts.ts";
import { startFaultProxy } from "./fixtures/fault_proxy.ts";
import { startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { MediaType, pushImage, pushLargeBlobImage, sha256 } from "./fixtures/seed.ts";
import { fillDisk, mountTmpfs, tmpfsUnavailable, unmountTmpfs } from "./fixtures/tmpfs.ts";
import { isCI, skipUnless } from "./fixtures/tools.ts";
import { waitFor } from "./fixtures/wait.ts";

const TMPFS_SIZE = "30m";
/** Twice the tmpfs: the disk fills half way through the fill. */
const HUGE = 60 << 20;
const DISK_ERRORS = "registry_mirror_disk_errors_total";

const tools = skipUnless(["docker-registry", "mount", "umount"]);
const noTmpfs = tools.ignore ? undefined : tmpfsUnavailable();
if (noTmpfs !== undefined && !isCI()) console.warn(`skipping disk tests: ${noTmpfs}`);

/** A response's status and what its body was: digest and size, or the error that cut it. */
async function received(response: Response): Promise<Received> {
  const status = response.status;
  const cache = response.headers.get("x-cache");
  if (status !== 200) return { status, cache, body: { error: await response.text() } };
  const hash = createHash("sha256");
  let size = 0;
  try {
    for await (const chunk of response.body!) {
      hash.update(chunk);
      size += chunk.length;
    }
  } catch (e) {
    return { status, cache, body: { error: `cut after ${size} bytes: ${e}` } };
  }
  return { status, cache, body: { digest: `sha256:${hash.digest("hex")}`, size } };
}

interface Received {
  status: number;
  cache: string | null;
  body: { digest: string; size: number } | { error: string };
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** The sum of a metric's samples on /metrics, or undefined when it is not exposed. */
async function metric(mirrorUrl: string, name: string): Promise<number | undefined> {
  const text = await (await fetch(`${mirrorUrl}/metrics`)).text();
  const samples = text.split("\n").filter((line) =>
    line.startsWith(name) && [" ", "{"].includes(line[name.length])
  );
  if (samples.length === 0) return undefined;
  return samples.reduce((sum, line) => sum + Number(line.split(" ").at(-1)), 0);
}

async function readyz(mirrorUrl: string): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`${mirrorUrl}/readyz`);
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch { /* reported as text */ }
  return { status: response.status, body };
}

async function healthz(mirrorUrl: string): Promise<number> {
  const response = await fetch(`${mirrorUrl}/healthz`);
  await response.body?.cancel();
  return response.status;
}

Deno.test({
  name: "disk: a full cache disk is not an upstream failure",
  ignore: tools.ignore || (noTmpfs !== undefined && !isCI()),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "disk_test_" });
    const cacheDir = `${dir}/cache`;
    const cleanup: (() => unknown)[] = [() => Deno.remove(dir, { recursive: true })];
    try {
      await mountTmpfs(cacheDir, TMPFS_SIZE);
      cleanup.push(() => unmountTmpfs(cacheDir));
      const registry = await startRegistry({ dir: `${dir}/quay` });
      cleanup.push(() => registry.stop());
      const proxy = startFaultProxy(registry.url);
      cleanup.push(() => proxy.stop());
      const chunked = startChunkedProxy(registry.url);
      cleanup.push(() => chunked.stop());
      const mirror = await startMirror(dir, {
        registries: { "quay.io": { upstream: proxy.url }, "ghcr.io": { upstream: chunked.url } },
        cache: { dir: cacheDir },
        upstream: { idleTimeout: "5s", retries: 1 },
      });
      cleanup.push(() => mirror.stop());
      const url = (path: string) => `${mirror.url}/v2/quay.io${path}`;
      const blobFile = (digest: string) => `${cacheDir}/blobs/sha256/${digest.slice(7)}`;
      /** Waits (bounded) until cache/tmp/ is empty; what is left there when it is not. */
      const tmpLeft = async (): Promise<string[]> => {
        const list = async () =>
          (await Array.fromAsync(Deno.readDir(`${cacheDir}/tmp`)).catch(() => []))
            .map((e) => e.name);
        await waitFor("cache/tmp/ to be empty", async () => (await list()).length === 0)
          .catch(() => {});
        return await list();
      };
      /** Messages of the log lines that name `digest`, which they show as <digest>. */
      const about = (digest: string) =>
        mirror.logs().filter((line) => JSON.stringify(line).includes(digest))
          .map((l) => `${l.level} ${l.message}`.replaceAll(digest, "<digest>"));
      /** At most three lines, then how many more: a failure's diff stays readable. */
      const few = (lines: string[]) =>
        lines.length > 3 ? [...lines.slice(0, 3), `... ${lines.length - 3} more`] : lines;
      /** "logged", or every line about `digest` when none says the disk stopped its caching. */
      const diskLogged = async (digest: string) =>
        await waitFor(
          "a log line about the digest that mentions the disk",
          () => about(digest).some((m) => /disk/i.test(m)) && "logged",
          { timeoutMs: 5000 },
        ).catch(() => few(about(digest)));
      /** Lines that blame upstream (a mismatch, a broken body, a resume) for a disk error. */
      const blamingUpstream = (digest: string) =>
        few(
          about(digest).filter((m) =>
            /mismatch|digest_invalid|resuming|upstream (sent|body|failed|error)|ended at/i.test(m)
          ),
        );

      await t.step("a blob twice the disk's size: 200, whole, one upstream GET", async () => {
        const huge = (await pushLargeBlobImage(registry.url, "org/huge", "1", HUGE, { dir })).blob;
        const path = `/v2/org/huge/blobs/${huge.digest}`;
        const first = await received(await fetch(url(`/org/huge/blobs/${huge.digest}`)));
        const facts = {
          status: first.status,
          body: first.body,
          leftInTmp: await tmpLeft(),
          upstreamGets: proxy.requests.filter((r) => r.method === "GET" && r.path === path).length,
          diskLine: await diskLogged(huge.digest),
          linesBlamingUpstream: blamingUpstream(huge.digest),
          diskErrorsCounted: ((await metric(mirror.url, DISK_ERRORS)) ?? 0) > 0,
          digestMismatches: (await metric(mirror.url, "registry_mirror_digest_mismatches_total")) ??
            0,
          fillResumes: (await metric(mirror.url, "registry_mirror_fill_resumes_total")) ?? 0,
          committed: await exists(blobFile(huge.digest)),
        };
        expectFacts(facts, {
          status: 200,
          body: huge,
          leftInTmp: [],
          upstreamGets: 1,
          diskLine: "logged",
          linesBlamingUpstream: [],
          diskErrorsCounted: true,
          digestMismatches: 0,
          fillResumes: 0,
          committed: false,
        });
        const again = await received(await fetch(url(`/org/huge/blobs/${huge.digest}`)));
        expectFacts(
          {
            status: again.status,
            hit: again.cache === "HIT",
            body: again.body,
            tmp: await tmpLeft(),
          },
          { status: 200, hit: false, body: huge, tmp: [] },
        );
      });

      await t.step(
        "a fill without Content-Length past the disk's size reaches the client",
        async () => {
          const image = await pushLargeBlobImage(registry.url, "org/chunked", "1", HUGE, { dir });
          const direct = await fetch(`${chunked.url}/v2/org/chunked/blobs/${image.config.digest}`);
          equal(direct.headers.get("content-length"), null, "the fixture strips Content-Length");
          equal(sha256(new Uint8Array(await direct.arrayBuffer())), image.config.digest);
          const path = `/v2/org/chunked/blobs/${image.blob.digest}`;
          const from = chunked.requests.length;
          const got = await received(
            await fetch(`${mirror.url}/v2/ghcr.io/org/chunked/blobs/${image.blob.digest}`),
          );
          expectFacts({
            status: got.status,
            body: got.body,
            leftInTmp: await tmpLeft(),
            upstreamGets: chunked.requests.slice(from).filter((r) => r === `GET ${path}`).length,
            diskLine: await diskLogged(image.blob.digest),
            linesBlamingUpstream: blamingUpstream(image.blob.digest),
            committed: await exists(blobFile(image.blob.digest)),
          }, {
            status: 200,
            body: image.blob,
            leftInTmp: [],
            upstreamGets: 1,
            diskLine: "logged",
            linesBlamingUpstream: [],
            committed: false,
          });
        },
      );

      const small = await pushImage(registry.url, "org/small", "1", {
        files: { "data.bin": crypto.getRandomValues(new Uint8Array(65536)) },
        format: "oci",
      });
      const manifestGet = () =>
        fetch(url("/org/small/manifests/1"), { headers: { accept: MediaType.ociManifest } });
      const manifestFacts = async () => {
        const response = await manifestGet();
        const bytes = new Uint8Array(await response.arrayBuffer());
        return {
          status: response.status,
          cache: response.headers.get("x-cache"),
          header: response.headers.get("docker-content-digest"),
          digest: sha256(bytes),
        };
      };

      await t.step("a full disk: /readyz 503, pulls pass through uncached", async () => {
        const filled = await fillDisk(`${cacheDir}/filler`);
        ok(filled > 0, "the filler took the space left");
        const ready = await waitFor(
          "/readyz to answer 503 on a full disk",
          async () => {
            const r = await readyz(mirror.url);
            return r.status === 503 && r;
          },
          { timeoutMs: 5000 },
        ).catch(() => readyz(mirror.url));
        const body = ready.body as { status?: unknown; problem?: unknown };
        const manifest = await manifestFacts();
        const layer = await received(await fetch(url(`/org/small/blobs/${small.layer.digest}`)));
        expectFacts({
          readyz: ready.status,
          readyzStatus: body?.status,
          readyzProblem: typeof body?.problem === "string" && /cache|disk/i.test(body.problem)
            ? "names the cache or the disk"
            : body?.problem,
          manifest: { status: manifest.status, header: manifest.header, digest: manifest.digest },
          layer: {
            status: layer.status,
            body: layer.body,
            ...("error" in layer.body ? { log: few(about(small.layer.digest)) } : {}),
          },
          healthz: await healthz(mirror.url),
        }, {
          readyz: 503,
          readyzStatus: "unready",
          readyzProblem: "names the cache or the disk",
          manifest: { status: 200, header: small.digest, digest: small.digest },
          layer: { status: 200, body: { digest: small.layer.digest, size: small.layer.size } },
          healthz: 200,
        });
      });

      await t.step("space freed: /readyz 200 again, blobs and manifests cached again", async () => {
        await Deno.remove(`${cacheDir}/filler`);
        const ready = await waitFor(
          "/readyz to answer 200 once space is freed",
          async () => (await readyz(mirror.url)).status === 200,
        ).catch(() => false);
        const config = `/org/small/blobs/${small.config.digest}`;
        const first = await received(await fetch(url(config)));
        await waitFor("the blob to be committed", () => exists(blobFile(small.config.digest)), {
          timeoutMs: 5000,
        }).catch(() => {});
        const second = await received(await fetch(url(config)));
        await (await manifestGet()).body?.cancel();
        const manifest = await manifestFacts();
        const blob = { digest: small.config.digest, size: small.config.size };
        expectFacts({
          ready,
          first: { status: first.status, body: first.body },
          second: { cache: second.cache, body: second.body },
          manifest: { cache: manifest.cache, digest: manifest.digest },
          healthz: await healthz(mirror.url),
        }, {
          ready: true,
          first: { status: 200, body: blob },
          second: { cache: "HIT", body: blob },
          manifest: { cache: "HIT", digest: small.digest },
          healthz: 200,
        });
      });
    } finally {
      await runCleanup(cleanup);
    }
  },
});
