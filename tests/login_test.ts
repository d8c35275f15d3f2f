// End to end: failed logins do not stall the mirror. Passwords are checked in worker threads, so
// valid clients and probes are answered while guesses are being checked; a client address that
// keeps guessing gets 429 with Retry-After; the single-file bundle checks passwords the same way.

import bcrypt from "bcryptjs";
import { deepEqual, equal, ok } from "node:assert/strict";
import { startMirror } from "./fixtures/mirror.ts";
import { freePort } from "./fixtures/tools.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const USER = "alice";
const PASSWORD = `pw-${crypto.randomUUID()}`;
/** The cost `htpasswd -B` uses by default, and the one of the reported stall. */
const COST = 10;
/** Parallel wrong logins, each from its own loopback address (so none is held back by backoff). */
const GUESSERS = 8;

const basic = (user: string, password: string) => ({
  authorization: `Basic ${btoa(`${user}:${password}`)}`,
});

Deno.test("login: bad logins are checked off the event loop; a client that keeps failing waits", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "login_test_" });
  const clients = Array.from(
    { length: GUESSERS },
    (_, i) => Deno.createHttpClient({ localAddress: `127.0.0.${i + 2}` }),
  );
  try {
    await Deno.writeTextFile(`${dir}/htpasswd`, `${USER}:${bcrypt.hashSync(PASSWORD, COST)}\n`);
    const mirror = await startMirror(dir, { auth: { htpasswd: `${dir}/htpasswd` } });
    try {
      /** GETs `path` and returns its status (and its Retry-After, if any). */
      const get = async (path: string, headers: HeadersInit = {}, client?: Deno.HttpClient) => {
        const response = await fetch(`${mirror.url}${path}`, { headers, client });
        await response.body?.cancel();
        return [response.status, response.headers.get("retry-after")] as const;
      };
      deepEqual(await get("/v2/", basic(USER, PASSWORD)), [200, null], "logged in, remembered");
      for (const client of clients) await get("/healthz", {}, client); // connections open

      await t.step("valid requests and probes are answered while guesses are checked", async () => {
        const done: string[] = [];
        const track = async (name: string, answer: Promise<readonly [number, string | null]>) => {
          const [status] = await answer;
          done.push(name);
          return status;
        };
        const guesses = clients.map((client, i) =>
          track("guess", get("/v2/", basic(USER, `guess-${i}`), client))
        );
        // Three requests in a row, each sent when the one before was answered: with the checks
        // on the event loop, each would wait for a slice of them, and one check ends first.
        const served = (async () => {
          const statuses = [];
          for (const path of ["/v2/", "/healthz", "/v2/"]) {
            const headers = path === "/v2/" ? basic(USER, PASSWORD) : {};
            statuses.push(await track(path, get(path, headers)));
          }
          return statuses;
        })();
        deepEqual(await served, [200, 200, 200]);
        deepEqual(await Promise.all(guesses), Array(GUESSERS).fill(401), "every guess checked");
        deepEqual(
          done,
          ["/v2/", "/healthz", "/v2/", ...Array(GUESSERS).fill("guess")],
          "all three answered before any guess",
        );
      });

      await t.step(
        "after five failed logins a client waits; its verified login still works",
        async () => {
          for (let i = 1; i <= 6; i++) {
            deepEqual(await get("/v2/", basic(USER, `again-${i}`)), [401, null], `failure ${i}`);
          }
          deepEqual(await get("/v2/", basic(USER, "again-7")), [429, "1"]);
          deepEqual(await get("/v2/", basic("nobody", "x")), [429, "1"], "unknown users as well");
          deepEqual(await get("/v2/", basic(USER, PASSWORD)), [200, null], "a verified login");
          deepEqual(await get("/v2/", basic(USER, "x"), clients[0]), [401, null], "another client");
          const errors = mirror.logs().map((l) => (l.properties as { error?: string }).error);
          ok(errors.includes("6 failed logins from 127.0.0.1: try again in 1 s"), "logged");
        },
      );
    } finally {
      await mirror.stop();
    }
  } finally {
    for (const client of clients) client.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("login: the single-file bundle checks passwords in its worker", async () => {
  const dir = await Deno.makeTempDir({ prefix: "login_bundle_test_" });
  const deno = Deno.execPath();
  try {
    const bundle = `${dir}/registry-mirror.js`;
    const built = await new Deno.Command(deno, {
      args: ["bundle", "--quiet", "--output", bundle, "main.ts"],
      cwd: ROOT,
      stdin: "null",
    }).output();
    equal(built.code, 0, new TextDecoder().decode(built.stderr));
    await Deno.writeTextFile(`${dir}/htpasswd`, `${USER}:${bcrypt.hashSync(PASSWORD, 4)}\n`);
    const port = freePort();
    const config = {
      listen: `127.0.0.1:${port}`,
      cache: { dir: `${dir}/cache` },
      auth: { htpasswd: `${dir}/htpasswd` },
    };
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
    const server = new Deno.Command(deno, {
      args: ["run", "--allow-net", "--allow-read", "--allow-write", "--allow-env", "--allow-sys"]
        .concat([bundle, "--config", `${dir}/config.json`]),
      cwd: dir,
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    try {
      const get = async (headers: HeadersInit = {}, path = "/v2/") => {
        const response = await fetch(`http://127.0.0.1:${port}${path}`, { headers });
        await response.body?.cancel();
        return response.status;
      };
      let up = false;
      for (let i = 0; i < 100 && !up; i++) {
        up = await get({}, "/healthz").then(() => true, async () => {
          await new Promise((resolve) => setTimeout(resolve, 100));
          return false;
        });
      }
      deepEqual(
        [await get(basic(USER, PASSWORD)), await get(basic(USER, "nope")), await get()],
        [200, 401, 401],
      );
      equal(await get(basic(USER, PASSWORD), "/healthz"), 200, "the server did not start twice");
    } finally {
      server.kill("SIGTERM");
      equal((await server.status).code, 0, "SIGTERM shuts down cleanly, worker and all");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
