// A small S3 client for one bucket: SigV4-signed requests (aws4fetch), S3 errors with their code,
// and uploads of files with a Content-Length (node:http: Deno's fetch sends stream bodies chunked).

import { AwsV4Signer } from "aws4fetch";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import http from "node:http";
import https from "node:https";

/** Where the bucket is and how to sign for it. */
export interface S3Settings {
  endpoint: URL;
  region: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  /** Bucket in the path (`endpoint/bucket/key`) rather than the host (`bucket.endpoint/key`). */
  forcePathStyle: boolean;
}

/** Told of every request: its S3 operation, the status (0: no answer) and the time to headers. */
export type S3Observer = (operation: string, status: number, seconds: number) => void;

/** An S3 request that failed: the operation, the key, the status and S3's error code. */
export class S3Error extends Error {
  readonly status: number;
  readonly code: string;

  constructor(operation: string, key: string, status: number, code: string, detail = "") {
    super(`S3 ${operation} ${key || "(bucket)"}: ${status} ${code}${detail && `: ${detail}`}`);
    this.name = "S3Error";
    this.status = status;
    this.code = code;
  }
}

/** What one request sends. */
export interface S3Request {
  query?: Record<string, string>;
  headers?: Record<string, string>;
  /** Small bodies only (a buffer is signed with its own sha256): blobs go through `putFile`. */
  body?: Uint8Array<ArrayBuffer> | string;
  /** Statuses that are answers rather than errors (default: 200 and 206; 204 for DELETE). */
  expect?: number[];
}

/** A request whose response headers (or an upload making no progress) take longer is aborted. */
const HEADERS_TIMEOUT_MS = 30_000;
/** The sha256 of an empty payload. */
const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/** An S3 client bound to one bucket. */
export class S3Client {
  readonly settings: S3Settings;
  /** Set by whoever counts requests (metrics). */
  observe?: S3Observer;
  /** Derived signing keys, shared by every request of this client (aws4fetch's cache). */
  readonly #keys = new Map<string, ArrayBuffer>();

  constructor(settings: S3Settings) {
    this.settings = settings;
  }

  /** The URL of `key` (path style when asked for, or when the endpoint is an address). */
  url(key: string, query: Record<string, string> = {}): URL {
    const { endpoint, bucket } = this.settings;
    const path = key.split("/").map(encodeURIComponent).join("/");
    const base = endpoint.pathname.replace(/\/+$/, "");
    const url = new URL(endpoint.href);
    if (pathStyle(this.settings)) url.pathname = `${base}/${bucket}/${path}`;
    else {
      url.hostname = `${bucket}.${endpoint.hostname}`;
      url.pathname = `${base}/${path}`;
    }
    for (const [name, value] of Object.entries(query)) url.searchParams.set(name, value);
    return url;
  }

