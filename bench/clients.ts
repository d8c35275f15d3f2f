// The clients every system is measured with: curl for blob pulls, wrk for request rates.

import { run } from "./proc.ts";

/** One finished curl download. */
export interface Pull {
  status: number;
  /** Body bytes received. */
  bytes: number;
  seconds: number;
  /** Seconds from the start until the first body byte (curl's time_starttransfer). */
  firstByteSeconds: number;
}

/** Options of {@linkcode curlPull}. */
export interface PullOptions {
  /** curl --limit-rate, e.g. "5M" (bytes per second). */
  limitRate?: string;
  /** curl --max-time: the transfer is cut after this many seconds. */
  maxTimeS?: number;
  headers?: Record<string, string>;
}

/** Downloads `url` to /dev/null with curl and returns its status, size and duration. */
export async function curlPull(url: string, opts: PullOptions = {}): Promise<Pull> {
  const maxTimeS = opts.maxTimeS ?? 300;
  const args = [
    "-s",
    "-o",
    "/dev/null",
    "-w",
    "%{http_code} %{size_download} %{time_total} %{time_starttransfer}",
  ];
  args.push("--max-time", String(maxTimeS));
  if (opts.limitRate) args.push("--limit-rate", opts.limitRate);
  for (const [name, value] of Object.entries(opts.headers ?? {})) {
    args.push("-H", `${name}: ${value}`);
  }
  args.push(url);
  const result = await run("curl", args, (maxTimeS + 10) * 1000);
  const [status, bytes, seconds, firstByteSeconds] = result.stdout.trim().split(" ").map(Number);
  return { status, bytes, seconds, firstByteSeconds };
}

/** Pulls `url` once and throws unless it got `size` bytes with a 200. Returns MB/s (10^6). */
export async function pullRate(url: string, size: number, maxTimeS = 300): Promise<number> {
  return (await timedPull(url, size, maxTimeS)).mbps;
}

/** Like {@linkcode pullRate}, with the time to the first body byte in milliseconds too. */
export async function timedPull(
  url: string,
  size: number,
  maxTimeS = 300,
): Promise<{ mbps: number; firstByteMs: number }> {
  const pull = await curlPull(url, { maxTimeS });
  if (pull.status !== 200 || pull.bytes !== size) {
    throw new Error(`pull of ${url}: status ${pull.status}, ${pull.bytes} of ${size} bytes`);
  }
  return { mbps: size / 1e6 / pull.seconds, firstByteMs: pull.firstByteSeconds * 1000 };
}

/** What `count` concurrent curl downloads did, and how long until the last one ended. */
export interface ParallelPulls {
  pulls: Pull[];
  wallSeconds: number;
}

/**
 * Starts `count` curl downloads of `url` at once, or one every `staggerMs`, and waits for all of
 * them.
 */
export async function parallelPulls(
  url: string,
  count: number,
  opts: PullOptions & { staggerMs?: number } = {},
): Promise<ParallelPulls> {
  const started = performance.now();
  const stagger = opts.staggerMs ?? 0;
  const pulls = await Promise.all(
    Array.from({ length: count }, async (_, i) => {
      if (stagger > 0) await new Promise((resolve) => setTimeout(resolve, i * stagger));
      return await curlPull(url, opts);
    }),
  );
  return { pulls, wallSeconds: (performance.now() - started) / 1000 };
}

/** What one wrk run measured. */
export interface Load {
  requests: number;
  requestsPerSec: number;
  p99Ms: number;
  /** Responses with a status outside 2xx/3xx, plus socket errors. */
  errors: number;
}

function toMs(value: string, unit: string): number {
  const scale: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000 };
  return Number(value) * (scale[unit] ?? NaN);
}

/**
 * Runs `wrk` (one thread, keep-alive) with `connections` clients for `durationS` seconds against
 * `url` and returns requests per second and the 99th percentile latency.
 */
export async function wrkLoad(
  url: string,
  opts: { connections: number; durationS: number; headers?: Record<string, string> },
): Promise<Load> {
  const args = ["-t", "1", "-c", String(opts.connections), "-d", `${opts.durationS}s`, "--latency"];
  args.push("--timeout", "10s");
  for (const [name, value] of Object.entries(opts.headers ?? {})) {
    args.push("-H", `${name}: ${value}`);
  }
  args.push(url);
  const result = await run("wrk", args, (opts.durationS + 30) * 1000);
  const out = result.stdout;
  const rate = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const p99 = /\s99%\s+([\d.]+)(us|ms|s|m)\b/.exec(out);
  const total = /(\d+) requests in/.exec(out);
  if (result.code !== 0 || !rate || !p99 || !total) {
    throw new Error(`wrk failed (${result.code}): ${out}${result.stderr}`);
  }
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const socketErrors = socket ? socket.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0;
  return {
    requests: Number(total[1]),
    requestsPerSec: Number(rate[1]),
    p99Ms: toMs(p99[1], p99[2]),
    errors: non2xx + socketErrors,
  };
}
