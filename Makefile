# Vigil: every target works across all modules of the go.work workspace.
SHELL := /bin/bash
GO ?= go
# Module patterns (github.com/vigil-cc/vigil/pkg/... etc.) of every workspace module.
MODULES := $(shell $(GO) list -m -f '{{.Path}}/...')
MODULE_DIRS := $(shell $(GO) list -m -f '{{.Dir}}')
BIN ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
TEST_TIMEOUT ?= 12m
STATICCHECK ?= $(shell command -v staticcheck 2>/dev/null || echo $(shell $(GO) env GOPATH)/bin/staticcheck)

.PHONY: all build test test-peers test-short run bench soak lint fmt vet staticcheck standalone tidy tidy-check clean compose-check compose-test compose-test-cluster

all: lint test

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/ $$($(GO) list -f '{{if eq .Name "main"}}{{.ImportPath}}{{end}}' $(MODULES))

# The notifier's sink tests run a real Alertmanager built from its module
# (testdata, out of the workspace): built here first, so that a cold module
# cache costs time before the tests and not inside one test's timeout.
ALERTMANAGER_TESTDATA := services/notifier/sink/testdata/alertmanager

test: test-peers
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(MODULES)

test-peers:
	cd $(ALERTMANAGER_TESTDATA) && GOWORK=off CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" $(GO) build -o /dev/null .

test-short:
	$(GO) test -short -count=1 $(MODULES)

run:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/vigil github.com/vigil-cc/vigil/cmd/vigil
	@echo "Open the fleet console: http://127.0.0.1:8088 (unless ARGS sets --console)"
	./$(BIN)/vigil dev $(ARGS)

# The soak (e2e TestSoak): a 3-node NATS cluster, two copies of every
# service as processes, 10,000 simulated VMs out of process at a 1-minute
# interval with the tamper scenario, and a fault every 3 minutes (a
# service killed with SIGKILL, a NATS node restarted). It prints its
# checks; soak-out/ gets summary.json, soak.svg and every process's log.
# `make test` runs a 3-minute form of it. Shorter: make soak SOAK_DURATION=10m
SOAK_DURATION ?= 30m
SOAK_VMS ?= 10000
SOAK_INTERVAL ?= 1m
SOAK_FAULT_EVERY ?= 3m
SOAK_OUT ?= $(CURDIR)/soak-out
soak:
	cd e2e && $(GO) test -count=1 -timeout 3h -run '^TestSoak$$' -v . -args -soak.duration=$(SOAK_DURATION) \
		-soak.vms=$(SOAK_VMS) -soak.interval=$(SOAK_INTERVAL) -soak.fault-every=$(SOAK_FAULT_EVERY) -soak.out=$(SOAK_OUT)

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

# Starts deploy/compose/compose.yaml for real (test images built locally, no
# registry) and checks it from outside; then shows that a service that cannot
# start fails the run. Needs a Docker engine with compose (.ci/run runs it).
compose-test:
	$(GO) run ./tools/composetest -f deploy/compose/compose.yaml
	$(GO) test -tags compose -count=1 -timeout 15m -run TestComposeTestFailsWhenAServiceCannotStart ./tools/composetest

# The 3-node NATS cluster file with a node stopped and one cut off while the
# pipeline runs. Not yet in .ci/run: 1 run in 5 found a VM trusted with its key
# revoked for "untrusted" (issue 19's note), under investigation.
compose-test-cluster:
	$(GO) run ./tools/composetest -f deploy/compose/compose.yaml -f deploy/compose/compose.cluster.yaml -cluster

clean:
	rm -rf $(BIN) .vigil
