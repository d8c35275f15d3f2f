// Fuzz, end to end: generated and mutated requests (fetch and raw HTTP/1.x) for a bounded time
// against the mirror started as users do, in front of a real Distribution holding real images.
// Every answer is a success that carries what it claims or an OCI JSON error, never a 500; the
// process stays up within bounded memory; only the configured upstream is ever dialled, and only
// with valid registry paths. FUZZ_SEED and FUZZ_SECONDS repeat or lengthen a run.

import { deepEqual, equal, ok } from "node:assert/strict";
import { DEFAULT_REGISTRIES } from "../src/config.ts";
import { runCleanup } from "./fixtures/cleanup.ts";
import { startEgressTrap } from "./fixtures/clients/egress_trap.ts";
import { connectionTrap, FROM_MIRROR, PROXY_FORM } from "./fixtures/connection_trap.ts";
import { startFaultProxy } from "./fixtures/fault_proxy.ts";
import type { FuzzTargets, RawCase } from "./fixtures/fuzz.ts";
import {
  describeAnswer,
  groupFindings,
  runFuzz,
  runRaw,
  summarizeLogs,
} from "./fixtures/fuzz_check.ts";
import { startMirror } from "./fixtures/mirror.ts";
import { latin1 } from "./fixtures/raw_http.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { pushImage, pushIndex, pushLargeBlobImage, pushManifest } from "./fixtures/seed.ts";
import { skipUnless } from "./fixtures/tools.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? crypto.getRandomValues(new Uint32Array(1))[0]);
const SECONDS = Number(Deno.env.get("FUZZ_SECONDS") ?? 30);
const CONCURRENCY = 16;
const MAX_RSS = 300 * 1024 * 1024;
const BIG_BLOB = 3 * 1024 * 1024;
const EXTRA_TAGS = ["2", "3", "latest", "v1.0-rc_1"];
const NAME = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
const UPSTREAM_PATH =
  /^\/v2\/(.+)\/(manifests\/[a-zA-Z0-9_][\w.-]{0,127}|manifests\/sha(?:256:[a-f0-9]{64}|512:[a-f0-9]{128})|blobs\/sha(?:256:[a-f0-9]{64}|512:[a-f0-9]{128})|tags\/list|referrers\/sha(?:256:[a-f0-9]{64}|512:[a-f0-9]{128}))(?:\?(.*))?$/;

/** Inputs the fuzzer found that once broke a rule: each must now get an OCI JSON error. */
const REGRESSIONS: [string, string][] = [
  // A Host header that makes request.url unparseable: 500 text/plain "internal error" from
  // Deno.serve's onError (the handler's `new URL(request.url)` throws before its try).
  ["Host with a space", "GET /v2/ HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n"],
  ["Host with a bad port", "GET /v2/ HTTP/1.1\r\nHost: x:99999\r\nConnection: close\r\n\r\n"],
  ["Host with only a port", "GET /v2/ HTTP/1.1\r\nHost: :80\r\nConnection: close\r\n\r\n"],
  ["HTTP/1.0 with a bad Host", "HEAD /v2/library/app/manifests/1 HTTP/1.0\r\nHost: [\r\n\r\n"],
  // The same Host with another method: 500 UNKNOWN "internal error" (application/json), logged
  // `unexpected error serving "POST" "/": TypeError: Invalid URL: 'http://a b/v2/'` from
  // opsMethodError's `new Request(request.url)` in src/app.ts.
  ["POST with a bad Host", "POST /v2/ HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n"],
  ["DELETE of a probe, bad port", "DELETE /healthz HTTP/1.1\r\nHost: x:99999\r\n\r\n"],
];

/** Why an upstream request is not a valid registry read of a valid repository, or undefined. */
function invalidUpstream(r: { method: string; path: string; headers: Record<string, string> }) {
  if (r.method !== "GET" && r.method !== "HEAD") return "not a read";
  const m = UPSTREAM_PATH.exec(r.path);
  if (!m) return "not a registry path";
  if (!NAME.test(m[1]) || m[1].length > 255) return "invalid repository name";
  const query = new URLSearchParams(m[3] ?? "");
  const allowed = m[2] === "tags/list"
    ? ["n", "last"]
    : m[2].startsWith("referrers/")
    ? ["artifactType"]
    : [];
  if ([...query.keys()].some((k) => !allowed.includes(k))) return "unexpected query";
  if ("x-fuzz-canary" in r.headers) return "a client header was forwarded";
  if ("authorization" in r.headers) return "a client's authorization was forwarded";
  return undefined;
}

