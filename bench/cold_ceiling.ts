// The cold path's ceiling in this runtime: the smallest Deno servers that relay a blob from the
// upstream as the mirror does (fetch, read by the mirror's own BodyReader: BYOB reads of up to
// 1 MiB, each chunk enqueued to the response, all on the JavaScript thread), doing a little more
// each: nothing else; a sha256 of every chunk; and also an async write of every chunk to a spool
// file. Beside them, what the runtime does without JavaScript in the way (the fetch body given to
// the Response as is: Deno relays it socket to socket, but then nothing can hash or keep the
// bytes), and the relay reading into a ring of reused buffers instead of a new one per read (what
// the zeroed allocation of each buffer costs; unsafe, measurement only: Deno never says when the
// server has written a chunk, so a reused buffer may be overwritten before). Alternated with
// Distribution's proxy and the mirror itself, each on an empty cache, all through the same
// counting proxy, same curl.
//
//   deno run -A bench/cold_ceiling.ts [--size 1GiB] [--rounds 5]
//
// Prints each server's MB/s and CPU seconds per GB, every run and the medians.

import { createHash, type Hash } from "node:crypto";
import { freePort } from "../tests/fixtures/tools.ts";
import { BodyReader } from "../src/cache/body_reader.ts";
import { pullRate } from "./clients.ts";
import { startDistributionProxy } from "./distribution.ts";
import { setUp } from "./env.ts";
import { startEnv, startFlags, startMirrorProcess } from "./mirror.ts";
import { parseCeilingOptions, parseOptions } from "./options.ts";
import { cpuSeconds, machineBusySeconds, median, perGB, spawnLogged, waitHttp } from "./proc.ts";
import { rotate } from "./systems.ts";

/** Spool writes in flight at most, as chunks. */
const WRITES_AHEAD = 4;
/** Buffers in the reused ring, and their size (measurement only, see above). */
const RING = 16;
const PIECE = 1024 * 1024;

type Mode = "runtime" | "reuse" | "relay" | "sha256" | "spool";

/** The upstream body read into RING buffers used in turn (unsafe: measurement only). */
function reusedBuffers(body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = body.getReader({ mode: "byob" });
  const ring = Array.from({ length: RING }, () => new Uint8Array(PIECE));
  let next = 0;
  return new ReadableStream({
    async pull(controller) {
      const slot = next++ % RING;
      const { done, value } = await reader.read(ring[slot]);
      if (done) return controller.close();
      ring[slot] = new Uint8Array(value.buffer); // a BYOB read hands the buffer back anew
      controller.enqueue(value);
    },
  });
}

/** The upstream body, chunk by chunk, hashed and spooled as `mode` says. */
function relay(body: ReadableStream<Uint8Array>, mode: Mode, spoolPath: string) {
  const reader = new BodyReader(body);
  const hash: Hash | undefined = mode === "relay" ? undefined : createHash("sha256");
  const spool = mode === "spool"
    ? Deno.openSync(spoolPath, { write: true, create: true, truncate: true })
    : undefined;
  let written: Promise<void> = Promise.resolve();
  const writes: Promise<void>[] = [];
  const write = async (piece: Uint8Array) => {
    for (let at = 0; at < piece.length;) at += await spool!.write(piece.subarray(at));
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const piece = await reader.read();
      if (!piece) {
        await written;
        spool?.close();
        hash?.digest("hex");
        controller.close();
        return;
      }
      hash?.update(piece);
      if (spool) {
        written = written.then(() => write(piece));
        writes.push(written);
        if (writes.length > WRITES_AHEAD) await writes.shift();
      }
      controller.enqueue(piece);
    },
  });
}

function serve(port: number, upstream: string, mode: Mode, spoolDir: string): void {
  let n = 0;
  Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, async (request) => {
    const response = await fetch(upstream + new URL(request.url).pathname);
    const length = response.headers.get("content-length") ?? "0";
    const body = mode === "runtime"
      ? response.body
      : mode === "reuse"
      ? reusedBuffers(response.body!)
      : relay(response.body!, mode, `${spoolDir}/spool-${n++}`);
    return new Response(body, { headers: { "content-length": length } });
  });
}

