# syntax=docker/dockerfile:1
# vigil-auditor, built from the repository root:
#   docker build -f deploy/compose/auditor.Dockerfile .
FROM golang:1.26-bookworm AS build
WORKDIR /src
# The service module builds on its own (GOWORK=off): only pkg/ and the service are needed.
COPY pkg/ pkg/
COPY services/auditor/ services/auditor/
WORKDIR /src/services/auditor
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/vigil-auditor ./cmd/vigil-auditor

RUN mkdir -p /out/state/audit /out/state/audit-key

FROM gcr.io/distroless/static-debian12:nonroot
# /audit and /audit-key are volume mount points: owned by the non-root user so a fresh
# named volume is writable.
COPY --from=build --chown=65532:65532 /out/state/audit /audit
COPY --from=build --chown=65532:65532 /out/state/audit-key /audit-key
COPY --from=build /out/vigil-auditor /usr/local/bin/vigil-auditor
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/vigil-auditor"]
