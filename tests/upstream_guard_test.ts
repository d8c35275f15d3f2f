// End to end: an upstream cannot turn the mirror against us. Its redirects and token realms never
// reach internal addresses (however spelled), credentials never go to an http realm of an https
// upstream, and a token response cannot exhaust the mirror's memory.

import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { AddressGuard } from "../src/upstream/addresses.ts";
import { startFaultProxy } from "./fixtures/fault_proxy.ts";
import { startInternalTrap } from "./fixtures/internal_trap.ts";
import { startMirror } from "./fixtures/mirror.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { pushImage, sha256 } from "./fixtures/seed.ts";
import { makeCerts } from "./fixtures/tls.ts";
import { startTokenServer } from "./fixtures/token_server.ts";
import { skipUnless } from "./fixtures/tools.ts";

const SERVICE = "guard-test";
const USER = { username: "puller", password: `pw-${crypto.randomUUID()}` };
const HUGE_TOKEN_BYTES = 600 * 1024 * 1024;
const MiB = 1024 * 1024;

/** A token realm answering `{"token":"aaaa...` for 600 MB, generated as it is read. */
function startHugeRealm() {
  const chunk = new Uint8Array(MiB).fill(0x61);
  let served = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () => {
    served = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(out) {
        if (served === 0) out.enqueue(new TextEncoder().encode('{"token":"'));
        if (served >= HUGE_TOKEN_BYTES) return out.close();
        served += chunk.byteLength;
        out.enqueue(chunk);
      },
    });
    return new Response(body, { headers: { "content-type": "application/json" } });
  });
  return { realm: `http://127.0.0.1:${server.addr.port}/token`, served: () => served, server };
}

