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

# `make install`: DESTDIR for staging, PREFIX for the layout.
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/sbin
MANDIR  ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
# `make cross`: name:GOARCH[:more environment], all linux, static.
TARGETS := amd64:amd64 arm64:arm64 armv5:arm:GOARM=5 armv7:arm:GOARM=7 \
	mips:mips:GOMIPS=softfloat mipsle:mipsle:GOMIPS=softfloat mips64:mips64 riscv64:riscv64
# 32-bit MIPS segments are aligned to 4 KiB instead of Go's 64 KiB: the
# padding between them is flash a router pays for, and every 32-bit MIPS
# kernel OpenWrt builds has 4 KiB pages. MIPS_ALIGN=0x4000 for 16 KiB pages.
MIPS_ALIGN ?= 0x1000
# `make firmware-test`: rounds of every firmware case (firmware_test.go).
ROUNDS  ?= 10
# Size budgets for linux/mipsle, stripped and compressed with xz -9, as a
# router's squashfs stores it: 2 MiB with proxy, 1 MiB without.
BUDGET_PROXY   := 2097152
BUDGET_NOPROXY := 1048576

# `make stress`: the tests that depend on timing, many times over, first on
# a quiet machine and then with every CPU busy (a `yes` per core). The real
# clients under loss wait on their own multi-second timers, and a SIGTERM
# waits out its 10 s grace, so those run fewer times.
STRESS_COUNT      ?= 200
STRESS_SLOW_COUNT ?= 20
STRESS_TESTS      := TestLossyLinkDeliversExactBytes|TestPausingClientIsNotDropped|TestVanishedClientGetsTimeoutError|TestRepeatedAckAfterTimeoutsResumes|TestWindowIsAHardLimit|TestRepeatedAcksWithoutProgressEndTheTransfer|TestSilentClientGetsTimeoutError|TestMaxConnectionsRefusesAndRecovers|TestShutdownLetsTransfersFinish|TestShutdownEndsWaitsOnSilentClients|TestSinglePortAnswersFromTheListeningPort|TestSinglePortConcurrentTransfers|TestSinglePortShutdownDrains|TestSinglePortUnderLoss|TestSIGTERMDrainsRunningTransfers|TestConnectionLimitHoldsAgainstPortReuse|TestDelayedCopyOfTheRequestDoesNotEndTheTransfer|TestMaxPerClientCapsOneAddress|TestRetransmittedRequestStartsOneTransfer|TestSameClientPortFetchesSameFileAgainAtOnce|TestProxyRevalidationKeepsOldReaders|TestProxyConcurrentClientsShareOneDownload|TestProxyStreamsDuringDownload|TestErrorAfterOACKEndsQuietly|TestUploadRepeatsLostFinalAck|TestUploadAbortLeavesNothing|TestUploadKilledServerLeavesNothing|TestUploadSameNameTwiceAtOnce|TestUploadRelayAcksAfterOrigin|TestMapFileSIGHUPReload|TestMapFileReloadWhileServing|TestBatchModesDeliverEveryDatagram|TestRefusedGSOFallsBackOnce|TestNeedlessProbesRaiseTheProbeFloor|TestSpuriousTimeoutRaisesTheFloor|TestUtimeoutSetsTheRetransmissionTimeout|TestPortRange|TestSeveralListenAddresses|TestMaxRateHoldsInLockstepAndWindows|TestMaxTotalRateIsSharedByFourTransfers|TestPacingIsNotTakenForLoss|TestPacedWindowIsNeverExceeded
STRESS_SLOW_TESTS := TestRealClientsRecoverFromLoss|TestLateDuplicatesDoNotCascade|TestSIGTERMExitsWithinGraceWhateverTheClients|TestUploadThroughLossyLink

# The oldest Go the design card allows (what OpenWrt's toolchain builds):
# everything, tests included, must compile with it.
COMPAT_GO ?= go1.23.12

.PHONY: build run test compat stress firmware-test fuzz bench cross size install clean ci-pristine

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) .

run: build
	./$(BIN) --port $(PORT) --root $(DIR)

# The race detector needs cgo; the binaries built above do not.
test:
	$(GO) vet ./...
	$(GO) vet -tags noproxy ./...
	CGO_ENABLED=1 $(GO) test -race -count=1 ./...

compat:
	GOTOOLCHAIN=$(COMPAT_GO) $(GO) vet ./...
	GOTOOLCHAIN=$(COMPAT_GO) $(GO) vet -tags noproxy ./...

