// The benchmark's fixed surroundings: a Distribution origin seeded with the blobs and manifests,
// and nginx (counting proxy to the origin, static server of the same blob files).

import { type Registry, startRegistry } from "../tests/fixtures/registry.ts";
import { MediaType, pushBlob, pushLargeBlobImage } from "../tests/fixtures/seed.ts";
import { type Nginx, startNginx } from "./nginx.ts";
import type { Options } from "./options.ts";

/** The repository every pull uses (Docker Hub's default routing: `/v2/library/bench/...`). */
export const REPO = "library/bench";

/** The Accept header every manifest request sends (what the seeded manifests are). */
export const MANIFEST_ACCEPT = MediaType.dockerManifest;

/** A seeded blob, by the tag of the image that holds it. */
export interface SeededBlob {
  tag: string;
  digest: string;
  size: number;
  /** Its URL path under a registry: `/v2/library/bench/blobs/<digest>`. */
  path: string;
  /** Its URL on the static nginx server (the origin's own file), read/write. */
  staticUrl: string;
  /** The same with sendfile(2). */
  sendfileUrl: string;
}

/** A blob pushed on its own (no image), for timing first bytes. */
export type LooseBlob = Pick<SeededBlob, "digest" | "size" | "path">;

/** Size of each blob whose time to first byte is timed (`Options.ttfbBlobs` of them). */
export const TTFB_BLOB_SIZE = 256 * 1024;

/** What every scenario runs against. */
export interface BenchEnv {
  /** The work directory. */
  dir: string;
  origin: Registry;
  nginx: Nginx;
  big: SeededBlob;
  mid: SeededBlob;
  small: SeededBlob;
  /** Blobs each pulled cold once per cache, to time the first byte. */
  ttfb: LooseBlob[];
  /** A manifest tag the origin holds. */
  manifestTag: string;
  stop(): Promise<void>;
}

function blobFile(origin: Registry, digest: string): string {
  const hex = digest.slice("sha256:".length);
  return `${origin.dataDir}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
}

/**
 * Starts the origin, seeds it (three images of the option's sizes, and the loose blobs whose first
 * byte is timed) and starts nginx.
 */
export async function setUp(dir: string, opts: Options): Promise<BenchEnv> {
  const origin = await startRegistry({ dir: `${dir}/origin` });
  let nginx: Nginx | undefined;
  try {
    nginx = await startNginx(`${dir}/nginx`, origin.url);
    const seeded = async (tag: string, size: number): Promise<SeededBlob> => {
      const image = await pushLargeBlobImage(origin.url, REPO, tag, size, { dir });
      const { digest } = image.blob;
      await Deno.symlink(blobFile(origin, digest), `${dir}/nginx/static/${tag}`);
      return {
        tag,
        digest,
        size,
        path: `/v2/${REPO}/blobs/${digest}`,
        staticUrl: `${nginx!.staticUrl}/${tag}`,
        sendfileUrl: `${nginx!.sendfileUrl}/${tag}`,
      };
    };
    const small = await seeded("small", opts.smallSize);
    const mid = await seeded("mid", opts.midSize);
    const big = await seeded("big", opts.size);
    const ttfb: LooseBlob[] = [];
    for (let i = 0; i < opts.ttfbBlobs; i++) {
      const bytes = new Uint8Array(TTFB_BLOB_SIZE);
      crypto.getRandomValues(bytes.subarray(0, 65536));
      const { digest, size } = await pushBlob(origin.url, REPO, bytes);
      ttfb.push({ digest, size, path: `/v2/${REPO}/blobs/${digest}` });
    }
    const running = nginx;
    return {
      dir,
      origin,
      nginx: running,
      big,
      mid,
      small,
      ttfb,
      manifestTag: "small",
      stop: async () => {
        await running.stop();
        await origin.stop();
      },
    };
  } catch (e) {
    await nginx?.stop();
    await origin.stop();
    throw e;
  }
}

/** Bytes the origin sent through the counting proxy since `mark`, and how many requests. */
export function originTraffic(env: BenchEnv, mark: number): { bytes: number; requests: number } {
  const requests = env.nginx.requestsSince(mark);
  return { bytes: requests.reduce((sum, r) => sum + r.bytes, 0), requests: requests.length };
}
