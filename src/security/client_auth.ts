// Client authentication: htpasswd (bcrypt) Basic credentials and static bearer tokens, checked
// before any cache or upstream work.

import bcrypt from "bcryptjs";
import { LRUCache } from "lru-cache";
import { createHash, timingSafeEqual } from "node:crypto";
import type { Config } from "../config.ts";
import { RegistryError } from "../oci/errors.ts";

/** How long a verified Basic credential is remembered (bcrypt is slow on purpose). */
const VERIFIED_TTL_MS = 5 * 60_000;
/** Verified credentials remembered: far more than clients in use; a miss costs one bcrypt check. */
const MAX_VERIFIED = 1_000;
const REALM = "registry-mirror";

/** Users from an htpasswd file: name -> bcrypt hash. Other hash kinds are refused. */
export function parseHtpasswd(text: string, path: string): Map<string, string> {
  const users = new Map<string, string>();
  text.split("\n").forEach((line, i) => {
    const entry = line.trim();
    if (!entry || entry.startsWith("#")) return;
    const colon = entry.indexOf(":");
    const hash = entry.slice(colon + 1);
    if (colon <= 0 || !/^\$2[aby]\$\d\d\$/.test(hash)) {
      throw new Error(`${path}:${i + 1}: not a "user:bcrypt-hash" entry (use htpasswd -B)`);
    }
    users.set(entry.slice(0, colon), hash);
  });
  return users;
}

/** Who made a request, once authenticated. */
export interface Client {
  user: string;
}

/** Options of ClientAuth. */
export interface ClientAuthOptions {
  /** Clock, ms since the epoch (default Date.now). */
  now?: () => number;
}

/** Checks the Authorization header of each request against htpasswd users and static tokens. */
export class ClientAuth {
  readonly #users: Map<string, string>;
  readonly #tokens: Buffer[];
  readonly #now: () => number;
  /** Keyed by the Authorization value a client sent: bounded, and entries leave when expired. */
  readonly #verified: LRUCache<string, { user: string; until: number }>;

  constructor(users: Map<string, string>, tokens: string[], options: ClientAuthOptions = {}) {
    this.#users = users;
    this.#tokens = tokens.map((t) => sha256(t));
    this.#now = options.now ?? Date.now;
    // ttlResolution 0: read the clock on every check (and start no timer).
    this.#verified = new LRUCache({
      max: MAX_VERIFIED,
      ttl: VERIFIED_TTL_MS,
      perf: { now: this.#now },
      ttlResolution: 0,
    });
  }

  /** Loads the htpasswd file named in the config. */
  static async load(settings: NonNullable<Config["auth"]>): Promise<ClientAuth> {
    const path = settings.htpasswd;
    const users = path ? parseHtpasswd(await Deno.readTextFile(path), path) : new Map();
    return new ClientAuth(users, settings.tokens);
  }

  /** The client, or a 401 with the Basic challenge docker, containerd and podman follow. */
  async authenticate(request: Request): Promise<Client | RegistryError> {
    const header = request.headers.get("authorization") ?? "";
    const [scheme, value = ""] = header.split(" ", 2);
    if (scheme.toLowerCase() === "bearer" && value) {
      const hash = sha256(value);
      if (this.#tokens.some((t) => timingSafeEqual(t, hash))) return { user: "token" };
    } else if (scheme.toLowerCase() === "basic" && value) {
      const known = this.#verified.get(value);
      if (known && known.until > this.#now()) return { user: known.user };
      const decoded = decodeBasic(value);
      const hash = decoded && this.#users.get(decoded.user);
      if (decoded && hash && await bcrypt.compare(decoded.password, hash)) {
        this.#verified.set(value, { user: decoded.user, until: this.#now() + VERIFIED_TTL_MS });
        return { user: decoded.user };
      }
    }
    return new RegistryError(
      "UNAUTHORIZED",
      header ? "authentication failed" : "authentication required",
      { headers: { "www-authenticate": `Basic realm="${REALM}", charset="UTF-8"` } },
    );
  }
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

function decodeBasic(value: string): { user: string; password: string } | undefined {
  try {
    const text = new TextDecoder().decode(Uint8Array.from(atob(value), (c) => c.charCodeAt(0)));
    const colon = text.indexOf(":");
    return colon > 0 ? { user: text.slice(0, colon), password: text.slice(colon + 1) } : undefined;
  } catch {
    return undefined;
  }
}
