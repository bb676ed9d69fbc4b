# Vigil: every target works across all modules of the go.work workspace.
SHELL := /bin/bash
GO ?= go
# Module patterns (github.com/vigil-cc/vigil/pkg/... etc.) of every workspace module.
MODULES := $(shell $(GO) list -m -f '{{.Path}}/...')
MODULE_DIRS := $(shell $(GO) list -m -f '{{.Dir}}')
BIN ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
TEST_TIMEOUT ?= 9m
STATICCHECK ?= $(shell command -v staticcheck 2>/dev/null || echo $(shell $(GO) env GOPATH)/bin/staticcheck)

.PHONY: all build test test-short run bench lint fmt vet staticcheck standalone tidy tidy-check clean compose-check

all: lint test

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/ $$($(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' $(MODULES))

test:
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(MODULES)

test-short:
	$(GO) test -short -count=1 $(MODULES)

run:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/vigil github.com/vigil-cc/vigil/cmd/vigil
	@echo "Open the fleet console: http://127.0.0.1:8088 (unless ARGS sets --console)"
	./$(BIN)/vigil dev $(ARGS)

# Every Benchmark* of every module; tests are skipped.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -timeout 60m $(MODULES)

lint: vet staticcheck standalone tidy-check
	@out=$$(gofmt -l $(MODULE_DIRS)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(MODULES)

staticcheck:
	@test -x "$(STATICCHECK)" || $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	$(STATICCHECK) $(MODULES)

# Every module must build on its own (GOWORK=off), as its Dockerfile builds it.
standalone:
	@for d in $(MODULE_DIRS); do (cd $$d && GOWORK=off CGO_ENABLED=0 $(GO) build -o /dev/null ./...) || { echo "$$d does not build without the workspace (go mod tidy there)"; exit 1; }; done

# Every module's go.mod and go.sum are as go mod tidy leaves them (direct
# dependencies not marked indirect, no sum missing), as its Dockerfile needs.
tidy-check:
	@for d in $(MODULE_DIRS); do (cd $$d && GOWORK=off GOFLAGS=-mod=mod $(GO) mod tidy -diff >/dev/null) || { echo "$$d is not tidy: run make tidy"; exit 1; }; done

fmt:
	gofmt -w $(MODULE_DIRS)

tidy:
	@for d in $(MODULE_DIRS); do (cd $$d && GOWORK=off GOFLAGS=-mod=mod $(GO) mod tidy) || exit 1; done

# Validates deploy/compose/compose.yaml with the compose-spec loader and checks
# that every environment variable it sets is read by its service.
compose-check:
	$(GO) run ./tools/composecheck -f deploy/compose/compose.yaml -root .

clean:
	rm -rf $(BIN) .vigil
