// route(): the pure routing function. Request + config -> which handler, registry, name and reference.

import { createHash, timingSafeEqual } from "node:crypto";
import { CLUSTER_PREFIX, PEER_PATH } from "./cluster/peer.ts";
import type { Config } from "./config.ts";
import { RegistryError } from "./oci/errors.ts";
import { isDigestReference, isValidDigest, isValidName, isValidTag } from "./oci/names.ts";

/** Where a repository request goes: the registry, and the repository name upstream. */
export interface Target {
  /** Registry name, a key of `config.registries`. */
  registry: string;
  /** Repository name as the upstream knows it (`library/` added on docker.io). */
  name: string;
}

/** The decision `route()` makes for one request. */
export type Route =
  | { kind: "base" }
  | { kind: "ops"; endpoint: OpsEndpoint }
  | Target & { kind: "manifest"; method: "GET" | "HEAD"; reference: string }
  | Target & { kind: "blob"; method: "GET" | "HEAD"; digest: string }
  | Target & {
    kind: "tags";
    n?: number;
    last?: string;
    /** The path the client used up to the name, for rewriting upstream `Link` headers. */
    clientPath: string;
    /** The client's `ns` parameter, kept on rewritten links. */
    ns?: string;
  }
  | Target & { kind: "referrers"; digest: string; artifactType?: string }
  /** Another replica asks for this replica's fill of a blob (authenticated by cluster.secret). */
  | { kind: "peer"; registry: string; digest: string };

/** The operator's endpoints, outside `/v2/`: a registry client never asks for them. */
export type OpsEndpoint = "dashboard" | "stats" | "metrics" | "healthz" | "readyz";
const OPS_PATHS: Record<string, OpsEndpoint> = {
  "/": "dashboard",
  "/api/stats": "stats",
  "/metrics": "metrics",
  "/healthz": "healthz",
  "/readyz": "readyz",
};

const DOCKER_HUB = "docker.io";
const MEDIA_TYPE = /^[a-zA-Z0-9][\w.+-]*\/[\w.+-]+$/;
/** Largest `n` passed on for a tags list page. */
const MAX_PAGE_SIZE = 999_999;

/**
 * Decides how to serve a request, in the order: `?ns=`, Host header, registry name after `/v2/`,
 * alias after `/v2/` (with at least two components after it), else Docker Hub. The direct form
 * `/<registry-or-alias>/v2/...` names the registry by its first segment. PURE: no I/O, no clock.
 */
