// The filesystem Store: content-addressed files, written to tmp/, fsynced and renamed into place.

import { createHash } from "node:crypto";
import { log } from "../log.ts";
import { digestOf } from "../oci/digest.ts";
import { isValidDigest } from "../oci/names.ts";
import { fileStream } from "./file_stream.ts";
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

/** Longest encoded repository name kept as a directory name; longer ones are hashed. */
const MAX_NAME_PART = 200;
/** Bytes written (and fsynced) to tell whether the disk takes writes. */
const PROBE_BYTES = 64 * 1024;

/**
 * Layout under the cache directory:
 * `blobs/<alg>/<hex>`, `manifests/<alg>/<hex>` (the manifest's exact bytes),
 * `tags/<registry>/<repository key>/<tag>.json`, `links/<registry>/<repository key>/<alg>-<hex>`,
 * `tmp/` (spools and half-written files; emptied at start). A repository key is the
 * URL-encoded name, or `~<sha256 of the name>` when that would be too long for a file name; tag
 * records carry the repository name themselves.
 */
export class FsStore implements Store {
  readonly dir: string;
  /** A commit is an fsync and a rename: clients get their last byte once it is done. */
  readonly slowCommit = false;

  private constructor(dir: string) {
    this.dir = dir;
  }

  /**
   * Opens (creating) the store at `dir`. With `clean`, removes whatever a crash left in tmp/: only
   * the server may, since a command run beside it would cut its fills.
   */
  static async open(dir: string, options: { clean: boolean }): Promise<FsStore> {
    if (options.clean) await Deno.remove(`${dir}/tmp`, { recursive: true }).catch(() => {});
    for (const sub of ["blobs", "manifests", "tags", "links", "tmp"]) {
      await Deno.mkdir(`${dir}/${sub}`, { recursive: true });
    }
    return new FsStore(dir);
  }

