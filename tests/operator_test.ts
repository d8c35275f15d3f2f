// End to end: what operators do beside a serving mirror. Stray files in the cache directory are
// skipped, not fatal; prefetch goes through the running server so that it learns what was added;
// `cache du|ls` only read; `cache gc` refuses while a server owns the cache (only the server
// evicts, and never what a client is downloading); alone, prefetch and gc do the work themselves.

import { deepEqual, equal, match, notEqual, ok } from "node:assert/strict";
import { runCleanup } from "./fixtures/cleanup.ts";
import { expectFacts } from "./fixtures/facts.ts";
import { holdDownload } from "./fixtures/held_download.ts";
import { startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import {
  MediaType,
  type PushedLargeBlobImage,
  pushImage,
  pushLargeBlobImage,
  sha256,
  sha256File,
} from "./fixtures/seed.ts";
import { runTask, type TaskResult } from "./fixtures/task.ts";
import { skipUnless } from "./fixtures/tools.ts";
import { waitFor } from "./fixtures/wait.ts";

/** Files an operator (or a tool) leaves in the cache directory. */
const STRAY_FILES = [
  "blobs/.keep",
  "blobs/sha256/README",
  "manifests/README",
  "tags/README",
  "links/.keep",
  "README",
];
const STRAY_DIR = "blobs/sha256/zz";
/**
 * Blob sizes of the commands suite. The held blob is 12 MiB because loopback TCP buffers take
 * about 4 MB of a response its client does not read: a 3 MiB body would be sent whole (and
 * unpinned) at once. a + b + c fit in cache.maxSize; adding d does not, and evicting the least
 * recently used unpinned objects (b, then c) brings the cache back under it without touching a.
 */
const SIZES: Record<string, number> = {
  a: 12 << 20,
  b: 3 << 20,
  c: 6 << 20,
  d: 6 << 20,
  e: 3 << 20,
};
const MAX_SIZE = "24MB";
const MAX_BYTES = 24_000_000;

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** Files under `cache/blobs` and `cache/manifests`: how many, and their bytes. */
async function objectsOnDisk(cacheDir: string): Promise<{ files: number; bytes: number }> {
  const total = { files: 0, bytes: 0 };
  async function walk(dir: string): Promise<void> {
    for await (const entry of Deno.readDir(dir)) {
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory) await walk(path);
      else if (entry.isFile) {
        total.files++;
        total.bytes += (await Deno.stat(path)).size;
      }
    }
  }
  for (const kind of ["blobs", "manifests"]) await walk(`${cacheDir}/${kind}`).catch(() => {});
  return total;
}

function explain(run: TaskResult): string {
  return `exit ${run.code}\nstdout: ${run.stdout}\nstderr: ${run.stderr}`;
}

async function bodyDigest(response: Response): Promise<string> {
  return sha256(new Uint8Array(await response.arrayBuffer()));
}

