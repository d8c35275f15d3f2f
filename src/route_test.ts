import { deepEqual, equal, match, ok } from "node:assert/strict";
import { buildConfig } from "./config.ts";
import { RegistryError } from "./oci/errors.ts";
import { isValidHost, type Route, route } from "./route.ts";

const config = buildConfig({
  registries: { "docker.io": { aliases: ["docker", "hub"] } },
  hosts: { "quay.mirror.example.com": "quay.io" },
}, { env: {}, readTextFile: () => "" });

const D = "sha256:" + "a".repeat(64);

function r(path: string, init: { method?: string; host?: string } = {}) {
  const headers = init.host ? { host: init.host } : undefined;
  return route(
    new Request(`http://mirror.test${path}`, { method: init.method ?? "GET", headers }),
    config,
  );
}

/** Routes a request that must succeed, returning the Route of the expected kind. */
function routed<K extends Route["kind"]>(
  kind: K,
  path: string,
  init: { method?: string; host?: string } = {},
): Extract<Route, { kind: K }> {
  const got = r(path, init);
  if (got instanceof RegistryError) throw new Error(`${path}: ${got.message}`);
  equal(got.kind, kind, path);
  return got as Extract<Route, { kind: K }>;
}

/** [path, registry, name, reference-or-digest, kind] for every routing rule and its edges. */
const TABLE: [string, string, string, string, string][] = [
  // 5. Docker Hub by default (dockerd registry-mirrors), library/ added to one component
  ["/v2/library/ubuntu/manifests/latest", "docker.io", "library/ubuntu", "latest", "manifest"],
  ["/v2/ubuntu/manifests/22.04", "docker.io", "library/ubuntu", "22.04", "manifest"],
  ["/v2/bitnami/redis/blobs/" + D, "docker.io", "bitnami/redis", D, "blob"],
  // 3. registry name after /v2/
  [
    "/v2/quay.io/prometheus/prometheus/manifests/latest",
    "quay.io",
    "prometheus/prometheus",
    "latest",
    "manifest",
  ],
  ["/v2/registry.k8s.io/pause/manifests/3.9", "registry.k8s.io", "pause", "3.9", "manifest"],
  ["/v2/registry.gitlab.com/a/b/c/manifests/v1", "registry.gitlab.com", "a/b/c", "v1", "manifest"],
  ["/v2/docker.io/library/alpine/manifests/3", "docker.io", "library/alpine", "3", "manifest"],
  ["/v2/docker.io/alpine/manifests/3", "docker.io", "library/alpine", "3", "manifest"],
  // a registry name with nothing after it is a Docker Hub official image name
  ["/v2/quay.io/manifests/latest", "docker.io", "library/quay.io", "latest", "manifest"],
  // 4. alias after /v2/ only with two or more components after it
  [
    "/v2/quay/prometheus/prometheus/manifests/latest",
    "quay.io",
    "prometheus/prometheus",
    "latest",
    "manifest",
  ],
  [
    "/v2/docker/library/ubuntu/manifests/latest",
    "docker.io",
    "library/ubuntu",
    "latest",
    "manifest",
  ],
  ["/v2/hub/library/ubuntu/manifests/latest", "docker.io", "library/ubuntu", "latest", "manifest"],
  ["/v2/docker/compose/manifests/latest", "docker.io", "docker/compose", "latest", "manifest"],
  ["/v2/docker/dockerfile/manifests/1", "docker.io", "docker/dockerfile", "1", "manifest"],
  [
    "/v2/gitlab/gitlab-runner/manifests/latest",
    "docker.io",
    "gitlab/gitlab-runner",
    "latest",
    "manifest",
  ],
  ["/v2/k8s/pause/manifests/3.9", "docker.io", "k8s/pause", "3.9", "manifest"],
  [
    "/v2/gitlab/group/project/manifests/v1",
    "registry.gitlab.com",
    "group/project",
    "v1",
    "manifest",
  ],
  // 1. ns= wins over everything; the path is the repository
  [
    "/v2/prometheus/prometheus/manifests/latest?ns=quay.io",
    "quay.io",
    "prometheus/prometheus",
    "latest",
    "manifest",
  ],
  ["/v2/library/ubuntu/blobs/" + D + "?ns=docker.io", "docker.io", "library/ubuntu", D, "blob"],
  ["/v2/ubuntu/manifests/latest?ns=docker.io", "docker.io", "library/ubuntu", "latest", "manifest"],
  ["/v2/pause/manifests/3.9?ns=registry.k8s.io", "registry.k8s.io", "pause", "3.9", "manifest"],
  ["/v2/quay/a/b/manifests/x?ns=ghcr.io", "ghcr.io", "quay/a/b", "x", "manifest"],
  // override_path with ns: /<registry>/v2/... plus ns
  ["/quay.io/v2/org/img/manifests/1?ns=quay.io", "quay.io", "org/img", "1", "manifest"],
  // ns plus the same registry name after /v2/ (a host URL ending in /v2/<registry>)
  ["/v2/quay.io/org/img/manifests/1?ns=quay.io", "quay.io", "org/img", "1", "manifest"],
  // direct form /<registry-or-alias>/v2/...
  [
    "/quay/v2/prometheus/prometheus/manifests/latest",
    "quay.io",
    "prometheus/prometheus",
    "latest",
    "manifest",
  ],
  ["/ghcr.io/v2/org/app/blobs/" + D, "ghcr.io", "org/app", D, "blob"],
  ["/k8s/v2/pause/manifests/3.9", "registry.k8s.io", "pause", "3.9", "manifest"],
  ["/docker/v2/ubuntu/manifests/latest", "docker.io", "library/ubuntu", "latest", "manifest"],
  // name segments that look like operations stay in the name
  ["/v2/library/blobs/manifests/latest", "docker.io", "library/blobs", "latest", "manifest"],
  ["/v2/a/manifests/b/manifests/latest", "docker.io", "a/manifests/b", "latest", "manifest"],
  // tags and referrers
  ["/v2/quay.io/org/img/tags/list", "quay.io", "org/img", "", "tags"],
  ["/v2/org/img/referrers/" + D, "docker.io", "org/img", D, "referrers"],
];

