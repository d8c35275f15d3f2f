import { equal, rejects } from "node:assert/strict";
import { AddressGuard, isInternalAddress } from "./addresses.ts";

Deno.test("isInternalAddress: loopback, link-local, private and friends", () => {
  const internal = [
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "0.0.0.0",
    "100.64.0.1",
    "224.0.0.1",
    "::1",
    "::",
    "fd00::1",
    "fe80::1",
    "::ffff:127.0.0.1",
    "ff02::1",
  ];
  const external = [
    "8.8.8.8",
    "172.32.0.1",
    "192.169.0.1",
    "100.128.0.1",
    "2001:4860::8888",
    "::ffff:8.8.8.8",
  ];
  for (const ip of internal) equal(isInternalAddress(ip), true, ip);
  for (const ip of external) equal(isInternalAddress(ip), false, ip);
});

Deno.test("AddressGuard: internal targets only when the upstream itself is there", async () => {
  const dns: Record<string, string[]> = {
    "registry-1.docker.io": ["3.3.3.3"],
    "cdn.example.com": ["104.16.0.1"],
    "evil.example.com": ["10.0.0.5"],
    "rebind.example.com": ["104.16.0.2", "127.0.0.1"],
  };
  const resolve = (host: string) =>
    Promise.resolve(dns[host] ?? (/^[\d.]+$/.test(host) ? [host] : []));
  const hub = new AddressGuard(new URL("https://registry-1.docker.io"), resolve);
  await hub.check(new URL("https://cdn.example.com/blob?sig=x"), "a redirect");
  for (
    const target of [
      "http://169.254.169.254/latest/meta-data",
      "http://127.0.0.1:22/",
      "https://evil.example.com/",
      "https://rebind.example.com/",
      "file:///etc/passwd",
      "https://nowhere.example/",
    ]
  ) {
    await rejects(hub.check(new URL(target), "a redirect"), (e: Error & { status: number }) => {
      equal(e.status, 502);
      return e.message.startsWith("refusing to follow a redirect to");
    }, target);
  }
  const local = new AddressGuard(new URL("http://127.0.0.1:5000"), resolve);
  await local.check(new URL("http://127.0.0.1:5011/token"), "a token realm");
  await rejects(
    local.check(new URL("http://10.0.0.1/"), "a redirect"),
    /internal address 10\.0\.0\.1/,
  );
});
