import { deepEqual, equal, throws } from "node:assert/strict";
import bcrypt from "bcryptjs";
import { ClientAuth, parseHtpasswd } from "./client_auth.ts";

const basic = (user: string, password: string) => ({
  authorization: `Basic ${btoa(`${user}:${password}`)}`,
});

Deno.test("client auth: bcrypt htpasswd users and static bearer tokens", async () => {
  const users = parseHtpasswd(`# users\nalice:${bcrypt.hashSync("wonderland", 4)}\n`, "h");
  const auth = new ClientAuth(users, ["machine-token-0123456789"]);
  const check = (headers?: Record<string, string>) =>
    auth.authenticate(new Request("http://m/v2/", { headers }));
  deepEqual(await check(basic("alice", "wonderland")), { user: "alice" });
  deepEqual(await check(basic("alice", "wonderland")), { user: "alice" }, "remembered");
  deepEqual(await check({ authorization: "Bearer machine-token-0123456789" }), { user: "token" });
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
});

Deno.test("client auth: htpasswd entries other than bcrypt are refused with their line", () => {
  throws(() => parseHtpasswd("alice:$apr1$abc$def\n", "/etc/htpasswd"), /\/etc\/htpasswd:1: not a/);
  throws(() => parseHtpasswd("no-colon\n", "h"), /h:1:/);
});

Deno.test("client auth: a verified login is re-checked once it expires", async () => {
  const users = parseHtpasswd(`alice:${bcrypt.hashSync("wonderland", 4)}\n`, "h");
  let now = 1_000_000;
  const auth = new ClientAuth(users, [], { now: () => now });
  const check = () =>
    auth.authenticate(new Request("http://m/v2/", { headers: basic("alice", "wonderland") }));
  deepEqual(await check(), { user: "alice" });
  users.delete("alice"); // removed from htpasswd: remembered logins last their 5 minutes
  now += 5 * 60_000 - 1;
  deepEqual(await check(), { user: "alice" }, "remembered");
  now += 1;
  const e = await check();
  equal(e instanceof Error && e.status, 401, "expired: verified again, and refused");
});

Deno.test("client auth: verified logins are bounded in number", async () => {
  const hash = bcrypt.hashSync("pw", 4);
  const users = new Map(Array.from({ length: 1_001 }, (_, i) => [`u${i}`, hash]));
  const auth = new ClientAuth(users, []);
  const check = (user: string) =>
    auth.authenticate(new Request("http://m/v2/", { headers: basic(user, "pw") }));
  for (const user of users.keys()) deepEqual(await check(user), { user });
  users.delete("u0");
  users.delete("u1000");
  deepEqual(await check("u1000"), { user: "u1000" }, "the most recent login is remembered");
  const e = await check("u0");
  equal(e instanceof Error && e.status, 401, "the least recent was dropped, so checked again");
});
