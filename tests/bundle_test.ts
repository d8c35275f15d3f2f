// `deno bundle` output (the stand-in for `deno compile` here) starts, answers /v2/, passes its own
// healthcheck, and refuses a bad config with one clear line.

import { deepEqual, equal, match } from "node:assert/strict";
import { freePort } from "./fixtures/tools.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const deno = Deno.execPath();

async function run(args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(deno, { args, env, cwd: ROOT, stdin: "null" }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

Deno.test("bundle: the single-file build serves /v2/ and answers healthcheck", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bundle_test_" });
  const bundle = `${dir}/registry-mirror.js`;
  try {
    const built = await run(["bundle", "--quiet", "--output", bundle, "main.ts"]);
    equal(built.code, 0, built.stderr);
    const port = freePort();
    const env = { MIRROR_LISTEN: `127.0.0.1:${port}` };
    const permissions = [
      "--allow-net",
      "--allow-read",
      "--allow-env",
      "--allow-write",
      "--allow-sys",
    ];
    equal(
      (await run(["run", ...permissions, bundle, "healthcheck"], env)).code,
      1,
      "nothing up yet",
    );
    const server = new Deno.Command(deno, {
      args: ["run", ...permissions, bundle],
      env,
      cwd: dir,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      let response: Response | undefined;
      for (let i = 0; i < 100 && !response; i++) {
        response = await fetch(`http://127.0.0.1:${port}/v2/`).catch(async () => {
          await new Promise((resolve) => setTimeout(resolve, 100));
          return undefined;
        });
      }
      deepEqual(
        [response?.status, response?.headers.get("docker-distribution-api-version")],
        [200, "registry/2.0"],
      );
      equal(await response?.text(), "{}");
      equal((await run(["run", ...permissions, bundle, "healthcheck"], env)).code, 0);
    } finally {
      server.kill("SIGTERM");
      equal((await server.status).code, 0, "SIGTERM shuts down cleanly");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("config errors: the process exits at start with one line naming key and value", async () => {
  const dir = await Deno.makeTempDir({ prefix: "config_test_" });
  try {
    const cases: [unknown, RegExp][] = [
      [
        { registries: { "quay.io": { upstream: "htp:/quay" } } },
        /registries\.quay\.io\.upstream.*"htp:\/quay"/,
      ],
      [{ listen: "0.0.0.0:70000" }, /listen.*"0\.0\.0\.0:70000"/],
      [{ cach: {} }, /config: cach: unknown key/],
    ];
    for (const [config, pattern] of cases) {
      await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
      const result = await run(["run", "-A", "main.ts", "--config", `${dir}/config.json`]);
      equal(result.code, 1);
      const lines = result.stderr.trim().split("\n");
      equal(lines.length, 1, result.stderr);
      match(lines[0], pattern);
    }
    const env = await run(["run", "-A", "main.ts"], { MIRROR_CONFIG: `${dir}/missing.json` });
    equal(env.code, 1);
    match(env.stderr, /cannot read .*missing\.json/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
