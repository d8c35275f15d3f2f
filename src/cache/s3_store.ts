// The S3 Store: blobs, manifests, tag records and links as objects in a bucket; the cache
// directory holds only the spools of fills in flight. Blobs reach their final key only once S3
// itself has checked their bytes against the digest.

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import type { S3Config } from "../config.ts";
import { log } from "../log.ts";
import { digestOf } from "../oci/digest.ts";
import { isValidDigest } from "../oci/names.ts";
import { RegistryError } from "../oci/errors.ts";
import { checkBucket, S3Client, S3Error } from "../s3/client.ts";
import { listObjects, mapLimit } from "../s3/list.ts";
import { type MultipartOptions, putFileMultipart } from "../s3/multipart.ts";
import { openedS3Blob } from "./s3_blob.ts";
import { KINDS } from "./store.ts";
import type {
  ListedTag,
  ObjectInfo,
  ObjectKind,
  OpenedBlob,
  Spool,
  Store,
  TagRecord,
} from "./store.ts";

/** The largest object S3 takes in one PUT (5 GiB); bigger blobs go up in parts. */
const MAX_SINGLE_PUT = 5 * 1024 ** 3;
/** Parts of 16 MiB (larger for blobs over 156 GiB: S3 takes 10,000 parts), two in flight. */
const MULTIPART: MultipartOptions = { partSize: 16 * 1024 ** 2, inFlight: 2 };
const MAX_PARTS = 10_000;
/** Tag records read at once when listing them. */
const READS_IN_FLIGHT = 8;
/**
 * How long a presigned blob URL works: long enough for a client to follow the redirect (S3 checks
 * the expiry when a GET starts, so a long download is not cut), short since anyone may use it.
 */
const PRESIGNED_SECONDS = 300;
/** Bytes written (and fsynced) to the spool directory to tell whether it takes writes. */
const PROBE_BYTES = 64 * 1024;

/** How the store is opened. */
export interface S3StoreOptions {
  /** Remove what a crash left among the spools (only the serving process may). */
  clean: boolean;
  /** Blobs above this size go up in parts (default: 5 GiB, the single-PUT limit). */
  multipartAbove?: number;
  multipart?: MultipartOptions;
}

/**
 * Keys under the configured prefix: `blobs/<alg>/<hex>`, `manifests/<alg>/<hex>` (exact bytes),
 * `tags/<registry>/<repository>/<tag>` (a JSON record naming its repository and tag),
 * `links/<registry>/<repository>/<alg>-<hex>` (empty), `access/<blobs|manifests>/<alg>/<hex>`
 * (rewritten at each access persisted: its Last-Modified is the access time; the body holds the time
 * in ms as text, for earlier versions) and `probes/<uuid>` (readiness checks).
 * Repository names and tags are safe in keys as they are (their grammar allows [a-z0-9._/-]).
 */
export class S3Store implements Store {
  readonly client: S3Client;
  /** A commit uploads the blob: clients get their last byte once it is verified. */
  readonly slowCommit = true;
  /** Where the spools of fills in flight are written. */
  readonly spoolDir: string;
  readonly #prefix: string;
  readonly #multipartAbove: number;
  readonly #multipart: MultipartOptions;

  private constructor(client: S3Client, prefix: string, spoolDir: string, options: S3StoreOptions) {
    this.client = client;
    this.#prefix = prefix;
    this.spoolDir = spoolDir;
    this.#multipartAbove = options.multipartAbove ?? MAX_SINGLE_PUT;
    this.#multipart = options.multipart ?? MULTIPART;
  }

  /**
   * Opens the store on the bucket, checking that it exists and takes these credentials (the
   * error says which is wrong), with spools under `dir/tmp`.
   */
  static async open(
    settings: { dir: string; s3: S3Config },
    options: S3StoreOptions,
  ): Promise<S3Store> {
    const spoolDir = `${settings.dir}/tmp`;
    if (options.clean) await Deno.remove(spoolDir, { recursive: true }).catch(() => {});
    await Deno.mkdir(spoolDir, { recursive: true });
    const client = new S3Client(settings.s3);
    await checkBucket(client, settings.s3.prefix);
    return new S3Store(client, settings.s3.prefix, spoolDir, options);
  }

