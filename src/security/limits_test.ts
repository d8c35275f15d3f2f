import { equal, ok } from "node:assert/strict";
import { RegistryError } from "../oci/errors.ts";
import { Limits } from "./limits.ts";

const settings = {
  maxHeaderBytes: 1024,
  maxUrlLength: 256,
  maxConcurrentRequests: 2,
  clientRate: 0,
};
const req = (path = "/v2/", headers?: Record<string, string>) =>
  new Request(`http://m${path}`, { headers });

Deno.test("limits: URL length and header size, answered as OCI errors", async () => {
  const limits = new Limits(settings);
  const long = limits.check(req("/v2/" + "a".repeat(300)));
  ok(long instanceof RegistryError && long.status === 414);
  const big = limits.check(req("/v2/", { "x-big": "b".repeat(2000) }));
  ok(big instanceof RegistryError && big.status === 431 && big.code === "UNSUPPORTED");
  const body = await big.toResponse().json();
  equal(body.errors[0].message, "request headers larger than 1024 bytes");
  equal(limits.check(req("/v2/", { "x-small": "s".repeat(900) })), undefined);
  equal(limits.inFlight, 0, "checking takes no slot");
});

Deno.test("limits: requests in flight", () => {
  const limits = new Limits(settings);
  const a = limits.admit("c");
  const b = limits.admit("c");
  const c = limits.admit("c");
  ok(c instanceof RegistryError && c.status === 503 && c.headers["retry-after"] === "1");
  ok(typeof a === "function" && typeof b === "function");
  equal(limits.inFlight, 2);
  a();
  a(); // releasing twice counts once
  equal(limits.inFlight, 1);
  ok(typeof limits.admit("c") === "function");
  ok(limits.admit("c") instanceof RegistryError);
});

Deno.test("limits: per-client rate with bursts of twice the rate", () => {
  let now = 0;
  const limits = new Limits({ ...settings, maxConcurrentRequests: 1000, clientRate: 5 }, () => now);
  const results = Array.from({ length: 12 }, () => limits.admit("10.0.0.1"));
  equal(results.filter((r) => typeof r === "function").length, 10);
  const refused = results.at(-1);
  ok(
    refused instanceof RegistryError && refused.status === 429 &&
      refused.code === "TOOMANYREQUESTS",
  );
  ok(typeof limits.admit("10.0.0.2") === "function", "other clients unaffected");
  now = 1000;
  equal(
    Array.from({ length: 6 }, () => limits.admit("10.0.0.1")).filter((r) => typeof r === "function")
      .length,
    5,
    "refilled at 5 per second",
  );
});

Deno.test("limits: the rate limiter remembers a bounded number of clients", () => {
  const limits = new Limits({ ...settings, clientRate: 1 }, () => 1_000_000);
  const admit = (client: string) => {
    const admitted = limits.admit(client);
    if (typeof admitted === "function") admitted();
    return typeof admitted === "function";
  };
  const first = [1, 2, 3].map(() => admit("2001:db8::1"));
  equal(first.join(), "true,true,false", "a burst of 2, then refused");
  for (let i = 0; i < 50_000; i++) {
    admit(`2001:db8:1:${(i >> 16).toString(16)}::${(i & 0xffff).toString(16)}`);
  }
  ok(admit("2001:db8::1"), "forgotten (bounded), so it starts with a full burst again");
});
