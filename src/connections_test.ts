import { deepEqual, equal, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  type ConnectionHandler,
  ConnectionServer,
  type ConnectionSettings,
  MAX_RUNTIME_SENT,
} from "./connections.ts";
import {
  MAX_PIECE,
  runtimeSendable,
  selfWatched,
  type SendWatch,
  sharedPiece,
} from "./watched_body.ts";

const SETTINGS: ConnectionSettings = {
  headerTimeoutMs: 300,
  idleTimeoutMs: 500,
  sendTimeoutMs: 300,
  maxConnections: 100,
};
const encoder = new TextEncoder();
const digest = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** A connection server on 127.0.0.1, stopped (and every client closed) when disposed. */
function serve(handler: ConnectionHandler, settings: Partial<ConnectionSettings> = {}) {
  const server = new ConnectionServer(handler, { ...SETTINGS, ...settings }, {
    onError: () => new Response("error", { status: 500 }),
  });
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepting = server.accept(listener);
  const clients: Deno.Conn[] = [];
  return {
    server,
    port: listener.addr.port,
    async connect(): Promise<Deno.Conn> {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
      clients.push(conn);
      return conn;
    },
    async [Symbol.asyncDispose]() {
      for (const c of clients) {
        try {
          c.close();
        } catch { /* closed by the test */ }
      }
      listener.close();
      await accepting;
      await server.shutdown();
    },
  };
}

/**
 * Reads until the server closes (true: an EOF, or a reset when it closed with bytes unread) or
 * `deadlineMs` passes (false); returns the time taken.
 */
async function closedWithin(conn: Deno.Conn, deadlineMs: number): Promise<[boolean, number]> {
  const started = performance.now();
  let late = false;
  const timer = setTimeout(() => {
    late = true;
    conn.close();
  }, deadlineMs);
  try {
    const buffer = new Uint8Array(64 * 1024);
    while ((await conn.read(buffer)) !== null);
  } catch { /* a reset, or closed here at the deadline */ }
  clearTimeout(timer);
  return [!late, performance.now() - started];
}

async function request(conn: Deno.Conn, path: string): Promise<string> {
  await conn.write(encoder.encode(`GET ${path} HTTP/1.1\r\nHost: t\r\n\r\n`));
  const buffer = new Uint8Array(4096);
  const n = await conn.read(buffer);
  return new TextDecoder().decode(buffer.subarray(0, n ?? 0));
}

const hello: ConnectionHandler = () =>
  new Response("hello", { headers: { "content-length": "5" } });

Deno.test("connections: a request head not sent within headerTimeout closes the connection", async () => {
  await using s = serve(hello);
  const silent = await s.connect();
  const partial = await s.connect();
  await partial.write(encoder.encode("GET / HTTP/1.1\r\nHost: t\r\n"));
  const [closedSilent, silentMs] = await closedWithin(silent, 5000);
  const [closedPartial] = await closedWithin(partial, 5000);
  ok(closedSilent && closedPartial, "both closed by the server");
  ok(silentMs >= 250, `closed after ${silentMs} ms, not before the timeout`);
  equal(s.server.stats.headerTimeouts, 2);
});

