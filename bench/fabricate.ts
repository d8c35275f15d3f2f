// Fills a mirror cache directory with many small, real objects (blobs and manifests named by the
// sha256 of their content, with repository links), written straight into its on-disk layout.

import { createHash, randomFillSync } from "node:crypto";

/** What {@linkcode fabricateCache} wrote. */
export interface Fabricated {
  /** A blob digest linked to `repository`: a GET of it must be a cache HIT. */
  probeDigest: string;
  blobs: number;
  manifests: number;
  bytes: number;
}

const MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json";

function hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Runs `task(i)` for i in [0, count) with at most `parallel` at a time. */
async function pool(count: number, parallel: number, task: (i: number) => Promise<void>) {
  let next = 0;
  const worker = async () => {
    while (next < count) await task(next++);
  };
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
}

/**
 * Writes `objects` objects under `dir` (half blobs of 64 to 1087 random bytes, half manifests
 * referencing them), each linked to `registry`/`repository` as if pulled through it.
 */
export async function fabricateCache(
  dir: string,
  objects: number,
  target: { registry: string; repository: string },
): Promise<Fabricated> {
  const links = `${dir}/links/${target.registry}/${encodeURIComponent(target.repository)}`;
  for (const sub of ["blobs/sha256", "manifests/sha256", "tags", "tmp", links]) {
    await Deno.mkdir(sub.startsWith("/") ? sub : `${dir}/${sub}`, { recursive: true });
  }
  const encoder = new TextEncoder();
  let bytes = 0;
  let blobs = 0;
  let probeDigest = "";
  const writeBlob = async (): Promise<{ digest: string; size: number }> => {
    const content = new Uint8Array(64 + Math.floor(Math.random() * 1024));
    randomFillSync(content);
    const name = hex(content);
    await Deno.writeFile(`${dir}/blobs/sha256/${name}`, content);
    await Deno.writeFile(`${links}/sha256-${name}`, new Uint8Array());
    bytes += content.length;
    blobs++;
    return { digest: `sha256:${name}`, size: content.length };
  };
  const pairs = Math.ceil(objects / 2);
  await pool(pairs, 64, async (i) => {
    const layer = await writeBlob();
    if (i === 0) probeDigest = layer.digest;
    if (2 * i + 1 >= objects) return;
    const manifest = encoder.encode(JSON.stringify({
      schemaVersion: 2,
      mediaType: MANIFEST_TYPE,
      config: {
        mediaType: "application/vnd.docker.container.image.v1+json",
        size: layer.size,
        digest: layer.digest,
      },
      layers: [{
        mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip",
        size: layer.size,
        digest: layer.digest,
      }],
    }));
    const name = hex(manifest);
    const stored = encoder.encode(`${MANIFEST_TYPE}\n`);
    const data = new Uint8Array(stored.length + manifest.length);
    data.set(stored);
    data.set(manifest, stored.length);
    await Deno.writeFile(`${dir}/manifests/sha256/${name}`, data);
    await Deno.writeFile(`${links}/sha256-${name}`, new Uint8Array());
    bytes += data.length;
  });
  return { probeDigest, blobs, manifests: objects - blobs, bytes };
}