Deno.test("route: every routing form picks the right registry, name and reference", () => {
  for (const [path, registry, name, ref, kind] of TABLE) {
    const got = routed(kind as Route["kind"], path);
    if (got.kind === "base" || got.kind === "ops" || got.kind === "peer") throw new Error(path);
    deepEqual([got.registry, got.name], [registry, name], path);
    if (got.kind === "manifest") equal(got.reference, ref, path);
    if (got.kind === "blob" || got.kind === "referrers") equal(got.digest, ref, path);
  }
});

Deno.test("route: Host header through hosts, with or without port; ns still wins", () => {
  for (const host of ["quay.mirror.example.com", "QUAY.mirror.example.com:8080"]) {
    const got = routed("manifest", "/v2/org/img/manifests/1", { host });
    deepEqual([got.registry, got.name], ["quay.io", "org/img"]);
  }
  const ns = routed("manifest", "/v2/org/img/manifests/1?ns=ghcr.io", {
    host: "quay.mirror.example.com",
  });
  equal(ns.registry, "ghcr.io");
  const other = routed("manifest", "/v2/org/img/manifests/1", { host: "other.example.com" });
  equal(other.registry, "docker.io");
});

Deno.test("route: the ping in every form", () => {
  for (const path of ["/v2/", "/v2", "/v2/?ns=quay.io", "/quay/v2/", "/quay.io/v2"]) {
    deepEqual(r(path), { kind: "base" }, path);
  }
  deepEqual(r("/v2/", { method: "HEAD" }), { kind: "base" });
});

Deno.test("route: the operator's endpoints sit outside /v2/", () => {
  const cases: [string, string][] = [
    ["/", "dashboard"],
    ["/api/stats", "stats"],
    ["/metrics", "metrics"],
    ["/healthz", "healthz"],
    ["/readyz", "readyz"],
  ];
  for (const [path, endpoint] of cases) deepEqual(r(path), { kind: "ops", endpoint }, path);
  // Writes to them are 405 with Allow (issue 11), decided here, before any limit or handler.
  for (const method of ["POST", "PUT", "DELETE"]) {
    const write = r("/metrics", { method });
    ok(write instanceof RegistryError && write.status === 405, method);
    equal(write.headers.allow, "GET, HEAD");
  }
});

