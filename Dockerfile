# The topodra image for users with Docker (or any BuildKit/Buildah builder); `make image` builds the same
# files without a container engine (docs/image.md). Both take the Debian 12 (bookworm) packages pinned in
# hack/image/debian.lock and the wheels pinned with hashes in hack/image/requirements.lock, and both assemble
# the root with the same code (`python -m topodra_cli.imagebuild rootfs`): the final stage holds only those
# files, so there is no compiler, pip or apt in it.
#   docker build -t ghcr.io/topodra/topodra:0.1.0 .

FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY hack/image/ hack/image/
# The builder's own Python runs imagebuild, which needs topodra's runtime dependencies: the same locked wheels.
RUN pip install --break-system-packages --no-cache-dir --only-binary=:all: --require-hashes --no-deps \
      -r hack/image/requirements.lock
COPY pyproject.toml ./
COPY driver/ driver/
COPY scheduler_plugin/ scheduler_plugin/
COPY kubeaccess/ kubeaccess/
COPY topodra_cli/ topodra_cli/
RUN python3 -m topodra_cli.imagebuild rootfs /rootfs

FROM scratch
COPY --from=build /rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
# root (the driver needs it); the chart runs the extender as nonroot (65532, in /etc/passwd).
USER 0
WORKDIR /
ENTRYPOINT ["topodra"]
