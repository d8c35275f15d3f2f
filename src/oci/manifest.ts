// Parses manifest bytes and takes their media type from the manifest itself, never from a header.

import { RegistryError } from "./errors.ts";
import { DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST } from "./media_types.ts";
import { isValidDigest } from "./names.ts";

/** The platform an index entry is for. */
export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
  "os.version"?: string;
}

/** A reference to content by digest, as in config, layers, manifests and subject. */
export interface Descriptor {
  mediaType?: string;
  digest: string;
  size: number;
  platform?: Platform;
  artifactType?: string;
  annotations?: Record<string, string>;
}

/** What a manifest says about itself. */
export interface ParsedManifest {
  /** One of OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST. */
  mediaType: string;
  /** For an index / manifest list: its children. */
  manifests?: Descriptor[];
  /** For an image manifest: its config. */
  config?: Descriptor;
  /** For an image manifest: its layers. */
  layers?: Descriptor[];
  subject?: Descriptor;
}

const INDEX_TYPES = new Set([OCI_INDEX, DOCKER_MANIFEST_LIST]);
const IMAGE_TYPES = new Set([OCI_MANIFEST, DOCKER_MANIFEST]);
/**
 * Refused: the OCI artifact manifest was removed from the image-spec before 1.1.0
 * (opencontainers/image-spec#999); artifacts are image manifests with `artifactType`. Our Accept
 * list never asks for it and Distribution never merged support for it (distribution#3833).
 */
const OCI_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json";

const TOP_FIELDS = ["schemaVersion", "mediaType", "manifests", "config", "layers", "subject"];
const DESCRIPTOR_FIELDS = [
  "mediaType",
  "digest",
  "size",
  "platform",
  "artifactType",
  "annotations",
];
// deno-lint-ignore no-control-regex -- finding control characters is the point
const CONTROL = /[\u0000-\u001f\u007f]/;

type JsonObject = Record<string, unknown>;

/**
 * Parses and validates manifest bytes. A RegistryError (MANIFEST_INVALID, status 502) when they
 * are not a manifest we serve; `what` (e.g. `docker.io/library/ubuntu:24.04`) names it in the message.
 */
export function parseManifest(bytes: Uint8Array, what?: string): ParsedManifest | RegistryError {
  const invalid = (problem: string, cause?: unknown) =>
    new RegistryError("MANIFEST_INVALID", `manifest${what ? ` ${what}` : ""}: ${problem}`, {
      status: 502,
      cause,
    });
  let doc: unknown;
  try {
    // ignoreBOM keeps a byte order mark, which JSON.parse then refuses, as Go's decoder does.
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes));
  } catch (cause) {
    return invalid("not valid UTF-8 JSON", cause);
  }
  const parsed = checkManifest(doc);
  return typeof parsed === "string" ? invalid(parsed) : parsed;
}

/**
 * The descriptor an index resolves to for a client that cannot take an index: the first entry for
 * `platform` (linux/amd64, as Distribution does) whose mediaType `acceptable` takes. Preferred: the
 * asked variant (none: a variant-less entry), then a variant-less entry, then, when no variant was
 * asked, any. Undefined when none.
 */
export function platformChild(
  index: ParsedManifest,
  acceptable: (mediaType: string) => boolean,
  platform: Platform = { os: "linux", architecture: "amd64" },
): Descriptor | undefined {
  const candidates = (index.manifests ?? []).filter((d) =>
    d.platform?.os === platform.os && d.platform.architecture === platform.architecture &&
    d.mediaType !== undefined && acceptable(d.mediaType)
  );
  return candidates.find((d) => d.platform?.variant === platform.variant) ??
    candidates.find((d) => d.platform?.variant === undefined) ??
    (platform.variant === undefined ? candidates[0] : undefined);
}

/** The parsed manifest, or what is wrong with it. */
function checkManifest(doc: unknown): ParsedManifest | string {
  if (!isObject(doc)) return `expected a JSON object, got ${kind(doc)}`;
  const clash = caseClash(doc, TOP_FIELDS);
  if (clash) return clash;
  if (doc.schemaVersion === 1) return "schema 1 manifests are not supported";
  if (doc.schemaVersion !== 2) return `schemaVersion must be 2, got ${show(doc.schemaVersion)}`;
  const mediaType = manifestMediaType(doc);
  if (!INDEX_TYPES.has(mediaType) && !IMAGE_TYPES.has(mediaType)) return mediaType;

  const subject = doc.subject === undefined ? undefined : checkDescriptor(doc.subject, "subject");
  if (typeof subject === "string") return subject;
  if (INDEX_TYPES.has(mediaType)) {
    if (doc.config !== undefined || doc.layers !== undefined) {
      return `${mediaType} must not have config or layers`;
    }
    const manifests = checkDescriptors(doc.manifests, "manifests");
    if (typeof manifests === "string") return manifests;
    return { mediaType, manifests, ...(subject && { subject }) };
  }
  if (doc.manifests !== undefined) return `${mediaType} must not have manifests`;
  const config = checkDescriptor(doc.config, "config");
  if (typeof config === "string") return config;
  const layers = checkDescriptors(doc.layers, "layers");
  if (typeof layers === "string") return layers;
  return { mediaType, config, layers, ...(subject && { subject }) };
}