  #key(kind: ObjectKind, digest: string): string {
    return `${this.#prefix}${KINDS[kind]}/${digest.replace(":", "/")}`;
  }

  #accessKey(kind: ObjectKind, digest: string): string {
    return `${this.#prefix}access/${KINDS[kind]}/${digest.replace(":", "/")}`;
  }

  #tagKey(registry: string, repository: string, tag: string): string {
    return `${this.#prefix}tags/${registry}/${repository}/${tag}`;
  }

  #linkKey(registry: string, repository: string, digest: string): string {
    return `${this.#prefix}links/${registry}/${repository}/${digest.replace(":", "-")}`;
  }

  async openBlob(digest: string): Promise<OpenedBlob | undefined> {
    const key = this.#key("blob", digest);
    const size = await available(this.#storedSize(key));
    if (size === undefined) return undefined;
    const blob = openedS3Blob(this.client, key, size);
    return { ...blob, stream: (start, end) => available(blob.stream(start, end)) };
  }

  /** The size of the object `key`, or undefined when there is none. */
  async #storedSize(key: string): Promise<number | undefined> {
    const head = await this.client.send("HeadObject", "HEAD", key, { expect: [200, 404] });
    await head.body?.cancel();
    return head.status === 404 ? undefined : Number(head.headers.get("content-length"));
  }

  /**
   * A URL where a client GETs the blob itself for the next `expiresSeconds`: a credential, never
   * logged.
   */
  presignBlob(digest: string, expiresSeconds = PRESIGNED_SECONDS): Promise<string> {
    return this.client.presign(this.#key("blob", digest), expiresSeconds);
  }

  async createSpool(): Promise<Spool> {
    const path = `${this.spoolDir}/${crypto.randomUUID()}`;
    return { path, file: await Deno.open(path, { write: true, createNew: true }) };
  }

  /**
   * Uploads the spool under the blob's key (S3 checks the payload's sha256), then removes it. A
   * blob another replica committed meanwhile (same digest, same size) is not uploaded again.
   */
  async commitBlob(spoolPath: string, digest: string): Promise<void> {
    const key = this.#key("blob", digest);
    const { size } = await Deno.stat(spoolPath);
    if (await this.#storedSize(key) === size) {
      log.debug("{digest} is in the bucket already (another replica committed it): kept as is", {
        digest,
      });
      await Deno.remove(spoolPath);
      return;
    }
    if (size > this.#multipartAbove) {
      const { partSize, inFlight } = this.#multipart;
      await putFileMultipart(this.client, key, { path: spoolPath, size, digest }, {
        partSize: Math.max(partSize, Math.ceil(size / MAX_PARTS)),
        inFlight,
      });
    } else {
      await this.client.putFile(key, spoolPath, size, await payloadSha256(spoolPath, digest));
    }
    await Deno.remove(spoolPath);
  }

  async openFill(spoolPath: string, digest: string): Promise<Deno.FsFile> {
    try {
      return await Deno.open(spoolPath);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      return await this.#download(digest); // committed and removed meanwhile
    }
  }

  /** A local copy of a committed blob, already unlinked: it lives as long as the file is open. */
  async #download(digest: string): Promise<Deno.FsFile> {
    const path = `${this.spoolDir}/${crypto.randomUUID()}`;
    try {
      const response = await this.client.send("GetObject", "GET", this.#key("blob", digest));
      const out = await Deno.open(path, { write: true, createNew: true });
      await response.body!.pipeTo(out.writable);
      return await Deno.open(path);
    } finally {
      await Deno.remove(path).catch(() => {});
    }
  }

  async getManifest(digest: string): Promise<Uint8Array<ArrayBuffer> | undefined> {
    const key = this.#key("manifest", digest);
    const response = await available(
      this.client.send("GetObject", "GET", key, { expect: [200, 404] }),
    );
    if (response.status === 404) {
      await response.body?.cancel();
      return undefined;
    }
    const data = new Uint8Array(await available(response.arrayBuffer()));
    if (digestOf(data, digest) === digest) return data;
    log.warn("cached manifest {digest} does not match its digest: removed", { digest });
    await this.delete("manifest", digest);
    return undefined;
  }

  async putManifest(digest: string, bytes: Uint8Array): Promise<void> {
    await this.#put("PutObject", this.#key("manifest", digest), bytes.slice());
  }

  async delete(kind: ObjectKind, digest: string): Promise<void> {
    await this.#delete(this.#key(kind, digest));
    await this.#delete(this.#accessKey(kind, digest));
  }

  async *list(): AsyncIterable<ObjectInfo> {
    const accessed = await this.#accessTimes();
    for (const kind of ["blob", "manifest"] as const) {
      const root = `${this.#prefix}${KINDS[kind]}/`;
      for await (const { key, size, lastModifiedMs } of listObjects(this.client, root)) {
        const digest = key.slice(root.length).replace("/", ":");
        if (!isValidDigest(digest)) {
          skipped(key);
          continue;
        }
        // Used no earlier than stored: an access object may outlive its object (a replica's touch
        // landing after an eviction), and must not make the object stored again look old.
        const accessedMs = Math.max(accessed.get(`${kind}:${digest}`) ?? 0, lastModifiedMs);
        yield { kind, digest, size, accessedMs };
      }
    }
  }

  /** Bytes of every blob and manifest, from listings only. */
  async size(): Promise<number> {
    let bytes = 0;
    for (const kind of ["blob", "manifest"] as const) {
      for await (const { size } of listObjects(this.client, `${this.#prefix}${KINDS[kind]}/`)) {
        bytes += size;
      }
    }
    return bytes;
  }

  /**
   * When each object was last used, by `kind:digest`: the time its access object last reached the
   * bucket (`touch`, batched by the caller: up to a minute after the use), on the bucket's clock,
   * read from the listing alone. Reading each access object's body instead took one GET per object
   * (18 s for 3000 objects on the test RGW).
   */
  async #accessTimes(): Promise<Map<string, number>> {
    const root = `${this.#prefix}access/`;
    const accessed = new Map<string, number>();
    for await (const { key, lastModifiedMs } of listObjects(this.client, root)) {
      const [kind, alg, hex] = key.slice(root.length).split("/");
      if (lastModifiedMs > 0) {
        accessed.set(`${kind === "blobs" ? "blob" : "manifest"}:${alg}:${hex}`, lastModifiedMs);
      }
    }
    return accessed;
  }

  /**
   * Best effort, as on the filesystem: a lost access time only makes eviction less exact. The time
   * `list()` gives is when this reached the bucket; the body still holds `atMs` for replicas of
   * earlier versions, which read it.
   */
  async touch(kind: ObjectKind, digest: string, atMs: number): Promise<void> {
    await this.#put("PutObject", this.#accessKey(kind, digest), String(atMs)).catch(() => {});
  }

  async getTag(registry: string, repository: string, tag: string): Promise<TagRecord | undefined> {
    const text = await available(this.#getText(this.#tagKey(registry, repository, tag)));
    return text === undefined ? undefined : parseTag(text)?.record;
  }

  async putTag(registry: string, repository: string, tag: string, record: TagRecord) {
    const data = JSON.stringify({ repository, tag, ...record });
    await this.#put("PutObject", this.#tagKey(registry, repository, tag), data);
  }

  async deleteTag(registry: string, repository: string, tag: string): Promise<void> {
    await available(this.#delete(this.#tagKey(registry, repository, tag)));
  }

  async *listTags(): AsyncIterable<ListedTag> {
    const root = `${this.#prefix}tags/`;
    const keys: string[] = [];
    for await (const { key } of listObjects(this.client, root)) keys.push(key);
    const texts = await mapLimit(keys, READS_IN_FLIGHT, (key) => this.#getText(key));
    for (const [i, key] of keys.entries()) {
      const found = texts[i] === undefined ? undefined : parseTag(texts[i]);
      const registry = key.slice(root.length).split("/")[0];
      if (!found?.repository || !found.tag) {
        if (texts[i] !== undefined) skipped(key);
        continue;
      }
      yield { registry, repository: found.repository, tag: found.tag, record: found.record };
    }
  }

  async hasLink(registry: string, repository: string, digest: string): Promise<boolean> {
    const key = this.#linkKey(registry, repository, digest);
    const head = await available(
      this.client.send("HeadObject", "HEAD", key, { expect: [200, 404] }),
    );
    await head.body?.cancel();
    return head.status === 200;
  }

  async addLink(registry: string, repository: string, digest: string): Promise<void> {
    await this.#put("PutObject", this.#linkKey(registry, repository, digest), "");
  }

  /** Checks both places writes go: the spool directory and the bucket. */
  async probeWrite(): Promise<void> {
    const path = `${this.spoolDir}/probe-${crypto.randomUUID()}`;
    try {
      using file = await Deno.open(path, { write: true, createNew: true });
      const data = new Uint8Array(PROBE_BYTES);
      for (let at = 0; at < data.length;) at += await file.write(data.subarray(at));
      await file.syncData();
    } finally {
      await Deno.remove(path).catch(() => {});
    }
    const key = `${this.#prefix}probes/${crypto.randomUUID()}`;
    await this.#put("PutObject", key, "probe");
    await this.#delete(key);
  }

  async #put(operation: string, key: string, body: Uint8Array<ArrayBuffer> | string) {
    await (await this.client.send(operation, "PUT", key, { body })).body?.cancel();
  }

  async #delete(key: string): Promise<void> {
    await (await this.client.send("DeleteObject", "DELETE", key)).body?.cancel();
  }

  /** A small object's text, or undefined when there is none. */
  async #getText(key: string): Promise<string | undefined> {
    const response = await this.client.send("GetObject", "GET", key, { expect: [200, 404] });
    if (response.status === 200) return await response.text();
    await response.body?.cancel();
    return undefined;
  }
}

