# capsa: two commands on a fresh Debian machine.
#   make demo   install what is missing, build, install, run a container in a VM
#   make test   the whole test suite
#   make fuzz   each fuzz target for FUZZ_TIME seconds (docs/fuzzing.md)
#   make soak   SANDBOXES sandboxes at once for ROUNDS rounds; nothing may leak
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

CACHE            ?= /var/cache/capsa
export CARGO_TARGET_DIR ?= $(CACHE)/target
# Incremental state doubles the debug build on disk and a fresh CI clone
# never reuses it.
export CARGO_INCREMENTAL ?= 0
PREFIX           ?= /usr/local
ASSETS_DIR       ?= $(CACHE)/assets
SHARE_DIR        ?= /usr/share/capsa
DEFAULTS_DIR     ?= /usr/share/defaults/capsa
AGENT_TARGET     := x86_64-unknown-linux-gnu
AGENT_BIN        := $(CARGO_TARGET_DIR)/$(AGENT_TARGET)/guest/capsa-agent
CAPSA_BIN        := $(CARGO_TARGET_DIR)/release/capsa
SHIM_BIN         := $(CARGO_TARGET_DIR)/release/containerd-shim-capsa-v2
SNAPSHOTTER_BIN  := $(CARGO_TARGET_DIR)/release/capsa-snapshotter
SYSTEMD_DIR      ?= /etc/systemd/system
DEMO_ROOTFS      := $(CACHE)/demo-rootfs
LIBSECCOMP_LIB_PATH ?= /usr/lib/x86_64-linux-gnu

# Installed without their recommended packages (QEMU's would bring its GUI:
# GTK, VTE, SDL): everything capsa needs is named here. libc6-dev (C headers
# for gcc) and libprotobuf-dev (the well-known .proto files protoc includes)
# are only recommended by gcc and protobuf-compiler; iproute2 (`ip`) is not
# in every minimal Debian.
DEBIAN_PACKAGES  := qemu-system-x86 busybox-static cpio kmod xz-utils zstd lz4 \
                    libseccomp-dev libcap-ng-dev pkg-config protobuf-compiler \
                    libprotobuf-dev gcc libc6-dev make libelf-dev zlib1g-dev \
                    libzstd-dev containerd runc g++ e2fsprogs mount iproute2 \
                    containernetworking-plugins iptables \
                    flex bison bc patch prometheus
