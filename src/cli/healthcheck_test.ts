import { deepEqual } from "node:assert/strict";
import { buildConfig } from "../config.ts";
import { healthTarget } from "./healthcheck.ts";

Deno.test("healthTarget: wildcards go over loopback, IPv6 in brackets, https with tls", () => {
  const target = (raw: Record<string, unknown>) => {
    const config = buildConfig(raw, { env: {}, readTextFile: () => "" });
    const { url, hostname } = healthTarget(config);
    return [url, hostname];
  };
  deepEqual(target({}), ["http://127.0.0.1:8080/healthz", "127.0.0.1"]);
  deepEqual(target({ listen: "[::]:5000" }), ["http://[::1]:5000/healthz", "::1"]);
  deepEqual(target({ listen: "[::1]:5000" }), ["http://[::1]:5000/healthz", "::1"]);
  deepEqual(target({ listen: "10.0.0.7:443", tls: { cert: "c", key: "k" } }), [
    "https://10.0.0.7:443/healthz",
    "10.0.0.7",
  ]);
  deepEqual(target({ listen: "mirror.internal:8443" }), [
    "http://mirror.internal:8443/healthz",
    "mirror.internal",
  ]);
});
