import { equal, match, rejects } from "node:assert/strict";
import { buildConfig } from "../config.ts";
import { UpstreamClient } from "./client.ts";

// Regression: under load, Deno's fetch sometimes ignored an abort of a body already streaming, so
// a fill waited for a stalled upstream forever. The idle timeout must end the read by itself.
Deno.test("upstream client: an idle body errors after idleTimeout even if the abort is ignored", async () => {
  const config = buildConfig({
    registries: { "reg.test": { upstream: "https://reg.test" } },
    upstream: { idleTimeout: "50ms", retries: 0 },
  }, { env: {}, readTextFile: () => "" });
  let pulls = 0;
  let cancelled: unknown;
  // A body that sends one chunk, then stalls and, like the bug, never notices the abort signal.
  const stalled = new ReadableStream<Uint8Array>({
    pull(out) {
      if (pulls++ === 0) return out.enqueue(new Uint8Array(1024));
      return new Promise<void>(() => {});
    },
    cancel(reason) {
      cancelled = reason;
    },
  }, { highWaterMark: 0 });
  const client = new UpstreamClient(config.registries.get("reg.test")!, {
    ...config.upstream,
    userAgent: "test",
    fetch: () => Promise.resolve(new Response(stalled, { status: 200 })),
  });
  const progress = { upstreamBytes: 0, retries: 0 };
  const response = await client.request({ method: "GET", path: "/v2/a/blobs/x" }, progress);
  const reader = response.body!.getReader();
  equal((await reader.read()).value?.length, 1024);
  // The idle timer is unref'd (a server keeps the process alive): keep the test's loop alive.
  const alive = setTimeout(() => {}, 10_000);
  await rejects(reader.read(), (e: Error) => {
    match(e.message, /upstream idle for 50 ms/);
    return true;
  });
  clearTimeout(alive);
  match(String(cancelled), /idle/, "the upstream body is cancelled");
  equal(progress.upstreamBytes, 1024);
});

// The fill's pump reads upstream bodies BYOB in big reads (src/cache/body_reader.ts): the idle
// watchdog must keep a byte stream a byte stream, and still end a stalled read.
Deno.test("upstream client: a watched body is a byte stream, read BYOB; a stall still errors it", async () => {
  const config = buildConfig({
    registries: { "reg.test": { upstream: "https://reg.test" } },
    upstream: { idleTimeout: "50ms", retries: 0 },
  }, { env: {}, readTextFile: () => "" });
  let pulls = 0;
  // Like a fetch body: a byte stream that fills the reader's buffer, 300 KiB, then stalls.
  const stalling = new ReadableStream({
    type: "bytes",
    pull(controller: ReadableByteStreamController) {
      if (pulls++ > 0) return new Promise<void>(() => {});
      const request = controller.byobRequest!;
      (request.view as Uint8Array).fill(7, 0, 300 * 1024);
      request.respond(300 * 1024);
    },
  });
  const client = new UpstreamClient(config.registries.get("reg.test")!, {
    ...config.upstream,
    userAgent: "test",
    fetch: () => Promise.resolve(new Response(stalling, { status: 200 })),
  });
  const progress = { upstreamBytes: 0, retries: 0 };
  const response = await client.request({ method: "GET", path: "/v2/a/blobs/x" }, progress);
  const reader = response.body!.getReader({ mode: "byob" });
  const first = await reader.read(new Uint8Array(1024 * 1024));
  equal(first.value?.length, 300 * 1024, "one read takes all the upstream had ready");
  const alive = setTimeout(() => {}, 10_000);
  await rejects(reader.read(new Uint8Array(1024 * 1024)), /upstream idle for 50 ms/);
  clearTimeout(alive);
  equal(progress.upstreamBytes, 300 * 1024);
});
