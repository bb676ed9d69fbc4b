# syntax=docker/dockerfile:1
# The vigil CLI (operator commands and the simulated Azure and fleet), built
# from the repository root:
#   docker build -f deploy/compose/vigil.Dockerfile .
FROM golang:1.26-bookworm AS build
WORKDIR /src
# cmd/vigil imports every service's library, so it needs the whole tree.
COPY pkg/ pkg/
COPY services/ services/
COPY cmd/vigil/ cmd/vigil/
WORKDIR /src/cmd/vigil
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/vigil .

# Volume mount points, owned by the non-root user so that fresh named volumes are writable:
# the simulated vendors' roots, and auth-init's identity and its exports (one per program).
RUN mkdir -p /out/state/sim /out/state/vigil-auth/identity && \
    for p in nats-server admin ingest attest-worker keyguard auditor notifier console; do \
      mkdir -p /out/state/vigil-auth/export/$p; done

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build --chown=65532:65532 /out/state/ /
COPY --from=build /out/vigil /usr/local/bin/vigil
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/vigil"]