Deno.test({
  name: "fuzz: generated and malformed requests get a success or an OCI JSON error, never a 500",
  ...skipUnless(["docker-registry"]),
  async fn(t) {
    console.log(`fuzz seed ${SEED} for ${SECONDS} s (repeat: FUZZ_SEED=${SEED} FUZZ_SECONDS=...)`);
    const cleanup: (() => unknown)[] = [];
    try {
      const dir = await Deno.makeTempDir({ prefix: "fuzz_test_" });
      cleanup.push(() => Deno.remove(dir, { recursive: true }));
      const registry = await startRegistry({ dir: `${dir}/upstream` });
      cleanup.push(registry.stop);
      const app = await pushImage(registry.url, "library/app", "1", {
        files: { "app.txt": "fuzzed" },
        format: "docker",
      });
      // More tags, so that tags lists are paged (with a Link to the next page).
      for (const tag of EXTRA_TAGS) {
        await pushManifest(registry.url, "library/app", tag, app.bytes, app.mediaType);
      }
      const multi = await pushIndex(registry.url, "multi/arch", "v1", [
        { platform: { os: "linux", architecture: "amd64" }, files: { "a": "amd64" } },
        { platform: { os: "linux", architecture: "arm64" }, files: { "a": "arm64" } },
      ], "oci-index");
      // Two big blobs and a cache smaller than both: fetching one evicts the other, so fills,
      // pins and eviction keep running under the fuzz.
      const big = await Promise.all(["big/one", "big/two"].map(async (name) => {
        const pushed = await pushLargeBlobImage(registry.url, name, "1", BIG_BLOB, { dir });
        const response = await fetch(`${registry.url}/v2/${name}/blobs/${pushed.blob.digest}`);
        return { name, pushed, blob: new Uint8Array(await response.arrayBuffer()) };
      }));
      const proxy = startFaultProxy(registry.url);
      cleanup.push(proxy.stop);
      // Nothing but the proxy may be dialled: another loopback address, another port of this
      // one, and (as the mirror's HTTP(S)_PROXY) the egress trap for every other host.
      const far = connectionTrap("127.0.0.2");
      const near = connectionTrap("127.0.0.1");
      const egress = startEgressTrap();
      cleanup.push(far.stop, near.stop, egress.stop);
      const others = Object.keys(DEFAULT_REGISTRIES).filter((name) => name !== "docker.io");
      // The egress trap is the mirror's HTTP(S) proxy. Deno's own upgrade check (`deno task` and
      // `deno run`, not a compiled binary) would dial dl.deno.land through it about once a day.
      const env = { ...egress.env, DENO_NO_UPDATE_CHECK: "1" };
      const mirror = await startMirror(dir, {
        registries: {
          "docker.io": { upstream: proxy.url },
          "registry.example.com": { upstream: proxy.url, aliases: ["ex"] },
          ...Object.fromEntries(others.map((name) => [name, false])),
        },
        hosts: { "ex.mirror.test": "registry.example.com" },
        cache: { dir: `${dir}/cache`, tagTtl: "2s", maxSize: "5MiB" },
        upstream: { retries: 1, idleTimeout: "10s" },
      }, env);
      cleanup.push(mirror.stop);
      const mirrorAddr = { hostname: "127.0.0.1", port: mirror.port };

      const images = [app, ...multi.children];
      const contents = new Map<string, Uint8Array>([
        [multi.digest, multi.bytes],
        ...big.flatMap(({ pushed, blob }) =>
          [
            [pushed.digest, pushed.bytes],
            [pushed.config.digest, pushed.config.bytes],
            [pushed.blob.digest, blob],
          ] as [string, Uint8Array][]
        ),
        ...images.flatMap((i) =>
          [
            [i.digest, i.bytes],
            [i.config.digest, i.config.bytes],
            [i.layer.digest, i.layer.bytes],
          ] as [string, Uint8Array][]
        ),
      ]);
      const targets: FuzzTargets = {
        mirror: `127.0.0.1:${mirror.port}`,
        traps: [far.addr, near.addr, near.addr.replace("127.0.0.1", "localhost")],
        registries: ["docker.io", "registry.example.com", "ex", "docker"],
        hosts: ["ex.mirror.test", "EX.MIRROR.TEST", `ex.mirror.test:${mirror.port}`],
        repos: ["app", "library/app", "multi/arch", "big/one", "library/nothere"],
        tags: ["1", "v1", "nothere", ...EXTRA_TAGS],
        digests: [...contents.keys()],
        valid: [
          ...["library/app", "multi/arch"].flatMap((name) =>
            [
              [name, "tags/list"],
              [name, `manifests/${name === "multi/arch" ? "v1" : "1"}`],
              [name, `referrers/${multi.digest}`],
            ] as [string, string][]
          ),
          ["multi/arch", `manifests/${multi.digest}`],
          ...big.flatMap(({ name, pushed }) =>
            [
              [name, "manifests/1"],
              [name, `blobs/${pushed.blob.digest}`],
              [name, `blobs/${pushed.blob.digest}`],
              [name, `blobs/${pushed.config.digest}`],
            ] as [string, string][]
          ),
          ...images.flatMap((i) => {
            const name = i === app ? "library/app" : "multi/arch";
            return [
              [name, `manifests/${i.digest}`],
              [name, `blobs/${i.config.digest}`],
              [name, `blobs/${i.layer.digest}`],
            ] as [string, string][];
          }),
        ],
      };

      await t.step("regressions: each input found once gets an OCI JSON error", async () => {
        const failures: string[] = [];
        for (const [what, text] of REGRESSIONS) {
          const method = text.slice(0, text.indexOf(" "));
          const c: RawCase = {
            via: "raw",
            id: -1,
            what,
            bytes: latin1(text),
            methods: [method],
            malformed: false,
            halfClose: false,
          };
          for (const [, problem, answer] of await runRaw(c, mirrorAddr, contents)) {
            if (problem) {
              failures.push(
                `${what}: ${JSON.stringify(text)} -> ${problem}` +
                  (answer ? `: ${describeAnswer(answer)}` : ""),
              );
            }
          }
        }
        deepEqual(failures, []);
      });

      await t.step(`fuzz for ${SECONDS} s, ${CONCURRENCY} at a time`, async () => {
        const started = performance.now();
        const stats = await runFuzz({
          seed: SEED,
          seconds: SECONDS,
          concurrency: CONCURRENCY,
          targets,
          contents,
        });
        const health = await fetch(`${mirror.url}/healthz`);
        await health.body?.cancel();
        const rss = mirror.peakRss();
        const histogram = Object.entries(stats.statuses).sort(([a], [b]) => a.localeCompare(b))
          .map(([k, v]) => `${k}:${v}`).join(" ");
        console.log(
          `fuzz seed ${SEED}: ${stats.sent} requests (${stats.fetches} fetch, ${stats.raws} raw, ` +
            `${stats.refused} refused by fetch) in ${
              ((performance.now() - started) / 1000).toFixed(1)
            } s; ` +
            `statuses ${histogram}; upstream requests ${proxy.requests.length}; ` +
            `peak RSS ${(rss / 1048576).toFixed(0)} MB; findings ${stats.findings.length}`,
        );
        const logs = mirror.logs();
        for (const line of summarizeLogs(logs)) console.log(line);
        const report = groupFindings(stats.findings);
        const errorLogs = logs.filter((l) => l.level === "ERROR" || l.level === "FATAL");
        if (report.length > 0) {
          console.log(`fuzz findings (seed ${SEED}):\n${report.join("\n")}`);
          console.log(`mirror error logs (${errorLogs.length}, first 3):`);
          for (const l of errorLogs.slice(0, 3)) console.log(JSON.stringify(l).slice(0, 400));
        }
        equal(report.length, 0, `${stats.findings.length} findings (seed ${SEED}), printed above`);
        ok(stats.sent >= 100, `only ${stats.sent} requests sent`);
        equal(health.status, 200, "the mirror still answers /healthz");
        ok(rss < MAX_RSS, `peak RSS ${rss} bytes`);
        deepEqual(errorLogs.map((l) => l.message), [], "no error logged by the mirror");
        const strays = [
          ...near.heads.filter((h) => !FROM_MIRROR.test(h)),
          ...egress.seen.filter((l) => !PROXY_FORM.test(l)),
        ];
        for (const stray of strays) {
          console.log(`not from the mirror, ignored: ${JSON.stringify(stray.slice(0, 300))}`);
        }
        const dialled = [
          ...far.heads,
          ...near.heads.filter((h) => FROM_MIRROR.test(h)),
          ...egress.seen.filter((l) => PROXY_FORM.test(l)),
        ];
        deepEqual(dialled, [], `the mirror dialled a trap (${far.addr}, ${near.addr} or a proxy)`);
        const invalid = proxy.requests.map((r) => [invalidUpstream(r), r.method, r.path])
          .filter(([problem]) => problem);
        for (const i of invalid.slice(0, 10)) {
          console.log(`invalid upstream request: ${JSON.stringify(i)}`);
        }
        deepEqual(invalid, [], "only valid registry reads reached the upstream");
        ok(proxy.requests.length > 0, "valid requests reached the upstream");
      });
    } finally {
      await runCleanup(cleanup);
    }
  },
});
