// Upstream authentication: answers Basic and Bearer challenges, caches tokens per realm+service+scope.

import { LRUCache } from "lru-cache";
import { getDomain } from "tldts";
import type { RegistryConfig } from "../config.ts";
import { RegistryError } from "../oci/errors.ts";
import { type Challenge, parseChallenges } from "./challenge.ts";

/** Token lifetime when the token server does not say (Distribution's token spec). */
const DEFAULT_EXPIRES_IN_S = 60;
/** Longest a token server may take to answer. */
const TOKEN_TIMEOUT_MS = 30_000;
/** Tokens kept per upstream (one per repository scope): JWTs of 1-4 KB, so at most ~4 MB. */
const MAX_TOKENS = 1_000;

interface CachedToken {
  authorization: string;
  expiresAt: number;
}

/** What UpstreamAuth needs from outside: fetch and a clock, so tests can pass their own. */
export interface AuthDeps {
  fetch: typeof fetch;
  now: () => number;
  userAgent: string;
  /** Refuses (throws) a token realm that leads somewhere it must not. */
  checkRealm?: (realm: URL) => Promise<void>;
}

/**
 * Authentication towards one upstream registry. Tokens are reused across requests and clients
 * until shortly before they expire; concurrent requests for the same token share one fetch.
 */
export class UpstreamAuth {
  readonly #registry: RegistryConfig;
  readonly #deps: AuthDeps;
  /** Scopes name repositories the clients chose: bounded, and each entry leaves when it expires. */
  readonly #tokens: LRUCache<string, CachedToken>;
  readonly #pending = new Map<string, Promise<CachedToken>>();
  /** The Bearer realm and service of the last challenge, to send tokens before being asked. */
  #bearer?: { realm: string; service: string };
  #basic = false;
  /** Token fetches made (for tests and metrics). */
  tokenFetches = 0;

  constructor(registry: RegistryConfig, deps: AuthDeps) {
    this.#registry = registry;
    this.#deps = deps;
    // ttlResolution 0: read the injected clock on every check (and start no timer).
    this.#tokens = new LRUCache({ max: MAX_TOKENS, perf: { now: deps.now }, ttlResolution: 0 });
  }

