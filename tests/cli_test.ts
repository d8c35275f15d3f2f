// End to end: the subcommands (`prefetch`, `cache ls|du|gc`, `config check`) through
// `deno task start <subcommand>`, graceful shutdown on SIGTERM, and Deno's OpenTelemetry export.

import { deepEqual, equal, match, ok } from "node:assert/strict";
import { startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { pushImage, pushIndex, pushLargeBlobImage, sha256 } from "./fixtures/seed.ts";
import { runTask } from "./fixtures/task.ts";
import { skipUnless } from "./fixtures/tools.ts";

Deno.test({
  name: "cli: prefetch warms every platform; cache ls, du and gc; config check masks secrets",
  ...skipUnless(["docker-registry"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "cli_test_" });
    const registry = await startRegistry({ dir: `${dir}/quay` });
    const configPath = `${dir}/cli.json`;
    await Deno.writeTextFile(
      configPath,
      JSON.stringify({
        registries: { "quay.io": { upstream: registry.url, username: "u", password: "s3cret-pw" } },
        cache: { dir: `${dir}/cache` },
      }),
    );
    try {
      const multi = await pushIndex(registry.url, "org/multi", "1", [
        { platform: { os: "linux", architecture: "amd64" }, files: { a: "amd64" } },
        { platform: { os: "linux", architecture: "arm64" }, files: { a: "arm64" } },
      ], "oci-index");
      const single = await pushImage(registry.url, "org/single", "v1", {
        files: { s: "single" },
        format: "docker",
      });

      await t.step("prefetch pulls the index, every child and every blob", async () => {
        const run = await runTask([
          "prefetch",
          "--config",
          configPath,
          "quay.io/org/multi:1",
          "quay.io/org/single:v1",
        ]);
        equal(run.code, 0, run.stderr);
        match(run.stdout, /prefetched 2 of 2 images: 4 manifests, 6 blobs/);
        match(
          run.stdout,
          /^quay\.io\/org\/multi:1: 3 manifests \(linux\/amd64, linux\/arm64\), 4 blobs/m,
        );
        const blobs = [...Deno.readDirSync(`${dir}/cache/blobs/sha256`)].map((e) =>
          `sha256:${e.name}`
        );
        const expected = [single, ...multi.children].flatMap((
          i,
        ) => [i.config.digest, i.layer.digest]);
        deepEqual(blobs.sort(), expected.sort());
        const failed = await runTask(["prefetch", "--config", configPath, "quay.io/org/none:1"]);
        equal(failed.code, 1);
        match(failed.stdout, /error: quay\.io\/org\/none:1: manifest 1: 404/);
      });

      await t.step("a prefetched image is served with the upstream gone", async () => {
        await registry.stop();
        const mirror = await startMirror(dir, { cache: { dir: `${dir}/cache` } }, {
          MIRROR_CONFIG: configPath,
        });
        try {
          for (const child of multi.children) {
            for (const path of [`manifests/${child.digest}`, `blobs/${child.layer.digest}`]) {
              const r = await fetch(`${mirror.url}/v2/quay.io/org/multi/${path}`);
              equal(r.headers.get("x-cache"), "HIT", path);
              const digest = path.split("/")[1];
              equal(sha256(new Uint8Array(await r.arrayBuffer())), digest);
            }
          }
        } finally {
          await mirror.stop();
        }
      });

      await t.step("cache ls and du describe what is cached", async () => {
        const ls = await runTask(["cache", "ls", "--config", configPath]);
        equal(ls.code, 0, ls.stderr);
        match(ls.stdout, new RegExp(`quay\\.io/org/multi:1\\t${multi.digest}\\t`));
        match(ls.stdout, new RegExp(`quay\\.io/org/single:v1\\t${single.digest}\\t`));
        match(ls.stdout, /^2 tags$/m);
        const du = await runTask(["cache", "du", "--config", configPath]);
        const blobBytes = [...Deno.readDirSync(`${dir}/cache/blobs/sha256`)]
          .reduce((sum, e) => sum + Deno.statSync(`${dir}/cache/blobs/sha256/${e.name}`).size, 0);
        match(du.stdout, new RegExp(`^blobs\\t6\\t${blobBytes}\\t`, "m"));
        match(du.stdout, /^manifests\t4\t\d+\t/m);
        const lsJson = await runTask(["cache", "ls", "--json", "--config", configPath]);
        equal(lsJson.code, 0, lsJson.stderr);
        deepEqual(
          JSON.parse(lsJson.stdout).tags.map((t: { image: string }) => t.image),
          ["quay.io/org/multi:1", "quay.io/org/single:v1"],
        );
        const duJson = await runTask(["cache", "du", "--json", "--config", configPath]);
        deepEqual(JSON.parse(duJson.stdout).blobs, { objects: 6, bytes: blobBytes });
      });

      await t.step("cache gc evicts down to --max-size", async () => {
        const gc = await runTask(["cache", "gc", "--config", configPath, "--max-size", "0B"]);
        equal(gc.code, 0, gc.stderr);
        match(gc.stdout, /evicted 10 objects .*cache now 0 objects/);
        deepEqual([...Deno.readDirSync(`${dir}/cache/blobs/sha256`)], []);
      });

      await t.step("config check prints the effective config with secrets masked", async () => {
        const check = await runTask(["config", "check", "--config", configPath]);
        equal(check.code, 0, check.stderr);
        const printed = JSON.parse(check.stdout);
        deepEqual(printed.registries["quay.io"].password, "***");
        equal(printed.registries["quay.io"].upstream, `${registry.url}/`);
        ok(!check.stdout.includes("s3cret-pw"));
        equal(Object.keys(printed.registries).length, 9);
        const usage = await runTask(["nonsense"]);
        equal(usage.code, 2);
        match(usage.stdout, /usage: registry-mirror/);
      });
    } finally {
      await registry.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "shutdown: SIGTERM lets in-flight responses finish, then exits cleanly",
  ...skipUnless(["docker-registry"]),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "shutdown_test_" });
    const registry = await startRegistry({ dir: `${dir}/quay` });
    const mirror = await startMirror(dir, {
      registries: { "quay.io": { upstream: registry.url } },
    });
    try {
      const big = await pushLargeBlobImage(registry.url, "org/big", "1", 32 << 20, { dir });
      const response = await fetch(`${mirror.url}/v2/quay.io/org/big/blobs/${big.blob.digest}`);
      const reader = response.body!.getReader();
      await reader.read();
      const stopped = mirror.stop(); // SIGTERM to the server while the body is being read
      await new Promise((resolve) => setTimeout(resolve, 300));
      const refused = await fetch(`${mirror.url}/v2/`).then((r) => r.body?.cancel(), (e) => e);
      ok(refused instanceof TypeError, "no new connections once shutting down");
      let size = 0;
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        size += value.byteLength;
        await new Promise((resolve) => setTimeout(resolve, 1)); // a slowish client
      }
      ok(size > (32 << 20) - (1 << 20), `the in-flight body finished (${size} bytes)`);
      await stopped;
      match(mirror.output(), /"message":"stopped"/);
      deepEqual([...Deno.readDirSync(`${dir}/cache/tmp`)], [], "no half-written object left");
    } finally {
      await mirror.stop();
      await registry.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("otel: OTEL_DENO=true exports traces and metrics of the mirror's requests", async () => {
  const received: { path: string; body: Uint8Array }[] = [];
  const collector = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    received.push({
      path: new URL(req.url).pathname,
      body: new Uint8Array(await req.arrayBuffer()),
    });
    return Response.json({});
  });
  const dir = await Deno.makeTempDir({ prefix: "otel_test_" });
  const mirror = await startMirror(dir, {}, {
    OTEL_DENO: "true",
    OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${collector.addr.port}`,
    OTEL_SERVICE_NAME: "registry-mirror-test",
    OTEL_METRIC_EXPORT_INTERVAL: "500",
  });
  try {
    const r = await fetch(`${mirror.url}/v2/`);
    await r.body?.cancel();
    await mirror.stop(); // flushes the exporters
    const traces = received.filter((r) => r.path === "/v1/traces");
    ok(traces.length > 0, `paths: ${received.map((r) => r.path)}`);
    const text = new TextDecoder().decode(
      traces.map((t) => t.body).reduce((a, b) => new Uint8Array([...a, ...b])),
    );
    ok(text.includes("registry-mirror-test"), "the service name is on the spans");
    ok(text.includes("GET"), "the request span is exported");
    ok(received.some((r) => r.path === "/v1/metrics"));
  } finally {
    await mirror.stop();
    await collector.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
