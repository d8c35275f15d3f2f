// Prometheus metrics (prom-client): the mirror's counters, gauges and histograms, the process and
// runtime metrics, and the few recent facts the dashboard shows (most pulled images, recent errors).

import { LRUCache } from "lru-cache";
import {
  collectDefaultMetrics,
  Counter,
  Gauge,
  Histogram,
  type LabelValues,
  Registry,
} from "prom-client";
import { MAX_RUNTIME_SENT } from "./connections.ts";

/**
 * A counter whose total is kept elsewhere (a live count in the cache or a client) and copied in
 * by a `collect` callback before each scrape: exposed as a counter, set like a gauge.
 */
export class LiveCounter<T extends string = string> extends Counter<T> {
  /** Replaces the value of one label set. */
  set(labels: LabelValues<T>, value: number): void {
    this.remove(labels);
    this.inc(labels, value);
  }
}

/** The content type of `MirrorMetrics.render()`: Prometheus text format 0.0.4. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

/** Upstream latency buckets (seconds): header times, from a cached token to a slow registry. */
const UPSTREAM_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
/** Response buckets (seconds): a cached manifest in milliseconds, a large layer in minutes. */
const RESPONSE_BUCKETS = [
  0.001,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
  60,
  120,
  300,
];

/** One upstream failure, as the dashboard lists it. */
export interface UpstreamFailure {
  at: string;
  registry: string;
  status: number;
  message: string;
}

/** One upstream of a registry (the primary or a fallback) and its circuit breaker's state. */
export interface UpstreamStatus {
  registry: string;
  /** `host[:port]`: the `via` of its answers. */
  upstream: string;
  url: string;
  role: "primary" | "fallback";
  trustTags: boolean;
  /** See BreakerState: up, failing, skipped (until `skippedUntil`), half-open. */
  state: "up" | "failing" | "skipped" | "half-open";
  /** Failures in a row. */
  failures: number;
  skippedUntil: string | null;
  lastError: string | null;
}

/** The states an upstream can be in, one gauge series each. */
const UPSTREAM_STATES = ["up", "failing", "skipped", "half-open"] as const;

const RECENT_ERRORS = 20;
/** Images whose pulls are counted: the dashboard shows 10, images in use stay; ~2 MB. */
const MAX_PULLED_IMAGES = 10_000;

let processMetrics: Registry | undefined;

/**
 * prom-client's process and runtime metrics (`process_*`: CPU, resident memory, open and maximum
 * file descriptors; `nodejs_*`: event-loop lag, heap), in one registry for the whole process: its
 * event-loop monitor runs once, however many `MirrorMetrics` there are.
 */
function processRegistry(): Registry {
  if (!processMetrics) {
    processMetrics = new Registry();
    collectDefaultMetrics({ register: processMetrics });
  }
  return processMetrics;
}

