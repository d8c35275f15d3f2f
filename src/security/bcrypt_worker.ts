// The worker side of BcryptPool: compares passwords with bcrypt hashes, one message at a time.
//
// The pool starts each worker from a data: URL that imports WORKER_URL, this module's own URL.
// Under `deno run` and `deno compile` that is this file (in the module graph through the pool's
// import, so `deno compile` needs no --include); in a `deno bundle` file it is the bundle itself,
// whose entry point then sees `import.meta.main` false and stays idle while this module answers.

import bcrypt from "bcryptjs";

/** The name the pool gives its workers: the module serves only in a worker of that name. */
export const WORKER_NAME = "registry-mirror-bcrypt";
/** What a worker loads: this module, or the bundle that contains it. */
export const WORKER_URL = import.meta.url;

/** A check asked of a worker. */
export interface CheckRequest {
  id: number;
  password: string;
  hash: string;
}

/** A worker's answer: whether the password matched, or why the hash could not be checked. */
export type CheckReply = { id: number; ok: boolean } | { id: number; error: string };

interface WorkerScope {
  name?: string;
  onmessage: ((event: MessageEvent<CheckRequest>) => void) | null;
  postMessage(reply: CheckReply): void;
}

const scope = globalThis as unknown as WorkerScope;
if ("WorkerGlobalScope" in globalThis && scope.name === WORKER_NAME) {
  // compareSync: this thread does nothing else, and messages wait their turn in its queue.
  scope.onmessage = ({ data: { id, password, hash } }) => {
    try {
      scope.postMessage({ id, ok: bcrypt.compareSync(password, hash) });
    } catch (e) {
      scope.postMessage({ id, error: String((e as Error)?.message ?? e) });
    }
  };
}
