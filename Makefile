# r-tftpd: build, test, fuzz and benchmark.
GO      ?= go
BIN     ?= r-tftpd
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# Folder and port for `make run`.
DIR     ?= .
PORT    ?= 6969
# How many inputs `make fuzz` tries per target: a count, not a duration,
# because a -fuzztime duration trips a race in Go 1.26's fuzz coordinator
# (golang/go#75804) and fails with "context deadline exceeded".
FUZZTIME ?= 200000x
FUZZ_TARGETS := $(shell grep -ho '^func Fuzz[A-Za-z0-9_]*' *_test.go | cut -c6-)

.PHONY: build run test fuzz bench clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) .

run: build
	./$(BIN) --port $(PORT) --root $(DIR)

# The race detector needs cgo; the binaries built above do not.
test:
	$(GO) vet ./...
	CGO_ENABLED=1 $(GO) test -race -count=1 ./...

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz $$t: $(FUZZTIME) inputs"; \
		$(GO) test -run='^$$' -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) . || exit 1; \
	done

bench:
	$(GO) test -run='^$$' -bench=. -benchmem -count=5 .

clean:
	rm -f $(BIN)
