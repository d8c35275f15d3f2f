import { deepEqual, equal, rejects } from "node:assert/strict";
import { AddressGuard, addressRange, isPublicAddress } from "./addresses.ts";

Deno.test("addressRange: only public unicast passes, embedded IPv4 judged by itself", () => {
  const table: [string, string][] = [
    ["127.0.0.1", "loopback"],
    ["::1", "loopback"],
    ["::ffff:127.0.0.2", "loopback"], // IPv4-mapped, as written
    ["::ffff:7f00:2", "loopback"], // the same, as the URL parser rewrites it
    ["[::ffff:7f00:2]", "loopback"], // a URL hostname
    ["::ffff:0:7f00:1", "loopback"], // IPv4-translated (RFC 6145)
    ["64:ff9b::7f00:1", "loopback"], // NAT64 (RFC 6052)
    ["64:ff9b::a9fe:a9fe", "linkLocal"], // NAT64 to the cloud metadata address
    ["64:ff9b:1::7f00:1", "rfc6052"], // local-use NAT64: IPv4 position unknown, so not public
    ["2002:7f00:1::", "loopback"], // 6to4
    ["2002:c0a8:101::1", "private"], // 6to4 of 192.168.1.1
    // Teredo: server 65.54.227.120, client 192.168.1.1 stored inverted (3f57:fefe).
    ["2001:0:4136:e378:8000:63bf:3f57:fefe", "private"],
    ["::7f00:1", "loopback"], // IPv4-compatible (deprecated)
    ["10.1.2.3", "private"],
    ["172.16.0.1", "private"],
    ["172.31.255.255", "private"],
    ["192.168.1.1", "private"],
    ["169.254.169.254", "linkLocal"],
    ["fe80::1", "linkLocal"],
    ["fc00::1", "uniqueLocal"],
    ["fd12:3456::1", "uniqueLocal"],
    ["100.64.0.1", "carrierGradeNat"],
    ["0.0.0.0", "unspecified"],
    ["::", "unspecified"],
    ["255.255.255.255", "broadcast"],
    ["224.0.0.1", "multicast"],
    ["ff02::1", "multicast"],
    ["192.0.2.1", "reserved"],
    ["240.0.0.1", "reserved"],
    ["2001:db8::1", "reserved"],
    ["not-an-ip", "invalid"],
    ["8.8.8.8", "unicast"],
    ["172.32.0.1", "unicast"],
    ["100.128.0.1", "unicast"],
    ["2001:4860:4860::8888", "unicast"],
    ["::ffff:8.8.8.8", "unicast"],
    ["64:ff9b::808:808", "unicast"], // NAT64 of 8.8.8.8
    ["2002:808:808::1", "unicast"], // 6to4 of 8.8.8.8
    ["2001:0:4136:e378:8000:63bf:f7f7:f7f7", "unicast"], // Teredo of 8.8.8.8
  ];
  for (const [ip, range] of table) {
    equal(addressRange(ip), range, ip);
    equal(isPublicAddress(ip), range === "unicast", ip);
  }
});

/** A resolver answering from a table; an IP literal is its own address. */
function dns(table: Record<string, string[]>) {
  const asked: string[] = [];
  const resolve = (host: string) => {
    asked.push(host);
    const bare = host.replace(/^\[(.*)\]$/, "$1");
    return Promise.resolve(table[host] ?? (/^[\d.]+$|:/.test(bare) ? [bare] : []));
  };
  return { asked, resolve };
}

Deno.test("AddressGuard: internal targets only when the upstream itself is there", async () => {
  const { resolve } = dns({
    "registry-1.docker.io": ["3.3.3.3"],
    "cdn.example.com": ["2606:4700::1", "104.16.0.1"],
    "evil.example.com": ["10.0.0.5"],
    "rebind.example.com": ["104.16.0.2", "127.0.0.1"],
    "nat64.example.com": ["64:ff9b::7f00:1"],
  });
  const hub = new AddressGuard(new URL("https://registry-1.docker.io"), { resolve });
  deepEqual(
    await hub.check(new URL("https://cdn.example.com/blob?sig=x"), "a redirect"),
    ["104.16.0.1", "2606:4700::1"],
    "every address checked, IPv4 first",
  );
  equal(await hub.check(new URL("https://registry-1.docker.io:8443/x"), "a redirect"), undefined);
  for (
    const target of [
      "http://169.254.169.254/latest/meta-data",
      "http://127.0.0.1:22/",
      "http://[::ffff:127.0.0.2]:8080/",
      "http://[64:ff9b::a9fe:a9fe]/",
      "https://evil.example.com/",
      "https://rebind.example.com/",
      "https://nat64.example.com/",
      "file:///etc/passwd",
      "https://nowhere.example/",
    ]
  ) {
    await rejects(hub.check(new URL(target), "a redirect"), (e: Error & { status: number }) => {
      equal(e.status, 502);
      return e.message.startsWith("refusing to follow a redirect to");
    }, target);
  }
  await rejects(
    hub.check(new URL("http://[::ffff:127.0.0.2]/"), "a token realm"),
    /^RegistryError: refusing to follow a token realm to http:\/\/\[::ffff:7f00:2\]: internal address ::ffff:7f00:2 \(loopback\)$/,
  );
  const local = new AddressGuard(new URL("http://127.0.0.1:5000"), { resolve });
  deepEqual(await local.check(new URL("http://127.0.0.1:5011/token"), "a token realm"), undefined);
  deepEqual(await local.check(new URL("http://[::ffff:127.0.0.1]:5011/"), "a redirect"), [
    "::ffff:7f00:1",
  ]);
  await rejects(
    local.check(new URL("http://10.0.0.1/"), "a redirect"),
    /internal address 10\.0\.0\.1 \(private\)/,
  );
  await rejects(local.check(new URL("http://127.0.0.2/"), "a redirect"), /127\.0\.0\.2/);
});

Deno.test("AddressGuard: a name is resolved once and dialled at the address checked", async () => {
  // The first answer is the upstream's own address; the name then "rebinds" to 127.0.0.2.
  const answers = [["127.0.0.1"], ["127.0.0.2"]];
  const { asked, resolve } = dns({});
  const rebinding = (host: string) =>
    host === "rebind.test" ? Promise.resolve(answers.shift() ?? []) : resolve(host);
  const seen: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req, info) => {
    seen.push(`${req.url} host=${req.headers.get("host")} from=${info.remoteAddr.hostname}`);
    return new Response("pinned");
  });
  const port = server.addr.port;
  const guard = new AddressGuard(new URL("http://127.0.0.1:5000"), { resolve: rebinding });
  try {
    for (let i = 0; i < 2; i++) {
      const response = await guard.fetch(
        new URL(`http://rebind.test:${port}/p?q=${i}`),
        {},
        "a redirect",
      );
      equal(await response.text(), "pinned");
    }
    deepEqual(seen, [
      `http://rebind.test:${port}/p?q=0 host=rebind.test:${port} from=127.0.0.1`,
      `http://rebind.test:${port}/p?q=1 host=rebind.test:${port} from=127.0.0.1`,
    ]);
    deepEqual(asked, ["127.0.0.1"], "rebind.test was never resolved by anyone else");
    equal(answers.length, 1, "rebind.test resolved once: the rebinding answer was never used");
  } finally {
    await guard.close();
    await server.shutdown();
  }
});
