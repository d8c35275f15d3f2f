// Config type, the built-in registry table, and loading + validation (a valibot schema) of the JSON config file.

import * as v from "valibot";
import { parseDuration, parseSize } from "./units.ts";

/** One upstream registry the mirror serves. */
export interface RegistryConfig {
  /** The host people write in image references, e.g. `quay.io`. */
  name: string;
  /** Base URL of the upstream registry API (without `/v2`). */
  upstream: URL;
  aliases: string[];
  username?: string;
  password?: string;
  /** Hosts besides the upstream's own registrable domain allowed to receive the credentials. */
  authRealms: string[];
  /** Tried in order when the primary upstream fails (none when absent). */
  fallbacks?: FallbackConfig[];
}

/** A fallback upstream of a registry, with its own credentials. */
export interface FallbackConfig {
  upstream: URL;
  /** Take tags (and tag lists, referrers) from it; content by digest is always verified. */
  trustTags: boolean;
  username?: string;
  password?: string;
  authRealms: string[];
}

/** The validated, effective configuration. */
export interface Config {
  listen: { hostname: string; port: number };
  /** Registries by name. */
  registries: Map<string, RegistryConfig>;
  /** Alias -> registry name. */
  aliases: Map<string, string>;
  /** Host header (lowercase, with or without port) -> registry name. */
  hosts: Map<string, string>;
  cache: {
    dir: string;
    /** How long a tag's digest is trusted before it is revalidated upstream. */
    tagTtlMs: number;
    /** Cache size above which least-recently-used objects are evicted; undefined: no limit. */
    maxSizeBytes?: number;
    /** Keep the cache in an S3 bucket; `dir` then holds only the spools of fills in flight. */
    s3?: S3Config;
  };
  /** Replicas sharing one bucket: one upstream fetch per blob for the fleet. */
  cluster?: {
    /** Where the other replicas reach this one (env MIRROR_CLUSTER_ADVERTISE). */
    advertise: URL;
    /** Opens the internal endpoint between replicas (env MIRROR_CLUSTER_SECRET). */
    secret: string;
    /** How long a lease lasts unless renewed: how soon a dead replica's fill is taken over. */
    leaseTtlMs: number;
  };
  upstream: { idleTimeoutMs: number; retries: number };
  /** Serve HTTPS (HTTP/2 by ALPN) with these PEM files, reloaded when they change. */
  tls?: { cert: string; key: string; reloadCheckMs: number };
  /** Client authentication; off when absent. */
  auth?: { htpasswd?: string; tokens: string[] };
  /** Repository policy: `registry/repository` glob patterns (`*`: one component, `**`: any). */
  policy: { allow: string[]; deny: string[] };
  limits: {
    maxHeaderBytes: number;
    maxUrlLength: number;
    maxConcurrentRequests: number;
    /** Requests per second per client address; 0: no limit. */
    clientRate: number;
    /** How long a new connection may take to send its first request's head. */
    headerTimeoutMs: number;
    /** How long a connection may wait between the end of a response and the next request's head. */
    idleTimeoutMs: number;
    /** How long a response may wait for its client to take more bytes. */
    sendTimeoutMs: number;
    /** Open client connections; undefined: derived from the descriptor limit when serving. */
    maxConnections?: number;
  };
}

/** The bucket the cache is kept in, credentials resolved (config, else AWS_* variables). */
export interface S3Config {
  endpoint: URL;
  region: string;
  bucket: string;
  /** Prepended to every key: empty, or ending with "/". */
  prefix: string;
  accessKeyId: string;
  secretAccessKey: string;
  forcePathStyle: boolean;
  redirect: boolean;
}

