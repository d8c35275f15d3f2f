import { deepEqual, equal, match, ok } from "node:assert/strict";
import { createHash } from "node:crypto";
import { RegistryError } from "./errors.ts";
import { type Descriptor, type ParsedManifest, parseManifest, platformChild } from "./manifest.ts";
import { DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST } from "./media_types.ts";

/** A real sha256 digest of `name`, so every fixture digest is well-formed and distinct. */
function digest(name: string): string {
  return `sha256:${createHash("sha256").update(name).digest("hex")}`;
}

function bytes(doc: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(doc, null, 3));
}

function parsed(input: Uint8Array): ParsedManifest {
  const result = parseManifest(input, "docker.io/library/alpine:3.20");
  if (result instanceof RegistryError) throw new Error(`refused: ${result.message}`);
  return result;
}

function refused(input: Uint8Array, reason: RegExp): RegistryError {
  const result = parseManifest(input, "docker.io/library/alpine:3.20");
  ok(result instanceof RegistryError, `accepted: ${JSON.stringify(result)}`);
  equal(result.code, "MANIFEST_INVALID");
  equal(result.status, 502);
  match(result.message, /^manifest docker\.io\/library\/alpine:3\.20: /);
  match(result.message, reason);
  return result;
}

const ociIndex = {
  schemaVersion: 2,
  mediaType: OCI_INDEX,
  manifests: [
    {
      mediaType: OCI_MANIFEST,
      digest: digest("amd64"),
      size: 1022,
      platform: { architecture: "amd64", os: "linux" },
    },
    {
      mediaType: OCI_MANIFEST,
      digest: digest("arm64"),
      size: 1025,
      platform: { architecture: "arm64", os: "linux", variant: "v8" },
    },
    {
      mediaType: OCI_MANIFEST,
      digest: digest("attestation"),
      size: 839,
      annotations: {
        "vnd.docker.reference.digest": digest("amd64"),
        "vnd.docker.reference.type": "attestation-manifest",
      },
      platform: { architecture: "unknown", os: "unknown" },
    },
  ],
};

const ociManifest = {
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  config: {
    mediaType: "application/vnd.oci.image.config.v1+json",
    digest: digest("config"),
    size: 1471,
  },
  layers: [{
    mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
    digest: digest("layer"),
    size: 3623807,
  }],
  annotations: { "org.opencontainers.image.revision": "a1b2c3" },
};

const dockerList = {
  schemaVersion: 2,
  mediaType: DOCKER_MANIFEST_LIST,
  manifests: [
    {
      mediaType: DOCKER_MANIFEST,
      digest: digest("windows"),
      size: 1161,
      platform: { architecture: "amd64", os: "windows", "os.version": "10.0.20348.2655" },
    },
    {
      mediaType: DOCKER_MANIFEST,
      digest: digest("linux"),
      size: 529,
      platform: { architecture: "amd64", os: "linux" },
    },
  ],
};

const dockerManifest = {
  schemaVersion: 2,
  mediaType: DOCKER_MANIFEST,
  config: {
    mediaType: "application/vnd.docker.container.image.v1+json",
    size: 1457,
    digest: digest("docker config"),
  },
  layers: [
    {
      mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip",
      size: 29533422,
      digest: digest("docker layer 1"),
    },
    {
      mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip",
      size: 32,
      digest: digest("docker layer 2"),
    },
  ],
};

/** An artifact as image-spec 1.1 defines it: an image manifest with artifactType and subject. */
const signature = {
  schemaVersion: 2,
  mediaType: OCI_MANIFEST,
  artifactType: "application/vnd.cncf.notary.signature",
  config: {
    mediaType: "application/vnd.oci.empty.v1+json",
    digest: "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    size: 2,
  },
  layers: [{
    mediaType: "application/jose+json",
    digest: digest("signature"),
    size: 2090,
  }],
  subject: { mediaType: OCI_INDEX, digest: digest("signed index"), size: 1609 },
};

Deno.test("parseManifest: OCI index, with children and their platforms", () => {
  const index = parsed(bytes(ociIndex));
  equal(index.mediaType, OCI_INDEX);
  deepEqual(index.manifests?.map((d) => d.digest), ociIndex.manifests.map((d) => d.digest));
  deepEqual(index.manifests?.[1].platform, { architecture: "arm64", os: "linux", variant: "v8" });
  equal(index.config, undefined);
  equal(index.layers, undefined);
});

