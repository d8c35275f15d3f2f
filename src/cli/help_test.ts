import { equal, match } from "node:assert/strict";
import { commandHelp } from "./help.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

/** `registry-mirror ARGS` as a process: its exit code and stdout. */
async function run(args: string[]): Promise<{ code: number; stdout: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", "--allow-env", MAIN, ...args],
    env: { MIRROR_CONFIG: "" },
    stdin: "null",
    stderr: "null",
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout) };
}

Deno.test("--help: each subcommand prints its usage, options and an example, and exits 0", async () => {
  const cases: [string[], RegExp[]][] = [
    [["serve", "--help"], [/^usage: registry-mirror \[serve\]/, /MIRROR_LOG_FORMAT/]],
    [["prefetch", "--help"], [/^usage: registry-mirror prefetch/, /rate/]],
    [["cache", "--help"], [/^usage: registry-mirror cache ls \[--json\]/, /--max-size SIZE/]],
    [["cache", "ls", "-h"], [/^usage: registry-mirror cache ls/, /--json/]],
    [["config", "check", "--help"], [/^usage: registry-mirror config check/, /secrets masked/]],
    [["healthcheck", "--help"], [/^usage: registry-mirror healthcheck/, /HEALTHCHECK/]],
  ];
  const runs = await Promise.all(cases.map(([args]) => run(args)));
  runs.forEach(({ code, stdout }, i) => {
    const [args, patterns] = cases[i];
    equal(code, 0, args.join(" "));
    for (const pattern of patterns) match(stdout, pattern, args.join(" "));
    match(stdout, /--config FILE/, args.join(" "));
    match(stdout, /^examples?( \(Dockerfile\))?:\n {2}\S/m, `${args.join(" ")}: an example`);
  });
});

Deno.test("--help: the overview without a command; a usage error exits 2", async () => {
  const [overview, unknown, incomplete, badOption] = await Promise.all([
    run(["--help"]),
    run(["nonsense"]),
    run(["cache"]),
    run(["cache", "ls", "--jsn"]),
  ]);
  equal(overview.code, 0);
  match(overview.stdout, /registry-mirror COMMAND --help/);
  equal(unknown.code, 2);
  match(unknown.stdout, /^registry-mirror .*: a pull-through cache/);
  equal(incomplete.code, 2);
  match(incomplete.stdout, /^usage: registry-mirror cache ls/, "the command's own help");
  equal(badOption.code, 2);
});

Deno.test("commandHelp: only the subcommands have one", () => {
  equal(commandHelp("nonsense"), undefined);
  equal(commandHelp("toString"), undefined);
  for (const command of ["serve", "prefetch", "cache", "config", "healthcheck"]) {
    match(commandHelp(command)!, new RegExp(`^usage: registry-mirror .*${command}`));
  }
});