/** A configuration problem; the message is the one line printed at start. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/** The nine registries served with no config file: name -> [upstream, aliases, authRealms]. */
export const DEFAULT_REGISTRIES: Record<string, [string, string[], string[]]> = {
  "docker.io": ["https://registry-1.docker.io", ["docker"], []],
  "quay.io": ["https://quay.io", ["quay"], []],
  "gcr.io": ["https://gcr.io", ["gcr"], []],
  "k8s.gcr.io": ["https://k8s.gcr.io", ["k8s-gcr"], []],
  "registry.k8s.io": ["https://registry.k8s.io", ["k8s"], []],
  "ghcr.io": ["https://ghcr.io", ["ghcr"], []],
  "docker.cloudsmith.io": ["https://docker.cloudsmith.io", ["cloudsmith"], []],
  "nvcr.io": ["https://nvcr.io", ["nvcr"], ["authn.nvidia.com"]],
  "registry.gitlab.com": ["https://registry.gitlab.com", ["gitlab"], []],
};

const DEFAULT_LISTEN = "0.0.0.0:8080";
/** A policy pattern: a registry (or `*`), then a repository glob. */
const POLICY_PATTERN = /^[a-z0-9.:*-]+\/[a-z0-9._*\/-]+$/;
const REGISTRY_NAME = /^[a-z0-9]+(?:[.-][a-z0-9]+)*(?::\d{1,5})?$/;
const ALIAS = /^[a-z0-9]+(?:[_-][a-z0-9]+)*$/;
const HOSTNAME = /^[a-z0-9]+(?:[.-][a-z0-9]+)*$/;
const TOKEN = /^[\x21-\x7e]{16,}$/;

/** A message naming what was expected and the value found. */
const got = (expected: string) => (issue: { input: unknown }) =>
  `${expected}, got ${JSON.stringify(issue.input)}`;

const text = v.pipe(
  v.string(got("expected a non-empty string")),
  v.minLength(1, got("expected a non-empty string")),
);

/** An object refusing unknown keys, naming the keys it allows. */
function strict<const E extends v.ObjectEntries>(entries: E) {
  const isObject = (x: unknown) => typeof x === "object" && x !== null && !Array.isArray(x);
  return v.pipe(
    v.custom<Record<string, unknown>>(isObject, got("expected an object")),
    // Every key is optional, so the only issue left here is an unknown key.
    v.strictObject(entries, `unknown key (allowed: ${Object.keys(entries).join(", ")})`),
  );
}

/** A non-empty string turned into a value by `parse`; undefined from it is an error. */
function parsed<T>(parse: (text: string) => T | undefined, expected: string) {
  return v.pipe(
    text,
    v.rawTransform<string, T>(({ dataset, addIssue, NEVER }) => {
      const value = parse(dataset.value);
      if (value !== undefined) return value;
      addIssue({ message: got(expected)({ input: dataset.value }) });
      return NEVER;
    }),
  );
}

/** Milliseconds from a duration such as "60s"; zero only when `allowZero`. */
function duration(example: string, allowZero = false) {
  return v.optional(
    parsed((t) => {
      const ms = parseDuration(t);
      return ms !== undefined && (ms > 0 || allowZero) ? ms : undefined;
    }, `expected a duration like "${example}"`),
    example,
  );
}

function integer(min: number, max = Infinity) {
  const message = got(`expected an integer ${max === Infinity ? `>= ${min}` : `${min}-${max}`}`);
  return v.pipe(
    v.number(message),
    v.integer(message),
    v.minValue(min, message),
    v.maxValue(max, message),
  );
}

function list(pattern: RegExp) {
  const entry = (issue: v.BaseIssue<unknown>) => `invalid entry ${JSON.stringify(issue.input)}`;
  return v.array(
    v.pipe(v.string(entry), v.regex(pattern, entry)),
    got("expected an array of strings"),
  );
}

function parseListen(text: string): Config["listen"] | undefined {
  const at = text.lastIndexOf(":");
  const hostname = text.slice(0, at).replace(/^\[(.*)\]$/, "$1");
  const portText = text.slice(at + 1);
  const port = Number(portText);
  const ok = at > 0 && hostname && /^\d+$/.test(portText) && port >= 1 && port <= 65535;
  return ok ? { hostname, port } : undefined;
}

