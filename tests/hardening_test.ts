// End to end: nosniff on every response, listings typed by the mirror (never by an upstream), Host
// headers that cannot rewrite the routed path, and the healthcheck the container runs.

import bcrypt from "bcryptjs";
import { deepEqual, equal, match, ok } from "node:assert/strict";
import { type MirrorProcess, startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { MediaType, pushImage, sha256 } from "./fixtures/seed.ts";
import { runTask } from "./fixtures/task.ts";
import { makeCerts } from "./fixtures/tls.ts";
import { freePort, skipUnless } from "./fixtures/tools.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const HTML = "text/html; charset=utf-8";
/** A tag list that is also a script, if a browser were let to read it as HTML. */
const SCRIPT_TAGS = JSON.stringify({
  name: "org/page",
  tags: ["<script>alert(document.domain)</script>"],
});
const D = `sha256:${"a".repeat(64)}`;

/**
 * A stand-in upstream for what no real registry does: tags lists and referrers answered as
 * `text/html` with script in them (the attack). Everything else: 404.
 */
function startHtmlUpstream() {
  const seen: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (request) => {
    const { pathname } = new URL(request.url);
    seen.push(pathname);
    if (pathname === "/v2/") return Response.json({});
    if (pathname.endsWith("/tags/list") || pathname.includes("/referrers/")) {
      const body = request.method === "HEAD" ? null : SCRIPT_TAGS;
      return new Response(body, { headers: { "content-type": HTML } });
    }
    return Response.json({ errors: [{ code: "NAME_UNKNOWN", message: "no" }] }, { status: 404 });
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    seen,
    [Symbol.asyncDispose]: () => server.shutdown(),
  };
}

/** One HTTP/1.1 request written as is on a TCP connection: status, headers and body. */
async function rawRequest(port: number, head: string) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(`${head}\r\nConnection: close\r\n\r\n`));
  const text = await new Response(conn.readable).text();
  const [top, ...rest] = text.split("\r\n\r\n");
  const [statusLine, ...lines] = top.split("\r\n");
  const headers = new Headers(lines.map((l) => {
    const at = l.indexOf(":");
    return [l.slice(0, at).trim(), l.slice(at + 1).trim()] as [string, string];
  }));
  const raw = rest.join("\r\n\r\n");
  const chunked = headers.get("transfer-encoding")?.toLowerCase() === "chunked";
  return { status: Number(statusLine.split(" ")[1]), headers, body: chunked ? dechunk(raw) : raw };
}

/** A chunked body's bytes (as text): size lines and their chunks, up to the zero-size chunk. */
function dechunk(raw: string): string {
  let body = "";
  for (let at = 0;;) {
    const eol = raw.indexOf("\r\n", at);
    const size = parseInt(raw.slice(at, eol), 16);
    if (!(size > 0)) return body;
    body += raw.slice(eol + 2, eol + 2 + size);
    at = eol + 2 + size + 2;
  }
}

/** GETs (or HEADs) `url`, reading the whole body. */
async function get(url: string, method = "GET") {
  const response = await fetch(url, { method });
  const bytes = new Uint8Array(await response.arrayBuffer());
  return { status: response.status, headers: response.headers, bytes };
}

