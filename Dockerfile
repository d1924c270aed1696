# syntax=docker/dockerfile:1
# The tidb-ebs-backup operator image: build with the Rust toolchain, run on distroless (glibc, CA
# certificates, no shell) as the non-root user 65532.
#   docker build -t tidb-ebs-backup:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Only what the release binary is built from (build.rs compiles proto/ with protox: no protoc needed).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tidb-ebs-backup \
    && install -D -m 0755 target/release/tidb-ebs-backup /out/tidb-ebs-backup

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/tidb-ebs-backup /usr/local/bin/tidb-ebs-backup
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tidb-ebs-backup"]
