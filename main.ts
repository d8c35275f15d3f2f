// registry-mirror: parse the command line and config, wire the dependencies, start Deno.serve.

import { existsSync } from "node:fs";
import process from "node:process";
import { parseArgs } from "node:util";
import meta from "./deno.json" with { type: "json" };
import { allocatorWarning } from "./src/allocator.ts";
import { type AppDeps, createApp } from "./src/app.ts";
import { Cache } from "./src/cache/cache.ts";
import { BucketEviction } from "./src/cluster/bucket_eviction.ts";
import { Cluster } from "./src/cluster/cluster.ts";
import { Leases } from "./src/cluster/leases.ts";
import { openStore, StoreUnavailable } from "./src/cache/open_store.ts";
import { S3Store } from "./src/cache/s3_store.ts";
import { own, ownerClient, serveOwnerSocket, tryOwn } from "./src/cache/owner.ts";
import { cacheDu, cacheGc, cacheLs } from "./src/cli/cache_commands.ts";
import { formatBytes } from "./src/cli/format.ts";
import { commandHelp } from "./src/cli/help.ts";
import { healthTarget, probeHealth } from "./src/cli/healthcheck.ts";
import { prefetch } from "./src/cli/prefetch.ts";
import { type Config, ConfigError, describeConfig, loadConfig } from "./src/config.ts";
import { log, setupLogging } from "./src/log.ts";
import { MirrorMetrics } from "./src/metrics.ts";
import { ClientAuth } from "./src/security/client_auth.ts";
import { Limits } from "./src/security/limits.ts";
import { Policy } from "./src/security/policy.ts";
import { startServer } from "./src/server.ts";
import { parseDuration, parseSize } from "./src/units.ts";
import { Upstreams, withCredentials } from "./src/upstream/upstreams.ts";

const USAGE = `registry-mirror ${meta.version}: a pull-through cache for container registries

usage: registry-mirror [serve]                 serve the mirror (the default)
       registry-mirror prefetch IMAGE...       warm the cache with every platform of each image
       registry-mirror cache ls|du [--json]    list cached tags | show the cache's size
       registry-mirror cache gc [--max-size S] evict least-recently-used objects down to S
       registry-mirror config check            validate; print the effective config, secrets masked
       registry-mirror healthcheck             exit 0 when the local mirror answers /healthz
       registry-mirror COMMAND --help          the command's options, and an example

options: --config FILE (or env MIRROR_CONFIG); without one, nine registries are served
env: MIRROR_LISTEN, MIRROR_CONFIG, MIRROR_LOG_LEVEL, MIRROR_LOG_FORMAT (text|json),
     MIRROR_SHUTDOWN_GRACE, DOCKER_HUB_USERNAME, DOCKER_HUB_PASSWORD`;

/** How long in-flight responses may take to finish after SIGTERM (env MIRROR_SHUTDOWN_GRACE). */
const DEFAULT_SHUTDOWN_GRACE = "30s";

