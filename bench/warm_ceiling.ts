// The warm path's ceiling in this runtime: the smallest Deno server that sends a cached file the
// way the mirror does (Deno.serve and the mirror's fileStream: 1 MiB FsFile.read pieces, nothing
// else of the mirror), alternated with Distribution serving the same file from its own storage,
// same curl.
//
//   deno run -A bench/warm_ceiling.ts [--size 1GiB] [--rounds 5]
//
// Prints each server's MB/s and CPU seconds per GB, every run and the medians.

import { createHash } from "node:crypto";
import { parseArgs } from "node:util";
import { REGISTRY_BINARY } from "../tests/fixtures/registry.ts";
import { freePort } from "../tests/fixtures/tools.ts";
import { pullRate } from "./clients.ts";
import { fileStream } from "../src/cache/file_stream.ts";
import { parseSize } from "../src/units.ts";
import { cpuSeconds, median, perGB, spawnLogged, waitHttp } from "./proc.ts";

const PIECE = 1024 * 1024;

/** The whole server: the mirror's own `fileStream` for a cached blob, without the mirror around it. */
function serve(port: number, path: string): void {
  const size = Deno.statSync(path).size;
  Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, async () => {
    const body = fileStream(await Deno.open(path), { end: size });
    return new Response(body, { headers: { "content-length": String(size) } });
  });
}

if (Deno.args[0] === "--serve") {
  serve(Number(Deno.args[1]), Deno.args[2]);
} else {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      size: { type: "string", default: "1GiB" },
      rounds: { type: "string", default: "5" },
    },
  });
  const size = parseSize(values.size!);
  if (size === undefined) throw new Error(`--size ${values.size}: not a size`);
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
    const denoPort = freePort();
    const servers = {
      distribution: {
        process: spawnLogged(REGISTRY_BINARY, ["serve", `${dir}/registry.yml`], {
          logPath: `${dir}/registry.log`,
        }),
        url: `http://127.0.0.1:${registryPort}/v2/bench/blobs/sha256:${hex}`,
      },
      deno: {
        process: spawnLogged(Deno.execPath(), [
          "run",
          "-A",
          "--v8-flags=--initial-old-space-size=64",
          new URL(import.meta.url).pathname,
          "--serve",
          String(denoPort),
          blob,
        ], { logPath: `${dir}/deno.log` }),
        url: `http://127.0.0.1:${denoPort}/`,
      },
    };
    const rates: Record<string, number[]> = { distribution: [], deno: [] };
    const cpu: Record<string, number[]> = { distribution: [], deno: [] };
    try {
      for (const { process, url } of Object.values(servers)) {
        await waitHttp(url, { alive: () => !process.exited(), timeoutMs: 30_000 });
      }
      for (let round = 0; round < Number(values.rounds); round++) {
        const order = round % 2 === 0 ? ["distribution", "deno"] : ["deno", "distribution"];
        for (const name of order as (keyof typeof servers)[]) {
          const { process, url } = servers[name];
          const before = cpuSeconds(process.pid);
          rates[name].push(await pullRate(url, size));
          cpu[name].push(perGB(cpuSeconds(process.pid) - before, size));
        }
      }
    } finally {
      for (const { process } of Object.values(servers)) await process.stop();
    }
    const mb = (values: number[]) => values.map((v) => v.toFixed(0)).join(", ");
    const s = (values: number[]) => values.map((v) => v.toFixed(2)).join(", ");
    for (const name of ["distribution", "deno"]) {
      console.log(
        `${name}: ${median(rates[name]).toFixed(0)} MB/s (${mb(rates[name])}), ` +
          `CPU ${median(cpu[name]).toFixed(2)} s/GB (${s(cpu[name])})`,
      );
    }
    console.log(
      `bare Deno / Distribution: ${(median(rates.deno) / median(rates.distribution)).toFixed(2)}x`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