function parseUpstream(text: string): URL | undefined {
  const url = URL.parse(text);
  if (
    !url || (url.protocol !== "http:" && url.protocol !== "https:") || url.search || url.hash ||
    url.username || url.password
  ) return undefined;
  url.pathname = url.pathname.replace(/\/+$/, "").replace(/\/v2$/, "");
  return url;
}

const Listen = parsed(parseListen, 'expected "host:port" with a port 1-65535');
const Advertise = parsed(parseUpstream, "expected an http(s) URL");
const ClusterSecret = v.pipe(v.string(), v.regex(TOKEN, "expected 16 or more characters"));

const Upstream = v.optional(
  parsed(parseUpstream, "expected an http(s) URL without query or credentials"),
);

/** Keys an upstream's credentials are given with, in a registry and in each of its fallbacks. */
const credentials = {
  username: v.optional(text),
  password: v.optional(text),
  passwordFile: v.optional(text),
  authRealms: v.optional(list(HOSTNAME)),
};

function oneSecret<T extends { password?: string; passwordFile?: string }>() {
  return v.check<T, string>(
    (r) => r.password === undefined || r.passwordFile === undefined,
    "set password or passwordFile, not both",
  );
}

const FallbackEntry = v.pipe(
  strict({
    upstream: Upstream,
    trustTags: v.optional(v.boolean(got("expected true or false")), false),
    ...credentials,
  }),
  v.check((f) => f.upstream !== undefined, "each fallback needs an upstream"),
  oneSecret(),
);

const RegistryEntry = v.pipe(
  strict({
    upstream: Upstream,
    aliases: v.optional(list(ALIAS)),
    ...credentials,
    fallbacks: v.optional(v.array(FallbackEntry, got("expected an array of fallbacks"))),
  }),
  oneSecret(),
);

/** Where an S3 bucket is; credentials may come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. */
const S3Entry = strict({
  endpoint: v.optional(parsed(parseUpstream, "expected an http(s) URL")),
  region: v.optional(text, "us-east-1"),
  bucket: v.optional(text),
  prefix: v.optional(
    v.pipe(
      v.string(),
      v.regex(
        /^$|^[\w-][\w.-]*(?:\/[\w-][\w.-]*)*\/?$/,
        got('expected a key prefix like "mirror/"'),
      ),
      v.transform((p) => p === "" || p.endsWith("/") ? p : `${p}/`),
    ),
    "",
  ),
  accessKeyId: v.optional(text),
  secretAccessKey: v.optional(text),
  forcePathStyle: v.optional(v.boolean(got("expected true or false")), false),
  redirect: v.optional(v.boolean(got("expected true or false")), false),
});

