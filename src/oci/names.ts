// The OCI names grammar: repository names, tags, digests and references.

/** One path component of a repository name. */
const COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
const DIGEST = /^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/;
const HEX_LENGTH: Record<string, number> = { sha256: 64, sha512: 128 };

/** Longest repository name Distribution accepts. */
export const MAX_NAME_LENGTH = 255;

/** True for a valid repository name such as `library/ubuntu`. */
export function isValidName(name: string): boolean {
  return name.length > 0 && name.length <= MAX_NAME_LENGTH &&
    name.split("/").every((c) => COMPONENT.test(c));
}

/** True for a valid tag such as `3.9` or `latest`. */
export function isValidTag(tag: string): boolean {
  return TAG.test(tag);
}

/** True for a digest of a supported algorithm with the right length of lowercase hex. */
export function isValidDigest(digest: string): boolean {
  const m = DIGEST.exec(digest);
  if (!m) return false;
  const length = HEX_LENGTH[m[1]];
  return length !== undefined && m[2].length === length && /^[a-f0-9]+$/.test(m[2]);
}

/** True when a manifest reference is a digest rather than a tag. */
export function isDigestReference(reference: string): boolean {
  return reference.includes(":");
}
