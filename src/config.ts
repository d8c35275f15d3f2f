// Config type, the built-in registry table, and loading + validation of the JSON config file.

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
const TOP_KEYS = [
  "listen",
  "registries",
  "hosts",
  "cache",
  "upstream",
  "tls",
  "auth",
  "policy",
  "limits",
];
/** A policy pattern: a registry (or `*`), then a repository glob. */
const POLICY_PATTERN = /^[a-z0-9.:*-]+\/[a-z0-9._*\/-]+$/;
const REGISTRY_KEYS = ["upstream", "aliases", "username", "password", "passwordFile", "authRealms"];
const REGISTRY_NAME = /^[a-z0-9]+(?:[.-][a-z0-9]+)*(?::\d{1,5})?$/;
const ALIAS = /^[a-z0-9]+(?:[_-][a-z0-9]+)*$/;
const HOSTNAME = /^[a-z0-9]+(?:[.-][a-z0-9]+)*$/;

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
  const file = objectAt(raw, "config", TOP_KEYS);
  const listen = parseListen(
    sources.env.MIRROR_LISTEN ?? stringAt(file.listen, "listen") ??
      DEFAULT_LISTEN,
  );
  const registries = parseRegistries(file.registries, sources);
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
  return {
    listen,
    registries,
    aliases,
    hosts: parseHosts(file.hosts, registries),
    cache: parseCache(file.cache),
    upstream: parseUpstream(file.upstream),
    tls: parseTls(file.tls),
    auth: parseAuth(file.auth, sources),
    policy: parsePolicy(file.policy),
    limits: parseLimits(file.limits),
  };
}

function parseTls(raw: unknown): Config["tls"] {
  if (raw === undefined) return undefined;
  const tls = objectAt(raw, "tls", ["cert", "key", "reloadCheck"]);
  const cert = stringAt(tls.cert, "tls.cert");
  const key = stringAt(tls.key, "tls.key");
  if (cert === undefined || key === undefined) {
    throw new ConfigError("config: tls: both cert and key are required");
  }
  const checkText = stringAt(tls.reloadCheck, "tls.reloadCheck") ?? "10s";
  const reloadCheckMs = parseDuration(checkText);
  if (!reloadCheckMs) {
    throw new ConfigError(
      `config: tls.reloadCheck: expected a duration like "10s", got "${checkText}"`,
    );
  }
  return { cert, key, reloadCheckMs };
}

function parseAuth(raw: unknown, sources: ConfigSources): Config["auth"] {
  if (raw === undefined) return undefined;
  const auth = objectAt(raw, "auth", ["htpasswd", "tokens", "tokensFile"]);
  const htpasswd = stringAt(auth.htpasswd, "auth.htpasswd");
  const tokens = stringListAt(auth.tokens, "auth.tokens", /^[\x21-\x7e]{16,}$/) ?? [];
  const tokensFile = stringAt(auth.tokensFile, "auth.tokensFile");
  if (tokensFile !== undefined) {
    try {
      tokens.push(
        ...sources.readTextFile(tokensFile).split("\n").map((t) => t.trim()).filter(Boolean),
      );
    } catch (e) {
      throw new ConfigError(
        `config: auth.tokensFile: cannot read "${tokensFile}": ${(e as Error).message}`,
      );
    }
  }
  if (htpasswd === undefined && tokens.length === 0) {
    throw new ConfigError("config: auth: set htpasswd, tokens or tokensFile");
  }
  return { htpasswd, tokens };
}

function parsePolicy(raw: unknown): Config["policy"] {
  const policy = raw === undefined ? {} : objectAt(raw, "policy", ["allow", "deny"]);
  return {
    allow: stringListAt(policy.allow, "policy.allow", POLICY_PATTERN) ?? [],
    deny: stringListAt(policy.deny, "policy.deny", POLICY_PATTERN) ?? [],
  };
}

