# syntax=docker/dockerfile:1

# One image for the whole system: deal-service, order-service and expiry-worker, plus health-probe
# for container health checks, topkart (mints tokens) and invariant-check. Which service a container runs is chosen by its command (see
# docker-compose.yml). Needs BuildKit (the default builder of current Docker) for the cache mounts.

# ---- build ---------------------------------------------------------------------------------------
# Debian bookworm on both stages, so the binaries link against the glibc they run with. Keep the
# Rust version in step with `rust-version` in Cargo.toml.
FROM rust:1.95-bookworm AS build
WORKDIR /src

# Only what the binaries are compiled from: build.rs generates the gRPC code from proto/ with
# protox (pure Rust, so no protoc), and sqlx::migrate!("./migrations") embeds the migrations at
# compile time. tests/ is left out on purpose: cargo reads an explicit [[test]] path only when it
# builds that target, so building the binaries does not need it, and test edits do not rerun this
# stage. The benchmark tools (loadgen, worker-bench) are not built into the image.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY migrations ./migrations
COPY services ./services
# The workspace's other member: cargo reads its manifest, and builds nothing of it here.
COPY tools ./tools

# The revision the image is built from, shown by every binary's `topkart_build_info` metric:
# `docker build --build-arg TOPKART_REVISION=$(git rev-parse --short HEAD) .`
ARG TOPKART_REVISION=unknown
ENV TOPKART_REVISION=${TOPKART_REVISION}

# The cache mounts keep downloaded crates and compiled dependencies between builds, so a code change
# recompiles only our crate. A cache mount is not part of the image, so the binaries are copied out
# of target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        --bin deal-service --bin order-service --bin expiry-worker \
        --bin health-probe --bin topkart --bin invariant-check \
 && mkdir -p /out \
 && cp target/release/deal-service \
       target/release/order-service \
       target/release/expiry-worker \
       target/release/health-probe \
       target/release/topkart \
       target/release/invariant-check \
       /out/

# ---- runtime -------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# The binaries need only glibc, libm and libgcc_s: TLS (--tls-cert-file and friends) is rustls,
# compiled in, and trusts only the certificates it is given, so neither OpenSSL nor a CA bundle is
# installed.
RUN groupadd --system --gid 10001 topkart \
 && useradd --system --uid 10001 --gid topkart --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin topkart

COPY --from=build /out/ /usr/local/bin/

# Numeric, so a runtime that insists on a non-root user (runAsNonRoot) can check it.
USER 10001:10001

# gRPC of deal-service, order-service, expiry-worker (health only), then their /metrics as
# docker-compose.yml sets them. Each binary listens on 127.0.0.1 unless LISTEN_ADDR (and
# METRICS_ADDR) say otherwise: in a container it must be 0.0.0.0:<port>.
EXPOSE 50051 50052 50053 9101 9102 9103

# Traces are built in and off until OTEL_EXPORTER_OTLP_ENDPOINT is set (docs/operations.md).
# The binaries run as PID 1 and shut down gracefully on SIGTERM themselves, so no init is needed.
# A default only: compose sets the command for each service.
CMD ["deal-service"]
