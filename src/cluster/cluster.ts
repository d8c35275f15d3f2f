// Replicas sharing one bucket: this replica's identity (its advertised URL, the shared secret),
// its leases, and the source each of its fills reads from.

import type { Config } from "../config.ts";
import type { S3Client } from "../s3/client.ts";
import { ClusterFill, type FillSources, type FillTarget, type SourceKind } from "./fill_source.ts";
import { Leases } from "./leases.ts";
import type { PeerOptions } from "./peer.ts";

/** This replica's part in the fleet. */
export class Cluster {
  readonly leases: Leases;
  readonly peer: PeerOptions;
  /** Sources fills opened since start: upstream, another replica's fill, or the bucket. */
  readonly opened: Record<SourceKind, number> = { upstream: 0, peer: 0, bucket: 0 };

  constructor(
    client: S3Client,
    prefix: string,
    settings: { advertise: URL; secret: string; leaseTtlMs: number; idleTimeoutMs: number },
    now?: () => number,
  ) {
    this.leases = new Leases(client, prefix, {
      owner: settings.advertise.href,
      ttlMs: settings.leaseTtlMs,
      now,
    });
    // A holder waits for its upstream up to the idle timeout; a lapsed lease is a TTL more.
    const patience = settings.idleTimeoutMs + settings.leaseTtlMs;
    this.peer = { secret: settings.secret, headersTimeoutMs: patience, idleTimeoutMs: patience };
  }

  /** The cluster of a config whose `cluster` has an advertised URL and a secret, else undefined. */
  static of(config: Config, client: S3Client, prefix: string): Cluster | undefined {
    const { advertise, secret, leaseTtlMs } = config.cluster ?? {};
    if (!advertise || !secret || leaseTtlMs === undefined) return undefined;
    return new Cluster(client, prefix, {
      advertise,
      secret,
      leaseTtlMs,
      idleTimeoutMs: config.upstream.idleTimeoutMs,
    });
  }

  /** The source of a new fill of `target`: pass its `open` to the fill, then `watch` the fill. */
  fill(target: FillTarget, sources: FillSources): ClusterFill {
    return new ClusterFill(
      {
        leases: this.leases,
        peer: this.peer,
        opened: (source) => this.opened[source]++,
      },
      target,
      sources,
    );
  }
}
