import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { PinnedDialer } from "./pinned.ts";

/** A TCP listener on `hostname` recording the first bytes of every connection, then closing it. */
function recorder(hostname: string, port = 0) {
  const listener = Deno.listen({ hostname, port });
  const seen: Uint8Array[] = [];
  const done = (async () => {
    for await (const conn of listener) {
      const buffer = new Uint8Array(4096);
      const n = await conn.read(buffer).catch(() => null);
      seen.push(buffer.slice(0, n ?? 0));
      conn.close();
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    seen,
    async stop() {
      listener.close();
      await done;
    },
  };
}

/** Sends a raw request head to the tunnel listener and returns its status line. */
async function connect(address: Deno.NetAddr, head: string): Promise<string> {
  const conn = await Deno.connect({ hostname: address.hostname, port: address.port });
  try {
    await conn.write(new TextEncoder().encode(head));
    const buffer = new Uint8Array(1024);
    const n = await conn.read(buffer);
    return new TextDecoder().decode(buffer.subarray(0, n ?? 0)).split("\r\n")[0];
  } finally {
    conn.close();
  }
}

Deno.test("pinned https: TLS to the host's name goes to the checked address only", async () => {
  const target = recorder("127.0.0.1");
  const dialer = new PinnedDialer({ env: () => undefined });
  try {
    // 127.0.0.2 has no listener on that port: the next checked address is tried.
    const url = new URL(`https://pinned.test:${target.port}/token`);
    await rejects(dialer.fetch(url, ["127.0.0.2", "127.0.0.1"], {}));
    equal(target.seen.length, 1);
    const hello = target.seen[0];
    equal(hello[0], 0x16, "a TLS handshake record");
    ok(new TextDecoder().decode(hello).includes("pinned.test"), "SNI names the host");

    const tunnel = dialer.tunnelAddress!;
    equal(tunnel.hostname, "127.0.0.1");
    const authority = `pinned.test:${target.port}`;
    const basic = (password: string) => `Proxy-Authorization: Basic ${btoa(`pin:${password}`)}`;
    for (
      const head of [
        `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n\r\n`,
        `CONNECT ${authority} HTTP/1.1\r\n${basic("guess")}\r\n\r\n`,
        `GET http://${authority}/ HTTP/1.1\r\n${basic("guess")}\r\n\r\n`,
        "not http at all\r\n\r\n",
      ]
    ) {
      equal(await connect(tunnel, head), "HTTP/1.1 403 Forbidden", head);
    }
    equal(target.seen.length, 1, "nobody but the pinned client gets through the tunnel");

    await rejects(
      dialer.fetch(url, ["127.0.0.2"], {}),
      (e: Error & { cause?: Error }) =>
        e.message === "fetch failed" &&
        new RegExp(`^connect 127\\.0\\.0\\.2:${target.port}: `).test(String(e.cause?.message)),
    );
  } finally {
    await dialer.close();
    await target.stop();
  }
});

Deno.test("pinned http: the IP is dialled with the Host header of the name", async () => {
  const seen: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    seen.push(`${new URL(req.url).pathname} ${req.headers.get("host")}`);
    return new Response("ok");
  });
  const dialer = new PinnedDialer({ env: () => undefined });
  try {
    const url = new URL(`http://cdn.test:${server.addr.port}/blob`);
    const response = await dialer.fetch(url, ["127.0.0.1", "127.0.0.2"], {});
    equal(await response.text(), "ok");
    deepEqual(seen, [`/blob cdn.test:${server.addr.port}`]);
    equal(dialer.tunnelAddress, undefined, "no tunnel for plain http");
  } finally {
    await dialer.close();
    await server.shutdown();
  }
});

Deno.test("pinned: behind a proxy from the environment the name goes to the proxy", async () => {
  const asked: string[] = [];
  const fetch = (input: URL | RequestInfo, init?: RequestInit & { client?: unknown }) => {
    asked.push(`${input} client=${init?.client !== undefined}`);
    return Promise.resolve(new Response("via proxy"));
  };
  const proxied = new PinnedDialer({
    fetch: fetch as typeof globalThis.fetch,
    env: (name) => name === "HTTPS_PROXY" ? "http://proxy.corp:3128" : undefined,
  });
  const response = await proxied.fetch(new URL("https://cdn.test/x"), ["192.0.2.1"], {});
  equal(await response.text(), "via proxy");
  deepEqual(asked, ["https://cdn.test/x client=false"]);
  await proxied.close();
});

Deno.test("pinned: an https fetch that did not use the tunnel (NO_PROXY) is refused", async () => {
  // A fetch that ignores the client, as Deno does when NO_PROXY names the host.
  const fetch = () => Promise.resolve(new Response("direct"));
  const dialer = new PinnedDialer({
    fetch: fetch as typeof globalThis.fetch,
    env: () => undefined,
  });
  try {
    await rejects(
      dialer.fetch(new URL("https://cdn.test/x"), ["192.0.2.1"], {}),
      (e: Error) => {
        match(e.message, /^https to cdn\.test was not pinned to 192\.0\.2\.1/);
        return true;
      },
    );
  } finally {
    await dialer.close();
  }
});
