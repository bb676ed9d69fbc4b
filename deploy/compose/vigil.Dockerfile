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

RUN mkdir -p /out/state/sim

FROM gcr.io/distroless/static-debian12:nonroot
# /sim is a volume mount point: owned by the non-root user so a fresh named volume is writable.
COPY --from=build --chown=65532:65532 /out/state/sim /sim
COPY --from=build /out/vigil /usr/local/bin/vigil
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/vigil"]