function parseLimits(raw: unknown): Config["limits"] {
  const keys = [
    "maxHeaderBytes",
    "maxUrlLength",
    "maxConcurrentRequests",
    "clientRate",
    "headerTimeout",
    "idleTimeout",
    "sendTimeout",
    "maxConnections",
  ];
  const limits = raw === undefined ? {} : objectAt(raw, "limits", keys);
  const number = (key: string, fallback: number, min: number, max = Infinity) => {
    const value = limits[key] ?? fallback;
    if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
      const range = max === Infinity ? `>= ${min}` : `${min}-${max}`;
      throw new ConfigError(
        `config: limits.${key}: expected an integer ${range}, got ${JSON.stringify(value)}`,
      );
    }
    return value;
  };
  const duration = (key: string, fallback: string) => {
    const text = stringAt(limits[key], `limits.${key}`) ?? fallback;
    const ms = parseDuration(text);
    if (!ms) {
      throw new ConfigError(
        `config: limits.${key}: expected a duration like "${fallback}", got "${text}"`,
      );
    }
    return ms;
  };
  return {
    // The HTTP server answers a bare 400 to heads over 64 KiB before the mirror sees them.
    maxHeaderBytes: number("maxHeaderBytes", 16 * 1024, 1024, 64 * 1024),
    maxUrlLength: number("maxUrlLength", 4096, 256),
    maxConcurrentRequests: number("maxConcurrentRequests", 1024, 1),
    clientRate: number("clientRate", 0, 0),
    headerTimeoutMs: duration("headerTimeout", "10s"),
    idleTimeoutMs: duration("idleTimeout", "60s"),
    sendTimeoutMs: duration("sendTimeout", "60s"),
    maxConnections: limits.maxConnections === undefined
      ? undefined
      : number("maxConnections", 0, 1),
  };
}

function parseListen(text: string): Config["listen"] {
  const at = text.lastIndexOf(":");
  const hostname = text.slice(0, at).replace(/^\[(.*)\]$/, "$1");
  const portText = text.slice(at + 1);
  const port = Number(portText);
  if (at <= 0 || !hostname || !/^\d+$/.test(portText) || port < 1 || port > 65535) {
    throw new ConfigError(
      `config: listen: expected "host:port" with a port 1-65535, got "${text}"`,
    );
  }
  return { hostname, port };
}

