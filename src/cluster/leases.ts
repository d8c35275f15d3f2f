// Leases in the bucket: which replica does a job for the fleet (fill a blob, evict). A lease is
// taken by creating `leases/<name>/<generation>` only if absent (`If-None-Match: *`), renewed by
// its holder, and taken over once lapsed by creating the next generation: nobody ever deletes a
// lease someone else may still hold, so two replicas that both saw it lapse cannot both win.

import { log } from "../log.ts";
import type { S3Client } from "../s3/client.ts";
import { listObjects } from "../s3/list.ts";

/** What a lease object says. */
export interface LeaseRecord {
  /** The holder's `cluster.advertise` URL: where other replicas reach it. */
  owner: string;
  /** The holding process (a random id per start): two starts behind one URL are not the same. */
  holder: string;
  /** Until when the lease holds unless renewed (ms since the epoch, the holder's clock). */
  expiresAt: number;
}

/** The outcome of `acquire`: the lease is ours, or another holder's (still live). */
export type Acquired = { lease: Lease } | { held: LeaseRecord };

/** Who takes leases, and how long they last. */
export interface LeasesOptions {
  /** This replica's `cluster.advertise` URL. */
  owner: string;
  /** This process's id (default: a random UUID). */
  holder?: string;
  ttlMs: number;
  /** Clock, ms since the epoch. */
  now?: () => number;
}

/** Generation numbers are zero-padded so that keys list in numeric order. */
const DIGITS = 10;
/** Rounds of create-or-read before giving up when others keep winning. */
const MAX_ROUNDS = 8;

/** The leases of one bucket prefix. */
export class Leases {
  readonly client: S3Client;
  readonly owner: string;
  readonly holder: string;
  readonly ttlMs: number;
  readonly now: () => number;
  readonly #root: string;

  constructor(client: S3Client, prefix: string, options: LeasesOptions) {
    this.client = client;
    this.#root = `${prefix}leases/`;
    this.owner = options.owner;
    this.holder = options.holder ?? crypto.randomUUID();
    this.ttlMs = options.ttlMs;
    this.now = options.now ?? Date.now;
  }

  /**
   * Takes the lease `name` when nobody holds it or its holder let it lapse; else says who holds it.
   * The first try creates generation 0 without listing (the common case: nobody holds it). A
   * generation created is held only if it is the highest: a release leaves gaps below others.
   */
  async acquire(name: string): Promise<Acquired> {
    let next = 0;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const created = await this.client.createIfAbsent(this.key(name, next), this.#record());
      const top = (await this.generations(name)).at(-1);
      if (created && top === next) return { lease: new Lease(this, name, next) };
      if (created) await this.#delete(name, next); // below another generation: not ours to hold
      if (top === undefined) {
        next = 0; // released meanwhile
        continue;
      }
      const record = await this.read(name, top);
      if (record && record.expiresAt > this.now()) return { held: record };
      next = top + 1; // lapsed (or released meanwhile): take it over
    }
    throw new Error(`lease ${name}: others kept taking it over (${MAX_ROUNDS} rounds)`);
  }

  /** The generations of `name` present in the bucket, ascending. */
  async generations(name: string): Promise<number[]> {
    const under = `${this.#root}${name}/`;
    const found: number[] = [];
    for await (const { key } of listObjects(this.client, under)) {
      const rest = key.slice(under.length);
      if (/^\d+$/.test(rest)) found.push(Number(rest));
    }
    return found.sort((a, b) => a - b);
  }

  /** The record of one generation; undefined when gone or unreadable (then it counts as lapsed). */
  async read(name: string, generation: number): Promise<LeaseRecord | undefined> {
    const response = await this.client.send("GetObject", "GET", this.key(name, generation), {
      expect: [200, 404],
    });
    if (response.status === 404) {
      await response.body?.cancel();
      return undefined;
    }
    return parseRecord(await response.text());
  }

  key(name: string, generation: number): string {
    return `${this.#root}${name}/${String(generation).padStart(DIGITS, "0")}`;
  }

  /** This holder's record, valid for a TTL from now. */
  #record(): string {
    const record: LeaseRecord = {
      owner: this.owner,
      holder: this.holder,
      expiresAt: this.now() + this.ttlMs,
    };
    return JSON.stringify(record);
  }

  async #delete(name: string, generation: number): Promise<void> {
    const key = this.key(name, generation);
    await (await this.client.send("DeleteObject", "DELETE", key)).body?.cancel();
  }

  /** Deletes the generations of `name` up to `generation` (see Lease.release). */
  async deleteUpTo(name: string, generation: number): Promise<void> {
    for (const found of await this.generations(name)) {
      if (found <= generation) await this.#delete(name, found);
    }
  }

  /** Writes this holder's record (renewal of a generation it created). */
  async write(name: string, generation: number): Promise<void> {
    const response = await this.client.send("PutObject", "PUT", this.key(name, generation), {
      body: this.#record(),
    });
    await response.body?.cancel();
  }
}

/** A lease this process holds: renew it while the job runs, release it when the job is done. */
export class Lease {
  readonly name: string;
  readonly generation: number;
  readonly #leases: Leases;
  #renewedAt: number;
  #released = false;
  #timer?: ReturnType<typeof setTimeout>;

  constructor(leases: Leases, name: string, generation: number) {
    this.#leases = leases;
    this.name = name;
    this.generation = generation;
    this.#renewedAt = leases.now();
  }

  get released(): boolean {
    return this.#released;
  }

  /** Extends the lease by a TTL from now. */
  async renew(): Promise<void> {
    const at = this.#leases.now();
    await this.#leases.write(this.name, this.generation);
    this.#renewedAt = at;
  }

  /**
   * Gives the lease up: deletes its generation and the lapsed ones below it (a holder took each of
   * them over, so none is live). At most once; a failure is left to the TTL.
   */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    clearTimeout(this.#timer);
    try {
      await this.#leases.deleteUpTo(this.name, this.generation);
    } catch (e) {
      log.warn("cannot release lease {name}: {error} (it lapses by itself)", {
        name: this.name,
        error: String((e as Error)?.message ?? e),
      });
    }
  }

  /**
   * One step of holding the lease while a job runs: released once `done`, else renewed when a
   * third of the TTL has passed since the last renewal. False once released.
   */
  async tick(done: boolean): Promise<boolean> {
    if (this.#released) return false;
    if (done) {
      await this.release();
      return false;
    }
    if (this.#leases.now() - this.#renewedAt >= this.#leases.ttlMs / 3) {
      await this.renew().catch((e) =>
        log.warn("cannot renew lease {name}: {error}", {
          name: this.name,
          error: String((e as Error)?.message ?? e),
        })
      );
    }
    return true;
  }

  /** Holds the lease in the background until `done()` says the job is over (see `tick`). */
  hold(done: () => boolean): void {
    const step = Math.max(50, Math.min(1000, this.#leases.ttlMs / 6));
    const next = () => {
      this.#timer = setTimeout(async () => {
        if (await this.tick(done())) next();
      }, step);
      Deno.unrefTimer(this.#timer);
    };
    clearTimeout(this.#timer);
    if (!this.#released) next();
  }
}

function parseRecord(text: string): LeaseRecord | undefined {
  try {
    const { owner, holder, expiresAt } = JSON.parse(text);
    if (typeof owner !== "string" || typeof holder !== "string") return undefined;
    if (typeof expiresAt !== "number") return undefined;
    return { owner, holder, expiresAt };
  } catch {
    return undefined;
  }
}
