// Launches CNCF Distribution in proxy mode (the reference pull-through cache) with its own storage.

import { REGISTRY_BINARY } from "../tests/fixtures/registry.ts";
import { freePort } from "../tests/fixtures/tools.ts";
import { cpuSeconds, peakRss, type Spawned, spawnLogged, tailOf, waitHttp } from "./proc.ts";

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

function proxyConfig(storage: string, port: number, remoteUrl: string): string {
  return [
    "version: 0.1",
    "log:",
    "  level: warn",
    "  accesslog:",
    "    disabled: true",
    "storage:",
    "  filesystem:",
    `    rootdirectory: ${JSON.stringify(storage)}`,
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
 * (empty or not), and waits for `GET /v2/` to answer.
 */
export async function startDistributionProxy(
  dir: string,
  remoteUrl: string,
): Promise<CacheProcess> {
  const port = freePort();
  await Deno.mkdir(`${dir}/data`, { recursive: true });
  const configPath = `${dir}/config.yml`;
  await Deno.writeTextFile(configPath, proxyConfig(`${dir}/data`, port, remoteUrl));
  const process: Spawned = spawnLogged(REGISTRY_BINARY, ["serve", configPath], {
    logPath: `${dir}/registry.log`,
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
