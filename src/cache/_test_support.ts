// Test helpers for the cache: temp stores, fault-injecting store wrappers, scripted upstreams.

import { equal } from "node:assert/strict";
import { createHash } from "node:crypto";
import { emptyPrefix, RGW_TOOLS, s3Settings } from "../../tests/fixtures/rgw.ts";
import { skipUnless } from "../../tests/fixtures/tools.ts";
import { Cache } from "./cache.ts";
import { FsStore } from "./fs_store.ts";
import type { OpenUpstream } from "./fills.ts";
import { S3Store } from "./s3_store.ts";
import { OCI_MANIFEST } from "../oci/media_types.ts";
import type { ObjectKind, Spool, Store, TagRecord } from "./store.ts";

/** Where a fill test's blob comes from. */
export const ORIGIN = { registry: "docker.io", repository: "library/alpine" };

/** `n` deterministic bytes that differ with `seed`. */
export function patterned(n: number, seed = 1): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(n);
  for (let i = 0; i < n; i++) bytes[i] = (i * 31 + seed * 17 + (i >> 8)) & 0xff;
  return bytes;
}

/** The sha256 digest of `bytes`. */
export function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** A promise with its resolve function. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => resolve = r);
  return { promise, resolve };
}

/**
 * Polls `probe` until it is truthy (an event: a file gone, a fill settled), failing after
 * `timeoutMs`; never used as a fixed delay.
 */