  #path(kind: ObjectKind, digest: string): string {
    const [alg, hex] = digest.split(":");
    return `${this.dir}/${KINDS[kind]}/${alg}/${hex}`;
  }

  #repoDir(root: string, registry: string, repository: string): string {
    return `${this.dir}/${root}/${registry}/${repositoryKey(repository)}`;
  }

  async openBlob(digest: string): Promise<OpenedBlob | undefined> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(this.#path("blob", digest));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
      throw e;
    }
    const { size } = await file.stat().catch((e) => {
      file.close();
      throw e;
    });
    let used = false;
    return {
      size,
      stream(start = 0, end = size) {
        if (used) throw new Error("a blob is streamed once");
        used = true;
        // A byte stream sized to the client (1 MiB pieces fast, 64 KiB slow) that errors on a short
        // file; `file.readable` reads 64 KiB per hop (BENCHMARKS.md).
        return Promise.resolve(fileStream(file, { start, end }));
      },
      close() {
        if (used) return;
        used = true;
        file.close();
      },
    };
  }

  async createSpool(): Promise<Spool> {
    const path = `${this.dir}/tmp/${crypto.randomUUID()}`;
    return { path, file: await Deno.open(path, { write: true, createNew: true }) };
  }

  async commitBlob(spoolPath: string, digest: string): Promise<void> {
    await this.#rename(spoolPath, this.#path("blob", digest));
  }

  async openFill(spoolPath: string, digest: string): Promise<Deno.FsFile> {
    try {
      return await Deno.open(spoolPath);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      return await Deno.open(this.#path("blob", digest)); // committed meanwhile
    }
  }

  async getManifest(digest: string): Promise<Uint8Array<ArrayBuffer> | undefined> {
    let data: Uint8Array<ArrayBuffer>;
    try {
      data = await Deno.readFile(this.#path("manifest", digest));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
      throw e;
    }
    if (digestOf(data, digest) === digest) return data;
    // Caches written before 0.2 put the media type on a first line.
    const legacy = data.subarray(data.indexOf(0x0a) + 1);
    if (digestOf(legacy, digest) === digest) return data.slice(data.indexOf(0x0a) + 1);
    log.warn("cached manifest {digest} does not match its digest: removed", { digest });
    await this.delete("manifest", digest);
    return undefined;
  }

  async putManifest(digest: string, bytes: Uint8Array): Promise<void> {
    await this.#writeAtomic(this.#path("manifest", digest), bytes);
  }

  async delete(kind: ObjectKind, digest: string): Promise<void> {
    await Deno.remove(this.#path(kind, digest)).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }

  async *list(): AsyncIterable<ObjectInfo> {
    for (const kind of ["blob", "manifest"] as const) {
      const root = `${this.dir}/${KINDS[kind]}`;
      for (const alg of await entries(root)) {
        if (!alg.isDirectory || !["sha256", "sha512"].includes(alg.name)) {
          skipped(`${root}/${alg.name}`);
          continue;
        }
        for (const entry of await entries(`${root}/${alg.name}`)) {
          const digest = `${alg.name}:${entry.name}`;
          if (!entry.isFile || !isValidDigest(digest)) {
            skipped(`${root}/${alg.name}/${entry.name}`);
            continue;
          }
          try {
            const info = Deno.statSync(`${root}/${alg.name}/${entry.name}`);
            yield { kind, digest, size: info.size, accessedMs: info.mtime?.getTime() ?? 0 };
          } catch { /* deleted meanwhile */ }
        }
      }
    }
  }

  async touch(kind: ObjectKind, digest: string, atMs: number): Promise<void> {
    const time = new Date(atMs);
    await Deno.utime(this.#path(kind, digest), time, time).catch(() => {});
  }

  async getTag(registry: string, repository: string, tag: string): Promise<TagRecord | undefined> {
    return (await readTag(`${this.#repoDir("tags", registry, repository)}/${tag}.json`))?.record;
  }

  async putTag(registry: string, repository: string, tag: string, record: TagRecord) {
    const dir = this.#repoDir("tags", registry, repository);
    const data = JSON.stringify({ repository, tag, ...record });
    await this.#writeAtomic(`${dir}/${tag}.json`, new TextEncoder().encode(data));
  }

  async deleteTag(registry: string, repository: string, tag: string): Promise<void> {
    const path = `${this.#repoDir("tags", registry, repository)}/${tag}.json`;
    await Deno.remove(path).catch(() => {});
  }

  async *listTags(): AsyncIterable<ListedTag> {
    const root = `${this.dir}/tags`;
    for (const registry of await entries(root)) {
      if (!registry.isDirectory) {
        skipped(`${root}/${registry.name}`);
        continue;
      }
      for (const repo of await entries(`${root}/${registry.name}`)) {
        const dir = `${root}/${registry.name}/${repo.name}`;
        if (!repo.isDirectory) {
          skipped(dir);
          continue;
        }
        for (const file of await entries(dir)) {
          const found = file.isFile && file.name.endsWith(".json")
            ? await readTag(`${dir}/${file.name}`)
            : undefined;
          if (!found) {
            skipped(`${dir}/${file.name}`);
            continue;
          }
          const repository = found.repository ?? decodeURIComponent(repo.name);
          const tag = found.tag ?? file.name.slice(0, -".json".length);
          yield { registry: registry.name, repository, tag, record: found.record };
        }
      }
    }
  }

  async hasLink(registry: string, repository: string, digest: string): Promise<boolean> {
    const path = `${this.#repoDir("links", registry, repository)}/${digest.replace(":", "-")}`;
    try {
      await Deno.lstat(path);
      return true;
    } catch {
      return false;
    }
  }

  async addLink(registry: string, repository: string, digest: string): Promise<void> {
    const dir = this.#repoDir("links", registry, repository);
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeFile(`${dir}/${digest.replace(":", "-")}`, new Uint8Array());
  }

  async probeWrite(): Promise<void> {
    const path = `${this.dir}/tmp/probe-${crypto.randomUUID()}`;
    try {
      using file = await Deno.open(path, { write: true, createNew: true });
      await writeAll(file, new Uint8Array(PROBE_BYTES));
      await file.syncData();
    } finally {
      await Deno.remove(path).catch(() => {});
    }
  }

  /**
   * Writes to tmp/, fsyncs, renames into place and fsyncs the directory: readers see the old file
   * or the whole new one, and a crash keeps either. A failed write leaves no temp file behind.
   */
  async #writeAtomic(path: string, data: Uint8Array): Promise<void> {
    const temp = `${this.dir}/tmp/${crypto.randomUUID()}`;
    try {
      {
        using file = await Deno.open(temp, { write: true, createNew: true });
        await writeAll(file, data);
        await file.syncData();
      }
      await this.#rename(temp, path);
    } catch (e) {
      await Deno.remove(temp).catch(() => {});
      throw e;
    }
  }

  /** Renames into place (creating the directory), then fsyncs the directory. */
  async #rename(from: string, to: string): Promise<void> {
    const dir = to.slice(0, to.lastIndexOf("/"));
    try {
      await Deno.rename(from, to);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      await Deno.mkdir(dir, { recursive: true });
      await Deno.rename(from, to);
    }
    using directory = await Deno.open(dir);
    await directory.sync();
  }
}

/** The directory name of a repository: its encoded name, or a hash when that is too long. */
function repositoryKey(repository: string): string {
  const encoded = encodeURIComponent(repository);
  if (encoded.length <= MAX_NAME_PART) return encoded;
  return `~${createHash("sha256").update(repository).digest("hex")}`;
}

async function readTag(
  path: string,
): Promise<{ record: TagRecord; repository?: string; tag?: string } | undefined> {
  try {
    const { repository, tag, digest, mediaType, size, checkedAt } = JSON.parse(
      await Deno.readTextFile(path),
    );
    if (typeof digest !== "string" || !isValidDigest(digest)) return undefined;
    if (typeof mediaType !== "string" || typeof size !== "number") return undefined;
    if (typeof checkedAt !== "number") return undefined;
    return { record: { digest, mediaType, size, checkedAt }, repository, tag };
  } catch {
    return undefined; // missing, or unreadable: the tag is checked upstream again
  }
}

/** A directory's entries; none when it is missing or not a directory. */
async function entries(dir: string): Promise<Deno.DirEntry[]> {
  const found: Deno.DirEntry[] = [];
  try {
    for await (const entry of Deno.readDir(dir)) found.push(entry);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound) && !(e instanceof Deno.errors.NotADirectory)) {
      throw e;
    }
  }
  return found;
}

function skipped(path: string): void {
  log.warn("skipping unrecognised entry in the cache: {path}", { path });
}

async function writeAll(file: Deno.FsFile, data: Uint8Array): Promise<void> {
  for (let at = 0; at < data.length;) at += await file.write(data.subarray(at));
}
