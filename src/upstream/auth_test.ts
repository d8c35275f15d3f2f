import { deepEqual, equal, rejects } from "node:assert/strict";
import type { RegistryConfig } from "../config.ts";
import { UpstreamAuth } from "./auth.ts";

/** A token server stand-in recording each token request (unit level: no network). */
function tokenServer(
  body: (n: number) => Record<string, unknown> = (n) => ({ token: `t1-${n}`, expires_in: 60 }),
) {
  const calls: { url: URL; authorization: string | null }[] = [];
  const fetch = (input: URL | RequestInfo, init?: RequestInit) => {
    const url = new URL(String(input));
    calls.push({ url, authorization: new Headers(init?.headers).get("authorization") });
    return Promise.resolve(Response.json(body(calls.length)));
  };
  return { calls, fetch: fetch as typeof globalThis.fetch };
}

function registry(upstream: string, extra: Partial<RegistryConfig> = {}): RegistryConfig {
  return { name: "r", upstream: new URL(upstream), aliases: [], authRealms: [], ...extra };
}

const CHALLENGE =
  'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull"';

Deno.test("auth: a token is fetched once, cached per scope, and sent before being asked", async () => {
  const server = tokenServer();
  let now = 0;
  const auth = new UpstreamAuth(registry("https://registry-1.docker.io"), {
    fetch: server.fetch,
    now: () => now,
    userAgent: "ua",
  });
  const scope = "repository:library/ubuntu:pull";
  equal(auth.cached(scope), undefined);
  const answers = await Promise.all([1, 2, 3].map(() => auth.answer(CHALLENGE, scope, undefined)));
  deepEqual(
    answers,
    ["Bearer t1-1", "Bearer t1-1", "Bearer t1-1"],
    "concurrent 401s share a fetch",
  );
  equal(server.calls.length, 1);
  const url = server.calls[0].url;
  deepEqual([url.searchParams.get("service"), url.searchParams.getAll("scope")], [
    "registry.docker.io",
    [scope],
  ]);
  equal(auth.cached(scope), "Bearer t1-1");
  equal(auth.cached("repository:library/other:pull"), undefined);
  now = 55_000; // past 90% of expires_in: renewed before it can expire on the way
  equal(auth.cached(scope), undefined);
  equal(await auth.answer(CHALLENGE, scope, undefined), "Bearer t1-2");
});

Deno.test("auth: a refused token is not reused; access_token and the 60 s default", async () => {
  const server = tokenServer((n) => ({ access_token: `a-${n}` }));
  let now = 0;
  const auth = new UpstreamAuth(registry("https://quay.io"), {
    fetch: server.fetch,
    now: () => now,
    userAgent: "ua",
  });
  const challenge = 'Bearer realm="https://quay.io/v2/auth",service="quay.io"';
  const first = await auth.answer(challenge, "repository:x/y:pull", undefined);
  equal(first, "Bearer a-1");
  equal(await auth.answer(challenge, "repository:x/y:pull", first), "Bearer a-2", "stale skipped");
  now = 53_000;
  equal(auth.cached("repository:x/y:pull"), "Bearer a-2");
  now = 55_000;
  equal(auth.cached("repository:x/y:pull"), undefined, "expires_in defaults to 60 s");
});

Deno.test("auth: credentials only go to a trusted realm", async () => {
  const creds = { username: "u", password: "p" };
  const cases: [string, string, string[], boolean][] = [
    ["https://registry-1.docker.io", "https://auth.docker.io/token", [], true],
    ["https://quay.io", "https://quay.io/v2/auth", [], true],
    ["https://ghcr.io", "https://ghcr.io/token", [], true],
    ["https://registry.gitlab.com", "https://gitlab.com/jwt/auth", [], true],
    ["https://nvcr.io", "https://authn.nvidia.com/token", ["authn.nvidia.com"], true],
    ["https://nvcr.io", "https://authn.nvidia.com/token", [], false],
    ["https://quay.io", "https://evil.example.com/token", [], false],
    ["https://foo.github.io", "https://bar.github.io/token", [], false], // a public suffix
    // The upstream's own origin: scheme, host and port.
    ["http://127.0.0.1:5000", "http://127.0.0.1:5000/token", [], true],
    ["http://127.0.0.1:5000", "http://127.0.0.1:5011/token", [], false],
    ["http://127.0.0.1:5000", "https://127.0.0.1:5000/token", [], false],
    ["http://127.0.0.1:5000", "http://127.0.0.1:5011/token", ["127.0.0.1"], true],
    ["http://127.0.0.1:5000", "http://127.0.0.2/token", [], false],
    ["https://registry", "https://registry:8443/token", [], false], // a single label (k8s service)
    ["https://registry", "https://registry/token", [], true],
    ["https://registry.corp.example", "https://registry.corp.example:8443/token", [], true], // domain
    // Never in clear text from an https upstream: not its own host, domain or authRealms.
    ["https://quay.io", "http://quay.io/v2/auth", [], false],
    ["https://quay.io", "http://quay.io:443/v2/auth", [], false],
    ["https://registry-1.docker.io", "http://auth.docker.io/token", [], false],
    ["https://nvcr.io", "http://authn.nvidia.com/token", ["authn.nvidia.com"], false],
    ["https://127.0.0.1:5000", "http://127.0.0.1:5011/token", ["127.0.0.1"], false],
    // An http upstream may name an https realm of its domain.
    ["http://registry.corp.example", "https://auth.corp.example/token", [], true],
  ];
  for (const [upstream, realm, authRealms, trusted] of cases) {
    const server = tokenServer();
    const auth = new UpstreamAuth(registry(upstream, { ...creds, authRealms }), {
      fetch: server.fetch,
      now: () => 0,
      userAgent: "ua",
    });
    equal(auth.trusts(new URL(realm)), trusted, `${upstream} -> ${realm}`);
    await auth.answer(`Bearer realm="${realm}",service="s"`, "repository:a/b:pull", undefined);
    equal(server.calls[0].authorization !== null, trusted, `${realm}: Basic sent = ${trusted}`);
  }
});

