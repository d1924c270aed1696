# syntax=docker/dockerfile:1
# The tidb-ebs-backup operator image. It is FROM scratch: the operator binary, the shared libraries it links
# (glibc and the loader), a CA bundle, and /etc/passwd, /etc/group, /etc/nsswitch.conf for the non-root user
# 65532 (nonroot); no shell, no package manager. scripts/image-rootfs lays that tree out.
#   docker build -t tidb-ebs-backup:0.1.0 .      (or podman build: compiles the release binary in `build`)
# scripts/image builds the same image from a binary built on the host, without pulling any base image
# (`--target prebuilt`).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
# Only what the release binary is built from (build.rs compiles proto/ with protox: no protoc needed).
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tidb-ebs-backup \
    && install -D -m 0755 target/release/tidb-ebs-backup /out/tidb-ebs-backup
COPY scripts/image-rootfs /usr/local/bin/image-rootfs
RUN image-rootfs /out/tidb-ebs-backup /out/rootfs

# What both variants of the image share; FROM scratch, so the root filesystem is all the COPY below brings.
FROM scratch AS base
# VERSION follows Cargo.toml's version (scripts/image passes it); SOURCE and REVISION are set when known.
ARG VERSION=0.1.0
ARG SOURCE=""
ARG REVISION=""
LABEL org.opencontainers.image.title="tidb-ebs-backup" \
      org.opencontainers.image.description="Kubernetes operator that backs up TiDB clusters on AWS EKS with EBS volume snapshots" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}"
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/tidb-ebs-backup"]

# scripts/image: `--target prebuilt`, the build context holding the tree as rootfs/ (the `build` stage is skipped).
FROM base AS prebuilt
COPY rootfs/ /

# The default target: the tree the `build` stage laid out.
FROM base
COPY --from=build /out/rootfs/ /
