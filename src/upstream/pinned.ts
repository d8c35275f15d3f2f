// Dials a URL at addresses already checked, never resolving its name again: http by IP with the
// Host header; https through a loopback CONNECT tunnel to the IP, so TLS still names the host.

import { LRUCache } from "lru-cache";

/**
 * Deno's fetch cannot be given resolved addresses, and a TCP "proxy" client speaks plain HTTP even
 * for https URLs. An HTTP proxy client, though, sends `CONNECT host:port` and then does TLS itself
 * (SNI and certificate checked for the host): the proxy here answers that CONNECT by connecting to
 * the checked IP. Bytes pass through JavaScript, in large reads.
 */
const TUNNEL_READ_BYTES = 256 * 1024;
/** Largest CONNECT request head read, and how long it may take to arrive. */
const MAX_HEAD_BYTES = 8 * 1024;
const HEAD_TIMEOUT_MS = 10_000;
/** Pinned https clients kept (one per host, port and address set) and for how long. */
const MAX_CLIENTS = 64;
const CLIENT_TTL_MS = 60_000;
const PROXY_ENV = [
  "ALL_PROXY",
  "all_proxy",
  "HTTPS_PROXY",
  "https_proxy",
  "HTTP_PROXY",
  "http_proxy",
];

/** Options of {@linkcode PinnedDialer}. */
export interface PinnedDialerOptions {
  /** The fetch to dial with (a `client` is added to its init for pinned connections). */
  fetch?: typeof fetch;
  /** Extra CA certificates (PEM) trusted by pinned https connections. */
  caCerts?: string[];
  /** The environment (to see proxy variables); Deno.env by default. */
  env?: (name: string) => string | undefined;
}

/** Where one pinned https client may connect, and what happened when it did. */
interface Pin {
  /** The CONNECT authority Deno sends: `host:port`. */
  authority: string;
  port: number;
  addresses: string[];
  tunnels: number;
  error?: string;
}

interface PinnedClient {
  client: Deno.HttpClient;
  pin: Pin;
  token: string;
}

/** Fetches URLs at given addresses; owns a loopback tunnel listener and pinned clients. */
export class PinnedDialer {
  readonly #fetch: typeof fetch;
  readonly #caCerts?: string[];
  readonly #env: (name: string) => string | undefined;
  #plain?: Deno.HttpClient;
  readonly #clients = new LRUCache<string, PinnedClient>({
    max: MAX_CLIENTS,
    ttl: CLIENT_TTL_MS,
    ttlResolution: 0, // read the clock on every check (and start no timer)
    // Closing a client leaves its requests in flight alone: only new connections stop.
    dispose: (entry) => {
      entry.client.close();
      this.#pins.delete(entry.token);
    },
  });
  /** Tunnel passwords -> what they allow. */
  readonly #pins = new Map<string, Pin>();
  #listener?: Deno.Listener;
  #accepting?: Promise<void>;
  readonly #conns = new Set<Deno.Conn>();
  readonly #tunnels = new Set<Promise<void>>();

  constructor(options: PinnedDialerOptions = {}) {
    this.#fetch = options.fetch ?? fetch;
    this.#caCerts = options.caCerts;
    this.#env = options.env ?? readEnv;
  }

  /**
   * Fetches `url`, connecting only to `addresses` (in order); undefined dials by name. Behind a
   * proxy from the environment, the proxy resolves and dials: the URL goes to it by name.
   */
  async fetch(url: URL, addresses: string[] | undefined, init: RequestInit): Promise<Response> {
    if (addresses === undefined || isIpLiteral(url.hostname) || this.#proxied()) {
      return await this.#fetch(url, init);
    }
    if (url.protocol === "http:") {
      const direct = new URL(url);
      direct.hostname = addresses[0].includes(":") ? `[${addresses[0]}]` : addresses[0];
      const headers = new Headers(init.headers);
      headers.set("host", url.host);
      this.#plain ??= Deno.createHttpClient({ allowHost: true });
      return await this.#fetch(direct, { ...init, headers, client: this.#plain });
    }
    const pinned = this.#pinnedClient(url, addresses);
    let response: Response;
    try {
      response = await this.#fetch(url, { ...init, client: pinned.client });
    } catch (e) {
      // The tunnel could not connect: say why, in the shape of fetch's own errors.
      if (pinned.pin.error) {
        throw new TypeError("fetch failed", { cause: new Error(pinned.pin.error) });
      }
      throw e;
    }
    if (pinned.pin.tunnels === 0) {
      // NO_PROXY matched the host: Deno connected by name, not through the tunnel.
      await response.body?.cancel();
      throw new Error(`https to ${url.host} was not pinned to ${addresses.join(", ")}: NO_PROXY?`);
    }
    return response;
  }

  /** Where the tunnel listens (`127.0.0.1:PORT`) once an https URL was pinned (for tests). */
  get tunnelAddress(): Deno.NetAddr | undefined {
    return this.#listener?.addr as Deno.NetAddr | undefined;
  }

  /** Closes the listener, the clients and every tunnel. */
  async close(): Promise<void> {
    this.#clients.clear();
    this.#plain?.close();
    this.#plain = undefined;
    this.#listener?.close();
    await this.#accepting;
    for (const conn of this.#conns) closeQuietly(conn);
    await Promise.all(this.#tunnels);
  }

  #proxied(): boolean {
    return PROXY_ENV.some((name) => this.#env(name));
  }

  #pinnedClient(url: URL, addresses: string[]): PinnedClient {
    const port = Number(url.port || 443);
    const key = `${url.hostname}:${port} ${addresses.join(" ")}`;
    const cached = this.#clients.get(key);
    if (cached) return cached;
    const proxy = this.#listen();
    const token = crypto.randomUUID();
    const pin: Pin = { authority: `${url.hostname}:${port}`, port, addresses, tunnels: 0 };
    this.#pins.set(token, pin);
    const client = Deno.createHttpClient({
      caCerts: this.#caCerts,
      proxy: { url: proxy, basicAuth: { username: "pin", password: token } },
    });
    const entry = { client, pin, token };
    this.#clients.set(key, entry);
    return entry;
  }

  /** Starts the tunnel listener on 127.0.0.1 once; returns its proxy URL. */
  #listen(): string {
    if (!this.#listener) {
      const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      this.#listener = listener;
      this.#accepting = (async () => {
        try {
          for await (const conn of listener) this.#track(conn, this.#tunnel(conn));
        } catch {
          // The listener was closed.
        }
      })();
    }
    return `http://127.0.0.1:${(this.#listener.addr as Deno.NetAddr).port}`;
  }

  #track(conn: Deno.Conn, task: Promise<void>): void {
    this.#conns.add(conn);
    const done = task.finally(() => {
      this.#conns.delete(conn);
      this.#tunnels.delete(done);
    });
    this.#tunnels.add(done);
  }

  /** Answers one CONNECT: only with a known password, only to its pin's host and port. */
  async #tunnel(conn: Deno.Conn): Promise<void> {
    let target: Deno.Conn | undefined;
    try {
      const head = await readHead(conn);
      const pin = head && this.#pins.get(head.password);
      if (!head || !pin || head.authority.toLowerCase() !== pin.authority) {
        await conn.write(status(403, "Forbidden"));
        return;
      }
      for (const hostname of pin.addresses) {
        try {
          target = await Deno.connect({ hostname, port: pin.port });
          pin.error = undefined;
          break;
        } catch (e) {
          pin.error = `connect ${hostname}:${pin.port}: ${(e as Error).message}`;
        }
      }
      if (!target) {
        await conn.write(status(502, "Bad Gateway"));
        return;
      }
      pin.tunnels++;
      this.#conns.add(target);
      await conn.write(status(200, "Connection established"));
      await splice(conn, target);
    } catch {
      // Either side went away: both are closed below.
    } finally {
      closeQuietly(conn);
      if (target) {
        closeQuietly(target);
        this.#conns.delete(target);
      }
    }
  }
}

