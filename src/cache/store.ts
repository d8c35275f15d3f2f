// The cache store interface: content by digest, tag records and repository links.

/** What a stored object holds. */
export type ObjectKind = "blob" | "manifest";

/** A stored object, as listed for eviction. */
export interface ObjectInfo {
  kind: ObjectKind;
  digest: string;
  size: number;
  /** Last access persisted for the object (the file's mtime in the filesystem store). */
  accessedMs: number;
}

/** A cached manifest: the bytes and the media type they were served with. */
export interface StoredManifest {
  mediaType: string;
  bytes: Uint8Array<ArrayBuffer>;
}

/** What a tag pointed to when it was last checked upstream. */
export interface TagRecord {
  digest: string;
  mediaType: string;
  size: number;
  /** When the upstream last confirmed the tag (ms since the epoch). */
  checkedAt: number;
}

/** A local file a fill writes into, moved into the store by `commitBlob`. */
export interface Spool {
  path: string;
  file: Deno.FsFile;
}

/**
 * Where the cache keeps its content. Blobs are filled through a local spool file (so clients can
 * follow it while it grows) and committed only once verified; nothing partial is ever readable.
 */
export interface Store {
  statBlob(digest: string): Promise<{ size: number } | undefined>;
  /** Bytes [start, end) of a committed blob; `end` defaults to the end. */
  readBlob(digest: string, start?: number, end?: number): Promise<ReadableStream<Uint8Array>>;
  createSpool(): Promise<Spool>;
  /** Moves a closed, fsynced, verified spool file into place under `digest`. */
  commitBlob(spoolPath: string, digest: string): Promise<void>;
  /** Opens a reader of a spool or, once committed, of the blob. */
  openFill(spoolPath: string, digest: string): Promise<Deno.FsFile>;
  getManifest(digest: string): Promise<StoredManifest | undefined>;
  putManifest(digest: string, manifest: StoredManifest): Promise<void>;
  delete(kind: ObjectKind, digest: string): Promise<void>;
  /** Every stored object; used to rebuild the eviction index at start. */
  list(): AsyncIterable<ObjectInfo>;
  /** Persists access times (batched by the caller, never once per hit). */
  touch(kind: ObjectKind, digest: string, atMs: number): Promise<void>;
  getTag(registry: string, repository: string, tag: string): Promise<TagRecord | undefined>;
  putTag(registry: string, repository: string, tag: string, record: TagRecord): Promise<void>;
  deleteTag(registry: string, repository: string, tag: string): Promise<void>;
  /** Every tag record, for `cache ls`. */
  listTags(): AsyncIterable<
    { registry: string; repository: string; tag: string; record: TagRecord }
  >;
  /** True once the upstream confirmed that `repository` of `registry` holds `digest`. */
  hasLink(registry: string, repository: string, digest: string): Promise<boolean>;
  addLink(registry: string, repository: string, digest: string): Promise<void>;
}
