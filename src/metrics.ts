// Prometheus metrics: counters, gauges and histograms with labels, in the text exposition format,
// plus the few recent facts the dashboard shows (most pulled images, recent upstream errors).

import { LRUCache } from "lru-cache";

type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  const parts = Object.keys(labels).sort().map((k) =>
    `${k}="${labels[k].replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}

abstract class Metric {
  readonly name: string;
  readonly help: string;
  abstract readonly type: string;
  constructor(name: string, help: string) {
    this.name = name;
    this.help = help;
  }
  abstract lines(): string[];
  render(): string {
    return [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} ${this.type}`, ...this.lines()]
      .join("\n");
  }
}

/** A value per label set that only goes up. */
export class Counter extends Metric {
  readonly type: string = "counter";
  readonly values = new Map<string, { labels: Labels; value: number }>();

  inc(labels: Labels = {}, by = 1): void {
    const key = labelKey(labels);
    const entry = this.values.get(key);
    if (entry) entry.value += by;
    else this.values.set(key, { labels, value: by });
  }

  /** The value for one label set (0 when never counted). */
  get(labels: Labels = {}): number {
    return this.values.get(labelKey(labels))?.value ?? 0;
  }

  lines(): string[] {
    return [...this.values.entries()].map(([key, { value }]) => `${this.name}${key} ${value}`);
  }
}

/** A value per label set that is set, typically right before a scrape. */
export class Gauge extends Counter {
  override readonly type: string = "gauge";

  set(labels: Labels, value: number): void {
    this.values.set(labelKey(labels), { labels, value });
  }
}

/** A total kept elsewhere (a live counter) and copied in before each scrape. */
export class LiveCounter extends Gauge {
  override readonly type = "counter";
}

/** Observations counted into cumulative buckets, with their sum and count. */
export class Histogram extends Metric {
  readonly type = "histogram";
  readonly #buckets: number[];
  readonly #series = new Map<string, { counts: number[]; sum: number; count: number }>();

  constructor(name: string, help: string, buckets: number[]) {
    super(name, help);
    this.#buckets = buckets;
  }

  observe(labels: Labels, value: number): void {
    const key = labelKey(labels);
    let series = this.#series.get(key);
    if (!series) {
      series = { counts: this.#buckets.map(() => 0), sum: 0, count: 0 };
      this.#series.set(key, series);
    }
    this.#buckets.forEach((le, i) => {
      if (value <= le) series.counts[i]++;
    });
    series.sum += value;
    series.count++;
  }

  lines(): string[] {
    const out: string[] = [];
    for (const [key, { counts, sum, count }] of this.#series) {
      const inner = key.slice(1, -1);
      const withLe = (le: string) => `{${inner ? `${inner},` : ""}le="${le}"}`;
      this.#buckets.forEach((le, i) =>
        out.push(`${this.name}_bucket${withLe(String(le))} ${counts[i]}`)
      );
      out.push(`${this.name}_bucket${withLe("+Inf")} ${count}`);
      out.push(`${this.name}_sum${key} ${sum}`);
      out.push(`${this.name}_count${key} ${count}`);
    }
    return out;
  }
}

/** One upstream failure, as the dashboard lists it. */
export interface UpstreamFailure {
  at: string;
  registry: string;
  status: number;
  message: string;
}

const RECENT_ERRORS = 20;
/** Images whose pulls are counted: the dashboard shows 10, images in use stay; ~2 MB. */
const MAX_PULLED_IMAGES = 10_000;

/** Every metric of the mirror. Gauges read from live state are set by `collect` callbacks. */
export class MirrorMetrics {
  readonly requests = new Counter(
    "registry_mirror_requests_total",
    "Requests served, by route kind and status.",
  );
  readonly cacheResults = new Counter(
    "registry_mirror_cache_results_total",
    "Manifest and blob responses by cache result (hit, miss, stale).",
  );
  readonly cacheBytes = new Counter(
    "registry_mirror_cache_bytes_served_total",
    "Body bytes served from the cache, per registry.",
  );
  readonly upstreamBytes = new Counter(
    "registry_mirror_upstream_bytes_total",
    "Body bytes read from upstream registries, per registry.",
  );
  readonly upstreamRequests = new Counter(
    "registry_mirror_upstream_requests_total",
    "Requests sent upstream, per registry and status (0: no answer).",
  );
  readonly upstreamLatency = new Histogram(
    "registry_mirror_upstream_request_duration_seconds",
    "Time from sending an upstream request to its response headers, per registry.",
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  );
  readonly tokenFetches = new LiveCounter(
    "registry_mirror_token_fetches_total",
    "Tokens fetched from upstream token servers, per registry.",
  );
  readonly rateLimitRemaining = new Gauge(
    "registry_mirror_upstream_ratelimit_remaining",
    "The last ratelimit-remaining an upstream sent, per registry.",
  );
  readonly fillsInFlight = new Gauge(
    "registry_mirror_fills_in_flight",
    "Blobs being fetched into the cache now.",
  );
  readonly coalesced = new LiveCounter(
    "registry_mirror_coalesced_waiters_total",
    "Requests that joined a blob fill another request had started.",
  );
  readonly fillResumes = new LiveCounter(
    "registry_mirror_fill_resumes_total",
    "Broken upstream transfers resumed with a Range request.",
  );
  readonly digestMismatches = new LiveCounter(
    "registry_mirror_digest_mismatches_total",
    "Fills discarded because the content did not match its digest.",
  );
  readonly diskErrors = new LiveCounter(
    "registry_mirror_disk_errors_total",
    "Local cache writes that failed (full disk, I/O error); the content was served uncached.",
  );
  readonly passThrough = new LiveCounter(
    "registry_mirror_fills_uncached_total",
    "Blob fills whose bytes reached clients without being cached (disk error, too large).",
  );
  readonly cacheSize = new Gauge("registry_mirror_cache_size_bytes", "Bytes held in the cache.");
  readonly cacheMaxSize = new Gauge(
    "registry_mirror_cache_max_size_bytes",
    "The configured maximum cache size (absent: no limit).",
  );
  readonly cacheObjects = new Gauge("registry_mirror_cache_objects", "Objects held in the cache.");
  readonly evictions = new LiveCounter(
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

  /** Registers a callback that sets gauges from live state before each render. */
  collect(fn: () => void): void {
    this.#collectors.push(fn);
  }

  /** Records an upstream failure for the dashboard (keeps the last 20). */
  upstreamFailed(failure: Omit<UpstreamFailure, "at">): void {
    this.recentErrors.unshift({ at: new Date().toISOString(), ...failure });
    this.recentErrors.length = Math.min(this.recentErrors.length, RECENT_ERRORS);
  }

  /** The Prometheus text exposition of every metric. */
  render(): string {
    for (const fn of this.#collectors) fn();
    const all = [
      this.requests,
      this.cacheResults,
      this.cacheBytes,
      this.upstreamBytes,
      this.upstreamRequests,
      this.upstreamLatency,
      this.tokenFetches,
      this.rateLimitRemaining,
      this.fillsInFlight,
      this.coalesced,
      this.fillResumes,
      this.digestMismatches,
      this.diskErrors,
      this.passThrough,
      this.cacheSize,
      this.cacheMaxSize,
      this.cacheObjects,
      this.evictions,
    ];
    return all.map((m) => m.render()).join("\n") + "\n";
  }
}
