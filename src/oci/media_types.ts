// Manifest media types, and the Accept list sent upstream.

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
 * With none, or with a wildcard (the client takes anything), every modern type is added, so no
 * upstream falls back to schema 1 or refuses an OCI manifest.
 */
export function manifestAccept(accept: string | null): string {
  const seen = new Set<string>();
  for (const part of (accept ?? "").split(",")) {
    const value = part.trim();
    if (value) seen.add(value);
  }
  const wildcard = [...seen].some((v) => v.startsWith("*/*") || v.startsWith("application/*"));
  if (seen.size === 0 || wildcard) { for (const type of MODERN_MANIFEST_TYPES) seen.add(type); }
  return [...seen].join(", ");
}

/** True when a client's Accept (absent: anything) takes a manifest of `mediaType`. */
export function accepts(accept: string | null, mediaType: string): boolean {
  const values = (accept ?? "").split(",").map((v) => v.split(";")[0].trim()).filter(Boolean);
  return values.length === 0 ||
    values.some((v) => v === mediaType || v === "*/*" || v === "application/*");
}