function parseRegistries(raw: unknown, sources: ConfigSources): Map<string, RegistryConfig> {
  const result = new Map<string, RegistryConfig>();
  for (const [name, [upstream, aliases, authRealms]] of Object.entries(DEFAULT_REGISTRIES)) {
    result.set(name, { name, upstream: new URL(upstream), aliases, authRealms });
  }
  const entries = raw === undefined ? {} : objectAt(raw, "registries");
  for (const [name, value] of Object.entries(entries)) {
    const key = `registries.${name}`;
    if (!REGISTRY_NAME.test(name)) {
      throw new ConfigError(`config: ${key}: "${name}" is not a registry host name`);
    }
    if (value === false) {
      result.delete(name);
      continue;
    }
    const entry = objectAt(value, key, REGISTRY_KEYS);
    const base = result.get(name);
    const upstreamText = stringAt(entry.upstream, `${key}.upstream`);
    if (!base && upstreamText === undefined) {
      throw new ConfigError(
        `config: ${key}.upstream: required for a registry that is not built in`,
      );
    }
    const registry: RegistryConfig = {
      name,
      upstream: upstreamText === undefined ? base!.upstream : parseUrl(upstreamText, key),
      aliases: stringListAt(entry.aliases, `${key}.aliases`, ALIAS) ?? base?.aliases ?? [],
      authRealms: stringListAt(entry.authRealms, `${key}.authRealms`, HOSTNAME) ??
        base?.authRealms ?? [],
      username: stringAt(entry.username, `${key}.username`),
      password: stringAt(entry.password, `${key}.password`),
    };
    const passwordFile = stringAt(entry.passwordFile, `${key}.passwordFile`);
    if (passwordFile !== undefined) {
      if (registry.password !== undefined) {
        throw new ConfigError(`config: ${key}: set password or passwordFile, not both`);
      }
      try {
        registry.password = sources.readTextFile(passwordFile).trim();
      } catch (e) {
        throw new ConfigError(
          `config: ${key}.passwordFile: cannot read "${passwordFile}": ${(e as Error).message}`,
        );
      }
    }
    result.set(name, registry);
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

function parseUrl(text: string, key: string): URL {
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  if (
    !url || (url.protocol !== "http:" && url.protocol !== "https:") || url.search || url.hash ||
    url.username || url.password
  ) {
    throw new ConfigError(
      `config: ${key}.upstream: expected an http(s) URL without query or credentials, got "${text}"`,
    );
  }
  url.pathname = url.pathname.replace(/\/+$/, "").replace(/\/v2$/, "");
  return url;
}

function parseHosts(raw: unknown, registries: Map<string, RegistryConfig>): Map<string, string> {
  const hosts = new Map<string, string>();
  if (raw === undefined) return hosts;
  for (const [host, value] of Object.entries(objectAt(raw, "hosts"))) {
    const registry = stringAt(value, `hosts.${host}`);
    if (registry === undefined || !registries.has(registry)) {
      throw new ConfigError(`config: hosts.${host}: unknown registry "${String(value)}"`);
    }
    hosts.set(host.toLowerCase(), registry);
  }
  return hosts;
}

function parseCache(raw: unknown): Config["cache"] {
  const cache = raw === undefined ? {} : objectAt(raw, "cache", ["dir", "tagTtl", "maxSize"]);
  const ttlText = stringAt(cache.tagTtl, "cache.tagTtl") ?? "5m";
  const tagTtlMs = parseDuration(ttlText);
  if (tagTtlMs === undefined) {
    throw new ConfigError(`config: cache.tagTtl: expected a duration like "5m", got "${ttlText}"`);
  }
  const sizeText = stringAt(cache.maxSize, "cache.maxSize");
  const maxSizeBytes = sizeText === undefined ? undefined : parseSize(sizeText);
  if (sizeText !== undefined && !maxSizeBytes) {
    throw new ConfigError(`config: cache.maxSize: expected a size like "50GiB", got "${sizeText}"`);
  }
  return { dir: stringAt(cache.dir, "cache.dir") ?? "./data", tagTtlMs, maxSizeBytes };
}

function parseUpstream(raw: unknown): Config["upstream"] {
  const upstream = raw === undefined ? {} : objectAt(raw, "upstream", ["idleTimeout", "retries"]);
  const idleText = stringAt(upstream.idleTimeout, "upstream.idleTimeout") ?? "60s";
  const idleTimeoutMs = parseDuration(idleText);
  if (idleTimeoutMs === undefined || idleTimeoutMs <= 0) {
    throw new ConfigError(
      `config: upstream.idleTimeout: expected a duration like "60s", got "${idleText}"`,
    );
  }
  const retries = upstream.retries ?? 3;
  if (typeof retries !== "number" || !Number.isInteger(retries) || retries < 0 || retries > 10) {
    throw new ConfigError(
      `config: upstream.retries: expected an integer 0-10, got ${JSON.stringify(retries)}`,
    );
  }
  return { idleTimeoutMs, retries };
}

function objectAt(raw: unknown, key: string, allowed?: string[]): Record<string, unknown> {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError(`config: ${key}: expected an object, got ${JSON.stringify(raw)}`);
  }
  const obj = raw as Record<string, unknown>;
  for (const k of Object.keys(obj)) {
    if (allowed && !allowed.includes(k)) {
      const where = key === "config" ? k : `${key}.${k}`;
      throw new ConfigError(`config: ${where}: unknown key (allowed: ${allowed.join(", ")})`);
    }
  }
  return obj;
}

function stringAt(raw: unknown, key: string): string | undefined {
  if (raw === undefined) return undefined;
  if (typeof raw !== "string" || raw === "") {
    throw new ConfigError(
      `config: ${key}: expected a non-empty string, got ${JSON.stringify(raw)}`,
    );
  }
  return raw;
}

function stringListAt(raw: unknown, key: string, pattern: RegExp): string[] | undefined {
  if (raw === undefined) return undefined;
  if (!Array.isArray(raw)) {
    throw new ConfigError(
      `config: ${key}: expected an array of strings, got ${JSON.stringify(raw)}`,
    );
  }
  return raw.map((item) => {
    if (typeof item !== "string" || !pattern.test(item)) {
      throw new ConfigError(`config: ${key}: invalid entry ${JSON.stringify(item)}`);
    }
    return item;
  });
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
      }]),
    ),
    hosts: Object.fromEntries(config.hosts),
    cache: config.cache,
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
