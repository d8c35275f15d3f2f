// `registry-mirror COMMAND --help`: what each subcommand does, its options, and an example.

const CONFIG =
  `  --config FILE    the config file (or env MIRROR_CONFIG); without one, the nine built-in
                   registries are served on 0.0.0.0:8080 with the cache in ./data
  -h, --help       this help`;

const HELP: Record<string, string> = {
  serve: `usage: registry-mirror [serve] [--config FILE]

Serves the mirror: the registry API for docker, containerd, podman and skopeo, plus /metrics,
/healthz, /readyz, /api/stats and the dashboard (/). Stops on SIGTERM or SIGINT once in-flight
responses are done (at most MIRROR_SHUTDOWN_GRACE).

options:
${CONFIG}

env:
  MIRROR_LISTEN           host:port to listen on (overrides the config's listen)
  MIRROR_LOG_LEVEL        trace, debug, info (default), warning, error, fatal
  MIRROR_LOG_FORMAT       text (the default on a terminal) or json (the default otherwise)
  MIRROR_SHUTDOWN_GRACE   how long in-flight responses may finish after SIGTERM (default 30s)
  DOCKER_HUB_USERNAME, DOCKER_HUB_PASSWORD   Docker Hub credentials

example:
  registry-mirror serve --config /etc/registry-mirror/config.json`,

  prefetch: `usage: registry-mirror prefetch [--config FILE] IMAGE...

Warms the cache with every platform of each image: its manifest, each child of an index, and every
config and layer blob. Goes through the running server when there is one (it owns the cache), else
works in this process. On a terminal, each layer shows its bytes and rate as it downloads;
otherwise one line per image, then a total. Exits 1 when an image failed.

IMAGE is what docker pull takes: ubuntu, ubuntu:24.04, quay.io/org/app:1, ghcr.io/o/r@sha256:...

options:
${CONFIG}

example:
  registry-mirror prefetch --config mirror.json quay.io/prometheus/prometheus:v3.0.0 ubuntu:24.04`,

  cache: `usage: registry-mirror cache ls [--json] [--config FILE]
       registry-mirror cache du [--json] [--config FILE]
       registry-mirror cache gc [--max-size SIZE] [--config FILE]

  ls   every cached tag: image, digest, media type, last upstream check (tab-separated)
  du   objects and bytes held, by kind: blobs, manifests, total (tab-separated)
  gc   evicts least-recently-used objects down to SIZE; refused while a server owns the cache
       (the server evicts by itself, down to cache.maxSize); on a bucket (cache.s3) it runs
       beside the replicas, refused only while one of them is evicting

ls and du only read: they are safe beside a running server.

options:
  --json           ls, du: print one JSON document for scripts
                   (ls: {"tags": [{image, registry, repository, tag, digest, mediaType,
                   checkedAt}]}; du: {"blobs"|"manifests"|"total": {objects, bytes}})
  --max-size SIZE  gc: the size to evict down to, e.g. 500MB or 50GiB (default cache.maxSize)
${CONFIG}

examples:
  registry-mirror cache du --json | jq .total.bytes
  registry-mirror cache gc --max-size 50GiB`,

  config: `usage: registry-mirror config check [--config FILE]

Validates the config (the file, then the environment's overrides) and prints the effective config
as JSON, secrets masked. Exits 1 with a message naming the wrong key when it is invalid.

options:
${CONFIG}

example:
  MIRROR_CONFIG=/etc/registry-mirror/config.json registry-mirror config check`,

  healthcheck: `usage: registry-mirror healthcheck [--config FILE]

Exits 0 when the mirror on this machine answers GET /healthz with 200, else says why and exits 1:
a HEALTHCHECK for images without a shell. It reads listen and tls from the same config as the
server (pass it with MIRROR_CONFIG), reaches wildcard and IPv6 listens over loopback, and sends no
credentials.

options:
${CONFIG}

example (Dockerfile):
  HEALTHCHECK CMD ["/registry-mirror", "healthcheck"]`,
};

/** The help of `command` (`serve`, `prefetch`, `cache`, `config`, `healthcheck`), if it has one. */
export function commandHelp(command: string): string | undefined {
  return Object.hasOwn(HELP, command) ? HELP[command] : undefined;
}
