// Test helpers: the real app over a temp-dir cache and an injected clock, whose one upstream is a
// fake registry answering from memory as CNCF Distribution does, recording every request.

import { createApp } from "../app.ts";
import { Cache } from "../cache/cache.ts";
import { FsStore } from "../cache/fs_store.ts";
import type { ListedTag, ObjectInfo, ObjectKind, Spool, Store, TagRecord } from "../cache/store.ts";
import { buildConfig } from "../config.ts";
import { MirrorMetrics } from "../metrics.ts";
import { digestOf } from "../oci/digest.ts";
import {
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
  OCI_INDEX,
  OCI_MANIFEST,
} from "../oci/media_types.ts";
import { Limits } from "../security/limits.ts";
import { Policy } from "../security/policy.ts";
import { Upstreams } from "../upstream/upstreams.ts";

/** The one registry the test mirror serves; requests name it after `/v2/`. */
export const REGISTRY = "reg.test";

/** A request the fake upstream received. */
export interface Seen {
  method: string;
  path: string;
  accept: string | null;
}

const encoder = new TextEncoder();

/** JSON bytes. */
export function json(value: unknown): Uint8Array<ArrayBuffer> {
  return encoder.encode(JSON.stringify(value));
}

/** An image manifest of `mediaType` (Docker v2 or OCI), distinct per `seed`. */
export function imageManifest(mediaType: string, seed: string): Uint8Array<ArrayBuffer> {
  const docker = mediaType === DOCKER_MANIFEST;
  return json({
    schemaVersion: 2,
    mediaType,
    config: {
      mediaType: docker
        ? "application/vnd.docker.container.image.v1+json"
        : "application/vnd.oci.image.config.v1+json",
      digest: digestOf(encoder.encode(`config ${seed}`)),
      size: 100,
    },
    layers: [{
      mediaType: docker
        ? "application/vnd.docker.image.rootfs.diff.tar.gzip"
        : "application/vnd.oci.image.layer.v1.tar+gzip",
      digest: digestOf(encoder.encode(`layer ${seed}`)),
      size: 1000,
    }],
  });
}

/** An index (OCI index or Docker manifest list) of `children`, each for os/architecture. */
export function indexManifest(
  mediaType: string,
  children: { bytes: Uint8Array; mediaType: string; platform: string }[],
): Uint8Array<ArrayBuffer> {
  return json({
    schemaVersion: 2,
    mediaType,
    manifests: children.map((c) => {
      const [os, architecture] = c.platform.split("/");
      return {
        mediaType: c.mediaType,
        digest: digestOf(c.bytes),
        size: c.bytes.byteLength,
        platform: { os, architecture },
      };
    }),
  });
}

/** The `mediaType` a manifest declares, if it is JSON that declares one. */
function declaredType(bytes: Uint8Array): string | undefined {
  try {
    const type = JSON.parse(new TextDecoder().decode(bytes))?.mediaType;
    return typeof type === "string" ? type : undefined;
  } catch {
    return undefined;
  }
}

/**
 * An upstream registry in memory. It answers manifest GET/HEAD as Distribution's
 * registry/handlers/manifests.go does: an OCI manifest or index only to an Accept that takes it;
 * a Docker manifest list asked by tag without the list type in Accept becomes its linux/amd64 child.
 */
export class FakeRegistry {
  readonly requests: Seen[] = [];
  readonly #tags = new Map<string, Map<string, string>>();
  readonly #manifests = new Map<string, { bytes: Uint8Array<ArrayBuffer>; contentType?: string }>();
  /** Fault injection: a status to answer instead of the registry (a JSON error body). */
  fault?: (request: Seen) => number | undefined;
  /** Holds a request until the returned promise settles (to make requests overlap). */
  hold?: (request: Seen) => Promise<void> | undefined;

  /** Stores manifest bytes under their digest (or `digest`, to serve wrong bytes); the digest. */
  put(bytes: Uint8Array<ArrayBuffer>, options: { contentType?: string; digest?: string } = {}) {
    const digest = options.digest ?? digestOf(bytes);
    this.#manifests.set(digest, { bytes, contentType: options.contentType });
    return digest;
  }

