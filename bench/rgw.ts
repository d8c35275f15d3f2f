// The benchmark's S3: a Ceph RGW booted by scripts/rgw.sh (or one already running), prefixes of its
// bucket for the caches, waiting for an object to appear, and curl's own PUT and GET as the limit.

import type { S3Config } from "../src/config.ts";
import { S3Client } from "../src/s3/client.ts";
import { emptyPrefix, freePorts, type Rgw } from "../tests/fixtures/rgw.ts";
import { run, sleep } from "./proc.ts";

export type { Rgw };

const SCRIPT = new URL("../scripts/rgw.sh", import.meta.url).pathname;

/** Where an S3 bucket is, the prefix a cache keeps its objects under, and the keys to it. */
export interface BucketSettings {
  endpoint: string;
  region: string;
  bucket: string;
  /** Ends with "/". */
  prefix: string;
  accessKeyId: string;
  secretAccessKey: string;
}

/** An RGW in use by the benchmark; `stop` ends it when the benchmark booted it. */
export interface BenchRgw extends Rgw {
  /** "16.2.15" */
  version: string;
  stop(): Promise<void>;
}

async function rgwVersion(): Promise<string> {
  const out = await run("radosgw", ["--version"], 10_000).catch(() => undefined);
  return /ceph version (\S+)/.exec(out?.stdout ?? "")?.[1] ?? "?";
}

/**
 * The RGW `given` (left running), or one booted in `dir` by scripts/rgw.sh (about 20 s), stopped
 * by `stop()` or, should the benchmark die first, by the script's watcher of this process.
 */
export async function useRgw(dir: string, given?: Rgw): Promise<BenchRgw> {
  const version = await rgwVersion();
  if (given) return { ...given, version, stop: async () => {} };
  const out = await new Deno.Command("bash", {
    args: [SCRIPT, "start", dir, String(freePorts(10)), String(Deno.pid)],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `scripts/rgw.sh start failed (logs in ${dir}/log): ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  const rgw: Rgw = JSON.parse(await Deno.readTextFile(`${dir}/env.json`));
  return {
    ...rgw,
    version,
    stop: async () => {
      await new Deno.Command("bash", { args: [SCRIPT, "stop", dir], stdin: "null" }).output();
    },
  };
}

/** Reads the env.json of an RGW started with `scripts/rgw.sh start DIR ...` (for --rgw-dir). */
export function rgwAt(dir: string): Rgw {
  return JSON.parse(Deno.readTextFileSync(`${dir}/env.json`));
}

/** A new, empty prefix of the RGW's bucket, named after `label`. */
export function freshPrefix(rgw: Rgw, label: string): BucketSettings {
  const { endpoint, region, bucket, accessKeyId, secretAccessKey } = rgw;
  const prefix = `bench-${label}-${crypto.randomUUID().slice(0, 8)}/`;
  return { endpoint, region, bucket, prefix, accessKeyId, secretAccessKey };
}

function s3Config(bucket: BucketSettings): S3Config {
  return { ...bucket, endpoint: new URL(bucket.endpoint), forcePathStyle: true, redirect: false };
}

/** Deletes every object under the prefix (RGW reclaims the space hours later, in its own GC). */
export function emptyBucket(bucket: BucketSettings): Promise<void> {
  return emptyPrefix(s3Config(bucket));
}

/**
 * Polls for `key` (under the prefix) every 100 ms (few requests: the RGW's CPU is measured too)
 * until a HEAD finds it; throws after `timeoutMs`. Returns performance.now() when it was seen.
 */
export async function waitForObject(
  bucket: BucketSettings,
  key: string,
  timeoutMs: number,
): Promise<number> {
  const client = new S3Client(s3Config(bucket));
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const response = await client.send("HeadObject", "HEAD", bucket.prefix + key, {
      expect: [200, 404],
    });
    await response.body?.cancel();
    if (response.status === 200) return performance.now();
    if (performance.now() > deadline) {
      throw new Error(`${bucket.prefix}${key} not in the bucket after ${timeoutMs} ms`);
    }
    await sleep(100);
  }
}

function curlS3(bucket: BucketSettings): string[] {
  return [
    "-s",
    "--aws-sigv4",
    `aws:amz:${bucket.region}:s3`,
    "--user",
    `${bucket.accessKeyId}:${bucket.secretAccessKey}`,
    "-H",
    "x-amz-content-sha256: UNSIGNED-PAYLOAD",
    "-w",
    "%{http_code} %{time_total}",
  ];
}

function objectUrl(bucket: BucketSettings, key: string): string {
  return `${bucket.endpoint}/${bucket.bucket}/${bucket.prefix}${key}`;
}

async function curlRate(args: string[], size: number, what: string): Promise<number> {
  const result = await run("curl", args, 600_000);
  const [status, seconds] = result.stdout.trim().split(" ").slice(-2).map(Number);
  if (status !== 200) throw new Error(`${what}: status ${status} ${result.stderr}`);
  return size / 1e6 / seconds;
}

/**
 * The bucket's own speed for one object, with curl: PUT of `file` (`size` bytes, one request with
 * a Content-Length), then GET of it. MB/s (10^6) each.
 */
export async function directRates(
  bucket: BucketSettings,
  file: string,
  size: number,
): Promise<{ put: number; get: number }> {
  const url = objectUrl(bucket, "direct");
  const put = await curlRate(
    [...curlS3(bucket), "-o", "/dev/null", "-T", file, url],
    size,
    `PUT ${url}`,
  );
  const get = await curlRate([...curlS3(bucket), "-o", "/dev/null", url], size, `GET ${url}`);
  return { put, get };
}