/** Every metric of the mirror. Values read from live state are set by `collect` callbacks. */
export class MirrorMetrics {
  /** The mirror's own metrics (the process metrics are added by `render`). */
  readonly registry: Registry = new Registry();
  readonly requests: Counter<"kind" | "status"> = new Counter({
    name: "registry_mirror_requests_total",
    help: "Requests served, by route kind and status.",
    labelNames: ["kind", "status"],
    registers: [this.registry],
  });
  readonly requestDuration: Histogram<"kind" | "status_class"> = new Histogram({
    name: "registry_mirror_request_duration_seconds",
    help: "Time from a request's arrival to the end of its response, by route kind and " +
      "status class (2xx, 4xx, ...).",
    labelNames: ["kind", "status_class"],
    buckets: RESPONSE_BUCKETS,
    registers: [this.registry],
  });
  readonly cacheResults: Counter<"result"> = new Counter({
    name: "registry_mirror_cache_results_total",
    help: "Manifest and blob responses by cache result (hit, miss, stale).",
    labelNames: ["result"],
    registers: [this.registry],
  });
  readonly cacheBytes: Counter<"registry"> = new Counter({
    name: "registry_mirror_cache_bytes_served_total",
    help: "Body bytes served from the cache, per registry.",
    labelNames: ["registry"],
    registers: [this.registry],
  });
  readonly upstreamBytes: Counter<"registry"> = new Counter({
    name: "registry_mirror_upstream_bytes_total",
    help: "Body bytes read from upstream registries, per registry.",
    labelNames: ["registry"],
    registers: [this.registry],
  });
  readonly upstreamRequests: Counter<"registry" | "status"> = new Counter({
    name: "registry_mirror_upstream_requests_total",
    help: "Requests sent upstream, per registry and status (0: no answer).",
    labelNames: ["registry", "status"],
    registers: [this.registry],
  });
  readonly upstreamLatency: Histogram<"registry"> = new Histogram({
    name: "registry_mirror_upstream_request_duration_seconds",
    help: "Time from sending an upstream request to its response headers, per registry.",
    labelNames: ["registry"],
    buckets: UPSTREAM_BUCKETS,
    registers: [this.registry],
  });
  readonly tokenFetches: LiveCounter<"registry"> = new LiveCounter({
    name: "registry_mirror_token_fetches_total",
    help: "Tokens fetched from upstream token servers, per registry.",
    labelNames: ["registry"],
    registers: [this.registry],
  });
  readonly upstreamAnswers: Counter<"registry" | "upstream" | "role" | "outcome"> = new Counter({
    name: "registry_mirror_upstream_answers_total",
    help: "What each upstream (primary or fallback) did with the requests it was given: " +
      "answered, failed (no answer, 5xx, 429), skipped (in cool-down), refused (a fallback's " +
      "non-success), corrupt (content that did not match its digest).",
    labelNames: ["registry", "upstream", "role", "outcome"],
    registers: [this.registry],
  });
  readonly upstreamState: Gauge<"registry" | "upstream" | "role" | "state"> = new Gauge({
    name: "registry_mirror_upstream_state",
    help:
      "1 for the state each upstream is in (up, failing, skipped, half-open), 0 for the others.",
    labelNames: ["registry", "upstream", "role", "state"],
    registers: [this.registry],
  });
  readonly storeRequests: Counter<"operation" | "status"> = new Counter({
    name: "registry_mirror_store_requests_total",
    help: "Requests to the S3 store, by operation (GetObject, PutObject...) and status (0: no " +
      "answer).",
    labelNames: ["operation", "status"],
    registers: [this.registry],
  });
  readonly storeErrors: Counter<"operation"> = new Counter({
    name: "registry_mirror_store_errors_total",
    help: "Requests to the S3 store that failed: no answer, or an error status other than 404 " +
      "and 412.",
    labelNames: ["operation"],
    registers: [this.registry],
  });
  readonly storeLatency: Histogram<"operation"> = new Histogram({
    name: "registry_mirror_store_request_duration_seconds",
    help: "Time from sending a request to the S3 store to its response headers, by operation.",
    labelNames: ["operation"],
    buckets: UPSTREAM_BUCKETS,
    registers: [this.registry],
  });
  readonly rateLimitRemaining: Gauge<"registry"> = new Gauge({
    name: "registry_mirror_upstream_ratelimit_remaining",
    help: "The last ratelimit-remaining an upstream sent, per registry.",
    labelNames: ["registry"],
    registers: [this.registry],
  });
  readonly fillsInFlight: Gauge = this.#gauge(
    "registry_mirror_fills_in_flight",
    "Blobs being fetched into the cache now.",
  );
  readonly coalesced: LiveCounter = this.#live(
    "registry_mirror_coalesced_waiters_total",
    "Requests that joined a blob fill another request had started.",
  );
  readonly fillResumes: LiveCounter = this.#live(
    "registry_mirror_fill_resumes_total",
    "Broken upstream transfers resumed with a Range request.",
  );
  readonly digestMismatches: LiveCounter = this.#live(
    "registry_mirror_digest_mismatches_total",
    "Fills discarded because the content did not match its digest.",
  );
  readonly diskErrors: LiveCounter = this.#live(
    "registry_mirror_disk_errors_total",
    "Local cache writes that failed (full disk, I/O error); the content was served uncached.",
  );
  readonly passThrough: LiveCounter = this.#live(
    "registry_mirror_fills_uncached_total",
    "Blob fills whose bytes reached clients without being cached (disk error, too large).",
  );
  readonly clusterSources: LiveCounter<"source"> = new LiveCounter({
    name: "registry_mirror_cluster_fill_sources_total",
    help: "Where this replica's fills read from: upstream (it held the lease), peer (the " +
      "holder's fill) or bucket (committed meanwhile).",
    labelNames: ["source"],
    registers: [this.registry],
  });
  readonly connectionsClosed: LiveCounter<"reason"> = new LiveCounter({
    name: "registry_mirror_connections_closed_total",
    help: "Connections the mirror closed or refused by its limits: header_timeout, idle_timeout, " +
      "send_timeout, shed (to make room at the cap), refused (at the cap, none to shed).",
    labelNames: ["reason"],
    registers: [this.registry],
  });
  readonly bodiesRelayed: LiveCounter = this.#live(
    "registry_mirror_bodies_relayed_total",
    "Downloads from the cache's bucket that Deno relayed itself (no send timeout sees them; at " +
      `most ${MAX_RUNTIME_SENT} at once).`,
  );
  readonly cacheSize: Gauge = this.#gauge(
    "registry_mirror_cache_size_bytes",
    "Bytes held in the cache.",
  );
  readonly cacheMaxSize: Gauge = this.#gauge(
    "registry_mirror_cache_max_size_bytes",
    "The configured maximum cache size (absent: no limit).",
  );
  readonly cacheObjects: Gauge = this.#gauge(
    "registry_mirror_cache_objects",
    "Objects held in the cache.",
  );
  readonly evictions: LiveCounter = this.#live(
    "registry_mirror_evictions_total",
    "Objects deleted by eviction since start.",
  );
  /**
   * Manifest pulls per image (`registry/repository:reference`), for the dashboard: names are the
   * clients' choice, so only the most recently pulled images are counted.
   */
  readonly pulls = new LRUCache<string, number>({ max: MAX_PULLED_IMAGES });
  readonly recentErrors: UpstreamFailure[] = [];
  readonly #collectors: (() => void)[] = [];
  readonly #upstreams: (() => UpstreamStatus[])[] = [];

  constructor() {
    // Absent until set (no limit): prom-client starts an unlabelled gauge at 0.
    this.cacheMaxSize.remove({});
    this.collect(() => {
      for (const s of this.upstreamStatuses()) {
        for (const state of UPSTREAM_STATES) {
          const labels = { registry: s.registry, upstream: s.upstream, role: s.role, state };
          this.upstreamState.set(labels, s.state === state ? 1 : 0);
        }
      }
    });
  }

  /** Registers where the state of some registry's upstreams is read from. */
  watchUpstreams(fn: () => UpstreamStatus[]): void {
    this.#upstreams.push(fn);
  }

  /** Every upstream of every registry, and its state now. */
  upstreamStatuses(): UpstreamStatus[] {
    return this.#upstreams.flatMap((fn) => fn());
  }

  /** Counts a request to the S3 store (an S3Observer). */
  readonly storeRequest = (operation: string, status: number, seconds: number): void => {
    this.storeRequests.inc({ operation, status: String(status) });
    this.storeLatency.observe({ operation }, seconds);
    // 404: not stored; 412: a lease another replica holds (a conditional create that lost).
    if (status === 0 || (status >= 400 && status !== 404 && status !== 412)) {
      this.storeErrors.inc({ operation });
    }
  };

  /** Registers a callback that sets values from live state before each render. */
  collect(fn: () => void): void {
    this.#collectors.push(fn);
  }

  /** Runs the collectors, so that every value is current. */
  refresh(): void {
    for (const fn of this.#collectors) fn();
  }

  /** Records an upstream failure for the dashboard (keeps the last 20). */
  upstreamFailed(failure: Omit<UpstreamFailure, "at">): void {
    this.recentErrors.unshift({ at: new Date().toISOString(), ...failure });
    this.recentErrors.length = Math.min(this.recentErrors.length, RECENT_ERRORS);
  }

  /** The Prometheus text exposition of every metric, the process's included. */
  async render(): Promise<string> {
    this.refresh();
    const own = await this.registry.metrics();
    return `${own}\n${await processRegistry().metrics()}`;
  }

  #gauge(name: string, help: string): Gauge {
    return new Gauge({ name, help, registers: [this.registry] });
  }

  #live(name: string, help: string): LiveCounter {
    return new LiveCounter({ name, help, registers: [this.registry] });
  }
}
