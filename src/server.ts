// Listens over HTTP, or HTTPS (HTTP/2 by ALPN) with certificates reloaded when they change, and
// hands each connection to the connection server (timeouts, a cap, accept errors survived).

import type { Config } from "./config.ts";
import { ConnectionServer, type ConnectionStats } from "./connections.ts";
import { maxConnectionsForThisProcess } from "./descriptors.ts";
import { log } from "./log.ts";

/** The request handler Deno's HTTP server calls. */
export type Handler = (request: Request, info: Deno.ServeHandlerInfo) => Promise<Response>;

/** A running server; with TLS, a certificate change swaps in a new listener on the same port. */
export interface RunningServer {
  shutdown(): Promise<void>;
  /** Settles when the server has stopped for good. */
  finished: Promise<void>;
  /** Connections closed or refused by the limits, since start. */
  stats: ConnectionStats;
}

/** Starts serving `handler` as the config says. */
export async function startServer(config: Config, handler: Handler): Promise<RunningServer> {
  const { hostname, port } = config.listen;
  const limits = config.limits;
  // Probed before listening: the probe briefly holds the descriptors it counts.
  const probed = limits.maxConnections === undefined ? maxConnectionsForThisProcess() : undefined;
  const connections = new ConnectionServer(handler, {
    headerTimeoutMs: limits.headerTimeoutMs,
    idleTimeoutMs: limits.idleTimeoutMs,
    sendTimeoutMs: limits.sendTimeoutMs,
    maxConnections: limits.maxConnections ?? probed!.max,
  }, {
    onError: (e: unknown) => {
      log.error("unhandled error: {error}", { error: (e as Error)?.stack ?? String(e) });
      return new Response("internal error", { status: 500 });
    },
  });
  const tls = config.tls;
  type Pair = { cert: string; key: string };
  const listen = (pair?: Pair): Deno.Listener =>
    pair
      ? Deno.listenTls({ hostname, port, ...pair, alpnProtocols: ["h2", "http/1.1"] })
      : Deno.listen({ hostname, port });
  const read = async (): Promise<Pair | undefined> =>
    tls && {
      cert: await Deno.readTextFile(tls.cert),
      key: await Deno.readTextFile(tls.key),
    };
  let pair = await read();
  let listener = listen(pair);
  let accepting = connections.accept(listener);
  const addr = listener.addr as Deno.NetAddr;
  log.info("listening on {hostname}:{port}", {
    hostname: addr.hostname,
    port: addr.port,
    tls: tls !== undefined,
    registries: [...config.registries.keys()],
    maxConnections: limits.maxConnections ?? probed!.max,
    // Descriptors free at start, when the cap was derived from them (undefined: more than needed).
    freeDescriptors: probed?.free,
  });
  let stopping = false;
  let done!: () => void;
  const finished = new Promise<void>((resolve) => done = resolve);
  const timer = tls && setInterval(async () => {
    let next: Pair;
    try {
      next = (await read())!;
    } catch (e) {
      log.warn("cannot read TLS files, keeping the current certificate: {error}", {
        error: String(e),
      });
      return;
    }
    if (stopping || (next.cert === pair!.cert && next.key === pair!.key)) return;
    try {
      // Check the new pair on a throwaway port first: a bad pair must not stop the server.
      Deno.listenTls({ hostname: "127.0.0.1", port: 0, ...next }).close();
    } catch (e) {
      log.error("new TLS certificate refused, keeping the current one: {error}", {
        error: String(e),
      });
      pair = next;
      return;
    }
    // Open connections carry on; the next listener binds the port a moment after this one
    // closes: new connections are refused for a few milliseconds at most.
    try {
      listener.close();
    } catch { /* closed by a failed swap before */ }
    await accepting;
    try {
      listener = await bind(() => listen(next));
    } catch (e) {
      log.error("cannot listen again with the new TLS certificate, retrying: {error}", {
        error: String(e),
      });
      return;
    }
    accepting = connections.accept(listener);
    pair = next;
    log.info("TLS certificate reloaded from {cert}", { cert: tls.cert });
  }, tls.reloadCheckMs);
  return {
    async shutdown() {
      stopping = true;
      clearInterval(timer);
      try {
        listener.close();
      } catch { /* closed by a failed certificate swap */ }
      await accepting;
      await connections.shutdown();
      done();
    },
    finished,
    stats: connections.stats,
  };
}

/** Retries binding while the previous listener on the port is closing. */
async function bind(listen: () => Deno.Listener): Promise<Deno.Listener> {
  for (let attempt = 0;; attempt++) {
    try {
      return listen();
    } catch (e) {
      if (!(e instanceof Deno.errors.AddrInUse) || attempt >= 200) throw e;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }
}
