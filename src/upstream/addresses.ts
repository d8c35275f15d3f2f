// Where upstream redirects and token realms may lead: never to loopback, link-local or private
// addresses, unless the upstream itself is there (then exactly its own addresses).

import { isIP } from "node:net";
import { RegistryError } from "../oci/errors.ts";

/** How long resolved addresses of a host are reused. */
const RESOLVE_TTL_MS = 60_000;

/** True for loopback, link-local, private, unspecified, CGNAT and multicast addresses. */
export function isInternalAddress(ip: string): boolean {
  if (isIP(ip) === 4) {
    const [a, b] = ip.split(".").map(Number);
    return a === 0 || a === 10 || a === 127 || (a === 169 && b === 254) ||
      (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) ||
      (a === 100 && b >= 64 && b <= 127) || a >= 224;
  }
  const v6 = ip.toLowerCase();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(v6);
  if (mapped) return isInternalAddress(mapped[1]);
  return v6 === "::1" || v6 === "::" || /^f[cd]/.test(v6) || /^fe[89ab]/.test(v6) ||
    v6.startsWith("ff");
}

/** Resolves a host to its addresses (an IP literal is its own address). */
export type Resolve = (hostname: string) => Promise<string[]>;

/** Deno's resolver: A and AAAA records; `localhost` is loopback. */
export const resolveHost: Resolve = async (hostname) => {
  const host = hostname.replace(/^\[(.*)\]$/, "$1");
  if (isIP(host)) return [host];
  if (host === "localhost") return ["127.0.0.1", "::1"];
  const results = await Promise.allSettled([
    Deno.resolveDns(host, "A"),
    Deno.resolveDns(host, "AAAA"),
  ]);
  return results.flatMap((r) => r.status === "fulfilled" ? r.value : []);
};

/** Checks the targets of one upstream's redirects and token realms. */
export class AddressGuard {
  readonly #upstream: URL;
  readonly #resolve: Resolve;
  readonly #cache = new Map<string, { addresses: string[]; until: number }>();

  constructor(upstream: URL, resolve: Resolve = resolveHost) {
    this.#upstream = upstream;
    this.#resolve = resolve;
  }

  /** Throws a 502 naming the target when it leads somewhere internal the upstream is not. */
  async check(target: URL, what: string): Promise<void> {
    if (target.protocol !== "http:" && target.protocol !== "https:") {
      throw refuse(target, what, "not http(s)");
    }
    if (target.hostname === this.#upstream.hostname) return;
    const addresses = await this.#addresses(target.hostname);
    if (addresses.length === 0) throw refuse(target, what, "does not resolve");
    const internal = addresses.filter(isInternalAddress);
    if (internal.length === 0) return;
    const own = await this.#addresses(this.#upstream.hostname);
    const foreign = internal.filter((a) => !own.includes(a));
    if (foreign.length > 0) throw refuse(target, what, `internal address ${foreign[0]}`);
  }

  async #addresses(hostname: string): Promise<string[]> {
    const cached = this.#cache.get(hostname);
    if (cached && cached.until > Date.now()) return cached.addresses;
    const addresses = await this.#resolve(hostname);
    this.#cache.set(hostname, { addresses, until: Date.now() + RESOLVE_TTL_MS });
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