Deno.test("auth: Basic challenges are answered only with configured credentials", async () => {
  const anonymous = new UpstreamAuth(registry("https://r.example.com"), {
    fetch: tokenServer().fetch,
    now: () => 0,
    userAgent: "ua",
  });
  equal(await anonymous.answer('Basic realm="r"', undefined, undefined), undefined);
  const withCreds = new UpstreamAuth(
    registry("https://r.example.com", { username: "u", password: "p" }),
    { fetch: tokenServer().fetch, now: () => 0, userAgent: "ua" },
  );
  const value = await withCreds.answer('Basic realm="r"', undefined, undefined);
  equal(value, `Basic ${btoa("u:p")}`);
  equal(withCreds.cached(undefined), value, "then sent up front");
  equal(await withCreds.answer('Basic realm="r"', undefined, value), undefined, "refused: no loop");
});

Deno.test("auth: tokens are bounded in number and leave when they expire", async () => {
  const server = tokenServer();
  let now = 1_000_000;
  const auth = new UpstreamAuth(registry("https://registry-1.docker.io"), {
    fetch: server.fetch,
    now: () => now,
    userAgent: "ua",
  });
  const challenge = (scope: string) =>
    `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="${scope}"`;
  const scope = (i: number) => `repository:x/n${i}:pull`;
  for (let i = 0; i < 20_000; i++) await auth.answer(challenge(scope(i)), scope(i), undefined);
  equal(auth.tokenFetches, 20_000);
  equal(auth.cached(scope(0)), undefined, "the least recently used token was dropped");
  equal(auth.cached(scope(19_999)), "Bearer t1-20000");
  equal(await auth.answer(challenge(scope(0)), scope(0), undefined), "Bearer t1-20001");
  equal(auth.tokenFetches, 20_001, "a dropped token is fetched again");
  now += 54_000; // 90% of expires_in 60 s
  equal(auth.cached(scope(0)), undefined, "expired");
  equal(await auth.answer(challenge(scope(0)), scope(0), undefined), "Bearer t1-20002");
});

/** A token server stand-in answering with `answer(url)`, recording each request. */
function scripted(answer: (url: URL) => Response) {
  const calls: { url: string; authorization: string | null; redirect?: string }[] = [];
  const fetch = (url: URL, init: RequestInit) => {
    calls.push({
      url: url.href,
      authorization: new Headers(init.headers).get("authorization"),
      redirect: init.redirect,
    });
    return Promise.resolve(answer(url));
  };
  return { calls, fetch };
}

const redirect = (location: string) => new Response(null, { status: 302, headers: { location } });

Deno.test("auth: token redirects are followed by hand, each hop through fetch, no credentials", async () => {
  const server = scripted((url) =>
    url.hostname === "auth.docker.io"
      ? redirect("https://tokens.docker.io/issue?x=1")
      : Response.json({ token: "from-redirect" })
  );
  const auth = new UpstreamAuth(
    registry("https://registry-1.docker.io", { username: "u", password: "p" }),
    { fetch: server.fetch, now: () => 0, userAgent: "ua" },
  );
  equal(await auth.answer(CHALLENGE, undefined, undefined), "Bearer from-redirect");
  deepEqual(server.calls.map((c) => [new URL(c.url).host, c.authorization !== null, c.redirect]), [
    ["auth.docker.io", true, "manual"],
    ["tokens.docker.io", false, "manual"],
  ]);
});

Deno.test("auth: endless token redirects and a refused hop end in a 502", async () => {
  const loop = scripted((url) => redirect(`${url.origin}/again`));
  const looping = new UpstreamAuth(registry("https://registry-1.docker.io"), {
    fetch: loop.fetch,
    now: () => 0,
    userAgent: "ua",
  });
  await rejects(
    looping.answer(CHALLENGE, undefined, undefined),
    (e: Error & { status: number }) => {
      equal(e.status, 502);
      return /too many redirects/.test(e.message);
    },
  );
  equal(loop.calls.length, 4, "the realm and three redirects");

  // The guard (here a stand-in) refuses the second hop: its error reaches the caller as is.
  const refusal = new Error("refusing to follow a token realm to http://127.0.0.2: internal");
  const guarded = new UpstreamAuth(registry("https://registry-1.docker.io"), {
    fetch: (url) =>
      url.hostname === "auth.docker.io"
        ? Promise.resolve(redirect("http://127.0.0.2/token"))
        : Promise.reject(refusal),
    now: () => 0,
    userAgent: "ua",
  });
  await rejects(guarded.answer(CHALLENGE, undefined, undefined), /token server of r .*refusing/);
});

Deno.test("auth: a token response over 1 MiB is a 502, read no further", async () => {
  let sent = 0;
  const huge = new ReadableStream<Uint8Array>({
    pull(out) {
      sent += 64 * 1024;
      out.enqueue(new Uint8Array(64 * 1024).fill(0x61));
    },
  });
  const auth = new UpstreamAuth(registry("https://registry-1.docker.io"), {
    fetch: () => Promise.resolve(new Response(huge)),
    now: () => 0,
    userAgent: "ua",
  });
  await rejects(auth.answer(CHALLENGE, undefined, undefined), (e: Error & { status: number }) => {
    equal(e.status, 502);
    return /sent more than 1048576 bytes/.test(e.message);
  });
  equal(sent <= 1024 * 1024 + 3 * 64 * 1024, true, `read ${sent} bytes`);
});