  /** An Authorization value to send before any challenge, when one is known and fresh. */
  cached(scope: string | undefined): string | undefined {
    if (this.#basic) return this.#basicValue();
    if (!this.#bearer || scope === undefined) return undefined;
    const token = this.#tokens.get(tokenKey(this.#bearer.realm, this.#bearer.service, scope));
    return token && token.expiresAt > this.#deps.now() ? token.authorization : undefined;
  }

  /**
   * Answers a 401's challenges. `stale` is the Authorization that was just refused: a cached token
   * equal to it is not reused. Returns undefined when no challenge can be answered.
   */
  async answer(
    wwwAuthenticate: string | null,
    scope: string | undefined,
    stale: string | undefined,
  ): Promise<string | undefined> {
    const challenges = parseChallenges(wwwAuthenticate ?? "");
    const bearer = challenges.find((c) => c.scheme === "bearer" && c.params.realm);
    if (bearer) return await this.#bearerToken(bearer, scope, stale);
    if (challenges.some((c) => c.scheme === "basic") && this.#registry.password !== undefined) {
      const value = this.#basicValue();
      if (value === stale) return undefined;
      this.#basic = true;
      return value;
    }
    return undefined;
  }

  /** True when the configured credentials may be sent to `realm`. */
  trusts(realm: URL): boolean {
    const upstream = this.#registry.upstream.hostname;
    if (realm.hostname === upstream || this.#registry.authRealms.includes(realm.hostname)) {
      return true;
    }
    // Private suffixes count (github.io, s3.amazonaws.com): their subdomains are different owners.
    const domain = getDomain(upstream, { allowPrivateDomains: true });
    return domain !== null && domain === getDomain(realm.hostname, { allowPrivateDomains: true });
  }

  async #bearerToken(
    challenge: Challenge,
    scopeHint: string | undefined,
    stale: string | undefined,
  ): Promise<string> {
    const { realm, service = "" } = challenge.params;
    const scope = challenge.params.scope ?? scopeHint ?? "";
    this.#bearer = { realm, service };
    const key = tokenKey(realm, service, scope);
    const cached = this.#tokens.get(key);
    if (cached && cached.expiresAt > this.#deps.now() && cached.authorization !== stale) {
      return cached.authorization;
    }
    let pending = this.#pending.get(key);
    if (!pending) {
      pending = this.#fetchToken(realm, service, scope).finally(() => this.#pending.delete(key));
      this.#pending.set(key, pending);
    }
    const token = await pending;
    // The entry leaves with the token (lru-cache wants a positive whole number of ms).
    const ttl = Math.max(1, Math.ceil(token.expiresAt - this.#deps.now()));
    this.#tokens.set(key, token, { ttl });
    return token.authorization;
  }

  async #fetchToken(realmText: string, service: string, scope: string): Promise<CachedToken> {
    const name = this.#registry.name;
    let realm: URL;
    try {
      realm = new URL(realmText);
    } catch {
      realm = new URL("invalid:");
    }
    if (realm.protocol !== "https:" && realm.protocol !== "http:") {
      throw new RegistryError("UNAVAILABLE", `upstream ${name} sent an invalid token realm`, {
        status: 502,
      });
    }
    await this.#deps.checkRealm?.(realm);
    if (service) realm.searchParams.set("service", service);
    for (const s of scope.split(" ").filter(Boolean)) realm.searchParams.append("scope", s);
    const headers = new Headers({ "user-agent": this.#deps.userAgent, accept: "application/json" });
    const password = this.#registry.password;
    if (password !== undefined && this.trusts(realm)) {
      headers.set("authorization", this.#basicValue());
    }
    this.tokenFetches++;
    let response: Response;
    try {
      response = await this.#deps.fetch(realm, {
        headers,
        signal: AbortSignal.timeout(TOKEN_TIMEOUT_MS),
      });
    } catch (e) {
      throw new RegistryError(
        "UNAVAILABLE",
        `token server of ${name} (${realm.origin}) unreachable: ${(e as Error).message}`,
        { status: 502, cause: e },
      );
    }
    if (!response.ok) {
      await response.body?.cancel();
      const denied = response.status === 401 || response.status === 403;
      throw new RegistryError(
        denied ? "UNAUTHORIZED" : "UNAVAILABLE",
        `token server of ${name} (${realm.origin}) answered ${response.status}` +
          (denied ? ": credentials refused" : ""),
        { status: denied ? 401 : 502 },
      );
    }
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      body = await response.json();
    } catch (e) {
      throw new RegistryError("UNAVAILABLE", `token server of ${name} sent invalid JSON`, {
        status: 502,
        cause: e,
      });
    }
    const token = typeof body.token === "string" && body.token
      ? body.token
      : typeof body.access_token === "string"
      ? body.access_token
      : "";
    if (!token) {
      throw new RegistryError("UNAVAILABLE", `token server of ${name} sent no token`, {
        status: 502,
      });
    }
    const expiresIn = typeof body.expires_in === "number" && body.expires_in > 0
      ? body.expires_in
      : DEFAULT_EXPIRES_IN_S;
    // Renew at 90% of the lifetime, so a token never expires on its way upstream.
    return { authorization: `Bearer ${token}`, expiresAt: this.#deps.now() + expiresIn * 900 };
  }

  #basicValue(): string {
    const { username = "", password = "" } = this.#registry;
    return `Basic ${
      btoa(String.fromCharCode(...new TextEncoder().encode(`${username}:${password}`)))
    }`;
  }
}

function tokenKey(realm: string, service: string, scope: string): string {
  return `${realm}\n${service}\n${scope}`;
}