# capsa's guest kernels are built from this package (pinned in
# crates/assets/src/kbuild/source.rs), which Debian ships in bookworm-security.
KERNEL_SOURCE    := linux-source-6.12
APT_SECURITY     := /etc/apt/sources.list.d/capsa-bookworm-security.sources
# The User-Mode Linux kernel is built once kernel/um has a fragment.
UML_FLAG         := $(if $(wildcard kernel/um/*.conf),--uml)
HOST_TOOLS       := virtiofsd vhost-device-vsock

.PHONY: all deps build agent assets install demo test test-image lint bench soak clean \
        fuzz-deps fuzz-build fuzz fuzz-smoke

all: build

## Host packages and tools, installed only when missing.
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@if ! grep -rqs '^[^#]*bookworm-security' /etc/apt/sources.list /etc/apt/sources.list.d/; then \
	  echo "adding bookworm-security to the apt sources (for $(KERNEL_SOURCE))"; \
	  printf 'Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $(APT_SECURITY); \
	fi
	@apt-cache show $(KERNEL_SOURCE) > /dev/null 2>&1 || apt-get update -q
	@for t in $(HOST_TOOLS); do \
	  if [ ! -x $(PREFIX)/bin/$$t ]; then \
	    echo "installing $$t from crates.io"; \
	    CARGO_TARGET_DIR=$(CACHE)/tools-target cargo install --locked --root $(PREFIX) $$t; \
	  fi; \
	done

## Host binaries, and the agent linked statically for the guest.
build: deps
	cargo build --release -p capsa -p capsa-shim -p capsa-snapshotter
	$(MAKE) agent

## libseccomp (seccomp profiles of containers) is linked in statically, and
## so is libbpf (built by libbpf-sys; the eBPF device cgroup of containers).
## Without its symbol table, and built for size (the `guest` profile of
## Cargo.toml): every guest unpacks it at boot.
agent:
	RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$(LIBSECCOMP_LIB_PATH) \
	  cargo build --profile guest -p capsa-agent --target $(AGENT_TARGET)

## Guest kernels (capsa's own, built from kernel/ and cached in
## $(CACHE)/kernels; Debian's in $(ASSETS_DIR)/debian), initrd, and the
## root image with its boot initrd (rebuilt only when an input changed).
assets: build
	$(CAPSA_BIN) assets build --out $(ASSETS_DIR) --agent $(AGENT_BIN) --image \
	  --kernel-dir kernel --kernel-cache $(CACHE)/kernels $(UML_FLAG) > /dev/null
	@echo "guest assets in $(ASSETS_DIR)"

install: assets
	install -D -m 0755 $(CAPSA_BIN) $(PREFIX)/bin/capsa
	install -D -m 0755 $(SHIM_BIN) $(PREFIX)/bin/containerd-shim-capsa-v2
	install -D -m 0755 $(SNAPSHOTTER_BIN) $(PREFIX)/bin/capsa-snapshotter
	sed 's|@PREFIX@|$(PREFIX)|' config/capsa-snapshotter.service > $(CACHE)/capsa-snapshotter.service
	install -D -m 0644 $(CACHE)/capsa-snapshotter.service $(SYSTEMD_DIR)/capsa-snapshotter.service
	sed 's|@PREFIX@|$(PREFIX)|' config/capsa-monitor.service > $(CACHE)/capsa-monitor.service
	install -D -m 0644 $(CACHE)/capsa-monitor.service $(SYSTEMD_DIR)/capsa-monitor.service
	install -D -m 0644 $(ASSETS_DIR)/vmlinuz $(SHARE_DIR)/vmlinuz
	install -D -m 0644 $(ASSETS_DIR)/initrd.img $(SHARE_DIR)/initrd.img
	install -D -m 0644 $(ASSETS_DIR)/capsa.img $(SHARE_DIR)/capsa.img
	install -D -m 0644 $(ASSETS_DIR)/capsa.img.initrd $(SHARE_DIR)/capsa.img.initrd
	install -D -m 0644 $(ASSETS_DIR)/manifest.json $(SHARE_DIR)/manifest.json
	install -D -m 0644 $(ASSETS_DIR)/kernel.config $(SHARE_DIR)/kernel.config
	install -D -m 0644 $(ASSETS_DIR)/debian/vmlinuz $(SHARE_DIR)/debian/vmlinuz
	install -D -m 0644 $(ASSETS_DIR)/debian/initrd.img $(SHARE_DIR)/debian/initrd.img
	if [ -f $(ASSETS_DIR)/linux-uml ]; then \
	  install -D -m 0755 $(ASSETS_DIR)/linux-uml $(SHARE_DIR)/linux-uml; fi
	install -D -m 0644 config/configuration.toml $(DEFAULTS_DIR)/configuration.toml
	install -D -m 0644 config/configuration-uml.toml $(DEFAULTS_DIR)/configuration-uml.toml
	install -D -m 0644 crates/runtime/src/resource/network/cni/capsa-bridge.conflist \
	  $(DEFAULTS_DIR)/cni/capsa-bridge.conflist

demo: install
	scripts/busybox-rootfs.sh $(DEMO_ROOTFS)
	@echo "== the guest boots from the initrd ($(SHARE_DIR)/initrd.img): on capsa's kernel it costs 15-26 % less CPU per start than the DAX image ($(SHARE_DIR)/capsa.img), for 13 MiB more memory per idle pod (docs/performance.md)"
	@echo "== host kernel: $$(uname -r)"
	capsa run --rootfs $(DEMO_ROOTFS) -- sh -c \
	  'echo "== in the container: kernel $$(uname -r), hostname $$(hostname), pid $$$$"; cat /proc/version'

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# The suite's VMs boot the initrd; the container tests of `capsa run` and
# of the shim under containerd run again booting the DAX root image
# (`test-image` runs the whole suite on it: twice the time of `test`).
IMAGE_TESTS := -p capsa --test run -p capsa-shim --test ctr
# And once more on User-Mode Linux (the installed configuration-uml.toml),
# but for what is QEMU's alone or said in crates/cli/tests/uml.rs instead:
# the accelerator and the kernel release (`capsa check` says none is
# needed; the release is the UML kernel's, checked there), resizing the
# VM to the task's limits (UML has fixed sizes: NotSupported), and the
# timeline test (it appends `timeline_dir`, which the installed file
# already sets).
UML_TESTS   := $(IMAGE_TESTS)
UML_SKIP    := --skip check_reports_the_accelerator --skip workload_sees_the_guest_kernel \
               --skip the_vm_is_sized_from_the_configuration_plus_the_task_limits \
               --skip the_shim_writes_the_pods_timeline

test: assets lint fuzz-smoke
	CAPSA_TEST_ASSETS=$(ASSETS_DIR) cargo test --workspace --no-fail-fast -- --test-threads=2
	CAPSA_TEST_ASSETS=$(ASSETS_DIR) CAPSA_TEST_BOOT=image \
	  cargo test $(IMAGE_TESTS) --no-fail-fast -- --test-threads=2
	CAPSA_TEST_ASSETS=$(ASSETS_DIR) CAPSA_TEST_BOOT=uml \
	  cargo test $(UML_TESTS) --no-fail-fast -- --test-threads=2 $(UML_SKIP)
	./scripts/check-leaks.sh

## Fuzz targets (fuzz/, a cargo-fuzz crate with a workspace of its own).
## Built once for both `fuzz` and `fuzz-smoke`, without a sanitizer by
## default (safe Rust: panics and overflow checks are what is hunted;
## FUZZ_SANITIZER=address for unsafe code in dependencies). Corpora grow
## in FUZZ_CORPUS_DIR; fuzz/corpus (seeds) and fuzz/regressions (inputs
## that crashed once) are only read.
FUZZ_TIME        ?= 60
FUZZ_SMOKE_TIME  ?= 2
FUZZ_SANITIZER   ?= none
FUZZ_TARGET_DIR  ?= $(CACHE)/fuzz-target
FUZZ_CORPUS_DIR  ?= $(CACHE)/fuzz-corpus
# The machine's stable toolchain: without a sanitizer cargo-fuzz needs no
# unstable rustc flag; a sanitizer does (-Zsanitizer).
FUZZ_CARGO       := $(if $(filter none,$(FUZZ_SANITIZER)),,RUSTC_BOOTSTRAP=1) cargo
FUZZ_TARGETS      = $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs)))

fuzz-deps: deps
	@command -v cargo-fuzz > /dev/null || { \
	  echo "installing cargo-fuzz from crates.io"; \
	  CARGO_TARGET_DIR=$(CACHE)/tools-target cargo install --locked --root $(PREFIX) cargo-fuzz; }

fuzz-build: fuzz-deps
	$(FUZZ_CARGO) fuzz build -s $(FUZZ_SANITIZER) --target-dir $(FUZZ_TARGET_DIR)

## Each target for FUZZ_TIME seconds, from the seeds and what earlier runs
## found; a crash stops with the input in fuzz/artifacts/<target>/.
fuzz: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_CORPUS_DIR)/$$t; \
	  echo "== fuzz $$t for $(FUZZ_TIME) s"; \
	  inputs="$$(ls -d fuzz/corpus/$$t fuzz/regressions/$$t 2> /dev/null || true)"; \
	  $(FUZZ_CARGO) fuzz run -s $(FUZZ_SANITIZER) --target-dir $(FUZZ_TARGET_DIR) $$t \
	    $(FUZZ_CORPUS_DIR)/$$t $$inputs -- -max_total_time=$(FUZZ_TIME) -print_final_stats=1; \
	done

## For `make test`: every target builds, replays its seeds and regressions,
## and fuzzes FUZZ_SMOKE_TIME seconds (nothing is written to the clone).
fuzz-smoke: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  scratch=$$(mktemp -d); \
	  inputs="$$(ls -d fuzz/corpus/$$t fuzz/regressions/$$t 2> /dev/null || true)"; \
	  $(FUZZ_CARGO) fuzz run -s $(FUZZ_SANITIZER) --target-dir $(FUZZ_TARGET_DIR) $$t \
	    $$scratch $$inputs -- \
	    -max_total_time=$(FUZZ_SMOKE_TIME) -artifact_prefix=$$scratch/ 2> $$scratch/log \
	    || { cat $$scratch/log; echo "fuzz target $$t failed (input in $$scratch)"; exit 1; }; \
	  echo "fuzz target $$t: $$(grep -o 'Done [0-9]* runs.*' $$scratch/log || echo ok)"; \
	  rm -rf $$scratch; \
	done

test-image: assets
	CAPSA_TEST_ASSETS=$(ASSETS_DIR) CAPSA_TEST_BOOT=image \
	  cargo test --workspace --no-fail-fast -- --test-threads=2
	./scripts/check-leaks.sh

bench: install
	$(MAKE) deps DEBIAN_PACKAGES="runsc jq"
	scripts/busybox-rootfs.sh $(DEMO_ROOTFS)
	scripts/bench.sh $(DEMO_ROOTFS)
	scripts/bench-peers.sh $(DEMO_ROOTFS)
	SHIM_DIR=$(dir $(SHIM_BIN)) CAPSA_TEST_ASSETS=$(ASSETS_DIR) \
	  cargo run --release -p capsa-shim --example bench
	CAPSA_TEST_ASSETS=$(ASSETS_DIR) cargo run --release -p capsa-runtime --example block_bench
	SHIM_DIR=$(dir $(SHIM_BIN)) CAPSA_TEST_ASSETS=$(ASSETS_DIR) \
	  cargo run --release -p capsa-shim --example net_bench
	CAPSA_TEST_ASSETS=$(ASSETS_DIR) cargo run --release -p capsa-runtime --example resize_bench
	CAPSA_TEST_ASSETS=$(ASSETS_DIR) cargo run --release -p capsa-runtime --example tcg_bench
	CAPSA_TEST_ASSETS=$(ASSETS_DIR) cargo run --release -p capsa-runtime --example metrics_bench
	SHIM_DIR=$(dir $(SHIM_BIN)) SNAPSHOTTER=$(SNAPSHOTTER_BIN) CAPSA_TEST_ASSETS=$(ASSETS_DIR) \
	  cargo run --release -p capsa-shim --example rootfs_bench
	SHIM_DIR=$(dir $(SHIM_BIN)) CAPSA_TEST_ASSETS=$(ASSETS_DIR) \
	  cargo run --release -p capsa-shim --example density
	cargo run --release -p capsa-agent --example policy_bench

## SANDBOXES sandboxes created and removed at once, for ROUNDS rounds,
## through `capsa run` and through containerd's CRI (the release binaries
## of this build, nothing installed); after each round what the host holds
## for them (processes, mounts, sockets, state, taps, netns, ...) must be
## back to the baseline. Not part of `make test`: it takes long under TCG.
ROUNDS           ?= 5
SANDBOXES        ?= 20
soak: assets
	ROUNDS=$(ROUNDS) SANDBOXES=$(SANDBOXES) CAPSA_BIN=$(CAPSA_BIN) SHIM_DIR=$(dir $(SHIM_BIN)) \
	  CAPSA_TEST_ASSETS=$(ASSETS_DIR) cargo run --release -p capsa-shim --example soak

clean:
	cargo clean
