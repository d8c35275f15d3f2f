// Describes the machine and the versions of everything measured, for the report's header.

import { REGISTRY_BINARY } from "../tests/fixtures/registry.ts";
import { NGINX_BINARY } from "./nginx.ts";
import { run } from "./proc.ts";

async function version(command: string, args: string[], pattern: RegExp): Promise<string> {
  try {
    const { stdout, stderr } = await run(command, args, 10_000);
    return pattern.exec(stdout + stderr)?.[1] ?? "?";
  } catch {
    return "missing";
  }
}

/** One line: CPU, cores, memory, kernel and tool versions. */
export async function describeMachine(): Promise<string> {
  const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  const cpu = /model name\s*:\s*(.+)/.exec(cpuinfo)?.[1]?.trim() ?? "unknown CPU";
  const memTotal = Number(/MemTotal:\s+(\d+) kB/.exec(Deno.readTextFileSync("/proc/meminfo"))?.[1]);
  const [distribution, nginx, curl, wrk] = await Promise.all([
    version(REGISTRY_BINARY, ["--version"], /\s(v?\d[\w.+~-]*)/),
    version(NGINX_BINARY, ["-v"], /nginx\/(\S+)/),
    version("curl", ["--version"], /curl (\S+)/),
    version("wrk", ["--version"], /wrk (?:debian\/)?(\S+)/),
  ]);
  return [
    `${cpu}, ${navigator.hardwareConcurrency} cores, ${(memTotal / 2 ** 20).toFixed(1)} GiB`,
    `Linux ${Deno.osRelease()}`,
    `Deno ${Deno.version.deno}`,
    `Distribution ${distribution}`,
    `nginx ${nginx}`,
    `curl ${curl}`,
    `wrk ${wrk}`,
  ].join(", ");
}

/** The git revision of the checkout at `root` ("abc1234", "+ uncommitted changes" when dirty). */
export async function describeRevision(root: string): Promise<string> {
  try {
    const head = await run("git", ["-C", root, "rev-parse", "--short", "HEAD"], 10_000);
    if (head.code !== 0) return root;
    const dirty = await run("git", [
      "-C",
      root,
      "status",
      "--porcelain",
      "--",
      "main.ts",
      "src",
      "deno.json",
    ], 10_000);
    return `${head.stdout.trim()}${dirty.stdout.trim() ? " + uncommitted changes" : ""}`;
  } catch {
    return root;
  }
}