/** Copies both ways until both sides are done; an error on either side ends both. */
async function splice(a: Deno.Conn, b: Deno.Conn): Promise<void> {
  const end = () => {
    closeQuietly(a);
    closeQuietly(b);
  };
  await Promise.all([copy(a, b, MAX_HEAD_BYTES, end), copy(b, a, TUNNEL_READ_BYTES, end)]);
}

async function copy(from: Deno.Conn, to: Deno.Conn, size: number, end: () => void) {
  const buffer = new Uint8Array(size);
  try {
    for (let n = await from.read(buffer); n !== null; n = await from.read(buffer)) {
      for (let at = 0; at < n;) at += await to.write(buffer.subarray(at, n));
    }
    await to.closeWrite();
  } catch {
    end();
  }
}

/** The CONNECT authority and proxy password of a request head, or undefined when it is not one. */
async function readHead(
  conn: Deno.Conn,
): Promise<{ authority: string; password: string } | undefined> {
  const buffer = new Uint8Array(MAX_HEAD_BYTES);
  let size = 0;
  const timer = setTimeout(() => closeQuietly(conn), HEAD_TIMEOUT_MS);
  try {
    while (size < buffer.length) {
      const n = await conn.read(buffer.subarray(size));
      if (n === null) return undefined;
      size += n;
      const text = new TextDecoder().decode(buffer.subarray(0, size));
      if (!text.includes("\r\n\r\n")) continue;
      const [request, ...headers] = text.split("\r\n");
      const connect = /^CONNECT (\S+) HTTP\/1\.[01]$/.exec(request);
      const auth = headers.map((h) => /^proxy-authorization:\s*basic\s+(\S+)\s*$/i.exec(h))
        .find((m) => m !== null);
      if (!connect || !auth) return undefined;
      const credentials = atob(auth[1]);
      return { authority: connect[1], password: credentials.slice(credentials.indexOf(":") + 1) };
    }
    return undefined;
  } catch {
    return undefined;
  } finally {
    clearTimeout(timer);
  }
}

function status(code: number, reason: string): Uint8Array {
  return new TextEncoder().encode(`HTTP/1.1 ${code} ${reason}\r\ncontent-length: 0\r\n\r\n`);
}

function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

function isIpLiteral(hostname: string): boolean {
  return hostname.startsWith("[") || /^\d+\.\d+\.\d+\.\d+$/.test(hostname);
}

function readEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no --allow-env: assume no proxy
  }
}