/** The config file: every key, its type, its default. */
export const ConfigFileSchema = strict({
  listen: v.optional(Listen, DEFAULT_LISTEN),
  registries: v.optional(
    v.record(
      v.pipe(v.string(), v.regex(REGISTRY_NAME, (i) => `"${i.input}" is not a registry host name`)),
      // `false` removes a built-in registry; anything else must be an entry.
      v.lazy((input) => input === false ? v.literal(false) : RegistryEntry),
    ),
    {},
  ),
  hosts: v.optional(v.record(v.string(), text), {}),
  cache: v.optional(
    v.pipe(
      strict({
        dir: v.optional(text, "./data"),
        tagTtl: duration("5m", true),
        maxSize: v.optional(
          parsed((t) => parseSize(t) || undefined, 'expected a size like "50GiB"'),
        ),
        s3: v.optional(S3Entry),
      }),
      v.transform(({ dir, tagTtl, maxSize, s3 }) => ({
        dir,
        tagTtlMs: tagTtl,
        maxSizeBytes: maxSize,
        ...(s3 && { s3 }),
      })),
    ),
    {},
  ),
  cluster: v.optional(
    v.pipe(
      strict({
        advertise: v.optional(Advertise),
        secret: v.optional(ClusterSecret),
        leaseTtl: duration("15s"),
      }),
      v.transform(({ leaseTtl, ...rest }) => ({ ...rest, leaseTtlMs: leaseTtl })),
    ),
  ),
  upstream: v.optional(
    v.pipe(
      strict({ idleTimeout: duration("60s"), retries: v.optional(integer(0, 10), 3) }),
      v.transform((u) => ({ idleTimeoutMs: u.idleTimeout, retries: u.retries })),
    ),
    {},
  ),
  tls: v.optional(v.pipe(
    strict({ cert: v.optional(text), key: v.optional(text), reloadCheck: duration("10s") }),
    v.check((t) => t.cert !== undefined && t.key !== undefined, "both cert and key are required"),
    v.transform((t) => ({ cert: t.cert!, key: t.key!, reloadCheckMs: t.reloadCheck })),
  )),
  auth: v.optional(
    strict({
      htpasswd: v.optional(text),
      tokens: v.optional(list(TOKEN)),
      tokensFile: v.optional(text),
    }),
  ),
  policy: v.optional(
    strict({
      allow: v.optional(list(POLICY_PATTERN), []),
      deny: v.optional(list(POLICY_PATTERN), []),
    }),
    {},
  ),
  limits: v.optional(
    v.pipe(
      strict({
        // The HTTP server answers a bare 400 to heads over 64 KiB before the mirror sees them.
        maxHeaderBytes: v.optional(integer(1024, 64 * 1024), 16 * 1024),
        maxUrlLength: v.optional(integer(256), 4096),
        maxConcurrentRequests: v.optional(integer(1), 1024),
        clientRate: v.optional(integer(0), 0),
        headerTimeout: duration("10s"),
        idleTimeout: duration("60s"),
        sendTimeout: duration("60s"),
        maxConnections: v.optional(integer(1)),
      }),
      v.transform(({ headerTimeout, idleTimeout, sendTimeout, maxConnections, ...rest }) => ({
        ...rest,
        maxConnections,
        headerTimeoutMs: headerTimeout,
        idleTimeoutMs: idleTimeout,
        sendTimeoutMs: sendTimeout,
      })),
    ),
    {},
  ),
});

/** What loading needs from the outside world, so tests can pass their own. */
export interface ConfigSources {
  env: Record<string, string | undefined>;
  readTextFile: (path: string) => string;
}

