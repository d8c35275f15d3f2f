import { deepEqual, equal, match, ok } from "node:assert/strict";
import { digestOf } from "../oci/digest.ts";
import { OCI_INDEX, OCI_MANIFEST } from "../oci/media_types.ts";
import { type Handler, prefetch } from "./prefetch.ts";
import { lineProgress, terminalProgress } from "./progress.ts";

const encoder = new TextEncoder();
const MiB = 1 << 20;
/** Starts the terminal's control sequences. */
const ESC = "\x1b";

/**
 * A mirror in memory: `reg.test/org/multi:1`, an index of two platforms whose layers are 1 MiB
 * each, sent in 256 KiB chunks while `clock` advances 100 ms per chunk; the arm64 layer is cached.
 */
function fakeMirror(clock: { ms: number }) {
  const blobs = new Map<string, { bytes: Uint8Array; cached: boolean }>();
  const manifests = new Map<string, string>();
  const child = (arch: string) => {
    const config = encoder.encode(`config ${arch}`);
    const layer = new Uint8Array(MiB).fill(arch.charCodeAt(1));
    blobs.set(digestOf(config), { bytes: config, cached: false });
    blobs.set(digestOf(layer), { bytes: layer, cached: arch === "arm64" });
    const text = JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { digest: digestOf(config), size: config.length },
      layers: [{ digest: digestOf(layer), size: layer.length }],
    });
    const digest = digestOf(encoder.encode(text));
    manifests.set(digest, text);
    return { digest, platform: { os: "linux", architecture: arch } };
  };
  manifests.set(
    "1",
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [child("amd64"), child("arm64")],
    }),
  );
  const handler: Handler = (request) => {
    const url = new URL(request.url);
    equal(url.searchParams.get("ns"), "reg.test");
    const [, kind, reference] = /^\/v2\/org\/multi\/(manifests|blobs)\/(.+)$/.exec(url.pathname)!;
    if (kind === "manifests") {
      const text = manifests.get(reference);
      return Promise.resolve(new Response(text ?? "{}", { status: text ? 200 : 404 }));
    }
    const blob = blobs.get(reference)!;
    let offset = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (offset >= blob.bytes.length) return controller.close();
        controller.enqueue(blob.bytes.subarray(offset, offset + MiB / 4));
        offset += MiB / 4;
        clock.ms += 100;
      },
    });
    return Promise.resolve(
      new Response(body, {
        headers: {
          "content-length": String(blob.bytes.length),
          "x-cache": blob.cached ? "HIT" : "MISS",
        },
      }),
    );
  };
  return handler;
}

Deno.test("prefetch, not a terminal: one summary line per image, then the total", async () => {
  const clock = { ms: 0 };
  const lines: string[] = [];
  const progress = lineProgress((line) => lines.push(line), () => clock.ms);
  const totals = await prefetch(
    fakeMirror(clock),
    ["reg.test/org/multi:1", "reg.test/org/multi:404", "Not An Image"],
    () => {
      throw new Error("the progress prints");
    },
    { progress },
  );
  equal(totals.blobs, 4);
  equal(totals.failed.length, 2);
  equal(lines.length, 4, lines.join("\n"));
  match(
    lines[0],
    /^reg\.test\/org\/multi:1: 3 manifests \(linux\/amd64, linux\/arm64\), 4 blobs, 2\.0 MiB \(1\.0 MiB from upstream\) in 1\.0 s, 2\.0 MiB\/s$/,
  );
  match(lines[1], /^error: reg\.test\/org\/multi:404: manifest 404: 404/);
  match(lines[2], /^error: .*Not An Image/);
  match(
    lines[3],
    /^prefetched 1 of 3 images: 3 manifests, 4 blobs, 2\.0 MiB \(1\.0 MiB from upstream\)$/,
  );
});

Deno.test("prefetch on a terminal: live per-layer bytes and rate, a line per finished blob", async () => {
  const clock = { ms: 0 };
  let out = "";
  const progress = terminalProgress((text) => out += text, { now: () => clock.ms, columns: 120 });
  await prefetch(fakeMirror(clock), ["reg.test/org/multi:1"], () => {}, { progress });
  // Live lines are redrawn in place: up over the block, erase each line, write it again.
  ok(new RegExp(`${ESC}\\[\\dA`).test(out), "the cursor moves back up over the live lines");
  ok(out.includes(`${ESC}[2K  linux/amd64 sha256:`), "a live line is erased and written again");
  const final = out.split("\n").map((l) =>
    l.replaceAll(new RegExp(`${ESC}\\[[0-9;]*[A-Za-z]|\r`, "g"), "")
  );
  ok(
    final.some((l) =>
      /^ {2}linux\/amd64 sha256:[0-9a-f]{12} {2}512\.0 KiB \/ 1\.0 MiB {2}50% {2}2\.5 MiB\/s$/.test(
        l,
      )
    ),
    "bytes received of the size, percentage and rate while it downloads",
  );
  const done = final.filter((l) => / (fetched|cached) /.test(l));
  equal(done.length, 4, done.join("\n"));
  ok(
    done.some((l) =>
      /^ {2}linux\/arm64 sha256:[0-9a-f]{12} {2}1\.0 MiB {2}cached {2}[\d.]+ MiB\/s$/.test(l)
    ),
  );
  deepEqual(final.filter((l) => l.startsWith("prefetched")), [
    "prefetched 1 of 1 images: 3 manifests, 4 blobs, 2.0 MiB (1.0 MiB from upstream)",
  ]);
  ok(
    final.some((l) => l.startsWith("reg.test/org/multi:1: 3 manifests (linux/amd64, linux/arm64)")),
  );
});
