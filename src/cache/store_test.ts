// The Store contract, one suite run on every backend: the cache directory and a real S3 (Ceph RGW).

import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import {
  assertBody,
  manifestBytes,
  patterned,
  putBlob,
  readAll,
  RECORD,
  sha256,
  storeTest,
  tmpEntries,
} from "./_test_support.ts";

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

storeTest(
  "store: a committed blob opens whole and in ranges; a missing one does not",
  async (b) => {
    await using t = await b.tempStore();
    const bytes = patterned(3 * 1024 * 1024 + 17, 5);
    const digest = await putBlob(t.store, bytes);
    deepEqual(await tmpEntries(t.dir), [], "the spool is gone once committed");
    deepEqual(await t.raw("blob", digest), bytes);
    const ranges: [number | undefined, number | undefined][] = [
      [undefined, undefined],
      [0, 1],
      [1_000_000, 2_500_000],
      [bytes.length - 1, bytes.length],
      [5, 5],
    ];
    for (const [start, end] of ranges) {
      const blob = await t.store.openBlob(digest);
      ok(blob);
      equal(blob.size, bytes.length);
      assertBody(await readAll(await blob.stream(start, end)), bytes.subarray(start, end));
    }
    const unused = await t.store.openBlob(digest);
    unused?.close();
    equal(await t.store.openBlob(sha256(patterned(10, 6))), undefined);
    await t.store.delete("blob", digest);
    equal(await t.store.openBlob(digest), undefined);
    await t.store.delete("blob", digest); // deleting what is gone is not an error
  },
);

storeTest("store: an empty blob is stored and read back", async (b) => {
  await using t = await b.tempStore();
  const digest = await putBlob(t.store, new Uint8Array());
  const blob = await t.store.openBlob(digest);
  ok(blob);
  equal(blob.size, 0);
  assertBody(await readAll(await blob.stream()), new Uint8Array());
});

storeTest(
  "store: a fill's reader reads the spool, and the blob once it is committed",
  async (b) => {
    await using t = await b.tempStore();
    const bytes = patterned(200_000, 7);
    const digest = sha256(bytes);
    const spool = await t.store.createSpool();
    spool.file.writeSync(bytes);
    spool.file.close();
    const early = await t.store.openFill(spool.path, digest);
    await t.store.commitBlob(spool.path, digest);
    const late = await t.store.openFill(spool.path, digest);
    for (const file of [early, late]) {
      try {
        const read = new Uint8Array(bytes.length);
        let at = 0;
        for (let n; at < read.length && (n = await file.read(read.subarray(at))) !== null;) at += n;
        equal(at, bytes.length);
        equal(sha256(read), digest);
      } finally {
        file.close();
      }
    }
    deepEqual(await tmpEntries(t.dir), [], "nothing is left among the spools");
  },
);

storeTest("store: manifests are stored as their exact bytes", async (b) => {
  await using t = await b.tempStore();
  const bytes = manifestBytes("exact");
  const digest = sha256(bytes);
  await t.store.putManifest(digest, bytes);
  deepEqual(await t.raw("manifest", digest), bytes);
  deepEqual(await t.store.getManifest(digest), bytes);
  equal(await t.store.getManifest(sha256(manifestBytes("other"))), undefined);
});

storeTest("store: a manifest whose bytes do not match its digest is dropped", async (b) => {
  await using t = await b.tempStore();
  const bytes = manifestBytes("corrupt");
  const digest = sha256(bytes);
  await t.store.putManifest(digest, bytes);
  const corrupt = bytes.slice();
  corrupt[10] ^= 1;
  await t.overwrite("manifest", digest, corrupt);
  equal(await t.store.getManifest(digest), undefined);
  equal(await t.raw("manifest", digest), undefined);
});

