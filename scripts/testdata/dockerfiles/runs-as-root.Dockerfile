# hadolint fails it too: DL3002, the last USER should not be root.
# expect: USER 0:0 is root
FROM rust:1.94.1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --example worker

FROM gcr.io/distroless/cc-debian12:debug
COPY --from=build /src/target/release/examples/worker /usr/local/bin/worker
USER 0:0
ENTRYPOINT ["/usr/local/bin/worker"]
