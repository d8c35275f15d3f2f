// `deno task bench`: sets up the origin, runs every scenario against registry-mirror and
// Distribution's proxy side by side, prints the table and writes it to BENCHMARKS.md.

import { checkoutRevision } from "./checkout.ts";
import { type BenchEnv, setUp } from "./env.ts";
import { describeMachine, describeRevision } from "./machine.ts";
import { type Options, parseOptions, type ScenarioId } from "./options.ts";
import {
  errorRow,
  mergeReport,
  runDetails,
  type ScenarioResult,
  size,
  table,
  TITLES,
} from "./report.ts";
import { crowdScenario } from "./scenarios/crowd.ts";
import { herdScenario } from "./scenarios/herd.ts";
import { manifestScenario } from "./scenarios/manifest.ts";
import { pullScenarios } from "./scenarios/pulls.ts";
import { s3Scenario } from "./scenarios/s3.ts";
import { slowScenario } from "./scenarios/slow.ts";
import { startupScenario } from "./scenarios/startup.ts";
import { type Systems, systems } from "./systems.ts";

/** Everything one benchmark run produced. */
export interface BenchRun {
  results: ScenarioResult[];
  /** The generated Markdown (header and table). */
  markdown: string;
  seconds: number;
}

type Runner = (env: BenchEnv, opts: Options, caches: Systems) => Promise<ScenarioResult[]>;

const RUNNERS: [ScenarioId[], Runner][] = [
  [["cold", "warm"], pullScenarios],
  [["crowd"], async (...a) => [await crowdScenario(...a)]],
  [["manifest"], async (...a) => [await manifestScenario(...a)]],
  [["herd"], async (...a) => [await herdScenario(...a)]],
  [["slow"], async (...a) => [await slowScenario(...a)]],
  [["startup"], async (...a) => [await startupScenario(...a)]],
  [["s3"], async (...a) => [await s3Scenario(...a)]],
];

function say(text: string): void {
  console.error(`bench: ${text}`);
}

function header(opts: Options, machine: string, revision: string, seconds: number): string {
  const command = ["deno task bench", ...opts.argv].join(" ");
  return [
    `Run on ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC with \`${command}\` ` +
    `in ${Math.round(seconds)} s.`,
    "",
    `Machine: ${machine}. registry-mirror: ${revision}.`,
    "",
    `Blobs: big ${size(opts.size)}, mid ${size(opts.midSize)}, small ${size(opts.smallSize)}. ` +
    `Runs: ${opts.runs} (concurrent clients on the cold blob: ${opts.herdRuns}). ` +
    `MB = 10^6 bytes. Every cache starts empty in each scenario and reaches the origin through ` +
    `the same nginx counting proxy; every client is the same (curl for blobs, wrk for manifests).`,
  ].join("\n");
}

/** `deno fmt` the report, so that `deno fmt --check` stays clean after every run. */
async function formatMarkdown(path: string): Promise<void> {
  const result = await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--quiet", path],
    cwd: new URL("../", import.meta.url).pathname,
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!result.success) say(`deno fmt ${path}: ${new TextDecoder().decode(result.stderr)}`);
}

/** Runs the scenarios chosen in `opts` and writes the report; never leaves a process behind. */
export async function bench(opts: Options): Promise<BenchRun> {
  const began = performance.now();
  const dir = opts.dir ?? await Deno.makeTempDir({ prefix: "registry-mirror-bench-" });
  await Deno.mkdir(`${dir}/runs`, { recursive: true });
  if (opts.cpuProf) await Deno.mkdir(opts.cpuProf, { recursive: true });
  const results: ScenarioResult[] = [];
  let mirrorRoot = opts.mirrorRoot;
  let revision: string | undefined;
  let env: BenchEnv | undefined;
  let caches: Systems | undefined;
  try {
    if (opts.mirrorRev !== undefined) {
      mirrorRoot = `${dir}/mirror-src`;
      revision = await checkoutRevision(opts.mirrorRoot, opts.mirrorRev, mirrorRoot);
      say(`measuring registry-mirror ${revision} (${opts.mirrorRev})`);
    } else {
      revision = await describeRevision(mirrorRoot);
    }
    say(`setting up the origin in ${dir}`);
    env = await setUp(dir, opts);
    caches = systems(env, { mirrorRoot, cpuProfDir: opts.cpuProf });
    for (const [ids, runner] of RUNNERS) {
      const wanted = ids.filter((id) => opts.only.includes(id));
      if (wanted.length === 0) continue;
      const started = performance.now();
      say(`running ${ids.join(" + ")}`);
      try {
        const got = await runner(env, opts, caches);
        results.push(...got.filter((r) => wanted.includes(r.id)));
      } catch (e) {
        say(`${ids.join(" + ")} failed: ${(e as Error)?.stack ?? e}`);
        for (const id of wanted) results.push({ id, rows: [errorRow(id, e)], raw: {} });
      } finally {
        await caches.stopAll();
      }
      say(`${ids.join(" + ")} took ${Math.round((performance.now() - started) / 1000)} s`);
    }
  } finally {
    await caches?.stopAll();
    await env?.stop();
    if (opts.dir === undefined) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  const seconds = (performance.now() - began) / 1000;
  const about = header(
    opts,
    await describeMachine(),
    revision ?? mirrorRoot,
    seconds,
  );
  const details = `<details><summary>Every run (MB/s, bytes, seconds)</summary>\n\n${
    runDetails(results)
  }\n\n</details>`;
  const markdown = `${about}\n\n${table(results)}\n\n${details}\n`;
  const existing = await Deno.readTextFile(opts.out).catch(() => undefined);
  await Deno.writeTextFile(opts.out, mergeReport(existing, markdown));
  await formatMarkdown(opts.out);
  if (opts.json) {
    await Deno.writeTextFile(opts.json, JSON.stringify({ opts, seconds, results }, null, 2));
  }
  return { results, markdown, seconds };
}

if (import.meta.main) {
  const opts = parseOptions(Deno.args);
  const { results, markdown } = await bench(opts);
  console.log(markdown);
  const failed = results.filter((r) => r.rows.some((row) => row.verdict === "error"));
  for (const r of failed) say(`${TITLES[r.id]}: error`);
  Deno.exit(failed.length > 0 ? 1 : 0);
}
