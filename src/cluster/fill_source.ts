// Where one fill of a replica reads its bytes from, fleet-wide: the replica holding the blob's
// lease fetches it upstream; the others stream it from that replica's fill (its internal
// endpoint), or from the bucket once it is committed. When the holder dies, its lease lapses and
// the next `open(offset)` takes it over and resumes upstream with a Range.

import { log } from "../log.ts";
import { isErrorCode, RegistryError } from "../oci/errors.ts";
import type { Lease, Leases } from "./leases.ts";
import { FILL_HEADER, openPeer, type PeerOptions, REPOSITORY_HEADER } from "./peer.ts";

/** Where a fill's bytes can come from, for the blob it fills. */
export interface FillSources {
  /** The registry's upstreams, from `offset` (a 200, or a 206 when resuming). */
  upstream(offset: number): Promise<Response>;
  /** The committed blob from `offset`, when stored and servable to this repository. */
  stored(offset: number): Promise<Response | undefined>;
  /** Confirms upstream that this repository holds the blob (a peer filled it for another one). */
  confirm(): Promise<void>;
}

/** The blob a fill is for. */
export interface FillTarget {
  registry: string;
  repository: string;
  digest: string;
}

/** Where the bytes of a fill came from, counted per `open`. */
export type SourceKind = "upstream" | "peer" | "bucket";

/** What a fill's source needs of the cluster. */
export interface ClusterDeps {
  leases: Leases;
  peer: PeerOptions;
  /** Counts each source a fill opened. */
  opened?: (source: SourceKind) => void;
  sleep?: (ms: number) => Promise<void>;
}

/** The part of a Fill its lease holder watches. */
export interface FillState {
  settled: boolean;
  caching: boolean;
}

/** The source of one fill: its `open` is the fill's OpenUpstream. */
export class ClusterFill {
  readonly #deps: ClusterDeps;
  readonly #target: FillTarget;
  readonly #sources: FillSources;
  readonly #name: string;
  #lease?: Lease;
  #fill?: FillState;
  #confirmed = false;
  #warned = false;

  constructor(deps: ClusterDeps, target: FillTarget, sources: FillSources) {
    this.#deps = deps;
    this.#target = target;
    this.#sources = sources;
    this.#name = `fills/${target.registry}/${target.digest.replace(":", "/")}`;
  }

  /** True while this replica holds the blob's lease. */
  get holding(): boolean {
    return this.#lease !== undefined && !this.#lease.released;
  }

  /**
   * The blob from `offset`: upstream while this replica holds the lease (taking it when free or
   * lapsed), else from the holder's fill or the bucket. While the holder is unreachable or has no
   * such fill, it waits for the lease to lapse, at most two TTLs; then it goes upstream anyway.
   */
  open = async (offset: number): Promise<Response> => {
    if (this.holding) return await this.#upstream(offset);
    const { leases } = this.#deps;
    const poll = Math.max(50, Math.min(1000, leases.ttlMs / 4));
    let waitingSince: number | undefined;
    for (;;) {
      let acquired;
      try {
        acquired = await leases.acquire(this.#name);
      } catch (e) {
        this.#warn("cannot take the lease of {digest}: {error}; fetching it upstream", e);
        return await this.#upstream(offset);
      }
      if ("lease" in acquired) {
        const stored = await this.#stored(offset);
        if (stored) {
          await acquired.lease.release();
          return stored;
        }
        this.#lease = acquired.lease;
        this.#hold();
        if (acquired.lease.generation > 0 || offset > 0) {
          log.info("took over the lease of {digest} (generation {generation}) at byte {offset}", {
            digest: this.#target.digest,
            generation: acquired.lease.generation,
            offset,
          });
        }
        return await this.#upstream(offset);
      }
      const { owner, holder } = acquired.held;
      // This process holds it, for a fill that stopped caching: no other replica will serve it.
      if (holder === leases.holder) return await this.#upstream(offset);
      // Another process behind this replica's own URL: a previous run of it (or replicas sharing
      // one `advertise`). Asking it would ask this process: its lease is waited out instead.
      const answer = owner === leases.owner
        ? this.#warnOnce(owner)
        : await this.#fromPeer(owner, offset);
      if (answer === "refused") return await this.#upstream(offset);
      if (answer) return answer;
      const stored = await this.#stored(offset);
      if (stored) return stored;
      waitingSince ??= leases.now();
      if (leases.now() - waitingSince > 2 * leases.ttlMs) {
        log.warn(
          "replica {owner} holds the lease of {digest} and does not serve it: fetching it upstream",
          {
            owner,
            digest: this.#target.digest,
          },
        );
        return await this.#upstream(offset);
      }
      await (this.#deps.sleep ?? sleep)(poll);
    }
  };

  /** Tells the source the fill it opened for: the lease is released once the fill is over. */
  watch(fill: FillState): void {
    this.#fill = fill;
  }

  /** The fill could not start (its first open threw): the lease, if taken, is given up. */
  async abandon(): Promise<void> {
    await this.#lease?.release();
  }

  /** Renews the lease from now on (while upstream answers too), until the fill is over. */
  #hold(): void {
    // A fill that stopped caching will commit nothing: another replica may as well take over.
    this.#lease!.hold(() =>
      this.#fill !== undefined && (this.#fill.settled || !this.#fill.caching)
    );
  }

