// What the HTTP server does with hostile clients: Deno.serve beside the mirror's connection server
// (src/connections.ts, 1 s timeouts), on the same clients, over TCP and over TLS. Re-run after a
// Deno upgrade: the day Deno.serve closes these by itself, the per-connection server can go.
//
//   deno run -A bench/runtime_limits.ts [--wait-seconds 5]

import { parseArgs } from "node:util";
import { ConnectionServer } from "../src/connections.ts";
import { makeCerts } from "../tests/fixtures/tls.ts";

const { values } = parseArgs({ args: Deno.args, options: { "wait-seconds": { type: "string" } } });
const waitMs = Number(values["wait-seconds"] ?? 5) * 1000;
const encoder = new TextEncoder();

/** Answers /blob with an endless body, anything else with "ok". */
function handler(request: Request): Response {
  if (new URL(request.url).pathname !== "/blob") return new Response("ok");
  const chunk = new Uint8Array(1024 * 1024);
  return new Response(new ReadableStream({ pull: (c) => c.enqueue(chunk) }));
}

type Client = (conn: Deno.Conn) => Promise<void>;
const head = (text: string): Client => async (conn) => void await conn.write(encoder.encode(text));
const CLIENTS: [string, Client][] = [
  ["silent connection", async () => {}],
  ["half-sent request head", head("GET / HTTP/1.1\r\nHost: x\r\n")],
  ["idle keep-alive after one request", async (conn) => {
    await head("GET / HTTP/1.1\r\nHost: x\r\n\r\n")(conn);
    await conn.read(new Uint8Array(4096));
  }],
  ["download the client stopped reading", async (conn) => {
    await head("GET /blob HTTP/1.1\r\nHost: x\r\n\r\n")(conn);
    await conn.read(new Uint8Array(16 * 1024));
  }],
];

/** After `client` and waitMs without reading: was the connection closed by the server? */
async function outcome(connect: () => Promise<Deno.Conn>, client: Client): Promise<string> {
  const conn = await connect();
  await client(conn);
  await new Promise((resolve) => setTimeout(resolve, waitMs));
  // Buffered bytes may still come; an open download never ends, so a deadline decides.
  let late = false;
  const deadline = setTimeout(() => {
    late = true;
    conn.close();
  }, 2000);
  try {
    while ((await conn.read(new Uint8Array(1024 * 1024))) !== null);
  } catch { /* reset by the server, or closed at the deadline */ }
  clearTimeout(deadline);
  if (!late) conn.close();
  return late ? "still open" : "closed";
}

const dir = await Deno.makeTempDir({ prefix: "runtime-limits-" });
const certs = await makeCerts(dir);
const pair = { cert: await Deno.readTextFile(certs.cert), key: await Deno.readTextFile(certs.key) };
const caCerts = [await Deno.readTextFile(certs.caCert)];
const servers: Deno.HttpServer[] = [];
const listeners: Deno.Listener[] = [];
const guarded = new ConnectionServer(handler, {
  headerTimeoutMs: 1000,
  idleTimeoutMs: 1000,
  sendTimeoutMs: 1000,
  maxConnections: 100,
}, { onError: () => new Response(null, { status: 500 }) });
const port = (tls: boolean, kind: "plain" | "guarded"): number => {
  const options = { hostname: "127.0.0.1", port: 0, ...(tls ? pair : {}) };
  if (kind === "plain") {
    const server = Deno.serve({ ...options, onListen() {} }, handler);
    servers.push(server);
    return server.addr.port;
  }
  const listener = tls
    ? Deno.listenTls({ ...options, ...pair, alpnProtocols: ["http/1.1"] })
    : Deno.listen(options);
  listeners.push(listener);
  guarded.accept(listener);
  return (listener.addr as Deno.NetAddr).port;
};
const rows: [string, (port: number) => Promise<Deno.Conn>, Client][] = [
  ...CLIENTS.map(([name, client]): [string, (port: number) => Promise<Deno.Conn>, Client] => [
    name,
    (port) => Deno.connect({ hostname: "127.0.0.1", port }),
    client,
  ]),
  ...CLIENTS.map(([name, client]): [string, (port: number) => Promise<Deno.Conn>, Client] => [
    `TLS, handshake done: ${name}`,
    async (port) => {
      const conn = await Deno.connectTls({ hostname: "127.0.0.1", port, caCerts });
      await conn.handshake();
      return conn;
    },
    client,
  ]),
  [
    "TLS: no ClientHello ever sent",
    (port) => Deno.connect({ hostname: "127.0.0.1", port }),
    async () => {},
  ],
];
console.log(`After ${waitMs / 1000} s (Deno ${Deno.version.deno}):\n`);
console.log("| client | Deno.serve | connection server (1 s timeouts) |");
console.log("| --- | --- | --- |");
for (const [name, connect, client] of rows) {
  const tls = name.startsWith("TLS");
  const [plain, ours] = [port(tls, "plain"), port(tls, "guarded")];
  const results = await Promise.all([plain, ours].map((p) => outcome(() => connect(p), client)));
  console.log(`| ${name} | ${results.join(" | ")} |`);
}
for (const listener of listeners) listener.close();
await Deno.remove(dir, { recursive: true });
// Deno.serve would wait for the connections it never closes: exit without waiting.
Deno.exit(0);
