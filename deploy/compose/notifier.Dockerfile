# syntax=docker/dockerfile:1
# vigil-notifier, built from the repository root:
#   docker build -f deploy/compose/notifier.Dockerfile .
FROM golang:1.26-bookworm AS build
WORKDIR /src
# The service module builds on its own (GOWORK=off): only pkg/ and the service are needed.
COPY pkg/ pkg/
COPY services/notifier/ services/notifier/
WORKDIR /src/services/notifier
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/vigil-notifier ./cmd/vigil-notifier

RUN mkdir -p /out/state/keys

FROM gcr.io/distroless/static-debian12:nonroot
# /keys is a volume mount point: owned by the non-root user so a fresh named volume is writable.
COPY --from=build --chown=65532:65532 /out/state/keys /keys
# Sinks are reached over HTTPS: the CA certificates come with the distroless image.
COPY --from=build /out/vigil-notifier /usr/local/bin/vigil-notifier
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/vigil-notifier"]
