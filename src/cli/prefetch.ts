// `registry-mirror prefetch IMAGE...`: warms the cache with every platform of each image.

import { MODERN_MANIFEST_TYPES } from "../oci/media_types.ts";
import { type ImageReference, parseImageReference } from "../oci/reference.ts";
import { formatBytes, formatDuration, formatRate } from "./format.ts";
import { lineProgress, type Progress, terminalProgress, type Transfer } from "./progress.ts";

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

/** How prefetch shows its progress. */
export interface PrefetchOptions {
  /**
   * Where output goes: default, live per-layer lines on stdout when it is a terminal, else one
   * line per image through `print`.
   */
  progress?: Progress;
}

/** Blobs fetched at the same time. */
const PARALLEL = 3;

/**
 * Pulls each image through `handler` (the mirror itself, in this process): its manifest, every
 * child manifest of an index, and every config and layer blob. Prints one line per image and a
 * total; on a terminal, every layer's bytes and rate as it downloads.
 */
export async function prefetch(
  handler: Handler,
  images: string[],
  print: (line: string) => void,
  options: PrefetchOptions = {},
): Promise<PrefetchTotals> {
  const progress = options.progress ??
    (Deno.stdout.isTerminal() ? terminalProgress(writeStdout) : lineProgress(print));
  const totals: PrefetchTotals = { manifests: 0, blobs: 0, bytes: 0, fetched: 0, failed: [] };
  for (const text of images) {
    const ref = parseImageReference(text);
    if (typeof ref === "string") {
      totals.failed.push(ref);
      progress.line(`error: ${ref}`);
      continue;
    }
    const image: ImageWork = { text, ref, progress, totals, platforms: [] };
    const before = { ...totals };
    const started = progress.now();
    try {
      await prefetchManifest(handler, image, ref.reference, "");
      progress.line(imageSummary(image, before, progress.now() - started));
    } catch (e) {
      totals.failed.push(`${text}: ${(e as Error).message}`);
      progress.line(`error: ${text}: ${(e as Error).message}`);
    }
  }
  progress.line(
    `prefetched ${images.length - totals.failed.length} of ${images.length} images: ` +
      `${totals.manifests} manifests, ${totals.blobs} blobs, ${formatBytes(totals.bytes)} ` +
      `(${formatBytes(totals.fetched)} from upstream)`,
  );
  return totals;
}

/** One image being prefetched, and where its counts go. */
interface ImageWork {
  text: string;
  ref: ImageReference;
  progress: Progress;
  totals: PrefetchTotals;
  /** The platforms of an index's children, as they are pulled. */
  platforms: string[];
}

/**
 * `quay.io/org/app:1: 3 manifests (linux/amd64, linux/arm64), 4 blobs, 2.0 MiB (1.0 MiB from
 * upstream) in 1.2 s, 1.7 MiB/s`.
 */
function imageSummary(image: ImageWork, before: PrefetchTotals, ms: number): string {
  const { totals } = image;
  const bytes = totals.bytes - before.bytes;
  const platforms = image.platforms.length ? ` (${image.platforms.join(", ")})` : "";
  return `${image.text}: ${totals.manifests - before.manifests} manifests${platforms}, ` +
    `${totals.blobs - before.blobs} blobs, ${formatBytes(bytes)} ` +
    `(${formatBytes(totals.fetched - before.fetched)} from upstream) in ${formatDuration(ms)}, ` +
    formatRate(bytes, ms);
}

async function prefetchManifest(
  handler: Handler,
  image: ImageWork,
  reference: string,
  platform: string,
): Promise<void> {
  const { ref, totals } = image;
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
    image.platforms.push(label);
    await prefetchManifest(handler, image, child.digest, label);
  }
  const blobs = [manifest.config, ...(manifest.layers ?? [])].filter((d): d is Descriptor => !!d);
  let next = 0;
  const worker = async () => {
    while (next < blobs.length) {
      await prefetchBlob(handler, image, blobs[next++], platform || "-");
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
}

async function prefetchBlob(
  handler: Handler,
  image: ImageWork,
  blob: Descriptor,
  label: string,
): Promise<void> {
  const { progress, totals } = image;
  const got = await handler(request(image.ref, `blobs/${blob.digest}`));
  if (!got.ok) {
    await got.body?.cancel();
    throw new Error(`blob ${blob.digest}: ${got.status}`);
  }
  const length = Number(got.headers.get("content-length") ?? NaN);
  const transfer: Transfer = {
    label,
    digest: blob.digest,
    size: blob.size ?? (Number.isFinite(length) ? length : undefined),
    received: 0,
    started: progress.now(),
  };
  progress.start(transfer);
  const cached = got.headers.get("x-cache") === "HIT";
  try {
    for await (const chunk of got.body!) {
      transfer.received += chunk.byteLength;
      progress.update(transfer);
    }
  } catch (e) {
    progress.finish(transfer);
    throw e;
  }
  totals.blobs++;
  totals.bytes += transfer.received;
  if (!cached) totals.fetched += transfer.received;
  progress.finish(
    transfer,
    `  ${label} ${blob.digest.slice(0, 19)}  ${formatBytes(transfer.received)}  ` +
      `${cached ? "cached" : "fetched"}  ${
        formatRate(transfer.received, progress.now() - transfer.started)
      }`,
  );
}

function request(ref: ImageReference, tail: string, accept?: string): Request {
  const url = `http://prefetch.invalid/v2/${ref.name}/${tail}?ns=${
    encodeURIComponent(ref.registry)
  }`;
  return new Request(url, {
    headers: { "user-agent": "registry-mirror-prefetch", ...(accept ? { accept } : {}) },
  });
}

const encoder = new TextEncoder();

function writeStdout(text: string): void {
  const bytes = encoder.encode(text);
  let written = 0;
  while (written < bytes.length) written += Deno.stdout.writeSync(bytes.subarray(written));
}
