import { deepEqual, equal, ok, throws } from "node:assert/strict";
import bcrypt from "bcryptjs";
import { RegistryError } from "../oci/errors.ts";
import type { PasswordVerifier } from "./bcrypt_pool.ts";
import { ClientAuth, parseHtpasswd } from "./client_auth.ts";

const basic = (user: string, password: string) => ({
  authorization: `Basic ${btoa(`${user}:${password}`)}`,
});
const CLIENT = "10.0.0.1";

/** The error an authentication answered; fails when it let the client in. */
function refusal(result: unknown): RegistryError {
  ok(result instanceof RegistryError, `let in: ${JSON.stringify(result)}`);
  return result;
}

/** Compares in this thread and records each hash it was asked to check against. */
class SpyVerifier implements PasswordVerifier {
  readonly hashes: string[] = [];
  verify(password: string, hash: string): Promise<boolean> {
    this.hashes.push(hash);
    return Promise.resolve(bcrypt.compareSync(password, hash));
  }
  close(): void {}
}

Deno.test("client auth: bcrypt htpasswd users and static bearer tokens", async () => {
  const users = parseHtpasswd(`# users\nalice:${bcrypt.hashSync("wonderland", 4)}\n`, "h");
  const auth = new ClientAuth(users, ["machine-token-0123456789"]);
  try {
    const check = (headers?: Record<string, string>) =>
      auth.authenticate(new Request("http://m/v2/", { headers }), CLIENT);
    deepEqual(await check(basic("alice", "wonderland")), { user: "alice" });
    deepEqual(await check(basic("alice", "wonderland")), { user: "alice" }, "remembered");
    deepEqual(await check({ authorization: "Bearer machine-token-0123456789" }), {
      user: "token",
    });
    for (
      const headers of [undefined, basic("alice", "nope"), basic("bob", "x"), {
        authorization: "Bearer nope",
      }, { authorization: "Basic %%%" }]
    ) {
      const e = await check(headers);
      equal(e instanceof Error && e.status, 401, JSON.stringify(headers));
      if (e instanceof Error) {
        equal(e.headers["www-authenticate"], 'Basic realm="registry-mirror", charset="UTF-8"');
      }
    }
  } finally {
    auth.close();
  }
});

Deno.test("client auth: htpasswd entries other than bcrypt are refused with their line", () => {
  throws(() => parseHtpasswd("alice:$apr1$abc$def\n", "/etc/htpasswd"), /\/etc\/htpasswd:1: not a/);
  throws(() => parseHtpasswd("no-colon\n", "h"), /h:1:/);
  const hash = bcrypt.hashSync("x", 4);
  throws(() => parseHtpasswd(`# cut short\nalice:${hash.slice(0, 59)}\n`, "h"), /h:2:/);
  equal(parseHtpasswd(`alice:${hash.replace("$2b$", "$2y$")}\r\n`, "h").size, 1, "htpasswd -B");
});

Deno.test("client auth: a verified login is re-checked once it expires", async () => {
  const users = parseHtpasswd(`alice:${bcrypt.hashSync("wonderland", 4)}\n`, "h");
  let now = 1_000_000;
  const auth = new ClientAuth(users, [], { now: () => now });
  try {
    const check = () =>
      auth.authenticate(
        new Request("http://m/v2/", { headers: basic("alice", "wonderland") }),
        CLIENT,
      );
    deepEqual(await check(), { user: "alice" });
    users.delete("alice"); // removed from htpasswd: remembered logins last their 5 minutes
    now += 5 * 60_000 - 1;
    deepEqual(await check(), { user: "alice" }, "remembered");
    now += 1;
    const e = await check();
    equal(e instanceof Error && e.status, 401, "expired: verified again, and refused");
  } finally {
    auth.close();
  }
});

