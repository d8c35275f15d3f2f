// A/B: checkouts of registry-mirror, alternated run by run against one origin, on what a change to
// the serving path can cost: a cold and a warm pull of the big blob (MB/s and the server's CPU
// seconds per GB), cached manifests under wrk, and the time from spawn to the first answer.
//
//   deno run -A bench/ab.ts --root DIR --root DIR [--root DIR] [--rounds 4] [--size 1GiB]
//     [--load-seconds 5] [--only pulls,manifest]

import { parseArgs } from "node:util";
import { pullRate, wrkLoad } from "./clients.ts";
import { MANIFEST_ACCEPT, REPO, setUp } from "./env.ts";
import { startMirrorProcess } from "./mirror.ts";
import { parseOptions } from "./options.ts";
import { median, perGB } from "./proc.ts";
import { rotate } from "./systems.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    root: { type: "string", multiple: true },
    only: { type: "string", default: "pulls,manifest" },
    rounds: { type: "string", default: "4" },
    size: { type: "string", default: "1GiB" },
    "load-seconds": { type: "string", default: "5" },
  },
});
if ((values.root ?? []).length < 2) throw new Error("usage: bench/ab.ts --root DIR --root DIR...");
const roots = Object.fromEntries(
  values.root!.map((root, i) => [String.fromCharCode(65 + i), root.replace(/\/$/, "")]),
);
const opts = parseOptions(["--size", values.size!, "--mid-size", "1MiB", "--small-size", "1MiB"]);
const loadSeconds = Number(values["load-seconds"]);
const only = new Set(values.only!.split(","));
const series: Record<string, number[]> = {};
const push = (key: string, value: number) => (series[key] ??= []).push(value);

const dir = await Deno.makeTempDir({ prefix: "registry-mirror-ab-" });
const env = await setUp(dir, opts);
try {
  for (let round = 0; round < Number(values.rounds); round++) {
    for (const side of rotate(Object.keys(roots), round)) {
      const runDir = `${dir}/runs/${side}-${round}`;
      const mirror = await startMirrorProcess({
        dir: runDir,
        root: roots[side],
        upstream: env.nginx.proxyUrl,
      });
      try {
        push(`startup.${side}`, (performance.now() - mirror.spawnedAt) / 1000);
        const url = mirror.url + env.big.path;
        for (const phase of only.has("pulls") ? ["cold", "warm"] : []) {
          const cpu = mirror.cpuSeconds();
          push(`${phase}.${side}`, await pullRate(url, env.big.size));
          push(`${phase}Cpu.${side}`, perGB(mirror.cpuSeconds() - cpu, env.big.size));
          await env.nginx.settle();
        }
        if (only.has("manifest")) {
          const manifest = `${mirror.url}/v2/${REPO}/manifests/${env.manifestTag}`;
          const headers = { accept: MANIFEST_ACCEPT };
          await wrkLoad(manifest, { connections: 20, durationS: 1, headers });
          const load = await wrkLoad(manifest, {
            connections: 20,
            durationS: loadSeconds,
            headers,
          });
          if (load.errors > 0) throw new Error(`${side}: ${load.errors} manifest errors`);
          push(`manifest.${side}`, load.requestsPerSec);
          push(`manifestP99.${side}`, load.p99Ms);
        }
      } finally {
        await mirror.stop();
        await Deno.remove(runDir, { recursive: true });
      }
      console.error(`ab: round ${round + 1} ${side} done`);
    }
  }
} finally {
  await env.stop();
  await Deno.remove(dir, { recursive: true });
}

const MEASURES: [string, string][] = [
  ["cold", "cold pull, MB/s"],
  ["coldCpu", "cold pull, server CPU s/GB"],
  ["warm", "warm pull, MB/s"],
  ["warmCpu", "warm pull, server CPU s/GB"],
  ["manifest", "cached manifest, req/s (20 clients)"],
  ["manifestP99", "cached manifest, p99 ms"],
  ["startup", "spawn to first answer, s"],
];
const fmt = (n: number) => n >= 100 ? n.toFixed(0) : n.toFixed(2);
const sides = Object.keys(roots);
const lines = [
  `${sides.map((side) => `${side}: ${roots[side]}`).join("  ")}`,
  `${values.rounds} rounds, alternated; medians (ratio to A), then every run`,
  "",
  `| measure | ${sides.join(" | ")} | ${sides.map((side) => `${side} runs`).join(" | ")} |`,
  `| --- | ${sides.map(() => "--- | ---").join(" | ")} |`,
];
for (const [key, title] of MEASURES) {
  const runs = sides.map((side) => series[`${key}.${side}`] ?? []);
  if (runs.every((r) => r.length === 0)) continue;
  const base = median(runs[0]);
  const medians = runs.map((r, i) =>
    i === 0 ? fmt(median(r)) : `${fmt(median(r))} (${(median(r) / base).toFixed(2)})`
  );
  lines.push(
    `| ${title} | ${medians.join(" | ")} | ${runs.map((r) => r.map(fmt).join(", ")).join(" | ")} |`,
  );
}
console.log(lines.join("\n"));