Deno.test("parseManifest: OCI image manifest, with config and layers", () => {
  const manifest = parsed(bytes(ociManifest));
  equal(manifest.mediaType, OCI_MANIFEST);
  equal(manifest.config?.digest, digest("config"));
  deepEqual(manifest.layers?.map((d) => [d.digest, d.size]), [[digest("layer"), 3623807]]);
  equal(manifest.manifests, undefined);
});

Deno.test("parseManifest: Docker manifest list", () => {
  const list = parsed(bytes(dockerList));
  equal(list.mediaType, DOCKER_MANIFEST_LIST);
  equal(list.manifests?.[0].platform?.["os.version"], "10.0.20348.2655");
});

Deno.test("parseManifest: Docker v2 manifest", () => {
  const manifest = parsed(bytes(dockerManifest));
  equal(manifest.mediaType, DOCKER_MANIFEST);
  equal(manifest.config?.digest, digest("docker config"));
  equal(manifest.layers?.length, 2);
});

Deno.test("parseManifest: an artifact (image manifest with artifactType and subject)", () => {
  const artifact = parsed(bytes(signature));
  equal(artifact.mediaType, OCI_MANIFEST);
  deepEqual(artifact.subject, signature.subject);
  equal(artifact.layers?.[0].mediaType, "application/jose+json");
});

Deno.test("parseManifest: the media type comes from the bytes, whatever the formatting", () => {
  const compact = new TextEncoder().encode(JSON.stringify(dockerManifest));
  equal(parsed(compact).mediaType, DOCKER_MANIFEST);
});

Deno.test("parseManifest: without mediaType, the OCI type follows from the shape", () => {
  const { mediaType: _index, ...index } = ociIndex;
  equal(parsed(bytes(index)).mediaType, OCI_INDEX);
  const { mediaType: _manifest, ...manifest } = ociManifest;
  equal(parsed(bytes(manifest)).mediaType, OCI_MANIFEST);
  const empty = { schemaVersion: 2, manifests: [] };
  deepEqual(parsed(bytes(empty)), { mediaType: OCI_INDEX, manifests: [] });
});

Deno.test("parseManifest: without mediaType, a shape that is neither or both is refused", () => {
  refused(bytes({ schemaVersion: 2 }), /without mediaType/);
  refused(bytes({ schemaVersion: 2, config: ociManifest.config }), /without mediaType/);
  refused(
    bytes({ schemaVersion: 2, manifests: [], config: ociManifest.config, layers: [] }),
    /without mediaType/,
  );
});

Deno.test("parseManifest: HTML is refused, naming the manifest", () => {
  const html = new TextEncoder().encode(
    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body></body></html>\n",
  );
  const error = refused(html, /not valid UTF-8 JSON/);
  ok(error.cause instanceof SyntaxError);
  equal(error.toResponse().status, 502);
});

Deno.test("parseManifest: the message omits the name when none is given", () => {
  const error = parseManifest(new TextEncoder().encode("<html>"));
  ok(error instanceof RegistryError);
  equal(error.message, "manifest: not valid UTF-8 JSON");
});

Deno.test("parseManifest: invalid JSON, invalid UTF-8 and a byte order mark are refused", () => {
  const json = JSON.stringify(ociManifest);
  refused(new TextEncoder().encode(json.slice(0, -1)), /not valid UTF-8 JSON/);
  refused(new Uint8Array(), /not valid UTF-8 JSON/);
  const latin1 = new TextEncoder().encode(json.replace("a1b2c3", "caf\u00e9"));
  const at = latin1.indexOf(0xc3);
  refused(Uint8Array.of(...latin1.subarray(0, at), 0xe9, ...latin1.subarray(at + 2)), /UTF-8/);
  refused(Uint8Array.of(0xef, 0xbb, 0xbf, ...new TextEncoder().encode(json)), /UTF-8 JSON/);
});

Deno.test("parseManifest: JSON that is not an object is refused", () => {
  refused(bytes([ociManifest]), /expected a JSON object, got an array/);
  refused(bytes(null), /got null/);
  refused(bytes("manifest"), /got a string/);
});

Deno.test("parseManifest: schema 1 is refused as not supported; other versions too", () => {
  const schema1 = {
    schemaVersion: 1,
    name: "library/alpine",
    tag: "3.20",
    architecture: "amd64",
    fsLayers: [{ blobSum: digest("layer") }],
    history: [{ v1Compatibility: "{}" }],
  };
  refused(bytes(schema1), /schema 1 manifests are not supported/);
  refused(bytes({ ...ociManifest, schemaVersion: "2" }), /schemaVersion must be 2, got "2"/);
  const { schemaVersion: _, ...unversioned } = ociManifest;
  refused(bytes(unversioned), /schemaVersion must be 2, got undefined/);
});

