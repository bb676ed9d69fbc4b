# syntax=docker/dockerfile:1
# vigil-ingest, built from the repository root:
#   docker build -f deploy/compose/ingest.Dockerfile .
FROM golang:1.26-bookworm AS build
WORKDIR /src
# The service module builds on its own (GOWORK=off): only pkg/ and the service are needed.
COPY pkg/ pkg/
COPY services/ingest/ services/ingest/
WORKDIR /src/services/ingest
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/vigil-ingest ./cmd/vigil-ingest

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/vigil-ingest /usr/local/bin/vigil-ingest
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/vigil-ingest"]