  /** Points `repository:tag` at `digest`. */
  tag(repository: string, tag: string, digest: string): void {
    if (!this.#tags.has(repository)) this.#tags.set(repository, new Map());
    this.#tags.get(repository)!.set(tag, digest);
  }

  untag(repository: string, tag: string): void {
    this.#tags.get(repository)?.delete(tag);
  }

  /** The `fetch` given to the UpstreamClient. */
  readonly fetch = async (input: URL | RequestInfo, init?: RequestInit): Promise<Response> => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    const method = init?.method ?? "GET";
    const seen = { method, path: url.pathname, accept: new Headers(init?.headers).get("accept") };
    this.requests.push(seen);
    await this.hold?.(seen);
    const status = this.fault?.(seen);
    if (status !== undefined) return error(method, status, "UNAVAILABLE");
    return this.#answer(method, url.pathname, seen.accept);
  };

  #answer(method: string, path: string, accept: string | null): Response {
    const m = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(path);
    if (!m) return error(method, 404, "NAME_UNKNOWN");
    const [, repository, reference] = m;
    const byTag = !reference.includes(":");
    let digest = byTag ? this.#tags.get(repository)?.get(reference) : reference;
    let stored = digest === undefined ? undefined : this.#manifests.get(digest);
    if (!stored) return error(method, 404, "MANIFEST_UNKNOWN");
    const supports = new Set((accept ?? "").split(",").map((v) => v.split(";")[0].trim()));
    const type = declaredType(stored.bytes);
    if ((type === OCI_MANIFEST || type === OCI_INDEX) && !supports.has(type)) {
      return error(method, 404, "MANIFEST_UNKNOWN");
    }
    if (byTag && type === DOCKER_MANIFEST_LIST && !supports.has(DOCKER_MANIFEST_LIST)) {
      const list = JSON.parse(new TextDecoder().decode(stored.bytes));
      const child = list.manifests.find((d: { platform: { os: string; architecture: string } }) =>
        d.platform.os === "linux" && d.platform.architecture === "amd64"
      );
      digest = child?.digest;
      stored = digest === undefined ? undefined : this.#manifests.get(digest);
      if (!stored) return error(method, 404, "MANIFEST_UNKNOWN");
      if (declaredType(stored.bytes) === DOCKER_MANIFEST && !supports.has(DOCKER_MANIFEST)) {
        return error(method, 400, "MANIFEST_INVALID");
      }
    }
    const headers = {
      "content-type": stored.contentType ?? declaredType(stored.bytes) ?? "application/json",
      "content-length": String(stored.bytes.byteLength),
      "docker-content-digest": digest!,
      etag: `"${digest}"`,
    };
    return new Response(method === "HEAD" ? null : stored.bytes, { headers });
  }
}

function error(method: string, status: number, code: string): Response {
  const body = JSON.stringify({ errors: [{ code, message: `fake: ${code}`, detail: null }] });
  return new Response(method === "HEAD" ? null : body, {
    status,
    headers: { "content-type": "application/json" },
  });
}

/**
 * A Store over FsStore that counts completed calls (`getTag`, `getManifest <digest>`) so a test can
 * wait for them, and whose manifest and tag writes fail while `failWrites` is set.
 */
export class WatchedStore implements Store {
  readonly inner: Store;
  failWrites = false;
  readonly #calls = new Map<string, number>();
  #waiters: { call: string; n: number; resolve: () => void }[] = [];

  constructor(inner: Store) {
    this.inner = inner;
  }

  get slowCommit(): boolean {
    return this.inner.slowCommit;
  }

  /** How many times `call` has completed. */
  count(call: string): number {
    return this.#calls.get(call) ?? 0;
  }