  #warnOnce(owner: string): undefined {
    if (!this.#warned) {
      this.#warned = true;
      log.warn(
        "the lease of {digest} is held by another process advertising this replica's URL " +
          "{owner} (a previous run, or cluster.advertise shared by replicas): waiting for it to lapse",
        { digest: this.#target.digest, owner },
      );
    }
    return undefined;
  }

  async #upstream(offset: number): Promise<Response> {
    const response = await this.#sources.upstream(offset);
    this.#deps.opened?.("upstream");
    return response;
  }

  async #stored(offset: number): Promise<Response | undefined> {
    try {
      const response = await this.#sources.stored(offset);
      if (response) this.#deps.opened?.("bucket");
      return response;
    } catch (e) {
      this.#warn("cannot read {digest} from the bucket: {error}", e);
      return undefined;
    }
  }

  /**
   * The holder's fill from `offset`; undefined when it has none or cannot be reached, "refused"
   * when it refuses this replica's secret. Its error (the upstream's answer) is this fill's error.
   */
  async #fromPeer(owner: string, offset: number): Promise<Response | "refused" | undefined> {
    const { registry, digest } = this.#target;
    let response: Response;
    try {
      response = await openPeer(owner, { registry, digest, offset }, this.#deps.peer);
    } catch (e) {
      this.#warn("cannot stream {digest} from its lease holder: {error}", e);
      return undefined;
    }
    if (response.status === 200 || response.status === 206) {
      if (response.headers.get(REPOSITORY_HEADER) !== this.#target.repository && !this.#confirmed) {
        try {
          await this.#sources.confirm();
        } catch (e) {
          await response.body?.cancel();
          throw e;
        }
        this.#confirmed = true;
      }
      this.#deps.opened?.("peer");
      log.debug("streaming {digest} from byte {offset} from replica {owner}", {
        digest,
        offset,
        owner: URL.parse(owner)?.origin,
      });
      return response;
    }
    const text = await response.text();
    if (response.headers.get(FILL_HEADER) === "none") return undefined;
    if (response.status === 401) {
      log.error(
        "replica {owner} refused the cluster secret (is cluster.secret the same on every " +
          "replica?): fetching {digest} upstream",
        { owner, digest },
      );
      return "refused";
    }
    throw peerError(owner, response.status, text);
  }

  #warn(message: string, error: unknown): void {
    log.warn(message, {
      digest: this.#target.digest,
      error: String((error as Error)?.message ?? error),
    });
  }
}

/** The holder's error answer, as this replica's own: its OCI code and status, its message. */
function peerError(owner: string, status: number, text: string): RegistryError {
  let code: unknown;
  let message = `answered ${status}`;
  try {
    const first = JSON.parse(text)?.errors?.[0];
    code = first?.code;
    if (typeof first?.message === "string") message = first.message;
  } catch { /* not JSON: the status says enough */ }
  const origin = URL.parse(owner)?.origin ?? "a replica";
  return new RegistryError(isErrorCode(code) ? code : "UNKNOWN", `${origin}: ${message}`, {
    status: status >= 400 && status <= 599 ? status : 502,
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
