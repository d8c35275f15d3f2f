// End to end: hostile clients against the mirror started as users start it. Descriptor
// exhaustion, slowloris heads, idle keep-alive connections and stalled downloads must neither stop
// the process nor hold its slots; probes answer whatever the load.

import { deepEqual, equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { runCleanup } from "./fixtures/cleanup.ts";
import { type MirrorProcess, startMirror } from "./fixtures/mirror.ts";
import { startMirrorWithNofile } from "./fixtures/mirror_nofile.ts";
import { startRegistry } from "./fixtures/registry.ts";
import { pushLargeBlobImage } from "./fixtures/seed.ts";
import { makeCerts } from "./fixtures/tls.ts";
import { skipUnless } from "./fixtures/tools.ts";
import { waitFor } from "./fixtures/wait.ts";

const encoder = new TextEncoder();
const BLOB_SIZE = 64 * 1024 * 1024;

/**
 * An open TCP connection whose `closed` settles true when the server closes it: an EOF, or a reset
 * (a server closing with unread bytes, such as a trickled head, resets the connection).
 */
interface Client {
  conn: Deno.Conn;
  closed: Promise<boolean>;
  closedAt?: number;
  /** Closed by the test itself. */
  ours?: boolean;
}

async function connect(mirror: MirrorProcess, watch = true): Promise<Client> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: mirror.port });
  const client: Client = { conn, closed: Promise.resolve(false) };
  if (watch) {
    client.closed = (async () => {
      const buffer = new Uint8Array(16 * 1024);
      try {
        while ((await conn.read(buffer)) !== null);
      } catch {
        if (client.ours) return false;
      }
      client.closedAt = performance.now();
      return true;
    })();
  }
  return client;
}

function closeAll(clients: Client[]): Promise<boolean[]> {
  for (const c of clients) {
    c.ours = true;
    try {
      c.conn.close();
    } catch { /* already closed */ }
  }
  return Promise.all(clients.map((c) => c.closed));
}

async function status(url: string, init?: RequestInit): Promise<number> {
  const response = await fetch(url, init);
  await response.body?.cancel();
  return response.status;
}

function logged(mirror: MirrorProcess, text: string): Record<string, unknown>[] {
  return mirror.logs().filter((l) => String(l.message).includes(text));
}

Deno.test("connections: descriptor exhaustion is logged and survived", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "connections_nofile_" });
  const cleanup: (() => unknown)[] = [() => Deno.remove(dir, { recursive: true })];
  try {
    await t.step(
      "a cap above the limit: accept() fails, is logged, and serving goes on",
      async () => {
        const mirror = await startMirrorWithNofile(`${dir}/above`, {
          limits: { maxConnections: 1000, headerTimeout: "60s" },
        }, 256);
        const clients: Client[] = [];
        try {
          for (let i = 0; i < 320; i++) clients.push(await connect(mirror));
          await waitFor(
            "the accept error in the log",
            () => logged(mirror, "accepting a connection failed").length > 0,
          );
          equal(
            await waitFor(
              "/healthz during the flood",
              async () => await status(`${mirror.url}/healthz`) === 200,
            ),
            true,
          );
          await closeAll(clients);
          equal(await status(`${mirror.url}/healthz`), 200, "still serving after they went");
          const [error] = logged(mirror, "accepting a connection failed");
          equal(error.level, "ERROR");
          ok(String(error.message).includes("Too many open files"), String(error.message));
        } finally {
          await closeAll(clients);
          await mirror.stop();
        }
      },
    );

    await t.step(
      "the default cap, from the free descriptors, keeps accept() from failing",
      async () => {
        const mirror = await startMirrorWithNofile(`${dir}/default`, {
          limits: { headerTimeout: "60s" },
        }, 256);
        const clients: Client[] = [];
        try {
          for (let i = 0; i < 320; i++) clients.push(await connect(mirror));
          equal(await status(`${mirror.url}/healthz`), 200, "answered during the flood");
          const [listening] = logged(mirror, "listening on");
          const props = listening.properties as Record<string, number>;
          const cap = props.maxConnections;
          ok(props.freeDescriptors < 256, `${props.freeDescriptors} descriptors free at start`);
          equal(cap, Math.floor((props.freeDescriptors - 64) / 2));
          let closed = 0;
          for (const c of clients) c.closed.then((yes) => closed += yes ? 1 : 0);
          await waitFor(
            `${320 - cap} idle connections closed to stay under the cap`,
            () => closed >= 320 - cap,
          );
          deepEqual(logged(mirror, "accepting a connection failed"), []);
        } finally {
          await closeAll(clients);
          await mirror.stop();
        }
      },
    );
  } finally {
    await runCleanup(cleanup);
  }
});

