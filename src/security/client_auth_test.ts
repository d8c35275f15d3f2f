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
