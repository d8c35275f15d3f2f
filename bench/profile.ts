// Summarizes a V8 .cpuprofile (from `deno run --cpu-prof`): the functions with the most self and
// total time. `deno run -A bench/profile.ts FILE.cpuprofile [--top N]`

import { parseArgs } from "node:util";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

/** The parts of a .cpuprofile this summary reads. */
export interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** Time spent in one function (all its nodes), in milliseconds. */
export interface FunctionTime {
  name: string;
  selfMs: number;
  totalMs: number;
}

function label(frame: CallFrame): string {
  const name = frame.functionName || "(anonymous)";
  if (!frame.url) return name;
  const file = frame.url.replace(/^file:\/\/.*?\/(src|main\.ts)/, "$1").replace(
    /^.*\/ext:/,
    "ext:",
  );
  return `${name} ${file}:${frame.lineNumber + 1}`;
}

/** Self and total (inclusive) time per function, most self time first. */
export function summarize(profile: CpuProfile): { totalMs: number; functions: FunctionTime[] } {
  const parent = new Map<number, number>();
  const byId = new Map<number, ProfileNode>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  let totalMs = 0;
  profile.samples.forEach((id, i) => {
    const ms = (profile.timeDeltas[i] ?? 0) / 1000;
    totalMs += ms;
    const leaf = label(byId.get(id)!.callFrame);
    self.set(leaf, (self.get(leaf) ?? 0) + ms);
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const name = label(byId.get(at)!.callFrame);
      if (seen.has(name)) continue;
      seen.add(name);
      total.set(name, (total.get(name) ?? 0) + ms);
    }
  });
  const functions = [...total.keys()].map((name) => ({
    name,
    selfMs: self.get(name) ?? 0,
    totalMs: total.get(name) ?? 0,
  }));
  return { totalMs, functions };
}

function print(path: string, top: number): void {
  const profile = JSON.parse(Deno.readTextFileSync(path)) as CpuProfile;
  const { totalMs, functions } = summarize(profile);
  const pct = (ms: number) => `${(100 * ms / totalMs).toFixed(1).padStart(5)}%`;
  console.log(`${path}: ${(totalMs / 1000).toFixed(2)} s sampled`);
  console.log("self:");
  for (const f of [...functions].sort((a, b) => b.selfMs - a.selfMs).slice(0, top)) {
    console.log(`  ${pct(f.selfMs)}  ${f.name}`);
  }
  console.log("total:");
  for (const f of [...functions].sort((a, b) => b.totalMs - a.totalMs).slice(0, top)) {
    console.log(`  ${pct(f.totalMs)}  ${f.name}`);
  }
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({
    args: Deno.args,
    allowPositionals: true,
    options: { top: { type: "string", default: "20" } },
  });
  for (const path of positionals) print(path, Number(values.top));
}
