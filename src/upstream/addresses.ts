// Where upstream redirects and token realms may lead: only to public addresses, unless the upstream
// itself is there; and the addresses checked are the addresses dialled.

import ipaddr from "ipaddr.js";
import { LRUCache } from "lru-cache";
import { RegistryError } from "../oci/errors.ts";
import { PinnedDialer, type PinnedDialerOptions } from "./pinned.ts";

/** How long resolved addresses of a host are reused. */
const RESOLVE_TTL_MS = 60_000;
/** Hosts whose addresses are remembered (the upstream names them, so they are bounded). */
const MAX_HOSTS = 1_000;

/**
 * The range an address belongs to, as ipaddr.js names it (RFC 6890 and friends): "unicast" is the
 * public internet, anything else (loopback, private, linkLocal, uniqueLocal, carrierGradeNat,
 * multicast, reserved...) is not. An IPv6 address that carries an IPv4 one (IPv4-mapped and
 * -translated, NAT64 64:ff9b::/96, 6to4, Teredo, IPv4-compatible) is named by that IPv4 address,
 * since that is where the packets end up. "invalid" for anything that is not an address.
 */
export function addressRange(ip: string): string {
  const text = ip.replace(/^\[(.*)\]$/, "$1");
  if (!ipaddr.isValid(text)) return "invalid";
  const address = ipaddr.process(text); // IPv4-mapped -> IPv4
  if (address.kind() === "ipv4") return address.range();
  const v6 = address as ipaddr.IPv6;
  const range = v6.range();
  const embedded = embeddedIPv4(v6, range);
  return embedded.length === 0 ? range : embedded.map((v4) => v4.range()).find(notPublic) ??
    "unicast";
}

/** True for an address on the public internet (ipaddr.js range "unicast", embedded IPv4 too). */
export function isPublicAddress(ip: string): boolean {
  return addressRange(ip) === "unicast";
}

function notPublic(range: string): boolean {
  return range !== "unicast";
}

/** The IPv4 addresses an IPv6 address tunnels or translates to (RFC 6052, 3056, 4380, 4291). */
function embeddedIPv4(v6: ipaddr.IPv6, range: string): ipaddr.IPv4[] {
  const p = v6.parts;
  const v4 = (high: number, low: number) =>
    new ipaddr.IPv4([high >> 8, high & 0xff, low >> 8, low & 0xff]);
  switch (range) {
    case "rfc6145": // ::ffff:0:a.b.c.d
      return [v4(p[6], p[7])];
    case "rfc6052":
      // 64:ff9b::/96 carries the IPv4 address last; the local-use 64:ff9b:1::/48 may place it
      // anywhere (RFC 8215), so it stays "rfc6052": not public.
      return p[2] === 0 ? [v4(p[6], p[7])] : [];
    case "6to4": // 2002:AABB:CCDD::/48
      return [v4(p[1], p[2])];
    case "teredo": // 2001:0:SERVER:flags:port:~CLIENT
      return [v4(p[2], p[3]), v4(p[6] ^ 0xffff, p[7] ^ 0xffff)];
    case "unicast": // ::a.b.c.d, IPv4-compatible (deprecated, still routed by some stacks)
      return p.slice(0, 6).every((part) => part === 0) ? [v4(p[6], p[7])] : [];
  }
  return [];
}

/** Canonical text of an address, so that 127.0.0.1 and ::ffff:7f00:1 compare equal. */
function canonical(ip: string): string {
  return ipaddr.isValid(ip) ? ipaddr.process(ip).toString() : ip;
}

/** Resolves a host to its addresses (an IP literal is its own address). */
export type Resolve = (hostname: string) => Promise<string[]>;

/** Deno's resolver: A and AAAA records; `localhost` is loopback. */
export const resolveHost: Resolve = async (hostname) => {
  const host = hostname.replace(/^\[(.*)\]$/, "$1");
  if (ipaddr.isValid(host)) return [host];
  if (host === "localhost") return ["127.0.0.1", "::1"];
  const results = await Promise.allSettled([
    Deno.resolveDns(host, "A"),
    Deno.resolveDns(host, "AAAA"),
  ]);
  return results.flatMap((r) => r.status === "fulfilled" ? r.value : []);
};

/** Options of {@linkcode AddressGuard}. */
export interface AddressGuardOptions extends PinnedDialerOptions {
  resolve?: Resolve;
}

/**
 * Checks and dials the targets of one upstream's redirects and token realms. A name is resolved
 * once; every address must be public (or one of the upstream's own); the connection then goes to
 * a checked address, never through a second resolution.
 */
export class AddressGuard {
  readonly #upstream: URL;
  readonly #resolve: Resolve;
  readonly #dialer: PinnedDialer;
  readonly #cache = new LRUCache<string, string[]>({
    max: MAX_HOSTS,
    ttl: RESOLVE_TTL_MS,
    ttlResolution: 0, // read the clock on every check (and start no timer)
  });

  constructor(upstream: URL, options: AddressGuardOptions = {}) {
    this.#upstream = upstream;
    this.#resolve = options.resolve ?? resolveHost;
    this.#dialer = new PinnedDialer(options);
  }

  /**
   * The addresses to dial for `target`, IPv4 first, or undefined for the upstream's own host
   * (dialled by name, like the upstream). Throws a 502 naming the target when it leads somewhere
   * other than the public internet or the upstream's own addresses.
   */
  async check(target: URL, what: string): Promise<string[] | undefined> {
    if (target.protocol !== "http:" && target.protocol !== "https:") {
      throw refuse(target, what, "not http(s)");
    }
    if (target.hostname === this.#upstream.hostname) return undefined;
    const addresses = await this.#addresses(target.hostname);
    if (addresses.length === 0) throw refuse(target, what, "does not resolve");
    const internal = addresses.filter((a) => !isPublicAddress(a));
    if (internal.length > 0) {
      const own = (await this.#addresses(this.#upstream.hostname)).map(canonical);
      const foreign = internal.find((a) => !own.includes(canonical(a)));
      if (foreign !== undefined) {
        throw refuse(target, what, `internal address ${foreign} (${addressRange(foreign)})`);
      }
    }
    const v4 = addresses.filter((a) => ipaddr.process(a).kind() === "ipv4");
    return [...v4, ...addresses.filter((a) => !v4.includes(a))];
  }

  /** Fetches `target` after {@linkcode check}, connecting only to the addresses it approved. */
  async fetch(target: URL, init: RequestInit, what: string): Promise<Response> {
    const addresses = await this.check(target, what);
    return await this.#dialer.fetch(target, addresses, init);
  }

  /** Closes the dialer's connections and listener. */
  async close(): Promise<void> {
    await this.#dialer.close();
  }

  async #addresses(hostname: string): Promise<string[]> {
    const cached = this.#cache.get(hostname);
    if (cached) return cached;
    const addresses = await this.#resolve(hostname);
    this.#cache.set(hostname, addresses);
    return addresses;
  }
}

function refuse(target: URL, what: string, why: string): RegistryError {
  return new RegistryError(
    "DENIED",
    `refusing to follow ${what} to ${target.protocol}//${target.host}: ${why}`,
    { status: 502 },
  );
}
