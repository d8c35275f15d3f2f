import { deepEqual, equal, throws } from "node:assert/strict";
import {
  buildConfig,
  ConfigError,
  DEFAULT_REGISTRIES,
  describeConfig,
  loadConfig,
} from "./config.ts";

const files: Record<string, string> = { "/secret": "s3cret\n" };
const sources = (env: Record<string, string> = {}) => ({
  env,
  readTextFile: (path: string) => {
    if (!(path in files)) throw new Error("No such file");
    return files[path];
  },
});

Deno.test("config: no file serves the nine registries on 0.0.0.0:8080", () => {
  const config = loadConfig(undefined, sources());
  deepEqual([...config.registries.keys()], Object.keys(DEFAULT_REGISTRIES));
  deepEqual(config.listen, { hostname: "0.0.0.0", port: 8080 });
  equal(config.aliases.get("k8s"), "registry.k8s.io");
  equal(config.registries.get("nvcr.io")!.authRealms[0], "authn.nvidia.com");
  deepEqual(config.upstream, { idleTimeoutMs: 60_000, retries: 3 });
  deepEqual(config.cache, { dir: "./data", tagTtlMs: 300_000, maxSizeBytes: undefined });
});

Deno.test("config: entries merge over defaults, add and remove registries", () => {
  const config = buildConfig({
    listen: "127.0.0.1:5001",
    registries: {
      "docker.io": { upstream: "http://127.0.0.1:5000/" },
      "quay.io": false,
      "registry.example.com": { upstream: "https://registry.example.com/v2/", aliases: ["ex"] },
      "ghcr.io": { username: "u", passwordFile: "/secret" },
    },
    hosts: { "ex.mirror.local": "registry.example.com" },
    upstream: { idleTimeout: "2s", retries: 0 },
    cache: { dir: "/var/cache/m", tagTtl: "30s", maxSize: "50GiB" },
  }, sources());
  deepEqual(config.cache, { dir: "/var/cache/m", tagTtlMs: 30_000, maxSizeBytes: 50 * 2 ** 30 });
  const hub = config.registries.get("docker.io")!;
  deepEqual([hub.upstream.href, hub.aliases], ["http://127.0.0.1:5000/", ["docker"]]);
  equal(config.registries.has("quay.io"), false);
  equal(config.aliases.has("quay"), false);
  equal(
    config.registries.get("registry.example.com")!.upstream.href,
    "https://registry.example.com/",
  );
  equal(config.aliases.get("ex"), "registry.example.com");
  equal(config.registries.get("ghcr.io")!.password, "s3cret");
  equal(config.hosts.get("ex.mirror.local"), "registry.example.com");
  deepEqual(config.upstream, { idleTimeoutMs: 2000, retries: 0 });
  deepEqual(config.listen, { hostname: "127.0.0.1", port: 5001 });
});

Deno.test("config: environment sets listen and Docker Hub credentials", () => {
  const config = buildConfig(
    {},
    sources({
      MIRROR_LISTEN: "[::1]:9000",
      DOCKER_HUB_USERNAME: "hubuser",
      DOCKER_HUB_PASSWORD: "hubpass",
    }),
  );
  deepEqual(config.listen, { hostname: "::1", port: 9000 });
  const hub = config.registries.get("docker.io")!;
  deepEqual([hub.username, hub.password], ["hubuser", "hubpass"]);
  equal(config.registries.get("quay.io")!.password, undefined);
  throws(
    () => buildConfig({}, sources({ MIRROR_LISTEN: "9000" })),
    /^ConfigError: config: listen: expected "host:port" with a port 1-65535, got "9000"$/,
  );
});