Deno.test("connections: slowloris heads and idle keep-alive connections are closed", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "connections_timeouts_" });
  const mirror = await startMirror(dir, { limits: { headerTimeout: "1s", idleTimeout: "1500ms" } });
  const clients: Client[] = [];
  try {
    await t.step("half-sent request heads, trickled, are closed after headerTimeout", async () => {
      const started = performance.now();
      const slow = await Promise.all(Array.from({ length: 50 }, () => connect(mirror)));
      clients.push(...slow);
      const trickle = setInterval(() => {
        for (const c of slow) c.conn.write(encoder.encode("X-Slow: 1\r\n")).catch(() => {});
      }, 200);
      try {
        for (const c of slow) {
          await c.conn.write(encoder.encode("GET /v2/ HTTP/1.1\r\nHost: m\r\n"));
        }
        await waitFor("the server to close 50 slowloris connections", async () => {
          const closed = await Promise.all(slow.map((c) => Promise.race([c.closed, false])));
          return closed.every(Boolean);
        });
      } finally {
        clearInterval(trickle);
      }
      const after = slow.map((c) => c.closedAt! - started);
      ok(Math.min(...after) >= 900, `none closed before the timeout: ${Math.min(...after)} ms`);
      ok(Math.max(...after) < 6000, `all closed soon after it: ${Math.max(...after)} ms`);
    });

    await t.step(
      "idle keep-alive connections close after idleTimeout; busy ones stay",
      async () => {
        const request = encoder.encode("GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n");
        const idle = await Promise.all(Array.from({ length: 20 }, () => connect(mirror, false)));
        const busy = await connect(mirror, false);
        clients.push(...idle, busy);
        const buffer = new Uint8Array(4096);
        for (const c of [...idle, busy]) {
          await c.conn.write(request);
          ok(
            new TextDecoder().decode(buffer.subarray(0, (await c.conn.read(buffer))!)).includes(
              "200 OK",
            ),
          );
        }
        const answered = performance.now();
        let late = false;
        const deadline = setTimeout(() => {
          late = true;
          idle.forEach((c) => c.conn.close());
        }, 8000);
        const closedAfter = idle.map(async (c) => {
          const n = await c.conn.read(buffer).catch(() => null); // a reset is a close too
          return n === null && !late ? performance.now() - answered : -1;
        });
        // The busy one asks every 500 ms for 3 s: twice the idle timeout in all, never idle that long.
        for (let i = 0; i < 6; i++) {
          await new Promise((resolve) => setTimeout(resolve, 500));
          await busy.conn.write(request);
          const n = await busy.conn.read(buffer);
          ok(n !== null, `the busy connection was closed after ${i} requests`);
        }
        const times = await Promise.all(closedAfter);
        clearTimeout(deadline);
        ok(times.every((ms) => ms >= 1300 && ms < 6000), `closed after ${times.join(", ")} ms`);
      },
    );

    await t.step("the closed connections are counted, by reason", async () => {
      const metrics = await (await fetch(`${mirror.url}/metrics`)).text();
      const closed = (reason: string) =>
        Number(
          new RegExp(
            `^registry_mirror_connections_closed_total\\{reason="${reason}"\\} (\\d+)$`,
            "m",
          )
            .exec(metrics)?.[1],
        );
      ok(closed("header_timeout") >= 50, `header timeouts: ${closed("header_timeout")}`);
      ok(closed("idle_timeout") >= 20, `idle timeouts: ${closed("idle_timeout")}`);
      equal(closed("refused"), 0);
    });

    await t.step("PUT /metrics and other writes to ops endpoints: 405 with Allow", async () => {
      for (
        const [method, path] of [["PUT", "/metrics"], ["POST", "/healthz"], ["DELETE", "/readyz"]]
      ) {
        const response = await fetch(`${mirror.url}${path}`, { method });
        equal(response.status, 405, `${method} ${path}`);
        equal(response.headers.get("allow"), "GET, HEAD");
        equal((await response.json()).errors[0].code, "UNSUPPORTED");
      }
      equal(await status(`${mirror.url}/metrics`), 200);
    });

    await t.step("oversized heads: 431 in JSON where the mirror sees them", async () => {
      const response = await fetch(`${mirror.url}/v2/`, {
        headers: { "x-pad": "p".repeat(20_000) },
      });
      equal(response.status, 431);
      equal((await response.json()).errors[0].code, "UNSUPPORTED");
      // Over 64 KiB the HTTP server itself answers a bare 400 before any code of ours runs.
      const huge = await fetch(`${mirror.url}/v2/`, { headers: { "x-pad": "p".repeat(70_000) } });
      equal(huge.status, 400);
      await huge.body?.cancel();
    });
  } finally {
    await closeAll(clients);
    await mirror.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

/** A blob GET on a raw connection that reads the head and 16 KiB, then nothing until `drain()`. */
async function stall(mirror: MirrorProcess, path: string) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: mirror.port });
  await conn.write(encoder.encode(`GET ${path} HTTP/1.1\r\nHost: m\r\n\r\n`));
  const buffer = new Uint8Array(16 * 1024);
  const first = new TextDecoder().decode(buffer.subarray(0, (await conn.read(buffer))!));
  return {
    status: Number(first.split(" ")[1]),
    /** Reads to the end; true when the server closed before sending the whole blob. */
    async cut(): Promise<boolean> {
      let total = 0;
      try {
        for (;;) {
          const n = await conn.read(new Uint8Array(1024 * 1024));
          if (n === null) break;
          total += n;
        }
      } catch { /* reset by the server: cut too */ }
      conn.close();
      return total < BLOB_SIZE;
    },
    close: () => conn.close(),
  };
}

