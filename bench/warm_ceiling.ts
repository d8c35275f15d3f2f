// The warm path's ceiling in this runtime: the smallest Deno server that sends a cached file the
// way the mirror does (Deno.serve and the mirror's fileStream: 1 MiB FsFile.read pieces, nothing
// else of the mirror), alternated with Distribution serving the same file from its own storage and
// with the mirror itself (the file cached by one pull through it first), same curl. Beside them:
// the same server with glibc's default allocator settings (src/allocator.ts); two of it in Workers
// on one port (reusePort: what a second serving thread would give); and one reading into a ring of
// reused buffers (what allocating a buffer per piece costs). That one is unsafe, never for
// serving: Deno hands a chunk to the HTTP server without copying and never says when it is
// written, so a reused buffer could be overwritten before. The Deno servers run in the environment
// `deno task start` sets (its GLIBC_TUNABLES) unless said otherwise.
//
//   deno run -A bench/warm_ceiling.ts [--size 1GiB] [--rounds 5] [--clients 1]
//
// With `--clients N`, N curls pull at once and MB/s is all of them together (the crowd scenario's
// measure: `--size 256MiB --clients 20`). Prints each server's MB/s, CPU seconds per GB (and how
// much of it the kernel's) and page faults per GB, every run and the medians.

import { createHash } from "node:crypto";
import { REGISTRY_BINARY } from "../tests/fixtures/registry.ts";
import { freePort } from "../tests/fixtures/tools.ts";
import { parallelPulls, pullRate } from "./clients.ts";
import { fileStream, newPiece } from "../src/cache/file_stream.ts";
import { startEnv, startFlags, startMirrorProcess } from "./mirror.ts";
import { parseCeilingOptions } from "./options.ts";
import {
  cpuTimes,
  median,
  minorFaults,
  perGB,
  type Spawned,
  spawnLogged,
  waitHttp,
} from "./proc.ts";
import { rotate } from "./systems.ts";

const PIECE = 1024 * 1024;
/** Buffers in the reused ring (measurement only, see above). */
const RING = 16;

/** A server measured: its pid (CPU time, page faults) and the blob's URL. */
interface Measured {
  url: string;
  pid: number;
  alive(): boolean;
  stop(): Promise<void>;
}

/** MB/s (10^6) of `clients` curls pulling `url` at once, all of them together. */
async function pullsRate(url: string, size: number, clients: number): Promise<number> {
  if (clients === 1) return await pullRate(url, size);
  const { pulls, wallSeconds } = await parallelPulls(url, clients);
  const bad = pulls.find((p) => p.status !== 200 || p.bytes !== size);
  if (bad) throw new Error(`pull of ${url}: status ${bad.status}, ${bad.bytes} of ${size} bytes`);
  return clients * size / 1e6 / wallSeconds;
}

/** How a ceiling server sends the file. */
type Mode = "fileStream" | "reuse" | "workers";
/** Serving threads of the `workers` mode. */
const WORKERS = 2;

/**
 * The whole server: the mirror's own `fileStream` for a cached blob, without the mirror around it;
 * with `reuse`, 1 MiB reads into a ring of reused buffers; with `workers`, WORKERS Workers each
 * serving with `fileStream` on the same port.
 */
function serve(port: number, path: string, mode: Mode): void {
  if (mode === "workers") {
    for (let i = 0; i < WORKERS; i++) {
      new Worker(import.meta.url, { type: "module", name: `serve ${port} ${path}` });
    }
    return;
  }
  const size = Deno.statSync(path).size;
  const options = { hostname: "127.0.0.1", port, reusePort: true, onListen() {} };
  Deno.serve(options, async () => {
    const file = await Deno.open(path);
    const body = mode === "reuse" ? reusedBuffers(file) : fileStream(file, { end: size });
    return new Response(body, { headers: { "content-length": String(size) } });
  });
}

/**
 * The file in 1 MiB reads into RING buffers used in turn (unsafe: measurement only), allocated as
 * the mirror's pieces are (`newPiece`: off the page offsets the kernel copies file data into
 * slowly, bench/read_alignment.ts); a ring made at start would otherwise be hit on every read.
 */
function reusedBuffers(file: Deno.FsFile): ReadableStream<Uint8Array> {
  const ring = Array.from({ length: RING }, () => newPiece(PIECE));
  let next = 0;
  return new ReadableStream({
    async pull(controller) {
      const buffer = ring[next++ % RING];
      const n = await file.read(buffer);
      if (n === null) {
        file.close();
        controller.close();
      } else {
        controller.enqueue(buffer.subarray(0, n));
      }
    },
    cancel() {
      file.close();
    },
  });
}

