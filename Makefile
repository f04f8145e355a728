# sluice: kernel-accelerated L4 load balancer.
#   sudo make demo   build sluice and run the guided tour in a throwaway lab
#   sudo make test   run every test (packet, fuzz seeds, namespace end-to-end)
#   sudo make soak   the LB pair under random faults for SOAK (default 10m)

GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Root's PATH under sudo often lacks Go: look where the official tarball puts it.
export PATH := $(PATH):/usr/local/go/bin:/usr/lib/go/bin

.PHONY: all build generate check-generated test test-kernel lint bench bench-failover demo fuzz soak vagrant-validate clean need-go need-clang need-root need-tools

all: build

need-go:
	@command -v $(GO) >/dev/null 2>&1 || { echo "error: Go is not installed (need Go 1.26+; https://go.dev/dl/ or your distribution's golang package)"; exit 1; }

need-clang:
	@command -v clang >/dev/null 2>&1 || { echo "error: clang is missing: apt-get install clang llvm libbpf-dev (only needed to rebuild the BPF objects)"; exit 1; }
	@test -e /usr/include/bpf/bpf_helpers.h || { echo "error: libbpf headers are missing: apt-get install libbpf-dev"; exit 1; }

need-tools:
	@command -v nsenter >/dev/null 2>&1 || { echo "error: nsenter is missing: apt-get install util-linux"; exit 1; }
	@command -v nft >/dev/null 2>&1 || { echo "error: nft is missing (tests inject faults with it): apt-get install nftables"; exit 1; }
	@command -v curl >/dev/null 2>&1 || { echo "error: curl is missing (the lab test uses it): apt-get install curl"; exit 1; }
	@command -v promtool >/dev/null 2>&1 || { echo "error: promtool is missing (the alert rules' tests use it): apt-get install prometheus"; exit 1; }
	@command -v tcpdump >/dev/null 2>&1 || { echo "error: tcpdump is missing (the capture test reads its pcap with it): apt-get install tcpdump"; exit 1; }
	@command -v wrk >/dev/null 2>&1 || { echo "error: wrk is missing (the soak loads the pair with it): apt-get install wrk"; exit 1; }
	@command -v etcd >/dev/null 2>&1 || { echo "error: etcd is missing (the lab's etcd cluster runs it): apt-get install etcd-server"; exit 1; }
	@command -v bird >/dev/null 2>&1 || { echo "error: bird is missing (the BGP tests' router runs it): apt-get install bird2"; exit 1; }
	@test -x /usr/lib/frr/bgpd || { echo "error: FRR is missing (a BGP test runs it as the router): apt-get install frr"; exit 1; }

need-root:
	@test "$$(id -u)" = 0 || { echo "error: this target loads BPF programs and creates network namespaces: run it with sudo"; exit 1; }

build: need-go
	$(GO) build -o bin/sluice ./cmd/sluice

# Rebuild the BPF objects and their Go bindings (committed, so plain
# `go build` needs no clang).
generate: need-go need-clang
	cd bpf && $(GO) generate ./...

# CI: the committed bpf2go output must match a fresh rebuild.
check-generated: generate
	@git diff --exit-code --stat -- bpf/ || { echo "error: committed bpf2go output is stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- bpf/)" || { git status --porcelain -- bpf/; echo "error: untracked bpf2go output"; exit 1; }

test: need-go need-root need-tools
	$(GO) test -p 1 -count=1 -timeout 60m ./...

# Boot Debian 12's Linux 6.1 in qemu (TCG without KVM) and run the packet
# tests there: the README's kernel claim, checked (testenv/kernel/run.sh).
test-kernel: need-go need-root
	GO=$(GO) testenv/kernel/run.sh

lint: need-go
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "error: gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

# Data-plane benchmark (live-frames generator through a veth, side by side
# with a trivial reflector and the floor programs of bpf/floor.c; rewrites
# its table in docs/benchmarks.md), Maglev build times, and throughput through
# the BGP lab with 1, 2 and 3 nodes announcing. Prints the tables; the
# data-plane run fails when a target is missed. See docs/benchmarks.md and
# docs/scale-out.md.
bench: need-go need-root
	$(GO) test -count=1 -run '^$$' -bench BenchmarkMaglev -benchtime 20x ./control/maglev/
	SLUICE_BENCH_DOC=$(CURDIR)/docs/benchmarks.md $(GO) test -count=1 -run '^$$' -bench BenchmarkDataplane -benchtime 1x -timeout 30m ./loader/
	$(GO) test -count=1 -run '^$$' -bench BenchmarkBGPCapacity -benchtime 1x -v ./testenv/e2e/

# Failover figures in the lab; rewrites their section of docs/benchmarks.md.
bench-failover: need-go need-root
	SLUICE_BENCH_DOC=$(CURDIR)/docs/benchmarks.md $(GO) test -count=1 -run '^$$' -bench BenchmarkFailover -benchtime 1x -timeout 10m ./testenv/e2e/

# The fault soak: the LB pair under wrk and 200 long-lived connections,
# a random fault every 1-3 s, invariants checked throughout (docs/ha.md,
# "The soak"). `make test` runs 20 s of it; CI runs SOAK=2m.
SOAK ?= 10m
soak: need-go need-root need-tools
	$(GO) test -count=1 -v -run '^TestSoak$$' -timeout 60m ./testenv/e2e/ -soak $(SOAK)

# Every fuzz target in turn, FUZZTIME each (CI runs 20s each).
FUZZTIME ?= 5m
FUZZ_TARGETS = FuzzDatapath:./loader/ FuzzSnapshot:./control/state/ FuzzParse:./control/ha/ FuzzFlows:./control/flowsync/ FuzzAgentAnswer:./health/ FuzzLoadPage:./health/ FuzzCleanReason:./health/
# A run that ends in "context deadline exceeded" without writing a
# failing input is Go 1.26's fuzz-coordinator race at the end of
# -fuzztime (golang/go#75804, fixed in Go 1.27), not a finding.
fuzz: need-go need-root
	@set -e; for t in $(FUZZ_TARGETS); do \
		name=$${t%%:*}; pkg=$${t#*:}; out=$$(mktemp); \
		echo "== $$name ($(FUZZTIME))"; \
		if $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) "$$pkg" >$$out 2>&1; then cat $$out; \
		else cat $$out; \
			if grep -q 'context deadline exceeded' $$out && ! grep -q 'Failing input written' $$out; then \
				echo "note: $$name met golang/go#75804 (the coordinator's deadline race), no failing input: not a failure"; \
			else rm -f $$out; exit 1; fi; \
		fi; rm -f $$out; \
	done

demo: build need-root
	@command -v nsenter >/dev/null 2>&1 || { echo "error: nsenter is missing: apt-get install util-linux"; exit 1; }
	./bin/sluice demo

vagrant-validate:
	@command -v vagrant >/dev/null 2>&1 || { echo "error: vagrant is missing: apt-get install vagrant"; exit 1; }
	vagrant validate

clean:
	rm -rf bin