/**
 * The payload sha256 S3 checks the upload against: the digest itself for a sha256 blob (so S3
 * refuses bytes that do not match it), else the sha256 of the file.
 */
async function payloadSha256(path: string, digest: string): Promise<string> {
  if (digest.startsWith("sha256:")) return digest.slice("sha256:".length);
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Uint8Array);
  return hash.digest("hex");
}

function parseTag(
  text: string,
): { record: TagRecord; repository?: string; tag?: string } | undefined {
  try {
    const { repository, tag, digest, mediaType, size, checkedAt } = JSON.parse(text);
    if (typeof digest !== "string" || !isValidDigest(digest)) return undefined;
    if (typeof mediaType !== "string" || typeof size !== "number") return undefined;
    if (typeof checkedAt !== "number") return undefined;
    return { record: { digest, mediaType, size, checkedAt }, repository, tag };
  } catch {
    return undefined; // unreadable: the tag is checked upstream again
  }
}

/**
 * `operation`'s result; its failure (the bucket down, refusing, failing) as a 503 a client can act
 * on (fall back, retry), rather than an internal error. The message names no endpoint or key.
 */
async function available<T>(operation: Promise<T>): Promise<T> {
  try {
    return await operation;
  } catch (e) {
    const reason = e instanceof S3Error ? `it answered ${e.status} ${e.code}` : "no answer";
    throw new RegistryError("UNAVAILABLE", `the cache's bucket is unavailable (${reason})`, {
      status: 503,
      cause: e,
    });
  }
}

function skipped(key: string): void {
  log.warn("skipping unrecognised object in the cache bucket: {key}", { key });
}