/** [config, text the one-line error must contain] */
const BAD: [unknown, string][] = [
  [{ listne: "x" }, "config: listne: unknown key"],
  [{ listen: "8080" }, 'listen: expected "host:port"'],
  [{ listen: "0.0.0.0:99999" }, '"0.0.0.0:99999"'],
  [{ listen: 8080 }, "listen: expected a non-empty string, got 8080"],
  [
    { registries: { "quay.io": { upstream: "htp:/x" } } },
    'registries.quay.io.upstream: expected an http(s) URL without query or credentials, got "htp:/x"',
  ],
  [{ registries: { "quay.io": { upstream: "not a url" } } }, '"not a url"'],
  [
    { registries: { "quay.io": { upstream: "https://u:p@quay.io" } } },
    "registries.quay.io.upstream",
  ],
  [
    { registries: { "quay.io": { upstreem: "https://quay.io" } } },
    "registries.quay.io.upstreem: unknown key",
  ],
  [{ registries: { "new.example.com": {} } }, "registries.new.example.com.upstream: required"],
  [
    { registries: { "Bad Name": { upstream: "https://x" } } },
    '"Bad Name" is not a registry host name',
  ],
  [{ registries: { "quay.io": { aliases: ["docker"] } } }, '"docker" is already used by docker.io'],
  [
    { registries: { "quay.io": { aliases: ["gcr.io"] } } },
    'registries.quay.io.aliases: invalid entry "gcr.io"',
  ],
  [
    { registries: { "quay.io": { username: "u" } } },
    "registries.quay.io: username and password must be set together",
  ],
  [
    { registries: { "quay.io": { username: "u", password: "p", passwordFile: "/secret" } } },
    "not both",
  ],
  [
    { registries: { "quay.io": { username: "u", passwordFile: "/missing" } } },
    'passwordFile: cannot read "/missing"',
  ],
  [{ registries: { "quay.io": true } }, "registries.quay.io: expected an object, got true"],
  [{ hosts: { "q.local": "quay.iox" } }, 'hosts.q.local: unknown registry "quay.iox"'],
  [{ cache: { dir: "./d", size: 1 } }, "cache.size: unknown key"],
  [{ cache: { tagTtl: "5 min" } }, 'cache.tagTtl: expected a duration like "5m", got "5 min"'],
  [{ cache: { maxSize: "lots" } }, 'cache.maxSize: expected a size like "50GiB", got "lots"'],
  [
    { upstream: { idleTimeout: "soon" } },
    'upstream.idleTimeout: expected a duration like "60s", got "soon"',
  ],
  [{ upstream: { retries: -1 } }, "upstream.retries: expected an integer 0-10, got -1"],
  [{ limits: { headerTimeout: "10" } }, 'limits.headerTimeout: expected a duration like "10s"'],
  [{ limits: { idleTimeout: "0s" } }, 'limits.idleTimeout: expected a duration like "60s"'],
  [{ limits: { sendTimeout: 60 } }, "limits.sendTimeout: expected a non-empty string, got 60"],
  [{ limits: { maxConnections: 0 } }, "limits.maxConnections: expected an integer >= 1, got 0"],
  [{ limits: { maxConnections: "9" } }, 'limits.maxConnections: expected an integer >= 1, got "9"'],
  [
    { limits: { maxHeaderBytes: 100_000 } },
    "limits.maxHeaderBytes: expected an integer 1024-65536, got 100000",
  ],
  [{ limits: { connections: 5 } }, "limits.connections: unknown key"],
  [[], "config: config: expected an object"],
  [{ listne: "x" }, "config: listne: unknown key (allowed: listen, registries, hosts,"],
  [{ cache: [] }, "config: cache: expected an object, got []"],
  [{ hosts: { "q.local": 5 } }, "config: hosts.q.local: expected a non-empty string, got 5"],
  [{ tls: { cert: "c.pem" } }, "config: tls: both cert and key are required"],
  [
    { tls: { cert: "c.pem", key: "k.pem", reloadCheck: "0s" } },
    'config: tls.reloadCheck: expected a duration like "10s", got "0s"',
  ],
  [{ auth: {} }, "config: auth: set htpasswd, tokens or tokensFile"],
  [{ auth: { tokens: ["short"] } }, 'config: auth.tokens: invalid entry "short"'],
  [{ auth: { tokens: "x".repeat(16) } }, "config: auth.tokens: expected an array of strings, got"],
  [{ auth: { tokensFile: "/missing" } }, 'config: auth.tokensFile: cannot read "/missing"'],
  [{ policy: { deny: ["nope"] } }, 'config: policy.deny: invalid entry "nope"'],
  [{ limits: { clientRate: 1.5 } }, "config: limits.clientRate: expected an integer >= 0, got 1.5"],
  [
    { registries: { "docker.io": { fallbacks: { upstream: "https://x" } } } },
    "registries.docker.io.fallbacks: expected an array of fallbacks, got",
  ],
  [
    { registries: { "docker.io": { fallbacks: [{ trustTags: true }] } } },
    "registries.docker.io.fallbacks: each fallback needs an upstream",
  ],
  [
    { registries: { "docker.io": { fallbacks: [{ upstream: "ftp://x" }] } } },
    "registries.docker.io.fallbacks.upstream: expected an http(s) URL",
  ],
  [
    { registries: { "docker.io": { fallbacks: [{ upstream: "https://x", trustTags: "yes" }] } } },
    'registries.docker.io.fallbacks.trustTags: expected true or false, got "yes"',
  ],
  [
    { registries: { "docker.io": { fallbacks: [{ upstream: "https://x", trust: true }] } } },
    "registries.docker.io.fallbacks.trust: unknown key (allowed: upstream, trustTags, username,",
  ],
  [
    { registries: { "docker.io": { fallbacks: [{ upstream: "https://x" }, { password: "p" }] } } },
    "each fallback needs an upstream",
  ],
  [
    { registries: { "docker.io": { fallbacks: [{ upstream: "https://x", username: "u" }] } } },
    "registries.docker.io.fallbacks[0]: username and password must be set together",
  ],
  [
    {
      registries: {
        "docker.io": {
          fallbacks: [{ upstream: "https://x", username: "u", password: "p", passwordFile: "/s" }],
        },
      },
    },
    "registries.docker.io.fallbacks: set password or passwordFile, not both",
  ],
];