Deno.test("connections: idle keep-alive connections close after idleTimeout, busy ones stay", async () => {
  await using s = serve(hello);
  const idle = await s.connect();
  ok((await request(idle, "/")).startsWith("HTTP/1.1 200"));
  const busy = await s.connect();
  // Requests every 200 ms for 1 s: longer than the idle timeout in all, never idle that long.
  for (let i = 0; i < 5; i++) {
    ok((await request(busy, "/")).endsWith("hello"));
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const [closed] = await closedWithin(idle, 5000);
  ok(closed, "the idle one was closed");
  ok((await request(busy, "/")).endsWith("hello"), "the busy one still serves");
  equal(s.server.stats.idleTimeouts, 1);
  equal(s.server.stats.headerTimeouts, 0);
});

Deno.test("connections: a client that stops reading is cut, and its body cancelled", async () => {
  let cancelled = false;
  let completed: string | undefined;
  await using s = serve((_request, info) => {
    info.completed.then(() => completed = "sent", () => completed = "failed");
    const chunk = new Uint8Array(1024 * 1024);
    return new Response(
      new ReadableStream({
        pull: (c) => c.enqueue(chunk),
        cancel: () => void (cancelled = true),
      }),
    );
  });
  const conn = await s.connect();
  await conn.write(encoder.encode("GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
  await conn.read(new Uint8Array(16 * 1024)); // then reads no more until the server gives up
  for (let i = 0; i < 250 && !(cancelled && completed); i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  equal(s.server.stats.sendTimeouts, 1);
  // The body is endless: only a closed connection ends it.
  const [closed] = await closedWithin(conn, 5000);
  ok(closed, "the server closed the stalled download");
  ok(cancelled, "the source stream was cancelled");
  ok(completed !== undefined, "completed settled, so whatever waits on it is released");
});

Deno.test("connections: a client gone in the middle of a body leaves nothing open behind", async () => {
  // Deno's per-connection server ends with an error then, and keeps its resource until closed: one
  // leaked per download a client gave up on (the sanitizer fails the test on it).
  const size = 32 * 1024 * 1024;
  await using s = serve(() =>
    new Response(new Uint8Array(size), { headers: { "content-length": String(size) } })
  );
  for (let i = 0; i < 3; i++) {
    const conn = await s.connect();
    await conn.write(encoder.encode("GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
    await conn.read(new Uint8Array(16 * 1024));
    conn.close();
  }
  for (let i = 0; i < 100 && s.server.open > 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  equal(s.server.open, 0, "the server saw every client go");
  equal(s.server.stats.sendTimeouts, 0);
});

Deno.test("connections: a slow client that keeps reading is not cut", async () => {
  const size = 3 * 1024 * 1024;
  await using s = serve(
    () => new Response(new Uint8Array(size), { headers: { "content-length": String(size) } }),
    {
      sendTimeoutMs: 400,
    },
  );
  const conn = await s.connect();
  await conn.write(encoder.encode("GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
  const buffer = new Uint8Array(256 * 1024);
  let got = 0;
  // About 1.3 MB/s: each pause is shorter than the send timeout, the whole is ~2.5 s.
  while (got < size) {
    const n = await conn.read(buffer);
    if (n === null) break;
    got += n;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  ok(got > size, `the whole body came (${got} bytes with the head)`);
  equal(s.server.stats.sendTimeouts, 0);
});

Deno.test("connections: at the cap an idle connection makes room; with none idle, refused", async () => {
  let release!: () => void;
  const held = new Promise<void>((resolve) => release = resolve);
  await using s = serve(async (request) => {
    if (new URL(request.url).pathname === "/hold") await held;
    return new Response("ok", { headers: { "content-length": "2" } });
  }, { maxConnections: 2, headerTimeoutMs: 10_000 });
  const oldest = await s.connect();
  const next = await s.connect();
  ok((await request(next, "/")).endsWith("ok"));
  const newest = await s.connect();
  const [oldestClosed] = await closedWithin(oldest, 5000);
  ok(oldestClosed, "the longest-open idle connection was closed for the new one");
  ok((await request(newest, "/")).endsWith("ok"), "the new one is served");
  // Both remaining connections busy: a third is refused.
  const busyA = request(next, "/hold");
  const busyB = request(newest, "/hold");
  await new Promise((resolve) => setTimeout(resolve, 100));
  const refused = await s.connect();
  const [refusedClosed] = await closedWithin(refused, 5000);
  ok(refusedClosed);
  release();
  ok((await busyA).endsWith("ok") && (await busyB).endsWith("ok"));
  deepEqual([s.server.stats.shed, s.server.stats.refused], [1, 1]);
});

/**
 * A handler relaying a big upstream body (a local server) as the bucket's blobs are: marked for the
 * runtime to send itself, with a stand-in that counts its uses. Disposing stops the upstream.
 */
function relaying() {
  const size = 64 * 1024 * 1024;
  const chunk = new Uint8Array(1024 * 1024);
  // A stream, not the bytes: Deno copies a bytes body for each response.
  const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, () => {
    let left = size / chunk.length;
    const body = new ReadableStream({
      pull: (c) => left-- > 0 ? c.enqueue(chunk) : c.close(),
    });
    return new Response(body, { headers: { "content-length": String(size) } });
  });
  const client = Deno.createHttpClient({});
  const counts = { standIns: 0 };
  const handler: ConnectionHandler = async () => {
    const got = await fetch(`http://127.0.0.1:${upstream.addr.port}/`, { client });
    const body = runtimeSendable(got.body!, () => {
      counts.standIns++;
      return got.body!.pipeThrough(new TransformStream());
    });
    return new Response(body, { headers: { "content-length": String(size) } });
  };
  return {
    handler,
    counts,
    async [Symbol.asyncDispose]() {
      client.close();
      await upstream.shutdown();
    },
  };
}

/** Sends a GET on `conn` and reads the response's head (and what came with it), no more. */
async function stallAfterHead(conn: Deno.Conn): Promise<void> {
  await conn.write(encoder.encode("GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
  await conn.read(new Uint8Array(16 * 1024));
}

Deno.test("connections: bodies the runtime sends itself, at most MAX_RUNTIME_SENT; the rest send-timed", async () => {
  await using relay = relaying();
  await using s = serve(relay.handler);
  const conns: Deno.Conn[] = [];
  for (let i = 0; i <= MAX_RUNTIME_SENT; i++) {
    conns.push(await s.connect());
    await stallAfterHead(conns[i]);
  }
  equal(s.server.stats.runtimeSent, MAX_RUNTIME_SENT);
  equal(relay.counts.standIns, 1, "the one beyond the bound was sent by its stand-in");
  // The stand-in's stalled client is cut; the runtime's own are not seen to stall.
  await new Promise((resolve) => setTimeout(resolve, SETTINGS.sendTimeoutMs * 2));
  const [cut] = await closedWithin(conns[MAX_RUNTIME_SENT], 100);
  ok(cut, "the stand-in's stalled download was cut");
  equal(s.server.stats.sendTimeouts, 1);
  // A client gone frees its place: the next body is the runtime's again.
  conns[0].close();
  await new Promise((resolve) => setTimeout(resolve, 100));
  const next = await s.connect();
  await stallAfterHead(next);
  deepEqual([s.server.stats.runtimeSent, relay.counts.standIns], [MAX_RUNTIME_SENT + 1, 1]);
  for (const conn of [next, ...conns.slice(1, MAX_RUNTIME_SENT)]) conn.close();
});

Deno.test("connections: at the cap, the longest body the runtime sends past the send timeout makes room", async () => {
  await using relay = relaying();
  await using s = serve(relay.handler, { maxConnections: 2, sendTimeoutMs: 300 });
  const oldest = await s.connect();
  await stallAfterHead(oldest);
  const next = await s.connect();
  await stallAfterHead(next);
  // Within the send timeout nothing is shed: a third connection is refused.
  const early = await s.connect();
  const [refused] = await closedWithin(early, 5000);
  ok(refused);
  deepEqual([s.server.stats.refused, s.server.stats.shed], [1, 0]);
  await new Promise((resolve) => setTimeout(resolve, 400));
  const late = await s.connect();
  const [oldestClosed] = await closedWithin(oldest, 5000);
  ok(oldestClosed, "the connection longest sent to was closed for the new one");
  ok((await request(late, "/")).startsWith("HTTP/1.1 200"), "the new one is served");
  deepEqual([s.server.stats.refused, s.server.stats.shed], [1, 1]);
  next.close();
  late.close();
  await new Promise((resolve) => setTimeout(resolve, 1000));
});

Deno.test("connections: shutdown lets a response in progress finish", async () => {
  let release!: () => void;
  const held = new Promise<void>((resolve) => release = resolve);
  const server = new ConnectionServer(
    async () => {
      await held;
      return new Response("done", { headers: { "content-length": "4" } });
    },
    SETTINGS,
    { onError: () => new Response(null, { status: 500 }) },
  );
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepting = server.accept(listener);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const answer = request(conn, "/");
  await new Promise((resolve) => setTimeout(resolve, 100));
  listener.close();
  await accepting;
  const stopped = server.shutdown();
  release();
  ok((await answer).endsWith("done"));
  await stopped;
  equal(server.open, 0);
  conn.close();
});

Deno.test("connections: bodies sent at once share the piece budget", async () => {
  const bodies = 40;
  const asked: number[] = [];
  let started = 0;
  const allStarted = Promise.withResolvers<void>();
  await using s = serve(() => {
    let watch: SendWatch | undefined;
    let left = 8;
    const body = new ReadableStream<Uint8Array>({
      async pull(c) {
        const piece = watch!.asked();
        if (left === 8 && ++started === bodies) allStarted.resolve();
        await allStarted.promise; // every body is being sent before any piece goes
        asked.push(piece);
        c.enqueue(new Uint8Array(piece));
        watch!.handed();
        if (--left === 0) c.close();
      },
    }, { highWaterMark: 0 });
    return new Response(selfWatched(body, (w) => watch = w));
  });
  const responses = await Promise.all(
    Array.from({ length: bodies }, () => fetch(`http://127.0.0.1:${s.port}/`)),
  );
  await Promise.all(responses.map((r) => r.arrayBuffer()));
  const share = sharedPiece(bodies);
  ok(share < MAX_PIECE);
  equal(asked.length, bodies * 8);
  ok(asked.every((piece) => piece <= share), `pieces up to ${Math.max(...asked)}, share ${share}`);
  equal(Math.max(...asked), share, "a fast client's pieces grow to its share");
});

Deno.test("connections: a piece freed once the server asks again still reaches the client whole", async () => {
  const pieces = 64;
  const bytes = new Uint8Array(pieces * MAX_PIECE).map((_, i) => (i * 7 + (i >> 12)) & 0xff);
  let freed = 0;
  await using s = serve(() => {
    let watch: SendWatch | undefined;
    let at = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(c) {
        const size = Math.min(watch!.asked(), bytes.length - at);
        if (size === 0) return c.close();
        const piece = bytes.slice(at, at + size);
        at += size;
        c.enqueue(piece);
        watch!.handed(() => {
          // Rust holds the piece now: detaching frees JavaScript's hold only. Memory allocated and
          // scribbled on right after would show in the client's bytes, were it the piece's.
          piece.buffer.transfer(0);
          new Uint8Array(size).fill(0xaa);
          freed++;
        });
      },
    }, { highWaterMark: 0 });
    return new Response(selfWatched(body, (w) => watch = w));
  });
  const response = await fetch(`http://127.0.0.1:${s.port}/`);
  const reader = response.body!.getReader();
  const got: Uint8Array[] = [];
  for (let n = 0;; n++) {
    const { done, value } = await reader.read();
    if (done) break;
    got.push(value);
    // A slow client: the server holds pieces while the next ones are asked for and freed.
    if (n % 16 === 0) await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const received = new Uint8Array(await new Blob(got as BlobPart[]).arrayBuffer());
  equal(received.length, bytes.length);
  equal(digest(received), digest(bytes), "every byte as sent");
  ok(freed > 40, `${freed} pieces freed`);
});