Deno.test("route: HEAD keeps its method; tags keep pagination and the client's path", () => {
  const head = routed("blob", "/v2/quay/org/img/blobs/" + D, { method: "HEAD" });
  deepEqual([head.method, head.registry], ["HEAD", "quay.io"]);
  const tags = routed("tags", "/v2/quay/org/img/tags/list?n=10&last=v1&ns=quay.io");
  deepEqual([tags.n, tags.last, tags.clientPath, tags.ns], [
    10,
    "v1",
    "/v2/quay/org/img",
    "quay.io",
  ]);
});

/** [method, path, status, code, message fragment] */
const ERRORS: [string, string, number, string, string][] = [
  [
    "GET",
    "/v2/x/manifests/latest?ns=quay.iox",
    404,
    "NAME_UNKNOWN",
    'unknown registry "quay.iox" in ns=',
  ],
  ["GET", "/v2/x/manifests/latest?ns=169.254.169.254", 404, "NAME_UNKNOWN", "169.254.169.254"],
  ["GET", "/v2/x/manifests/latest?ns=localhost:22", 404, "NAME_UNKNOWN", "localhost:22"],
  ["GET", "/v2/x/manifests/latest?ns=", 404, "NAME_UNKNOWN", '""'],
  ["GET", "/nope/v2/x/manifests/latest", 404, "NAME_UNKNOWN", '"nope" in path prefix'],
  ["GET", "/v2/evil.example.com/x/manifests/latest", 404, "NAME_UNKNOWN", "evil.example.com"],
  ["GET", "/v2/localhost:5000/x/manifests/latest", 404, "NAME_UNKNOWN", "localhost:5000"],
  ["GET", "/v2/library/ubuntu%2F..%2Fx/manifests/latest", 400, "NAME_INVALID", "%2F"],
  ["GET", "/v2/library//ubuntu/manifests/latest", 400, "NAME_INVALID", "library//ubuntu"],
  ["GET", "/index.html", 404, "UNSUPPORTED", "no such endpoint"],
  ["GET", "/a/b/v2/x/manifests/latest", 404, "UNSUPPORTED", "no such endpoint"],
];

Deno.test("route: bad input gets the right OCI error before anything goes upstream", () => {
  for (const [method, path, status, code, fragment] of ERRORS) {
    const got = r(path, { method });
    ok(got instanceof RegistryError, `${method} ${path} routed: ${JSON.stringify(got)}`);
    deepEqual([got.status, got.code], [status, code], `${method} ${path}`);
    ok(got.message.includes(fragment), `${path}: "${got.message}" lacks "${fragment}"`);
  }
});

/**
 * The OCI distribution-spec statuses of every route, one row per case of docs/spec-statuses.md:
 * [method, path, status, code, message fragment, source]. "spec" is spec.md of
 * opencontainers/distribution-spec; "conformance" its conformance suite (v1.1.1 01_pull_test.go,
 * or run.go after the redesign); "Distribution" what CNCF Distribution answers.
 */
