// Who owns a cache directory: the serving process holds an exclusive lock on it (it alone evicts
// and clears tmp/) and answers the commands run beside it on a Unix socket inside it.

import { log } from "../log.ts";

/** The lock file the owner holds for as long as it runs. */
function lockPath(dir: string): string {
  return `${dir}/server.lock`;
}

/** The owner's Unix socket: only who can reach into the cache directory can use it. */
export function ownerSocket(dir: string): string {
  return `${dir}/server.sock`;
}

/** Takes ownership of `dir` when nobody has it; undefined when a server (or a command) does. */
export async function tryOwn(dir: string): Promise<Deno.FsFile | undefined> {
  await Deno.mkdir(dir, { recursive: true });
  const file = await Deno.open(lockPath(dir), { create: true, write: true });
  if (await file.tryLock(true)) return file;
  file.close();
  return undefined;
}

/** Takes ownership of `dir`, waiting (and saying so) while another process has it. */
export async function own(dir: string): Promise<Deno.FsFile> {
  const mine = await tryOwn(dir);
  if (mine) return mine;
  log.warn("waiting for {dir}: another registry-mirror server or command is using it", { dir });
  const file = await Deno.open(lockPath(dir), { create: true, write: true });
  await file.lock(true);
  return file;
}

/** Serves `handler` on the owner's socket for commands run beside the server. */
export function serveOwnerSocket(
  dir: string,
  handler: (request: Request) => Promise<Response>,
): Deno.HttpServer | undefined {
  const path = ownerSocket(dir);
  try {
    Deno.removeSync(path);
  } catch { /* none left over */ }
  try {
    return Deno.serve({ path, onListen: () => {} }, (request) => handler(request));
  } catch (e) {
    log.warn("commands beside the server cannot reach it: cannot listen on {path}: {error}", {
      path,
      error: (e as Error).message,
    });
    return undefined;
  }
}

/**
 * A request handler that sends each request to the server owning `dir`, over its socket; what
 * the commands add is then cached, counted and evicted by the server itself.
 */
export function ownerClient(dir: string): {
  handler: (request: Request) => Promise<Response>;
  close(): void;
} {
  const client = Deno.createHttpClient({ proxy: { transport: "unix", path: ownerSocket(dir) } });
  return {
    handler: async (request) => {
      const url = new URL(request.url);
      try {
        return await fetch(`http://registry-mirror${url.pathname}${url.search}`, {
          headers: request.headers,
          client,
        });
      } catch (e) {
        throw new Error(
          `a registry-mirror server owns ${dir} but does not answer on ${ownerSocket(dir)}: ` +
            (e as Error).message,
        );
      }
    },
    close: () => client.close(),
  };
}