Deno.test({
  name: "connections: stalled downloads are cut and free their slots; probes answer regardless",
  ...skipUnless(["docker-registry"]),
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "connections_stalled_" });
    const cleanup: (() => unknown)[] = [() => Deno.remove(dir, { recursive: true })];
    try {
      const registry = await startRegistry({ dir: `${dir}/registry` });
      cleanup.push(() => registry.stop());
      const image = await pushLargeBlobImage(registry.url, "library/big", "v1", BLOB_SIZE);
      const path = `/v2/library/big/blobs/${image.blob.digest}`;
      const start = async (name: string, limits: Record<string, unknown>) => {
        const mirror = await startMirror(`${dir}/${name}`, {
          registries: { "docker.io": { upstream: registry.url } },
          limits: { maxConcurrentRequests: 2, ...limits },
        });
        cleanup.push(() => mirror.stop());
        // Cached first: the stalls below read from disk.
        const response = await fetch(`${mirror.url}${path}`);
        const hash = createHash("sha256");
        for await (const chunk of response.body!) hash.update(chunk);
        equal(`sha256:${hash.digest("hex")}`, image.blob.digest);
        return mirror;
      };

      await t.step("probes answer while maxConcurrentRequests is exhausted", async () => {
        const mirror = await start("busy", { sendTimeout: "5m" });
        const held = [await stall(mirror, path), await stall(mirror, path)];
        try {
          deepEqual(held.map((h) => h.status), [200, 200]);
          equal(await status(`${mirror.url}/v2/`), 503, "the slots are taken");
          for (const probe of ["/healthz", "/readyz", "/metrics"]) {
            equal(await status(`${mirror.url}${probe}`), 200, probe);
          }
        } finally {
          held.forEach((h) => h.close());
        }
      });

      await t.step(
        "stalled downloads are cut after sendTimeout and release their slots",
        async () => {
          const mirror = await start("stalled", { sendTimeout: "2s" });
          const held = [await stall(mirror, path), await stall(mirror, path)];
          deepEqual(held.map((h) => h.status), [200, 200]);
          await waitFor(
            "two downloads cut by limits.sendTimeout",
            () => logged(mirror, "the client took nothing").length >= 2,
            { timeoutMs: 20_000 },
          );
          deepEqual(
            await Promise.all(held.map((h) => h.cut())),
            [true, true],
          );
          const again = [await stall(mirror, path), await stall(mirror, path)];
          again.forEach((h) => h.close());
          deepEqual(again.map((h) => h.status), [200, 200], "both slots were free again");
          // Those two were closed by the client: their slots come back once the server sees it.
          await waitFor("a free slot", async () => await status(`${mirror.url}/v2/`) === 200);
          const response = await fetch(`${mirror.url}${path}`);
          equal(response.status, 200);
          const hash = createHash("sha256");
          for await (const chunk of response.body!) hash.update(chunk);
          equal(`sha256:${hash.digest("hex")}`, image.blob.digest, "a third download is whole");
          equal(await status(`${mirror.url}/healthz`), 200);
        },
      );
    } finally {
      await runCleanup(cleanup);
    }
  },
});

