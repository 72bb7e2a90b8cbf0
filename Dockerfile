# Rivulet's container image: the `rivulet` binary alone on a distroless base, run as a
# non-root user. The same image runs `rivulet controller` and `rivulet serve`.
#
#   docker build -t rivulet:0.1.0 .

# --- build ---
# Debian 12 like the runtime image, so the binary links against the same glibc.
FROM rust:1-bookworm AS builder
WORKDIR /src
# librdkafka is built from source by the rdkafka crate (configure + make, already in this
# image); zlib is linked statically so the runtime image needs nothing beyond glibc. The
# `dist` profile (Cargo.toml) optimises the whole program at once: less code, less memory.
ENV LIBZ_SYS_STATIC=1
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin rivulet \
    && cp target/dist/rivulet /usr/local/bin/rivulet \
    && strip /usr/local/bin/rivulet

# --- run ---
# glibc, libgcc and CA certificates, no shell; user 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/rivulet /usr/local/bin/rivulet
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/rivulet"]
# Events on every interface of the container; the resource API stays on the container's
# loopback (reach it with `docker exec`, or publish it deliberately with --api-listen).
# The Kubernetes manifests give their own flags.
CMD ["serve", "--listen=0.0.0.0:8080", "--api-listen=127.0.0.1:8081", "--data-dir=/tmp/rivulet"]
