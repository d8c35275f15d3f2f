// Maps an upstream's non-success answer to the RegistryError the client sees.

import { readLimited } from "../body.ts";
import { type ErrorCode, isErrorCode, RegistryError } from "../oci/errors.ts";

/** Largest upstream error body read for its OCI error code. */
const MAX_ERROR_BODY = 64 * 1024;

/** What was asked for, to pick the code of a 404 without a usable body. */
export type Wanted = "manifest" | "blob" | "repository";

const UNKNOWN_CODE: Record<Wanted, ErrorCode> = {
  manifest: "MANIFEST_UNKNOWN",
  blob: "BLOB_UNKNOWN",
  repository: "NAME_UNKNOWN",
};

/**
 * A RegistryError for an upstream response that is not a success. 404/401/403/429/416 keep their
 * status and the upstream's OCI code; 5xx become 502 (503 stays 503) naming the upstream.
 */
export async function upstreamError(
  response: Response,
  registry: string,
  wanted: Wanted,
): Promise<RegistryError> {
  const status = response.status;
  const upstream = await upstreamErrorBody(response);
  const headers: Record<string, string> = {};
  const retryAfter = response.headers.get("retry-after");
  if (retryAfter) headers["retry-after"] = retryAfter;
  const contentRange = response.headers.get("content-range");
  if (contentRange) headers["content-range"] = contentRange;
  const detail = upstream?.detail;
  const say = (fallback: string) => `${registry}: ${upstream?.message || fallback}`;
  switch (status) {
    case 401:
      return new RegistryError("UNAUTHORIZED", say("upstream requires authorization"), { detail });
    case 403:
      return new RegistryError("DENIED", say("upstream denied access"), { detail });
    case 404:
      return new RegistryError(upstream?.code ?? UNKNOWN_CODE[wanted], say(`${wanted} unknown`), {
        detail,
      });
    case 416:
      return new RegistryError("RANGE_INVALID", say("range not satisfiable"), { headers });
    case 429:
      return new RegistryError("TOOMANYREQUESTS", say("upstream rate limit reached"), {
        headers,
        detail,
      });
  }
  if (status >= 400 && status < 500) {
    return new RegistryError(upstream?.code ?? "UNKNOWN", say(`upstream answered ${status}`), {
      status,
      detail,
    });
  }
  return new RegistryError(
    "UNAVAILABLE",
    `upstream ${registry} answered ${status}${upstream?.message ? `: ${upstream.message}` : ""}`,
    { status: status === 503 ? 503 : 502, headers },
  );
}

/** The first OCI error of an upstream's JSON error body, if it has one. */
async function upstreamErrorBody(
  response: Response,
): Promise<{ code?: ErrorCode; message?: string; detail?: unknown } | undefined> {
  const bytes = await readLimited(response.body, MAX_ERROR_BODY).catch(() => undefined);
  if (!bytes?.length) return undefined;
  try {
    const first = JSON.parse(new TextDecoder().decode(bytes))?.errors?.[0];
    if (typeof first !== "object" || first === null) return undefined;
    return {
      code: isErrorCode(first.code) ? first.code : undefined,
      message: typeof first.message === "string" ? first.message.slice(0, 500) : undefined,
      detail: first.detail,
    };
  } catch {
    return undefined;
  }
}