const SPEC_STATUSES: [string, string, number, string, string, string][] = [
  // A reference that is neither a tag nor a digest cannot name a manifest.
  [
    "GET",
    "/v2/library/ubuntu/manifests/.INVALID_MANIFEST_NAME",
    404,
    "MANIFEST_UNKNOWN",
    "neither a tag nor a digest",
    "conformance 01_pull_test.go: GET nonexistent manifest should return 404",
  ],
  [
    "HEAD",
    "/v2/library/ubuntu/manifests/.INVALID_MANIFEST_NAME",
    404,
    "MANIFEST_UNKNOWN",
    ".INVALID_MANIFEST_NAME",
    "conformance 01_pull_test.go: HEAD request to nonexistent manifest should return 404",
  ],
  [
    "GET",
    "/v2/library/ubuntu/manifests/-bad",
    404,
    "MANIFEST_UNKNOWN",
    "-bad",
    "spec Pulling manifests",
  ],
  [
    "GET",
    "/v2/library/ubuntu/manifests/" + "t".repeat(129),
    404,
    "MANIFEST_UNKNOWN",
    "ttt",
    "spec Pulling manifests: a tag is at most 128 characters",
  ],
  // A malformed digest: 400 DIGEST_INVALID (code-4), which conformance accepts beside 404.
  [
    "GET",
    "/v2/library/ubuntu/manifests/sha256:totallywrong",
    400,
    "DIGEST_INVALID",
    "totallywrong",
    "conformance 01_pull_test.go: 400 response body should contain OCI-conforming JSON message",
  ],
  [
    "GET",
    "/v2/library/ubuntu/manifests/sha256:baddigeststring",
    400,
    "DIGEST_INVALID",
    "baddigeststring",
    "conformance run.go invalid-digest-format/manifest-get: 404 or 400",
  ],
  ["HEAD", "/v2/library/ubuntu/manifests/sha256:abc", 400, "DIGEST_INVALID", "sha256:abc", "idem"],
  [
    "GET",
    "/v2/library/ubuntu/manifests/md5:" + "a".repeat(32),
    400,
    "DIGEST_INVALID",
    "md5",
    "spec Pushing blobs: an unsupported algorithm is a 400",
  ],
  [
    "GET",
    "/v2/library/ubuntu/manifests/sha256:" + "A".repeat(64),
    400,
    "DIGEST_INVALID",
    "AAA",
    "image-spec descriptor.md: sha256 is lowercase hex",
  ],
  // Blobs: the path segment must be a digest.
  ["GET", "/v2/library/ubuntu/blobs/sha256:abc", 400, "DIGEST_INVALID", "abc", "Distribution"],
  ["HEAD", "/v2/library/ubuntu/blobs/md5:" + "a".repeat(32), 400, "DIGEST_INVALID", "md5", "idem"],
  [
    "GET",
    "/v2/library/ubuntu/blobs/sha256:" + "A".repeat(64),
    400,
    "DIGEST_INVALID",
    "AAA",
    "Distribution",
  ],
  ["GET", "/v2/library/ubuntu/blobs/latest", 400, "DIGEST_INVALID", "latest", "spec code-4"],
  // Referrers: an invalid digest MUST be a 400.
  [
    "GET",
    "/v2/library/ubuntu/referrers/sha256:abc",
    400,
    "DIGEST_INVALID",
    "sha256:abc",
    "spec Listing referrers: a <digest> with an invalid syntax MUST be a 400",
  ],
  ["GET", "/v2/library/ubuntu/referrers/latest", 400, "DIGEST_INVALID", "latest", "idem"],
  [
    "GET",
    "/v2/library/ubuntu/referrers/" + D + "?artifactType=not%20a%20type",
    400,
    "UNSUPPORTED",
    "not a type",
    "spec Listing referrers: an invalid request MUST be a 400",
  ],
  // Names: NAME_INVALID (code-8) is the spec's code for exactly this.
  ["GET", "/v2/Library/Ubuntu/manifests/latest", 400, "NAME_INVALID", "Library", "spec code-8"],
  ["GET", "/v2/a/-b/blobs/" + D, 400, "NAME_INVALID", "a/-b", "spec code-8"],
  ["GET", "/v2/a/" + "b".repeat(254) + "/tags/list", 400, "NAME_INVALID", "bbb", "Distribution"],
  // 250 characters, 258 once Docker Hub's `library/` is added: too long for the upstream (fuzz).
  ["GET", "/v2/" + "c".repeat(250) + "/blobs/" + D, 400, "NAME_INVALID", "library/ccc", "Dist."],
  // Tags list: n is a non-negative integer, last a tag.
  ["GET", "/v2/library/ubuntu/tags/list?n=abc", 400, "PAGINATION_NUMBER_INVALID", "abc", "Dist."],
  ["GET", "/v2/library/ubuntu/tags/list?n=-1", 400, "PAGINATION_NUMBER_INVALID", "-1", "Dist."],
  ["GET", "/v2/library/ubuntu/tags/list?n=1.5", 400, "PAGINATION_NUMBER_INVALID", "1.5", "Dist."],
  [
    "GET",
    "/v2/library/ubuntu/tags/list?last=%2F..",
    400,
    "TAG_INVALID",
    "/..",
    "spec Listing tags: <tagname> MUST be a proper tag",
  ],
  ["GET", "/v2/library/ubuntu/tags/list?n=2&last=.x", 400, "TAG_INVALID", ".x", "idem"],
  // Writes on a read-only mirror: 405 UNSUPPORTED with Allow, as Distribution read-only.
  [
    "PUT",
    "/v2/library/ubuntu/manifests/latest",
    405,
    "UNSUPPORTED",
    "read-only",
    "Distribution read-only mode; RFC 9110 15.5.6",
  ],
  [
    "DELETE",
    "/v2/library/ubuntu/manifests/" + D,
    405,
    "UNSUPPORTED",
    "read-only",
    "spec Deleting manifests: disabled deletion is a 400 or a 405",
  ],
  [
    "DELETE",
    "/v2/library/ubuntu/blobs/" + D,
    405,
    "UNSUPPORTED",
    "read-only",
    "spec Deleting blobs: disabled deletion is a 400 or a 405",
  ],
  ["POST", "/v2/library/ubuntu/blobs/uploads/", 405, "UNSUPPORTED", "read-only", "Distribution"],
  [
    "POST",
    "/v2/library/ubuntu/blobs/uploads/?mount=" + D + "&from=x",
    405,
    "UNSUPPORTED",
    "read-only",
    "Distribution",
  ],
  ["PATCH", "/v2/library/ubuntu/blobs/uploads/abc", 405, "UNSUPPORTED", "read-only", "idem"],
  ["PUT", "/v2/library/ubuntu/blobs/uploads/abc?digest=" + D, 405, "UNSUPPORTED", "PUT", "idem"],
  ["DELETE", "/v2/library/ubuntu/blobs/uploads/abc", 405, "UNSUPPORTED", "read-only", "idem"],
  ["POST", "/v2/", 405, "UNSUPPORTED", "read-only", "spec Determining support: GET /v2/"],
  // The upload status (end-13) of a session that cannot exist.
  [
    "GET",
    "/v2/library/ubuntu/blobs/uploads/abc",
    404,
    "BLOB_UPLOAD_UNKNOWN",
    '"abc"',
    "spec end-13 failure 404, code-3; Distribution read-only",
  ],
  ["HEAD", "/v2/library/ubuntu/blobs/uploads/", 404, "BLOB_UPLOAD_UNKNOWN", "read-only", "idem"],
  ["GET", "/v2/library/ubuntu/blobs/uploads", 404, "BLOB_UPLOAD_UNKNOWN", "read-only", "idem"],
  // Endpoints the spec does not define.
  ["GET", "/v2/library/ubuntu/tags/other", 404, "UNSUPPORTED", "no such endpoint", "RFC 9110"],
  ["GET", "/v2/manifests/latest", 404, "UNSUPPORTED", "no such endpoint", "RFC 9110"],
  ["GET", "/v2/_catalog", 404, "UNSUPPORTED", "no such endpoint", "not in the OCI spec"],
];