const worker = (globalThis as { name?: string }).name?.match(/^serve (\d+) (.+)$/);
if (worker) {
  serve(Number(worker[1]), worker[2], "fileStream");
} else if (Deno.args[0] === "--serve") {
  serve(Number(Deno.args[1]), Deno.args[2], Deno.args[3] as Mode);
} else {
  const { size, rounds, clients } = parseCeilingOptions(Deno.args, { clients: true });
  const dir = await Deno.makeTempDir({ prefix: "warm-ceiling-" });
  try {
    // One random file, laid out as Distribution's filesystem storage holds a blob.
    const blob = `${dir}/blob`;
    const file = await Deno.open(blob, { write: true, create: true });
    const chunk = new Uint8Array(PIECE);
    const hash = createHash("sha256");
    for (let written = 0; written < size; written += chunk.length) {
      crypto.getRandomValues(chunk.subarray(0, 65536));
      const part = chunk.subarray(0, Math.min(chunk.length, size - written));
      hash.update(part);
      await file.write(part);
    }
    file.close();
    const hex = hash.digest("hex");
    const root = `${dir}/registry/docker/registry/v2`;
    await Deno.mkdir(`${root}/blobs/sha256/${hex.slice(0, 2)}/${hex}`, { recursive: true });
    await Deno.link(blob, `${root}/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`);
    // library/bench: the mirror asks for it as Docker Hub's `bench`.
    const layers = `${root}/repositories/library/bench/_layers/sha256/${hex}`;
    await Deno.mkdir(layers, { recursive: true });
    await Deno.writeTextFile(`${layers}/link`, `sha256:${hex}`);
    const registryPort = freePort();
    await Deno.writeTextFile(
      `${dir}/registry.yml`,
      [
        "version: 0.1",
        "log: {level: error, accesslog: {disabled: true}}",
        `storage: {filesystem: {rootdirectory: ${dir}/registry}, cache: {blobdescriptor: inmemory}}`,
        `http: {addr: 127.0.0.1:${registryPort}}`,
        "",
      ].join("\n"),
    );
    // The V8 flags and the environment the mirror runs with (deno task start).
    const checkout = new URL("..", import.meta.url).pathname;
    const v8 = startFlags(checkout).filter((flag) => flag.startsWith("--v8-flags="));
    const spawned = (process: Spawned, url: string): Measured => ({
      url,
      pid: process.pid,
      alive: () => !process.exited(),
      stop: () => process.stop(),
    });
    const denoServer = (name: string, mode: Mode, env = startEnv(checkout)) => {
      const port = freePort();
      const script = new URL(import.meta.url).pathname;
      return spawned(
        spawnLogged(
          Deno.execPath(),
          ["run", "-A", "--unstable-net", ...v8, script, "--serve", String(port), blob, mode],
          { logPath: `${dir}/${name}.log`, env },
        ),
        `http://127.0.0.1:${port}/`,
      );
    };
    const registry = `http://127.0.0.1:${registryPort}`;
    const path = `/v2/library/bench/blobs/sha256:${hex}`;
    const measured: Record<string, Measured> = {
      distribution: spawned(
        spawnLogged(REGISTRY_BINARY, ["serve", `${dir}/registry.yml`], {
          logPath: `${dir}/registry.log`,
        }),
        registry + path,
      ),
      deno: denoServer("deno", "fileStream"),
      "deno, glibc's default allocator settings": denoServer("defaults", "fileStream", {
        ...startEnv(checkout),
        GLIBC_TUNABLES: "",
      }),
      [`deno, ${WORKERS} workers (reusePort)`]: denoServer("workers", "workers"),
      "deno, reused buffers (unsafe)": denoServer("reuse", "reuse"),
    };
    const rates: Record<string, number[]> = {};
    const cpu: Record<string, number[]> = {};
    const kernel: Record<string, number[]> = {};
    const faults: Record<string, number[]> = {};
    try {
      for (const { url, alive } of Object.values(measured)) {
        await waitHttp(url, { alive, timeoutMs: 30_000 });
      }
      // The mirror, its cache filled by one pull from Distribution.
      const mirror = await startMirrorProcess({
        dir: `${dir}/mirror`,
        root: checkout,
        upstream: registry,
      });
      measured.mirror = { ...mirror, url: mirror.url + path };
      await pullRate(measured.mirror.url, size);
      const names = Object.keys(measured);
      for (let round = 0; round < rounds; round++) {
        for (const name of rotate(names, round)) {
          const { pid, url } = measured[name];
          const faulted = minorFaults(pid);
          const before = cpuTimes(pid);
          (rates[name] ??= []).push(await pullsRate(url, size, clients));
          const after = cpuTimes(pid);
          const sent = size * clients;
          (faults[name] ??= []).push(perGB(minorFaults(pid) - faulted, sent));
          const system = after.system - before.system;
          (cpu[name] ??= []).push(perGB(after.user - before.user + system, sent));
          (kernel[name] ??= []).push(perGB(system, sent));
        }
      }
    } finally {
      for (const { stop } of Object.values(measured)) await stop();
    }
    const mb = (values: number[]) => values.map((v) => v.toFixed(0)).join(", ");
    const s = (values: number[]) => values.map((v) => v.toFixed(2)).join(", ");
    console.log(`${clients} client(s) at once, ${rounds} round(s) of ${size} bytes each`);
    for (const name of Object.keys(rates)) {
      const ratio = median(rates[name]) / median(rates.distribution);
      console.log(
        `${name}: ${median(rates[name]).toFixed(0)} MB/s (${mb(rates[name])}), ` +
          `${ratio.toFixed(2)}x Distribution, ` +
          `CPU ${median(cpu[name]).toFixed(2)} s/GB (${s(cpu[name])}), ` +
          `of which in the kernel ${median(kernel[name]).toFixed(2)} s/GB (${s(kernel[name])}), ` +
          `page faults ${median(faults[name]).toFixed(0)} per GB (${mb(faults[name])})`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