Deno.test({
  name: "connections: over TLS, silent and idle connections are closed; HTTP/2 is served",
  ...skipUnless(["openssl", "curl"]),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "connections_tls_" });
    const certs = await makeCerts(`${dir}/certs`);
    const mirror = await startMirror(dir, {
      tls: { cert: certs.cert, key: certs.key },
      limits: { headerTimeout: "1s", idleTimeout: "1s" },
    });
    const caCerts = [await Deno.readTextFile(certs.caCert)];
    const tls: Deno.TlsConn[] = [];
    try {
      const closedAfter = async (send: string) => {
        const conn = await Deno.connectTls({ hostname: "127.0.0.1", port: mirror.port, caCerts });
        tls.push(conn);
        await conn.handshake();
        const started = performance.now();
        if (send) await conn.write(encoder.encode(send));
        const deadline = setTimeout(() => conn.close(), 8000);
        try {
          while ((await conn.read(new Uint8Array(4096))) !== null);
        } catch { /* reset, or closed at the deadline */ }
        clearTimeout(deadline);
        return performance.now() - started;
      };
      const [silent, half, idle] = await Promise.all([
        closedAfter(""),
        closedAfter("GET /v2/ HTTP/1.1\r\nHost: m\r\n"),
        closedAfter("GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n"),
      ]);
      for (const ms of [silent, half, idle]) ok(ms >= 900 && ms < 6000, `closed after ${ms} ms`);
      const curl = await new Deno.Command("curl", {
        args: [
          "-s",
          "--http2",
          "--cacert",
          certs.caCert,
          "-w",
          "%{http_version}",
          "-o",
          "/dev/null",
        ]
          .concat(`https://127.0.0.1:${mirror.port}/healthz`),
      }).output();
      equal(new TextDecoder().decode(curl.stdout), "2");
    } finally {
      for (const conn of tls) {
        try {
          conn.close();
        } catch { /* closed by the server */ }
      }
      await mirror.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