stress:
	$(GO) test -c -o r-tftpd-stress.test .
	@set -e; trap 'kill $$busy 2>/dev/null; rm -f r-tftpd-stress.test' EXIT; busy=; \
	for load in quiet busy; do \
		if [ $$load = busy ]; then for i in $$(seq $$(nproc)); do yes > /dev/null & busy="$$busy $$!"; done; fi; \
		echo "== $$load: $(STRESS_COUNT) runs of the timing-sensitive tests"; \
		./r-tftpd-stress.test -test.run '^($(STRESS_TESTS))$$' -test.count=$(STRESS_COUNT) -test.failfast -test.timeout=3h > stress-$$load.log 2>&1 \
			|| { grep -E -- '--- FAIL|^FAIL|panic' stress-$$load.log | head -20; exit 1; }; \
		echo "== $$load: $(STRESS_SLOW_COUNT) runs of the real clients under loss"; \
		./r-tftpd-stress.test -test.run '^($(STRESS_SLOW_TESTS))$$' -test.count=$(STRESS_SLOW_COUNT) -test.failfast -test.timeout=3h > stress-$$load-slow.log 2>&1 \
			|| { grep -E -- '--- FAIL|^FAIL|panic' stress-$$load-slow.log | head -20; exit 1; }; \
	done; echo "stress: all passed"

# CI from a clean clone of HEAD in a Debian 12 root made on the spot
# (mmdebstrap: minbase, git, make, gcc, ca-certificates, this machine's Go),
# so a package installed here by hand cannot hide a missing step in .ci/run.
# All of .ci/run runs there, firmware and network namespaces included: the
# root gets /proc, /sys, /dev and its own /run (see .ci/pristine). Root only.
ci-pristine:
	bash .ci/pristine

# Real firmware (U-Boot, iPXE, OVMF) in QEMU and the router builds under
# qemu-user, in network namespaces: root, Debian's QEMU and firmware
# packages (see .ci/run). ROUNDS=3 for a quicker run; FIRMWARE_LOAD=2 adds
# two busy loops beside the guests.
firmware-test:
	ROUNDS=$(ROUNDS) CGO_ENABLED=0 $(GO) test -tags firmware -run 'Firmware|RouterBinaries' -count=1 -v -timeout 60m .

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz $$t: $(FUZZTIME) inputs"; \
		$(GO) test -run='^$$' -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) . || exit 1; \
	done

bench:
	$(GO) test -run='^$$' -bench=. -benchmem -count=5 .

# dist/r-tftpd-linux-NAME with proxy support, dist/r-tftpd-noproxy-linux-NAME
# without (go build -tags noproxy).
cross:
	@mkdir -p dist
	@set -e; for t in $(TARGETS); do \
		name=$${t%%:*}; rest=$${t#*:}; arch=$${rest%%:*}; more=$${rest#"$$arch"}; more=$${more#:}; \
		for flavour in proxy noproxy; do \
			tags=; out=dist/r-tftpd-linux-$$name; \
			if [ $$flavour = noproxy ]; then tags=noproxy; out=dist/r-tftpd-noproxy-linux-$$name; fi; \
			ld='$(LDFLAGS)'; case $$arch in mips|mipsle) ld="$$ld -R $(MIPS_ALIGN)";; esac; \
			echo "build $$out"; \
			env CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $$more $(GO) build -tags "$$tags" -trimpath -ldflags "$$ld" -o $$out .; \
		done; \
	done

# The size of every cross build, raw and as xz -9 compresses it, then the
# mipsle budgets, which count the compressed size: over one, it fails.
size: cross
	@printf '| %-8s | %-34s | %-34s |\n|---|---|---|\n' target 'proxy: raw, xz -9' 'noproxy: raw, xz -9'
	@for t in $(TARGETS); do \
		name=$${t%%:*}; set --; \
		for f in dist/r-tftpd-linux-$$name dist/r-tftpd-noproxy-linux-$$name; do \
			set -- "$$@" $$(stat -c %s $$f) $$(xz -9 -c $$f | wc -c); \
		done; \
		echo $$name "$$@" | awk '{ printf "| %-8s | %9d B (%.2f MiB), %5d KiB | %9d B (%.2f MiB), %5d KiB |\n", \
			$$1, $$2, $$2/1048576, $$3/1024, $$4, $$4/1048576, $$5/1024 }'; \
	done
	@within() { raw=$$(stat -c %s $$1); size=$$(xz -9 -c $$1 | wc -c); \
		if [ $$size -gt $$2 ]; then echo "$$1: $$size bytes with xz -9 ($$raw raw), over its budget of $$2"; return 1; fi; \
		echo "$$1: $$size bytes with xz -9 ($$raw raw), $$((size * 100 / $$2))% of its budget of $$2"; }; \
	within dist/r-tftpd-linux-mipsle $(BUDGET_PROXY) && within dist/r-tftpd-noproxy-linux-mipsle $(BUDGET_NOPROXY)

# The unit's ExecStart names /usr/local/sbin; it is rewritten for BINDIR.
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/r-tftpd
	install -D -m 0644 contrib/r-tftpd.8 $(DESTDIR)$(MANDIR)/man8/r-tftpd.8
	install -D -m 0755 contrib/hooks/git-commit-upload $(DESTDIR)$(PREFIX)/lib/r-tftpd/git-commit-upload
	install -D -m 0644 contrib/systemd/r-tftpd.socket $(DESTDIR)$(UNITDIR)/r-tftpd.socket
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/sbin/r-tftpd|$(BINDIR)/r-tftpd|' contrib/systemd/r-tftpd.service > $(DESTDIR)$(UNITDIR)/r-tftpd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/r-tftpd.service

clean:
	rm -rf $(BIN) dist
