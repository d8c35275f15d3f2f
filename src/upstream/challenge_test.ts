import { deepEqual } from "node:assert/strict";
import { parseChallenges } from "./challenge.ts";

Deno.test("challenge: Docker Hub's Bearer challenge", () => {
  deepEqual(
    parseChallenges(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull"',
    ),
    [{
      scheme: "bearer",
      params: {
        realm: "https://auth.docker.io/token",
        service: "registry.docker.io",
        scope: "repository:library/ubuntu:pull",
      },
    }],
  );
});

Deno.test("challenge: commas and escapes inside quoted strings", () => {
  deepEqual(
    parseChallenges(
      'Bearer realm="https://a/t", scope="repository:x:pull,push", error="say \\"hi\\""',
    ),
    [{
      scheme: "bearer",
      params: { realm: "https://a/t", scope: "repository:x:pull,push", error: 'say "hi"' },
    }],
  );
});

Deno.test("challenge: several challenges, either order, mixed case, unquoted values", () => {
  deepEqual(
    parseChallenges('Basic realm="Registry Realm", BEARER Realm=https://t/token,service=s'),
    [
      { scheme: "basic", params: { realm: "Registry Realm" } },
      { scheme: "bearer", params: { realm: "https://t/token", service: "s" } },
    ],
  );
  deepEqual(parseChallenges('Bearer realm="r",service="s", Basic realm="b"'), [
    { scheme: "bearer", params: { realm: "r", service: "s" } },
    { scheme: "basic", params: { realm: "b" } },
  ]);
});

Deno.test("challenge: bare schemes, empty and malformed input never throw", () => {
  deepEqual(parseChallenges("Negotiate"), [{ scheme: "negotiate", params: {} }]);
  deepEqual(parseChallenges(""), []);
  deepEqual(parseChallenges('Bearer realm="unterminated'), [
    { scheme: "bearer", params: { realm: "unterminated" } },
  ]);
  deepEqual(parseChallenges(", ,Basic"), [{ scheme: "basic", params: {} }]);
});
