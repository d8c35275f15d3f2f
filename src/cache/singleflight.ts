// Shares one in-flight call among concurrent callers of the same key.

/** Runs `work` for `key` unless a call for `key` is already running, whose result is then shared. */
export class SingleFlight<T> {
  readonly #pending = new Map<string, Promise<T>>();

  run(key: string, work: () => Promise<T>): Promise<T> {
    let pending = this.#pending.get(key);
    if (!pending) {
      pending = work().finally(() => this.#pending.delete(key));
      this.#pending.set(key, pending);
    }
    return pending;
  }
}
