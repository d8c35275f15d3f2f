// registry-mirror: parse the command line and config, wire the dependencies, start Deno.serve.

import { existsSync } from "node:fs";
import process from "node:process";
import { parseArgs } from "node:util";
import meta from "./deno.json" with { type: "json" };
import { createApp } from "./src/app.ts";
import { Cache } from "./src/cache/cache.ts";
import { type Config, ConfigError, loadConfig } from "./src/config.ts";
import { log, setupLogging } from "./src/log.ts";
import { MirrorMetrics } from "./src/metrics.ts";
import { UpstreamClient } from "./src/upstream/client.ts";

const USAGE = `registry-mirror ${meta.version}: a pull-through cache for container registries

usage: registry-mirror [serve] [--config FILE]
       registry-mirror healthcheck [--config FILE]

  --config FILE   JSON config file (or env MIRROR_CONFIG); without one, nine registries are served
env: MIRROR_LISTEN, MIRROR_CONFIG, MIRROR_LOG_LEVEL, DOCKER_HUB_USERNAME, DOCKER_HUB_PASSWORD`;

async function main(args: string[]): Promise<number> {
  if (existsSync(".env")) process.loadEnvFile(".env");
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { config: { type: "string" }, help: { type: "boolean", short: "h" } },
  });
  const command = positionals[0] ?? "serve";
  if (values.help || !["serve", "healthcheck"].includes(command) || positionals.length > 1) {
    console.log(USAGE);
    return values.help ? 0 : 2;
  }
  let config: Config;
  try {
    setupLogging(Deno.env.get("MIRROR_LOG_LEVEL"));
    config = loadConfig(values.config ?? Deno.env.get("MIRROR_CONFIG"), {
      env: Deno.env.toObject(),
      readTextFile: Deno.readTextFileSync,
    });
  } catch (e) {
    if (!(e instanceof ConfigError) && !(e instanceof Error)) throw e;
    console.error(`registry-mirror: ${e.message}`);
    return 1;
  }
  return command === "healthcheck" ? await healthcheck(config) : await serve(config);
}

async function serve(config: Config): Promise<number> {
  const cache = await Cache.open(config.cache);
  const metrics = new MirrorMetrics();
  const userAgent = `registry-mirror/${meta.version}`;
  const clients = new Map(
    [...config.registries.values()].map((r) => [
      r.name,
      new UpstreamClient(r, { ...config.upstream, userAgent, metrics }),
    ]),
  );
  metrics.collect(() => {
    const { objects, bytes, evictions } = cache.eviction.stats();
    metrics.cacheObjects.set({}, objects);
    metrics.cacheSize.set({}, bytes);
    if (config.cache.maxSizeBytes) metrics.cacheMaxSize.set({}, config.cache.maxSizeBytes);
    metrics.evictions.set({}, evictions);
    const fills = cache.fills.stats;
    metrics.fillsInFlight.set({}, cache.fills.active);
    metrics.coalesced.set({}, fills.coalesced);
    metrics.fillResumes.set({}, fills.resumes);
    metrics.digestMismatches.set({}, fills.digestMismatches);
    for (const [name, client] of clients) {
      metrics.tokenFetches.set({ registry: name }, client.auth.tokenFetches);
    }
  });
  const withCredentials = [...config.registries.values()].filter((r) => r.password !== undefined);
  if (withCredentials.length > 0) {
    log.warn(
      "upstream credentials are configured for {registries} and clients are not authenticated: " +
        "every client that can reach this mirror can pull whatever those credentials can read",
      { registries: withCredentials.map((r) => r.name) },
    );
  }
  const server = Deno.serve({
    hostname: config.listen.hostname,
    port: config.listen.port,
    onListen: ({ hostname, port }) => {
      log.info("listening on {hostname}:{port}", {
        hostname,
        port,
        registries: [...config.registries.keys()],
      });
    },
    onError: (e) => {
      log.error("unhandled error: {error}", { error: (e as Error)?.stack ?? String(e) });
      return new Response("internal error", { status: 500 });
    },
  }, createApp({ config, clients, cache, metrics }));
  const stop = () => {
    log.info("shutting down");
    server.shutdown();
  };
  Deno.addSignalListener("SIGTERM", stop);
  Deno.addSignalListener("SIGINT", stop);
  await server.finished;
  await cache.eviction.close();
  return 0;
}

/** Exit 0 when the mirror on this machine answers `GET /v2/`, for a shell-less HEALTHCHECK. */
async function healthcheck(config: Config): Promise<number> {
  const host = ["0.0.0.0", "::"].includes(config.listen.hostname)
    ? "127.0.0.1"
    : config.listen.hostname;
  try {
    const response = await fetch(`http://${host}:${config.listen.port}/v2/`, {
      signal: AbortSignal.timeout(5000),
    });
    await response.body?.cancel();
    return response.ok ? 0 : 1;
  } catch {
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