Deno.test("config: fallbacks in order, each with its own credentials; secrets masked", () => {
  const config = buildConfig({
    registries: {
      "docker.io": {
        fallbacks: [
          { upstream: "https://mirror.gcr.io", trustTags: true },
          {
            upstream: "https://hub-copy.internal.example/v2/",
            username: "copy",
            passwordFile: "/secret",
            authRealms: ["auth.internal.example"],
          },
        ],
      },
    },
  }, sources({ DOCKER_HUB_USERNAME: "hubuser", DOCKER_HUB_PASSWORD: "hubpass" }));
  const hub = config.registries.get("docker.io")!;
  deepEqual(hub.fallbacks?.map((f) => [f.upstream.href, f.trustTags, f.username, f.password]), [
    ["https://mirror.gcr.io/", true, undefined, undefined],
    ["https://hub-copy.internal.example/", false, "copy", "s3cret"],
  ]);
  deepEqual(hub.fallbacks?.[1].authRealms, ["auth.internal.example"]);
  equal(hub.password, "hubpass", "the environment's credentials are the primary's only");
  deepEqual(config.registries.get("quay.io")!.fallbacks, []);
  const described = describeConfig(config).registries as Record<string, Record<string, unknown>>;
  deepEqual(described["docker.io"].fallbacks, [
    { upstream: "https://mirror.gcr.io/", trustTags: true, authRealms: [] },
    {
      upstream: "https://hub-copy.internal.example/",
      trustTags: false,
      authRealms: ["auth.internal.example"],
      username: "copy",
      password: "***",
    },
  ]);
  equal("fallbacks" in described["quay.io"], false);
});

