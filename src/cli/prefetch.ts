// `registry-mirror prefetch IMAGE...`: warms the cache with every platform of each image.

import { MODERN_MANIFEST_TYPES } from "../oci/media_types.ts";
import { type ImageReference, parseImageReference } from "../oci/reference.ts";
import { formatBytes } from "./format.ts";

/** The mirror's request handler (createApp's result). */
export type Handler = (request: Request) => Promise<Response>;

interface Descriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  platform?: { os?: string; architecture?: string; variant?: string };
}

/** What a prefetch did. */
export interface PrefetchTotals {
  manifests: number;
  blobs: number;
  bytes: number;
  /** Bytes that were not in the cache yet. */
  fetched: number;
  failed: string[];
}

/** Blobs fetched at the same time. */
const PARALLEL = 3;

/**
 * Pulls each image through `handler` (the mirror itself, in this process): its manifest, every
 * child manifest of an index, and every config and layer blob, printing a line per blob.
 */
export async function prefetch(
  handler: Handler,
  images: string[],
  print: (line: string) => void,
): Promise<PrefetchTotals> {
  const totals: PrefetchTotals = { manifests: 0, blobs: 0, bytes: 0, fetched: 0, failed: [] };
  for (const text of images) {
    const ref = parseImageReference(text);
    if (typeof ref === "string") {
      totals.failed.push(ref);
      print(`error: ${ref}`);
      continue;
    }
    try {
      await prefetchManifest(handler, ref, ref.reference, "", totals, print, text);
    } catch (e) {
      totals.failed.push(`${text}: ${(e as Error).message}`);
      print(`error: ${text}: ${(e as Error).message}`);
    }
  }
  print(
    `prefetched ${images.length - totals.failed.length} of ${images.length} images: ` +
      `${totals.manifests} manifests, ${totals.blobs} blobs, ${formatBytes(totals.bytes)} ` +
      `(${formatBytes(totals.fetched)} from upstream)`,
  );
  return totals;
}

async function prefetchManifest(
  handler: Handler,
  ref: ImageReference,
  reference: string,
  platform: string,
  totals: PrefetchTotals,
  print: (line: string) => void,
  image: string,
): Promise<void> {
  const response = await handler(
    request(ref, `manifests/${reference}`, MODERN_MANIFEST_TYPES.join(", ")),
  );
  const body = await response.text();
  if (!response.ok) throw new Error(`manifest ${reference}: ${response.status} ${body}`);
  totals.manifests++;
  const manifest = JSON.parse(body) as {
    manifests?: Descriptor[];
    config?: Descriptor;
    layers?: Descriptor[];
  };
  for (const child of manifest.manifests ?? []) {
    const p = child.platform;
    const label = p
      ? [p.os, p.architecture, p.variant].filter(Boolean).join("/")
      : child.digest.slice(7, 19);
    await prefetchManifest(handler, ref, child.digest, label, totals, print, image);
  }
  const blobs = [manifest.config, ...(manifest.layers ?? [])].filter((d): d is Descriptor => !!d);
  let next = 0;
  const worker = async () => {
    while (next < blobs.length) {
      const blob = blobs[next++];
      const got = await handler(request(ref, `blobs/${blob.digest}`));
      if (!got.ok) {
        await got.body?.cancel();
        throw new Error(`blob ${blob.digest}: ${got.status}`);
      }
      let size = 0;
      for await (const chunk of got.body!) size += chunk.byteLength;
      totals.blobs++;
      totals.bytes += size;
      if (got.headers.get("x-cache") !== "HIT") totals.fetched += size;
      print(
        `${image} ${platform || "-"} ${blob.digest.slice(0, 19)} ${formatBytes(size)} ` +
          `${got.headers.get("x-cache") === "HIT" ? "cached" : "fetched"} (${totals.blobs} blobs)`,
      );
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
}

function request(ref: ImageReference, tail: string, accept?: string): Request {
  const url = `http://prefetch.invalid/v2/${ref.name}/${tail}?ns=${
    encodeURIComponent(ref.registry)
  }`;
  return new Request(url, {
    headers: { "user-agent": "registry-mirror-prefetch", ...(accept ? { accept } : {}) },
  });
}
