FROM golang:1.26 AS build
WORKDIR /src
COPY . .
RUN go build -o /out/app ./app
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/app /app
USER nonroot:nonroot
ENTRYPOINT ["/app"]
