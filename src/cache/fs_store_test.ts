import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import { OCI_MANIFEST } from "../oci/media_types.ts";
import {
  assertBody,
  manifestBytes,
  patterned,
  putBlob,
  readAll,
  RECORD,
  sha256,
  tempStore,
  tmpEntries,
} from "./_test_support.ts";
import type { ListedTag, ObjectInfo } from "./store.ts";

function hexPath(dir: string, kind: "blobs" | "manifests", digest: string): string {
  return `${dir}/${kind}/sha256/${digest.slice("sha256:".length)}`;
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

Deno.test("fs store: list() and listTags() skip stray files in every directory", async () => {
  await using t = await tempStore();
  const { dir, store } = t;
  const blob = await putBlob(store, patterned(1000));
  const manifest = manifestBytes("list");
  await store.putManifest(sha256(manifest), manifest);
  await store.putTag("docker.io", "library/alpine", "3.20", RECORD);
  await store.addLink("docker.io", "library/alpine", blob);
  const text = new TextEncoder().encode("not cache content\n");
  for (
    const file of [
      "README",
      "blobs/.keep",
      "blobs/sha256/README",
      "manifests/README",
      "manifests/sha256/README",
      "manifests/sha512", // a file where an algorithm directory would be
      "tags/README",
      "tags/docker.io/README",
      "tags/docker.io/library%2Falpine/README",
      "tags/docker.io/library%2Falpine/broken.json",
      "links/.keep",
      "links/docker.io/README",
    ]
  ) await Deno.writeFile(`${dir}/${file}`, text);
  await Deno.mkdir(`${dir}/blobs/sha256/zz`);
  await Deno.mkdir(`${dir}/blobs/md5`);
  await Deno.mkdir(`${dir}/tags/docker.io/library%2Falpine/sub`);

  const objects = await collect(store.list());
  deepEqual(
    objects.map(({ kind, digest, size }) => ({ kind, digest, size })),
    [
      { kind: "blob", digest: blob, size: 1000 },
      { kind: "manifest", digest: sha256(manifest), size: manifest.length },
    ] satisfies Omit<ObjectInfo, "accessedMs">[],
  );
  deepEqual(
    await collect(store.listTags()),
    [
      { registry: "docker.io", repository: "library/alpine", tag: "3.20", record: RECORD },
    ] satisfies ListedTag[],
  );
  ok(await store.hasLink("docker.io", "library/alpine", blob));
});

Deno.test("fs store: a manifest in the legacy layout (media type line first) reads as its bytes", async () => {
  await using t = await tempStore();
  const bytes = manifestBytes("legacy");
  const digest = sha256(bytes);
  const head = new TextEncoder().encode(`${OCI_MANIFEST}\n`);
  const legacy = new Uint8Array(head.length + bytes.length);
  legacy.set(head);
  legacy.set(bytes, head.length);
  await Deno.mkdir(`${t.dir}/manifests/sha256`, { recursive: true });
  await Deno.writeFile(hexPath(t.dir, "manifests", digest), legacy);
  deepEqual(await t.store.getManifest(digest), bytes);
});

Deno.test("fs store: a failed atomic write leaves no temp file behind", async () => {
  await using t = await tempStore();
  const bytes = manifestBytes("atomic");
  await Deno.writeFile(`${t.dir}/manifests/sha256`, new Uint8Array()); // a file where a dir goes
  await rejects(t.store.putManifest(sha256(bytes), bytes));
  await Deno.writeFile(`${t.dir}/tags/quay.io`, new Uint8Array());
  await rejects(t.store.putTag("quay.io", "org/app", "v1", RECORD));
  deepEqual(await tmpEntries(t.dir), []);
});

Deno.test("fs store: an opened blob stays readable after it is deleted", async () => {
  await using t = await tempStore();
  const bytes = patterned(300 * 1024, 4);
  const digest = await putBlob(t.store, bytes);
  const whole = await t.store.openBlob(digest);
  const part = await t.store.openBlob(digest);
  const unused = await t.store.openBlob(digest);
  ok(whole && part && unused);
  equal(whole.size, bytes.length);
  await t.store.delete("blob", digest);
  equal(await t.store.openBlob(digest), undefined);
  assertBody(await readAll(await whole.stream()), bytes);
  assertBody(await readAll(await part.stream(1000, 200_000)), bytes.subarray(1000, 200_000));
  unused.close();
});
