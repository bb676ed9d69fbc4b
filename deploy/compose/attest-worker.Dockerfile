# syntax=docker/dockerfile:1
# vigil-attest-worker, built from the repository root:
#   docker build -f deploy/compose/attest-worker.Dockerfile .
FROM golang:1.26-bookworm AS build
WORKDIR /src
# The service module builds on its own (GOWORK=off): only pkg/ and the service are needed.
COPY pkg/ pkg/
COPY services/attest-worker/ services/attest-worker/
WORKDIR /src/services/attest-worker
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/vigil-attest-worker ./cmd/vigil-attest-worker

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/vigil-attest-worker /usr/local/bin/vigil-attest-worker
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/vigil-attest-worker"]
