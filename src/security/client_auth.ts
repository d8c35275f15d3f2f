// Client authentication: htpasswd (bcrypt) Basic credentials and static bearer tokens, checked
// before any cache or upstream work. Passwords are compared in worker threads (BcryptPool), unknown
// users against a hash of the same cost, and a client that keeps failing is made to wait.

import { LRUCache } from "lru-cache";
import { createHash, timingSafeEqual } from "node:crypto";
import type { Config } from "../config.ts";
import { RegistryError } from "../oci/errors.ts";
import { BcryptPool, type PasswordVerifier } from "./bcrypt_pool.ts";
import { LoginBackoff } from "./login_backoff.ts";

/** How long a verified Basic credential is remembered (bcrypt is slow on purpose). */
const VERIFIED_TTL_MS = 5 * 60_000;
/** Verified credentials remembered: far more than clients in use; a miss costs one bcrypt check. */
const MAX_VERIFIED = 1_000;
/**
 * Refused credentials remembered (by SHA-256, 32 bytes each), for as long as verified ones: clients
 * retry a wrong password several times (containerd five), and a repeat teaches a guesser nothing.
 */
const MAX_REFUSED = 10_000;
const REALM = "registry-mirror";
/** bcrypt's base64 alphabet, for the stand-in hash unknown users are checked against. */
const BCRYPT_BASE64 = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/** Users from an htpasswd file: name -> bcrypt hash. Other hash kinds are refused. */
export function parseHtpasswd(text: string, path: string): Map<string, string> {
  const users = new Map<string, string>();
  text.split("\n").forEach((line, i) => {
    const entry = line.trim();
    if (!entry || entry.startsWith("#")) return;
    const colon = entry.indexOf(":");
    const hash = entry.slice(colon + 1);
    if (colon <= 0 || !/^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/.test(hash)) {
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
  /** Where passwords are compared with hashes (default: a BcryptPool of worker threads). */
  verifier?: PasswordVerifier;
}

/** Checks the Authorization header of each request against htpasswd users and static tokens. */
export class ClientAuth {
  readonly #users: Map<string, string>;
  readonly #tokens: Buffer[];
  readonly #now: () => number;
  readonly #verifier: PasswordVerifier;
  readonly #backoff: LoginBackoff;
  /** What unknown users are checked against; undefined without users (nothing to hide then). */
  readonly #standIn: string | undefined;
  /** Keyed by the Authorization value a client sent: bounded, and entries leave when expired. */
  readonly #verified: LRUCache<string, { user: string; until: number }>;
  /** SHA-256 (hex) of Authorization values found wrong. */
  readonly #refused: LRUCache<string, true>;
  /** Checks in progress by Authorization value: a client's parallel requests share one. */
  readonly #checking = new Map<string, Promise<string | undefined>>();

  constructor(users: Map<string, string>, tokens: string[], options: ClientAuthOptions = {}) {
    this.#users = users;
    this.#tokens = tokens.map((t) => sha256(t));
    this.#now = options.now ?? Date.now;
    this.#verifier = options.verifier ?? new BcryptPool();
    this.#backoff = new LoginBackoff({ now: this.#now });
    this.#standIn = standInHash(users);
    // ttlResolution 0: read the clock on every check (and start no timer).
    const expiring = { ttl: VERIFIED_TTL_MS, perf: { now: this.#now }, ttlResolution: 0 };
    this.#verified = new LRUCache({ max: MAX_VERIFIED, ...expiring });
    this.#refused = new LRUCache({ max: MAX_REFUSED, ...expiring });
  }

  /** Loads the htpasswd file named in the config. */
  static async load(settings: NonNullable<Config["auth"]>): Promise<ClientAuth> {
    const path = settings.htpasswd;
    const users = path ? parseHtpasswd(await Deno.readTextFile(path), path) : new Map();
    return new ClientAuth(users, settings.tokens);
  }

  /**
   * The client, a 401 with the Basic challenge docker, containerd and podman follow, or a 429 for
   * a `client` (its address) that failed too often to have another password checked yet.
   */
  async authenticate(request: Request, client: string): Promise<Client | RegistryError> {
    const header = request.headers.get("authorization") ?? "";
    const [scheme, value = ""] = header.split(" ", 2);
    if (scheme.toLowerCase() === "bearer" && value) {
      const hash = sha256(value);
      if (this.#tokens.some((t) => timingSafeEqual(t, hash))) return { user: "token" };
    } else if (scheme.toLowerCase() === "basic" && value) {
      const known = this.#verified.get(value);
      if (known && known.until > this.#now()) return { user: known.user };
      const user = await this.#check(value, client);
      if (user instanceof RegistryError) return user;
      if (user !== undefined) return { user };
    }
    return new RegistryError(
      "UNAUTHORIZED",
      header ? "authentication failed" : "authentication required",
      { headers: { "www-authenticate": `Basic realm="${REALM}", charset="UTF-8"` } },
    );
  }

  /** Stops the password checking threads. */
  close(): void {
    this.#verifier.close();
  }

  /** The user a Basic credential proves, undefined for none, or the 429 of a client that waits. */
  #check(value: string, client: string): Promise<string | undefined | RegistryError> {
    const decoded = decodeBasic(value);
    const digest = sha256(value).toString("hex");
    const standIn = this.#standIn;
    if (!decoded || !standIn || this.#refused.has(digest)) return Promise.resolve(undefined);
    const running = this.#checking.get(value);
    if (running) return running;
    const attempt = this.#backoff.begin(client);
    if (attempt instanceof RegistryError) return Promise.resolve(attempt);
    const check = (async () => {
      const hash = this.#users.get(decoded.user);
      let matched: boolean;
      try {
        // Unknown users cost a check of the same cost: their answer comes no sooner.
        matched = await this.#verifier.verify(decoded.password, hash ?? standIn);
      } catch (e) {
        this.#backoff.abandon(attempt);
        throw e;
      }
      matched &&= hash !== undefined;
      this.#backoff.end(attempt, matched);
      if (!matched) {
        this.#refused.set(digest, true);
        return undefined;
      }
      this.#verified.set(value, { user: decoded.user, until: this.#now() + VERIFIED_TTL_MS });
      return decoded.user;
    })().finally(() => this.#checking.delete(value));
    this.#checking.set(value, check);
    return check;
  }
}

/**
 * A bcrypt hash no password matches (random salt and checksum), of the version and cost most users
 * have, so checking a password against it takes as long as against theirs.
 */
function standInHash(users: Map<string, string>): string | undefined {
  const counts = new Map<string, number>();
  for (const hash of users.values()) {
    const prefix = hash.slice(0, 7); // "$2b$10$"
    counts.set(prefix, (counts.get(prefix) ?? 0) + 1);
  }
  const [prefix] = [...counts].reduce((a, b) => (b[1] > a[1] ? b : a), ["", 0]);
  if (!prefix) return undefined;
  const random = crypto.getRandomValues(new Uint8Array(53)); // 22 salt + 31 checksum characters
  return prefix + Array.from(random, (b) => BCRYPT_BASE64[b % 64]).join("");
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
