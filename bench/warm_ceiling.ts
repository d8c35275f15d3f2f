// The warm path's ceiling in this runtime: the smallest Deno server that sends a cached file the
// way the mirror does (Deno.serve and the mirror's fileStream: 1 MiB FsFile.read pieces, nothing
// else of the mirror), alternated with Distribution serving the same file from its own storage,
// same curl. A third server sends the file from a ring of reused buffers: what allocating a buffer
// per piece costs. It is unsafe, never for serving: Deno hands a chunk to the HTTP server without
// copying and never says when it is written, so a reused buffer could be overwritten before.
// The Deno servers run in the environment `deno task start` sets (its GLIBC_TUNABLES); one more
// runs the mirror's fileStream with glibc's default allocator settings (src/allocator.ts).
//
//   deno run -A bench/warm_ceiling.ts [--size 1GiB] [--rounds 5]
//
// Prints each server's MB/s, CPU seconds per GB (and how much of it the kernel's) and page faults
// per GB, every run and the medians.

import { createHash } from "node:crypto";
import { REGISTRY_BINARY } from "../tests/fixtures/registry.ts";
import { freePort } from "../tests/fixtures/tools.ts";
import { pullRate } from "./clients.ts";
import { fileStream, newPiece } from "../src/cache/file_stream.ts";
import { startEnv, startFlags } from "./mirror.ts";
import { parseCeilingOptions } from "./options.ts";
import { cpuTimes, median, minorFaults, perGB, spawnLogged, waitHttp } from "./proc.ts";
import { rotate } from "./systems.ts";

const PIECE = 1024 * 1024;
/** Buffers in the reused ring (measurement only, see above). */
const RING = 16;

/**
 * The whole server: the mirror's own `fileStream` for a cached blob, without the mirror around it;
 * or, with `reuse`, 1 MiB reads into a ring of reused buffers.
 */
function serve(port: number, path: string, reuse: boolean): void {
  const size = Deno.statSync(path).size;
  Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, async () => {
    const file = await Deno.open(path);
    const body = reuse ? reusedBuffers(file) : fileStream(file, { end: size });
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

if (Deno.args[0] === "--serve") {
  serve(Number(Deno.args[1]), Deno.args[2], Deno.args[3] === "reuse");
} else {
  const { size, rounds } = parseCeilingOptions(Deno.args);
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
    const layers = `${root}/repositories/bench/_layers/sha256/${hex}`;
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
    const denoServer = (name: string, mode: string, env = startEnv(checkout)) => {
      const port = freePort();
      const script = new URL(import.meta.url).pathname;
      return {
        process: spawnLogged(
          Deno.execPath(),
          ["run", "-A", ...v8, script, "--serve", String(port), blob, mode],
          { logPath: `${dir}/${name}.log`, env },
        ),
        url: `http://127.0.0.1:${port}/`,
      };
    };
    const servers = {
      distribution: {
        process: spawnLogged(REGISTRY_BINARY, ["serve", `${dir}/registry.yml`], {
          logPath: `${dir}/registry.log`,
        }),
        url: `http://127.0.0.1:${registryPort}/v2/bench/blobs/sha256:${hex}`,
      },
      deno: denoServer("deno", "fileStream"),
      "deno, glibc's default allocator settings": denoServer("defaults", "fileStream", {
        ...startEnv(checkout),
        GLIBC_TUNABLES: "",
      }),
      "deno, reused buffers (unsafe)": denoServer("reuse", "reuse"),
    };
    const names = Object.keys(servers) as (keyof typeof servers)[];
    const rates = Object.fromEntries(names.map((name) => [name, [] as number[]]));
    const cpu = Object.fromEntries(names.map((name) => [name, [] as number[]]));
    const kernel = Object.fromEntries(names.map((name) => [name, [] as number[]]));
    const faults = Object.fromEntries(names.map((name) => [name, [] as number[]]));
    try {
      for (const { process, url } of Object.values(servers)) {
        await waitHttp(url, { alive: () => !process.exited(), timeoutMs: 30_000 });
      }
      for (let round = 0; round < rounds; round++) {
        for (const name of rotate(names, round)) {
          const { process, url } = servers[name];
          const faulted = minorFaults(process.pid);
          const before = cpuTimes(process.pid);
          rates[name].push(await pullRate(url, size));
          const after = cpuTimes(process.pid);
          faults[name].push(perGB(minorFaults(process.pid) - faulted, size));
          const system = after.system - before.system;
          cpu[name].push(perGB(after.user - before.user + system, size));
          kernel[name].push(perGB(system, size));
        }
      }
    } finally {
      for (const { process } of Object.values(servers)) await process.stop();
    }
    const mb = (values: number[]) => values.map((v) => v.toFixed(0)).join(", ");
    const s = (values: number[]) => values.map((v) => v.toFixed(2)).join(", ");
    for (const name of names) {
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