Deno.test({
  name: "operator: stray files in the cache directory are skipped, not fatal",
  ...skipUnless(["docker-registry"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "operator_stray_test_" });
    const cacheDir = `${dir}/cache`;
    const cleanup: (() => unknown)[] = [() => Deno.remove(dir, { recursive: true })];
    try {
      for (const file of STRAY_FILES) {
        const path = `${cacheDir}/${file}`;
        await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
        await Deno.writeTextFile(path, "left here by the operator\n");
      }
      await Deno.mkdir(`${cacheDir}/${STRAY_DIR}`, { recursive: true });
      const registry = await startRegistry({ dir: `${dir}/quay` });
      cleanup.push(() => registry.stop());
      const image = await pushImage(registry.url, "org/app", "1", {
        files: { "app.txt": "stray files test" },
        format: "oci",
      });
      const mirror = await startMirror(dir, {
        registries: { "quay.io": { upstream: registry.url } },
        cache: { dir: cacheDir },
      });
      cleanup.push(() => mirror.stop());
      const config = `${dir}/config.json`;
      const url = (path: string) => `${mirror.url}/v2/quay.io/org/app${path}`;
      const healthy = async () => {
        const response = await fetch(`${mirror.url}/healthz`);
        await response.body?.cancel();
        return response.status;
      };

      await t.step(
        "the index rebuild warns about a skipped entry and the server lives",
        async () => {
          await waitFor(
            "the `cache index loaded` log line",
            () => mirror.logs().find((l) => /cache index loaded/.test(String(l.message))),
            { timeoutMs: 10_000 },
          ).catch((e) => {
            throw new Error(`${e.message}; the mirror wrote:\n${mirror.output()}`);
          });
          const warnings = mirror.logs().filter((l) =>
            /^WARN/i.test(String(l.level)) && /README|\.keep|\bzz\b/.test(JSON.stringify(l))
          );
          ok(warnings.length > 0, `a warning names a skipped entry; the log:\n${mirror.output()}`);
          equal(await healthy(), 200, "still serving after the index rebuild");
        },
      );

      await t.step("pulls are served with the right digests", async () => {
        const manifest = await fetch(url("/manifests/1"), {
          headers: { accept: MediaType.ociManifest },
        });
        equal(manifest.status, 200);
        equal(await bodyDigest(manifest), image.digest);
        for (const blob of [image.config, image.layer]) {
          const response = await fetch(url(`/blobs/${blob.digest}`));
          equal(response.status, 200);
          equal(await bodyDigest(response), blob.digest);
        }
        const layerFile = `${cacheDir}/blobs/sha256/${image.layer.digest.slice(7)}`;
        await waitFor("the layer on disk", () => exists(layerFile), { timeoutMs: 5000 })
          .catch(() => {});
        const hit = await fetch(url(`/blobs/${image.layer.digest}`));
        equal(hit.headers.get("x-cache"), "HIT", "cached despite the stray files");
        equal(await bodyDigest(hit), image.layer.digest);
        equal(await healthy(), 200);
      });

      await t.step("cache du and cache ls exit 0 and count only real objects", async () => {
        const du = await runTask(["cache", "du", "--config", config]);
        equal(du.code, 0, explain(du));
        match(du.stdout, /^blobs\t2\t/m, "the config and the layer; no README, no zz");
        match(du.stdout, /^manifests\t1\t/m);
        const ls = await runTask(["cache", "ls", "--config", config]);
        equal(ls.code, 0, explain(ls));
        match(ls.stdout, new RegExp(`^quay\\.io/org/app:1\\t${image.digest}\\t`, "m"));
        match(ls.stdout, /^1 tags$/m);
      });

      await t.step("the operator's files are left where they were", async () => {
        for (const file of [...STRAY_FILES, STRAY_DIR]) {
          ok(await exists(`${cacheDir}/${file}`), `${file} is still there`);
        }
      });
    } finally {
      await runCleanup(cleanup);
    }
  },
});