Deno.test({
  name: "hardening: nosniff everywhere, our own Content-Type, Host cannot rewrite the path",
  ...skipUnless(["docker-registry"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "hardening_test_" });
    const registry = await startRegistry({ dir: `${dir}/hub` });
    await using html = startHtmlUpstream();
    let mirror: MirrorProcess | undefined;
    try {
      const image = await pushImage(registry.url, "library/app", "1", {
        files: { "app.txt": "hardening\n" },
        format: "oci",
      });
      mirror = await startMirror(dir, {
        registries: {
          "docker.io": { upstream: registry.url },
          "ghcr.io": { upstream: html.url },
          "quay.io": { upstream: html.url },
        },
        upstream: { retries: 0 },
      });
      const base = mirror.url;

      await t.step("every response carries nosniff: content, errors, ops", async () => {
        const cases: [string, string, number][] = [
          ["GET", "/v2/", 200],
          ["GET", "/v2/library/app/manifests/1", 200],
          ["HEAD", "/v2/library/app/manifests/1", 200],
          ["GET", `/v2/library/app/blobs/${image.layer.digest}`, 200],
          ["HEAD", `/v2/library/app/blobs/${image.layer.digest}`, 200],
          ["GET", "/v2/library/app/tags/list", 200],
          ["GET", "/v2/library/none/manifests/1", 404],
          ["HEAD", "/v2/library/none/manifests/1", 404],
          ["GET", `/v2/library/app/blobs/${D}`, 404],
          ["GET", "/v2/library/app/manifests/-bad", 404],
          ["DELETE", "/v2/library/app/manifests/1", 405],
          ["GET", "/nowhere", 404],
          ["GET", "/healthz", 200],
          ["GET", "/readyz", 200],
          ["GET", "/metrics", 200],
          ["GET", "/api/stats", 200],
          ["GET", "/", 200],
        ];
        for (const [method, path, status] of cases) {
          const got = await get(`${base}${path}`, method);
          equal(got.status, status, `${method} ${path}`);
          equal(got.headers.get("x-content-type-options"), "nosniff", `${method} ${path}`);
        }
        const manifest = await get(`${base}/v2/library/app/manifests/1`);
        equal(manifest.headers.get("content-type"), MediaType.ociManifest);
        deepEqual(manifest.bytes, image.bytes);
        const blob = await get(`${base}/v2/library/app/blobs/${image.layer.digest}`);
        equal(blob.headers.get("content-type"), "application/octet-stream");
        equal(sha256(blob.bytes), image.layer.digest);
        const error = await get(`${base}/v2/library/none/manifests/1`);
        match(error.headers.get("content-type") ?? "", /^application\/json/);
      });

      await t.step("the dashboard keeps a strict Content-Security-Policy", async () => {
        const page = await get(`${base}/`);
        const csp = page.headers.get("content-security-policy") ?? "";
        match(csp, /default-src 'none'/);
        match(csp, /frame-ancestors 'none'/);
        ok(!csp.includes("unsafe-inline"), csp);
      });

      await t.step("an upstream's text/html never reaches the client", async () => {
        const upstream = await get(`${html.url}/v2/org/page/tags/list`);
        equal(upstream.headers.get("content-type"), HTML, "the stand-in answers HTML");
        const cases: [string, string, string][] = [
          ["GET", "/v2/ghcr.io/org/page/tags/list", "application/json"],
          ["HEAD", "/v2/ghcr.io/org/page/tags/list", "application/json"],
          ["GET", "/v2/ghcr.io/org/page/tags/list?n=5", "application/json"],
          ["GET", `/v2/ghcr.io/org/page/referrers/${D}`, MediaType.ociIndex],
          ["HEAD", `/v2/ghcr.io/org/page/referrers/${D}`, MediaType.ociIndex],
        ];
        for (const [method, path, type] of cases) {
          const got = await get(`${base}${path}`, method);
          equal(got.status, 200, `${method} ${path}`);
          equal(got.headers.get("content-type"), type, `${method} ${path}`);
          equal(got.headers.get("x-content-type-options"), "nosniff", `${method} ${path}`);
        }
        // Passed through unchanged: the bytes are the upstream's, only their type is ours.
        const list = await get(`${base}/v2/ghcr.io/org/page/tags/list`);
        equal(new TextDecoder().decode(list.bytes), SCRIPT_TAGS);
      });

      await t.step("a Host that is not host[:port] is 400 and routes nowhere", async () => {
        const port = mirror!.port;
        const control = await rawRequest(port, `GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:${port}`);
        deepEqual([control.status, control.body], [200, "{}"]);
        const before = html.seen.length;
        const cases: [string, string][] = [
          ["x/healthz?", "/v2/"],
          ["h/quay", "/v2/org/page/tags/list"],
          ["x/api/stats#", "/v2/library/app/manifests/1"],
          ["u@h", "/v2/"],
        ];
        for (const [host, target] of cases) {
          const got = await rawRequest(port, `GET ${target} HTTP/1.1\r\nHost: ${host}`);
          equal(got.status, 400, `Host: ${host} -> ${got.status} ${got.body}`);
          equal(got.headers.get("x-content-type-options"), "nosniff");
          const body = JSON.parse(got.body);
          equal(body.errors[0].code, "UNSUPPORTED");
          match(body.errors[0].message, /invalid Host header/);
        }
        deepEqual(html.seen.slice(before), [], "a request with a bad Host went upstream");
      });
    } finally {
      await mirror?.stop();
      await registry.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "hardening: over HTTP/2 the :authority picks the registry in hosts, as Host does",
  ...skipUnless(["openssl"]),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "hardening_h2_" });
    await using html = startHtmlUpstream();
    let mirror: MirrorProcess | undefined;
    const certs = await makeCerts(`${dir}/certs`);
    try {
      mirror = await startMirror(dir, {
        registries: {
          "docker.io": { upstream: `http://127.0.0.1:${freePort()}` },
          "quay.io": { upstream: html.url },
        },
        hosts: { localhost: "quay.io" },
        tls: { cert: certs.cert, key: certs.key },
        upstream: { retries: 0 },
      });
      const url = `https://localhost:${mirror.port}/v2/org/page/tags/list`;
      for (const http1 of [true, false]) {
        using client = Deno.createHttpClient({
          caCerts: [await Deno.readTextFile(certs.caCert)],
          http1,
          http2: !http1,
        });
        const response = await fetch(url, { client });
        equal(await response.text(), SCRIPT_TAGS, http1 ? "HTTP/1.1" : "HTTP/2");
      }
      deepEqual(html.seen, ["/v2/org/page/tags/list", "/v2/org/page/tags/list"]);
    } finally {
      await mirror?.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** `registry-mirror healthcheck` as users run it: `deno task start healthcheck --config F`. */
async function healthcheck(configPath: string, env: Record<string, string> = {}) {
  const args = env.MIRROR_CONFIG ? ["healthcheck"] : ["healthcheck", "--config", configPath];
  return await runTask(args, env);
}

/** The `ENV` settings of the Dockerfile's final stage, as the container's processes see them. */
function imageEnv(dockerfile: string): Record<string, string> {
  const final = dockerfile.slice(dockerfile.lastIndexOf("\nFROM "));
  const env: Record<string, string> = {};
  for (const [, name, value] of final.matchAll(/^ENV\s+(\w+)[=\s](.*)$/gm)) env[name] = value;
  return env;
}

Deno.test({
  name: "hardening: healthcheck passes on a TLS + htpasswd mirror, in the image's environment",
  ...skipUnless(["openssl"]),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "hardening_health_" });
    let mirror: MirrorProcess | undefined;
    try {
      const certs = await makeCerts(`${dir}/certs`);
      await Deno.writeTextFile(`${dir}/htpasswd`, `alice:${bcrypt.hashSync("secret-pw", 4)}\n`);
      mirror = await startMirror(dir, {
        tls: { cert: certs.cert, key: certs.key },
        auth: { htpasswd: `${dir}/htpasswd` },
      });
      const config = `${dir}/config.json`;
      const up = await healthcheck(config);
      equal(up.code, 0, up.stderr);
      // The container: the Dockerfile's ENV, the config named by MIRROR_CONFIG.
      const env = imageEnv(await Deno.readTextFile(`${ROOT}Dockerfile`));
      const image = await healthcheck(config, { ...env, MIRROR_CONFIG: config });
      equal(image.code, 0, `with ${JSON.stringify(env)}: ${image.stderr}`);
      await mirror.stop();
      mirror = undefined;
      const down = await healthcheck(config);
      equal(down.code, 1);
      match(down.stderr, new RegExp(`https://127\\.0\\.0\\.1:\\d+/healthz`));
    } finally {
      await mirror?.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("hardening: healthcheck passes on an IPv6 [::1] listen, fails when it is down", async () => {
  const dir = await Deno.makeTempDir({ prefix: "hardening_ipv6_" });
  const port = freePort();
  const config = `${dir}/config.json`;
  await Deno.writeTextFile(
    config,
    JSON.stringify({ listen: `[::1]:${port}`, cache: { dir: `${dir}/cache` } }),
  );
  const server = new Deno.Command(Deno.execPath(), {
    args: ["task", "--quiet", "start", "serve", "--config", config],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const output = server.output();
  try {
    let ready = false;
    for (let i = 0; i < 300 && !ready; i++) {
      try {
        const response = await fetch(`http://[::1]:${port}/healthz`);
        await response.body?.cancel();
        ready = response.ok;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
    ok(ready, "the mirror did not answer on [::1]");
    const up = await healthcheck(config);
    equal(up.code, 0, up.stderr);
  } finally {
    stopTask(server.pid);
    await output;
  }
  const down = await healthcheck(config);
  equal(down.code, 1);
  match(down.stderr, new RegExp(`http://\\[::1\\]:${port}/healthz`));
  await Deno.remove(dir, { recursive: true });
});

/** Stops `deno task` and the server it runs (the task runner does not forward SIGTERM). */
function stopTask(pid: number): void {
  const children = Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).trim();
  for (const child of children.split(/\s+/).filter(Boolean)) Deno.kill(Number(child), "SIGTERM");
  Deno.kill(pid, "SIGTERM");
}

Deno.test("hardening: the Dockerfile builds from files that exist and lets the config decide", async () => {
  const dockerfile = await Deno.readTextFile(`${ROOT}Dockerfile`);
  const build = dockerfile.slice(0, dockerfile.lastIndexOf("\nFROM "));
  for (const [, sources] of build.matchAll(/^COPY\s+(.+)\s+\S+$/gm)) {
    for (const source of sources.split(/\s+/)) {
      ok(await Deno.stat(`${ROOT}${source}`).then(() => true, () => false), `COPY ${source}`);
    }
  }
  deepEqual(Object.keys(imageEnv(dockerfile)).filter((k) => k === "MIRROR_LISTEN"), []);
  // /data is created in the build stage and copied owned by nonroot before it becomes a volume.
  match(build, /^RUN mkdir -p \/rootfs\/data$/m);
  const final = dockerfile.slice(build.length);
  const chown = final.search(/^COPY --from=build --chown=65532:65532 \/rootfs\/ \/$/m);
  ok(chown > 0 && chown < final.search(/^VOLUME \/data$/m), "/data is not owned by nonroot");
  match(final, /^USER nonroot$/m);
  match(final, /^HEALTHCHECK .*CMD \["\/usr\/local\/bin\/registry-mirror", "healthcheck"\]$/m);
});
