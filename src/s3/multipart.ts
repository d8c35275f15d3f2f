// Multipart upload of a file too big for one PUT: parts read in order, each sent as a buffer with
// its own sha256, a bounded number in flight; the file's digest is checked before completion.

import { createHash } from "node:crypto";
import { type S3Client, S3Error, xmlValues } from "./client.ts";

/** How a multipart upload cuts and sends a file. */
export interface MultipartOptions {
  /** Bytes per part (S3: at least 5 MiB, except the last part; at most 10,000 parts). */
  partSize: number;
  /** Parts sent at once: memory holds at most this many parts (plus the one being read). */
  inFlight: number;
}

/**
 * Uploads the file at `path` (`size` bytes) under `key`. The object appears only once every part
 * is stored and the bytes read hash to `digest`; on any failure the upload is aborted.
 */
export async function putFileMultipart(
  client: S3Client,
  key: string,
  file: { path: string; size: number; digest: string },
  options: MultipartOptions,
): Promise<void> {
  const created = await client.send("CreateMultipartUpload", "POST", key, {
    query: { uploads: "" },
  });
  const [uploadId] = xmlValues(await created.text(), "UploadId");
  if (!uploadId) throw new S3Error("CreateMultipartUpload", key, created.status, "NoUploadId");
  try {
    const etags = await uploadParts(client, key, uploadId, file, options);
    const body = "<CompleteMultipartUpload>" +
      etags.map((etag, i) => `<Part><PartNumber>${i + 1}</PartNumber><ETag>${etag}</ETag></Part>`)
        .join("") +
      "</CompleteMultipartUpload>";
    const done = await client.send("CompleteMultipartUpload", "POST", key, {
      query: { uploadId },
      body,
    });
    // S3 may answer 200 and still fail, with an <Error> body.
    const text = await done.text();
    if (text.includes("<Error>")) {
      const [code] = xmlValues(text, "Code");
      throw new S3Error("CompleteMultipartUpload", key, done.status, code ?? "(no code)");
    }
  } catch (e) {
    await client.send("AbortMultipartUpload", "DELETE", key, { query: { uploadId } })
      .then((r) => r.body?.cancel())
      .catch(() => {}); // the bucket's lifecycle rules are the last resort
    throw e;
  }
}

/** Sends the parts; returns their ETags in order once the whole file matched its digest. */
async function uploadParts(
  client: S3Client,
  key: string,
  uploadId: string,
  { path, size, digest }: { path: string; size: number; digest: string },
  { partSize, inFlight }: MultipartOptions,
): Promise<string[]> {
  const [algorithm, hex] = digest.split(":");
  const whole = createHash(algorithm);
  const etags: string[] = [];
  const running = new Set<Promise<void>>();
  const failures: unknown[] = [];
  using reader = await Deno.open(path);
  try {
    for (
      let offset = 0, number = 1;
      offset < size && failures.length === 0;
      offset += partSize, number++
    ) {
      const part = new Uint8Array(Math.min(partSize, size - offset));
      for (let at = 0; at < part.length;) {
        const n = await reader.read(part.subarray(at));
        if (n === null) throw new Error(`${path} ended at ${offset + at} of ${size} bytes`);
        at += n;
      }
      whole.update(part);
      const index = number - 1;
      const task: Promise<void> = client.send("UploadPart", "PUT", key, {
        query: { partNumber: String(number), uploadId },
        body: part,
      }).then(async (response) => {
        await response.body?.cancel();
        etags[index] = response.headers.get("etag") ?? "";
      }, (error) => {
        failures.push(error);
      }).finally(() => running.delete(task));
      running.add(task);
      if (running.size >= inFlight) await Promise.race(running);
    }
  } finally {
    await Promise.all(running); // never rejects: failures are kept
  }
  if (failures.length > 0) throw failures[0];
  if (whole.digest("hex") !== hex) {
    throw new Error(`${path} does not match ${digest}: not stored`);
  }
  return etags;
}
