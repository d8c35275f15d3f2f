// The filesystem Store: content-addressed files, written to tmp/, fsynced and renamed into place.

import type { ObjectInfo, ObjectKind, Spool, Store, StoredManifest, TagRecord } from "./store.ts";

const KINDS: Record<ObjectKind, string> = { blob: "blobs", manifest: "manifests" };

/**
 * Layout under the cache directory:
 * `blobs/<alg>/<hex>`, `manifests/<alg>/<hex>` (media type line, then the bytes),
 * `tags/<registry>/<repository, encoded>/<tag>.json`, `links/<registry>/<repository>/<alg>-<hex>`,
 * `tmp/` (spools and half-written files; emptied at start).
 */
export class FsStore implements Store {
  readonly dir: string;

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
    return `${this.dir}/${root}/${registry}/${encodeURIComponent(repository)}`;
  }

  async statBlob(digest: string): Promise<{ size: number } | undefined> {
    try {
      return { size: (await Deno.stat(this.#path("blob", digest))).size };
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
      throw e;
    }
  }

  async readBlob(digest: string, start = 0, end?: number): Promise<ReadableStream<Uint8Array>> {
    const file = await Deno.open(this.#path("blob", digest));
    if (start > 0) await file.seek(start, Deno.SeekMode.Start);
    if (end === undefined) return file.readable; // the fast path: bytes move without JS
    return limit(file, end - start);
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

  async getManifest(digest: string): Promise<StoredManifest | undefined> {
    let data: Uint8Array<ArrayBuffer>;
    try {
      data = await Deno.readFile(this.#path("manifest", digest));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
      throw e;
    }
    const newline = data.indexOf(0x0a);
    return {
      mediaType: new TextDecoder().decode(data.subarray(0, newline)),
      bytes: data.slice(newline + 1),
    };
  }

  async putManifest(digest: string, manifest: StoredManifest): Promise<void> {
    const head = new TextEncoder().encode(`${manifest.mediaType}\n`);
    const data = new Uint8Array(head.length + manifest.bytes.length);
    data.set(head);
    data.set(manifest.bytes, head.length);
    await this.#writeAtomic(this.#path("manifest", digest), data);
  }

  async delete(kind: ObjectKind, digest: string): Promise<void> {
    await Deno.remove(this.#path(kind, digest)).catch((e) => {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    });
  }

  async *list(): AsyncIterable<ObjectInfo> {
    for (const kind of ["blob", "manifest"] as const) {
      const root = `${this.dir}/${KINDS[kind]}`;
      for await (const alg of Deno.readDir(root)) {
        for await (const entry of Deno.readDir(`${root}/${alg.name}`)) {
          const digest = `${alg.name}:${entry.name}`;
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
    try {
      const path = `${this.#repoDir("tags", registry, repository)}/${tag}.json`;
      return JSON.parse(await Deno.readTextFile(path));
    } catch {
      return undefined; // missing, or unreadable: the tag is checked upstream again
    }
  }

  async putTag(registry: string, repository: string, tag: string, record: TagRecord) {
    const dir = this.#repoDir("tags", registry, repository);
    await this.#writeAtomic(`${dir}/${tag}.json`, new TextEncoder().encode(JSON.stringify(record)));
  }

  async deleteTag(registry: string, repository: string, tag: string): Promise<void> {
    const path = `${this.#repoDir("tags", registry, repository)}/${tag}.json`;
    await Deno.remove(path).catch(() => {});
  }

  async *listTags(): AsyncIterable<
    { registry: string; repository: string; tag: string; record: TagRecord }
  > {
    const root = `${this.dir}/tags`;
    for await (const registry of Deno.readDir(root)) {
      for await (const repo of Deno.readDir(`${root}/${registry.name}`)) {
        for await (const file of Deno.readDir(`${root}/${registry.name}/${repo.name}`)) {
          const repository = decodeURIComponent(repo.name);
          const tag = file.name.replace(/\.json$/, "");
          const record = await this.getTag(registry.name, repository, tag);
          if (record) yield { registry: registry.name, repository, tag, record };
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

  /** Writes to tmp/, fsyncs, renames into place: readers see the old file or the whole new one. */
  async #writeAtomic(path: string, data: Uint8Array): Promise<void> {
    const temp = `${this.dir}/tmp/${crypto.randomUUID()}`;
    using file = await Deno.open(temp, { write: true, createNew: true });
    for (let at = 0; at < data.length;) at += await file.write(data.subarray(at));
    await file.syncData();
    await this.#rename(temp, path);
  }

  async #rename(from: string, to: string): Promise<void> {
    try {
      await Deno.rename(from, to);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
      await Deno.mkdir(to.slice(0, to.lastIndexOf("/")), { recursive: true });
      await Deno.rename(from, to);
    }
  }
}

/** The first `length` bytes of a file, as a stream that closes the file when done. */
function limit(file: Deno.FsFile, length: number): ReadableStream<Uint8Array> {
  let left = length;
  return new ReadableStream<Uint8Array>({
    async pull(out) {
      if (left <= 0) {
        file.close();
        return out.close();
      }
      const buffer = new Uint8Array(Math.min(left, 256 * 1024));
      const n = await file.read(buffer);
      if (n === null) {
        file.close();
        return out.error(new Error("blob shorter than expected"));
      }
      left -= n;
      out.enqueue(buffer.subarray(0, n));
    },
    cancel() {
      file.close();
    },
  }, { highWaterMark: 0 });
}
