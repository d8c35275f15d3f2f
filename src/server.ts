// Runs Deno.serve over HTTP, or HTTPS (HTTP/2 by ALPN) with certificates reloaded when they change.

import type { Config } from "./config.ts";
import { log } from "./log.ts";

/** The request handler Deno.serve calls. */
export type Handler = (request: Request, info: Deno.ServeHandlerInfo) => Promise<Response>;

/** A running server; with TLS, a certificate change swaps in a new listener on the same port. */
export interface RunningServer {
  shutdown(): Promise<void>;
  /** Settles when the server has stopped for good. */
  finished: Promise<void>;
}

/** Starts serving `handler` as the config says. */
export async function startServer(config: Config, handler: Handler): Promise<RunningServer> {
  const { hostname, port } = config.listen;
  const base = {
    hostname,
    port,
    onListen: ({ hostname, port }: Deno.NetAddr) => {
      log.info("listening on {hostname}:{port}", {
        hostname,
        port,
        tls: config.tls !== undefined,
        registries: [...config.registries.keys()],
      });
    },
    onError: (e: unknown) => {
      log.error("unhandled error: {error}", { error: (e as Error)?.stack ?? String(e) });
      return new Response("internal error", { status: 500 });
    },
  };
  const tls = config.tls;
  if (!tls) {
    const server = Deno.serve(base, handler);
    return { shutdown: () => server.shutdown(), finished: server.finished };
  }

  const read = async () => ({
    cert: await Deno.readTextFile(tls.cert),
    key: await Deno.readTextFile(tls.key),
  });
  let pair = await read();
  let server = Deno.serve({ ...base, ...pair }, handler);
  let stopping = false;
  let done!: () => void;
  const finished = new Promise<void>((resolve) => done = resolve);
  const timer = setInterval(async () => {
    let next: typeof pair;
    try {
      next = await read();
    } catch (e) {
      log.warn("cannot read TLS files, keeping the current certificate: {error}", {
        error: String(e),
      });
      return;
    }
    if (stopping || (next.cert === pair.cert && next.key === pair.key)) return;
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
    // The current listener stops accepting (its connections drain) and the next binds the port
    // a moment later: new connections are refused for a few milliseconds at most.
    const draining = server.shutdown();
    server = await bind(() => Deno.serve({ ...base, ...next, onListen: () => {} }, handler));
    pair = next;
    await draining;
    log.info("TLS certificate reloaded from {cert}", { cert: tls.cert });
  }, tls.reloadCheckMs);
  return {
    async shutdown() {
      stopping = true;
      clearInterval(timer);
      await server.shutdown();
      done();
    },
    finished,
  };
}

/** Retries binding while the previous listener on the port is closing. */
async function bind(
  serve: () => Deno.HttpServer<Deno.NetAddr>,
): Promise<Deno.HttpServer<Deno.NetAddr>> {
  for (let attempt = 0;; attempt++) {
    try {
      return serve();
    } catch (e) {
      if (!(e instanceof Deno.errors.AddrInUse) || attempt >= 200) throw e;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }
}
