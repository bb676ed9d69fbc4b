# syntax=docker/dockerfile:1
# vigil-console, built from the repository root:
#   docker build -f deploy/compose/console.Dockerfile .
FROM golang:1.26-bookworm AS build
WORKDIR /src
# The service module builds on its own (GOWORK=off): pkg/, the console, and the two
# service modules it reads formats from (the audit log's, keyguard's grant records).
COPY pkg/ pkg/
COPY services/auditor/ services/auditor/
COPY services/keyguard/ services/keyguard/
COPY services/console/ services/console/
WORKDIR /src/services/console
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/vigil-console ./cmd/vigil-console

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/vigil-console /usr/local/bin/vigil-console
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/vigil-console"]
