// End to end: a TLS mirror with htpasswd and token client auth, repository policy and limits, a
// bad-input corpus that must never reach an upstream, redirects that must never reach internal
// addresses, certificate reload, and no secret in the logs of the whole run.

import bcrypt from "bcryptjs";
import { deepEqual, equal, match, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { startFaultProxy } from "./fixtures/fault_proxy.ts";
import { startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { pushImage, sha256 } from "./fixtures/seed.ts";
import { makeCerts, presentedCertificate } from "./fixtures/tls.ts";
import { freePort, skipUnless } from "./fixtures/tools.ts";

const PASSWORD = "wonderland-pw-42";
const TOKEN = "machine-token-abcdef0123456789";
const SIGNATURE = "SIGNEDsecret0123456789";
const BLOB = new TextEncoder().encode("blob behind a signed CDN URL");
const BLOB_DIGEST = `sha256:${createHash("sha256").update(BLOB).digest("hex")}`;
const d = (n: number) => `sha256:${String(n).repeat(64)}`;

Deno.test({
  name: "security: TLS, client auth, policy, limits, bad input, redirects, secrets",
  ...skipUnless(["docker-registry", "skopeo", "openssl", "curl"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "security_test_" });
    const certs = await makeCerts(`${dir}/certs`);
    await Deno.writeTextFile(`${dir}/htpasswd`, `alice:${bcrypt.hashSync(PASSWORD, 4)}\n`);
    const registry = await startRegistry({ dir: `${dir}/hub` });
    const proxy = startFaultProxy(registry.url);
    // A listener on another loopback address: nothing may ever connect to it.
    const trapPort = freePort();
    const trap = Deno.listen({ hostname: "127.0.0.2", port: trapPort });
    let trapped = 0;
    (async () => {
      for await (const conn of trap) {
        trapped++;
        conn.close();
      }
    })();
    const cdn = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      () => new Response(BLOB),
    );
    const closedPort = freePort();
    const redirects: Record<string, string> = {
      [d(1)]: `http://127.0.0.2:${trapPort}/blob`,
      [d(2)]: `http://[::1]:${trapPort}/blob`,
      [d(3)]: "file:///etc/passwd",
      [BLOB_DIGEST]: `http://127.0.0.1:${cdn.addr.port}/blob?X-Amz-Signature=${SIGNATURE}`,
      [d(4)]: `http://127.0.0.1:${closedPort}/blob?X-Amz-Signature=${SIGNATURE}`,
    };
    const redirector = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
      const digest = new URL(req.url).pathname.split("/").pop()!;
      const location = redirects[digest];
      return location
        ? new Response(null, { status: 307, headers: { location } })
        : new Response("{}", { status: 404 });
    });
    const mirror = await startMirror(
      dir,
      {
        registries: {
          "docker.io": { upstream: proxy.url },
          "gcr.io": { upstream: `http://127.0.0.1:${redirector.addr.port}` },
        },
        tls: { cert: `${dir}/live.crt`, key: `${dir}/live.key`, reloadCheck: "300ms" },
        auth: { htpasswd: `${dir}/htpasswd`, tokens: [TOKEN] },
        policy: { deny: ["docker.io/blocked/**"] },
        limits: { maxHeaderBytes: 8192, maxUrlLength: 2048 },
      },
      {},
      async () => {
        await Deno.copyFile(certs.cert, `${dir}/live.crt`);
        await Deno.copyFile(certs.key, `${dir}/live.key`);
      },
    );
    const client = Deno.createHttpClient({ caCerts: [await Deno.readTextFile(certs.caCert)] });
    const base = `https://127.0.0.1:${mirror.port}`;
    const alice = { authorization: `Basic ${btoa(`alice:${PASSWORD}`)}` };
    const get = (path: string, headers: Record<string, string> = alice, method = "GET") =>
      fetch(`${base}${path}`, { client, headers, method });
    try {
      const app = await pushImage(registry.url, "library/app", "1", {
        files: { "app.txt": "secured" },
        format: "docker",
      });

      await t.step("TLS with HTTP/2 by ALPN; a client without the CA is refused", async () => {
        const out = await new Deno.Command("curl", {
          args: [
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--cacert",
            certs.caCert,
            "-u",
            `alice:${PASSWORD}`,
            `${base}/v2/`,
          ],
        }).output();
        equal(new TextDecoder().decode(out.stdout), "2 200");
        const untrusted = await fetch(`${base}/v2/`).then((r) => r.body?.cancel(), (e) => e);
        ok(untrusted instanceof TypeError);
      });

      await t.step(
        "client auth: Basic challenge, htpasswd users, tokens; probes stay open",
        async () => {
          const before = proxy.requests.length;
          const none = await get("/v2/library/app/manifests/1", {});
          equal(none.status, 401);
          equal(
            none.headers.get("www-authenticate"),
            'Basic realm="registry-mirror", charset="UTF-8"',
          );
          await none.body?.cancel();
          const wrong = await get("/v2/", { authorization: `Basic ${btoa("alice:nope")}` });
          equal(wrong.status, 401);
          await wrong.body?.cancel();
          equal(proxy.requests.length, before, "nothing reached the upstream without credentials");
          const ok200 = await get("/v2/library/app/manifests/1", alice);
          equal(sha256(new Uint8Array(await ok200.arrayBuffer())), app.digest);
          const byToken = await get("/v2/library/app/manifests/1", {
            authorization: `Bearer ${TOKEN}`,
          });
          equal(byToken.status, 200);
          await byToken.body?.cancel();
          for (
            const [path, status] of [["/healthz", 200], ["/readyz", 200], ["/metrics", 401], [
              "/",
              401,
            ]] as const
          ) {
            const r = await get(path, {});
            equal(r.status, status, path);
            await r.body?.cancel();
          }
        },
      );

      await t.step("skopeo pulls over TLS with the CA and credentials", async () => {
        await Deno.mkdir(`${dir}/skopeo-certs`);
        await Deno.copyFile(certs.caCert, `${dir}/skopeo-certs/ca.crt`);
        const out = await new Deno.Command("skopeo", {
          args: [
            "copy",
            "--retry-times=0",
            `--src-cert-dir=${dir}/skopeo-certs`,
            `--src-creds=alice:${PASSWORD}`,
            `docker://127.0.0.1:${mirror.port}/app:1`,
            `dir:${dir}/pulled`,
          ],
        }).output();
        equal(out.code, 0, new TextDecoder().decode(out.stderr));
        equal(sha256(await Deno.readFile(`${dir}/pulled/manifest.json`)), app.digest);
        const denied = await new Deno.Command("skopeo", {
          args: [
            "inspect",
            "--retry-times=0",
            `--cert-dir=${dir}/skopeo-certs`,
            `docker://127.0.0.1:${mirror.port}/app:1`,
          ],
        }).output();
        equal(denied.code, 1, "no credentials: refused");
      });

      await t.step("bad input: the documented error, and no upstream request", async () => {
        const before = proxy.requests.length;
        const corpus: [string, Record<string, string>, number, string][] = [
          ["/v2/library/..%2F..%2Fetc/manifests/1", {}, 400, "NAME_INVALID"],
          ["/v2/library/app%2F..%2Fx/blobs/" + d(5), {}, 400, "NAME_INVALID"],
          ["/v2/library/APP/manifests/1", {}, 400, "NAME_INVALID"],
          ["/v2/library/app/manifests/.hidden", {}, 404, "MANIFEST_UNKNOWN"],
          ["/v2/library/app/manifests/sha256:zz", {}, 400, "DIGEST_INVALID"],
          ["/v2/library/app/blobs/sha256:" + "a".repeat(63), {}, 400, "DIGEST_INVALID"],
          ["/v2/library/app/manifests/" + "t".repeat(200), {}, 404, "MANIFEST_UNKNOWN"],
          ["/v2/library/app/blobs/uploads/" + "u".repeat(40), {}, 404, "BLOB_UPLOAD_UNKNOWN"],
          ["/v2/library/app/referrers/sha256:zz", {}, 400, "DIGEST_INVALID"],
          ["/v2/library/app/tags/list?n=-1", {}, 400, "PAGINATION_NUMBER_INVALID"],
          ["/v2/app/manifests/1?ns=169.254.169.254", {}, 404, "NAME_UNKNOWN"],
          ["/v2/app/manifests/1?ns=localhost:22", {}, 404, "NAME_UNKNOWN"],
          ["/v2/127.0.0.1:22/app/manifests/1", {}, 404, "NAME_UNKNOWN"],
          ["/metadata.google.internal/v2/app/manifests/1", {}, 404, "NAME_UNKNOWN"],
          ["/v2/blocked/app/manifests/1", {}, 403, "DENIED"],
          ["/v2/" + "a/".repeat(1100) + "manifests/1", {}, 414, "UNSUPPORTED"],
          ["/v2/library/app/manifests/1", { "x-padding": "p".repeat(9000) }, 431, "UNSUPPORTED"],
        ];
        for (const [path, headers, status, code] of corpus) {
          const r = await get(path, { ...alice, ...headers });
          equal(r.status, status, path.slice(0, 80));
          equal((await r.json()).errors[0].code, code, path.slice(0, 80));
        }
        const write = await get("/v2/library/app/manifests/1", alice, "PUT");
        equal(write.status, 405);
        await write.body?.cancel();
        deepEqual(proxy.requests.slice(before), [], "no bad request reached the upstream");
        const policy = await get("/v2/blocked/app/manifests/1");
        match(
          (await policy.json()).errors[0].message,
          /denied by rule "deny: docker\.io\/blocked\/\*\*"/,
        );
      });

      await t.step("a Host header naming an internal service is only a lookup key", async () => {
        const before = proxy.requests.length;
        const out = await new Deno.Command("curl", {
          args: [
            "-s",
            "--cacert",
            certs.caCert,
            "-u",
            `alice:${PASSWORD}`,
            "-H",
            `Host: 127.0.0.2:${trapPort}`,
            `${base}/v2/library/app/manifests/1`,
          ],
        }).output();
        equal(sha256(out.stdout), app.digest, "served by the configured docker.io upstream");
        ok(proxy.requests.length >= before);
        equal(trapped, 0);
      });

      await t.step("upstream redirects to internal addresses or non-http are refused", async () => {
        for (const digest of [d(1), d(2), d(3)]) {
          const r = await get(`/v2/gcr.io/org/app/blobs/${digest}`);
          equal(r.status, 502, digest);
          const error = (await r.json()).errors[0];
          equal(error.code, "DENIED");
          match(error.message, /^refusing to follow a redirect to /);
        }
        await new Promise((resolve) => setTimeout(resolve, 200));
        equal(trapped, 0, "no connection to the internal address was ever made");
      });

      await t.step("signed CDN redirects work, and their queries never reach a log", async () => {
        const r = await get(`/v2/gcr.io/org/app/blobs/${BLOB_DIGEST}`);
        equal(r.status, 200);
        deepEqual(new Uint8Array(await r.arrayBuffer()), BLOB);
        const broken = await get(`/v2/gcr.io/org/app/blobs/${d(4)}`);
        equal(broken.status, 502);
        const message = (await broken.json()).errors[0].message;
        ok(!message.includes(SIGNATURE), message);
      });

      await t.step("a renewed certificate is served without a restart", async () => {
        match(await presentedCertificate(mirror.port), /CN ?= ?server$/);
        const renewed = await makeCerts(`${dir}/certs`, "renewed");
        await Deno.copyFile(renewed.key, `${dir}/live.key`);
        await Deno.copyFile(renewed.cert, `${dir}/live.crt`);
        let subject = "";
        for (let i = 0; i < 30 && !/renewed/.test(subject); i++) {
          await new Promise((resolve) => setTimeout(resolve, 200));
          subject = await presentedCertificate(mirror.port);
        }
        match(subject, /CN ?= ?renewed$/, mirror.output().slice(-3000));
        const r = await get("/v2/");
        equal(r.status, 200);
        await r.body?.cancel();
      });

      await t.step("no secret appears anywhere in the mirror's logs", () => {
        const output = mirror.output();
        for (const secret of [PASSWORD, TOKEN, SIGNATURE, btoa(`alice:${PASSWORD}`)]) {
          equal(output.includes(secret), false, `a secret reached the log`);
        }
        ok(output.includes('"user":"alice"'), "the authenticated user is logged");
      });
    } finally {
      client.close();
      await mirror.stop();
      await proxy.stop();
      await registry.stop();
      await cdn.shutdown();
      await redirector.shutdown();
      trap.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