async function main(args: string[]): Promise<number> {
  if (existsSync(".env")) process.loadEnvFile(".env");
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        config: { type: "string" },
        "max-size": { type: "string" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (e) {
    console.error(`registry-mirror: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command = "serve", sub, ...rest] = positionals;
  if (values.help) {
    console.log((positionals.length && commandHelp(command)) || USAGE);
    return 0;
  }
  const known = command === "serve" || command === "healthcheck" || command === "prefetch" ||
    (command === "cache" && ["ls", "du", "gc"].includes(sub)) ||
    (command === "config" && sub === "check");
  if (!known || (command === "prefetch" && !sub)) {
    console.log(commandHelp(command) ?? USAGE);
    return 2;
  }
  let config: Config;
  try {
    // Commands print their own output: their log shows only warnings unless asked for more.
    setupLogging(Deno.env.get("MIRROR_LOG_LEVEL") ?? (command === "serve" ? "info" : "warning"));
    config = loadConfig(values.config ?? Deno.env.get("MIRROR_CONFIG"), {
      env: Deno.env.toObject(),
      readTextFile: Deno.readTextFileSync,
    });
  } catch (e) {
    if (!(e instanceof ConfigError) && !(e instanceof Error)) throw e;
    console.error(`registry-mirror: ${e.message}`);
    return 1;
  }
  const print = (line: string) => console.log(line);
  switch (command) {
    case "healthcheck":
      return await healthcheck(config);
    case "config":
      print(JSON.stringify(describeConfig(config), null, 2));
      return 0;
    case "serve":
      return await serve(config);
  }
  if (command === "prefetch") return await prefetchCommand(config, [sub, ...rest], print);
  return await cacheCommand(config, sub, values, print);
}

/**
 * `prefetch`: through the server that owns the cache when one runs (it caches, counts and evicts
 * what is added), else in this process.
 */
async function prefetchCommand(
  config: Config,
  images: string[],
  print: (line: string) => void,
): Promise<number> {
  const owned = await tryOwn(config.cache.dir);
  if (!owned) {
    const server = ownerClient(config.cache.dir);
    try {
      const totals = await prefetch(server.handler, images, print);
      return totals.failed.length ? 1 : 0;
    } finally {
      server.close();
    }
  }
  const cache = await Cache.open(config.cache);
  try {
    const deps = await dependencies(config, cache);
    const totals = await prefetch(createApp({ ...deps, operator: true }), images, print);
    return totals.failed.length ? 1 : 0;
  } finally {
    await cache.eviction.close();
    owned.close();
  }
}

/** `cache ls|du` only read, beside a server or not; `cache gc` evicts, so only without one. */
async function cacheCommand(
  config: Config,
  sub: string,
  options: { "max-size"?: string; json?: boolean },
  print: (line: string) => void,
): Promise<number> {
  if (sub === "ls" || sub === "du") {
    const store = await openStore(config.cache, { clean: false });
    await (sub === "ls" ? cacheLs : cacheDu)(store, print, { json: options.json });
    return 0;
  }
  const maxSizeText = options["max-size"];
  const maxSize = maxSizeText === undefined ? config.cache.maxSizeBytes : parseSize(maxSizeText);
  if (maxSize === undefined) {
    console.error("registry-mirror: cache gc needs --max-size SIZE or cache.maxSize");
    return 2;
  }
  if (config.cache.s3) return await bucketGc(config, maxSize, print);
  const owned = await tryOwn(config.cache.dir);
  if (!owned) {
    console.error(
      `registry-mirror: a registry-mirror server is running on ${config.cache.dir}: only it ` +
        "evicts (down to cache.maxSize, by itself); stop it to run cache gc",
    );
    return 1;
  }
  const cache = await Cache.open(config.cache);
  try {
    await cacheGc(cache, maxSize, print);
    return 0;
  } finally {
    await cache.eviction.close();
    owned.close();
  }
}

/**
 * `cache gc` on a bucket: evicts down to `maxSize` beside running replicas, holding the bucket's
 * eviction lease (so no replica evicts meanwhile); refused while one of them evicts.
 */
async function bucketGc(
  config: Config,
  maxSize: number,
  print: (line: string) => void,
): Promise<number> {
  const store = await openStore(config.cache, { clean: false }) as S3Store;
  const leases = new Leases(store.client, config.cache.s3!.prefix, {
    owner: `cache gc on ${Deno.hostname()}`,
    ttlMs: config.cluster?.leaseTtlMs ?? 15_000,
  });
  const pass = await new BucketEviction(store, leases, { maxSize, graceMs: 0 }).pass(maxSize);
  if (pass.outcome === "busy") {
    console.error(`registry-mirror: ${pass.holder} is evicting the bucket now; try again later`);
    return 1;
  }
  const after = pass.outcome === "evicted" ? pass.bytes - pass.freed : pass.bytes;
  const evicted = pass.outcome === "evicted" ? pass.evicted : 0;
  print(
    `evicted ${evicted} objects (${formatBytes(pass.bytes - after)}); bucket now ${
      formatBytes(after)
    }`,
  );
  return 0;
}

/** What the mirror's request handler is built from: upstream clients, metrics and security. */
async function dependencies(
  config: Config,
  cache: Cache,
): Promise<AppDeps & { bucketEviction?: BucketEviction }> {
  const metrics = new MirrorMetrics();
  if (cache.store instanceof S3Store) cache.store.client.observe = metrics.storeRequest;
  const userAgent = `registry-mirror/${meta.version}`;
  const clients = new Map(
    [...config.registries.values()].map((r) => [
      r.name,
      new Upstreams(r, { ...config.upstream, userAgent, metrics }),
    ]),
  );
  metrics.collect(() => {
    const { objects, bytes, evictions } = cache.eviction.stats();
    metrics.cacheObjects.set({}, objects);
    metrics.cacheSize.set({}, bytes);
    if (config.cache.maxSizeBytes) metrics.cacheMaxSize.set({}, config.cache.maxSizeBytes);
    metrics.evictions.set({}, evictions + (deps.bucketEviction?.evicted ?? 0));
    const fills = cache.fills.stats;
    metrics.fillsInFlight.set({}, cache.fills.active);
    metrics.coalesced.set({}, fills.coalesced);
    metrics.fillResumes.set({}, fills.resumes);
    metrics.digestMismatches.set({}, fills.digestMismatches);
    metrics.diskErrors.set({}, cache.diskErrors);
    metrics.passThrough.set({}, fills.passThrough);
    for (const [name, client] of clients) {
      metrics.tokenFetches.set({ registry: name }, client.tokenFetches);
    }
    for (const [source, count] of Object.entries(deps.cluster?.opened ?? {})) {
      metrics.clusterSources.set({ source }, count);
    }
  });
  const deps: AppDeps & { bucketEviction?: BucketEviction } = {
    config,
    clients,
    cache,
    metrics,
    policy: new Policy(config.policy),
    limits: new Limits(config.limits),
    auth: config.auth && await ClientAuth.load(config.auth),
  };
  return deps;
}

async function serve(config: Config): Promise<number> {
  const graceText = Deno.env.get("MIRROR_SHUTDOWN_GRACE") ?? DEFAULT_SHUTDOWN_GRACE;
  const graceMs = parseDuration(graceText);
  if (graceMs === undefined) {
    console.error(
      `registry-mirror: MIRROR_SHUTDOWN_GRACE: expected a duration, got "${graceText}"`,
    );
    return 1;
  }
  const allocator = allocatorWarning(Deno.build.os, Deno.env.get("GLIBC_TUNABLES"));
  if (allocator) log.warn(allocator);
  const owned = await own(config.cache.dir);
  // Replicas evict the shared bucket together (bucketEviction below), never each on its own view.
  const fleet = config.cluster && config.cache.s3
    ? { ...config.cache, maxSizeBytes: undefined }
    : undefined;
  const cache = await Cache.open(fleet ?? config.cache, { clean: true });
  const credentialed = [...config.registries.values()].filter(withCredentials);
  if (credentialed.length > 0 && !config.auth) {
    log.warn(
      "upstream credentials are configured for {registries} and clients are not authenticated: " +
        "every client that can reach this mirror can pull whatever those credentials can read " +
        'anonymously upstream; private repositories are refused until "auth" is configured',
      { registries: credentialed.map((r) => r.name) },
    );
  }
  let server;
  const deps = await dependencies(config, cache);
  // Only the server takes part in the fleet: its advertised URL is where replicas reach it.
  deps.cluster = cache.store instanceof S3Store
    ? Cluster.of(config, cache.store.client, config.cache.s3!.prefix)
    : undefined;
  const maxSize = config.cache.maxSizeBytes;
  if (deps.cluster && cache.store instanceof S3Store && maxSize !== undefined) {
    deps.bucketEviction = new BucketEviction(cache.store, deps.cluster.leases, { maxSize });
    deps.bucketEviction.start();
  }
  try {
    server = await startServer(config, createApp(deps));
  } catch (e) {
    console.error(`registry-mirror: cannot serve: ${(e as Error).message}`);
    return 1;
  }
  const connections = server.stats;
  deps.metrics.collect(() => {
    const closed = {
      header_timeout: connections.headerTimeouts,
      idle_timeout: connections.idleTimeouts,
      send_timeout: connections.sendTimeouts,
      shed: connections.shed,
      refused: connections.refused,
    };
    for (const [reason, count] of Object.entries(closed)) {
      deps.metrics.connectionsClosed.set({ reason }, count);
    }
    deps.metrics.bodiesRelayed.set({}, connections.runtimeSent);
  });
  // Commands beside the server (prefetch) go through it: its cache, its pins, its eviction.
  const commands = serveOwnerSocket(
    config.cache.dir,
    createApp({ ...deps, auth: undefined, operator: true }),
  );
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    log.info("shutting down: waiting up to {graceMs} ms for in-flight responses", { graceMs });
    server.shutdown();
    commands?.shutdown();
    const timer = setTimeout(() => {
      log.warn("in-flight responses still running after {graceMs} ms: exiting", { graceMs });
      Deno.exit(0);
    }, graceMs);
    Deno.unrefTimer(timer);
  };
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  await server.finished;
  await commands?.finished;
  await deps.bucketEviction?.close();
  await cache.eviction.close();
  owned.close();
  log.info("stopped");
  return 0;
}

/**
 * Exit 0 when the mirror on this machine answers `GET /healthz` (open with `auth` on; HTTPS with
 * `tls`), for a shell-less HEALTHCHECK; else say why (Docker keeps it) and exit 1.
 */
async function healthcheck(config: Config): Promise<number> {
  const { url } = healthTarget(config);
  try {
    const status = await probeHealth(config);
    if (status === 200) return 0;
    console.error(`registry-mirror: healthcheck: GET ${url} answered ${status}`);
  } catch (e) {
    console.error(`registry-mirror: healthcheck: GET ${url}: ${(e as Error)?.message ?? e}`);
  }
  return 1;
}

/** A store that cannot be opened (no such bucket, credentials refused) ends with the reason. */
function storeUnavailable(e: unknown): number {
  if (!(e instanceof StoreUnavailable)) throw e;
  console.error(`registry-mirror: ${e.message}`);
  return 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args).catch(storeUnavailable));
