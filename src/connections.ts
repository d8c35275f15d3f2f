// Serves HTTP on connections accepted here, each by its own Deno HTTP server, so that each one can
// be timed out and closed alone: Deno.serve accepts by itself and has no timeouts at all.

import { log } from "./log.ts";
import { sendableStandIn, type Sending, sharedPiece, watchBody } from "./watched_body.ts";

/** When connections are closed, and how many may be open. */
export interface ConnectionSettings {
  /** A new connection must have sent its first request's head within this (ms). */
  headerTimeoutMs: number;
  /** After a response, the next request's head must have come within this (ms). */
  idleTimeoutMs: number;
  /** A response whose client takes nothing for this long is cut, with its connection (ms). */
  sendTimeoutMs: number;
  maxConnections: number;
}

/** The request handler, as Deno.serve calls it. */
export type ConnectionHandler = (
  request: Request,
  info: Deno.ServeHandlerInfo<Deno.NetAddr>,
) => Response | Promise<Response>;

/** Why connections were closed or refused, counted since start. */
export interface ConnectionStats {
  headerTimeouts: number;
  idleTimeouts: number;
  sendTimeouts: number;
  /**
   * Connections closed to make room (at the cap, or when accept() found no descriptor): idle ones,
   * else the one longest sending a body the runtime sends by itself, once past the send timeout.
   */
  shed: number;
  /** New connections closed at once: at the cap with none idle. */
  refused: number;
  acceptErrors: number;
  /** Bodies the runtime sent by itself (a bucket's blob relayed in Rust: see runtimeSendable). */
  runtimeSent: number;
}

/** Responses with a Content-Length up to this are written whole into buffers: timed as one piece. */
const SMALL_BODY = 64 * 1024;
/**
 * Bodies the runtime sends by itself at once, at most. No send timeout sees them: a client that
 * stalls one keeps it, its bucket connection and a chunk of memory until it goes, or until the
 * connection is shed to make room. Beyond this, such bodies are sent by their watched stand-in.
 */
export const MAX_RUNTIME_SENT = 16;
/** Longest pause between accept() attempts after errors. */
const MAX_ACCEPT_BACKOFF_MS = 1000;
/** Repeated warnings (accept errors, refused connections) are logged at most this often. */
const WARN_EVERY_MS = 10_000;

type ServeOnConnection = (
  connection: Deno.Conn,
  signal: AbortSignal,
  handler: ConnectionHandler,
  onError: (error: unknown) => Response | Promise<Response>,
  onListen: () => void,
) => Deno.HttpServer;

interface Connection {
  remote: string;
  abort: AbortController;
  server?: Deno.HttpServer;
  /** Requests whose handler runs or whose response is being sent. */
  active: number;
  served: number;
  /** When the connection last fell quiet: accepted, or its last response done (ms). */
  since: number;
  sending: Set<Sending>;
  closed: boolean;
}

/**
 * Deno.serve's own per-connection entry point. It is internal (`Deno[Deno.internal]`): the public
 * API offers no way to serve a connection accepted by the program, nor to close one connection.
 */
function serveOnConnection(): ServeOnConnection {
  const deno = Deno as unknown as Record<symbol, { serveHttpOnConnection?: unknown } | undefined>;
  const key = (Deno as unknown as { internal?: symbol }).internal;
  const serve = key === undefined ? undefined : deno[key]?.serveHttpOnConnection;
  if (typeof serve !== "function") {
    throw new Error(
      `Deno ${Deno.version.deno} has no per-connection HTTP server ` +
        "(Deno[Deno.internal].serveHttpOnConnection): registry-mirror is built for Deno 2.9",
    );
  }
  return serve as ServeOnConnection;
}

/** The open connections, their timeouts and their cap, fed by one or more listeners in turn. */
export class ConnectionServer {
  readonly #handler: ConnectionHandler;
  readonly #settings: ConnectionSettings;
  readonly #onError: (error: unknown) => Response | Promise<Response>;
  readonly #now: () => number;
  readonly #serveOn = serveOnConnection();
  readonly #open = new Set<Connection>();
  /** Responses whose bodies are being sent in pieces: they share PIECE_BUDGET. */
  readonly #bodies = new Set<Sending>();
  /** Bodies the runtime is sending by itself now (see MAX_RUNTIME_SENT). */
  #runtimeSending = 0;
  readonly #sweeper: ReturnType<typeof setInterval>;
  readonly #warned = new Map<string, { at: number; since: number }>();
  readonly stats: ConnectionStats = {
    headerTimeouts: 0,
    idleTimeouts: 0,
    sendTimeouts: 0,
    shed: 0,
    refused: 0,
    acceptErrors: 0,
    runtimeSent: 0,
  };

