// Launches CNCF Distribution in proxy mode (the reference pull-through cache) with its own storage.

import { REGISTRY_BINARY } from "../tests/fixtures/registry.ts";
import { freePort } from "../tests/fixtures/tools.ts";
import { cpuSeconds, peakRss, type Spawned, spawnLogged, tailOf, waitHttp } from "./proc.ts";
import type { BucketSettings } from "./rgw.ts";

/** A running cache under test: Distribution's proxy or registry-mirror. */
export interface CacheProcess {
  url: string;
  pid: number;
  /** Peak resident memory since start, in bytes (VmHWM). */
  peakRss(): number;
  /** CPU time used since start (user + system), in seconds. */
  cpuSeconds(): number;
  stop(): Promise<void>;
}

/** The `storage:` driver lines: a directory, or the s3 driver on a bucket under a prefix. */
function storageDriver(storage: string | BucketSettings): string[] {
  if (typeof storage === "string") {
    return ["  filesystem:", `    rootdirectory: ${JSON.stringify(storage)}`];
  }
  return [
    "  s3:",
    `    accesskey: ${JSON.stringify(storage.accessKeyId)}`,
    `    secretkey: ${JSON.stringify(storage.secretAccessKey)}`,
    `    region: ${JSON.stringify(storage.region)}`,
    `    regionendpoint: ${JSON.stringify(storage.endpoint)}`,
    `    bucket: ${JSON.stringify(storage.bucket)}`,
    "    secure: false",
    "    v4auth: true",
    `    rootdirectory: ${JSON.stringify(`/${storage.prefix.replace(/\/+$/, "")}`)}`,
    // Blobs are served through the registry, as the mirror does (no 307 to the bucket).
    "  redirect:",
    "    disable: true",
  ];
}

function proxyConfig(storage: string | BucketSettings, port: number, remoteUrl: string): string {
  return [
    "version: 0.1",
    "log:",
    "  level: warn",
    "  accesslog:",
    "    disabled: true",
    "storage:",
    ...storageDriver(storage),
    "  cache:",
    "    blobdescriptor: inmemory",
    "  delete:",
    "    enabled: true",
    "http:",
    `  addr: 127.0.0.1:${port}`,
    `  secret: ${crypto.randomUUID()}`,
    "proxy:",
    `  remoteurl: ${remoteUrl}`,
    "",
  ].join("\n");
}

/**
 * Starts `docker-registry serve` in proxy mode in front of `remoteUrl`, storing under `dir/data`
 * (empty or not) or, with `s3`, in that bucket under its prefix, and waits for `GET /v2/` to
 * answer.
 */
export async function startDistributionProxy(
  dir: string,
  remoteUrl: string,
  s3?: BucketSettings,
): Promise<CacheProcess> {
  const port = freePort();
  await Deno.mkdir(`${dir}/data`, { recursive: true });
  const configPath = `${dir}/config.yml`;
  await Deno.writeTextFile(configPath, proxyConfig(s3 ?? `${dir}/data`, port, remoteUrl));
  const process: Spawned = spawnLogged(REGISTRY_BINARY, ["serve", configPath], {
    logPath: `${dir}/registry.log`,
    // The AWS SDK would load a CA bundle named here, and panics on Distribution's own transport.
    env: s3 ? { AWS_CA_BUNDLE: "" } : undefined,
  });
  const url = `http://127.0.0.1:${port}`;
  try {
    await waitHttp(`${url}/v2/`, { alive: () => !process.exited() });
  } catch (e) {
    await process.stop();
    const log = await tailOf(process.logPath, 5);
    throw new Error(`Distribution proxy did not start: ${(e as Error).message}\n${log}`);
  }
  return {
    url,
    pid: process.pid,
    peakRss: () => peakRss(process.pid),
    cpuSeconds: () => cpuSeconds(process.pid),
    stop: () => process.stop(),
  };
}