Deno.test("route: every route answers the OCI distribution-spec status and code", () => {
  for (const [method, path, status, code, fragment, source] of SPEC_STATUSES) {
    const got = r(path, { method });
    const what = `${method} ${path.slice(0, 80)} (${source})`;
    ok(got instanceof RegistryError, `${what} routed: ${JSON.stringify(got)}`);
    deepEqual([got.status, got.code], [status, code], what);
    ok(got.message.includes(fragment), `${what}: "${got.message}" lacks "${fragment}"`);
    if (status === 405) equal(got.headers.allow, "GET, HEAD", what);
  }
});

/** [path, n, last] for tags lists that route: empty parameters are absent, a large n clamped. */
const TAGS_PAGES: [string, number | undefined, string | undefined][] = [
  ["/v2/library/ubuntu/tags/list", undefined, undefined],
  ["/v2/library/ubuntu/tags/list?n=0", 0, undefined],
  ["/v2/library/ubuntu/tags/list?n=007&last=v1", 7, "v1"],
  ["/v2/library/ubuntu/tags/list?n=999999", 999999, undefined],
  ["/v2/library/ubuntu/tags/list?n=1000000", 999999, undefined],
  ["/v2/library/ubuntu/tags/list?n=" + "9".repeat(400), 999999, undefined],
  ["/v2/library/ubuntu/tags/list?n=", undefined, undefined],
  ["/v2/library/ubuntu/tags/list?last=", undefined, undefined],
  ["/v2/library/ubuntu/tags/list?n=&last=", undefined, undefined],
  ["/v2/library/ubuntu/tags/list?last=" + "t".repeat(128), undefined, "t".repeat(128)],
];

