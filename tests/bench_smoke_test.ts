// Runs the benchmark harness end to end with tiny sizes so it keeps working; timings are not asserted.

import assert from "node:assert/strict";
import { bench } from "../bench/main.ts";
import { parseOptions, SCENARIOS } from "../bench/options.ts";
import { BEGIN, COLUMNS, END, type ScenarioResult, TITLES } from "../bench/report.ts";
import { rgw, RGW_TOOLS } from "./fixtures/rgw.ts";
import { skipUnless } from "./fixtures/tools.ts";

function raw(results: ScenarioResult[], id: string): Record<string, unknown> {
  const result = results.find((r) => r.id === id);
  assert.ok(result, `no result for scenario ${id}`);
  return result.raw;
}

function cells(line: string): string[] {
  return line.slice(1, -1).split("|").map((cell) => cell.trim());
}

Deno.test({
  name: "bench --smoke writes a well-formed table with a row per scenario and sane numbers",
  ...skipUnless(["/usr/bin/docker-registry", "/usr/sbin/nginx", "wrk", "curl", ...RGW_TOOLS]),
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "bench_smoke_" });
    try {
      const out = `${dir}/BENCHMARKS.md`;
      await Deno.writeTextFile(out, "# Kept\n\nhand-written analysis\n");
      // The s3 scenario runs on this test process's RGW (shared with the other test files) rather
      // than booting one of its own.
      const opts = { ...parseOptions(["--smoke", "--out", out]), rgw: await rgw() };
      const { results } = await bench(opts);

      const report = await Deno.readTextFile(out);
      assert.ok(report.startsWith("# Kept\n\nhand-written analysis\n"), "text outside kept");
      assert.ok(report.includes(BEGIN) && report.includes(END));
      const lines = report.split("\n").filter((line) => line.startsWith("|"));
      assert.deepEqual(cells(lines[0]), COLUMNS);
      assert.ok(cells(lines[1]).every((cell) => /^-+$/.test(cell)));
      const rows = lines.slice(2).map(cells);
      for (const row of rows) assert.equal(row.length, COLUMNS.length, row.join(" | "));
      for (const id of SCENARIOS) {
        const mine = rows.filter((row) => row[0] === TITLES[id]);
        assert.ok(mine.length > 0, `no row for ${id}`);
        for (const row of mine) {
          assert.ok(["met", "missed", "info"].includes(row[7]), `${id}: ${row.join(" | ")}`);
        }
      }

      const cold = raw(results, "cold") as Record<string, number[]>;
      for (const key of ["cold.big.mirror", "cold.big.distribution", "cold.big.direct"]) {
        assert.ok(cold[key].every((rate) => rate > 0), key);
      }
      assert.ok(cold["origin.big.mirror"][0] >= 1, "the origin sent the blob to the mirror");
      assert.ok(cold["origin.big.distribution"][0] >= 1);
      const warm = raw(results, "warm") as Record<string, number[]>;
      assert.ok(warm["warm.big.mirror"][0] > 0 && warm["warm.big.nginx"][0] > 0);
      assert.equal(warm["warmOrigin.big.mirror"][0], 0, "a warm pull does not reach the origin");

      const { loads } = raw(results, "manifest") as {
        loads: Record<string, { requests: number; errors: number }[]>;
      };
      for (const kind of ["mirror", "distribution"]) {
        assert.ok(loads[kind][0].requests > 0, kind);
        assert.equal(loads[kind][0].errors, 0, kind);
      }

      type Herd = { originX: number; complete: number; peakRss: number };
      const herd = raw(results, "herd") as {
        runs: Record<string, Herd[]>;
        staggered: Record<string, Herd>;
      };
      const clients = parseOptions(["--smoke"]).herdClients;
      assert.ok(herd.runs.mirror[0].originX >= 1 && herd.runs.mirror[0].originX < 1.01);
      assert.ok(herd.runs.distribution[0].originX >= 1);
      assert.equal(herd.runs.mirror[0].complete, clients);
      assert.ok(herd.runs.mirror[0].peakRss > 0);
      for (const kind of ["mirror", "distribution"]) {
        assert.equal(herd.staggered[kind].complete, clients, `staggered herd, ${kind}`);
      }
      assert.ok(herd.staggered.mirror.originX >= 1 && herd.staggered.mirror.originX < 1.01);

      const slow = raw(results, "slow") as { runs: Record<string, { peakRss: number }[]> };
      assert.ok(slow.runs.mirror.every((run) => run.peakRss > 0));

      const startup = raw(results, "startup") as { runs: { ready: number; hit: number }[] };
      assert.ok(startup.runs.every((run) => run.ready > 0 && run.hit >= run.ready));

      const s3 = raw(results, "s3") as Record<string, number[]> & {
        herds: Record<string, { originX: number; complete: number }[]>;
      };
      for (const key of ["cold.mirror", "cold.distribution", "warm.mirror", "warm.distribution"]) {
        assert.ok(s3[key].every((rate) => rate > 0), key);
      }
      const once = s3["origin.mirror"][0];
      assert.ok(once >= 1 && once < 1.01, `one blob from the origin per cold pull: ${once}x`);
      assert.ok(s3["origin.distribution"][0] >= 1);
      assert.equal(s3["warmOrigin.mirror"][0], 0, "a warm pull is served from the bucket");
      assert.ok(s3["stored.mirror"][0] > 0, "the blob reached the bucket");
      assert.ok(s3.herds.mirror[0].originX >= 1 && s3.herds.mirror[0].originX < 1.01);
      assert.equal(s3.herds.mirror[0].complete, clients, "every client got the blob");
      assert.ok(s3.herds.distribution[0].originX >= 1);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "bench: the warm and cold ceilings run end to end and report every server",
  ...skipUnless(["/usr/bin/docker-registry", "/usr/sbin/nginx", "curl"]),
  fn: async () => {
    const ceilings: [string, string[]][] = [
      ["warm_ceiling.ts", [
        "distribution",
        "deno",
        "deno, glibc's default allocator settings",
        "deno, 2 workers (reusePort)",
        "mirror",
      ]],
      ["cold_ceiling.ts", [
        "distribution",
        "mirror",
        "the runtime's relay (no JavaScript per chunk)",
        "relay, reused buffers (unsafe)",
        "relay",
        "relay + sha256 + spool writes",
      ]],
    ];
    for (const [script, servers] of ceilings) {
      const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", `bench/${script}`, "--size", "8MiB", "--rounds", "1"],
        cwd: new URL("..", import.meta.url).pathname,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const out = new TextDecoder().decode(stdout);
      assert.equal(code, 0, `${script}: ${new TextDecoder().decode(stderr)}`);
      for (const server of servers) {
        const line = out.split("\n").find((l) => l.startsWith(`${server}: `));
        assert.match(line ?? "", /: [1-9]\d* MB\/s .* CPU \d+\.\d+ s\/GB/, `${script}: ${server}`);
      }
      if (script === "cold_ceiling.ts") {
        assert.match(out, /s\/GB left for the cache, of which sha256 alone takes -?\d+\.\d+/);
      }
    }
  },
});