Deno.test({
  name: "operator: prefetch, cache du, ls and gc beside a serving mirror; only the server evicts",
  ...skipUnless(["docker-registry"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "operator_commands_test_" });
    const cacheDir = `${dir}/cache`;
    const cleanup: (() => unknown)[] = [() => Deno.remove(dir, { recursive: true })];
    try {
      const registry = await startRegistry({ dir: `${dir}/quay` });
      cleanup.push(() => registry.stop());
      const images: Record<string, PushedLargeBlobImage> = {};
      for (const name of ["a", "b", "c", "d", "e"]) {
        images[name] = await pushLargeBlobImage(registry.url, `org/${name}`, "1", SIZES[name], {
          dir,
        });
      }
      const mirror = await startMirror(dir, {
        registries: { "quay.io": { upstream: registry.url } },
        cache: { dir: cacheDir, maxSize: MAX_SIZE },
      });
      cleanup.push(() => mirror.stop());
      const config = `${dir}/config.json`;
      const blobFile = (digest: string) => `${cacheDir}/blobs/sha256/${digest.slice(7)}`;
      const blobUrl = (name: string, digest: string) =>
        `${mirror.url}/v2/quay.io/org/${name}/blobs/${digest}`;

      // The server caches a, then b (15.7 MB of 24 MB): a is the least recently used.
      for (const name of ["a", "b"]) {
        const image = images[name];
        const manifest = await fetch(`${mirror.url}/v2/quay.io/org/${name}/manifests/1`, {
          headers: { accept: MediaType.dockerManifest },
        });
        equal(await bodyDigest(manifest), image.digest);
        for (const blob of [image.config, image.blob]) {
          equal(await bodyDigest(await fetch(blobUrl(name, blob.digest))), blob.digest);
        }
        await waitFor(`org/${name}'s blob on disk`, () => exists(blobFile(image.blob.digest)));
      }

      // A client starts downloading a's blob and stops reading after the first bytes: pinned.
      const heldPath = `/v2/quay.io/org/a/blobs/${images.a.blob.digest}`;
      const servedWhole = () =>
        mirror.logs().filter((l) => {
          const p = (l.properties ?? {}) as Record<string, unknown>;
          return p.path === heldPath && p.cache === "HIT";
        }).length > 0;
      const held = await holdDownload(`${mirror.url}${heldPath}`);
      cleanup.push(() => held.close());
      equal(held.status, 200);
      equal(held.headers.get("x-cache"), "HIT");
      ok(held.read < SIZES.a, "only part of the blob was read");

      const logsBeforePrefetch = mirror.logs().length;
      await t.step("prefetch beside the server exits 0 and goes through the server", async () => {
        const run = await runTask([
          "prefetch",
          "--config",
          config,
          "quay.io/org/c:1",
          "quay.io/org/d:1",
        ]);
        equal(run.code, 0, explain(run));
        match(run.stdout, /prefetched 2 of 2 images/);
        for (const name of ["c", "d"]) {
          const image = images[name];
          const wanted = [
            `org/${name}/manifests/1`,
            `org/${name}/blobs/${image.config.digest}`,
            `org/${name}/blobs/${image.blob.digest}`,
          ];
          await waitFor(`the server's log lines for prefetching org/${name}`, () => {
            const paths = mirror.logs().map((l) =>
              String((l.properties as Record<string, unknown> | undefined)?.path ?? "")
            );
            return wanted.every((w) => paths.some((p) => p.includes(w)));
          }, { timeoutMs: 5000 }).catch((e) => {
            throw new Error(`${e.message}: the server did not serve the prefetch`);
          });
        }
      });

      await t.step("the server evicts down to maxSize, sparing the held download", async () => {
        const evicted = await waitFor(
          "the server's `evicted` log line after the prefetch",
          () =>
            mirror.logs().slice(logsBeforePrefetch).find((l) => /evicted/.test(String(l.message))),
          { timeoutMs: 10_000 },
        ).catch(() => undefined);
        const underMaxSize = await waitFor(
          `the cache on disk to be at most ${MAX_SIZE}`,
          async () => (await objectsOnDisk(cacheDir)).bytes <= MAX_BYTES,
          { timeoutMs: 5000 },
        ).catch(() => false);
        const onDisk = await objectsOnDisk(cacheDir);
        const facts = {
          serverEvicted: evicted !== undefined,
          underMaxSize,
          heldStillBeingSent: !servedWhole(),
          heldBlobOnDisk: await exists(blobFile(images.a.blob.digest)),
        };
        expectFacts(
          facts,
          {
            serverEvicted: true,
            underMaxSize: true,
            heldStillBeingSent: true,
            heldBlobOnDisk: true,
          },
          `${onDisk.bytes} bytes in ${onDisk.files} files under blobs/ and manifests/`,
        );
      });

      await t.step("cache du and cache ls beside the server delete nothing", async () => {
        const before = await objectsOnDisk(cacheDir);
        const du = await runTask(["cache", "du", "--config", config]);
        equal(du.code, 0, explain(du));
        match(du.stdout, /^total\t\d+\t\d+\t/m);
        const ls = await runTask(["cache", "ls", "--config", config]);
        equal(ls.code, 0, explain(ls));
        match(ls.stdout, /^quay\.io\/org\/a:1\t/m);
        deepEqual(await objectsOnDisk(cacheDir), before);
      });

      await t.step(
        "cache gc beside the serving mirror refuses: only the server evicts",
        async () => {
          const before = await objectsOnDisk(cacheDir);
          const gc = await runTask(["cache", "gc", "--config", config, "--max-size", "1MB"]);
          notEqual(gc.code, 0, explain(gc));
          const said = gc.stdout + gc.stderr;
          match(said, /server/i, "the message says a server runs on this cache");
          match(said, /running/i, "the message says a server runs on this cache");
          deepEqual(await objectsOnDisk(cacheDir), before, "gc deleted nothing");
        },
      );

      await t.step("the held download completes with the right digest", async () => {
        deepEqual(await held.finish(), images.a.blob);
      });

      await t.step("with no server, prefetch runs alone and cache gc evicts", async () => {
        await mirror.stop();
        const run = await runTask(["prefetch", "--config", config, "quay.io/org/e:1"]);
        equal(run.code, 0, explain(run));
        match(run.stdout, /prefetched 1 of 1 images/);
        deepEqual(await sha256File(blobFile(images.e.blob.digest)), images.e.blob);
        const gc = await runTask(["cache", "gc", "--config", config, "--max-size", "1MB"]);
        equal(gc.code, 0, explain(gc));
        match(gc.stdout, /evicted [1-9]\d* objects/);
        const left = await objectsOnDisk(cacheDir);
        ok(left.bytes <= 1_000_000, `${left.bytes} bytes left after gc --max-size 1MB`);
      });
    } finally {
      await runCleanup(cleanup);
    }
  },
});