if (Deno.args[0] === "--serve") {
  const [, port, upstream, mode, spoolDir] = Deno.args;
  serve(Number(port), upstream, mode as Mode, spoolDir);
} else {
  const { size, rounds } = parseCeilingOptions(Deno.args);
  const opts = parseOptions([
    ...["--size", `${size}B`, "--mid-size", "1MiB", "--small-size", "1MiB"],
    ...["--ttfb-blobs", "1"],
  ]);
  const dir = await Deno.makeTempDir({ prefix: "cold-ceiling-" });
  const env = await setUp(dir, opts);
  try {
    const checkout = new URL("..", import.meta.url).pathname;
    const v8 = startFlags(checkout).filter((flag) => flag.startsWith("--v8-flags="));
    const denoServer = (mode: Mode) => {
      const port = freePort();
      const spoolDir = `${dir}/spool-${mode}`;
      Deno.mkdirSync(spoolDir);
      const script = new URL(import.meta.url).pathname;
      const args = ["run", "-A", ...v8, script, "--serve", String(port), env.nginx.proxyUrl];
      const process = spawnLogged(Deno.execPath(), [...args, mode, spoolDir], {
        logPath: `${dir}/${mode}.log`,
        env: startEnv(checkout),
      });
      return { process, url: `http://127.0.0.1:${port}`, spoolDir };
    };
    const servers: Record<string, ReturnType<typeof denoServer>> = {
      "the runtime's relay (no JavaScript per chunk)": denoServer("runtime"),
      "relay, reused buffers (unsafe)": denoServer("reuse"),
      relay: denoServer("relay"),
      "relay + sha256": denoServer("sha256"),
      "relay + sha256 + spool writes": denoServer("spool"),
    };
    const names = ["distribution", "mirror", ...Object.keys(servers)];
    const rates = Object.fromEntries(names.map((name) => [name, [] as number[]]));
    const cpu = Object.fromEntries(names.map((name) => [name, [] as number[]]));
    // The CPU of everything else on the machine meanwhile (origin, counting proxy, curl).
    const rest = Object.fromEntries(names.map((name) => [name, [] as number[]]));
    const upstream: number[] = [];
    try {
      for (const { process, url } of Object.values(servers)) {
        await waitHttp(`${url}/v2/`, { alive: () => !process.exited(), timeoutMs: 30_000 });
      }
      for (let round = 0; round < rounds; round++) {
        upstream.push(await pullRate(env.nginx.proxyUrl + env.big.path, env.big.size));
        for (const name of rotate(names, round)) {
          // Distribution's proxy and the mirror start on an empty cache every time; the others keep
          // nothing.
          const cacheDir = `${dir}/${name}-${round}`;
          const proxy = name === "distribution"
            ? await startDistributionProxy(cacheDir, env.nginx.proxyUrl)
            : name === "mirror"
            ? await startMirrorProcess({
              dir: cacheDir,
              root: checkout,
              upstream: env.nginx.proxyUrl,
            })
            : undefined;
          const server = proxy ? undefined : servers[name];
          const seconds = () => proxy ? proxy.cpuSeconds() : cpuSeconds(server!.process.pid);
          try {
            const before = seconds();
            const machineBefore = machineBusySeconds();
            rates[name].push(await pullRate((proxy ?? server)!.url + env.big.path, env.big.size));
            const spent = seconds() - before;
            cpu[name].push(perGB(spent, env.big.size));
            rest[name].push(perGB(machineBusySeconds() - machineBefore - spent, env.big.size));
          } finally {
            await proxy?.stop();
            await Deno.remove(cacheDir, { recursive: true }).catch(() => {});
            for (const entry of server ? Deno.readDirSync(server.spoolDir) : []) {
              Deno.removeSync(`${server!.spoolDir}/${entry.name}`);
            }
          }
          await env.nginx.settle();
        }
      }
    } finally {
      for (const { process } of Object.values(servers)) await process.stop();
    }
    const mb = (values: number[]) => values.map((v) => v.toFixed(0)).join(", ");
    const s = (values: number[]) => values.map((v) => v.toFixed(2)).join(", ");
    console.log(`upstream through the counting proxy: ${median(upstream).toFixed(0)} MB/s`);
    for (const name of names) {
      const ratio = median(rates[name]) / median(rates.distribution);
      console.log(
        `${name}: ${median(rates[name]).toFixed(0)} MB/s (${mb(rates[name])}), ` +
          `${ratio.toFixed(2)}x Distribution's proxy, ` +
          `CPU ${median(cpu[name]).toFixed(2)} s/GB (${s(cpu[name])}), ` +
          `the rest of the machine ${median(rest[name]).toFixed(2)} s/GB (${s(rest[name])})`,
      );
    }
    // What a pull at Distribution's proxy's speed leaves a cache that fetches once: the cores'
    // seconds per GB at that speed, less what the rest of the machine spends on one fetch (origin,
    // counting proxy, curl; the median over the Deno servers: Distribution's own figure also holds
    // its second fetch). Beside it, what hashing alone costs the JavaScript thread.
    const cores = navigator.hardwareConcurrency;
    const given = cores / (median(rates.distribution) / 1000);
    const oneFetch = median(Object.keys(servers).flatMap((name) => rest[name]));
    const sha256 = median(cpu["relay + sha256"]) - median(cpu.relay);
    console.log(
      `at Distribution's proxy's speed, ${cores} cores give ${given.toFixed(2)} CPU s/GB; ` +
        `one fetch costs the rest of the machine ${oneFetch.toFixed(2)}: ` +
        `${(given - oneFetch).toFixed(2)} s/GB left for the cache, ` +
        `of which sha256 alone takes ${sha256.toFixed(2)}`,
    );
  } finally {
    await env.stop();
    await Deno.remove(dir, { recursive: true });
  }
}
