import { deepEqual, equal } from "node:assert/strict";
import { putBlob, sha256, tempStore } from "../cache/_test_support.ts";
import { OCI_INDEX, OCI_MANIFEST } from "../oci/media_types.ts";
import { cacheDu, cacheLs } from "./cache_commands.ts";

async function seeded() {
  const t = await tempStore();
  const manifest = new TextEncoder().encode('{"schemaVersion":2}');
  const digest = sha256(manifest);
  await t.store.putManifest(digest, manifest);
  const blob = await putBlob(t.store, new Uint8Array(3000));
  const checkedAt = Date.UTC(2026, 0, 2, 3, 4, 5);
  await t.store.putTag("quay.io", "org/app", "1", {
    digest,
    mediaType: OCI_MANIFEST,
    size: manifest.length,
    checkedAt,
  });
  await t.store.putTag("docker.io", "library/alpine", "3", {
    digest,
    mediaType: OCI_INDEX,
    size: manifest.length,
    checkedAt,
  });
  return { t, digest, blob, manifestSize: manifest.length };
}

function printed(): { lines: string[]; print: (line: string) => void } {
  const lines: string[] = [];
  return { lines, print: (line) => lines.push(line) };
}

Deno.test("cache ls: a line per tag and a count; --json one document of every field", async () => {
  const { t, digest } = await seeded();
  await using _ = t;
  const text = printed();
  await cacheLs(t.store, text.print);
  deepEqual(text.lines, [
    `docker.io/library/alpine:3\t${digest}\t${OCI_INDEX}\t2026-01-02T03:04:05.000Z`,
    `quay.io/org/app:1\t${digest}\t${OCI_MANIFEST}\t2026-01-02T03:04:05.000Z`,
    "2 tags",
  ]);
  const json = printed();
  await cacheLs(t.store, json.print, { json: true });
  equal(json.lines.length, 1);
  deepEqual(JSON.parse(json.lines[0]), {
    tags: [
      {
        image: "docker.io/library/alpine:3",
        registry: "docker.io",
        repository: "library/alpine",
        tag: "3",
        digest,
        mediaType: OCI_INDEX,
        checkedAt: "2026-01-02T03:04:05.000Z",
      },
      {
        image: "quay.io/org/app:1",
        registry: "quay.io",
        repository: "org/app",
        tag: "1",
        digest,
        mediaType: OCI_MANIFEST,
        checkedAt: "2026-01-02T03:04:05.000Z",
      },
    ],
  });
});

Deno.test("cache du: objects and bytes by kind; --json the same numbers", async () => {
  const { t, manifestSize } = await seeded();
  await using _ = t;
  const text = printed();
  await cacheDu(t.store, text.print);
  deepEqual(text.lines, [
    "blobs\t1\t3000\t2.9 KiB",
    `manifests\t1\t${manifestSize}\t${manifestSize} B`,
    `total\t2\t${3000 + manifestSize}\t2.9 KiB`,
  ]);
  const json = printed();
  await cacheDu(t.store, json.print, { json: true });
  deepEqual(JSON.parse(json.lines.join("\n")), {
    blobs: { objects: 1, bytes: 3000 },
    manifests: { objects: 1, bytes: manifestSize },
    total: { objects: 2, bytes: 3000 + manifestSize },
  });
});