Deno.test("route: tags list pages: empty parameters are absent, a large n is clamped", () => {
  for (const [path, n, last] of TAGS_PAGES) {
    const got = routed("tags", path);
    deepEqual([got.n, got.last], [n, last], path.slice(0, 80));
  }
});

Deno.test("route: valid references, digests and filters reach a handler", () => {
  const tag = routed("manifest", "/v2/library/ubuntu/manifests/" + "t".repeat(128));
  equal(tag.reference, "t".repeat(128));
  const sha512 = "sha512:" + "b".repeat(128);
  equal(
    routed("manifest", "/v2/library/ubuntu/manifests/" + sha512, { method: "HEAD" }).reference,
    sha512,
  );
  equal(routed("blob", "/v2/library/ubuntu/blobs/" + sha512).digest, sha512);
  const filtered = routed(
    "referrers",
    "/v2/library/ubuntu/referrers/" + D + "?artifactType=application/vnd.example.sbom.v1",
  );
  equal(filtered.artifactType, "application/vnd.example.sbom.v1");
  equal(
    routed("referrers", "/v2/library/ubuntu/referrers/" + D + "?artifactType=").artifactType,
    undefined,
  );
  // a name component "uploads" is not an upload URL
  equal(routed("blob", "/v2/org/blobs/uploads/blobs/" + D).name, "org/blobs/uploads");
});

Deno.test("route: dot segments are resolved by URL parsing and cannot escape /v2/", () => {
  const got = r("/v2/library/../../admin/manifests/latest");
  ok(got instanceof RegistryError && got.status === 404);
  const encoded = routed("manifest", "/v2/library/%2e%2e/x/manifests/latest");
  equal(encoded.name, "library/x");
});

Deno.test("route: a removed Docker Hub makes default routing a clear 404", () => {
  const noHub = buildConfig({ registries: { "docker.io": false } }, {
    env: {},
    readTextFile: () => "",
  });
  const got = route(new Request("http://m/v2/library/ubuntu/manifests/latest"), noHub);
  ok(got instanceof RegistryError && got.code === "NAME_UNKNOWN");
  match(got.message, /docker\.io/);
});

/** Routes a request as Deno.serve builds it: `request.url` is "http://" + Host + target. */
function served(host: string, target: string) {
  return route(new Request(`http://${host}${target}`, { headers: { host } }), config);
}

Deno.test("isValidHost: host[:port] as RFC 3986 writes it, and nothing the URL parser reads otherwise", () => {
  const valid = [
    "mirror.test",
    "MIRROR.test:8080",
    "127.0.0.1:5000",
    "[::1]",
    "[::1]:8443",
    "[2001:db8::7]:1",
    "localhost:65535",
    "my_host-1.example",
    "a%41b",
  ];
  for (const host of valid) ok(isValidHost(host), host);
  const invalid = [
    "x/healthz?",
    "h/quay",
    "x?a",
    "x#",
    "user@x",
    "x\\healthz",
    "x y",
    "x:y",
    "x:",
    ":80",
    "x:65536",
    "x:123456",
    "[::1",
    "::1",
    "[v1.x]",
    "[::1%25eth0]",
    "a%2Fb",
    "a%zz",
    "1.2.3.999",
    "xn--a",
    "x\t",
  ];
  for (const host of invalid) equal(isValidHost(host), false, host);
});

Deno.test("route: a Host that is not host[:port] is 400 and never becomes the path", () => {
  for (
    const [host, target] of [
      ["x/healthz?", "/v2/"],
      ["x/healthz?", "/v2/library/ubuntu/manifests/latest"],
      ["h/quay", "/v2/prometheus/prometheus/manifests/latest"],
      ["h/api/stats#", "/v2/"],
      ["u@h", "/v2/"],
    ]
  ) {
    const got = served(host, target);
    ok(got instanceof RegistryError, `${host} ${target} was routed: ${JSON.stringify(got)}`);
    deepEqual([got.status, got.code], [400, "UNSUPPORTED"], host);
    match(got.message, /invalid Host header/);
  }
  // An unparseable Host (a space, a bad port) is refused the same way, not thrown.
  const spaced = route(
    new Request("http://m/v2/", { headers: { host: "x y" } }),
    config,
  );
  ok(spaced instanceof RegistryError && spaced.status === 400);
  // Valid hosts route on the real target.
  equal((served("127.0.0.1:8080", "/v2/") as Route).kind, "base");
  equal((served("[::1]:8080", "/healthz") as Route).kind, "ops");
  const hosted = served("quay.mirror.example.com:5000", "/v2/org/img/manifests/1");
  ok(!(hosted instanceof RegistryError) && hosted.kind === "manifest");
  equal(hosted.registry, "quay.io");
});