  /**
   * Sends one signed request; an unexpected status throws an S3Error (the body is read for S3's
   * code). The caller consumes the body of the response it gets.
   */
  async send(operation: string, method: string, key: string, init: S3Request = {}) {
    const url = this.url(key, init.query);
    const body = typeof init.body === "string" ? new TextEncoder().encode(init.body) : init.body;
    const headers = await this.#sign(method, url, {
      ...init.headers,
      "x-amz-content-sha256": body
        ? createHash("sha256").update(body).digest("hex")
        : init.headers?.["x-amz-content-sha256"] ?? EMPTY_SHA256,
    });
    const began = performance.now();
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), HEADERS_TIMEOUT_MS);
    let response: Response;
    try {
      response = await fetch(url, { method, headers, body, signal: abort.signal });
    } catch (e) {
      this.observe?.(operation, 0, (performance.now() - began) / 1000);
      throw new Error(`S3 ${operation} ${key}: no answer from ${this.settings.endpoint.origin}`, {
        cause: e,
      });
    } finally {
      clearTimeout(timer);
    }
    this.observe?.(operation, response.status, (performance.now() - began) / 1000);
    const expected = init.expect ?? (method === "DELETE" ? [204, 200] : [200, 206]);
    if (expected.includes(response.status)) return response;
    throw await errorOf(operation, key, response.status, await response.text());
  }

  /**
   * PUTs the file at `path` (`size` bytes) under `key` with its payload sha256: S3 refuses the
   * upload (nothing stored) when the bytes it received do not hash to `sha256`. Streamed from the
   * file with a Content-Length, so memory does not grow with the size.
   */
  async putFile(key: string, path: string, size: number, sha256: string): Promise<void> {
    const url = this.url(key);
    const headers = await this.#sign("PUT", url, {
      "content-length": String(size),
      "x-amz-content-sha256": sha256,
    });
    const began = performance.now();
    let answer: { status: number; text: string };
    try {
      answer = await new Promise((resolve, reject) => {
        const transport = url.protocol === "https:" ? https : http;
        const request = transport.request(url, { method: "PUT", headers }, (response) => {
          let text = "";
          response.setEncoding("utf8");
          response.on("data", (chunk: string) => text += chunk);
          response.on("end", () => resolve({ status: response.statusCode ?? 0, text }));
          response.on("error", reject);
        });
        request.on("error", reject);
        // An upload that makes no progress (S3 stopped reading or answering) is given up.
        request.setTimeout(HEADERS_TIMEOUT_MS, () => {
          request.destroy(new Error(`no progress for ${HEADERS_TIMEOUT_MS} ms`));
        });
        const file = createReadStream(path, { highWaterMark: 256 * 1024 });
        file.on("error", (e) => request.destroy(e));
        file.pipe(request);
      });
    } catch (e) {
      this.observe?.("PutObject", 0, (performance.now() - began) / 1000);
      throw new Error(`S3 PutObject ${key}: ${(e as Error).message}`, { cause: e });
    }
    this.observe?.("PutObject", answer.status, (performance.now() - began) / 1000);
    if (answer.status !== 200) throw await errorOf("PutObject", key, answer.status, answer.text);
  }

  /**
   * PUTs a small `body` under `key` only if no object has that key (`If-None-Match: *`): true when
   * created, false when the key exists (412). S3 decides atomically: of concurrent creates, one wins.
   */
  async createIfAbsent(key: string, body: string): Promise<boolean> {
    const response = await this.send("PutObject", "PUT", key, {
      body,
      headers: { "if-none-match": "*" },
      expect: [200, 412],
    });
    await response.body?.cancel();
    return response.status === 200;
  }

  /**
   * A GET URL of `key` that anyone holding it may use for `expiresSeconds` (a query-signed URL):
   * a credential, never to be logged.
   */
  async presign(key: string, expiresSeconds: number): Promise<string> {
    const url = this.url(key, { "X-Amz-Expires": String(expiresSeconds) });
    const signer = new AwsV4Signer({
      ...this.#credentials(),
      method: "GET",
      url: url.href,
      signQuery: true,
    });
    return (await signer.sign()).url.href;
  }

  async #sign(method: string, url: URL, headers: Record<string, string>) {
    const signer = new AwsV4Signer({ ...this.#credentials(), method, url: url.href, headers });
    const signed: Record<string, string> = {};
    (await signer.sign()).headers.forEach((value, name) => signed[name] = value);
    return signed;
  }

  #credentials() {
    const { accessKeyId, secretAccessKey, region } = this.settings;
    return { accessKeyId, secretAccessKey, region, service: "s3", cache: this.#keys };
  }
}

/** Fails with what is wrong when the bucket cannot be listed: missing, or the credentials. */
export async function checkBucket(client: S3Client, prefix: string): Promise<void> {
  const { bucket, endpoint } = client.settings;
  const where = `bucket "${bucket}" at ${endpoint.origin}`;
  try {
    const query = { "list-type": "2", "max-keys": "1", prefix };
    await (await client.send("ListObjectsV2", "GET", "", { query })).body?.cancel();
  } catch (e) {
    if (!(e instanceof S3Error)) {
      throw new Error(`cache.s3: cannot reach ${where}: ${(e as Error).message}`, { cause: e });
    }
    if (e.code === "NoSuchBucket") throw new Error(`cache.s3: ${where} does not exist`);
    if (e.status === 403) {
      throw new Error(
        `cache.s3: ${where} refused the credentials (${e.code}): check accessKeyId and ` +
          "secretAccessKey (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
      );
    }
    throw new Error(`cache.s3: cannot list ${where}: ${e.message}`, { cause: e });
  }
}

/** Path style when asked for, or when the endpoint is an IP address or localhost (no DNS names). */
function pathStyle(settings: S3Settings): boolean {
  const host = settings.endpoint.hostname;
  return settings.forcePathStyle || host === "localhost" || /^[\d.]+$|^\[/.test(host);
}

/** The S3Error of an answer: S3's `<Code>` and `<Message>` when the body has them. */
function errorOf(operation: string, key: string, status: number, body: string): S3Error {
  const [code] = xmlValues(body, "Code");
  const [message] = xmlValues(body, "Message");
  return new S3Error(operation, key, status, code ?? "(no code)", message);
}

/** The text of every `<tag>` element in `xml`, entities decoded (S3's answers are flat enough). */
export function xmlValues(xml: string, tag: string): string[] {
  const values: string[] = [];
  for (const [, text] of xml.matchAll(new RegExp(`<${tag}>([^<]*)</${tag}>`, "g"))) {
    values.push(
      text.replace(
        /&(lt|gt|quot|apos|amp|#(\d+));/g,
        (_, name, code) =>
          code
            ? String.fromCharCode(Number(code))
            : ({ lt: "<", gt: ">", quot: '"', apos: "'", amp: "&" } as Record<string, string>)[
              name
            ],
      ),
    );
  }
  return values;
}
