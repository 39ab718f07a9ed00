# capsa: two commands on a fresh Debian machine.
#   make demo   install what is missing, build, install, run a container in a VM
#   make test   the whole test suite
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

CACHE            ?= /var/cache/capsa
export CARGO_TARGET_DIR ?= $(CACHE)/target
PREFIX           ?= /usr/local
ASSETS_DIR       ?= $(CACHE)/assets
SHARE_DIR        ?= /usr/share/capsa
DEFAULTS_DIR     ?= /usr/share/defaults/capsa
AGENT_TARGET     := x86_64-unknown-linux-gnu
AGENT_BIN        := $(CARGO_TARGET_DIR)/$(AGENT_TARGET)/release/capsa-agent
CAPSA_BIN        := $(CARGO_TARGET_DIR)/release/capsa
SHIM_BIN         := $(CARGO_TARGET_DIR)/release/containerd-shim-capsa-v2
DEMO_ROOTFS      := $(CACHE)/demo-rootfs
LIBSECCOMP_LIB_PATH ?= /usr/lib/x86_64-linux-gnu

DEBIAN_PACKAGES  := qemu-system-x86 busybox-static cpio kmod xz-utils zstd \
                    libseccomp-dev libcap-ng-dev pkg-config protobuf-compiler gcc \
                    make libelf-dev zlib1g-dev libzstd-dev containerd runc
HOST_TOOLS       := virtiofsd vhost-device-vsock

.PHONY: all deps build agent assets install demo test lint bench clean

all: build

## Host packages and tools, installed only when missing.
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@for t in $(HOST_TOOLS); do \
	  if [ ! -x $(PREFIX)/bin/$$t ]; then \
	    echo "installing $$t from crates.io"; \
	    CARGO_TARGET_DIR=$(CACHE)/tools-target cargo install --locked --root $(PREFIX) $$t; \
	  fi; \
	done

## Host binaries, and the agent linked statically for the guest.
build: deps
	cargo build --release -p capsa -p capsa-shim
	$(MAKE) agent

## libseccomp (seccomp profiles of containers) is linked in statically, and
## so is libbpf (built by libbpf-sys; the eBPF device cgroup of containers).
agent:
	RUSTFLAGS="-C target-feature=+crt-static" \
	LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$(LIBSECCOMP_LIB_PATH) \
	  cargo build --release -p capsa-agent --target $(AGENT_TARGET)

## Guest kernel and initrd (rebuilt only when an input changed).
assets: build
	$(CAPSA_BIN) assets build --out $(ASSETS_DIR) --agent $(AGENT_BIN) > /dev/null
	@echo "guest assets in $(ASSETS_DIR)"

install: assets
	install -D -m 0755 $(CAPSA_BIN) $(PREFIX)/bin/capsa
	install -D -m 0755 $(SHIM_BIN) $(PREFIX)/bin/containerd-shim-capsa-v2
	install -D -m 0644 $(ASSETS_DIR)/vmlinuz $(SHARE_DIR)/vmlinuz
	install -D -m 0644 $(ASSETS_DIR)/initrd.img $(SHARE_DIR)/initrd.img
	install -D -m 0644 $(ASSETS_DIR)/manifest.json $(SHARE_DIR)/manifest.json
	install -D -m 0644 config/configuration.toml $(DEFAULTS_DIR)/configuration.toml

demo: install
	scripts/busybox-rootfs.sh $(DEMO_ROOTFS)
	@echo "== host kernel: $$(uname -r)"
	capsa run --rootfs $(DEMO_ROOTFS) -- sh -c \
	  'echo "== in the container: kernel $$(uname -r), hostname $$(hostname), pid $$$$"; cat /proc/version'

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

test: assets lint
	CAPSA_TEST_ASSETS=$(ASSETS_DIR) cargo test --workspace -- --test-threads=2
	./scripts/check-leaks.sh

bench: install
	scripts/busybox-rootfs.sh $(DEMO_ROOTFS)
	scripts/bench.sh $(DEMO_ROOTFS)
	SHIM_DIR=$(dir $(SHIM_BIN)) CAPSA_TEST_ASSETS=$(ASSETS_DIR) \
	  cargo run --release -p capsa-shim --example bench

clean:
	cargo clean