Deno.test("route: over HTTP/2 (no Host header) hosts maps the :authority in request.url", () => {
  const url = "https://quay.mirror.example.com:8443/v2/org/img/manifests/1";
  const got = route(new Request(url), config);
  ok(!(got instanceof RegistryError) && got.kind === "manifest");
  deepEqual([got.registry, got.name], ["quay.io", "org/img"]);
});

Deno.test("route: the cluster endpoint opens only to cluster.secret, for a registry and a digest", () => {
  const secret = "cluster-secret-0123456789";
  const clustered = buildConfig({
    registries: { "localhost:5000": { upstream: "http://127.0.0.1:5000" } },
    cache: { s3: { bucket: "b", accessKeyId: "k", secretAccessKey: "s" } },
    cluster: { advertise: "http://10.0.0.5:8080", secret },
  }, { env: {}, readTextFile: () => "" });
  const ask = (path: string, init: { method?: string; authorization?: string } = {}) =>
    route(
      new Request(`http://mirror.test${path}`, {
        method: init.method ?? "GET",
        headers: init.authorization === undefined ? {} : { authorization: init.authorization },
      }),
      clustered,
    );
  const path = `/_cluster/fills/localhost%3A5000/${D}`;
  deepEqual(ask(path, { authorization: `Bearer ${secret}` }), {
    kind: "peer",
    registry: "localhost:5000",
    digest: D,
  });
  const refused: [string, { method?: string; authorization?: string }, number, string][] = [
    [path, {}, 401, "UNAUTHORIZED"],
    [path, { authorization: `Bearer ${secret}x` }, 401, "UNAUTHORIZED"],
    [path, { authorization: `Basic ${btoa(`x:${secret}`)}` }, 401, "UNAUTHORIZED"],
    [path, { authorization: `Bearer ${secret}`, method: "DELETE" }, 405, "UNSUPPORTED"],
    [`/_cluster/fills/quay.iox/${D}`, { authorization: `Bearer ${secret}` }, 404, "NAME_UNKNOWN"],
    [`/_cluster/fills/%E0%A4%A/${D}`, { authorization: `Bearer ${secret}` }, 404, "NAME_UNKNOWN"],
    [
      "/_cluster/fills/localhost%3A5000/sha256:abc",
      { authorization: `Bearer ${secret}` },
      400,
      "DIGEST_INVALID",
    ],
    [
      `/_cluster/fills/localhost%3A5000/${D}/x`,
      { authorization: `Bearer ${secret}` },
      404,
      "UNSUPPORTED",
    ],
    ["/_cluster/leases", { authorization: `Bearer ${secret}` }, 404, "UNSUPPORTED"],
  ];
  for (const [p, init, status, code] of refused) {
    const got = ask(p, init);
    ok(got instanceof RegistryError, `${p} ${JSON.stringify(init)} was routed`);
    deepEqual([got.status, got.code], [status, code], `${p} ${JSON.stringify(init)}`);
    ok(!got.message.includes(secret), "the secret is never echoed");
  }
  const challenge = ask(path) as RegistryError;
  equal(challenge.headers["www-authenticate"], 'Bearer realm="registry-mirror cluster"');
  // Without a cluster the endpoint does not exist, whatever the request carries.
  const alone = route(
    new Request(`http://mirror.test/_cluster/fills/docker.io/${D}`, {
      headers: { authorization: `Bearer ${secret}` },
    }),
    config,
  );
  ok(alone instanceof RegistryError);
  deepEqual([alone.status, alone.code], [404, "UNSUPPORTED"]);
});
