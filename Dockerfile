# registry-mirror: one compiled executable on distroless, as a non-root user.
# Build: docker build -t registry-mirror .   Run: docker run -p 8080:8080 -v mirror-data:/data registry-mirror

FROM denoland/deno:2.9.6 AS build
WORKDIR /src
COPY deno.json deno.lock ./
COPY main.ts ./
COPY src ./src
RUN deno install --frozen && deno task compile

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/dist/registry-mirror /usr/local/bin/registry-mirror
ENV MIRROR_LISTEN=0.0.0.0:8080
WORKDIR /data
VOLUME /data
EXPOSE 8080
USER nonroot
# Exec form: distroless has no shell. The subcommand exits 0 when GET /v2/ answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s CMD ["/usr/local/bin/registry-mirror", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/registry-mirror"]
CMD ["serve"]
