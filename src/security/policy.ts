// Repository policy: allow and deny glob patterns over `registry/repository`, checked before
// anything goes upstream or is served from the cache.

import type { Config } from "../config.ts";
import { RegistryError } from "../oci/errors.ts";

interface Rule {
  text: string;
  pattern: RegExp;
}

/** Compiles `docker.io/library/*` (one component) or `ghcr.io/my-org/**` (any depth). */
function compile(text: string): Rule {
  const source = text.split("**").map((part) =>
    part.split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join("[^/]*")
  ).join(".*");
  return { text, pattern: new RegExp(`^${source}$`) };
}

/** The policy: a deny rule always wins; with allow rules, only what one allows is served. */
export class Policy {
  readonly #allow: Rule[];
  readonly #deny: Rule[];

  constructor(settings: Config["policy"]) {
    this.#allow = settings.allow.map(compile);
    this.#deny = settings.deny.map(compile);
  }

  /** A 403 DENIED naming the rule, or undefined when `registry/name` may be pulled. */
  check(registry: string, name: string): RegistryError | undefined {
    const subject = `${registry}/${name}`;
    const denied = this.#deny.find((r) => r.pattern.test(subject));
    if (denied) {
      return new RegistryError(
        "DENIED",
        `pull of ${subject} denied by rule "deny: ${denied.text}"`,
      );
    }
    if (this.#allow.length > 0 && !this.#allow.some((r) => r.pattern.test(subject))) {
      return new RegistryError(
        "DENIED",
        `pull of ${subject} denied: no allow rule matches (${
          this.#allow.map((r) => r.text).join(", ")
        })`,
      );
    }
    return undefined;
  }
}