export function route(request: Request, config: Config): Route | RegistryError {
  // Deno.serve builds request.url as "http://" + Host + target: a Host such as `x/healthz?` would
  // become the path. The raw target is not exposed, so any other Host is refused before routing.
  const host = request.headers.get("host");
  if (host && !isValidHost(host)) {
    return new RegistryError("UNSUPPORTED", `invalid Host header "${host}": expected host[:port]`, {
      status: 400,
    });
  }
  const url = URL.parse(request.url);
  if (url === null) {
    return new RegistryError("UNSUPPORTED", `invalid request URL "${request.url}"`, {
      status: 400,
    });
  }
  const endpoint = OPS_PATHS[url.pathname];
  if (endpoint && (request.method === "GET" || request.method === "HEAD")) {
    return { kind: "ops", endpoint };
  }
  if (endpoint) {
    return new RegistryError(
      "UNSUPPORTED",
      `${request.method} is not supported on ${url.pathname}`,
      { status: 405, headers: { allow: "GET, HEAD" } },
    );
  }
  if (url.pathname.startsWith(CLUSTER_PREFIX)) return peerRoute(request, url, config);
  const m = /^(?:\/([^/]+))?\/v2(?:\/(.*))?$/.exec(url.pathname);
  if (!m) {
    return new RegistryError("UNSUPPORTED", `no such endpoint: ${url.pathname}`, { status: 404 });
  }
  const [, prefix, rest = ""] = m;
  if (request.method !== "GET" && request.method !== "HEAD") {
    return new RegistryError(
      "UNSUPPORTED",
      `${request.method} is not supported: this mirror is read-only`,
      { status: 405, headers: { allow: "GET, HEAD" } },
    );
  }
  const ns = url.searchParams.get("ns") ?? undefined;
  const explicit = ns !== undefined
    ? lookup(config, ns, `unknown registry "${ns}" in ns=`)
    : prefix !== undefined
    ? lookup(config, prefix, `unknown registry "${prefix}" in path prefix`)
    : hostRegistry(request.headers.get("host") || url.host, config);
  if (explicit instanceof RegistryError) return explicit;
  if (rest === "") return { kind: "base" };

  const segments = rest.split("/");
  const op = operation(segments);
  if (op instanceof RegistryError) return op;
  let nameParts = segments.slice(0, segments.length - op.length);
  let registry = explicit;
  if (registry === undefined) {
    const first = nameParts[0];
    const aliased = config.aliases.get(first);
    if (nameParts.length >= 2 && config.registries.has(first)) {
      registry = first;
    } else if (nameParts.length >= 3 && aliased !== undefined) {
      registry = aliased;
    } else if (nameParts.length >= 2 && /[.:]/.test(first)) {
      return new RegistryError("NAME_UNKNOWN", `unknown registry "${first}" in path`);
    }
    if (registry !== undefined) nameParts = nameParts.slice(1);
  } else if (ns !== undefined && nameParts.length >= 2 && nameParts[0] === registry) {
    nameParts = nameParts.slice(1);
  }
  registry ??= DOCKER_HUB;
  if (!config.registries.has(registry)) {
    return new RegistryError("NAME_UNKNOWN", `registry "${registry}" is not configured`);
  }
  const clientPath = url.pathname.slice(0, url.pathname.length - op.join("/").length - 1);
  // Validated as the upstream will see it: on Docker Hub one component gets `library/`.
  const name =
    (registry === DOCKER_HUB && nameParts.length === 1 ? ["library", ...nameParts] : nameParts)
      .join("/");
  if (!isValidName(name)) {
    return new RegistryError("NAME_INVALID", `invalid repository name "${name}"`);
  }
  const target = { registry, name };
  const method = request.method as "GET" | "HEAD";

  switch (op[0]) {
    case "manifests": {
      const reference = op[1];
      if (isDigestReference(reference)) {
        if (!isValidDigest(reference)) {
          return new RegistryError("DIGEST_INVALID", `invalid digest "${reference}"`);
        }
      } else if (!isValidTag(reference)) {
        // The OCI conformance suite expects 404 for a reference that is not a tag (Distribution's
        // router answers 404 too): no manifest can have it.
        return new RegistryError(
          "MANIFEST_UNKNOWN",
          `manifest unknown: "${reference}" is neither a tag nor a digest`,
        );
      }
      return { kind: "manifest", method, ...target, reference };
    }
    case "blobs": {
      const digest = op[1];
      if (!isValidDigest(digest)) {
        return new RegistryError("DIGEST_INVALID", `invalid digest "${digest}"`);
      }
      return { kind: "blob", method, ...target, digest };
    }
    case "referrers": {
      const digest = op[1];
      if (!isValidDigest(digest)) {
        return new RegistryError("DIGEST_INVALID", `invalid digest "${digest}"`);
      }
      const artifactType = url.searchParams.get("artifactType") || undefined;
      if (artifactType !== undefined && !MEDIA_TYPE.test(artifactType)) {
        return new RegistryError("UNSUPPORTED", `invalid artifactType "${artifactType}"`, {
          status: 400,
        });
      }
      return { kind: "referrers", ...target, digest, artifactType };
    }
    default: {
      // Empty parameters count as absent, as in Distribution (`?n=&last=` asks for everything).
      const nText = url.searchParams.get("n") || undefined;
      const last = url.searchParams.get("last") || undefined;
      if (nText !== undefined && !/^\d+$/.test(nText)) {
        return new RegistryError("PAGINATION_NUMBER_INVALID", `invalid page size n=${nText}`);
      }
      if (last !== undefined && !isValidTag(last)) {
        return new RegistryError("TAG_INVALID", `invalid tag "${last}" in last=`);
      }
      // A larger n is clamped, not refused: a registry MAY return fewer than n with a Link.
      const n = nText === undefined ? undefined : Math.min(Number(nText), MAX_PAGE_SIZE);
      return { kind: "tags", ...target, n, last, clientPath, ns };
    }
  }
}

/**
 * The internal endpoint between replicas: only with `cluster.secret` configured, only for a GET
 * carrying it (compared in constant time), only for a configured registry and a valid digest.
 */
