// Image references as people write them: `ubuntu`, `quay.io/org/app:1.2`, `host/name@sha256:...`.

import { isValidDigest, isValidName, isValidTag } from "./names.ts";

/** A parsed image reference. */
export interface ImageReference {
  registry: string;
  name: string;
  /** A tag or a digest. */
  reference: string;
}

/**
 * Parses an image reference the way docker does: a first component with a dot or a colon (or
 * `localhost`) is the registry, else Docker Hub, where one component gets `library/`. The default
 * tag is `latest`. Returns an error message for anything invalid.
 */
export function parseImageReference(text: string): ImageReference | string {
  let rest = text.trim();
  let reference = "latest";
  const at = rest.indexOf("@");
  if (at >= 0) {
    reference = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isValidDigest(reference)) return `invalid digest "${reference}" in "${text}"`;
  }
  const slash = rest.indexOf("/");
  const first = slash >= 0 ? rest.slice(0, slash) : "";
  const hasRegistry = slash >= 0 && (/[.:]/.test(first) || first === "localhost");
  const registry = hasRegistry ? first : "docker.io";
  let name = hasRegistry ? rest.slice(slash + 1) : rest;
  const colon = name.lastIndexOf(":");
  if (colon >= 0) {
    if (at < 0) reference = name.slice(colon + 1);
    name = name.slice(0, colon);
    if (at < 0 && !isValidTag(reference)) return `invalid tag "${reference}" in "${text}"`;
  }
  if (registry === "docker.io" && !name.includes("/")) name = `library/${name}`;
  if (!isValidName(name)) return `invalid repository name "${name}" in "${text}"`;
  return { registry, name, reference };
}