Deno.test("parseManifest: a mediaType with a newline is refused, escaped in the message", () => {
  const error = refused(
    bytes({ ...ociManifest, mediaType: `${OCI_MANIFEST}\nX-Injected: 1` }),
    /control characters/,
  );
  ok(!error.message.includes("\n"), error.message);
  refused(bytes({ ...ociManifest, mediaType: `${OCI_MANIFEST}\u0000` }), /control characters/);
});

Deno.test("parseManifest: unknown, non-string and parameterised mediaTypes are refused", () => {
  refused(bytes({ ...ociManifest, mediaType: "text/html" }), /"text\/html" is not a manifest type/);
  refused(bytes({ ...ociManifest, mediaType: `${OCI_MANIFEST}; charset=utf-8` }), /not a manifest/);
  refused(bytes({ ...ociManifest, mediaType: 2 }), /mediaType must be a string, got a number/);
  refused(bytes({ ...ociManifest, mediaType: "x".repeat(10_000) }), /\.\.\. is not a manifest/);
});

Deno.test("parseManifest: the OCI artifact manifest (removed from the spec) is refused", () => {
  const artifact = {
    mediaType: "application/vnd.oci.artifact.manifest.v1+json",
    artifactType: "application/vnd.cncf.notary.signature",
    blobs: signature.layers,
    subject: signature.subject,
  };
  refused(
    bytes({ schemaVersion: 2, ...artifact }),
    /artifact\.manifest\.v1\+json is not supported/,
  );
});

Deno.test("parseManifest: a descriptor with a bad digest is refused, naming which", () => {
  const layer = ociManifest.layers[0];
  const withLayer = (bad: Descriptor) => bytes({ ...ociManifest, layers: [layer, bad] });
  refused(withLayer({ ...layer, digest: "sha256:abc" }), /layers\[1\]\.digest "sha256:abc" is not/);
  refused(withLayer({ ...layer, digest: layer.digest.toUpperCase() }), /layers\[1\]\.digest/);
  refused(withLayer({ ...layer, digest: `md5:${"0".repeat(32)}` }), /layers\[1\]\.digest/);
  const { digest: _, ...undigested } = layer;
  refused(bytes({ ...ociManifest, layers: [undigested] }), /layers\[0\]\.digest undefined/);
  const child = { ...ociIndex.manifests[0], digest: "latest" };
  refused(bytes({ ...ociIndex, manifests: [child] }), /manifests\[0\]\.digest "latest"/);
  refused(bytes({ ...signature, subject: {} }), /subject\.digest/);
});

Deno.test("parseManifest: a negative, fractional or non-numeric size is refused", () => {
  const config = ociManifest.config;
  refused(bytes({ ...ociManifest, config: { ...config, size: -1 } }), /config\.size .* got -1/);
  refused(bytes({ ...ociManifest, config: { ...config, size: 1.5 } }), /config\.size/);
  refused(bytes({ ...ociManifest, config: { ...config, size: "1471" } }), /config\.size/);
  refused(bytes({ ...ociManifest, config: { ...config, size: 2 ** 60 } }), /config\.size/);
});

Deno.test("parseManifest: a shape that contradicts the mediaType is refused", () => {
  const { manifests: _, ...noChildren } = ociIndex;
  refused(bytes({ ...noChildren, layers: ociManifest.layers }), /must not have config or layers/);
  refused(bytes(noChildren), /manifests must be an array, got nothing/);
  refused(bytes({ ...dockerList, config: ociManifest.config }), /must not have config or layers/);
  refused(bytes({ ...ociManifest, manifests: [] }), /must not have manifests/);
  const { layers: _layers, ...noLayers } = dockerManifest;
  refused(bytes(noLayers), /layers must be an array/);
  refused(bytes({ ...dockerManifest, config: [] }), /config must be a descriptor object/);
});

Deno.test("parseManifest: a Docker list without mediaType is an OCI index (Docker must declare)", () => {
  const { mediaType: _, ...undeclared } = dockerList;
  equal(parsed(bytes(undeclared)).mediaType, OCI_INDEX);
});

Deno.test("parseManifest: keys differing only in case from ours are refused (Go reads them)", () => {
  refused(bytes({ ...ociManifest, MediaType: OCI_INDEX }), /key "MediaType" is ambiguous/);
  refused(bytes({ ...ociManifest, "schemaVer\u017fion": 1 }), /ambiguous with schemaVersion/);
  const layer = { ...ociManifest.layers[0], Digest: digest("other") };
  refused(bytes({ ...ociManifest, layers: [layer] }), /layers\[0\]: key "Digest"/);
});

