# The holdfast example worker (examples/worker.rs) as a small, non-root image.
#
#   docker build -t holdfast-worker .
#   docker run --rm -e HOLDFAST_QUEUE_URL=memory://demo holdfast-worker
#
# Copilot builds it from copilot/worker/manifest.yml (image.build).
#
# The build and runtime images must share a Debian release (the binary links against the
# build image's glibc): bookworm here, distroless's debian12 below.
ARG RUST_VERSION=1.94.1

# 1. Reduce the source tree to manifests plus stub targets (see scripts/docker-skeleton.sh).
FROM rust:${RUST_VERSION}-bookworm AS skeleton
WORKDIR /src
COPY . .
RUN sh scripts/docker-skeleton.sh /skeleton

# 2. Build every dependency from the skeleton. This layer is reused until Cargo.toml or
#    Cargo.lock change (or .rs files are added or removed), not on every code edit.
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY --from=skeleton /skeleton/ ./
RUN cargo build --release --locked --example worker

# 3. Build the worker itself. The real sources may carry older modification times than the
#    stubs built above; touching them makes cargo rebuild the crate instead of reusing the
#    stub artifacts.
COPY . .
RUN find src examples -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --example worker \
    && install -D -m 0755 target/release/examples/worker /out/worker

# 4. Runtime: glibc, libgcc and CA certificates (aws-sdk's rustls reads the system roots),
#    no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/worker /usr/local/bin/worker
USER 65532:65532
# ECS sends SIGTERM, waits the task definition's stopTimeout, then sends SIGKILL. The
# exec-form ENTRYPOINT makes the worker PID 1, so SIGTERM reaches it and it drains; a
# shell-form ENTRYPOINT or CMD would run it under /bin/sh -c, which does not pass the
# signal on.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/worker"]
