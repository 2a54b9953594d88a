# expect: ENTRYPOINT /usr/local/bin/worker is shell form
FROM rust:1.94.1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --example worker

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/examples/worker /usr/local/bin/worker
USER 65532:65532
ENTRYPOINT /usr/local/bin/worker
