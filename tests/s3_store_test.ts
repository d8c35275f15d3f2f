// The S3 store against a real Ceph RGW, where it differs from the directory: S3 checks uploads
// against the digest, big blobs go up in parts, the bucket and credentials are checked at start.
// (What both backends share runs in src/cache/*_test.ts on both.)

import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { assertBody, patterned, putBlob, readAll, sha256 } from "../src/cache/_test_support.ts";
import { S3Store } from "../src/cache/s3_store.ts";
import { RegistryError } from "../src/oci/errors.ts";
import type { S3Config } from "../src/config.ts";
import { S3Client, S3Error } from "../src/s3/client.ts";
import { emptyPrefix, keysUnder, RGW_TOOLS, s3Settings } from "./fixtures/rgw.ts";
import { skipUnless } from "./fixtures/tools.ts";

const MiB = 1024 * 1024;

/** An S3Store on a fresh prefix and spool directory, both removed on dispose. */
async function tempS3(options: { multipartAbove?: number } = {}) {
  const dir = await Deno.makeTempDir({ prefix: "s3_store_test_" });
  const s3 = await s3Settings();
  const store = await S3Store.open({ dir, s3 }, {
    clean: true,
    multipartAbove: options.multipartAbove,
    multipart: { partSize: 5 * MiB, inFlight: 2 },
  });
  return {
    dir,
    s3,
    store,
    async [Symbol.asyncDispose]() {
      await emptyPrefix(s3);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** A spool holding `bytes`, as a fill leaves it before commit. */
async function spoolOf(store: S3Store, bytes: Uint8Array): Promise<string> {
  const spool = await store.createSpool();
  for (let at = 0; at < bytes.length;) at += await spool.file.write(bytes.subarray(at));
  spool.file.close();
  return spool.path;
}

/** Multipart uploads begun and not completed under the prefix of `s3`. */
async function pendingUploads(s3: S3Config): Promise<number> {
  const client = new S3Client(s3);
  const response = await client.send("ListMultipartUploads", "GET", "", {
    query: { uploads: "", prefix: s3.prefix },
  });
  return (await response.text()).split("<Upload>").length - 1;
}

const options = skipUnless(RGW_TOOLS);

Deno.test({
  name: "s3 store: RGW refuses bytes that do not match the digest; nothing under the final key",
  ...options,
  async fn() {
    await using t = await tempS3();
    const bytes = patterned(2 * MiB, 31);
    const digest = sha256(bytes);
    const corrupt = bytes.slice();
    corrupt[MiB] ^= 1; // the spool changed after the fill verified it (a bad disk)
    const path = await spoolOf(t.store, corrupt);
    const error = await t.store.commitBlob(path, digest).then(() => undefined, (e) => e);
    ok(error instanceof S3Error, `an S3 error, got ${error}`);
    equal(error.code, "XAmzContentSHA256Mismatch");
    deepEqual(await keysUnder(t.s3), [], "nothing stored");
    equal(await t.store.openBlob(digest), undefined);
    // The same bytes under their own digest go in.
    const good = await putBlob(t.store, bytes);
    deepEqual(await keysUnder(t.s3), [`blobs/sha256/${good.slice(7)}`]);
  },
});

Deno.test({
  name: "s3 store: a blob gone between its HEAD and its GET fails before any byte, as a 503",
  ...options,
  async fn() {
    await using t = await tempS3();
    const digest = await putBlob(t.store, patterned(MiB, 33));
    const blob = await t.store.openBlob(digest);
    ok(blob);
    await t.store.delete("blob", digest); // evicted by another replica meanwhile
    const error = await blob.stream().then(() => undefined, (e) => e);
    ok(error instanceof RegistryError, `a registry error, got ${error}`);
    deepEqual([error.status, error.code], [503, "UNAVAILABLE"]);
    match(error.message, /the cache's bucket is unavailable \(it answered 404 NoSuchKey\)/);
  },
});

Deno.test({
  name: "s3 store: a blob above the multipart threshold goes up in parts and reads back whole",
  ...options,
  async fn() {
    await using t = await tempS3({ multipartAbove: 6 * MiB });
    const bytes = patterned(13 * MiB + 5, 32);
    const digest = await putBlob(t.store, bytes);
    const blob = await t.store.openBlob(digest);
    ok(blob);
    equal(blob.size, bytes.length);
    assertBody(await readAll(await blob.stream()), bytes);
    const part = await t.store.openBlob(digest);
    assertBody(
      await readAll(await part!.stream(5 * MiB - 3, 10 * MiB + 3)),
      bytes.subarray(5 * MiB - 3, 10 * MiB + 3),
    );
    equal(await pendingUploads(t.s3), 0);
  },
});

Deno.test({
  name: "s3 store: a multipart upload whose file does not match the digest is aborted",
  ...options,
  async fn() {
    await using t = await tempS3({ multipartAbove: 6 * MiB });
    const bytes = patterned(11 * MiB, 33);
    const corrupt = bytes.slice();
    corrupt[10 * MiB] ^= 1;
    const path = await spoolOf(t.store, corrupt);
    await rejects(t.store.commitBlob(path, sha256(bytes)), /does not match/);
    deepEqual(await keysUnder(t.s3), [], "nothing stored");
    equal(await pendingUploads(t.s3), 0, "the upload was aborted");
  },
});

Deno.test({
  name: "s3 store: objects the store does not know in the bucket are skipped",
  ...options,
  async fn() {
    await using t = await tempS3();
    const blob = await putBlob(t.store, patterned(100, 34));
    const client = new S3Client(t.s3);
    for (const key of ["README", "blobs/sha256/zz", "blobs/md5/abc", "tags/docker.io/x/broken"]) {
      await (await client.send("PutObject", "PUT", t.s3.prefix + key, { body: "junk" })).body
        ?.cancel();
    }
    const objects = [];
    for await (const info of t.store.list()) objects.push([info.kind, info.digest, info.size]);
    deepEqual(objects, [["blob", blob, 100]]);
    const tags = [];
    for await (const tag of t.store.listTags()) tags.push(tag);
    deepEqual(tags, []);
  },
});

Deno.test({
  name: "s3 store: a missing bucket and wrong credentials fail at open, saying which",
  ...options,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "s3_store_test_" });
    try {
      const s3 = await s3Settings();
      await rejects(
        S3Store.open({ dir, s3: { ...s3, bucket: "no-such-bucket" } }, { clean: true }),
        (e: Error) => {
          match(e.message, /bucket "no-such-bucket" at http:\/\/127\.0\.0\.1:\d+ does not exist/);
          return true;
        },
      );
      await rejects(
        S3Store.open({ dir, s3: { ...s3, secretAccessKey: "wrong-secret" } }, { clean: true }),
        (e: Error) => {
          match(e.message, /refused the credentials \(SignatureDoesNotMatch\)/);
          ok(!e.message.includes("wrong-secret"), "the secret is never in a message");
          return true;
        },
      );
      await rejects(
        S3Store.open({ dir, s3: { ...s3, accessKeyId: "nobody" } }, { clean: true }),
        /refused the credentials \(InvalidAccessKeyId\)/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "s3 store: list() reads access times from the listings, not one request per object",
  ...options,
  async fn() {
    await using t = await tempS3();
    const digests: string[] = [];
    for (let i = 0; i < 20; i++) {
      const manifest = new TextEncoder().encode(`{"schemaVersion":2,"n":${i}}`);
      digests.push(sha256(manifest));
      await t.store.putManifest(digests[i], manifest);
      await t.store.touch("manifest", digests[i], Date.now());
    }
    const requests: string[] = [];
    const send = t.store.client.send.bind(t.store.client);
    t.store.client.send = (operation, ...rest) => {
      requests.push(operation);
      return send(operation, ...rest);
    };
    const listed = [];
    for await (const info of t.store.list()) listed.push(info);
    deepEqual(listed.map((o) => o.digest).sort(), [...digests].sort());
    ok(listed.every((o) => o.accessedMs > 0));
    // One listing of access/, one of blobs/, one of manifests/ (a page each: under 1000 keys).
    deepEqual(requests, ["ListObjectsV2", "ListObjectsV2", "ListObjectsV2"]);
  },
});

Deno.test({
  name:
    "s3 store: an access time left from before an eviction does not make the blob stored again look old",
  ...options,
  async fn() {
    await using t = await tempS3();
    const bytes = patterned(1000, 35);
    const digest = await putBlob(t.store, bytes);
    await t.store.delete("blob", digest); // evicted...
    await t.store.touch("blob", digest, Date.now()); // ...and a replica's late touch lands after it
    const [orphan] = await collectList(t.store); // nothing listed: the blob is gone
    equal(orphan, undefined);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const stored = Date.now();
    await putBlob(t.store, bytes);
    const [listed] = await collectList(t.store);
    equal(listed.digest, digest);
    ok(listed.accessedMs >= stored, `accessed ${listed.accessedMs}, stored again at ${stored}`);
  },
});

async function collectList(store: S3Store) {
  const out = [];
  for await (const info of store.list()) out.push(info);
  return out;
}
