// RegistryError: the one error type, carrying an OCI error code and HTTP status, rendered as JSON.

/** OCI distribution-spec error codes, plus the few Distribution adds that clients know. */
export type ErrorCode =
  | "BLOB_UNKNOWN"
  | "BLOB_UPLOAD_UNKNOWN"
  | "DIGEST_INVALID"
  | "MANIFEST_UNKNOWN"
  | "MANIFEST_INVALID"
  | "NAME_INVALID"
  | "NAME_UNKNOWN"
  | "TAG_INVALID"
  | "PAGINATION_NUMBER_INVALID"
  | "RANGE_INVALID"
  | "UNAUTHORIZED"
  | "DENIED"
  | "UNSUPPORTED"
  | "TOOMANYREQUESTS"
  | "UNAVAILABLE"
  | "UNKNOWN";

/** Default status for each code, used when an upstream error body names a code but we re-emit it. */
const STATUS_BY_CODE: Record<ErrorCode, number> = {
  BLOB_UNKNOWN: 404,
  BLOB_UPLOAD_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  MANIFEST_INVALID: 400,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  TAG_INVALID: 400,
  PAGINATION_NUMBER_INVALID: 400,
  RANGE_INVALID: 416,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  UNAVAILABLE: 503,
  UNKNOWN: 500,
};

/** True when `code` is one of the codes above. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === "string" && code in STATUS_BY_CODE;
}

/** An error a client sees as `{"errors":[{code,message,detail}]}` with an HTTP status. */
export class RegistryError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly detail?: unknown;
  /** Extra response headers, e.g. Retry-After on 429. */
  readonly headers: Record<string, string>;

  constructor(
    code: ErrorCode,
    message: string,
    options: {
      status?: number;
      detail?: unknown;
      cause?: unknown;
      headers?: Record<string, string>;
    } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "RegistryError";
    this.code = code;
    this.status = options.status ?? STATUS_BY_CODE[code];
    this.detail = options.detail;
    this.headers = options.headers ?? {};
  }

  /** The JSON error response; HEAD responses carry the status and headers but no body. */
  toResponse(method = "GET"): Response {
    const body = JSON.stringify({
      errors: [{ code: this.code, message: this.message, detail: this.detail ?? null }],
    });
    const headers = new Headers({
      "content-type": "application/json; charset=utf-8",
      "docker-distribution-api-version": "registry/2.0",
      ...this.headers,
    });
    // A stated length lets the server send the body whole rather than chunked.
    const bytes = new TextEncoder().encode(body);
    headers.set("content-length", String(bytes.length));
    return new Response(method === "HEAD" ? null : bytes, { status: this.status, headers });
  }
}