/** Reads the file named by `--config` / `MIRROR_CONFIG` (if any), validates and merges it. */
export function loadConfig(path: string | undefined, sources: ConfigSources): Config {
  if (path === undefined) return buildConfig({}, sources);
  let text: string;
  try {
    text = sources.readTextFile(path);
  } catch (e) {
    throw new ConfigError(`config: cannot read ${path}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`config: ${path} is not valid JSON: ${(e as Error).message}`);
  }
  return buildConfig(raw, sources);
}

/** Validates a parsed config object and merges it over the defaults. */
export function buildConfig(raw: unknown, sources: ConfigSources): Config {
  const file = validate(ConfigFileSchema, raw, "config");
  const env = sources.env;
  const registries = mergeRegistries(file.registries, sources);
  const aliases = new Map<string, string>();
  for (const r of registries.values()) {
    for (const alias of r.aliases) {
      const other = registries.has(alias) ? alias : aliases.get(alias);
      if (other !== undefined) {
        throw new ConfigError(
          `config: registries.${r.name}.aliases: "${alias}" is already used by ${other}`,
        );
      }
      aliases.set(alias, r.name);
    }
  }
  const hosts = new Map<string, string>();
  for (const [host, registry] of Object.entries(file.hosts)) {
    if (!registries.has(registry)) {
      throw new ConfigError(`config: hosts.${host}: unknown registry "${registry}"`);
    }
    hosts.set(host.toLowerCase(), registry);
  }
  let auth: Config["auth"];
  if (file.auth) {
    const { htpasswd, tokens = [], tokensFile } = file.auth;
    if (tokensFile !== undefined) {
      const lines = readFile(sources, tokensFile, "auth.tokensFile").split("\n");
      tokens.push(...lines.map((t) => t.trim()).filter(Boolean));
    }
    if (htpasswd === undefined && tokens.length === 0) {
      throw new ConfigError("config: auth: set htpasswd, tokens or tokensFile");
    }
    auth = { htpasswd, tokens };
  }
  return {
    listen: env.MIRROR_LISTEN === undefined
      ? file.listen
      : validate(Listen, env.MIRROR_LISTEN, "listen"),
    registries,
    aliases,
    hosts,
    cache: cacheConfig(file.cache, env),
    cluster: clusterConfig(file, env),
    upstream: file.upstream,
    tls: file.tls,
    auth,
    policy: file.policy,
    limits: file.limits,
  };
}

/** The cache's settings; a bucket's credentials from the environment when the file has none. */
function cacheConfig(
  { s3, ...cache }: v.InferOutput<typeof ConfigFileSchema>["cache"],
  env: ConfigSources["env"],
): Config["cache"] {
  if (!s3) return cache;
  const { bucket } = s3;
  if (bucket === undefined) throw new ConfigError("config: cache.s3.bucket: required");
  const accessKeyId = s3.accessKeyId ?? env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = s3.secretAccessKey ?? env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) {
    throw new ConfigError(
      "config: cache.s3: set accessKeyId and secretAccessKey (or the environment variables " +
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
    );
  }
  const endpoint = s3.endpoint ?? new URL(`https://s3.${s3.region}.amazonaws.com`);
  return { ...cache, s3: { ...s3, bucket, endpoint, accessKeyId, secretAccessKey } };
}

/**
 * The cluster's settings, env MIRROR_CLUSTER_ADVERTISE and MIRROR_CLUSTER_SECRET over the file's
 * (each replica has its own address): replicas share fills through the bucket, so `cache.s3` and
 * both values are needed.
 */
function clusterConfig(
  { cluster, cache }: v.InferOutput<typeof ConfigFileSchema>,
  env: ConfigSources["env"],
): Config["cluster"] {
  if (!cluster) return undefined;
  const advertise = env.MIRROR_CLUSTER_ADVERTISE
    ? validate(Advertise, env.MIRROR_CLUSTER_ADVERTISE, "MIRROR_CLUSTER_ADVERTISE")
    : cluster.advertise;
  const secret = env.MIRROR_CLUSTER_SECRET
    ? validate(ClusterSecret, env.MIRROR_CLUSTER_SECRET, "MIRROR_CLUSTER_SECRET")
    : cluster.secret;
  if (!cache.s3) {
    throw new ConfigError("config: cluster: replicas share fills through a bucket: set cache.s3");
  }
  if (!advertise || !secret) {
    throw new ConfigError(
      "config: cluster: set advertise (this replica's URL for the others, or env " +
        "MIRROR_CLUSTER_ADVERTISE) and secret (or env MIRROR_CLUSTER_SECRET)",
    );
  }
  return { advertise, secret, leaseTtlMs: cluster.leaseTtlMs };
}

/** Runs `schema` on `input`; the first issue becomes a one-line ConfigError naming its key path. */
function validate<S extends v.GenericSchema>(schema: S, input: unknown, key: string) {
  const result = v.safeParse(schema, input, { abortEarly: true });
  if (result.success) return result.output;
  const issue = result.issues[0];
  const path = (issue.path ?? []).filter((p) => p.type !== "array").map((p) => String(p.key));
  throw new ConfigError(`config: ${path.join(".") || key}: ${issue.message}`);
}

function readFile(sources: ConfigSources, path: string, key: string): string {
  try {
    return sources.readTextFile(path);
  } catch (e) {
    throw new ConfigError(`config: ${key}: cannot read "${path}": ${(e as Error).message}`);
  }
}

function mergeRegistries(
  entries: v.InferOutput<typeof ConfigFileSchema>["registries"],
  sources: ConfigSources,
): Map<string, RegistryConfig> {
  const result = new Map<string, RegistryConfig>();
  for (const [name, [upstream, aliases, authRealms]] of Object.entries(DEFAULT_REGISTRIES)) {
    result.set(name, { name, upstream: new URL(upstream), aliases, authRealms, fallbacks: [] });
  }
  for (const [name, entry] of Object.entries(entries)) {
    if (entry === false) {
      result.delete(name);
      continue;
    }
    const key = `registries.${name}`;
    const base = result.get(name);
    const upstream = entry.upstream ?? base?.upstream;
    if (upstream === undefined) {
      throw new ConfigError(
        `config: ${key}.upstream: required for a registry that is not built in`,
      );
    }
    const password = entry.passwordFile === undefined
      ? entry.password
      : readFile(sources, entry.passwordFile, `${key}.passwordFile`).trim();
    const fallbacks = entry.fallbacks?.map((f, i): FallbackConfig => {
      const where = `${key}.fallbacks[${i}]`;
      const secret = f.passwordFile === undefined
        ? f.password
        : readFile(sources, f.passwordFile, `${where}.passwordFile`).trim();
      if ((f.username === undefined) !== (secret === undefined)) {
        throw new ConfigError(`config: ${where}: username and password must be set together`);
      }
      const { upstream, trustTags, username, authRealms = [] } = f;
      return { upstream: upstream!, trustTags, username, password: secret, authRealms };
    });
    result.set(name, {
      name,
      upstream,
      aliases: entry.aliases ?? base?.aliases ?? [],
      authRealms: entry.authRealms ?? base?.authRealms ?? [],
      username: entry.username,
      password,
      fallbacks: fallbacks ?? base?.fallbacks ?? [],
    });
  }
  const hub = result.get("docker.io");
  if (hub) {
    hub.username = sources.env.DOCKER_HUB_USERNAME || hub.username;
    hub.password = sources.env.DOCKER_HUB_PASSWORD || hub.password;
  }
  for (const r of result.values()) {
    if ((r.username === undefined) !== (r.password === undefined)) {
      throw new ConfigError(
        `config: registries.${r.name}: username and password must be set together`,
      );
    }
  }
  return result;
}

/** The effective config as plain JSON, secrets masked, for `config check`. */
export function describeConfig(config: Config): Record<string, unknown> {
  return {
    listen: `${config.listen.hostname}:${config.listen.port}`,
    registries: Object.fromEntries(
      [...config.registries.values()].map((r) => [r.name, {
        upstream: r.upstream.href,
        aliases: r.aliases,
        authRealms: r.authRealms,
        ...(r.username !== undefined ? { username: r.username, password: "***" } : {}),
        ...(r.fallbacks?.length
          ? {
            fallbacks: r.fallbacks.map((f) => ({
              upstream: f.upstream.href,
              trustTags: f.trustTags,
              authRealms: f.authRealms,
              ...(f.username !== undefined ? { username: f.username, password: "***" } : {}),
            })),
          }
          : {}),
      }]),
    ),
    hosts: Object.fromEntries(config.hosts),
    cache: {
      ...config.cache,
      s3: config.cache.s3 && {
        ...config.cache.s3,
        endpoint: config.cache.s3.endpoint.href,
        secretAccessKey: "***",
      },
    },
    cluster: config.cluster && {
      ...config.cluster,
      advertise: config.cluster.advertise.href,
      secret: "***",
    },
    upstream: config.upstream,
    tls: config.tls,
    auth: config.auth && {
      htpasswd: config.auth.htpasswd,
      tokens: config.auth.tokens.map(() => "***"),
    },
    policy: config.policy,
    limits: config.limits,
  };
}
