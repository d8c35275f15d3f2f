import { deepEqual, equal } from "node:assert/strict";
import { upstreamError } from "./errors.ts";

function upstream(status: number, body?: unknown, headers?: Record<string, string>): Response {
  return new Response(body === undefined ? null : JSON.stringify(body), { status, headers });
}

const notFound = {
  errors: [{ code: "MANIFEST_UNKNOWN", message: "manifest unknown", detail: "x" }],
};

Deno.test("error mapping: client errors keep their status and the upstream's OCI code", async () => {
  const cases: [Response, string, number, string][] = [
    [upstream(404, notFound), "blob", 404, "MANIFEST_UNKNOWN"],
    [upstream(404), "blob", 404, "BLOB_UNKNOWN"],
    [upstream(404, "not json"), "manifest", 404, "MANIFEST_UNKNOWN"],
    [upstream(404), "repository", 404, "NAME_UNKNOWN"],
    [
      upstream(401, { errors: [{ code: "UNAUTHORIZED", message: "auth" }] }),
      "manifest",
      401,
      "UNAUTHORIZED",
    ],
    [upstream(403), "manifest", 403, "DENIED"],
    [upstream(429, undefined, { "retry-after": "7" }), "manifest", 429, "TOOMANYREQUESTS"],
    [upstream(416, undefined, { "content-range": "bytes */10" }), "blob", 416, "RANGE_INVALID"],
    [upstream(400, { errors: [{ code: "NAME_INVALID" }] }), "manifest", 400, "NAME_INVALID"],
  ];
  for (const [response, wanted, status, code] of cases) {
    const e = await upstreamError(response, "quay.io", wanted as "blob");
    deepEqual([e.status, e.code], [status, code], `${response.status} ${wanted}`);
    equal(e.message.startsWith("quay.io: "), true, e.message);
  }
});

Deno.test("error mapping: 5xx become 502 (503 stays) naming the upstream; headers carried", async () => {
  const bad = await upstreamError(upstream(500), "ghcr.io", "blob");
  deepEqual([bad.status, bad.code, bad.message], [
    502,
    "UNAVAILABLE",
    "upstream ghcr.io answered 500",
  ]);
  const busy = await upstreamError(
    upstream(503, undefined, { "retry-after": "3" }),
    "ghcr.io",
    "blob",
  );
  deepEqual([busy.status, busy.headers["retry-after"]], [503, "3"]);
  const limited = await upstreamError(
    upstream(429, undefined, { "retry-after": "7" }),
    "x",
    "blob",
  );
  equal(limited.toResponse().headers.get("retry-after"), "7");
  const range = await upstreamError(
    upstream(416, undefined, { "content-range": "bytes */10" }),
    "x",
    "blob",
  );
  equal(range.toResponse().headers.get("content-range"), "bytes */10");
});

Deno.test("error mapping: the JSON body clients get", async () => {
  const e = await upstreamError(upstream(404, notFound), "docker.io", "manifest");
  const response = e.toResponse();
  equal(response.headers.get("content-type"), "application/json; charset=utf-8");
  deepEqual(await response.json(), {
    errors: [{ code: "MANIFEST_UNKNOWN", message: "docker.io: manifest unknown", detail: "x" }],
  });
  const head = e.toResponse("HEAD");
  equal(head.body, null);
  equal(head.status, 404);
});