export async function waitFor(
  what: string,
  probe: () => boolean | Promise<boolean>,
  timeoutMs = 5_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** `promise`, or an error naming `what` after `timeoutMs` (a deadline, not a delay). */
export async function within<T>(what: string, promise: Promise<T>, timeoutMs = 5_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

/** A real FsStore in a fresh temp directory, removed on dispose. */
export async function tempStore(): Promise<
  { dir: string; store: FsStore; [Symbol.asyncDispose](): Promise<void> }
> {
  const dir = await Deno.makeTempDir({ prefix: "registry-mirror-cache-test-" });
  const store = await FsStore.open(dir, { clean: true });
  return {
    dir,
    store,
    [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
  };
}

/** A store under test, with a way underneath it to what it stored. */
export interface TempStore {
  /** The cache directory (all of the cache on fs; only the spools on s3). */
  dir: string;
  store: Store;
  /** The stored bytes of an object, read behind the store's back; undefined when absent. */
  raw(kind: ObjectKind, digest: string): Promise<Uint8Array | undefined>;
  /** Replaces the stored bytes of an object behind the store's back. */
  overwrite(kind: ObjectKind, digest: string, bytes: Uint8Array<ArrayBuffer>): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Where a store under test keeps its content: a directory, or a real S3 (Ceph RGW). */
export interface Backend {
  name: "fs" | "s3";
  /** Set when the backend cannot run here (RGW not installed, outside CI). */
  ignore: boolean;
  tempStore(): Promise<TempStore>;
}

const FS_BACKEND: Backend = {
  name: "fs",
  ignore: false,
  async tempStore() {
    const t = await tempStore();
    const path = (kind: ObjectKind, digest: string) =>
      `${t.dir}/${kind === "blob" ? "blobs" : "manifests"}/${digest.replace(":", "/")}`;
    return {
      ...t,
      raw: (kind, digest) => Deno.readFile(path(kind, digest)).catch(() => undefined),
      overwrite: (kind, digest, bytes) => Deno.writeFile(path(kind, digest), bytes),
    };
  },
};

const S3_BACKEND: Backend = {
  name: "s3",
  ...skipUnless(RGW_TOOLS),
  async tempStore() {
    const dir = await Deno.makeTempDir({ prefix: "registry-mirror-s3-test-" });
    const s3 = await s3Settings();
    const store = await S3Store.open({ dir, s3 }, { clean: true });
    const key = (kind: ObjectKind, digest: string) =>
      `${s3.prefix}${kind === "blob" ? "blobs" : "manifests"}/${digest.replace(":", "/")}`;
    return {
      dir,
      store,
      async raw(kind, digest) {
        const response = await store.client.send("GetObject", "GET", key(kind, digest), {
          expect: [200, 404],
        });
        if (response.status === 404) {
          await response.body?.cancel();
          return undefined;
        }
        return new Uint8Array(await response.arrayBuffer());
      },
      async overwrite(kind, digest, body) {
        await (await store.client.send("PutObject", "PUT", key(kind, digest), { body })).body
          ?.cancel();
      },
      async [Symbol.asyncDispose]() {
        await emptyPrefix(s3);
        await Deno.remove(dir, { recursive: true });
      },
    };
  },
};

/** The backends every store and cache test runs on. */
export const BACKENDS: Backend[] = [FS_BACKEND, S3_BACKEND];

/** Registers `fn` as one test per backend, named `name [backend]`. */
export function storeTest(name: string, fn: (backend: Backend) => Promise<void>): void {
  for (const backend of BACKENDS) {
    Deno.test({ name: `${name} [${backend.name}]`, ignore: backend.ignore, fn: () => fn(backend) });
  }
}

/** A Cache over a temp store of `backend`, with an injectable clock; `wrap` adds faults. */
export async function tempCacheOn(
  backend: Backend,
  options: { maxSizeBytes?: number; now?: () => number; wrap?: (store: Store) => Store } = {},
): Promise<TempStore & { cache: Cache }> {
  const temp = await backend.tempStore();
  const store = options.wrap ? options.wrap(temp.store) : temp.store;
  const cache = new Cache(
    store,
    { dir: temp.dir, tagTtlMs: 60_000, maxSizeBytes: options.maxSizeBytes },
    options.now,
  );
  return {
    ...temp,
    store: temp.store,
    cache,
    [Symbol.asyncDispose]: async () => {
      await cache.eviction.close();
      await temp[Symbol.asyncDispose]();
    },
  };
}

/** A Cache over `store` (a temp FsStore unless given), with an injectable clock. */
export async function tempCache(
  options: { maxSizeBytes?: number; now?: () => number; wrap?: (store: FsStore) => Store } = {},
): Promise<
  { dir: string; fs: FsStore; cache: Cache; [Symbol.asyncDispose](): Promise<void> }
> {
  const temp = await tempStore();
  const store = options.wrap ? options.wrap(temp.store) : temp.store;
  const cache = new Cache(
    store,
    { dir: temp.dir, tagTtlMs: 60_000, maxSizeBytes: options.maxSizeBytes },
    options.now,
  );
  return {
    dir: temp.dir,
    fs: temp.store,
    cache,
    [Symbol.asyncDispose]: async () => {
      await cache.eviction.close();
      await temp[Symbol.asyncDispose]();
    },
  };
}

/** `store` with some of its methods replaced; the others still run on the real store. */
export function withFaults(store: Store, faults: Partial<Store>): Store {
  return new Proxy(store, {
    get(target, key) {
      const fault = faults[key as keyof Store];
      if (fault) return fault;
      const value = Reflect.get(target, key, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** An error as the runtime reports a full disk. */
export function enospc(): Error {
  return Object.assign(new Error("No space left on device (os error 28)"), { code: "ENOSPC" });
}

/**
 * A spool whose file takes `limit` bytes (the last write may be short, as a real one is) and then
 * throws ENOSPC; `onFull` is called at the first failed write.
 */
export function fullAfter(spool: Spool, limit: number, onFull?: () => void): Spool {
  const file = spool.file;
  let written = 0;
  const fake = {
    async write(data: Uint8Array): Promise<number> {
      if (written >= limit) {
        onFull?.();
        throw enospc();
      }
      const n = await file.write(data.subarray(0, limit - written));
      written += n;
      return n;
    },
    syncData: () => file.syncData(),
    close: () => file.close(),
  };
  // A fill uses only write, syncData and close of its spool file: the rest is not faked.
  return { path: spool.path, file: fake as unknown as Deno.FsFile };
}

/** A spool whose file counts what it is given and stores nothing (for fills of gigabytes). */
export function discarding(spool: Spool): { spool: Spool; written: () => number } {
  const file = spool.file;
  let written = 0;
  const fake = {
    write(data: Uint8Array): Promise<number> {
      written += data.length;
      return Promise.resolve(data.length);
    },
    syncData: () => file.syncData(),
    close: () => file.close(),
  };
  // A fill uses only write, syncData and close of its spool file: the rest is not faked.
  return {
    spool: { path: spool.path, file: fake as unknown as Deno.FsFile },
    written: () => written,
  };
}

/** What a scripted body does next: send a chunk, fail, or wait for a promise first. */
export type Step = Uint8Array | Error | Promise<unknown>;

/**
 * A body that plays `steps` as it is read (one chunk per read, nothing buffered ahead), then
 * closes. `pulls` counts the chunks taken from it; `cancelled` tells whether it was cancelled.
 */
export function scripted(steps: Step[]): {
  stream: ReadableStream<Uint8Array>;
  pulls: () => number;
  cancelled: () => boolean;
} {
  let at = 0;
  let pulls = 0;
  let cancelled = false;
  const stream = new ReadableStream<Uint8Array>({
    async pull(out) {
      for (;;) {
        const step = steps[at++];
        if (step === undefined) return out.close();
        if (step instanceof Promise) {
          await step;
          continue;
        }
        if (step instanceof Error) return out.error(step);
        pulls++;
        return out.enqueue(step);
      }
    },
    cancel() {
      cancelled = true;
    },
  }, { highWaterMark: 0 });
  return { stream, pulls: () => pulls, cancelled: () => cancelled };
}

/** `bytes` cut into chunks of `size`. */
export function chunks(bytes: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; at += size) out.push(bytes.subarray(at, at + size));
  return out;
}

/** A 200 response with `steps` as its body and a Content-Length of `length`, when given. */
export function ok200(steps: Step[], length?: number): Response {
  const headers: Record<string, string> = length === undefined
    ? {}
    : { "content-length": String(length) };
  return new Response(scripted(steps).stream, { headers });
}

/** An upstream answering each open with `respond`; `opens` lists the offsets asked for. */
export function upstream(
  respond: (offset: number, call: number) => Response | Promise<Response>,
): { open: OpenUpstream; opens: number[] } {
  const opens: number[] = [];
  const open: OpenUpstream = async (offset) => {
    opens.push(offset);
    return await respond(offset, opens.length);
  };
  return { open, opens };
}

/**
 * Reads a stream (or what is left of a reader) to its end or its error: the bytes received after
 * `parts`, and the error if any.
 */
export async function readAll(
  from: ReadableStream<Uint8Array> | ReadableStreamDefaultReader<Uint8Array>,
  parts: Uint8Array[] = [],
): Promise<{ bytes: Uint8Array; error?: unknown }> {
  const reader = from instanceof ReadableStream ? from.getReader() : from;
  let error: unknown;
  try {
    for (;;) {
      const next = await reader.read();
      if (next.done) break;
      parts.push(next.value.slice());
    }
  } catch (e) {
    error = e;
  }
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  return error === undefined ? { bytes } : { bytes, error };
}

/**
 * Asserts that a follower received exactly `expected`, without error (compared by length and
 * digest, so that a failure prints two digests rather than two megabytes).
 */
export function assertBody(
  got: { bytes: Uint8Array; error?: unknown },
  expected: Uint8Array,
): void {
  if (got.error !== undefined) {
    throw new Error(
      `the body failed after ${got.bytes.length} of ${expected.length} bytes: ${got.error}`,
      { cause: got.error },
    );
  }
  equal(got.bytes.length, expected.length, "body length");
  equal(sha256(got.bytes), sha256(expected), "body digest");
}

/** Stores `bytes` as a committed blob through the store's own spool-and-commit path. */
export async function putBlob(store: Store, bytes: Uint8Array): Promise<string> {
  const digest = sha256(bytes);
  const spool = await store.createSpool();
  for (let at = 0; at < bytes.length;) at += await spool.file.write(bytes.subarray(at));
  spool.file.close();
  await store.commitBlob(spool.path, digest);
  return digest;
}

/** True when the store has the blob (opened and closed again). */
export async function hasBlob(store: Store, digest: string): Promise<boolean> {
  const blob = await store.openBlob(digest);
  blob?.close();
  return blob !== undefined;
}

/** Names in the store's tmp/ directory. */
export async function tmpEntries(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const entry of Deno.readDir(`${dir}/tmp`)) names.push(entry.name);
  return names;
}

/** True when `path` exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** A tag record of the store tests. */
export const RECORD: TagRecord = {
  digest: sha256(new TextEncoder().encode("manifest")),
  mediaType: OCI_MANIFEST,
  size: 8,
  checkedAt: 1_700_000_000_000,
};

/** A valid OCI manifest, different for each `seed`. */
export function manifestBytes(seed: string): Uint8Array<ArrayBuffer> {
  const doc = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: {
      mediaType: "application/vnd.oci.image.config.v1+json",
      digest: RECORD.digest,
      size: 8,
    },
    layers: [],
    annotations: { seed },
  };
  return new TextEncoder().encode(JSON.stringify(doc, null, 2)); // newlines inside, on purpose
}
