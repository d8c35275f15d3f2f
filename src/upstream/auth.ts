// Upstream authentication: answers Basic and Bearer challenges, caches tokens per realm+service+scope.

import { LRUCache } from "lru-cache";
import { getDomain } from "tldts";
import { readLimited } from "../body.ts";
import type { RegistryConfig } from "../config.ts";
import { log } from "../log.ts";
import { RegistryError } from "../oci/errors.ts";
import { type Challenge, parseChallenges } from "./challenge.ts";

/** Token lifetime when the token server does not say (Distribution's token spec). */
const DEFAULT_EXPIRES_IN_S = 60;
/** Longest a token server may take to answer. */
const TOKEN_TIMEOUT_MS = 30_000;
/** Tokens kept per upstream (one per repository scope): JWTs of 1-4 KB, so at most ~4 MB. */
const MAX_TOKENS = 1_000;
/** Largest token response read (Docker Hub's are ~4 KB). */
const MAX_TOKEN_BODY = 1024 * 1024;
/** Redirects a token request may follow. */
const MAX_TOKEN_REDIRECTS = 3;
/** Untrusted realms warned about once each (the upstream names them, so they are bounded). */
const MAX_WARNED_REALMS = 100;

interface CachedToken {
  authorization: string;
  expiresAt: number;
}

/** What UpstreamAuth needs from outside: fetch and a clock, so tests can pass their own. */
export interface AuthDeps {
  /**
   * Fetches a token realm, then each redirect it leads to (the init asks for manual redirects).
   * The mirror passes its address guard here: it refuses (throws) a URL that leads somewhere
   * internal and dials the address it checked.
   */
  fetch: (url: URL, init: RequestInit) => Promise<Response>;
  now: () => number;
  userAgent: string;
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
  readonly #warned = new Set<string>();

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

  /**
   * True when the configured credentials may be sent to `realm`: never over http from an https
   * upstream; then the upstream's own origin (scheme, host and port), a host in `authRealms`, or
   * a host of the upstream's registrable domain.
   */
  trusts(realm: URL): boolean {
    const upstream = this.#registry.upstream;
    if (upstream.protocol === "https:" && realm.protocol !== "https:") return false;
    if (realm.protocol !== "https:" && realm.protocol !== "http:") return false;
    if (realm.origin === upstream.origin || this.#registry.authRealms.includes(realm.hostname)) {
      return true;
    }
    // Private suffixes count (github.io, s3.amazonaws.com): their subdomains are different owners.
    // An IP address or a single label has no registrable domain: only its own origin is trusted.
    const domain = getDomain(upstream.hostname, { allowPrivateDomains: true });
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
    if (service) realm.searchParams.set("service", service);
    for (const s of scope.split(" ").filter(Boolean)) realm.searchParams.append("scope", s);
    this.tokenFetches++;
    const response = await this.#requestToken(realm);
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
      const bytes = await readLimited(response.body, MAX_TOKEN_BODY);
      if (!bytes) {
        throw new RegistryError(
          "UNAVAILABLE",
          `token server of ${name} (${realm.origin}) sent more than ${MAX_TOKEN_BODY} bytes`,
          { status: 502 },
        );
      }
      body = JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      if (e instanceof RegistryError) throw e;
      const why = (e as Error)?.name === "TimeoutError" ? "timed out" : "sent invalid JSON";
      throw new RegistryError("UNAVAILABLE", `token server of ${name} ${why}`, {
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

  /**
   * GETs the realm, following its redirects by hand: each hop through deps.fetch (the address
   * guard), credentials only to the realm itself and only when it is trusted.
   */
  async #requestToken(realm: URL): Promise<Response> {
    const name = this.#registry.name;
    const signal = AbortSignal.timeout(TOKEN_TIMEOUT_MS);
    let url = realm;
    for (let hop = 0;; hop++) {
      const headers = new Headers({
        "user-agent": this.#deps.userAgent,
        accept: "application/json",
      });
      if (hop === 0 && this.#registry.password !== undefined) {
        if (this.trusts(realm)) headers.set("authorization", this.#basicValue());
        else this.#warnUntrusted(realm);
      }
      let response: Response;
      try {
        response = await this.#deps.fetch(url, { headers, signal, redirect: "manual" });
      } catch (e) {
        if (e instanceof RegistryError) throw e;
        throw new RegistryError(
          "UNAVAILABLE",
          `token server of ${name} (${url.origin}) unreachable: ${(e as Error).message}`,
          { status: 502, cause: e },
        );
      }
      const location = response.headers.get("location");
      if (response.status < 300 || response.status >= 400 || location === null) return response;
      await response.body?.cancel();
      if (hop >= MAX_TOKEN_REDIRECTS) {
        throw new RegistryError("UNAVAILABLE", `token server of ${name}: too many redirects`, {
          status: 502,
        });
      }
      try {
        url = new URL(location, url);
      } catch {
        throw new RegistryError("UNAVAILABLE", `token server of ${name} sent an invalid redirect`, {
          status: 502,
        });
      }
    }
  }

  #warnUntrusted(realm: URL): void {
    if (this.#warned.has(realm.origin) || this.#warned.size >= MAX_WARNED_REALMS) return;
    this.#warned.add(realm.origin);
    log.warn(
      "not sending the credentials of {registry} to token realm {realm}: not the upstream's " +
        "origin, registrable domain or authRealms, or http from an https upstream",
      { registry: this.#registry.name, realm: realm.origin },
    );
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