Deno.test("parseManifest: malformed platform, annotations and descriptor media types are refused", () => {
  const child = ociIndex.manifests[0];
  const index = (d: unknown) => bytes({ ...ociIndex, manifests: [d] });
  refused(index({ ...child, platform: { architecture: "amd64" } }), /platform .* needs string os/);
  refused(index({ ...child, platform: "linux/amd64" }), /manifests\[0\]\.platform/);
  refused(index({ ...child, annotations: { "a": 1 } }), /annotations must map strings/);
  refused(index({ ...child, mediaType: "a\nb" }), /manifests\[0\]\.mediaType "a\\nb" is not/);
  refused(index({ ...child, artifactType: 7 }), /manifests\[0\]\.artifactType 7/);
});

const acceptAll = () => true;

function indexOf(...platforms: [string, Descriptor["platform"]][]): ParsedManifest {
  const manifests = platforms.map(([mediaType, platform], i) => ({
    mediaType,
    digest: digest(`child ${i}`),
    size: 500 + i,
    platform,
  }));
  return parsed(bytes({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }));
}

Deno.test("platformChild: linux/amd64, not arm64 nor windows/amd64 nor an attestation", () => {
  const index = indexOf(
    [DOCKER_MANIFEST, { os: "windows", architecture: "amd64", "os.version": "10.0.17763" }],
    [DOCKER_MANIFEST, { os: "linux", architecture: "arm64", variant: "v8" }],
    [OCI_MANIFEST, { os: "unknown", architecture: "unknown" }],
    [DOCKER_MANIFEST, { os: "linux", architecture: "amd64" }],
  );
  equal(platformChild(index, acceptAll)?.digest, digest("child 3"));
  equal(platformChild(parsed(bytes(dockerList)), acceptAll)?.digest, digest("linux"));
  equal(platformChild(parsed(bytes(ociIndex)), acceptAll)?.digest, digest("amd64"));
});

Deno.test("platformChild: only a child whose mediaType the client accepts", () => {
  const index = indexOf(
    [OCI_MANIFEST, { os: "linux", architecture: "amd64" }],
    [DOCKER_MANIFEST, { os: "linux", architecture: "amd64" }],
  );
  equal(platformChild(index, (t) => t === DOCKER_MANIFEST)?.digest, digest("child 1"));
  equal(platformChild(index, (t) => t === OCI_MANIFEST)?.digest, digest("child 0"));
  equal(platformChild(index, (t) => t === OCI_INDEX), undefined);
});

Deno.test("platformChild: undefined without a linux/amd64 child, or for an image manifest", () => {
  const index = indexOf(
    [OCI_MANIFEST, { os: "linux", architecture: "arm64", variant: "v8" }],
    [OCI_MANIFEST, { os: "windows", architecture: "amd64" }],
  );
  equal(platformChild(index, acceptAll), undefined);
  equal(platformChild(parsed(bytes(ociManifest)), acceptAll), undefined);
  equal(platformChild(indexOf(), acceptAll), undefined);
});

Deno.test("platformChild: variants: exact, then variant-less, then any when none asked", () => {
  const amd64 = indexOf(
    [OCI_MANIFEST, { os: "linux", architecture: "amd64", variant: "v3" }],
    [OCI_MANIFEST, { os: "linux", architecture: "amd64" }],
  );
  equal(platformChild(amd64, acceptAll)?.digest, digest("child 1"));
  const onlyV3 = indexOf([OCI_MANIFEST, { os: "linux", architecture: "amd64", variant: "v3" }]);
  equal(platformChild(onlyV3, acceptAll)?.digest, digest("child 0"));

  const arm64 = { os: "linux", architecture: "arm64", variant: "v8" };
  const variantless = indexOf([OCI_MANIFEST, { os: "linux", architecture: "arm64" }]);
  equal(platformChild(variantless, acceptAll, arm64)?.digest, digest("child 0"));
  const arm = indexOf(
    [OCI_MANIFEST, { os: "linux", architecture: "arm", variant: "v6" }],
    [OCI_MANIFEST, { os: "linux", architecture: "arm", variant: "v7" }],
  );
  const armV7 = { os: "linux", architecture: "arm", variant: "v7" };
  equal(platformChild(arm, acceptAll, armV7)?.digest, digest("child 1"));
  equal(platformChild(arm, acceptAll, { ...armV7, variant: "v5" }), undefined);
});