  /** Settles once `call` has completed `n` times. */
  calls(call: string, n: number): Promise<void> {
    if (this.count(call) >= n) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ call, n, resolve }));
  }

  #done(call: string): void {
    const count = (this.#calls.get(call) ?? 0) + 1;
    this.#calls.set(call, count);
    this.#waiters = this.#waiters.filter((w) => {
      if (w.call !== call || w.n > count) return true;
      w.resolve();
      return false;
    });
  }

  #refuse(what: string): void {
    if (this.failWrites) throw new Error(`${what}: No space left on device (os error 28)`);
  }

  async getManifest(digest: string): Promise<Uint8Array<ArrayBuffer> | undefined> {
    const bytes = await this.inner.getManifest(digest);
    this.#done(`getManifest ${digest}`);
    return bytes;
  }
  async putManifest(digest: string, bytes: Uint8Array): Promise<void> {
    this.#refuse(`manifest ${digest}`);
    await this.inner.putManifest(digest, bytes);
  }
  async getTag(registry: string, repository: string, tag: string) {
    const record = await this.inner.getTag(registry, repository, tag);
    this.#done("getTag");
    return record;
  }
  async putTag(registry: string, repository: string, tag: string, record: TagRecord) {
    this.#refuse(`tag ${tag}`);
    await this.inner.putTag(registry, repository, tag, record);
  }
  openBlob(digest: string) {
    return this.inner.openBlob(digest);
  }
  createSpool(): Promise<Spool> {
    return this.inner.createSpool();
  }
  commitBlob(spoolPath: string, digest: string): Promise<void> {
    return this.inner.commitBlob(spoolPath, digest);
  }
  openFill(spoolPath: string, digest: string): Promise<Deno.FsFile> {
    return this.inner.openFill(spoolPath, digest);
  }
  delete(kind: ObjectKind, digest: string): Promise<void> {
    return this.inner.delete(kind, digest);
  }
  list(): AsyncIterable<ObjectInfo> {
    return this.inner.list();
  }
  touch(kind: ObjectKind, digest: string, atMs: number): Promise<void> {
    return this.inner.touch(kind, digest, atMs);
  }
  deleteTag(registry: string, repository: string, tag: string): Promise<void> {
    return this.inner.deleteTag(registry, repository, tag);
  }
  listTags(): AsyncIterable<ListedTag> {
    return this.inner.listTags();
  }
  hasLink(registry: string, repository: string, digest: string): Promise<boolean> {
    return this.inner.hasLink(registry, repository, digest);
  }
  addLink(registry: string, repository: string, digest: string): Promise<void> {
    return this.inner.addLink(registry, repository, digest);
  }
  probeWrite(): Promise<void> {
    return this.inner.probeWrite();
  }
}

/** A client's answer, read whole. */
export interface Pulled {
  status: number;
  headers: Headers;
  body: Uint8Array;
  digest: string | null;
  cache: string | null;
  /** The OCI error code of an error body. */
  code?: string;
}

/**
 * The real app (createApp) serving REGISTRY from a FakeRegistry, with a real Cache over a
 * WatchedStore over FsStore in a temp dir, and a clock the test advances. Upstream retries are 0
 * so a failing upstream answers at once.
 */
export async function testMirror() {
  const dir = await Deno.makeTempDir({ prefix: "manifest-test-" });
  const config = buildConfig({
    registries: { [REGISTRY]: { upstream: `https://${REGISTRY}` } },
    cache: { dir, tagTtl: "5m" },
    upstream: { retries: 0 },
  }, { env: {}, readTextFile: () => "" });
  let time = 1_700_000_000_000;
  const now = () => time;
  const upstream = new FakeRegistry();
  const client = new Upstreams(config.registries.get(REGISTRY)!, {
    ...config.upstream,
    userAgent: "manifest-test",
    fetch: upstream.fetch as typeof fetch,
  });
  const store = new WatchedStore(await FsStore.open(dir, { clean: true }));
  const cache = new Cache(store, config.cache, now);
  const app = createApp({
    config,
    clients: new Map([[REGISTRY, client]]),
    cache,
    metrics: new MirrorMetrics(),
    policy: new Policy(config.policy),
    limits: new Limits(config.limits, now),
    now,
  });
  return {
    upstream,
    store,
    cache,
    advance(ms: number) {
      time += ms;
    },
    /** GET or HEAD of `/v2/reg.test/<repository>/manifests/<reference>`; no `accept`: no header. */
    async pull(
      reference: string,
      options: { method?: "GET" | "HEAD"; accept?: string; repository?: string } = {},
    ): Promise<Pulled> {
      const path = `/v2/${REGISTRY}/${options.repository ?? "app"}/manifests/${reference}`;
      const response = await app(
        new Request(`http://mirror.test${path}`, {
          method: options.method ?? "GET",
          headers: options.accept === undefined ? {} : { accept: options.accept },
        }),
      );
      const body = new Uint8Array(await response.arrayBuffer());
      const pulled: Pulled = {
        status: response.status,
        headers: response.headers,
        body,
        digest: response.headers.get("docker-content-digest"),
        cache: response.headers.get("x-cache"),
      };
      if (response.status >= 400 && body.byteLength > 0) {
        pulled.code = JSON.parse(new TextDecoder().decode(body)).errors?.[0]?.code;
      }
      return pulled;
    },
    async [Symbol.asyncDispose]() {
      await cache.eviction.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}
