// Manifest media types, the Accept list sent upstream, and what a client's Accept takes (negotiator).

// @ts-types="@types/negotiator"
import Negotiator from "negotiator";

/** Docker image manifest, schema 2. */
export const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
/** Docker manifest list (multi-arch). */
export const DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";
/** OCI image manifest. */
export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
/** OCI image index (multi-arch). */
export const OCI_INDEX = "application/vnd.oci.image.index.v1+json";

/** What we ask upstream for when the client sends no Accept: every modern manifest type. */
export const MODERN_MANIFEST_TYPES = [
  OCI_INDEX,
  OCI_MANIFEST,
  DOCKER_MANIFEST_LIST,
  DOCKER_MANIFEST,
];

/**
 * The union of every Accept value a client sent, deduplicated, in first-seen order. Clients send
 * up to six separate Accept lines (which `Headers` joins with ", ") or one comma-joined line.
 * Every modern type the client takes by a wildcard (or by sending no Accept) is added, so no
 * upstream falls back to schema 1 or refuses an OCI manifest; a type it refuses (`q=0`) is not.
 */
export function manifestAccept(accept: string | null): string {
  const seen = new Set<string>();
  for (const part of (accept ?? "").split(",")) {
    const value = part.trim();
    if (value) seen.add(value);
  }
  const named = new Set([...seen].map((v) => v.split(";")[0].trim().toLowerCase()));
  const takes = acceptedAmong(seen.size ? accept : null, MODERN_MANIFEST_TYPES);
  for (const type of takes.sort(byModernOrder)) if (!named.has(type)) seen.add(type);
  return [...seen].join(", ");
}

/**
 * True when a client's Accept (absent or blank: anything) takes a manifest of `mediaType`: q-values
 * are honoured (`q=0` refuses a type, also one a wildcard would take), wildcards (any type,
 * `application/*`) match, and the parameters of a range must match those of the type.
 */
export function accepts(accept: string | null, mediaType: string): boolean {
  return acceptedAmong(accept, [mediaType]).length > 0;
}

/** The types among `types` that `accept` takes, most preferred first. */
function acceptedAmong(accept: string | null, types: string[]): string[] {
  const blank = accept === null || accept.split(",").every((v) => v.trim() === "");
  return new Negotiator({ headers: { accept: blank ? "*/*" : accept } }).mediaTypes(types);
}

function byModernOrder(a: string, b: string): number {
  return MODERN_MANIFEST_TYPES.indexOf(a) - MODERN_MANIFEST_TYPES.indexOf(b);
}
