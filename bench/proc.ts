// Process helpers for the benchmark: spawn with output to a file, /proc memory readings, polling.

/** A process started by {@linkcode spawnLogged}. */
export interface Spawned {
  pid: number;
  /** The file receiving the process's stdout and stderr. */
  logPath: string;
  /** True once the process has exited. */
  exited(): boolean;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Runs `command args...` with stdout and stderr going straight to `logPath` (no pipe through this
 * process), via `bash -c 'exec ...'`, so the pid is the command's own.
 */
export function spawnLogged(
  command: string,
  args: string[],
  opts: { logPath: string; cwd?: string; env?: Record<string, string> },
): Spawned {
  const child = new Deno.Command("bash", {
    args: ["-c", 'exec "$@" >>"$BENCH_LOG" 2>&1', "bash", command, ...args],
    cwd: opts.cwd,
    env: { ...opts.env, BENCH_LOG: opts.logPath },
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let done = false;
  const status = child.status.then((s) => {
    done = true;
    return s;
  });
  return {
    pid: child.pid,
    logPath: opts.logPath,
    exited: () => done,
    stop: async (graceMs = 10_000) => {
      if (done) return;
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* already gone */ }
      }, graceMs);
      await status;
      clearTimeout(timer);
    },
  };
}

function statusField(pid: number, field: string): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(status);
  if (!match) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

/** Peak resident memory of a process since it started, in bytes (VmHWM). */
export function peakRss(pid: number): number {
  return statusField(pid, "VmHWM");
}

/** Current resident memory of a process, in bytes (VmRSS). */
export function currentRss(pid: number): number {
  return statusField(pid, "VmRSS");
}

/** CPU time (user + system) a process has used so far, in seconds (USER_HZ = 100). */
export function cpuSeconds(pid: number): number {
  const { user, system } = cpuTimes(pid);
  return user + system;
}

/** CPU seconds `pid` has used so far in user space and in the kernel, apart. */
export function cpuTimes(pid: number): { user: number; system: number } {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { user: Number(fields[11]) / 100, system: Number(fields[12]) / 100 };
}

/**
 * CPU seconds the machine's cores have spent running anything so far (/proc/stat: user, nice,
 * system, irq and softirq; not idle, iowait, or steal, the host's time).
 */
export function machineBusySeconds(): number {
  const [, ...ticks] = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/);
  const [user, nice, system, , , irq, softirq] = ticks.map(Number);
  return (user + nice + system + irq + softirq) / 100;
}

/** Minor page faults of process `pid` so far (field 10 of /proc/PID/stat). */
export function minorFaults(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[7]);
}

/** CPU seconds per GB (10^9 bytes) moved. */
export function perGB(seconds: number, bytes: number): number {
  return seconds / (bytes / 1e9);
}

/** Samples VmRSS of `pid` every `everyMs` until stopped; `stop()` returns the samples (bytes). */
export function sampleRss(pid: number, everyMs = 200): { stop(): number[] } {
  const samples: number[] = [];
  const take = () => {
    try {
      samples.push(currentRss(pid));
    } catch { /* exited */ }
  };
  take();
  const timer = setInterval(take, everyMs);
  return {
    stop: () => {
      clearInterval(timer);
      take();
      return samples;
    },
  };
}

/** The last `lines` lines of a log file ("" when unreadable), for error messages. */
export async function tailOf(path: string, lines = 20): Promise<string> {
  const text = await Deno.readTextFile(path).catch(() => "");
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Polls `url` every `everyMs` until it answers a status accepted by `ok`, for at most
 * `timeoutMs`. Throws when `alive()` turns false or on timeout. Returns the time of success
 * (performance.now()).
 */
export async function waitHttp(
  url: string,
  opts: {
    timeoutMs?: number;
    everyMs?: number;
    ok?: (status: number) => boolean;
    alive?: () => boolean;
    headers?: Record<string, string>;
  } = {},
): Promise<number> {
  const { timeoutMs = 15_000, everyMs = 20, ok = (s) => s === 200, alive = () => true } = opts;
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (!alive()) throw new Error(`process exited before ${url} answered`);
    try {
      const response = await fetch(url, {
        headers: opts.headers,
        signal: AbortSignal.timeout(2000),
      });
      await response.body?.cancel();
      if (ok(response.status)) return performance.now();
    } catch { /* not listening yet */ }
    await sleep(everyMs);
  }
  throw new Error(`${url} did not answer within ${timeoutMs} ms`);
}

/** The median of `values` (NaN when empty). */
export function median(values: number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Runs a command to completion (killed after `timeoutMs`) and returns its stdout as text. */
export async function run(
  command: string,
  args: string[],
  timeoutMs = 120_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(command, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(timeoutMs),
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}