Deno.test("client auth: verified logins are bounded in number", async () => {
  const hash = bcrypt.hashSync("pw", 4);
  const users = new Map(Array.from({ length: 1_001 }, (_, i) => [`u${i}`, hash]));
  const auth = new ClientAuth(users, []);
  try {
    const check = (user: string) =>
      auth.authenticate(new Request("http://m/v2/", { headers: basic(user, "pw") }), CLIENT);
    for (const user of users.keys()) deepEqual(await check(user), { user });
    users.delete("u0");
    users.delete("u1000");
    deepEqual(await check("u1000"), { user: "u1000" }, "the most recent login is remembered");
    const e = await check("u0");
    equal(e instanceof Error && e.status, 401, "the least recent was dropped, so checked again");
  } finally {
    auth.close();
  }
});

Deno.test("client auth: unknown users cost a bcrypt check of the users' cost, as wrong passwords do", async () => {
  const alice = bcrypt.hashSync("wonderland", 5);
  const users = new Map([
    ["alice", alice],
    ["carol", bcrypt.hashSync("x", 5)],
    ["dave", bcrypt.hashSync("y", 4)],
  ]);
  const verifier = new SpyVerifier();
  const auth = new ClientAuth(users, [], { verifier });
  const check = (headers: Record<string, string>) =>
    auth.authenticate(new Request("http://m/v2/", { headers }), CLIENT);
  equal(refusal(await check(basic("alice", "nope"))).status, 401);
  deepEqual(verifier.hashes, [alice], "a wrong password: one check, against alice's hash");
  equal(refusal(await check(basic("mallory", "nope"))).status, 401);
  equal(verifier.hashes.length, 2, "an unknown user: one check as well");
  const [standIn] = verifier.hashes.slice(1);
  equal(standIn.length, 60, "a complete hash (bcryptjs answers a short one at once)");
  equal(standIn.slice(0, 7), "$2b$05$", "the version and cost most users have");
  equal(bcrypt.getRounds(standIn), 5);
  ok(!users.has("mallory"));
  for (const headers of [basic("alice", "nope"), basic("mallory", "nope"), basic("", "x")]) {
    equal(refusal(await check(headers)).status, 401);
  }
  equal(verifier.hashes.length, 2, "a credential refused before, or without a user: no check");
});

Deno.test("client auth: parallel requests with one login share one check", async () => {
  const users = new Map([["alice", bcrypt.hashSync("wonderland", 4)]]);
  const verifier = new SpyVerifier();
  const auth = new ClientAuth(users, [], { verifier });
  const check = (password: string) =>
    auth.authenticate(new Request("http://m/v2/", { headers: basic("alice", password) }), CLIENT);
  const results = await Promise.all([check("wonderland"), check("wonderland"), check("nope")]);
  deepEqual(results.slice(0, 2), [{ user: "alice" }, { user: "alice" }]);
  equal(refusal(results[2]).status, 401);
  equal(verifier.hashes.length, 2, "one check per distinct credential");
});

Deno.test("client auth: a client that keeps failing waits, doubling; others and known logins do not", async () => {
  const users = new Map([["alice", bcrypt.hashSync("wonderland", 4)]]);
  let now = 1_000_000;
  const verifier = new SpyVerifier();
  const auth = new ClientAuth(users, [], { now: () => now, verifier });
  const check = (password: string, client = CLIENT) =>
    auth.authenticate(new Request("http://m/v2/", { headers: basic("alice", password) }), client);
  deepEqual(await check("wonderland"), { user: "alice" });
  for (let i = 1; i <= 6; i++) equal(refusal(await check(`guess-${i}`)).status, 401, `${i}`);
  const checks = verifier.hashes.length;
  const waiting = refusal(await check("guess-7"));
  equal(waiting.status, 429);
  equal(waiting.code, "TOOMANYREQUESTS");
  equal(waiting.headers["retry-after"], "1");
  equal(verifier.hashes.length, checks, "a waiting client's guess costs no bcrypt check");
  deepEqual(await check("wonderland"), { user: "alice" }, "a verified login still passes");
  equal(refusal(await check("guess-7", "10.0.0.2")).status, 401, "another client is checked");
  now += 1_000;
  equal(refusal(await check("guess-8")).status, 401, "after the wait, one more guess");
  equal(refusal(await check("guess-9")).headers["retry-after"], "2", "the wait doubled");
});
