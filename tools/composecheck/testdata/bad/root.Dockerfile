FROM golang:1.26 AS build
USER builder
RUN true
FROM debian:12-slim
USER root
ENTRYPOINT ["/app"]
