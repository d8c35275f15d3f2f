// The cache store interface: content by digest, tag records and repository links.

/** What a stored object holds. */
export type ObjectKind = "blob" | "manifest";

/** The directory (or key prefix) each kind of object is stored under. */
export const KINDS: Record<ObjectKind, string> = { blob: "blobs", manifest: "manifests" };

/** A stored object, as listed for eviction. */
export interface ObjectInfo {
  kind: ObjectKind;
  digest: string;
  size: number;
  /**
   * Last access persisted for the object: the file's mtime in the filesystem store; in S3 the later
   * of when its access object and when the object itself last reached the bucket (see `touch`).
   */
  accessedMs: number;
}

/** What a tag pointed to when it was last checked upstream. */
export interface TagRecord {
  digest: string;
  /** The media type the manifest itself declares (never an upstream's Content-Type). */
  mediaType: string;
  size: number;
  /** When the upstream last confirmed the tag (ms since the epoch). */
  checkedAt: number;
}

/** A tag record with the tag it belongs to, as listed for `cache ls`. */
export interface ListedTag {
  registry: string;
  repository: string;
  tag: string;
  record: TagRecord;
}

/** A local file a fill writes into, moved into the store by `commitBlob`. */
export interface Spool {
  path: string;
  file: Deno.FsFile;
}

/**
 * A committed blob, opened: its bytes stay readable until `close()` even if the blob is deleted
 * meanwhile (an open file on POSIX, a pinned object elsewhere).
 */
export interface OpenedBlob {
  size: number;
  /**
   * Bytes [start, end) as a stream that closes the blob when done; at most once. Rejects when
   * they cannot be read after all (the bucket failed): before the response's head is sent.
   */
  stream(start?: number, end?: number): Promise<ReadableStream<Uint8Array>>;
  /** Closes the blob when it is not streamed after all. */
  close(): void;
}

/**
 * Where the cache keeps its content. Blobs are filled through a local spool file (so clients can
 * follow it while it grows) and committed only once verified; nothing partial is ever readable.
 * Manifests are stored as their exact bytes, which the store verifies against the digest on read.
 */
export interface Store {
  /**
   * Commits take long (an upload to the bucket): a client's last byte then goes once the blob is
   * verified, not once it is committed. Replicas streaming the fill still wait for the commit.
   */
  readonly slowCommit: boolean;
  /** Opens a committed blob, or undefined when it is not stored. */
  openBlob(digest: string): Promise<OpenedBlob | undefined>;
  createSpool(): Promise<Spool>;
  /** Moves a closed, fsynced, verified spool file into place under `digest`. */
  commitBlob(spoolPath: string, digest: string): Promise<void>;
  /** Opens a reader of a spool or, once committed, of the blob. */
  openFill(spoolPath: string, digest: string): Promise<Deno.FsFile>;
  /** The manifest's bytes, verified against `digest`; undefined when missing or corrupt. */
  getManifest(digest: string): Promise<Uint8Array<ArrayBuffer> | undefined>;
  putManifest(digest: string, bytes: Uint8Array): Promise<void>;
  delete(kind: ObjectKind, digest: string): Promise<void>;
  /** Every stored object; used to rebuild the eviction index at start. Skips what it does not know. */
  list(): AsyncIterable<ObjectInfo>;
  /**
   * Persists that an object was used at `atMs` (batched by the caller, never once per hit). `list()`
   * then gives `atMs` (the directory), or the time the touch reached the store, on its own clock
   * (S3: read from the listing, with no request per object).
   */
  touch(kind: ObjectKind, digest: string, atMs: number): Promise<void>;
  getTag(registry: string, repository: string, tag: string): Promise<TagRecord | undefined>;
  putTag(registry: string, repository: string, tag: string, record: TagRecord): Promise<void>;
  deleteTag(registry: string, repository: string, tag: string): Promise<void>;
  /** Every tag record, for `cache ls`. */
  listTags(): AsyncIterable<ListedTag>;
  /** True once the upstream confirmed that `repository` of `registry` holds `digest`. */
  hasLink(registry: string, repository: string, digest: string): Promise<boolean>;
  addLink(registry: string, repository: string, digest: string): Promise<void>;
  /** Throws when the store cannot take a write now (full disk, read-only, gone). */
  probeWrite(): Promise<void>;
}
