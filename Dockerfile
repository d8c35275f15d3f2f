# registry-mirror: one compiled executable on distroless, as a non-root user.
# Build: docker build -t registry-mirror .
# Run:   docker run -p 8080:8080 -v mirror-data:/data registry-mirror
# With a config, name it by MIRROR_CONFIG (not --config): the HEALTHCHECK runs in the same
# environment, so it reads the same file and probes the configured listen address and scheme.
#   docker run -p 8443:8443 -v mirror-data:/data -v "$PWD/etc:/etc/mirror:ro" \
#     -e MIRROR_CONFIG=/etc/mirror/config.json registry-mirror
# The listen address is the config's `listen` (default 0.0.0.0:8080). MIRROR_LISTEN is not set
# here: it overrides the config only when you pass it yourself.

FROM denoland/deno:2.9.6 AS build
WORKDIR /src
COPY deno.json deno.lock ./
COPY main.ts ./
COPY src ./src
RUN deno install --frozen && deno task compile
# The cache volume's mount point, empty; copied below owned by distroless's nonroot (65532).
RUN mkdir -p /rootfs/data

FROM gcr.io/distroless/cc-debian12:nonroot
# glibc's allocator settings (src/allocator.ts): 1.2-1.8x faster warm pulls, same peak memory.
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=134217728:glibc.malloc.top_pad=16777216
COPY --from=build /src/dist/registry-mirror /usr/local/bin/registry-mirror
# /data is an entry of the copied tree, so it is created with this owner (a new named volume
# takes the owner of its mount point): the server writes its cache (./data) without root.
COPY --from=build --chown=65532:65532 /rootfs/ /
WORKDIR /data
VOLUME /data
EXPOSE 8080
USER nonroot
# Exec form: distroless has no shell. The subcommand exits 0 when GET /healthz answers 200 (open
# with `auth` on; over HTTPS with `tls`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s CMD ["/usr/local/bin/registry-mirror", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/registry-mirror"]
CMD ["serve"]