function peerRoute(request: Request, url: URL, config: Config): Route | RegistryError {
  const secret = config.cluster?.secret;
  const m = PEER_PATH.exec(url.pathname);
  if (secret === undefined || m === null) {
    return new RegistryError("UNSUPPORTED", `no such endpoint: ${url.pathname}`, { status: 404 });
  }
  if (request.method !== "GET") {
    return new RegistryError(
      "UNSUPPORTED",
      `${request.method} is not supported on the cluster endpoint`,
      { status: 405, headers: { allow: "GET" } },
    );
  }
  const given = /^Bearer (.+)$/.exec(request.headers.get("authorization") ?? "")?.[1];
  if (given === undefined || !sameSecret(given, secret)) {
    return new RegistryError(
      "UNAUTHORIZED",
      "the cluster endpoint is only for replicas sharing this mirror's cluster.secret",
      { headers: { "www-authenticate": 'Bearer realm="registry-mirror cluster"' } },
    );
  }
  let registry: string | undefined;
  try {
    registry = decodeURIComponent(m[1]);
  } catch { /* malformed %-escape: no such registry */ }
  if (registry === undefined || !config.registries.has(registry)) {
    return new RegistryError("NAME_UNKNOWN", `registry "${m[1]}" is not configured`);
  }
  if (!isValidDigest(m[2])) {
    return new RegistryError("DIGEST_INVALID", `invalid digest "${m[2]}"`);
  }
  return { kind: "peer", registry, digest: m[2] };
}

/** True when `given` is `secret`, in time that does not depend on where they differ. */
function sameSecret(given: string, secret: string): boolean {
  const hash = (text: string) => createHash("sha256").update(text).digest();
  return timingSafeEqual(hash(given), hash(secret));
}

/** RFC 3986 `host [":" port]`: a reg-name (unreserved, sub-delims, %XX), IPv4 or [IPv6]. */
const HOST = /^(?:\[[0-9A-Fa-f:.]+\]|(?:[\w.~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+)(?::(\d{1,5}))?$/;

/**
 * True when a Host header value is `host[:port]` and the URL parser reads it as a host: nothing in
 * it (`/`, `?`, `#`, `@`, a backslash, a space) can end the authority and reach the path.
 */
export function isValidHost(value: string): boolean {
  const m = HOST.exec(value);
  if (m === null || (m[1] !== undefined && Number(m[1]) > 65535)) return false;
  return URL.parse(`http://${value}/`)?.pathname === "/";
}

/** The trailing segments naming the operation: `manifests/<ref>`, `blobs/<digest>`, ... */
function operation(segments: string[]): string[] | RegistryError {
  const upload = uploadSession(segments);
  if (upload !== undefined) {
    // GET or HEAD of an upload URL (the upload status, end-13): a read-only mirror has none.
    return new RegistryError(
      "BLOB_UPLOAD_UNKNOWN",
      `blob upload ${upload === "" ? "" : `"${upload}" `}unknown: this mirror is read-only`,
    );
  }
  const [op, arg] = segments.slice(-2);
  const hasName = segments.length > 2;
  if (hasName && (op === "manifests" || op === "blobs" || op === "referrers") && arg !== "") {
    return [op, arg];
  }
  if (hasName && op === "tags" && arg === "list") return [op, arg];
  return new RegistryError("UNSUPPORTED", `no such endpoint: /v2/${segments.join("/")}`, {
    status: 404,
  });
}

/** The session of an upload URL, `<name>/blobs/uploads[/<session>]` ("" for none), else undefined. */
function uploadSession(segments: string[]): string | undefined {
  const n = segments.length;
  if (n >= 3 && segments[n - 2] === "blobs" && segments[n - 1] === "uploads") return "";
  if (n >= 4 && segments[n - 3] === "blobs" && segments[n - 2] === "uploads") {
    return segments[n - 1];
  }
  return undefined;
}

/** A registry by name or alias; a value not configured is an error, never a host to dial. */
function lookup(config: Config, key: string, message: string): string | RegistryError {
  if (config.registries.has(key)) return key;
  return config.aliases.get(key) ?? new RegistryError("NAME_UNKNOWN", message);
}

/**
 * The registry mapped in `hosts` to the Host header, or over HTTP/2 (no Host header) to the
 * `:authority` that request.url is built from, written with or without the port.
 */
function hostRegistry(authority: string, config: Config): string | undefined {
  const host = authority.toLowerCase();
  return config.hosts.get(host) ?? config.hosts.get(host.replace(/:\d+$/, ""));
}