  constructor(
    handler: ConnectionHandler,
    settings: ConnectionSettings,
    opts: { onError: (error: unknown) => Response | Promise<Response>; now?: () => number },
  ) {
    this.#handler = handler;
    this.#settings = settings;
    this.#onError = opts.onError;
    this.#now = opts.now ?? performance.now.bind(performance);
    const { headerTimeoutMs, idleTimeoutMs, sendTimeoutMs } = settings;
    const shortest = Math.min(headerTimeoutMs, idleTimeoutMs, sendTimeoutMs);
    this.#sweeper = setInterval(() => this.#sweep(), Math.max(50, Math.min(1000, shortest / 4)));
    Deno.unrefTimer(this.#sweeper);
  }

  /** Connections open now. */
  get open(): number {
    return this.#open.size;
  }

  /**
   * Accepts connections from `listener` until it is closed. An accept() error (no descriptor left:
   * EMFILE) is logged, an idle connection is closed to free one, and accepting goes on.
   */
  async accept(listener: Deno.Listener): Promise<void> {
    let backoff = 0;
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (e instanceof Deno.errors.BadResource) return; // the listener was closed
        this.stats.acceptErrors++;
        const shed = this.#shed();
        this.#warn("error", "accepting a connection failed: {error}; retrying", {
          error: String((e as Error)?.message ?? e),
          open: this.#open.size,
          shed,
        });
        backoff = Math.min(MAX_ACCEPT_BACKOFF_MS, Math.max(10, backoff * 2));
        await new Promise((resolve) => setTimeout(resolve, backoff));
        continue;
      }
      backoff = 0;
      this.#add(conn);
    }
  }

  /** Lets responses in progress finish, closes idle connections, and settles when all are gone. */
  async shutdown(): Promise<void> {
    await Promise.all([...this.#open].map(async (c) => {
      if (c.active === 0) this.#close(c);
      // A client gone meanwhile (a broken pipe) is no reason to stop shutting down the others.
      else await c.server?.shutdown().catch(() => {});
      await c.server?.finished.catch(() => {});
    }));
    clearInterval(this.#sweeper);
  }

  #add(conn: Deno.Conn): void {
    if (this.#open.size >= this.#settings.maxConnections && !this.#shed()) {
      this.stats.refused++;
      conn.close();
      this.#warn("warning", "connection refused: {open} open, none idle (limits.maxConnections)", {
        open: this.#open.size,
      });
      return;
    }
    const addr = conn.remoteAddr as Deno.NetAddr;
    const c: Connection = {
      remote: `${addr.hostname}:${addr.port}`,
      abort: new AbortController(),
      active: 0,
      served: 0,
      since: this.#now(),
      sending: new Set(),
      closed: false,
    };
    this.#open.add(c);
    const handler: ConnectionHandler = (request, info) => this.#serve(c, request, info);
    try {
      c.server = this.#serveOn(conn, c.abort.signal, handler, this.#onError, () => {});
    } catch (e) {
      this.#open.delete(c);
      try {
        conn.close();
      } catch { /* already closed */ }
      log.warn("cannot serve the connection from {remote}: {error}", {
        remote: c.remote,
        error: String(e),
      });
      return;
    }
    const gone = () => this.#open.delete(c);
    const server = c.server;
    server.finished.then(gone, (e) => {
      gone();
      // A server that ended in an error (a client gone in the middle of a body) still holds its
      // resource: without this, one leaked per download a client gave up on.
      server.shutdown().catch(() => {});
      if (!c.closed) {
        log.debug("connection from {remote} failed: {error}", {
          remote: c.remote,
          error: String(e),
        });
      }
    });
  }

  #serve(
    c: Connection,
    request: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ): Response | Promise<Response> {
    c.active++;
    const sending: Sending = { waitingSince: 0 };
    const done = () => {
      c.active--;
      c.served++;
      c.sending.delete(sending);
      this.#bodies.delete(sending);
      if (sending.runtimeSince !== undefined) this.#runtimeSending--;
      if (c.active === 0) c.since = this.#now();
    };
    info.completed.then(done, done);
    const response = this.#handler(request, info);
    return response instanceof Promise
      ? response.then((r) => this.#watch(c, request.method, r, sending))
      : this.#watch(c, request.method, response, sending);
  }

  /**
   * Starts timing the response's sending; wraps its body unless it is small enough to be sent whole
   * or the runtime sends it by itself.
   */
  #watch(c: Connection, method: string, response: Response, sending: Sending): Response {
    sending.waitingSince = this.#now();
    c.sending.add(sending);
    const length = response.headers.get("content-length");
    if (method === "HEAD" || (length !== null && Number(length) <= SMALL_BODY)) return response;
    // A body of unknown length from a string or bytes becomes a stream here: errors and ops pages.
    const body = response.body;
    if (body === null) return response;
    const standIn = sendableStandIn(body);
    if (standIn && this.#runtimeSending < MAX_RUNTIME_SENT) {
      this.#runtimeSending++;
      this.stats.runtimeSent++;
      sending.waitingSince = 0; // never known to wait: see MAX_RUNTIME_SENT
      sending.runtimeSince = this.#now();
      return response;
    }
    const quickMs = this.#settings.sendTimeoutMs / 16;
    this.#bodies.add(sending);
    const maxPiece = () => sharedPiece(this.#bodies.size);
    const watched = watchBody(standIn?.() ?? body, sending, { now: this.#now, quickMs, maxPiece });
    return new Response(watched, {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  }

  /** Closes connections past their deadline: head, idle or send. */
  #sweep(): void {
    const now = this.#now();
    const { headerTimeoutMs, idleTimeoutMs, sendTimeoutMs } = this.#settings;
    for (const c of this.#open) {
      if (c.closed) continue;
      if (c.active === 0) {
        const first = c.served === 0;
        if (now - c.since > (first ? headerTimeoutMs : idleTimeoutMs)) {
          this.stats[first ? "headerTimeouts" : "idleTimeouts"]++;
          log.debug("closed {remote}: {reason}", {
            remote: c.remote,
            reason: first ? "no request head within limits.headerTimeout" : "idle keep-alive",
          });
          this.#close(c);
        }
        continue;
      }
      for (const s of c.sending) {
        if (s.waitingSince !== 0 && now - s.waitingSince > sendTimeoutMs) {
          this.stats.sendTimeouts++;
          log.info(
            "closed {remote}: the client took nothing for {seconds} s (limits.sendTimeout)",
            {
              remote: c.remote,
              seconds: Math.round((now - s.waitingSince) / 1000),
            },
          );
          this.#close(c);
          break;
        }
      }
    }
  }

  /** Closes a connection to make room: see ConnectionStats.shed. */
  #shed(): boolean {
    return this.#shedIdle() || this.#shedRuntimeSending();
  }

  /** Closes the connection longest open among those with no request in progress. */
  #shedIdle(): boolean {
    for (const c of this.#open) {
      if (!c.closed && c.active === 0) {
        this.stats.shed++;
        this.#close(c);
        return true;
      }
    }
    return false;
  }

  /** Closes the connection whose body the runtime has sent by itself the longest, past the send timeout. */
  #shedRuntimeSending(): boolean {
    const since = this.#now() - this.#settings.sendTimeoutMs;
    let oldest: { c: Connection; at: number } | undefined;
    for (const c of this.#open) {
      if (c.closed) continue;
      for (const s of c.sending) {
        const at = s.runtimeSince;
        if (at !== undefined && at < since && (!oldest || at < oldest.at)) oldest = { c, at };
      }
    }
    if (!oldest) return false;
    this.stats.shed++;
    this.#close(oldest.c);
    return true;
  }

  #close(c: Connection): void {
    c.closed = true;
    this.#open.delete(c);
    c.abort.abort();
  }

  /** Logs now, then the same message at most every WARN_EVERY_MS, with how many were not logged. */
  #warn(level: "error" | "warning", message: string, props: Record<string, unknown>): void {
    const now = this.#now();
    const last = this.#warned.get(message);
    if (last && now - last.at < WARN_EVERY_MS) {
      last.since++;
      return;
    }
    this.#warned.set(message, { at: now, since: 0 });
    log[level === "error" ? "error" : "warn"](message, { ...props, notLogged: last?.since ?? 0 });
  }
}