/** The declared media type; absent, the OCI type its shape implies. Else what is wrong. */
function manifestMediaType(doc: JsonObject): string {
  const { mediaType } = doc;
  if (mediaType === undefined) {
    // Docker types must declare themselves; OCI's mediaType is only a SHOULD.
    const index = doc.manifests !== undefined;
    const image = doc.config !== undefined && doc.layers !== undefined;
    if (index !== image) return index ? OCI_INDEX : OCI_MANIFEST;
    return "without mediaType, expected either manifests or config and layers";
  }
  if (typeof mediaType !== "string") return `mediaType must be a string, got ${kind(mediaType)}`;
  if (CONTROL.test(mediaType)) return `mediaType ${show(mediaType)} contains control characters`;
  if (mediaType === OCI_ARTIFACT_MANIFEST) {
    return `mediaType ${mediaType} is not supported (removed from the OCI image-spec)`;
  }
  if (INDEX_TYPES.has(mediaType) || IMAGE_TYPES.has(mediaType)) return mediaType;
  return `mediaType ${show(mediaType)} is not a manifest type we serve`;
}

function checkDescriptors(value: unknown, where: string): Descriptor[] | string {
  if (!Array.isArray(value)) return `${where} must be an array, got ${kind(value)}`;
  const descriptors: Descriptor[] = [];
  for (const [i, item] of value.entries()) {
    const descriptor = checkDescriptor(item, `${where}[${i}]`);
    if (typeof descriptor === "string") return descriptor;
    descriptors.push(descriptor);
  }
  return descriptors;
}

function checkDescriptor(value: unknown, where: string): Descriptor | string {
  if (!isObject(value)) return `${where} must be a descriptor object, got ${kind(value)}`;
  const clash = caseClash(value, DESCRIPTOR_FIELDS);
  if (clash) return `${where}: ${clash}`;
  const { mediaType, digest, size, platform, artifactType, annotations } = value;
  if (typeof digest !== "string" || !isValidDigest(digest)) {
    return `${where}.digest ${show(digest)} is not a valid digest`;
  }
  if (!Number.isSafeInteger(size) || (size as number) < 0) {
    return `${where}.size must be a non-negative integer, got ${show(size)}`;
  }
  for (const [name, field] of [["mediaType", mediaType], ["artifactType", artifactType]]) {
    if (field !== undefined && (typeof field !== "string" || CONTROL.test(field))) {
      return `${where}.${name} ${show(field)} is not a media type`;
    }
  }
  if (platform !== undefined) {
    if (
      !isObject(platform) || !isString(platform.os) || !isString(platform.architecture) ||
      !isOptionalString(platform.variant) || !isOptionalString(platform["os.version"])
    ) return `${where}.platform ${show(platform)} needs string os and architecture`;
  }
  if (
    annotations !== undefined &&
    (!isObject(annotations) || !Object.values(annotations).every(isString))
  ) return `${where}.annotations must map strings to strings`;
  return value as unknown as Descriptor;
}

/**
 * A key that differs from a field we read only in case. Go's encoding/json, which most clients
 * use, matches keys case-insensitively, so `"MediaType"` could make a client read the manifest
 * differently from us. Upper-then-lower folds like Go does for the letters in our field names.
 */
function caseClash(doc: JsonObject, fields: string[]): string | undefined {
  const folded = new Map(fields.map((f) => [f.toLowerCase(), f]));
  for (const key of Object.keys(doc)) {
    const field = folded.get(key.toUpperCase().toLowerCase());
    if (field !== undefined && field !== key) {
      return `key ${show(key)} is ambiguous with ${field}`;
    }
  }
  return undefined;
}

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isString(value: unknown): value is string {
  return typeof value === "string";
}

function isOptionalString(value: unknown): boolean {
  return value === undefined || typeof value === "string";
}

function kind(value: unknown): string {
  if (value === undefined) return "nothing";
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

/** A value quoted for a message: control characters escaped, cut to a readable length. */
function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 80)}...` : text;
}