Deno.test("config: connection timeouts and the connection cap under limits", () => {
  const defaults = loadConfig(undefined, sources()).limits;
  deepEqual(defaults, {
    maxHeaderBytes: 16_384,
    maxUrlLength: 4096,
    maxConcurrentRequests: 1024,
    clientRate: 0,
    headerTimeoutMs: 10_000,
    idleTimeoutMs: 60_000,
    sendTimeoutMs: 60_000,
    maxConnections: undefined,
  });
  const set = buildConfig({
    limits: { headerTimeout: "1s", idleTimeout: "1.5s", sendTimeout: "2m", maxConnections: 300 },
  }, sources()).limits;
  deepEqual(
    [set.headerTimeoutMs, set.idleTimeoutMs, set.sendTimeoutMs, set.maxConnections],
    [1000, 1500, 120_000, 300],
  );
});

Deno.test("config: every bad key or value is one clear line naming it", () => {
  for (const [raw, text] of BAD) {
    throws(() => buildConfig(raw, sources()), (e: Error) => {
      equal(e instanceof ConfigError, true);
      equal(
        e.message.includes(text),
        true,
        `${JSON.stringify(raw)}: "${e.message}" lacks "${text}"`,
      );
      equal(e.message.includes("\n"), false);
      return true;
    });
  }
});

Deno.test("config: unreadable file and invalid JSON name the file", () => {
  throws(() => loadConfig("/nope.json", sources()), /cannot read \/nope\.json/);
  files["/bad.json"] = "{ nope";
  throws(() => loadConfig("/bad.json", sources()), /\/bad\.json is not valid JSON/);
});

Deno.test("config: cache.s3 and cluster; keys from the file, else AWS_*; secrets masked", () => {
  const file = {
    cache: {
      dir: "/spools",
      s3: { endpoint: "http://127.0.0.1:7480", bucket: "mirror", prefix: "prod", redirect: true },
    },
    cluster: { advertise: "http://10.0.0.5:8080", secret: "s".repeat(32) },
  };
  const env = { AWS_ACCESS_KEY_ID: "AKIAENV", AWS_SECRET_ACCESS_KEY: "env-secret" };
  const config = buildConfig(file, sources(env));
  deepEqual(config.cache.s3, {
    endpoint: new URL("http://127.0.0.1:7480"),
    region: "us-east-1",
    bucket: "mirror",
    prefix: "prod/",
    accessKeyId: "AKIAENV",
    secretAccessKey: "env-secret",
    forcePathStyle: false,
    redirect: true,
  });
  deepEqual(config.cluster, {
    advertise: new URL("http://10.0.0.5:8080"),
    secret: "s".repeat(32),
    leaseTtlMs: 15_000,
  });
  const own = buildConfig({
    cache: {
      s3: { bucket: "b", region: "eu-west-1", accessKeyId: "AKIAFILE", secretAccessKey: "file" },
    },
  }, sources(env));
  deepEqual(
    [own.cache.s3?.endpoint.href, own.cache.s3?.accessKeyId, own.cache.s3?.secretAccessKey],
    ["https://s3.eu-west-1.amazonaws.com/", "AKIAFILE", "file"],
  );
  const described = JSON.stringify(describeConfig(config));
  equal(described.includes("env-secret") || described.includes("s".repeat(32)), false);
  equal(described.includes('"accessKeyId":"AKIAENV"'), true);
  for (
    const [raw, message] of [
      [{ cache: { s3: { bucket: "b" } } }, "cache.s3: set accessKeyId and secretAccessKey"],
      [{ cache: { s3: {} } }, "cache.s3.bucket: required"],
      [{ cache: { s3: { bucket: "b", prefix: "../x" } } }, "cache.s3.prefix: expected a key"],
      [{ cache: { s3: { bucket: "b", endpoint: "s3.local" } } }, "cache.s3.endpoint: expected"],
      [{ cache: { s3: { bucket: "b", pathStyle: true } } }, "cache.s3.pathStyle: unknown key"],
      [{ cluster: { secret: "short" } }, "cluster.secret: expected 16 or more characters"],
      [{ cluster: { leaseTtl: "0s" } }, 'cluster.leaseTtl: expected a duration like "15s"'],
    ] as const
  ) {
    throws(() => buildConfig(raw, sources()), (e: Error) => e.message.includes(message), message);
  }
});