Deno.test({
  name: "upstream guard: redirects, token realms and token bodies cannot be turned against us",
  ...skipUnless(["docker-registry", "openssl"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "upstream_guard_test_" });
    const stops: (() => Promise<unknown> | unknown)[] = [];
    try {
      const trap = startInternalTrap();
      stops.push(() => trap.stop());
      const tokens = await startTokenServer({
        dir,
        service: SERVICE,
        users: { [USER.username]: USER.password },
      });
      stops.push(() => tokens.stop());
      const tokenAuth = (realm: string) => ({ realm, service: SERVICE, certPath: tokens.certPath });

      // Blob GETs answer 307 to the trap, spelled as an IPv4-mapped IPv6 address.
      const redirecting = await startRegistry({
        dir: `${dir}/redirecting`,
        redirectBaseUrl: `http://[::ffff:127.0.0.2]:${trap.port}`,
      });
      stops.push(() => redirecting.stop());
      const app = await pushImage(redirecting.url, "library/app", "1", {
        files: { "app.txt": "behind a hostile redirect" },
        format: "oci",
      });

      // A token realm on the upstream's own host that 302s to the trap.
      const realm302 = Deno.serve(
        { hostname: "127.0.0.1", port: 0, onListen() {} },
        () => new Response(null, { status: 302, headers: { location: `${trap.url}/token` } }),
      );
      stops.push(() => realm302.shutdown());
      const luring = await startRegistry({
        dir: `${dir}/luring`,
        tokenAuth: tokenAuth(`http://127.0.0.1:${realm302.addr.port}/token`),
      });
      stops.push(() => luring.stop());
      const luringSeen = startFaultProxy(luring.url);
      stops.push(() => luringSeen.stop());

      // An https upstream (TLS in front of Distribution) whose realm is the http token server.
      const certs = await makeCerts(`${dir}/certs`);
      const secure = await startRegistry({
        dir: `${dir}/secure`,
        tokenAuth: tokenAuth(tokens.realm),
      });
      stops.push(() => secure.stop());
      const hello = await pushImage(secure.url, "library/hello", "1", {
        files: { "hello.txt": "public, over https" },
        format: "oci",
        auth: USER,
      });
      const front = Deno.serve({
        hostname: "127.0.0.1",
        port: 0,
        cert: await Deno.readTextFile(certs.cert),
        key: await Deno.readTextFile(certs.key),
        onListen() {},
      }, (req) => {
        const url = new URL(req.url);
        const headers = new Headers(req.headers);
        headers.delete("host");
        return fetch(new URL(url.pathname + url.search, secure.url), {
          method: req.method,
          headers,
          redirect: "manual",
        });
      });
      stops.push(() => front.shutdown());

      const huge = startHugeRealm();
      stops.push(() => huge.server.shutdown());
      const hoarding = await startRegistry({
        dir: `${dir}/hoarding`,
        tokenAuth: tokenAuth(huge.realm),
      });
      stops.push(() => hoarding.stop());

      const mirror = await startMirror(dir, {
        registries: {
          "redirect.test": { upstream: redirecting.url },
          "realm.test": { upstream: luringSeen.url },
          "tls.test": {
            upstream: `https://127.0.0.1:${front.addr.port}`,
            ...USER,
            authRealms: ["127.0.0.1"],
          },
          "huge.test": { upstream: hoarding.url },
        },
        upstream: { retries: 0, idleTimeout: "30s" },
      }, { DENO_CERT: certs.caCert });
      stops.push(() => mirror.stop());
      const get = (path: string) => fetch(`${mirror.url}/v2/${path}`);
      /** The status and error message of a response (its body read whole). */
      const answer = async (response: Response) => {
        const text = await response.text().catch((e) => `(body failed: ${e.message})`);
        try {
          return { status: response.status, message: JSON.parse(text).errors[0].message as string };
        } catch {
          return { status: response.status, message: text };
        }
      };

      await t.step("a redirect to http://[::ffff:127.0.0.2]:PORT/ is refused", async () => {
        const manifest = await get(`redirect.test/library/app/manifests/1`);
        equal(manifest.status, 200, "the upstream itself is fine");
        equal(sha256(new Uint8Array(await manifest.arrayBuffer())), app.digest);
        const blob = await answer(
          await get(`redirect.test/library/app/blobs/${app.layer.digest}`),
        );
        deepEqual(trap.seen, [], "nothing connected to 127.0.0.2");
        equal(blob.status, 502);
        match(
          blob.message,
          /refusing to follow a redirect to http:\/\/\[::ffff:7f00:2\]:\d+: internal address ::ffff:7f00:2 \(loopback\)/,
        );
      });

      await t.step(
        "a token realm that redirects to the trap is refused; no token goes upstream",
        async () => {
          const trapped = trap.seen.length;
          const response = await answer(await get("realm.test/library/app/manifests/1"));
          ok(luringSeen.requests.length > 0, "the upstream was asked and challenged");
          const sent = luringSeen.requests.map((r) => r.headers.authorization).filter(Boolean);
          deepEqual(sent, [], "no Authorization (least of all the trap's token) went upstream");
          deepEqual(trap.seen.slice(trapped), [], "nothing connected to 127.0.0.2");
          equal(response.status, 502);
          match(response.message, /refusing to follow a token realm to http:\/\/127\.0\.0\.2:\d+/);
        },
      );

      await t.step(
        "an https upstream's http realm gets no credentials, authRealms or not",
        async () => {
          const before = tokens.requests.length;
          const response = await get("tls.test/library/hello/manifests/1");
          equal(response.status, 200);
          equal(sha256(new Uint8Array(await response.arrayBuffer())), hello.digest);
          const asked = tokens.requests.slice(before);
          ok(asked.length > 0, "tokens were requested");
          deepEqual(
            asked.map((r) => [r.authorization, r.username]),
            asked.map(() => [false, undefined]),
          );
        },
      );

      await t.step(
        "a 600 MB token response is a 502 after 1 MiB; memory stays bounded",
        async () => {
          const rssBefore = mirror.peakRss();
          const { status, message } = await answer(await get("huge.test/library/app/manifests/1"));
          const grew = mirror.peakRss() - rssBefore;
          ok(grew < 100 * MiB, `peak RSS grew by ${Math.round(grew / MiB)} MiB`);
          ok(huge.served() < 64 * MiB, `the realm served ${Math.round(huge.served() / MiB)} MiB`);
          equal(status, 502);
          match(message, /token server of huge\.test .*sent more than 1048576 bytes/);
        },
      );
    } finally {
      for (const stop of stops.reverse()) await stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "upstream guard: https to a pinned address still verifies TLS for the name",
  ...skipUnless(["openssl"]),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "upstream_guard_tls_" });
    const certs = await makeCerts(dir); // for localhost and 127.0.0.1
    const seen: string[] = [];
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      cert: await Deno.readTextFile(certs.cert),
      key: await Deno.readTextFile(certs.key),
      onListen() {},
    }, (req) => {
      seen.push(`${new URL(req.url).host} ${new URL(req.url).pathname}`); // HTTP/2: :authority
      return Response.json({ token: "t" });
    });
    const port = server.addr.port;
    // The upstream is on 127.0.0.1, so that address is allowed; both names resolve to it.
    const guard = new AddressGuard(new URL("http://127.0.0.1:5000"), {
      resolve: (host) =>
        Promise.resolve(
          ["localhost", "wrong.test", "127.0.0.1"].includes(host) ? ["127.0.0.1"] : [],
        ),
      caCerts: [await Deno.readTextFile(certs.caCert)],
      env: () => undefined,
    });
    try {
      const response = await guard.fetch(
        new URL(`https://localhost:${port}/token`),
        {},
        "a token realm",
      );
      deepEqual(await response.json(), { token: "t" });
      deepEqual(seen, [`localhost:${port} /token`]);
      await rejects(
        guard.fetch(new URL(`https://wrong.test:${port}/token`), {}, "a token realm"),
        (e: Error & { cause?: Error }) =>
          /certificate not valid for name "wrong\.test"/.test(String(e.cause?.message)),
        "the certificate is checked against the name, not the pinned IP",
      );
      equal(seen.length, 1);
    } finally {
      await guard.close();
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
