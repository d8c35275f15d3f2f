// The benchmark's command line: sizes, run counts and client counts, with a tiny --smoke profile.

import { parseArgs } from "node:util";
import { parseSize } from "../src/units.ts";
import { type Rgw, rgwAt } from "./rgw.ts";

/** Every scenario, in the order they run and appear in the table. */
export const SCENARIOS = [
  "cold",
  "warm",
  "crowd",
  "manifest",
  "herd",
  "slow",
  "startup",
  "s3",
] as const;

/** A scenario id. */
export type ScenarioId = typeof SCENARIOS[number];

/** What the benchmark measures and how much of it. */
export interface Options {
  /** The big blob (cold, warm, herd and slow-client scenarios). */
  size: number;
  /** The smaller blob the slow clients are also run against, to see whether memory grows. */
  midSize: number;
  /** The small blob pulled cold and warm next to the big one. */
  smallSize: number;
  /** Cold blobs whose time to first byte is timed, each next to the upstream's own. */
  ttfbBlobs: number;
  /** Runs per measurement; the table shows medians. */
  runs: number;
  /** Runs of the long concurrent-clients scenario. */
  herdRuns: number;
  /** Concurrent clients on one cold big blob. */
  herdClients: number;
  /** Concurrent clients asking for a cached manifest by tag, and pulling a warm blob. */
  concurrency: number;
  /** Seconds of each manifest load run. */
  loadSeconds: number;
  /** Rate-limited clients on a warm blob, their rate (curl --limit-rate) and how long they read. */
  slowClients: number;
  slowRate: string;
  slowSeconds: number;
  /** Runs of the slow clients per cache and blob. */
  slowRuns: number;
  /** Cached objects fabricated for the start-up scenario. */
  objects: number;
  /** An RGW already running for the s3 scenario (`--rgw-dir`); by default one is booted. */
  rgw?: Rgw;
  /** Scenarios to run. */
  only: ScenarioId[];
  /** Markdown report to write (BENCHMARKS.md); its text outside the generated part is kept. */
  out: string;
  /** Raw results as JSON, when set. */
  json?: string;
  /** Work directory (default: a new temporary directory, removed at the end). */
  dir?: string;
  /** Write V8 CPU profiles of every mirror process here. */
  cpuProf?: string;
  /** The checkout of registry-mirror to measure (default: this one). */
  mirrorRoot: string;
  /** A git revision of this repository to measure instead of the working tree. */
  mirrorRev?: string;
  smoke: boolean;
  /** The command line as given, for the report. */
  argv: string[];
}

const ROOT = new URL("../", import.meta.url).pathname;

function size(text: string, name: string): number {
  const bytes = /^\d+$/.test(text) ? Number(text) : parseSize(text);
  if (bytes === undefined || bytes <= 0) throw new Error(`--${name}: not a size: "${text}"`);
  return bytes;
}

function count(text: string, name: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) {
    throw new Error(`--${name}: not a positive integer: "${text}"`);
  }
  return n;
}

/** Parses the command line; `--smoke` changes the defaults to a run of a few seconds. */
export function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      smoke: { type: "boolean", default: false },
      size: { type: "string" },
      "mid-size": { type: "string" },
      "small-size": { type: "string" },
      "ttfb-blobs": { type: "string" },
      runs: { type: "string" },
      "herd-runs": { type: "string" },
      "herd-clients": { type: "string" },
      concurrency: { type: "string" },
      "load-seconds": { type: "string" },
      "slow-clients": { type: "string" },
      "slow-rate": { type: "string" },
      "slow-seconds": { type: "string" },
      "slow-runs": { type: "string" },
      objects: { type: "string" },
      only: { type: "string" },
      out: { type: "string" },
      json: { type: "string" },
      dir: { type: "string" },
      "cpu-prof": { type: "string" },
      "mirror-root": { type: "string" },
      "mirror-rev": { type: "string" },
      "rgw-dir": { type: "string" },
    },
  });
  const smoke = values.smoke ?? false;
  const pick = (given: string | undefined, full: string, tiny: string) =>
    given ?? (smoke ? tiny : full);
  const only = (values.only ?? SCENARIOS.join(",")).split(",").map((id) => {
    if (!(SCENARIOS as readonly string[]).includes(id)) {
      throw new Error(`--only: unknown scenario "${id}" (${SCENARIOS.join(", ")})`);
    }
    return id as ScenarioId;
  });
  return {
    size: size(pick(values.size, "1GiB", "4MiB"), "size"),
    midSize: size(pick(values["mid-size"], "256MiB", "2MiB"), "mid-size"),
    smallSize: size(pick(values["small-size"], "10MiB", "1MiB"), "small-size"),
    ttfbBlobs: count(pick(values["ttfb-blobs"], "20", "3"), "ttfb-blobs"),
    runs: count(pick(values.runs, "5", "1"), "runs"),
    herdRuns: count(pick(values["herd-runs"], "3", "1"), "herd-runs"),
    herdClients: count(pick(values["herd-clients"], "50", "5"), "herd-clients"),
    concurrency: count(pick(values.concurrency, "20", "4"), "concurrency"),
    loadSeconds: count(pick(values["load-seconds"], "5", "1"), "load-seconds"),
    slowClients: count(pick(values["slow-clients"], "10", "3"), "slow-clients"),
    slowRate: pick(values["slow-rate"], "5M", "1M"),
    slowSeconds: count(pick(values["slow-seconds"], "10", "1"), "slow-seconds"),
    slowRuns: count(pick(values["slow-runs"], "2", "1"), "slow-runs"),
    objects: count(pick(values.objects, "100000", "1000"), "objects"),
    rgw: values["rgw-dir"] === undefined ? undefined : rgwAt(values["rgw-dir"]),
    only,
    out: values.out ?? `${ROOT}BENCHMARKS.md`,
    json: values.json,
    dir: values.dir,
    cpuProf: values["cpu-prof"],
    mirrorRoot: (values["mirror-root"] ?? ROOT).replace(/\/$/, ""),
    mirrorRev: values["mirror-rev"],
    smoke,
    argv,
  };
}

/**
 * The options of the ceiling programs (bench/*_ceiling.ts): `--size` (1GiB), `--rounds` (5) and,
 * where `clients` is allowed (the warm ceiling), `--clients` (1: clients pulling at once).
 */
export function parseCeilingOptions(
  argv: string[],
  allow: { clients?: boolean } = {},
): { size: number; rounds: number; clients: number } {
  const { values } = parseArgs({
    args: argv,
    options: {
      size: { type: "string", default: "1GiB" },
      rounds: { type: "string", default: "5" },
      ...(allow.clients ? { clients: { type: "string", default: "1" } } : {}),
    },
  });
  const size = parseSize(values.size as string);
  if (size === undefined) throw new Error(`--size ${values.size}: not a size`);
  return {
    size,
    rounds: count(values.rounds as string, "rounds"),
    clients: count((values.clients as string | undefined) ?? "1", "clients"),
  };
}
