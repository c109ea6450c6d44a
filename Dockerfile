# syntax=docker/dockerfile:1
# One image with every Sluice binary: sluice-ingest, sluice-worker, sluice-sim and the `sluice`
# operators' CLI. The compose file and the Kubernetes manifests pick the binary per service.
#
#   docker build -t sluice:dev .
#
# The build stage uses the fully optimized `release` profile (fat LTO, one codegen unit);
# scripts/up.sh uses the quicker `fast` profile instead.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# The manifests first, so a change to the sources alone reuses the dependency download.
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY tests tests
COPY proto proto
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p sluice-ingest -p sluice-worker -p sluice-sim -p sluice-cli --bins \
 && mkdir -p /out \
 && cp target/release/sluice-ingest target/release/sluice-worker \
       target/release/sluice-sim target/release/sluice /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: the system roots for TLS connections to NATS (rustls-native-certs).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --no-create-home --shell /usr/sbin/nologin sluice
COPY --from=build /out/ /usr/local/bin/
COPY deploy/healthcheck.sh /usr/local/bin/sluice-healthcheck
COPY config/container.toml /etc/sluice/sluice.toml
ENV SLUICE_CONFIG=/etc/sluice/sluice.toml \
    SLUICE_LOG_FORMAT=json \
    RUST_LOG=info
USER 10001:10001
EXPOSE 8080 9090
# The ingest's liveness route by default; compose and Kubernetes set their own probe per
# service (the worker serves /healthz on worker.metrics_listen, the simulator on its port).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["sluice-healthcheck", "127.0.0.1:8080", "/healthz"]
CMD ["sluice-ingest"]