storeTest("store: list() gives sizes and the access times touch() persisted", async (b) => {
  await using t = await b.tempStore();
  const blob = await putBlob(t.store, patterned(1000, 8));
  const manifest = manifestBytes("list");
  await t.store.putManifest(sha256(manifest), manifest);
  const before = Date.now();
  await t.store.touch("blob", blob, 1_600_000_000_000);
  await t.store.touch("manifest", sha256(manifest), 1_650_000_000_000);
  const after = Date.now();
  const listed = (await collect(t.store.list())).sort((x, y) => x.kind < y.kind ? -1 : 1);
  deepEqual(listed.map(({ accessedMs: _, ...o }) => o), [
    { kind: "blob", digest: blob, size: 1000 },
    { kind: "manifest", digest: sha256(manifest), size: manifest.length },
  ]);
  const [blobMs, manifestMs] = listed.map((o) => o.accessedMs);
  if (b.name === "fs") {
    deepEqual([blobMs, manifestMs], [1_600_000_000_000, 1_650_000_000_000]);
  } else {
    // S3: when each touch reached the bucket (its clock is this machine's), in the touches' order.
    ok(before <= blobMs && blobMs <= manifestMs && manifestMs <= after, `${[blobMs, manifestMs]}`);
  }
  await t.store.delete("blob", blob);
  deepEqual((await collect(t.store.list())).map((o) => o.kind), ["manifest"]);
});

/** Repository names whose file-name form is long: near and past the 255-byte file name limit. */
const LONG_NAMES = [
  `${"a".repeat(125)}/${"b".repeat(125)}`, // 253 bytes URL-encoded
  `${"a".repeat(127)}/${"b".repeat(127)}`, // 259 bytes URL-encoded
  Array.from({ length: 60 }, (_, i) => `n${i}`).join("/"), // ~330 bytes URL-encoded
];

storeTest("store: tags and links of repositories with very long names", async (b) => {
  await using t = await b.tempStore();
  const { store } = t;
  for (const [i, repository] of LONG_NAMES.entries()) {
    ok(encodeURIComponent(repository).length > 250, repository);
    const record = { ...RECORD, size: i };
    await store.putTag("ghcr.io", repository, "latest", record);
    deepEqual(await store.getTag("ghcr.io", repository, "latest"), record);
    equal(await store.hasLink("ghcr.io", repository, RECORD.digest), false);
    await store.addLink("ghcr.io", repository, RECORD.digest);
    ok(await store.hasLink("ghcr.io", repository, RECORD.digest));
  }
  const listed = (await collect(store.listTags()))
    .map(({ registry, repository, tag, record }) => ({
      registry,
      repository,
      tag,
      size: record.size,
    }))
    .sort((a, b) => a.size - b.size);
  deepEqual(
    listed,
    LONG_NAMES.map((repository, size) => ({
      registry: "ghcr.io",
      repository,
      tag: "latest",
      size,
    })),
  );
  await store.deleteTag("ghcr.io", LONG_NAMES[1], "latest");
  equal(await store.getTag("ghcr.io", LONG_NAMES[1], "latest"), undefined);
  deepEqual(await store.getTag("ghcr.io", LONG_NAMES[2], "latest"), { ...RECORD, size: 2 });
});

storeTest("store: tags of one repository do not leak into a repository nested in it", async (b) => {
  await using t = await b.tempStore();
  const { store } = t;
  await store.putTag("127.0.0.1:5000", "org/app", "v1", RECORD);
  await store.putTag("127.0.0.1:5000", "org/app/v1", "latest", { ...RECORD, size: 9 });
  await store.addLink("127.0.0.1:5000", "org/app", RECORD.digest);
  deepEqual(await store.getTag("127.0.0.1:5000", "org/app", "v1"), RECORD);
  deepEqual(await store.getTag("127.0.0.1:5000", "org/app/v1", "latest"), { ...RECORD, size: 9 });
  equal(await store.getTag("127.0.0.1:5000", "org", "app"), undefined);
  equal(await store.hasLink("127.0.0.1:5000", "org/app/v1", RECORD.digest), false);
  const images = (await collect(store.listTags()))
    .map((l) => `${l.registry}/${l.repository}:${l.tag}`).sort();
  deepEqual(images, ["127.0.0.1:5000/org/app/v1:latest", "127.0.0.1:5000/org/app:v1"]);
});

storeTest(
  "store: probeWrite succeeds on a writable store and fails when tmp/ cannot be written",
  async (b) => {
    await using t = await b.tempStore();
    await t.store.probeWrite();
    deepEqual(await tmpEntries(t.dir), [], "the probe file is removed");
    await Deno.remove(`${t.dir}/tmp`, { recursive: true });
    await Deno.writeFile(`${t.dir}/tmp`, new Uint8Array());
    await rejects(t.store.probeWrite());
  },
);
