// Checks bcrypt passwords in worker threads: a slow hash (on purpose) never stalls the event loop.

import { type CheckReply, type CheckRequest, WORKER_NAME, WORKER_URL } from "./bcrypt_worker.ts";

/** Compares a password with a bcrypt hash somewhere other than the caller's thread. */
export interface PasswordVerifier {
  /** True when `password` matches `hash`; rejects when `hash` cannot be checked. */
  verify(password: string, hash: string): Promise<boolean>;
  /** Stops the threads; checks still waiting reject. */
  close(): void;
}

/** Options of BcryptPool. */
export interface BcryptPoolOptions {
  /** Worker threads (default: one per core beyond the first, one or two). */
  size?: number;
}

interface Slot {
  worker: Worker;
  waiting: Map<number, { resolve: (ok: boolean) => void; reject: (e: Error) => void }>;
}

/** Worker threads running bcryptjs, started on the first check, each taking the least busy. */
export class BcryptPool implements PasswordVerifier {
  readonly #size: number;
  readonly #slots: Slot[] = [];
  #nextId = 0;
  #checks = 0;

  constructor(options: BcryptPoolOptions = {}) {
    this.#size = options.size ?? Math.min(2, Math.max(1, navigator.hardwareConcurrency - 1));
  }

  /** Checks completed by the workers so far, matched or not. */
  get checks(): number {
    return this.#checks;
  }

  verify(password: string, hash: string): Promise<boolean> {
    const slot = this.#slot();
    const id = ++this.#nextId;
    return new Promise((resolve, reject) => {
      slot.waiting.set(id, { resolve, reject });
      slot.worker.postMessage({ id, password, hash } satisfies CheckRequest);
    });
  }

  close(): void {
    for (const slot of this.#slots.splice(0)) this.#stop(slot, "the password checker was closed");
  }

  /** The least busy worker, or a new one while there are fewer than `size`. */
  #slot(): Slot {
    const idle = this.#slots.find((s) => s.waiting.size === 0);
    if (idle) return idle;
    if (this.#slots.length < this.#size) return this.#start();
    return this.#slots.reduce((a, b) => (b.waiting.size < a.waiting.size ? b : a));
  }

  #start(): Slot {
    const entry = `data:text/javascript,${
      encodeURIComponent(`import ${JSON.stringify(WORKER_URL)};`)
    }`;
    const worker = new Worker(entry, { type: "module", name: WORKER_NAME });
    const slot: Slot = { worker, waiting: new Map() };
    worker.onmessage = ({ data }: MessageEvent<CheckReply>) => {
      const waiter = slot.waiting.get(data.id);
      slot.waiting.delete(data.id);
      this.#checks++;
      if ("error" in data) waiter?.reject(new Error(`bcrypt: ${data.error}`));
      else waiter?.resolve(data.ok);
    };
    // A worker that fails is replaced by the next check; its waiting checks fail, the server lives.
    worker.onerror = (event) => {
      event.preventDefault();
      const index = this.#slots.indexOf(slot);
      if (index >= 0) this.#slots.splice(index, 1);
      this.#stop(slot, `the password checker failed: ${event.message}`);
    };
    this.#slots.push(slot);
    return slot;
  }

  #stop(slot: Slot, reason: string): void {
    slot.worker.terminate();
    for (const { reject } of slot.waiting.values()) reject(new Error(reason));
    slot.waiting.clear();
  }
}
